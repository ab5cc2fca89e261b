"""The SQL of metric roll-ups (the logic is analysis.rollups'): completed days' per-user
metric rows stored once (``metric_unit_rows``), the log of rolled-up days
(``metric_rollups``), the jobs still unfinished at a roll-up (``metric_rollup_pending``),
and the look-up of late events.

Stored rows have the columns of the report's per-user queries (storage.metrics: arm,
segment, day, unit, num, den[, z]), so a report reduces stored and live rows together with
the same SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    Date,
    DateTime,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Select
from sqlmodel import col

from storage.db import dialect_insert
from storage.metrics import day_of
from storage.models import (
    JOB_EVENTS,
    TERMINAL_STATUSES,
    Event,
    EventType,
    Job,
    MetricRollup,
    MetricRollupPending,
    MetricUnitRow,
)

# events that count toward a day by their own time (retention's logins, the dwell of the
# first week's views), not by their job's day
USER_DAY_EVENTS = (EventType.LOGIN, EventType.IMAGE_VIEWED)


@dataclass(frozen=True)
class RollupState:
    day: date
    rolled_up_at: datetime
    checked_at: datetime  # every event received before this is reflected in the day's rows
    late_events: int
    late_outcomes: int
    rerolls: int


def _aware(value: object) -> datetime:
    """A stored time as an aware UTC datetime (SQLite gives it back naive, or as text)."""
    found = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return found if found.tzinfo else found.replace(tzinfo=UTC)


def _date(value: object) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def rollups(engine: Engine, experiment: str, first: date, last: date) -> dict[date, RollupState]:
    """The rolled-up days of ``experiment`` in [first, last]."""
    query = select(
        col(MetricRollup.day),
        col(MetricRollup.rolled_up_at),
        col(MetricRollup.checked_at),
        col(MetricRollup.late_events),
        col(MetricRollup.late_outcomes),
        col(MetricRollup.rerolls),
    ).where(
        col(MetricRollup.experiment) == experiment,
        col(MetricRollup.day) >= first,
        col(MetricRollup.day) <= last,
    )
    with engine.connect() as connection:
        return {
            _date(day): RollupState(_date(day), _aware(at), _aware(checked), *counts)
            for day, at, checked, *counts in connection.execute(query)
        }


def store_rows(
    connection: Connection,
    experiment: str,
    metric: str,
    day: date,
    rows: Select[Any],
    *,
    replace: bool = True,
) -> None:
    """Store the rows of the per-user query ``rows`` whose day is ``day`` (a query may read a
    little past it, as quick retries do) as the rows of (metric, day), replacing the rows
    stored before (``replace``; a first roll-up has none to look for)."""
    if replace:
        connection.execute(
            delete(MetricUnitRow).where(
                col(MetricUnitRow.experiment) == experiment,
                col(MetricUnitRow.metric) == metric,
                col(MetricUnitRow.day) == day,
            )
        )
    found = rows.subquery()
    has_z = "z" in found.c
    engine_day = found.c.day
    if connection.dialect.name == "sqlite":  # func.date() gives text, as SQLite stores a Date
        wanted: Any = literal(day.isoformat())
    else:
        wanted = literal(day, Date)
    source = select(
        literal(experiment),
        literal(metric),
        engine_day,
        found.c.arm,
        found.c.segment,
        found.c.unit,
        found.c.num,
        found.c.den,
        found.c.z if has_z else literal(None),
    ).where(engine_day == wanted)
    table = MetricUnitRow.__table__  # type: ignore[attr-defined]  # SQLModel leaves __table__ undeclared
    connection.execute(
        insert(table).from_select(
            ["experiment", "metric", "day", "arm", "segment", "unit", "num", "den", "z"], source
        )
    )


def stored_rows(
    experiment: str, metric: str, first: date, last: date, *, has_z: bool
) -> Select[Any]:
    """The stored per-user rows of ``metric`` for days [first, last], as the metric's query
    gives its rows (arm, segment, day, unit, num, den[, z])."""
    t = MetricUnitRow
    columns: list[Any] = [
        col(t.arm).label("arm"),
        col(t.segment).label("segment"),
        col(t.day).label("day"),
        col(t.unit).label("unit"),
        col(t.num).label("num"),
        col(t.den).label("den"),
    ]
    if has_z:
        columns.append(col(t.z).label("z"))
    return select(*columns).where(
        col(t.experiment) == experiment,
        col(t.metric) == metric,
        col(t.day) >= first,
        col(t.day) <= last,
    )


def record_pending(connection: Connection, experiment: str, day: date) -> int:
    """Remember the day's experiment jobs that have not finished yet; returns how many."""
    connection.execute(
        delete(MetricRollupPending).where(
            col(MetricRollupPending.experiment) == experiment,
            col(MetricRollupPending.day) == day,
        )
    )
    engine_day = day_of(connection.engine, col(Job.created_at))
    wanted: Any = literal(day.isoformat()) if connection.dialect.name == "sqlite" else day
    source = select(literal(experiment), literal(day, Date), col(Job.id)).where(
        col(Job.experiment) == experiment,
        col(Job.arm).is_not(None),
        engine_day == wanted,
        col(Job.status).not_in(TERMINAL_STATUSES),
    )
    table = MetricRollupPending.__table__  # type: ignore[attr-defined]  # SQLModel leaves __table__ undeclared
    result = connection.execute(insert(table).from_select(["experiment", "day", "job_id"], source))
    return int(result.rowcount or 0)


