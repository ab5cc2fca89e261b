"""The experiment metrics' SQL, on SQLite and PostgreSQL alike: per-user metric rows and
their reduction to sufficient statistics in the database, P95 latency, failures and
exposures, and the names they share (Key, Window, UnitQuery, the constants). Import these
from here: analysis.metrics only names the metrics (METRICS) and turns the sums into
``Sufficient``, and the statistics on top of them are analysis.stats'.

Every metric is a ratio of per-user sums, num/den (a mean metric has den = 1 per user).
The database reduces a metric to sufficient statistics per (arm, segment[, day]):
users, sums, sums of squares and the cross product of num and den, so the statistics
(delta method, clustered by user) never need the rows themselves.

Attribution: job and job-event metrics use the arm and segment the job was assigned
(``jobs.arm``/``jobs.segment``); user metrics (retention, generations per week,
conversion) use the arm at first exposure (a user promoted by a ramp counts where they
started) and the segment stored with the assignment. Golden and pinned-version jobs have
no experiment and are never counted. Days are UTC dates.

Priority classes: the job and job-event metrics (every query built on ``_live_jobs``:
success rate, P95 latency, peak VRAM, failures by kind, the per-image interaction metrics and
quick retries) count only the jobs of the window's classes (``Window.classes``, by default
:data:`HEALTH_CLASSES`: interactive and bulk). Background jobs (golden replays and other work
nobody waits for) are never counted: a backlog of them delays other work but says nothing
about a model, and a set naming them is refused; nor do the value metrics count a user's
background jobs as generations or returns. Queue waits per class, background included, are
:func:`queue_wait_by_class`'s, shown beside the metrics so a backlog reads as queue wait.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import (
    Date,
    Float,
    and_,
    case,
    cast,
    func,
    literal,
    null,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import ColumnElement, Select, SQLColumnExpression
from sqlalchemy.sql.selectable import NamedFromClause, Subquery
from sqlmodel import col

if typing.TYPE_CHECKING:
    from sqlalchemy.orm import Mapped

from canary.contracts import CLASS_ORDER, PriorityClass
from storage.models import Assignment, Event, EventType, Job, JobStatus

LONG_DWELL_MS = 15_000
QUICK_RETRY_S = 30
RETENTION_DAYS = 7


Key = tuple[str, str, date | None]  # (arm, segment, day or None for the whole window)
# A group's sufficient statistics: (n, sum num, sum den, sum num^2, sum den^2,
# sum num*den, sum z, sum z^2, sum num*z), n an int (the fields of analysis.metrics.Sufficient)
Sums = tuple[float, ...]


# The priority classes the A/B job metrics count unless told otherwise. Never background:
# a batch backlog or a golden replay must not masquerade as a slow model.
HEALTH_CLASSES: tuple[str, ...] = (PriorityClass.INTERACTIVE.value, PriorityClass.BULK.value)
NEVER_COUNTED = frozenset({PriorityClass.BACKGROUND.value})


def health_classes(classes: Iterable[str]) -> tuple[str, ...]:
    """The priority classes a job metric counts, checked and in :data:`CLASS_ORDER`.

    Raises ValueError for an empty set, an unknown class, or background (never counted)."""
    wanted = {str(c).strip().lower() for c in classes}
    known = {c.value for c in CLASS_ORDER}
    if unknown := sorted(wanted - known):
        raise ValueError(
            f"unknown priority class {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    if refused := sorted(wanted & NEVER_COUNTED):
        raise ValueError(
            f"the A/B job metrics never count {', '.join(refused)} jobs "
            "(golden replays and other work nobody waits for)"
        )
    if not wanted:
        raise ValueError("the A/B job metrics need at least one priority class")
    return tuple(c.value for c in CLASS_ORDER if c.value in wanted)


@dataclass(frozen=True)
class Window:
    experiment: str
    start: datetime  # inclusive
    end: datetime  # exclusive
    # the priority classes the job metrics count (checked: never background)
    classes: tuple[str, ...] = HEALTH_CLASSES

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", health_classes(self.classes))

    @classmethod
    def days(
        cls, experiment: str, first: date, last: date, classes: Iterable[str] = HEALTH_CLASSES
    ) -> Window:
        return cls(
            experiment,
            datetime.combine(first, time(), UTC),
            datetime.combine(last + timedelta(days=1), time(), UTC),
            tuple(classes),
        )


# ---------------------------------------------------------------- dialect helpers


def day_of(engine: Engine, column: SQLColumnExpression[Any]) -> ColumnElement[Any]:
    if engine.dialect.name == "postgresql":
        return cast(func.timezone("UTC", column), Date)
    return func.date(column)


def seconds_between(
    engine: Engine, later: SQLColumnExpression[Any], earlier: SQLColumnExpression[Any]
) -> ColumnElement[Any]:
    if engine.dialect.name == "postgresql":
        return func.extract("epoch", later - earlier)
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


def plus_days(engine: Engine, column: SQLColumnExpression[Any], days: int) -> ColumnElement[Any]:
    if engine.dialect.name == "postgresql":
        return column + func.make_interval(0, 0, 0, days)
    return func.datetime(column, f"{days:+d} days")  # "+-7 days" would be NULL


def _as_day(engine: Engine, value: object) -> date:
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


# ---------------------------------------------------------------- per-user metric rows
# Each builder returns a SELECT of (arm, segment, day, user_id, num, den[, z]).

UnitQuery = Callable[[Engine, Window], Select[*tuple[Any, ...]]]


def _experiment_jobs(window: Window) -> ColumnElement[bool]:
    """The experiment's assigned jobs created in the window, of every priority class; never
    a shadow copy (it has no arm either: gateway/shadow.py)."""
    return and_(
        col(Job.experiment) == window.experiment,
        col(Job.arm).is_not(None),
        col(Job.shadow_of).is_(None),
        col(Job.created_at) >= window.start,
        col(Job.created_at) < window.end,
    )


def _live_jobs(window: Window) -> ColumnElement[bool]:
    """The jobs the A/B job metrics count: the experiment's, of the window's classes."""
    return and_(_experiment_jobs(window), col(Job.priority_class).in_(window.classes))


def _users_job() -> ColumnElement[bool]:
    """A job the value metrics count as a user's generation: never a background job (golden
    replays, shadow copies), never a shadow copy whatever its class."""
    return and_(col(Job.priority_class).not_in(sorted(NEVER_COUNTED)), col(Job.shadow_of).is_(None))


def _job_ratio(
    num: ColumnElement[Any], den: ColumnElement[Any], extra: ColumnElement[bool] | None = None
) -> UnitQuery:
    def build(engine: Engine, window: Window) -> Select[*tuple[Any, ...]]:
        where = _live_jobs(window) if extra is None else and_(_live_jobs(window), extra)
        day = day_of(engine, col(Job.created_at))
        return (
            select(
                col(Job.arm).label("arm"),
                col(Job.segment).label("segment"),
                day.label("day"),
                col(Job.user_id).label("unit"),
                func.sum(num).label("num"),
                func.sum(den).label("den"),
            )
            .where(where)
            .group_by(col(Job.arm), col(Job.segment), day, col(Job.user_id))
        )

    return build


_succeeded = case((col(Job.status) == JobStatus.SUCCEEDED, 1), else_=0)
_finished = case((col(Job.status).in_((JobStatus.SUCCEEDED, JobStatus.FAILED)), 1), else_=0)

success_rate = _job_ratio(_succeeded, _finished)
mean_peak_vram_gb = _job_ratio(
    cast(Job.peak_vram_bytes, Float) / 2**30,
    literal(1),
    and_(col(Job.status) == JobStatus.SUCCEEDED, col(Job.peak_vram_bytes).is_not(None)),
)


def _job_event_ratio(
    event_num: ColumnElement[Any],
    den_kind: str,
    *,
    counts: EventType,
    once_per_job: bool = False,
    narrow: bool = False,
) -> UnitQuery:
    """Events about the experiment's jobs over views (den_kind='views') or generations.

    ``event_num`` counts events of type ``counts`` only; just that type (and views for a
    views denominator) is read, a range of the (type, job_id, dwell_ms) index. The full
    report groups every event of the type by job (one pass over the index); ``narrow``
    reads only the events of the window's jobs (one index probe per job: the same rows,
    cheaper for a window of a day or two, see :data:`NARROW_UNITS`).
    """
    read = sorted({counts, EventType.IMAGE_VIEWED} if den_kind == "views" else {counts})

    def build(engine: Engine, window: Window) -> Select[*tuple[Any, ...]]:
        day = day_of(engine, col(Job.created_at))
        per_job = (
            select(
                col(Job.id).label("job_id"),
                col(Job.arm).label("arm"),
                col(Job.segment).label("segment"),
                day.label("day"),
                col(Job.user_id).label("unit"),
                _succeeded.label("generated"),
            )
            .where(_live_jobs(window))
            .subquery()
        )
        sums = (
            func.sum(event_num).label("num"),
            func.sum(case((col(Event.type) == EventType.IMAGE_VIEWED, 1), else_=0)).label("views"),
        )
        if narrow:
            events = (
                select(per_job.c.job_id, *sums)
                .select_from(per_job.join(Event, col(Event.job_id) == per_job.c.job_id))
                .where(col(Event.type).in_(read))
                .group_by(per_job.c.job_id)
                .subquery()
            )
        else:
            events = (
                select(col(Event.job_id).label("job_id"), *sums)
                .where(col(Event.job_id).is_not(None), col(Event.type).in_(read))
                .group_by(Event.job_id)
                .subquery()
            )
        den = func.coalesce(events.c.views, 0) if den_kind == "views" else per_job.c.generated
        num: ColumnElement[Any] = func.coalesce(events.c.num, 0)
        if once_per_job:
            num = case((events.c.num > 0, 1), else_=0)
        return (
            select(
                per_job.c.arm,
                per_job.c.segment,
                per_job.c.day,
                per_job.c.unit,
                func.sum(num).label("num"),
                func.sum(den).label("den"),
            )
            .select_from(per_job.outerjoin(events, events.c.job_id == per_job.c.job_id))
            .group_by(per_job.c.arm, per_job.c.segment, per_job.c.day, per_job.c.unit)
        )

    return build


def _long_dwell(*, narrow: bool = False) -> UnitQuery:
    long_view = and_(
        col(Event.type) == EventType.IMAGE_VIEWED, col(Event.dwell_ms) >= LONG_DWELL_MS
    )
    return _job_event_ratio(
        case((long_view, 1), else_=0), "views", counts=EventType.IMAGE_VIEWED, narrow=narrow
    )


def _downloads(*, narrow: bool = False) -> UnitQuery:
    """At most one download counted per image."""
    return _job_event_ratio(
        case((col(Event.type) == EventType.DOWNLOAD_CLICKED, 1), else_=0),
        "generations",
        counts=EventType.DOWNLOAD_CLICKED,
        once_per_job=True,
        narrow=narrow,
    )


def _feedback(*, narrow: bool = False) -> UnitQuery:
    return _job_event_ratio(
        case((col(Event.type) == EventType.FEEDBACK_REPORTED, 1), else_=0),
        "generations",
        counts=EventType.FEEDBACK_REPORTED,
        narrow=narrow,
    )


long_dwell_share = _long_dwell()
download_rate = _downloads()
negative_feedback_rate = _feedback()
# the same per-user rows, read for a short window (the incremental report's days)
NARROW_UNITS: dict[UnitQuery, UnitQuery] = {
    long_dwell_share: _long_dwell(narrow=True),
    download_rate: _downloads(narrow=True),
    negative_feedback_rate: _feedback(narrow=True),
}


def quick_retry_share(engine: Engine, window: Window) -> Select[*tuple[Any, ...]]:
    """Generations followed by the same user's next generation, same prompt, within 30 s."""
    ordered = (
        select(
            col(Job.arm).label("arm"),
            col(Job.segment).label("segment"),
            day_of(engine, col(Job.created_at)).label("day"),
            col(Job.user_id).label("unit"),
            col(Job.prompt).label("prompt"),
            col(Job.created_at).label("created_at"),
            func.lead(Job.prompt)
            .over(partition_by=col(Job.user_id), order_by=col(Job.created_at))
            .label("next_prompt"),
            func.lead(Job.created_at)
            .over(partition_by=col(Job.user_id), order_by=col(Job.created_at))
            .label("next_at"),
        )
        .where(_live_jobs(window))
        .subquery()
    )
    retried = case(
        (
            and_(
                ordered.c.next_prompt == ordered.c.prompt,
                seconds_between(engine, ordered.c.next_at, ordered.c.created_at) <= QUICK_RETRY_S,
            ),
            1,
        ),
        else_=0,
    )
    return select(
        ordered.c.arm,
        ordered.c.segment,
        ordered.c.day,
        ordered.c.unit,
        func.sum(retried).label("num"),
        func.count().label("den"),
    ).group_by(ordered.c.arm, ordered.c.segment, ordered.c.day, ordered.c.unit)


