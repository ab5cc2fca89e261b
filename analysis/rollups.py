"""Reports that do not grow with history: completed days rolled up once, then read back.

What is stored (storage.rollups, table ``metric_unit_rows``) is each metric's per-user rows
exactly as the report's own per-user query gives them, so that the incremental report
reduces stored rows (and the rows of days not rolled up yet, computed live) with the same
SQL as the full recomputation and gets the same numbers:

- daily metrics (success rate, peak VRAM, the three per-image event metrics, quick
  retries): one row per (job day, arm, segment, user) with the user's partial num and den
  of that day. A sum over days is additive, but a metric's variance is clustered by user
  over the window (the sum of squares of each user's window total), which is not: hence
  per-user-per-day partials, summed per user at report time. A quick retry of a day's last
  job may come just after midnight: it counts unless the day ends the window, so quick
  retries are stored both ways (``as_last``), and a day is complete 60 s after midnight.
- value metrics with an observation period (7-day retention and the dwell/retention
  correlation: 8 days after exposure; generations in week 1: 7 days): one row per user of
  an exposure cohort day, stored by the roll-up of the day that completes the cohort's
  observation (cohort day + 8, or + 7).
- trial-to-paid conversion is always recomputed: a payment counts whenever it comes, so a
  cohort's numbers never settle.

P95 latency, failures by kind, the sample-ratio test and the golden look-up are recomputed
as before (a nearest-rank percentile is not additive over days). The trajectory (the
cumulative comparison at each day's end) is computed in one pass over the per-user rows
(storage.metrics.cumulative_sums_running) instead of once per day.

Late data. A day's rows are valid as of its ``checked_at``: every event received before is
in them. An event received after the ``checked_at`` of a day it counts toward (its job's day
for views, downloads and feedback; its own day for the logins and views of the value
metrics' cohorts) is late, and so is a job of a rolled-up day that finished after the
roll-up (its id was kept in ``metric_rollup_pending``). The report computes such a day (and
every later one) live, so its numbers stay exact, and says how many late events it found;
the scheduled roll-up re-rolls the day, adds the late events to the day's ``late_events``
count (shown by every later report) and marks every other day checked.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from time import perf_counter
from typing import Any

from sqlalchemy import select, text, union_all
from sqlalchemy.engine import Engine
from sqlalchemy.sql import Select

from analysis import metrics as m
from storage import rollups as store
from storage.metrics import (
    NARROW_UNITS,
    QUICK_RETRY_S,
    RETENTION_DAYS,
    UnitQuery,
    Window,
    dwell_vs_retention,
)
from storage.models import utcnow

# days after its exposure day that a cohort's rows depend on
COHORT_DAYS = {
    "retention_7d": RETENTION_DAYS + 1,
    "dwell_vs_retention": RETENTION_DAYS + 1,
    "generations_per_week": RETENTION_DAYS,
}
ALWAYS_LIVE = frozenset({"trial_to_paid"})
# a quick retry of a day's last job may come just after midnight: it counts unless the day
# is the window's last, so these metrics store a day's rows both ways (see as_last)
LOOKS_AHEAD = frozenset({"quick_retry_share"})
LOOKAHEAD = timedelta(seconds=2 * QUICK_RETRY_S)
# a login or view on day X counts toward the cohorts X-8..X, stored by the roll-ups of X..X+8
EVENT_REACH = max(COHORT_DAYS.values())
NARROW_MAX = timedelta(days=3)  # live windows up to this long read events job by job
ONE_DAY = timedelta(days=1)


def rolled_metrics() -> list[tuple[str, UnitQuery]]:
    """Every per-user query a report reduces, by name (the metrics and the correlation)."""
    found = [(metric.name, metric.units) for metric in m.METRICS]
    return [*found, ("dwell_vs_retention", dwell_vs_retention)]


def as_last(metric: str) -> str:
    """The stored name of a look-ahead metric's rows for a day that ends its window."""
    return f"{metric}@last"


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def is_complete(day: date, now: datetime) -> bool:
    """A day can be rolled up once it is over and quick retries cannot reach it."""
    return now >= midnight(day + ONE_DAY) + LOOKAHEAD


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