def record_rollup(
    connection: Connection,
    experiment: str,
    day: date,
    at: datetime,
    *,
    late_events: int = 0,
    late_outcomes: int = 0,
) -> None:
    """Log a roll-up (or re-roll) of ``day`` done with the data as of ``at``."""
    values = {
        "experiment": experiment, "day": day, "rolled_up_at": at, "checked_at": at,
        "late_events": late_events, "late_outcomes": late_outcomes, "rerolls": 0,
    }  # fmt: skip
    statement = dialect_insert(connection.engine)(MetricRollup).values(**values)
    excluded = statement.excluded
    statement = statement.on_conflict_do_update(
        index_elements=["experiment", "day"],
        set_={
            "rolled_up_at": excluded.rolled_up_at,
            "checked_at": excluded.checked_at,
            "late_events": col(MetricRollup.late_events) + excluded.late_events,
            "late_outcomes": col(MetricRollup.late_outcomes) + excluded.late_outcomes,
            "rerolls": col(MetricRollup.rerolls) + 1,
        },
    )
    connection.execute(statement)


def analyze(engine: Engine) -> None:
    """Fresh planner statistics of the stored rows after a roll-up (PostgreSQL; autovacuum
    would get there later): the report's plans depend on how many rows a metric has."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("ANALYZE metric_unit_rows"))


def mark_checked(engine: Engine, experiment: str, days: Iterable[date], at: datetime) -> None:
    """Every event received before ``at`` is reflected in these days' rows (none was late)."""
    days = sorted(days)
    if not days:
        return
    with engine.begin() as connection:
        connection.execute(
            update(MetricRollup)
            .where(col(MetricRollup.experiment) == experiment, col(MetricRollup.day).in_(days))
            .values(checked_at=at)
        )


def finished_pending(engine: Engine, experiment: str, days: Sequence[date]) -> dict[date, int]:
    """Per rolled-up day: its jobs unfinished at the roll-up that have finished since."""
    if not days:
        return {}
    p = MetricRollupPending
    query = (
        select(col(p.day), func.count())
        .select_from(p)
        .join(Job, col(Job.id) == col(p.job_id))
        .where(
            col(p.experiment) == experiment,
            col(p.day).in_(sorted(days)),
            col(Job.status).in_(TERMINAL_STATUSES),
        )
        .group_by(col(p.day))
    )
    with engine.connect() as connection:
        return {_date(day): int(n) for day, n in connection.execute(query)}


@dataclass(frozen=True)
class LateGroup:
    """Late events grouped by the rolled-up day they count toward: by their job's day
    (``job_day``; views, downloads, feedback) and/or by their own day (``event_day``;
    logins and views for the value metrics' cohorts). An event late both ways is one."""

    job_day: date | None
    event_day: date | None
    events: int
    last_received: datetime


def late_events(
    engine: Engine,
    experiment: str,
    job_day_since: dict[date, datetime],
    event_day_since: dict[date, datetime],
) -> list[LateGroup]:
    """Events received after the time given for the day they count toward: for a job event,
    its job's day in ``job_day_since``; for a login or a view, its own day in
    ``event_day_since``. Reads the events received since the earliest of those times (one
    range of the received_at index) and their jobs (by primary key)."""
    if not job_day_since and not event_day_since:
        return []
    days = sorted(set(job_day_since) | set(event_day_since))
    sqlite = engine.dialect.name == "sqlite"

    def day_literal(day: date) -> Any:
        return literal(day.isoformat()) if sqlite else literal(day, Date)

    thresholds = [
        select(
            day_literal(day).label("day"),
            literal(job_day_since.get(day), DateTime(timezone=True)).label("t_job"),
            literal(event_day_since.get(day), DateTime(timezone=True)).label("t_event"),
        )
        for day in days
    ]
    th = thresholds[0] if len(thresholds) == 1 else thresholds[0].union_all(*thresholds[1:])
    by_job = th.subquery("by_job")
    by_event = th.subquery("by_event")
    since = min([*job_day_since.values(), *event_day_since.values()])
    job_day = day_of(engine, col(Job.created_at))
    event_day = day_of(engine, col(Event.occurred_at))
    job_late = and_(
        col(Event.type).in_(JOB_EVENTS),
        by_job.c.t_job.is_not(None),
        col(Event.received_at) > by_job.c.t_job,
    )
    event_late = and_(
        col(Event.type).in_(USER_DAY_EVENTS),
        by_event.c.t_event.is_not(None),
        col(Event.received_at) > by_event.c.t_event,
    )
    late_job_day = case((job_late, by_job.c.day), else_=None).label("job_day")
    late_event_day = case((event_late, by_event.c.day), else_=None).label("event_day")
    events_table = Event.__table__  # type: ignore[attr-defined]  # SQLModel leaves __table__ undeclared
    query = (
        select(late_job_day, late_event_day, func.count(), func.max(col(Event.received_at)))
        .select_from(
            events_table.outerjoin(
                Job,
                and_(
                    col(Job.id) == col(Event.job_id),
                    col(Job.experiment) == experiment,
                    col(Job.arm).is_not(None),
                ),
            )
            .outerjoin(by_job, by_job.c.day == job_day)
            .outerjoin(by_event, by_event.c.day == event_day)
        )
        .where(
            col(Event.received_at) > since,
            col(Event.type).in_(sorted({*JOB_EVENTS, *USER_DAY_EVENTS})),
            job_late | event_late,
        )
        .group_by(late_job_day, late_event_day)
    )
    found = []
    with engine.connect() as connection:
        for jd, ed, n, last_received in connection.execute(query):
            found.append(
                LateGroup(
                    _date(jd) if jd is not None else None,
                    _date(ed) if ed is not None else None,
                    int(n),
                    _aware(last_received),  # SQLite: max() of the stored text
                )
            )
    return found