# ---------------------------------------------------------------- user (value) metrics


def _exposed(engine: Engine, window: Window, mature_days: int) -> Select[*tuple[Any, ...]]:
    """Users first exposed in the window whose first ``mature_days`` days have passed."""
    first_arm = case((col(Assignment.promoted_at).is_not(None), "baseline"), else_=Assignment.arm)
    return select(
        col(Assignment.user_id).label("unit"),
        first_arm.label("arm"),
        col(Assignment.segment).label("segment"),
        col(Assignment.first_seen).label("first_seen"),
        day_of(engine, col(Assignment.first_seen)).label("day"),
    ).where(
        col(Assignment.experiment) == window.experiment,
        col(Assignment.first_seen) >= window.start,
        col(Assignment.first_seen) < window.end - timedelta(days=mature_days),
    )


def _pre_period_jobs(engine: Engine, exposed: Subquery) -> ColumnElement[Any]:
    """CUPED covariate: the user's generations in the 7 days before first exposure."""
    return (
        select(func.count())
        .where(
            col(Job.user_id) == exposed.c.unit,
            col(Job.created_at) < exposed.c.first_seen,
            col(Job.created_at) >= plus_days(engine, exposed.c.first_seen, -RETENTION_DAYS),
            _users_job(),
        )
        .scalar_subquery()
    )