# ---------------------------------------------------------------- rolling up


def roll_up_day(
    engine: Engine, experiment: str, day: date, *, late_events: int = 0, late_outcomes: int = 0
) -> None:
    """Store the rows a completed ``day`` settles (one transaction: a report sees all of it
    or none): every daily metric's rows of the day, and the cohorts whose observation ends
    with it. Replaces what an earlier roll-up of the day stored."""
    at = utcnow()  # before the reads: an event received later is checked next time
    replace = bool(store.rollups(engine, experiment, day, day))
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SET LOCAL jit = off"))
        for name, units in rolled_metrics():
            if name in ALWAYS_LIVE:
                continue
            if name in COHORT_DAYS:
                k = COHORT_DAYS[name]
                cohort = day - timedelta(days=k)
                window = Window(experiment, midnight(cohort), midnight(cohort + (k + 1) * ONE_DAY))
                rows = units(engine, window)
                store.store_rows(connection, experiment, name, cohort, rows, replace=replace)
                continue
            live = NARROW_UNITS.get(units, units)
            one_day = Window(experiment, midnight(day), midnight(day + ONE_DAY))
            if name in LOOKS_AHEAD:  # as the window's last day, and as any other day
                last_rows = live(engine, one_day)
                store.store_rows(
                    connection, experiment, as_last(name), day, last_rows, replace=replace
                )
                one_day = Window(experiment, one_day.start, one_day.end + LOOKAHEAD)
            rows = live(engine, one_day)
            store.store_rows(connection, experiment, name, day, rows, replace=replace)
        store.record_pending(connection, experiment, day)
        store.record_rollup(
            connection, experiment, day, at, late_events=late_events, late_outcomes=late_outcomes
        )


@dataclass
class Staleness:
    """Rolled-up days whose rows miss data that came after their roll-up."""

    late_events: int = 0
    late_outcomes: int = 0
    # day -> (late events, late job outcomes) attributed to it
    days: dict[date, list[int]] = field(default_factory=dict)


def find_stale(engine: Engine, experiment: str, states: dict[date, store.RollupState]) -> Staleness:
    """Late events and late job outcomes of the rolled-up days ``states``."""
    found = Staleness()
    if not states:
        return found
    job_since = {day: s.checked_at for day, s in states.items()}
    event_since = {}
    for day in _days(min(states) - timedelta(days=EVENT_REACH), max(states)):
        reached = [
            states[z].checked_at for z in _days(day, day + EVENT_REACH * ONE_DAY) if z in states
        ]
        if reached:
            event_since[day] = min(reached)
    for group in store.late_events(engine, experiment, job_since, event_since):
        targets = set()
        if group.job_day is not None:
            targets.add(group.job_day)
        if group.event_day is not None:
            targets |= {
                z
                for z in _days(group.event_day, group.event_day + EVENT_REACH * ONE_DAY)
                if z in states and states[z].checked_at < group.last_received
            }
        found.late_events += group.events
        found.days.setdefault(min(targets), [0, 0])[0] += group.events
        for day in targets:
            found.days.setdefault(day, [0, 0])
    for day, n in store.finished_pending(engine, experiment, sorted(states)).items():
        found.late_outcomes += n
        found.days.setdefault(day, [0, 0])[1] += n
    return found


@dataclass(frozen=True)
class RollupRun:
    experiment: str
    rolled_up: list[date]  # days rolled up for the first time
    rerolled: list[date]  # days rolled up again because of late data
    late_events: int
    late_outcomes: int
    seconds: float


