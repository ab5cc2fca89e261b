"""The full daily A/B report on a large data set: ``python -m benchmarks.daily_report [--quick]``.

A data set is generated inside the database with set-based SQL (``INSERT ... SELECT`` over
``generate_series`` on PostgreSQL, a recursive CTE on SQLite; no rows pass through Python):
~100,000 users with sticky assignments (two arms, four segments, a ramp from a 10% to a 50%
stage that promotes some users), 1,000,000 jobs over 14 days (arms, segments, statuses,
failure kinds, latencies, peak VRAM, prompts; pre-exposure and golden jobs; 3% quick
retries) and 10,000,000 events about those users and jobs (views with dwell, downloads,
feedback, logins, trials, payments). Its generation time is printed on its own.

Then ``analysis.experiment_report.build_report`` runs over the 14-day window: every metric
overall, daily and per segment, P95 latency, failures, SRM, the dwell/retention correlation
and the gates. The total time is printed with each metric's share (the report's calls to
the sufficient statistics of ``analysis.metrics`` and to the percentiles, failures and
exposures of ``storage.metrics`` are timed, and its SQL statements counted), and the peak
RSS of this process shows that no rows are loaded into Python. ``--explain FILE`` writes
EXPLAIN (ANALYZE, BUFFERS) of every statement the report ran (PostgreSQL).

PostgreSQL is the machine's: a fresh schema, dropped afterwards, or with ``--schema NAME``
that schema, kept afterwards and reused by later runs (no second generation; drop it with
``--drop``).
``--quick`` uses 10,000 jobs and 100,000 events on SQLite and PostgreSQL so CI can
smoke-run the script; its figures are not meaningful.
"""

from __future__ import annotations

import argparse
import contextvars
import os
import platform
import resource
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import psycopg
from rich.progress import Progress, TaskID
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine

from analysis import experiment_report, rollups
from analysis import metrics as m
from analysis.gates import GatePolicy
from gateway.experiments import Experiment, parse_config
from storage import metrics as sql
from storage.db import get_engine, init_db
from storage.models import Event, Job

POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
EXPERIMENT = "v2-canary"
FIRST_DAY = date(2026, 11, 2)
DAYS = 14
DAY_S = 86_400
RAMP_DAY = 4  # the 10% stage ran for the first 4 days, then the 50% stage
CONFIG = {
    "default_version": "v1",
    "experiments": [
        {
            "name": EXPERIMENT,
            "seed": "bench-2026-11",
            "baseline": "v1",
            "candidate": "v2",
            "stages": [
                {"name": "10%", "shares": {"default": 0.1}},
                {"name": "50%", "shares": {"default": 0.5, "new_user": 0.2}},
            ],
            "stage": "50%",
        }
    ],
}
CHUNK_ROWS = 1_000_000  # rows per INSERT ... SELECT statement (progress granularity)