def retention_7d(engine: Engine, window: Window) -> Select[*tuple[Any, ...]]:
    """Share of exposed users active (a job or a login) on days 1-7 after first exposure."""
    exposed = _exposed(engine, window, RETENTION_DAYS + 1).subquery()
    start = plus_days(engine, exposed.c.first_seen, 1)
    end = plus_days(engine, exposed.c.first_seen, RETENTION_DAYS + 1)
    came_back_job = (
        select(literal(1))
        .where(
            col(Job.user_id) == exposed.c.unit,
            col(Job.created_at) >= start,
            col(Job.created_at) < end,
            _users_job(),
        )
        .exists()
    )
    came_back_login = (
        select(literal(1))
        .where(
            col(Event.user_id) == exposed.c.unit,
            col(Event.type) == EventType.LOGIN,
            Event.occurred_at >= start,
            Event.occurred_at < end,
        )
        .exists()
    )
    return select(
        exposed.c.arm,
        exposed.c.segment,
        exposed.c.day,
        exposed.c.unit,
        case((or_(came_back_job, came_back_login), 1), else_=0).label("num"),
        literal(1).label("den"),
        _pre_period_jobs(engine, exposed).label("z"),
    )


def generations_per_week(engine: Engine, window: Window) -> Select[*tuple[Any, ...]]:
    exposed = _exposed(engine, window, RETENTION_DAYS).subquery()
    generations = (
        select(func.count())
        .where(
            col(Job.user_id) == exposed.c.unit,
            Job.created_at >= exposed.c.first_seen,
            Job.created_at < plus_days(engine, exposed.c.first_seen, RETENTION_DAYS),
            col(Job.source) != "golden",
            _users_job(),
        )
        .scalar_subquery()
    )
    return select(
        exposed.c.arm,
        exposed.c.segment,
        exposed.c.day,
        exposed.c.unit,
        generations.label("num"),
        literal(1).label("den"),
        _pre_period_jobs(engine, exposed).label("z"),
    )