def roll_up(
    engine: Engine, experiment: str, first: date, last: date, now: datetime | None = None
) -> RollupRun:
    """Roll up every completed day in [first, last] not rolled up yet, re-roll the rolled-up
    days with late data (counting it), and mark the other days checked up to now."""
    started = perf_counter()
    at = now or utcnow()
    states = store.rollups(engine, experiment, first, last)
    stale = find_stale(engine, experiment, states)
    for day in sorted(stale.days):
        events, outcomes = stale.days[day]
        roll_up_day(engine, experiment, day, late_events=events, late_outcomes=outcomes)
    new = [d for d in _days(first, last) if d not in states and is_complete(d, at)]
    for day in new:
        roll_up_day(engine, experiment, day)
    store.mark_checked(engine, experiment, [d for d in states if d not in stale.days], at)
    if new or stale.days:
        store.analyze(engine)
    return RollupRun(
        experiment, new, sorted(stale.days), stale.late_events, stale.late_outcomes,
        perf_counter() - started,
    )  # fmt: skip


# ---------------------------------------------------------------- the incremental report


@dataclass(frozen=True)
class Plan:
    """What an incremental report over [first, last] reads from the roll-ups."""

    experiment: str
    first: date
    last: date
    stored_through: date  # days first..stored_through come from roll-ups (first - 1: none)
    stored_days: int
    late_events_folded: int  # late events re-rolled into the window's stored days
    late_outcomes_folded: int
    late_events_found: int  # late events found now: their days are computed live
    late_outcomes_found: int
    stale_days: list[date]

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("first", "last", "stored_through"):
            data[key] = data[key].isoformat()
        data["stale_days"] = [d.isoformat() for d in self.stale_days]
        data["mode"] = "incremental"
        data["late_events"] = self.late_events_folded + self.late_events_found
        return data


def plan(engine: Engine, experiment: str, first: date, last: date) -> Plan:
    """The longest run of rolled-up days from ``first`` (up to ``last``) with no late data."""
    states = store.rollups(engine, experiment, first, last)
    stale = find_stale(engine, experiment, states)
    through = first - ONE_DAY
    while through < last and through + ONE_DAY in states and through + ONE_DAY not in stale.days:
        through += ONE_DAY
    used = [states[d] for d in _days(first, through)] if through >= first else []
    return Plan(
        experiment, first, last, through, len(used),
        sum(s.late_events for s in used), sum(s.late_outcomes for s in used),
        stale.late_events, stale.late_outcomes, sorted(stale.days),
    )  # fmt: skip


def incremental_units(name: str, units: UnitQuery, p: Plan) -> UnitQuery:
    """``units`` over any window inside the plan's: stored rows for the stored days (or
    cohorts), the metric's own query for the rest (nothing when every day is stored)."""

    def build(engine: Engine, window: Window) -> Select[Any]:
        first = window.start.date()
        last = (window.end - ONE_DAY).date()
        if name in ALWAYS_LIVE:
            return units(engine, window)
        k = COHORT_DAYS.get(name, 0)
        cut = min(p.stored_through, last) - k * ONE_DAY
        if cut < first:
            return units(engine, window)
        live_window = Window(window.experiment, midnight(cut + ONE_DAY), window.end)
        live_units = units
        if window.end - live_window.start <= NARROW_MAX:
            live_units = NARROW_UNITS.get(units, units)
        live = live_units(engine, live_window)  # built, run only if some day is not stored
        has_z = "z" in live.selected_columns
        parts = []
        if name in LOOKS_AHEAD and cut == last:
            if last > first:
                parts.append(
                    store.stored_rows(window.experiment, name, first, last - ONE_DAY, has_z=has_z)
                )
            parts.append(
                store.stored_rows(window.experiment, as_last(name), last, last, has_z=has_z)
            )
        else:
            parts.append(store.stored_rows(window.experiment, name, first, cut, has_z=has_z))
        if cut < last - k * ONE_DAY:
            parts.append(live)
        rows = (union_all(*parts) if len(parts) > 1 else parts[0]).subquery("incremental_rows")
        return select(*rows.c)

    return build
