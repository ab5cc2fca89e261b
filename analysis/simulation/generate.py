"""The traffic generator: users, sessions, generations and events, vectorised with numpy.

Deterministic given (spec, seed). A user's kind, engagement, sign-up, first exposure and
history before the experiment do not depend on the arm; everything from the first exposure
on is generated day by day *after* the arm is known, so the arm can come from the real
gateway (``analysis.simulation.pipeline``) or from a random split (fast, in memory).

Engagement is one latent number per user that raises both the chance of long views and
the chance of coming back, so dwell correlates with retention as the seed expects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field, dataclass, fields, replace
from datetime import date, timedelta
from typing import Any, ClassVar, Self

import numpy as np

from analysis.simulation.model import (
    BASELINE,
    CANDIDATE,
    DAY,
    DOWNLOAD,
    FAILURE_KINDS,
    FAILURE_WEIGHTS,
    FEEDBACK,
    FEEDBACK_REASONS,
    HOUR,
    KINDS,
    LOGIN,
    MINUTE,
    NEW_KIND,
    OUTSIDE,
    PAID,
    SECOND,
    SEGMENT_INDEX,
    SUBJECTS,
    TRIAL,
    VIEW,
    SimulationSpec,
)

DEFAULT_START = date(2026, 3, 2)
LONG_DWELL_MS = 15_000
MAX_SESSIONS = 4
MAX_PROMPTS = 10


def _sigmoid(x: np.ndarray) -> np.ndarray:
    p: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return p


class Columns:
    """A table as equally long numpy columns: the fields of a dataclass subclass."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # what @dataclass gives a subclass

    def __len__(self) -> int:
        return len(getattr(self, fields(self)[0].name))

    def take(self, index: np.ndarray) -> Self:
        columns = {f.name: getattr(self, f.name)[index] for f in fields(self)}
        return replace(self, **columns)

    @classmethod
    def concat(cls, parts: list[Self]) -> Self:
        if not parts:
            return cls.empty()
        names = [f.name for f in fields(cls)]
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in names))

    @classmethod
    def empty(cls) -> Self:
        return cls(*(np.zeros(0, dtype=np.int64) for _ in fields(cls)))


@dataclass
class Jobs(Columns):
    user: np.ndarray  # user index
    t: np.ndarray  # created_at, µs since the origin
    prompt: np.ndarray  # prompt id (model.prompt_text)
    arm: np.ndarray  # BASELINE, CANDIDATE or OUTSIDE (before the experiment)
    failed: np.ndarray
    failure: np.ndarray  # index into FAILURE_KINDS, -1 when it succeeded
    queue_us: np.ndarray
    run_us: np.ndarray
    upload_us: np.ndarray
    vram_bytes: np.ndarray  # 0 when it failed

    @property
    def started(self) -> np.ndarray:
        started: np.ndarray = self.t + self.queue_us
        return started

    @property
    def finished(self) -> np.ndarray:
        finished: np.ndarray = self.started + self.run_us + self.upload_us
        return finished


@dataclass
class Events(Columns):
    user: np.ndarray
    t: np.ndarray  # occurred_at, µs since the origin
    kind: np.ndarray  # model.VIEW ... model.PAID
    job: np.ndarray  # index into the simulation's jobs, -1 for user events
    dwell_ms: np.ndarray  # -1 unless a view
    reason: np.ndarray  # index into FEEDBACK_REASONS, -1 unless feedback


@dataclass
class Population:
    """Everything about the users that does not depend on the arm."""

    kind: np.ndarray
    engagement: np.ndarray
    p_active: np.ndarray
    p_long: np.ndarray
    p_retry: np.ndarray
    p_download: np.ndarray
    p_feedback: np.ndarray
    p_pay: np.ndarray
    p_style: np.ndarray
    p_trial: np.ndarray
    sessions: np.ndarray  # extra sessions per active day (Poisson mean)
    prompts: np.ndarray  # extra prompts per session (Poisson mean)
    signed_up: np.ndarray  # µs since the origin (negative: before it)
    arrival: np.ndarray  # first exposure, µs since the origin
    first_prompt: np.ndarray
    tz_minutes: np.ndarray  # the client's UTC offset
    drop_draw: np.ndarray  # uniform: below the segment's lost fraction, a user is lost

    @property
    def arrival_day(self) -> np.ndarray:
        return self.arrival // DAY


