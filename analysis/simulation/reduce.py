"""The metric definitions (``storage.metrics``), recomputed in numpy from simulated records.

This is the ground truth the SQL is checked against, and the fast path of the statistical
simulations (no database): per-user num/den (and the pre-period covariate z) reduced to the
same ``Sufficient`` statistics per (arm, segment[, day]).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from analysis.metrics import Sufficient
from analysis.simulation.generate import LONG_DWELL_MS, Simulation
from analysis.simulation.model import (
    DAY,
    DOWNLOAD,
    FAILURE_KINDS,
    FEEDBACK,
    LOGIN,
    PAID,
    SECOND,
    TRIAL,
    VIEW,
)
from gateway.segments import SEGMENTS
from storage.metrics import QUICK_RETRY_S, RETENTION_DAYS, Key

ARMS = ("baseline", "candidate")
TIME_BITS = 42  # µs since the origin stay below 2**42 (50 days); user ids sit above


@dataclass(frozen=True)
class Units:
    """One row per (user[, day]) as a metric query yields them."""

    arm: np.ndarray
    segment: np.ndarray
    day: np.ndarray  # days since the origin
    user: np.ndarray
    num: np.ndarray
    den: np.ndarray
    z: np.ndarray | None = None


def _sorted_keys(user: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.sort((user.astype(np.int64) << TIME_BITS) + t)


def _count_between(
    keys: np.ndarray, user: np.ndarray, low: np.ndarray, high: np.ndarray
) -> np.ndarray:
    """Per user: how many sorted (user, time) keys fall in [low, high)."""
    base = user.astype(np.int64) << TIME_BITS
    counts: np.ndarray = np.searchsorted(keys, base + high) - np.searchsorted(keys, base + low)
    return counts


class Reducer:
    """The observed records of a simulation over experiment days first..last (inclusive)."""

    def __init__(self, sim: Simulation, first: int = 0, last: int | None = None) -> None:
        self.sim = sim.observed()
        self.origin = sim.origin
        pre = sim.spec.pre_days
        self.start = (pre + first) * DAY
        self.end = (pre + (sim.spec.days - 1 if last is None else last) + 1) * DAY
        jobs, events = self.sim.jobs, self.sim.events
        self.jobs = jobs
        self.segment = self.sim.segment[jobs.user]
        self.live = (jobs.arm >= 0) & (jobs.t >= self.start) & (jobs.t < self.end)
        on_job = events.job >= 0

        def per_job(mask: np.ndarray) -> np.ndarray:
            chosen = on_job & mask
            return np.bincount(events.job[chosen], minlength=len(jobs)).astype(float)

        view = events.kind == VIEW
        self.views = per_job(view)
        self.long_views = per_job(view & (events.dwell_ms >= LONG_DWELL_MS))
        self.downloads = np.minimum(per_job(events.kind == DOWNLOAD), 1.0)
        self.feedback = per_job(events.kind == FEEDBACK)
        self.job_keys = _sorted_keys(jobs.user, jobs.t)
        logins = events.kind == LOGIN
        self.login_keys = _sorted_keys(events.user[logins], events.t[logins])

    # ------------------------------------------------------------ job metrics
    def _job_units(self, num: np.ndarray, den: np.ndarray, mask: np.ndarray | None = None) -> Units:
        keep = self.live if mask is None else self.live & mask
        jobs = self.jobs
        return Units(
            jobs.arm[keep], self.segment[keep], jobs.t[keep] // DAY, jobs.user[keep],
            num[keep], den[keep],
        )  # fmt: skip

    def success_rate(self) -> Units:
        ok = (~self.jobs.failed).astype(float)
        return self._job_units(ok, np.ones(len(ok)))

    def mean_peak_vram_gb(self) -> Units:
        gb = self.jobs.vram_bytes.astype(float) / 2**30
        return self._job_units(gb, np.ones(len(gb)), ~self.jobs.failed)

    def long_dwell_share(self) -> Units:
        return self._job_units(self.long_views, self.views)

    def download_rate(self) -> Units:
        return self._job_units(self.downloads, (~self.jobs.failed).astype(float))

    def negative_feedback_rate(self) -> Units:
        return self._job_units(self.feedback, (~self.jobs.failed).astype(float))

    def quick_retry_share(self) -> Units:
        """A live generation whose next live generation (same user) repeats it within 30 s."""
        index = np.flatnonzero(self.live)
        jobs = self.jobs
        index = index[np.lexsort((jobs.t[index], jobs.user[index]))]
        user, t, prompt = jobs.user[index], jobs.t[index], jobs.prompt[index]
        retried = np.zeros(len(index))
        same_user = user[1:] == user[:-1]
        quick = (t[1:] - t[:-1]) <= QUICK_RETRY_S * SECOND
        retried[:-1] = same_user & quick & (prompt[1:] == prompt[:-1])
        num = np.zeros(len(jobs))
        num[index] = retried
        return self._job_units(num, np.ones(len(jobs)))

    # ------------------------------------------------------------ user metrics
    def exposed(self, mature_days: int) -> np.ndarray:
        """Users first exposed in the window whose first ``mature_days`` have passed."""
        sim = self.sim
        seen = sim.population.arrival
        return np.flatnonzero(
            (sim.arm >= 0)
            & ~sim.dropped
            & (seen >= self.start)
            & (seen < self.end - mature_days * DAY)
        )

    def _user_units(self, users: np.ndarray, num: np.ndarray, den: np.ndarray, z: bool) -> Units:
        seen = self.sim.population.arrival[users]
        covariate = None
        if z:
            covariate = _count_between(self.job_keys, users, seen - RETENTION_DAYS * DAY, seen)
        return Units(
            self.sim.arm[users], self.sim.segment[users], seen // DAY, users,
            num.astype(float), den.astype(float),
            None if covariate is None else covariate.astype(float),
        )  # fmt: skip

    def retained(self, users: np.ndarray) -> np.ndarray:
        seen = self.sim.population.arrival[users]
        low, high = seen + DAY, seen + (RETENTION_DAYS + 1) * DAY
        jobs = _count_between(self.job_keys, users, low, high)
        logins = _count_between(self.login_keys, users, low, high)
        retained: np.ndarray = ((jobs + logins) > 0).astype(float)
        return retained

    def retention_7d(self) -> Units:
        users = self.exposed(RETENTION_DAYS + 1)
        return self._user_units(users, self.retained(users), np.ones(len(users)), z=True)

    def generations_per_week(self) -> Units:
        users = self.exposed(RETENTION_DAYS)
        seen = self.sim.population.arrival[users]
        count = _count_between(self.job_keys, users, seen, seen + RETENTION_DAYS * DAY)
        return self._user_units(users, count, np.ones(len(users)), z=True)

    def trial_to_paid(self) -> Units:
        events, n = self.sim.events, self.sim.spec.users
        trials = events.kind == TRIAL
        first_trial = np.full(n, np.iinfo(np.int64).max)
        np.minimum.at(first_trial, events.user[trials], events.t[trials])
        users = self.exposed(0)
        users = users[first_trial[users] >= self.sim.population.arrival[users]]
        users = users[first_trial[users] < np.iinfo(np.int64).max]
        paid = events.kind == PAID
        paid_keys = _sorted_keys(events.user[paid], events.t[paid])
        after = _count_between(
            paid_keys, users, first_trial[users], np.full(len(users), 2**TIME_BITS - 1)
        )
        return self._user_units(users, (after > 0), np.ones(len(users)), z=False)

    def dwell_vs_retention(self) -> Units:
        """Per user: mean dwell (s) of views in the first 7 days (num) and retained (den)."""
        users = self.exposed(RETENTION_DAYS + 1)
        events = self.sim.events
        seen = np.full(self.sim.spec.users, -1, dtype=np.int64)
        seen[users] = self.sim.population.arrival[users]
        at = seen[events.user]
        view = (events.kind == VIEW) & (at >= 0) & (events.t >= at)
        view &= events.t < at + RETENTION_DAYS * DAY
        total = np.bincount(events.user[view], weights=events.dwell_ms[view], minlength=len(seen))
        count = np.bincount(events.user[view], minlength=len(seen))
        users = users[count[users] > 0]
        mean_dwell = total[users] / count[users] / 1000.0
        return self._user_units(users, mean_dwell, self.retained(users), z=False)

    # ------------------------------------------------------------ reduction
    def sufficient(self, metric: str, *, by_day: bool) -> dict[Key, Sufficient]:
        return reduce_units(getattr(self, metric)(), self.origin, by_day=by_day)

    def cumulative(self, metric: str) -> list[tuple[Sufficient, Sufficient]]:
        """(baseline, candidate) over all segments as a look at the end of each day saw them:
        days first..k for every k, one unit per user (what daily peeking at the report sees)."""
        units = getattr(self, metric)()
        days = int((self.end - self.start) // DAY)
        n = self.sim.spec.users
        shape = (n, days)
        index = (units.user, units.day - self.start // DAY)
        num, den, rows = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        np.add.at(num, index, units.num)
        np.add.at(den, index, units.den)
        np.add.at(rows, index, 1.0)
        num, den = np.cumsum(num, axis=1), np.cumsum(den, axis=1)
        seen = np.cumsum(rows, axis=1) > 0
        looks = []
        for arm in (0, 1):
            mine = seen & (self.sim.arm == arm)[:, None]
            x, y = num * mine, den * mine
            sums = [w.sum(axis=0) for w in (x, y, x * x, y * y, x * y)]
            looks.append(
                [
                    Sufficient(int(k), *(float(s[d]) for s in sums))
                    for d, k in enumerate(mine.sum(0))
                ]
            )
        return list(zip(looks[0], looks[1], strict=True))

    def percentile(
        self, q: float, *, by_day: bool
    ) -> dict[tuple[str, date | None], dict[str, float | int]]:
        """Nearest-rank quantile of end-to-end latency (ms) of live successful jobs."""
        jobs = self.jobs
        keep = self.live & ~jobs.failed
        latency = (jobs.queue_us + jobs.run_us + jobs.upload_us)[keep] / 1000.0
        day = jobs.t[keep] // DAY if by_day else np.zeros(int(keep.sum()), dtype=np.int64)
        found = {}
        for arm in (0, 1):
            for d in np.unique(day[jobs.arm[keep] == arm]):
                values = np.sort(latency[(jobs.arm[keep] == arm) & (day == d)])
                n = len(values)
                rank = next(r for r in range(1, n + 1) if r >= n * q and r - 1 < n * q)
                key_day = self.origin + timedelta(days=int(d)) if by_day else None
                found[(ARMS[arm], key_day)] = {"value": float(values[rank - 1]), "n": n}
        return found

    def failures_by_kind(self) -> dict[str, dict[str, int]]:
        jobs = self.jobs
        keep = self.live & jobs.failed
        found: dict[str, dict[str, int]] = {}
        for arm, kind in zip(jobs.arm[keep], jobs.failure[keep], strict=True):
            by_kind = found.setdefault(ARMS[arm], {})
            by_kind[FAILURE_KINDS[kind]] = by_kind.get(FAILURE_KINDS[kind], 0) + 1
        return found

    def exposures(self) -> dict[tuple[str, str], int]:
        """Users by (segment, arm at first exposure) that reached the system."""
        sim = self.sim
        assigned = (sim.arm >= 0) & ~sim.dropped
        found: dict[tuple[str, str], int] = {}
        for segment, arm in zip(sim.segment[assigned], sim.arm[assigned], strict=True):
            key = (SEGMENTS[segment], ARMS[arm])
            found[key] = found.get(key, 0) + 1
        return found


def reduce_units(units: Units, origin: date, *, by_day: bool) -> dict[Key, Sufficient]:
    """Group unit rows like ``analysis.metrics.sufficient_statistics`` does in SQL."""
    if len(units.user) == 0:
        return {}
    z = units.z if units.z is not None else np.zeros(len(units.user))
    days = units.day - units.day.min()
    n_days = int(days.max()) + 1
    n_users = int(units.user.max()) + 1
    group = (units.arm * len(SEGMENTS) + units.segment) * (n_days if by_day else 1)
    if by_day:
        group = group + days
    unit = group * n_users + units.user
    codes, inverse = np.unique(unit, return_inverse=True)
    num = np.bincount(inverse, weights=units.num)
    den = np.bincount(inverse, weights=units.den)
    zmax = np.full(len(codes), -np.inf)
    np.maximum.at(zmax, inverse, z)
    groups, members = np.unique(codes // n_users, return_inverse=True)
    sums = [
        np.bincount(members, weights=w, minlength=len(groups))
        for w in (num, den, num * num, den * den, num * den, zmax, zmax * zmax, num * zmax)
    ]
    counts = np.bincount(members, minlength=len(groups))
    found: dict[Key, Sufficient] = {}
    for index, code in enumerate(groups):
        rest, day = divmod(int(code), n_days) if by_day else (int(code), None)
        arm, segment = divmod(rest, len(SEGMENTS))
        key_day = origin + timedelta(days=int(units.day.min()) + day) if day is not None else None
        found[(ARMS[arm], SEGMENTS[segment], key_day)] = Sufficient(
            int(counts[index]), *(float(s[index]) for s in sums)
        )
    return found


def totals(stats: dict[Key, Sufficient]) -> tuple[Sufficient | None, Sufficient | None]:
    """Per arm, summed over segments (and days)."""
    found: dict[str, Sufficient] = {}
    for (arm, _, _), s in stats.items():
        found[arm] = found[arm] + s if arm in found else s
    return found.get("baseline"), found.get("candidate")