@dataclass(frozen=True)
class Sizes:
    users: int
    jobs: int
    events: int

    @property
    def retries(self) -> int:
        return self.jobs * 3 // 100

    @property
    def golden(self) -> int:
        return self.jobs // 200

    @property
    def pre_period(self) -> int:
        return self.jobs * 4 // 100

    @property
    def experiment_jobs(self) -> int:
        return self.jobs - self.retries - self.golden - self.pre_period

    @property
    def heavy_users(self) -> int:
        """Users 1..heavy_users are the high-frequency segment and get 45% of the jobs."""
        return max(1, self.users * 13 // 100)

    def event_counts(self) -> dict[str, int]:
        """Events by type; payments follow the first half of the trials."""
        counts = {
            "image_viewed": self.events * 62 // 100,
            "download_clicked": self.events * 8 // 100,
            "feedback_reported": self.events * 12 // 1000,
            "trial_started": self.events * 12 // 1000,
        }
        counts["subscription_paid"] = counts["trial_started"] // 2
        counts["login"] = self.events - sum(counts.values())
        return counts


# ---------------------------------------------------------------- SQL fragments

_PRIME = 2_147_483_629  # a prime below 2**31: every product below stays under 2**62
_MULTIPLIERS = (
    1_103_515_245, 1_664_525_497, 2_017_132_103, 1_234_567_891, 1_812_433_253, 1_597_334_677,
    1_385_709_217, 1_999_999_973, 1_073_741_789, 1_500_450_271, 1_911_111_113, 1_299_709_231,
    1_716_789_127, 1_147_483_647, 1_879_048_193, 1_352_275_313,
)  # fmt: skip


def rnd(expr: str, salt: int) -> str:
    """A pseudo-random number in [0, 1) from an integer, the same on every backend and run:
    a multiplicative hash, squared modulo a prime (so that numbers drawn with different
    salts, or from related integers, do not move together), hashed again."""
    a = _MULTIPLIERS[salt % len(_MULTIPLIERS)]
    b = _MULTIPLIERS[(salt + 7) % len(_MULTIPLIERS)]
    h = f"((({expr}) * {a} + {salt * 7_919 + 1}) % {_PRIME})"
    return f"((({h} * {h}) % {_PRIME} * {b} + ({expr})) % {_PRIME}) * 1.0 / {_PRIME}"


def floor_int(expr: str) -> str:
    return f"CAST(floor({expr}) AS BIGINT)"


class Dialect:
    """The few fragments where PostgreSQL and SQLite differ."""

    def __init__(self, name: str) -> None:
        self.postgres = name == "postgresql"
        self.epoch = int(datetime.combine(FIRST_DAY, datetime.min.time(), UTC).timestamp())

    def series(self, first: int, last: int) -> str:
        """``WITH RECURSIVE g(n)`` holding the integers first..last."""
        if self.postgres:
            return f"WITH RECURSIVE g(n) AS (SELECT generate_series({first}::bigint, {last}))"
        return (
            f"WITH RECURSIVE g(n) AS (SELECT {first} UNION ALL "
            f"SELECT n + 1 FROM g WHERE n < {last})"
        )

    def ts(self, seconds: str) -> str:
        """A timestamp ``seconds`` after the window's first midnight (stored like SQLAlchemy)."""
        if self.postgres:
            return f"to_timestamp({self.epoch} + ({seconds}))"
        return f"(strftime('%Y-%m-%d %H:%M:%f', {self.epoch} + ({seconds}), 'unixepoch') || '000')"


def _chunks(first: int, last: int) -> Iterator[tuple[int, int]]:
    for start in range(first, last + 1, CHUNK_ROWS):
        yield start, min(last, start + CHUNK_ROWS - 1)


# ---------------------------------------------------------------- data generation


def users_sql(d: Dialect, sizes: Sizes) -> list[str]:
    """Users and assignments. Bucket < the stage's share -> candidate; users first seen in
    the 10% stage whose bucket the 50% stage covers were promoted at the ramp."""
    span = DAYS * DAY_S
    ramp = RAMP_DAY * DAY_S
    create = (
        "CREATE TEMP TABLE gen_users (u BIGINT PRIMARY KEY, user_id VARCHAR(200), "
        "segment VARCHAR(32), stage VARCHAR(100), first_s DOUBLE PRECISION, "
        "first_arm VARCHAR(16), arm VARCHAR(16), promoted_s DOUBLE PRECISION)"
    )
    fill = f"""
        {d.series(1, sizes.users)},
        base AS (
            SELECT n AS u,
                CASE WHEN n <= {sizes.heavy_users} THEN 'high_frequency'
                     WHEN {rnd("n", 1)} < 0.09 THEN 'new_user'
                     WHEN {rnd("n", 1)} < 0.17 THEN 'style_preference'
                     ELSE 'everyone_else' END AS segment,
                {rnd("n", 2)} * {span} AS first_s,
                {rnd("n", 3)} AS bucket
            FROM g),
        shares AS (
            SELECT b.*,
                CASE WHEN first_s < {ramp} THEN '10%' ELSE '50%' END AS stage,
                CASE WHEN first_s < {ramp} THEN 0.1
                     WHEN segment = 'new_user' THEN 0.2 ELSE 0.5 END AS share_first,
                CASE WHEN segment = 'new_user' THEN 0.2 ELSE 0.5 END AS share_now
            FROM base b)
        INSERT INTO gen_users (u, user_id, segment, stage, first_s, first_arm, arm, promoted_s)
        SELECT u, 'user-' || (1000000 + u), segment, stage, first_s,
            CASE WHEN bucket < share_first THEN 'candidate' ELSE 'baseline' END,
            CASE WHEN bucket < share_now THEN 'candidate' ELSE 'baseline' END,
            CASE WHEN bucket >= share_first AND bucket < share_now THEN {ramp} END
        FROM shares
    """
    assignments = f"""
        INSERT INTO assignments
            (experiment, user_id, arm, variant, segment, stage, first_seen, last_seen,
             promoted_at)
        SELECT '{EXPERIMENT}', user_id, arm, CASE arm WHEN 'candidate' THEN 'v2' ELSE 'v1' END,
            segment, stage, {d.ts("first_s")}, {d.ts(f"first_s + {DAY_S}")},
            CASE WHEN promoted_s IS NULL THEN NULL ELSE {d.ts("promoted_s")} END
        FROM gen_users
    """
    return [create, fill, assignments]


def job_plan_sql(d: Dialect, sizes: Sizes) -> list[str]:
    """Per job number: its user, kind (experiment | pre | golden), creation time and arm.

    Experiment jobs fall between the user's first exposure and the window's end; 45% go to
    the high-frequency users. Pre-period jobs precede the exposure by up to 7 days (the
    CUPED covariate); golden jobs have no user and no experiment.
    """
    span = DAYS * DAY_S
    experiment_last = sizes.experiment_jobs
    pre_last = experiment_last + sizes.pre_period
    create = (
        "CREATE TEMP TABLE gen_jobs (j BIGINT PRIMARY KEY, u BIGINT, kind VARCHAR(16), "
        "created_s DOUBLE PRECISION, arm VARCHAR(16))"
    )
    statements = [create]
    for first, last in _chunks(1, pre_last + sizes.golden):
        statements.append(f"""
            {d.series(first, last)},
            picked AS (
                SELECT n AS j,
                    CASE WHEN n > {pre_last} THEN NULL
                         WHEN {rnd("n", 4)} < 0.45
                             THEN 1 + {floor_int(f"{rnd('n', 5)} * {sizes.heavy_users}")}
                         ELSE 1 + {floor_int(f"{rnd('n', 5)} * {sizes.users}")} END AS u,
                    CASE WHEN n <= {experiment_last} THEN 'experiment'
                         WHEN n <= {pre_last} THEN 'pre' ELSE 'golden' END AS kind,
                    {rnd("n", 6)} AS r
                FROM g)
            INSERT INTO gen_jobs (j, u, kind, created_s, arm)
            SELECT p.j, p.u, p.kind,
                CASE p.kind
                    WHEN 'experiment' THEN gu.first_s + p.r * ({span} - gu.first_s)
                    WHEN 'pre' THEN gu.first_s - 60 - p.r * {7 * DAY_S}
                    ELSE p.r * {span} END,
                CASE WHEN p.kind <> 'experiment' THEN NULL
                     WHEN gu.promoted_s IS NOT NULL
                          AND gu.first_s + p.r * ({span} - gu.first_s) >= gu.promoted_s
                         THEN 'candidate'
                     ELSE gu.first_arm END
            FROM picked p LEFT JOIN gen_users gu ON gu.u = p.u
        """)
    return statements


_JOB_COLUMNS = (
    "id, user_id, source, experiment, arm, segment, model_version, prompt, negative_prompt, "
    "seed, steps, guidance, width, height, status, attempts, misroutes, created_at, "
    "enqueued_at, started_at, finished_at, device, image_key, failure_kind, queue_wait_ms, "
    "inference_ms, upload_ms, end_to_end_ms, peak_vram_bytes"
)


def _job_select(d: Dialect, id_expr: str, number: str, created: str) -> str:
    """The SELECT list of a job row; ``number`` seeds its randomness, ``created`` is its
    creation time in seconds. Reads gen_jobs ``gj`` (kind, arm) and gen_users ``gu``."""
    candidate = "(gj.arm = 'candidate')"
    r_status, r_kind = rnd(number, 7), rnd(number, 8)
    fail_share = f"CASE WHEN {candidate} THEN 0.013 ELSE 0.010 END"
    status = (
        f"CASE WHEN {r_status} < {fail_share} THEN 'FAILED' "
        f"WHEN {r_status} < {fail_share} + 0.003 THEN 'RUNNING' ELSE 'SUCCEEDED' END"
    )
    queue = f"(200 + 1500 * power({rnd(number, 9)}, 3))"
    inference = (
        f"(2500 + 3500 * power({rnd(number, 10)}, 2) + CASE WHEN {candidate} THEN 250 ELSE 0 END)"
    )
    total = f"({queue} + {inference} + 90)"
    vram_gb = f"(17.5 + 2.5 * {rnd(number, 11)} + CASE WHEN {candidate} THEN 0.4 ELSE 0 END)"
    return f"""
        {id_expr}, gu.user_id, CASE gj.kind WHEN 'golden' THEN 'golden' ELSE 'api' END,
        CASE gj.kind WHEN 'experiment' THEN '{EXPERIMENT}' END, gj.arm,
        CASE gj.kind WHEN 'experiment' THEN gu.segment END,
        CASE WHEN {candidate} THEN 'v2' ELSE 'v1' END,
        'a photo of subject ' || (({number} * 7) % 20000) || ', cinematic lighting', '',
        {number}, 30, 7.5, 1024, 1024, {status}, 1, 0,
        {d.ts(created)}, {d.ts(created)}, {d.ts(f"{created} + {queue} / 1000.0")},
        CASE WHEN {status} = 'RUNNING' THEN NULL ELSE {d.ts(f"{created} + {total} / 1000.0")} END,
        'cuda', CASE WHEN {status} = 'SUCCEEDED' THEN 'images/' || {id_expr} || '.png' END,
        CASE WHEN {status} <> 'FAILED' THEN NULL
             WHEN {r_kind} < 0.4 THEN 'oom' WHEN {r_kind} < 0.7 THEN 'timeout'
             WHEN {r_kind} < 0.9 THEN 'nan_output' ELSE 'black_image' END,
        {queue}, {inference}, 90,
        CASE WHEN {status} = 'RUNNING' THEN NULL ELSE {total} END,
        CASE WHEN {status} = 'SUCCEEDED' THEN {floor_int(f"{vram_gb} * 1073741824")} END
    """


def jobs_sql(d: Dialect, sizes: Sizes) -> list[str]:
    """The jobs of the plan, then quick retries: the same user and prompt 5-25 s later."""
    base_last = sizes.experiment_jobs + sizes.pre_period + sizes.golden
    statements = []
    for first, last in _chunks(1, base_last):
        select = _job_select(d, "'j' || (1000000000 + gj.j)", "gj.j", "gj.created_s")
        statements.append(f"""
            INSERT INTO jobs ({_JOB_COLUMNS})
            SELECT {select}
            FROM gen_jobs gj LEFT JOIN gen_users gu ON gu.u = gj.u
            WHERE gj.j BETWEEN {first} AND {last}
        """)
    for first, last in _chunks(1, sizes.retries):
        # retry n repeats experiment job 1 + (n * 7907) % experiment_jobs; its prompt and
        # randomness come from that job's number, its time is 5-25 s later
        select = _job_select(
            d, "'r' || (1000000000 + g.n)", "gj.j", f"gj.created_s + 5 + 20 * {rnd('g.n', 12)}"
        )
        statements.append(f"""
            {d.series(first, last)}
            INSERT INTO jobs ({_JOB_COLUMNS})
            SELECT {select}
            FROM g JOIN gen_jobs gj ON gj.j = 1 + (g.n * 7907) % {sizes.experiment_jobs}
            JOIN gen_users gu ON gu.u = gj.u
        """)
    return statements


_EVENT_COLUMNS = "id, type, user_id, job_id, occurred_at, received_at, dwell_ms, reason"


def _job_events(d: Dialect, sizes: Sizes, kind: str, first: int, last: int, offset: int) -> str:
    """Events ``first..last`` of a job-event type about experiment and pre-period jobs."""
    jobs = sizes.experiment_jobs + sizes.pre_period
    r = rnd("g.n", 13)
    delay = {"image_viewed": f"5 + {r} * {2 * DAY_S}", "download_clicked": f"10 + {r} * 3600"}
    dwell = "NULL"
    if kind == "image_viewed":  # the candidate's views are long more often
        exponent = "CASE WHEN gj.arm = 'candidate' THEN 1.7 ELSE 2.0 END"
        dwell = floor_int(f"1000 + 39000 * power({rnd('g.n', 14)}, {exponent})")
    reason = "NULL"
    if kind == "feedback_reported":
        reason = (
            f"CASE WHEN {rnd('g.n', 14)} < 0.5 THEN 'poor_quality' "
            f"WHEN {rnd('g.n', 14)} < 0.8 THEN 'style_mismatch' ELSE 'other' END"
        )
    occurred = f"gj.created_s + {delay.get(kind, f'30 + {r} * {DAY_S}')}"
    return f"""
        {d.series(first, last)}
        INSERT INTO events ({_EVENT_COLUMNS})
        SELECT 'e' || (1000000000 + {offset} + g.n), '{kind}', gu.user_id,
            'j' || (1000000000 + gj.j), {d.ts(occurred)}, {d.ts(f"{occurred} + 2")},
            {dwell}, {reason}
        FROM g JOIN gen_jobs gj ON gj.j = 1 + (g.n * 7919) % {jobs}
        JOIN gen_users gu ON gu.u = gj.u
    """


def _user_events(d: Dialect, sizes: Sizes, kind: str, first: int, last: int, offset: int) -> str:
    """Logins (3 days before to 21 days after exposure), trials and their payments."""
    if kind == "login":
        user = f"1 + (g.n * 7919) % {sizes.users}"
        occurred = f"gu.first_s - {3 * DAY_S} + {rnd('g.n', 15)} * {24 * DAY_S}"
    else:  # payment n follows trial n: the same user, up to 5 days later
        user = f"1 + (g.n * 104729) % {sizes.users}"
        occurred = f"gu.first_s + {rnd('g.n', 16)} * {10 * DAY_S}"
        if kind == "subscription_paid":
            occurred += f" + 60 + {rnd('g.n', 1)} * {5 * DAY_S}"
    return f"""
        {d.series(first, last)}
        INSERT INTO events ({_EVENT_COLUMNS})
        SELECT 'e' || (1000000000 + {offset} + g.n), '{kind}', gu.user_id, NULL,
            {d.ts(occurred)}, {d.ts(f"{occurred} + 2")}, NULL, NULL
        FROM g JOIN gen_users gu ON gu.u = {user}
    """


def events_sql(d: Dialect, sizes: Sizes) -> list[str]:
    """Each type numbers its events from 1 (payment n and trial n draw the same user); ids
    continue from one type to the next."""
    statements = []
    offset = 0
    for kind, count in sizes.event_counts().items():
        job_event = kind in ("image_viewed", "download_clicked", "feedback_reported")
        build = _job_events if job_event else _user_events
        for first, last in _chunks(1, count):
            statements.append(build(d, sizes, kind, first, last, offset))
        offset += count
    return statements


def _secondary_indexes() -> list[Any]:
    tables = (Job.__table__, Event.__table__)  # type: ignore[attr-defined]  # SQLModel leaves __table__ undeclared
    return [index for table in tables for index in table.indexes]


@dataclass
class Generation:
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def _timed_steps(
    connection: Connection, steps: list[tuple[str, list[str]]], progress: Progress, task: TaskID
) -> dict[str, float]:
    seconds = {}
    for name, statements in steps:
        progress.update(task, description=f"generating {name}")
        start = time.perf_counter()
        for statement in statements:
            connection.execute(text(statement))
            progress.advance(task)
        seconds[name] = time.perf_counter() - start
    return seconds


def _vacuum_analyze(engine: Engine) -> None:
    """Planner statistics, and on PostgreSQL the visibility map (what autovacuum keeps up
    to date on a live insert-mostly table), which index-only scans rely on."""
    command = "VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for table in ("assignments", "jobs", "events"):
            connection.execute(text(f"{command} {table}"))


def generate(engine: Engine, sizes: Sizes) -> Generation:
    """Fill the empty tables; secondary indexes are dropped first and built at the end."""
    d = Dialect(engine.dialect.name)
    steps = [
        ("users", users_sql(d, sizes)),
        ("job plan", job_plan_sql(d, sizes)),
        ("jobs", jobs_sql(d, sizes)),
        ("events", events_sql(d, sizes)),
    ]
    indexes = _secondary_indexes()
    result = Generation()
    total = sum(len(statements) for _, statements in steps) + len(indexes)
    with Progress(transient=True) as progress, engine.begin() as connection:
        task = progress.add_task("generating", total=total)
        if d.postgres:  # this transaction only
            connection.execute(text("SET LOCAL work_mem = '256MB'"))
            connection.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
            connection.execute(text("SET LOCAL synchronous_commit = off"))
        for index in indexes:
            index.drop(connection)
        result.seconds = _timed_steps(connection, steps, progress, task)
        progress.update(task, description="building indexes")
        start = time.perf_counter()
        for index in indexes:
            index.create(connection)
            progress.advance(task)
        result.seconds["indexes"] = time.perf_counter() - start
        connection.execute(text("DROP TABLE gen_jobs"))
        connection.execute(text("DROP TABLE gen_users"))
    start = time.perf_counter()
    _vacuum_analyze(engine)
    result.seconds["vacuum/analyze"] = time.perf_counter() - start
    return result


# ---------------------------------------------------------------- timing the report

_label: contextvars.ContextVar[str] = contextvars.ContextVar("label", default="other")


@dataclass
class Clock:
    """Wall time per call to a timed metric function (TIMED), and the SQL statements it ran."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    statements: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    captured: list[tuple[str, str, Any]] = field(default_factory=list)


# The metric functions build_report calls, each patched on the module that defines it: the
# report calls them through that module (m.sufficient_statistics, sql.percentile_by_arm, ...).
TIMED: tuple[tuple[ModuleType, str], ...] = (
    (m, "sufficient_statistics"),
    (m, "overall_and_daily_statistics"),
    (m, "cumulative_statistics"),
    (sql, "percentile_by_arm"),
    (sql, "failures_by_kind"),
    (sql, "exposures"),
)

_incremental_names: dict[Callable[..., Any], str] = {}


def _metric_names() -> dict[Callable[..., Any], str]:
    names = {metric.units: metric.name for metric in m.METRICS}
    names[sql.dwell_vs_retention] = "dwell_vs_retention"
    return {**names, **_incremental_names}


def _label_of(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """``metric/part`` for a call to a timed metric function (TIMED)."""
    if name in ("sufficient_statistics", "overall_and_daily_statistics", "cumulative_statistics"):
        metric = _metric_names().get(args[1], getattr(args[1], "__name__", "?"))
        if name == "overall_and_daily_statistics":
            return f"{metric}/overall+daily"
        if name == "cumulative_statistics":
            return f"{metric}/cumulative"
        return f"{metric}/{'daily' if kwargs.get('by_day') else 'overall'}"
    if name == "percentile_by_arm":
        return f"latency_p95/{'daily' if kwargs.get('by_day') else 'overall'}"
    return {"failures_by_kind": "failures/overall", "exposures": "srm_exposures/overall"}.get(
        name, f"{name}/overall"
    )


@contextmanager
def instrumented(engine: Engine, clock: Clock) -> Iterator[None]:
    """Time the metric functions build_report calls, and count their SQL statements."""
    originals = {(module, name): getattr(module, name) for module, name in TIMED}

    def wrap(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            label = _label_of(name, args, kwargs)
            token = _label.set(label)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                clock.seconds[label] += time.perf_counter() - start
                _label.reset(token)

        return timed

    def count(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        clock.captured.append((_label.get(), statement, parameters))
        if _is_query(statement):  # not the SET LOCALs
            clock.statements[_label.get()] += 1

    for (module, name), function in originals.items():
        setattr(module, name, wrap(name, function))
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", count)
        for (module, name), function in originals.items():
            setattr(module, name, function)


def _is_query(statement: str) -> bool:
    return statement.lstrip().upper().startswith(("SELECT", "WITH"))


def experiment() -> Experiment:
    return parse_config(CONFIG, ["v1", "v2"]).experiment(EXPERIMENT)


LAST_DAY = FIRST_DAY + timedelta(days=DAYS - 1)


def run_report(
    engine: Engine, clock: Clock, *, incremental: bool = False
) -> tuple[float, dict[str, Any]]:
    with instrumented(engine, clock), _naming_incremental_units():
        start = time.perf_counter()
        report = experiment_report.build_report(
            engine, experiment(), FIRST_DAY, LAST_DAY, GatePolicy(), incremental=incremental
        )
        seconds = time.perf_counter() - start
    return seconds, report


@contextmanager
def _naming_incremental_units() -> Iterator[None]:
    """Label the incremental report's per-user queries with their metric's name."""
    original = rollups.incremental_units

    def named(name: str, units: sql.UnitQuery, plan: rollups.Plan) -> sql.UnitQuery:
        built = original(name, units, plan)
        _incremental_names[built] = name
        return built

    rollups.incremental_units = named  # type: ignore[assignment]  # the same signature
    try:
        yield
    finally:
        rollups.incremental_units = original
        _incremental_names.clear()


def write_explain(engine: Engine, clock: Clock, path: Path) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of every query the report ran, labelled; its other
    statements (SET LOCAL ...) run as they are, so the plans see the same settings."""
    with engine.connect() as connection, path.open("w") as out:
        cursor = connection.connection.cursor()
        for label, statement, parameters in clock.captured:
            if not _is_query(statement):
                cursor.execute(statement, parameters)
                continue
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            out.write(f"===== {label}\n{statement}\n-- parameters: {parameters}\n{plan}\n\n")


# ---------------------------------------------------------------- databases


@dataclass
class Backend:
    name: str
    url: str
    reused: bool = False


@contextmanager
def postgres_backend(schema: str | None, *, drop: bool) -> Iterator[Backend]:
    """A schema of the machine's PostgreSQL, reused if it holds a generated data set (else
    created afresh); dropped at the end if ``drop``."""
    name = schema or f"bench_report_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        populated = (
            conn.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = %s "
                "AND table_name = 'events'",
                (name,),
            ).fetchone()
            and conn.execute(f'SELECT 1 FROM "{name}".events LIMIT 1').fetchone()
        )
        if not populated:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            conn.execute(f'CREATE SCHEMA "{name}"')
    url = f"{POSTGRES_URL}?options=-csearch_path%3D{name}"
    try:
        yield Backend("postgresql", url, reused=bool(populated))
    finally:
        get_engine(url).dispose()
        if drop:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{name}" CASCADE')
        else:
            print(f"  kept schema {name}: --schema {name} reuses it, --drop drops it")


