"""Counts an operator (or Prometheus) reads: jobs by version and outcome, latency buckets,
percentiles."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import ColumnElement, case, func, select, true
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped
from sqlmodel import col

from storage.models import Job, JobStatus, WorkerRecord
from storage.shadow import SHADOW_SOURCE

Duration = Literal["queue_wait_ms", "inference_ms", "upload_ms", "end_to_end_ms"]
_DURATIONS: dict[str, Mapped[float | None]] = {
    "queue_wait_ms": col(Job.queue_wait_ms),
    "inference_ms": col(Job.inference_ms),
    "upload_ms": col(Job.upload_ms),
    "end_to_end_ms": col(Job.end_to_end_ms),
}


def jobs_by_status(engine: Engine) -> list[tuple[str, str, str, int]]:
    """(version, status, source, jobs); source is "golden", "shadow" or "live"."""
    source = case(
        (col(Job.source) == "golden", "golden"),
        (col(Job.source) == SHADOW_SOURCE, SHADOW_SOURCE),
        else_="live",
    )
    query = select(col(Job.model_version), col(Job.status), source, func.count()).group_by(
        col(Job.model_version), col(Job.status), source
    )
    with engine.connect() as connection:
        return [(v, s, src, int(n)) for v, s, src, n in connection.execute(query)]


def failures_by_kind(engine: Engine) -> list[tuple[str, str, int]]:
    query = (
        select(col(Job.model_version), col(Job.failure_kind), func.count())
        .where(col(Job.status) == JobStatus.FAILED)
        .group_by(col(Job.model_version), col(Job.failure_kind))
    )
    with engine.connect() as connection:
        return [(v, kind or "unknown", int(n)) for v, kind, n in connection.execute(query)]


@dataclass(frozen=True)
class Histogram:
    buckets: list[tuple[float, int]]  # (upper bound in seconds, cumulative count)
    count: int
    total_seconds: float


def latency_histograms(
    engine: Engine, duration: Duration, bounds_s: Sequence[float]
) -> dict[str, Histogram]:
    """Cumulative histogram of a duration column (ms) of successful jobs, per version."""
    column = _DURATIONS[duration]
    cells = [func.sum(case((column <= bound * 1000.0, 1), else_=0)) for bound in bounds_s]
    query = (
        select(col(Job.model_version), func.count(), func.sum(column), *cells)
        .where(col(Job.status) == JobStatus.SUCCEEDED, column.is_not(None))
        .group_by(Job.model_version)
    )
    found = {}
    with engine.connect() as connection:
        for version, count, total_ms, *counts in connection.execute(query):
            buckets = [(b, int(c or 0)) for b, c in zip(bounds_s, counts, strict=True)]
            found[version] = Histogram(buckets, int(count), float(total_ms or 0) / 1000.0)
    return found


def worker_records(engine: Engine) -> list[WorkerRecord]:
    with engine.connect() as connection:
        rows = connection.execute(select(WorkerRecord)).mappings()
        return [WorkerRecord(**row) for row in rows]


def _of_batch(batch_id: str | None) -> ColumnElement[bool]:
    return col(Job.batch_id) == batch_id if batch_id else true()


def counts_by_version(
    engine: Engine, *, batch_id: str | None = None
) -> list[tuple[str, str, str | None, int]]:
    """(version, status, failure kind, jobs) of every job, or of a batch's."""
    query = (
        select(col(Job.model_version), col(Job.status), col(Job.failure_kind), func.count())
        .where(_of_batch(batch_id))
        .group_by(col(Job.model_version), col(Job.status), col(Job.failure_kind))
    )
    with engine.connect() as connection:
        return [(v, s, kind, n) for v, s, kind, n in connection.execute(query)]


def percentile_by_version(
    engine: Engine, duration: Duration, q: float, *, batch_id: str | None = None
) -> dict[str, float]:
    """Nearest-rank ``q`` quantile of a duration (ms) of successful jobs (every job's, or a
    batch's) per version, with window functions (portable across backends)."""
    column = _DURATIONS[duration]
    ranked = (
        select(
            col(Job.model_version).label("version"),
            column.label("value"),
            func.row_number().over(partition_by=Job.model_version, order_by=column).label("rank"),
            func.count().over(partition_by=Job.model_version).label("n"),
        )
        .where(_of_batch(batch_id), col(Job.status) == JobStatus.SUCCEEDED, column.is_not(None))
        .subquery()
    )
    # nearest rank: the smallest rank r with r >= q * n (no ceil(), which SQLite lacks)
    query = select(ranked.c.version, ranked.c.value).where(
        ranked.c.rank >= ranked.c.n * q, ranked.c.rank - 1 < ranked.c.n * q
    )
    with engine.connect() as connection:
        return {version: float(value) for version, value in connection.execute(query)}