@dataclass
class Simulation:
    """A finished run: every record generated, and what the split made of each user."""

    spec: SimulationSpec
    seed: int
    start: date  # day 0 of the experiment
    population: Population
    jobs: Jobs
    events: Events
    arm: np.ndarray  # per user (BASELINE or CANDIDATE)
    segment: np.ndarray  # per user: index into gateway.segments.SEGMENTS at first exposure
    dropped: np.ndarray  # per user: traffic never recorded (broken split)

    @property
    def origin(self) -> date:
        return self.start - timedelta(days=self.spec.pre_days)

    def observed(self) -> Simulation:
        """The records that reach the system: a broken split loses the traffic of some
        candidate users from the experiment's start on (their history before stays)."""
        start = self.spec.pre_days * DAY
        kept_jobs = ~(self.dropped[self.jobs.user] & (self.jobs.t >= start))
        new_index = np.cumsum(kept_jobs) - 1
        events = self.events.take(~(self.dropped[self.events.user] & (self.events.t >= start)))
        events.job = np.where(events.job >= 0, new_index[np.maximum(events.job, 0)], -1)
        return replace(self, jobs=self.jobs.take(kept_jobs), events=events)


# (users arriving today, sorted by arrival) -> (arm, dropped), each per user
Assign = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
DayHook = Callable[[int, Jobs, Events, int], None]  # (day, jobs, events, first job index)