@contextmanager
def sqlite_backend() -> Iterator[Backend]:
    with tempfile.TemporaryDirectory(prefix="canary-bench-report-") as tmp:
        yield Backend("sqlite", f"sqlite:///{Path(tmp) / 'report.db'}")


def _rss_mb() -> float:
    rss_mb: float = psutil.Process().memory_info().rss / 2**20
    return rss_mb


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def machine() -> str:
    memory = psutil.virtual_memory().total / 2**30
    with psycopg.connect(POSTGRES_URL) as conn:
        settings = {
            name: _show(conn, name)
            for name in ("shared_buffers", "work_mem", "max_parallel_workers_per_gather")
        }
        version = _show(conn, "server_version").split()[0]
    tuning = ", ".join(f"{k} {v}" for k, v in sorted(settings.items()))
    return (
        f"{os.cpu_count()} cores, {memory:.1f} GiB RAM, PostgreSQL {version} ({tuning}), "
        f"Python {platform.python_version()}"
    )


def _show(conn: psycopg.Connection[Any], name: str) -> str:
    row = conn.execute(f"SHOW {name}").fetchone()
    if row is None:  # not reached: SHOW answers with one row
        raise RuntimeError(f"SHOW {name} returned no row")
    value: str = row[0]
    return value


def _counts(engine: Engine) -> tuple[int, int, int]:
    with engine.connect() as connection:

        def count(table: str) -> int:
            return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())

        return count("assignments"), count("jobs"), count("events")