def trial_to_paid(engine: Engine, window: Window) -> Select[*tuple[Any, ...]]:
    """Among exposed users who started a trial after exposure: the share who then paid."""
    exposed = _exposed(engine, window, 0).subquery()
    trial = (
        select(col(Event.user_id).label("unit"), func.min(Event.occurred_at).label("trial_at"))
        .where(col(Event.type) == EventType.TRIAL_STARTED)
        .group_by(Event.user_id)
        .subquery()
    )
    paid = (
        select(literal(1))
        .where(
            col(Event.user_id) == trial.c.unit,
            col(Event.type) == EventType.SUBSCRIPTION_PAID,
            Event.occurred_at >= trial.c.trial_at,
        )
        .exists()
    )
    return (
        select(
            exposed.c.arm,
            exposed.c.segment,
            exposed.c.day,
            exposed.c.unit,
            case((paid, 1), else_=0).label("num"),
            literal(1).label("den"),
        )
        .select_from(exposed.join(trial, trial.c.unit == exposed.c.unit))
        .where(trial.c.trial_at >= exposed.c.first_seen)
    )


def dwell_vs_retention(engine: Engine, window: Window) -> Select[*tuple[Any, ...]]:
    """Per user: mean dwell (s) of views in the first 7 days (num) and retained (den)."""
    exposed = _exposed(engine, window, RETENTION_DAYS + 1).subquery()
    retained = retention_7d(engine, window).subquery()
    dwell = (
        select(
            col(Event.user_id).label("unit"),
            (func.avg(cast(Event.dwell_ms, Float)) / 1000.0).label("mean_dwell_s"),
        )
        .select_from(Event.__table__.join(exposed, exposed.c.unit == Event.user_id))  # type: ignore[attr-defined]  # SQLModel leaves __table__ undeclared
        .where(
            col(Event.type) == EventType.IMAGE_VIEWED,
            Event.occurred_at >= exposed.c.first_seen,
            Event.occurred_at < plus_days(engine, exposed.c.first_seen, RETENTION_DAYS),
        )
        .group_by(Event.user_id)
        .subquery()
    )
    return select(
        retained.c.arm,
        retained.c.segment,
        retained.c.day,
        retained.c.unit,
        dwell.c.mean_dwell_s.label("num"),
        retained.c.num.label("den"),
    ).select_from(retained.join(dwell, dwell.c.unit == retained.c.unit))


