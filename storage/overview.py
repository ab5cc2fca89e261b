"""Counts an operator (or Prometheus) reads: jobs by version and outcome, latency buckets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.sql import ColumnElement

from storage.models import Job, JobStatus, WorkerRecord


def jobs_by_status(engine: Engine) -> list[tuple[str, str, str, int]]:
    """(version, status, source, jobs); source is "golden" or "live"."""
    source = case((Job.source == "golden", "golden"), else_="live")
    query = select(Job.model_version, Job.status, source, func.count()).group_by(
        Job.model_version, Job.status, source
    )
    with engine.connect() as connection:
        return [(v, s, src, int(n)) for v, s, src, n in connection.execute(query)]


def failures_by_kind(engine: Engine) -> list[tuple[str, str, int]]:
    query = (
        select(Job.model_version, Job.failure_kind, func.count())
        .where(Job.status == JobStatus.FAILED)
        .group_by(Job.model_version, Job.failure_kind)
    )
    with engine.connect() as connection:
        return [(v, kind or "unknown", int(n)) for v, kind, n in connection.execute(query)]


@dataclass(frozen=True)
class Histogram:
    buckets: list[tuple[float, int]]  # (upper bound in seconds, cumulative count)
    count: int
    total_seconds: float


def latency_histograms(
    engine: Engine, column: ColumnElement, bounds_s: Sequence[float]
) -> dict[str, Histogram]:
    """Cumulative histogram of a duration column (ms) of successful jobs, per version."""
    cells = [func.sum(case((column <= bound * 1000.0, 1), else_=0)) for bound in bounds_s]
    query = (
        select(Job.model_version, func.count(), func.sum(column), *cells)
        .where(Job.status == JobStatus.SUCCEEDED, column.is_not(None))
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