def _size(engine: Engine) -> str:
    if engine.dialect.name != "postgresql":
        return ""
    with engine.connect() as connection:
        size = connection.execute(
            text(
                "SELECT pg_size_pretty(pg_total_relation_size('jobs') "
                "+ pg_total_relation_size('events') + pg_total_relation_size('assignments'))"
            )
        ).scalar_one()
    return f"; tables with indexes {size}"


# ---------------------------------------------------------------- output


def print_generation(backend: Backend, engine: Engine, generation: Generation) -> None:
    users, jobs, events = _counts(engine)
    parts = ", ".join(f"{name} {s:.1f} s" for name, s in generation.seconds.items())
    print(
        f"{backend.name} data generation: {users:,} users, {jobs:,} jobs, {events:,} events "
        f"in {generation.total:.1f} s ({parts}){_size(engine)}"
    )


def print_report(backend: Backend, seconds: float, report: dict[str, Any], clock: Clock) -> None:
    statements = sum(clock.statements.values())
    print(
        f"{backend.name} report (build_report, {DAYS} days): {seconds:.2f} s | "
        f"{statements} queries | peak RSS {_peak_rss_mb():,.0f} MB"
    )
    by_metric: dict[str, dict[str, float]] = defaultdict(dict)
    for label, s in clock.seconds.items():
        metric, _, part = label.partition("/")
        by_metric[metric][part] = s
    for metric, parts in by_metric.items():
        split = ", ".join(f"{part} {s:.2f} s" for part, s in sorted(parts.items(), reverse=True))
        queries = sum(n for label, n in clock.statements.items() if label.startswith(f"{metric}/"))
        print(f"  {metric}: {split} ({queries} {'query' if queries == 1 else 'queries'})")
    other = seconds - sum(clock.seconds.values())
    print(f"  other (statistics, SRM test, gates, golden look-up): {other:.2f} s")
    users = report["users"]
    dwell = report["metrics"]["long_dwell_share"]["overall"] or {}
    print(
        f"  users baseline {users['baseline']:,}, candidate {users['candidate']:,}; "
        f"long-dwell lift {dwell.get('relative_lift', float('nan')):+.1%}; "
        f"daily rows {len(report['metrics']['success_rate']['daily'])}; "
        f"gate verdict {report['gates']['verdict']}"
    )