class Simulator:
    """One simulated experiment: construct, then ``run`` (or ``first_exposures``) once;
    it draws its random numbers as it goes, so a second run would differ."""

    def __init__(self, spec: SimulationSpec, seed: int, start: date = DEFAULT_START) -> None:
        self._used = False
        self.spec = spec
        self.seed = seed
        self.start = start
        streams = np.random.SeedSequence(seed).spawn(3)
        self._population_rng = np.random.default_rng(streams[0])
        self._day_rng = np.random.default_rng(streams[1])
        self.split_rng = np.random.default_rng(streams[2])  # for in-memory splits
        self.population = self._draw_population()
        self._styles = len(spec.rules.style_tags) + 1
        self._trialled = np.zeros(spec.users, dtype=bool)

    # ------------------------------------------------------------ the population
    def _draw_population(self) -> Population:
        spec, rng, n = self.spec, self._population_rng, self.spec.users
        shares = np.array([k.share for k in KINDS])
        kind = rng.choice(len(KINDS), size=n, p=shares / shares.sum())

        def of(name: str) -> np.ndarray:
            return np.array([getattr(k, name) for k in KINDS])[kind]

        engagement = rng.standard_normal(n)
        w = spec.engagement_weight
        new = kind == NEW_KIND
        arrival_day = np.where(
            new,
            rng.integers(0, spec.days, n),
            np.minimum(rng.geometric(0.5, n) - 1, spec.days - 1),
        )
        # whole seconds: SQLite's date arithmetic (storage.metrics.plus_days) drops fractions
        arrival = (spec.pre_days + arrival_day) * DAY + rng.integers(3600, 20 * 3600, n) * SECOND
        signed_up = np.where(
            new,
            arrival - rng.integers(2 * MINUTE, 6 * HOUR, n),
            -rng.integers(30 * DAY, 400 * DAY, n),
        )
        p_style = of("style")
        return Population(
            kind=kind,
            engagement=engagement,
            p_active=_sigmoid(of("activity") + w * engagement),
            p_long=_sigmoid(of("dwell") + 0.6 * w * engagement),
            p_retry=_sigmoid(of("retry") + 0.4 * rng.standard_normal(n)),
            p_download=_sigmoid(of("download") + 0.3 * engagement + 0.3 * rng.standard_normal(n)),
            p_feedback=_sigmoid(of("feedback") + 0.3 * rng.standard_normal(n)),
            p_pay=_sigmoid(of("pay") + 0.3 * engagement),
            p_style=p_style,
            p_trial=of("trial"),
            sessions=of("sessions"),
            prompts=of("prompts") * np.exp(0.3 * rng.standard_normal(n)),
            signed_up=signed_up,
            arrival=arrival,
            first_prompt=self._prompts(rng, p_style),
            tz_minutes=rng.choice(np.arange(-8, 10) * 60, n),
            drop_draw=rng.random(n),
        )

    def _prompts(self, rng: np.random.Generator, p_style: np.ndarray) -> np.ndarray:
        styles = len(self.spec.rules.style_tags)
        style = np.where(
            rng.random(len(p_style)) < p_style, rng.integers(1, styles + 1, len(p_style)), 0
        )
        return rng.integers(0, len(SUBJECTS), len(p_style)) * (styles + 1) + style

    # ------------------------------------------------------------ a run
    def run(self, assign: Assign | None = None, on_day: DayHook | None = None) -> Simulation:
        """Generate the pre-period, then each experiment day with the arms ``assign`` gives.

        ``assign`` gets the users arriving on a day in order of arrival (before any of that
        day's records exist) and returns their arms and which of them are lost; ``on_day``
        sees each day's records as they are made (the pipeline driver sends them).
        """
        self._once()
        spec, pop = self.spec, self.population
        assign = assign or self.random_split
        arm = np.full(spec.users, OUTSIDE, dtype=np.int64)
        dropped = np.zeros(spec.users, dtype=bool)
        job_parts: list[Jobs] = []
        event_parts: list[Events] = []
        offset = 0
        for day in range(-spec.pre_days, spec.days):
            today = spec.pre_days + day
            if day == 0:
                self.segments = self.expected_segments(Jobs.concat(job_parts))
            if day >= 0:
                arriving = np.flatnonzero(pop.arrival_day == today)
                arriving = arriving[np.argsort(pop.arrival[arriving], kind="stable")]
                arm[arriving], dropped[arriving] = assign(arriving)
            jobs, events = self._day(today, arm)
            if day == -spec.pre_days:
                events = Events.concat([self._pre_trials(), events])
            events = events.take(events.t < spec.horizon)  # nothing happens after the end
            events.job = np.where(events.job >= 0, events.job + offset, -1)
            if on_day is not None:
                on_day(day, jobs, events, offset)
            job_parts.append(jobs)
            event_parts.append(events)
            offset += len(jobs)
        return Simulation(
            spec=spec,
            seed=self.seed,
            start=self.start,
            population=pop,
            jobs=Jobs.concat(job_parts),
            events=Events.concat(event_parts),
            arm=arm,
            segment=self.segments.copy(),
            dropped=dropped,
        )

    def first_exposures(self, assign: Assign | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Each user's arm and whether the split lost them, without the experiment's traffic
        (the same arms as ``run`` gives for this seed)."""
        self._once()
        spec, pop = self.spec, self.population
        arm = np.full(spec.users, OUTSIDE, dtype=np.int64)
        history = [self._day(today, arm)[0] for today in range(spec.pre_days)]
        self.segments = self.expected_segments(Jobs.concat(history))
        lost = np.zeros(spec.users, dtype=bool)
        for today in range(spec.pre_days, spec.pre_days + spec.days):
            arriving = np.flatnonzero(pop.arrival_day == today)
            arriving = arriving[np.argsort(pop.arrival[arriving], kind="stable")]
            arm[arriving], lost[arriving] = (assign or self.random_split)(arriving)
        return arm, lost

    def _once(self) -> None:
        if self._used:
            raise RuntimeError("a Simulator runs once; make a new one with the same seed")
        self._used = True

    def random_split(self, arriving: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The configured share per segment, drawn at random (in place of the gateway's hash)."""
        shares = np.array([self.spec.share(int(s)) for s in self.segments[arriving]])
        arm = np.where(self.split_rng.random(len(arriving)) < shares, CANDIDATE, BASELINE)
        return arm, self.lost(arriving, arm)

    def lost(self, users: np.ndarray, arm: np.ndarray) -> np.ndarray:
        """A broken split: a share of one arm's users (per segment) never reach the system."""
        fraction = np.array([self.spec.lost_fraction(int(s)) for s in self.segments[users]])
        lost_arm = np.where(fraction > 0, CANDIDATE, BASELINE)
        draw = self.population.drop_draw[users]
        lost: np.ndarray = (arm == lost_arm) & (draw < np.abs(fraction))
        return lost

    # ------------------------------------------------------------ segments
    def expected_segments(self, history: Jobs) -> np.ndarray:
        """gateway.segments.segment_of on what the gateway reads at each first exposure."""
        rules, pop, n = self.spec.rules, self.population, self.spec.users
        at = pop.arrival[history.user]
        before = history.t < at
        window = int(rules.high_frequency_window_days * DAY)
        generations = np.bincount(history.user[before & (history.t >= at - window)], minlength=n)
        styled = before & (history.prompt % self._styles > 0)
        style_uses = np.bincount(history.user[styled], minlength=n)
        segment = np.full(n, SEGMENT_INDEX["everyone_else"])
        segment[style_uses >= rules.style_preference_min_uses] = SEGMENT_INDEX["style_preference"]
        frequent = generations >= rules.high_frequency_min_generations
        segment[frequent] = SEGMENT_INDEX["high_frequency"]
        segment[pop.arrival - pop.signed_up <= int(rules.new_user_days * DAY)] = SEGMENT_INDEX[
            "new_user"
        ]
        return segment

    # ------------------------------------------------------------ one day
    def _active(self, today: int, arm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Users active today, and which of them arrive today (their first exposure)."""
        pop, rng = self.population, self._day_rng
        draw = rng.random(self.spec.users)
        if today < self.spec.pre_days:
            active = (pop.kind != NEW_KIND) & (draw < pop.p_active)
            return np.flatnonzero(active), np.zeros(int(active.sum()), dtype=bool)
        first = (pop.arrival_day == today) & (arm != OUTSIDE)
        scale = np.where(arm == CANDIDATE, 1.0 + self.spec.effects.retention, 1.0)
        back = (pop.arrival_day < today) & (draw < np.minimum(pop.p_active * scale, 0.99))
        users = np.flatnonzero(first | back)
        return users, first[users]

    def _scaled(self, p: np.ndarray, arm: np.ndarray, effect: str, cap: float = 0.99) -> np.ndarray:
        scale = np.where(arm == CANDIDATE, 1.0 + getattr(self.spec.effects, effect), 1.0)
        scaled: np.ndarray = np.minimum(p * scale, cap)
        return scaled

    def _sessions(
        self, today: int, users: np.ndarray, first: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user, start, is the arrival session) per session; a day's sessions never overlap."""
        pop, rng = self.population, self._day_rng
        count = 1 + np.minimum(rng.poisson(pop.sessions[users]), MAX_SESSIONS - 1)
        begin = np.where(first, pop.arrival[users] - today * DAY, 0)
        slot = (DAY - HOUR - begin) // count  # >= 45 min: a session lasts at most ~33 min
        user = np.repeat(users, count)
        k = np.arange(len(user)) - np.repeat(np.cumsum(count) - count, count)
        arrival_session = np.repeat(first, count) & (k == 0)
        room = np.maximum(np.repeat(slot, count) - 40 * MINUTE, 0)
        jitter = np.where(arrival_session, 0, (rng.random(len(user)) * room).astype(np.int64))
        start = today * DAY + np.repeat(begin, count) + k * np.repeat(slot, count) + jitter
        return user, start, arrival_session

    def _generations(
        self, user: np.ndarray, start: np.ndarray, arrival: np.ndarray, arm: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user, time, prompt) of a session's generations: new prompts and quick retries."""
        pop, rng = self.population, self._day_rng
        mean = pop.prompts[user] * np.where(
            arm[user] == CANDIDATE, 1.0 + self.spec.effects.generation_rate, 1.0
        )
        count = 1 + np.minimum(rng.poisson(mean), MAX_PROMPTS - 1)
        session = np.repeat(np.arange(len(user)), count)
        first_slot = np.cumsum(count) - count
        position = np.arange(len(session)) - np.repeat(first_slot, count)
        who = user[session]
        retry = rng.random(len(who)) < self._scaled(pop.p_retry[who], arm[who], "quick_retry", 0.95)
        delay = rng.integers(3 * SECOND, 25 * SECOND, len(who))
        hurried = rng.random(len(who)) < 0.05  # a quick *different* prompt: not a retry
        gap = np.where(
            hurried,
            rng.integers(8 * SECOND, 25 * SECOND, len(who)),
            40 * SECOND
            + np.minimum(rng.exponential(50 * SECOND, len(who)), 140 * SECOND).astype(np.int64),
        )
        step = retry * delay + gap
        before = np.cumsum(step) - step
        when = start[session] + before - np.repeat(before[first_slot], count)
        prompt = self._prompt_chain(who, position, hurried, arrival, first_slot)
        users = np.concatenate([who, who[retry]])
        times = np.concatenate([when, when[retry] + delay[retry]])
        prompts = np.concatenate([prompt, prompt[retry]])
        order = np.argsort(times, kind="stable")
        return users[order], times[order], prompts[order]

    def _prompt_chain(
        self,
        who: np.ndarray,
        position: np.ndarray,
        hurried: np.ndarray,
        arrival: np.ndarray,
        first_slot: np.ndarray,
    ) -> np.ndarray:
        """Fresh prompts, sometimes the previous one again later (not a quick retry)."""
        rng, pop = self._day_rng, self.population
        total = len(SUBJECTS) * self._styles
        prompt = self._prompts(rng, pop.p_style[who])
        again = rng.random(len(who)) < 0.1
        other = rng.integers(1, total, len(who))
        firsts = first_slot[arrival]
        prompt[firsts] = pop.first_prompt[who[firsts]]
        for i in range(1, MAX_PROMPTS):
            at = np.flatnonzero(position == i)
            if not len(at):
                break
            previous = prompt[at - 1]
            prompt[at] = np.where(
                hurried[at - 1],
                (previous + other[at]) % total,
                np.where(again[at], previous, prompt[at]),
            )
        return prompt

    def _outcomes(
        self, user: np.ndarray, t: np.ndarray, prompt: np.ndarray, arm: np.ndarray
    ) -> Jobs:
        rng, n = self._day_rng, len(user)
        job_arm = arm[user]
        failed = rng.random(n) < self._scaled(
            np.full(n, self.spec.failure_rate), job_arm, "failure", 0.9
        )
        kind = rng.choice(len(FAILURE_KINDS), size=n, p=np.array(FAILURE_WEIGHTS))
        latency = np.where(job_arm == CANDIDATE, 1.0 + self.spec.effects.latency, 1.0)
        run = rng.lognormal(np.log(3.2 * SECOND), 0.3, n) * latency
        run = np.where(failed, run * rng.uniform(0.1, 1.0, n), run).astype(np.int64)
        vram = (rng.normal(17.5, 0.7, n) * 2**30).astype(np.int64)
        return Jobs(
            user=user,
            t=t,
            prompt=prompt,
            arm=job_arm,
            failed=failed,
            failure=np.where(failed, kind, -1),
            queue_us=5_000 + rng.exponential(400_000, n).astype(np.int64),
            run_us=run,
            upload_us=np.where(failed, 0, rng.integers(40_000, 250_000, n)),
            vram_bytes=np.where(failed, 0, vram),
        )

    def _reactions(self, jobs: Jobs) -> Events:
        """Views (with dwell), downloads (sometimes clicked twice) and negative feedback."""
        rng, pop = self._day_rng, self.population
        ok = np.flatnonzero(~jobs.failed)
        user, arm, n = jobs.user[ok], jobs.arm[ok], len(ok)
        draw = rng.random(n)
        views = np.where(draw < 0.05, 0, np.where(draw < 0.9, 1, 2))
        p_long = self._scaled(pop.p_long[user], arm, "dwell")

        def dwell() -> np.ndarray:
            long = rng.random(n) < p_long
            return np.where(
                long,
                LONG_DWELL_MS + rng.exponential(20_000, n).astype(np.int64),
                rng.integers(500, LONG_DWELL_MS, n),
            )

        dwell1, dwell2 = dwell(), dwell()
        seen1 = jobs.finished[ok] + rng.integers(200_000, 2 * SECOND, n)
        seen2 = seen1 + dwell1 * 1000 + rng.integers(60 * SECOND, 900 * SECOND, n)
        viewed = views >= 1
        download = viewed & (rng.random(n) < self._scaled(pop.p_download[user], arm, "download"))
        twice = download & (rng.random(n) < 0.05)
        download_at = seen1 + (dwell1 * 1000 * rng.uniform(0.3, 1.0, n)).astype(np.int64)
        feedback = viewed & (
            rng.random(n) < self._scaled(pop.p_feedback[user], arm, "negative_feedback")
        )
        reason = rng.integers(0, len(FEEDBACK_REASONS), n)
        # (mask, time, kind, dwell_ms, reason): scalars broadcast
        parts: list[tuple[np.ndarray, np.ndarray, int, np.ndarray | int, np.ndarray | int]] = [
            (viewed, seen1, VIEW, dwell1, -1),
            (views == 2, seen2, VIEW, dwell2, -1),
            (download, download_at, DOWNLOAD, -1, -1),
            (twice, download_at + 400_000, DOWNLOAD, -1, -1),
            (feedback, seen1 + dwell1 * 1000 + SECOND, FEEDBACK, -1, reason),
        ]
        return Events.concat(
            [
                Events(
                    user=user[mask],
                    t=np.broadcast_to(t, n)[mask],
                    kind=np.full(int(mask.sum()), kind),
                    job=ok[mask],
                    dwell_ms=np.broadcast_to(d, n)[mask],
                    reason=np.broadcast_to(r, n)[mask],
                )
                for mask, t, kind, d, r in parts
            ]
        )

    def _user_events(self, user: np.ndarray, start: np.ndarray, arm: np.ndarray) -> Events:
        """A login per session; on a user's first session of a day, perhaps a trial."""
        rng, pop, n = self._day_rng, self.population, len(user)
        login = start - rng.integers(SECOND, 5 * SECOND, n)
        first = np.r_[True, user[1:] != user[:-1]] if n else np.zeros(0, dtype=bool)
        candidates = first & ~self._trialled[user]
        trial = candidates & (rng.random(n) < pop.p_trial[user])
        trial &= arm[user] != OUTSIDE
        self._trialled[user[trial]] = True
        pays = trial & (rng.random(n) < self._scaled(pop.p_pay[user], arm[user], "conversion"))
        trial_at = start + 90 * SECOND
        paid_at = trial_at + rng.integers(HOUR, 72 * HOUR, n)
        pays &= paid_at < self.spec.horizon
        return _user_events(
            (user, login, LOGIN),
            (user[trial], trial_at[trial], TRIAL),
            (user[pays], paid_at[pays], PAID),
        )

    def _pre_trials(self) -> Events:
        """A few existing users tried the paid plan before the experiment (not counted)."""
        rng, pop, n = self._population_rng, self.population, self.spec.users
        if self.spec.pre_days == 0:
            return Events.empty()
        trial = (pop.kind != NEW_KIND) & (rng.random(n) < 0.03)
        at = rng.integers(0, self.spec.pre_days * DAY, n)
        pays = trial & (rng.random(n) < pop.p_pay)
        paid_at = at + rng.integers(HOUR, 72 * HOUR, n)
        self._trialled |= trial
        users = np.arange(n)
        return _user_events((users[trial], at[trial], TRIAL), (users[pays], paid_at[pays], PAID))

    def _day(self, today: int, arm: np.ndarray) -> tuple[Jobs, Events]:
        users, first = self._active(today, arm)
        session_user, start, arrival = self._sessions(today, users, first)
        user, t, prompt = self._generations(session_user, start, arrival, arm)
        jobs = self._outcomes(user, t, prompt, arm)
        events = [self._user_events(session_user, start, arm)]
        if today >= self.spec.pre_days:  # before the experiment only generations count
            events.append(self._reactions(jobs))
        return jobs, Events.concat(events)


def _user_events(*parts: tuple[np.ndarray, np.ndarray, int]) -> Events:
    return Events.concat(
        [
            Events(
                user=user,
                t=t,
                kind=np.full(len(user), kind),
                job=np.full(len(user), -1),
                dwell_ms=np.full(len(user), -1),
                reason=np.full(len(user), -1),
            )
            for user, t, kind in parts
        ]
    )