# ---------------------------------------------------------------- reduction


@contextmanager
def _report_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for one report statement. On PostgreSQL its transaction runs without JIT
    compilation: these statements take seconds, and compiling their expressions (0.1-2 s
    each, measured on 10M events) costs more than it saves."""
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SET LOCAL jit = off"))
        yield connection


def _whole_window(rows: NamedFromClause, has_z: bool) -> Subquery:
    """One unit per user over the whole window: a user active on several days is still one
    cluster (summing their days' num and den), not several independent units."""
    return (
        select(
            rows.c.arm,
            rows.c.segment,
            rows.c.unit,
            func.sum(rows.c.num).label("num"),
            func.sum(rows.c.den).label("den"),
            *([func.max(rows.c.z).label("z")] if has_z else []),
        )
        .group_by(rows.c.arm, rows.c.segment, rows.c.unit)
        .subquery()
    )


def _sums(rows: NamedFromClause, has_z: bool) -> list[ColumnElement[Any]]:
    """The columns of :data:`Sums`, over the rows of one group."""
    num = cast(rows.c.num, Float)
    den = cast(rows.c.den, Float)
    z = cast(rows.c.z, Float) if has_z else literal(0.0)
    return [
        func.count().label("n"),
        func.sum(num),
        func.sum(den),
        func.sum(num * num),
        func.sum(den * den),
        func.sum(num * den),
        func.sum(z),
        func.sum(z * z),
        func.sum(num * z),
    ]


def _sums_of(numbers: Sequence[Any]) -> Sums:
    """A result row's n and sums (a sum over no rows is NULL: 0)."""
    return (int(numbers[0]), *(float(v or 0.0) for v in numbers[1:]))


def sufficient_sums(
    engine: Engine, units: UnitQuery, window: Window, *, by_day: bool
) -> dict[Key, Sums]:
    """Reduce a per-user metric query to sufficient statistics in the database."""
    rows = units(engine, window).subquery()
    has_z = "z" in rows.c
    if not by_day:
        rows = _whole_window(rows, has_z)
    group = [rows.c.arm, rows.c.segment] + ([rows.c.day] if by_day else [])
    query = select(*group, *_sums(rows, has_z)).group_by(*group)
    found: dict[Key, Sums] = {}
    with _report_connection(engine) as connection:
        for row in connection.execute(query):
            values = list(row)
            arm, segment = values[0], values[1]
            day = _as_day(engine, values[2]) if by_day else None
            found[(arm, segment, day)] = _sums_of(values[3 if by_day else 2 :])
    return found


def overall_and_daily_sums(
    engine: Engine, units: UnitQuery, window: Window
) -> tuple[dict[Key, Sums], dict[Key, Sums]]:
    """:func:`sufficient_sums` over the whole window and by day, in one statement.

    The per-user rows are computed once (a materialized CTE) and reduced both ways, instead
    of running the metric's query twice; it also keeps a per-user scalar subquery (the
    value metrics' num and z) from being evaluated once per aggregate that reads it.
    """
    rows = units(engine, window).cte("unit_rows")
    if engine.dialect.name == "postgresql":  # PostgreSQL materializes it anyway; say so
        rows = rows.prefix_with("MATERIALIZED")
    has_z = "z" in rows.c
    whole = _whole_window(rows, has_z)
    query = union_all(
        select(literal(0).label("daily"), whole.c.arm, whole.c.segment, null().label("day"))
        .add_columns(*_sums(whole, has_z))
        .group_by(whole.c.arm, whole.c.segment),
        select(literal(1), rows.c.arm, rows.c.segment, rows.c.day)
        .add_columns(*_sums(rows, has_z))
        .group_by(rows.c.arm, rows.c.segment, rows.c.day),
    )
    overall: dict[Key, Sums] = {}
    daily: dict[Key, Sums] = {}
    with _report_connection(engine) as connection:
        for row in connection.execute(query):
            by_day, arm, segment, day, *numbers = row
            if by_day:
                daily[(arm, segment, _as_day(engine, day))] = _sums_of(numbers)
            else:
                overall[(arm, segment, None)] = _sums_of(numbers)
    return overall, daily


def cumulative_sums(engine: Engine, units: UnitQuery, window: Window) -> dict[Key, Sums]:
    """What a look at the end of each day saw: per (arm, segment, day D) the sufficient
    statistics of the window's first day up to D, one unit per user (their days summed)."""
    rows = units(engine, window).cte("unit_rows")
    has_z = "z" in rows.c
    cuts = select(rows.c.day.label("cut")).distinct().subquery()
    upto = (
        select(
            rows.c.arm,
            rows.c.segment,
            cuts.c.cut,
            rows.c.unit,
            func.sum(rows.c.num).label("num"),
            func.sum(rows.c.den).label("den"),
            *([func.max(rows.c.z).label("z")] if has_z else []),
        )
        .select_from(rows.join(cuts, rows.c.day <= cuts.c.cut))
        .group_by(rows.c.arm, rows.c.segment, cuts.c.cut, rows.c.unit)
        .subquery()
    )
    query = select(upto.c.arm, upto.c.segment, upto.c.cut, *_sums(upto, has_z)).group_by(
        upto.c.arm, upto.c.segment, upto.c.cut
    )
    found: dict[Key, Sums] = {}
    with _report_connection(engine) as connection:
        for arm, segment, cut, *numbers in connection.execute(query):
            found[(arm, segment, _as_day(engine, cut))] = _sums_of(numbers)
    return found


def cumulative_sums_running(engine: Engine, units: UnitQuery, window: Window) -> dict[Key, Sums]:
    """:func:`cumulative_sums` in one pass over the per-user rows instead of one per cut.

    Each (user, day) row adds to its day what it changes in its user's running totals: one
    unit on the user's first day, its num and den, and the differences of the squares and
    products (running num^2 after minus before, ...); a cut's sums are then the prefix sums
    of the days up to it. The work grows with the rows, not rows x days. Integer-valued
    metrics come out exactly equal to :func:`cumulative_sums`; fractional ones (peak VRAM)
    to the rounding of a different order of additions.
    """
    rows = units(engine, window).subquery("unit_rows")
    has_z = "z" in rows.c
    # one row per (arm, segment, user, day), as every per-user query gives them
    per_day = select(
        rows.c.arm,
        rows.c.segment,
        rows.c.unit,
        rows.c.day,
        func.coalesce(cast(rows.c.num, Float), 0.0).label("num"),
        func.coalesce(cast(rows.c.den, Float), 0.0).label("den"),
        (cast(rows.c.z, Float) if has_z else literal(0.0)).label("z"),
    ).subquery()
    user = [per_day.c.arm, per_day.c.segment, per_day.c.unit]
    running = select(
        per_day.c.arm,
        per_day.c.segment,
        per_day.c.day,
        per_day.c.num,
        per_day.c.den,
        func.sum(per_day.c.num).over(partition_by=user, order_by=per_day.c.day).label("cn"),
        func.sum(per_day.c.den).over(partition_by=user, order_by=per_day.c.day).label("cd"),
        func.row_number().over(partition_by=user, order_by=per_day.c.day).label("rn"),
        func.coalesce(func.max(per_day.c.z).over(partition_by=user), 0.0).label("z"),
    ).subquery()
    r = running.c
    first = case((r.rn == 1, 1), else_=0)
    first_z = case((r.rn == 1, r.z), else_=0.0)
    query = select(
        r.arm,
        r.segment,
        r.day,
        func.sum(first),
        func.sum(r.num),
        func.sum(r.den),
        func.sum(r.cn * r.cn - (r.cn - r.num) * (r.cn - r.num)),
        func.sum(r.cd * r.cd - (r.cd - r.den) * (r.cd - r.den)),
        func.sum(r.cn * r.cd - (r.cn - r.num) * (r.cd - r.den)),
        func.sum(first_z),
        func.sum(first_z * r.z),
        func.sum(r.num * r.z),
    ).group_by(r.arm, r.segment, r.day)
    deltas: dict[tuple[str, str], dict[date, list[float]]] = {}
    with _report_connection(engine) as connection:
        if engine.dialect.name == "postgresql":  # the running totals sort the rows once
            connection.execute(text("SET LOCAL work_mem = '64MB'"))
        for arm, segment, day, *numbers in connection.execute(query):
            deltas.setdefault((arm, segment), {})[_as_day(engine, day)] = [
                float(v or 0.0) for v in numbers
            ]
    cuts = sorted({day for by_day in deltas.values() for day in by_day})
    found: dict[Key, Sums] = {}
    for (arm, segment), by_day in deltas.items():
        totals: list[float] | None = None
        for cut in cuts:
            step = by_day.get(cut)
            if step is not None:
                totals = (
                    step if totals is None else [a + b for a, b in zip(totals, step, strict=True)]
                )
            if totals is not None:
                found[(arm, segment, cut)] = (int(totals[0]), *totals[1:])
    return found


def percentile_by_arm(
    engine: Engine, window: Window, q: float, *, by_day: bool
) -> dict[tuple[str, date | None], dict[str, float | int]]:
    """Nearest-rank ``q`` quantile of end-to-end latency of successful jobs (ms), with n."""
    day = day_of(engine, col(Job.created_at))
    partition: list[SQLColumnExpression[Any]] = [col(Job.arm)] + ([day] if by_day else [])
    value = col(Job.end_to_end_ms)
    ranked = (
        select(
            col(Job.arm).label("arm"),
            (day if by_day else literal(None)).label("day"),
            value.label("value"),
            func.row_number().over(partition_by=partition, order_by=value).label("rank"),
            func.count().over(partition_by=partition).label("n"),
        )
        .where(_live_jobs(window), col(Job.status) == JobStatus.SUCCEEDED, value.is_not(None))
        .subquery()
    )
    query = select(ranked.c.arm, ranked.c.day, ranked.c.value, ranked.c.n).where(
        ranked.c.rank >= ranked.c.n * q, ranked.c.rank - 1 < ranked.c.n * q
    )
    with _report_connection(engine) as connection:
        return {
            (arm, _as_day(engine, d) if by_day else None): {"value": float(v), "n": int(n)}
            for arm, d, v, n in connection.execute(query)
        }


def queue_wait_by_class(
    engine: Engine, window: Window, quantiles: Sequence[float] = (0.5, 0.95)
) -> dict[tuple[str, str], dict[str, float | int]]:
    """Nearest-rank quantiles of queue wait (ms) per (priority class, arm), with n.

    Every class of the experiment's jobs in the window, background included (not only the
    window's ``classes``): the wait of jobs that have started (``queue_wait_ms`` set), in any
    status. Keys of each value: ``n`` and ``p50``, ``p95`` (``p`` + the quantile in percent).
    """
    partition: list[SQLColumnExpression[Any]] = [col(Job.priority_class), col(Job.arm)]
    value = col(Job.queue_wait_ms)
    ranked = (
        select(
            col(Job.priority_class).label("priority_class"),
            col(Job.arm).label("arm"),
            value.label("value"),
            func.row_number().over(partition_by=partition, order_by=value).label("rank"),
            func.count().over(partition_by=partition).label("n"),
        )
        .where(_experiment_jobs(window), value.is_not(None))
        .subquery()
    )
    r = ranked.c
    at = [
        func.max(case((and_(r.rank >= r.n * q, r.rank - 1 < r.n * q), r.value))) for q in quantiles
    ]
    names = [f"p{100 * q:g}" for q in quantiles]
    query = select(r.priority_class, r.arm, func.max(r.n), *at).group_by(r.priority_class, r.arm)
    with _report_connection(engine) as connection:
        return {
            (priority, arm): {
                "n": int(n),
                **{name: float(v) for name, v in zip(names, values, strict=True)},
            }
            for priority, arm, n, *values in connection.execute(query)
        }


def failures_by_kind(engine: Engine, window: Window) -> dict[str, dict[str, int]]:
    query = (
        # arm typed non-null: _live_jobs requires one
        select(typing.cast("Mapped[str]", col(Job.arm)), col(Job.failure_kind), func.count())
        .where(_live_jobs(window), col(Job.status) == JobStatus.FAILED)
        .group_by(col(Job.arm), col(Job.failure_kind))
    )
    found: dict[str, dict[str, int]] = {}
    with _report_connection(engine) as connection:
        for arm, kind, n in connection.execute(query):
            found.setdefault(arm, {})[kind or "unknown"] = int(n)
    return found


def exposures(
    engine: Engine, experiment: str, exclude: set[str] | None = None
) -> list[tuple[str, str, str, int]]:
    """Users by (stage at first exposure, segment, arm at first exposure)."""
    first_arm = case((col(Assignment.promoted_at).is_not(None), "baseline"), else_=Assignment.arm)
    query = select(col(Assignment.stage), col(Assignment.segment), first_arm, func.count()).where(
        col(Assignment.experiment) == experiment
    )
    if exclude:
        query = query.where(col(Assignment.user_id).not_in(sorted(exclude)))
    query = query.group_by(Assignment.stage, Assignment.segment, first_arm)
    with _report_connection(engine) as connection:
        return [(stage, seg, arm, int(n)) for stage, seg, arm, n in connection.execute(query)]