def run_backend(backend: Backend, sizes: Sizes, args: argparse.Namespace) -> None:
    engine = get_engine(backend.url)
    if not backend.reused:
        init_db(engine)
        generation = generate(engine, sizes)
        print_generation(backend, engine, generation)
    else:
        start = time.perf_counter()
        init_db(engine)  # a data set kept from an older release gets the newer tables
        upgraded = time.perf_counter() - start
        users, jobs, events = _counts(engine)
        print(
            f"{backend.name}: reusing {users:,} users, {jobs:,} jobs, {events:,} events"
            + (f" (schema upgraded in {upgraded:.1f} s)" if upgraded > 1 else "")
        )
    rss_before = _rss_mb()
    best = best_report(engine, args.repeat, incremental=False)
    print_report(backend, *best)
    print(f"  RSS before the report {rss_before:,.0f} MB, after {_rss_mb():,.0f} MB")
    if args.explain and backend.name == "postgresql":
        write_explain(engine, best[2], args.explain)
        print(f"  EXPLAIN (ANALYZE, BUFFERS) of every statement written to {args.explain}")
    if not args.full_only:
        print()
        run_incremental(backend, engine, best[0], best[1], args.repeat)


def best_report(
    engine: Engine, repeat: int, *, incremental: bool
) -> tuple[float, dict[str, Any], Clock]:
    best: tuple[float, dict[str, Any], Clock] | None = None
    for _ in range(repeat):
        clock = Clock()
        seconds, report = run_report(engine, clock, incremental=incremental)
        if best is None or seconds < best[0]:
            best = (seconds, report, clock)
    assert best is not None
    return best


# ---------------------------------------------------------------- the incremental report


def report_differences(full: Any, other: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Every value that differs between two reports (their ``rollup`` sections aside)."""
    if isinstance(full, dict) and isinstance(other, dict):
        return [
            found
            for key in sorted(set(full) | set(other), key=str)
            if key != "rollup"
            for found in report_differences(full.get(key), other.get(key), f"{path}.{key}")
        ]
    if isinstance(full, list) and isinstance(other, list) and len(full) == len(other):
        return [
            found
            for n, (a, b) in enumerate(zip(full, other, strict=True))
            for found in report_differences(a, b, f"{path}[{n}]")
        ]
    if full == other or (full != full and other != other):  # NaN == NaN here
        return []
    return [(path, full, other)]


def describe_differences(full: dict[str, Any], other: dict[str, Any]) -> str:
    found = report_differences(full, other)
    if not found:
        return "identical (every number equal)"
    relative = [
        abs(a - b) / max(abs(a), abs(b))
        for _, a, b in found
        if isinstance(a, float) and isinstance(b, float)
    ]
    metrics = sorted({path.split(".")[2] for path, _, _ in found if path.startswith(".metrics.")})
    return (
        f"{len(found)} values differ, largest relative difference {max(relative, default=1):.1e}"
        f" (in {', '.join(metrics) or 'other sections'})"
    )


def clear_rollups(engine: Engine) -> None:
    with engine.begin() as connection:
        for table in ("metric_unit_rows", "metric_rollups", "metric_rollup_pending"):
            connection.execute(text(f"DELETE FROM {table}"))


def run_incremental(
    backend: Backend, engine: Engine, full_seconds: float, full: dict[str, Any], repeat: int
) -> None:
    """Side by side with the full report on the same data: the first 13 days rolled up as
    the nightly job does; a report during the 14th day (that day live); the nightly roll-up
    of the 14th day once it is complete, and the report then (every day rolled up)."""
    clear_rollups(engine)
    setup = rollups.roll_up(engine, EXPERIMENT, FIRST_DAY, LAST_DAY - timedelta(days=1))
    intraday_seconds, intraday, _ = best_report(engine, repeat, incremental=True)
    nightly = rollups.roll_up(engine, EXPERIMENT, FIRST_DAY, LAST_DAY)  # the new day, alone
    assert nightly.rolled_up == [LAST_DAY], nightly
    seconds, report, clock = best_report(engine, repeat, incremental=True)
    update = nightly.seconds + seconds
    statements = sum(clock.statements.values())
    print(
        f"{backend.name} incremental report (all {DAYS} days rolled up): {seconds:.2f} s | "
        f"{statements} queries | nightly roll-up of the completed day {nightly.seconds:.2f} s "
        f"| daily update {update:.2f} s = {update / full_seconds:.3f} of the full report's "
        f"{full_seconds:.2f} s"
    )
    for label, s in sorted(clock.seconds.items(), key=lambda item: -item[1])[:6]:
        print(f"  {label}: {s:.2f} s ({clock.statements[label]} queries)")
    other = seconds - sum(clock.seconds.values())
    print(f"  other (statistics, roll-up plan, SRM, gates): {other:.2f} s")
    print(f"  numbers vs the full report: {describe_differences(full, report)}")
    print(
        f"  during the day ({DAYS - 1} days rolled up, the new day live): report "
        f"{intraday_seconds:.2f} s = {intraday_seconds / full_seconds:.3f} of the full report; "
        f"numbers: {describe_differences(full, intraday)}"
    )
    print(
        f"  set-up: roll-up of the first {len(setup.rolled_up)} days {setup.seconds:.1f} s "
        f"({setup.seconds / max(len(setup.rolled_up), 1):.2f} s a day)"
    )
    run_late(engine, full, repeat)


def run_late(engine: Engine, full: dict[str, Any], repeat: int) -> None:
    """Late data at scale: the roll-ups are dated as if the nightly job had run just after the
    last day ended, so every event received since about the window's jobs (views come up to
    2 days after the image) is late. The report finds them and computes their days live;
    the next nightly run re-rolls those days and counts the events."""
    nightly_at = rollups.midnight(LAST_DAY + timedelta(days=1)) + rollups.LOOKAHEAD
    with engine.begin() as connection:
        connection.execute(text("UPDATE metric_rollups SET checked_at = :at"), {"at": nightly_at})
    seconds, report, _ = best_report(engine, 1, incremental=True)
    found = report["rollup"]
    print(
        f"  late data (roll-ups checked at {nightly_at:%Y-%m-%d %H:%M} UTC): "
        f"report {seconds:.2f} s,"
        f" {found['late_events_found']:,} late events of days {', '.join(found['stale_days'])},"
        f" days after {found['stored_through']} computed live; numbers: "
        f"{describe_differences(full, report)}"
    )
    rerun = rollups.roll_up(engine, EXPERIMENT, FIRST_DAY, LAST_DAY)
    seconds, report, _ = best_report(engine, repeat, incremental=True)
    print(
        f"  nightly roll-up re-rolled {len(rerun.rerolled)} days in {rerun.seconds:.2f} s "
        f"({rerun.late_events:,} late events folded in); report then {seconds:.2f} s, "
        f"{report['rollup']['late_events']:,} late events counted; numbers: "
        f"{describe_differences(full, report)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default=None)
    parser.add_argument("--repeat", type=int, default=1, help="report runs (best counts)")
    parser.add_argument("--schema", help="PostgreSQL schema to use (reused if it exists)")
    parser.add_argument("--drop", action="store_true", help="drop --schema at the end")
    parser.add_argument("--explain", type=Path, help="write EXPLAIN ANALYZE of each query here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    parser.add_argument(
        "--full-only", action="store_true", help="only the full report (no roll-ups)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.jobs, args.events = 1_000, 10_000, 100_000
    backend_choice = args.backend or ("both" if args.quick else "postgresql")
    sizes = Sizes(args.users, args.jobs, args.events)
    print(
        f"canary-render daily report benchmark: {sizes.users:,} users, {sizes.jobs:,} jobs, "
        f"{sizes.events:,} events over {DAYS} days; {machine()}"
        + (" (--quick: figures not meaningful)" if args.quick else "")
    )
    if backend_choice in ("sqlite", "both"):
        with sqlite_backend() as backend:
            run_backend(backend, sizes, args)
    if backend_choice in ("postgresql", "both"):
        with postgres_backend(args.schema, drop=args.drop or not args.schema) as backend:
            run_backend(backend, sizes, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
