"""Per-version health summary of a set of jobs, aggregated in SQL (SQLite and PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, func, select, true
from sqlalchemy.engine import Engine

from storage.models import Job, JobStatus


@dataclass
class VersionSummary:
    version: str
    jobs: int = 0
    succeeded: int = 0
    failed: int = 0
    pending: int = 0
    # end to end = queue wait + render + upload: from submission to the stored image
    p50_end_to_end_ms: float | None = None
    p95_end_to_end_ms: float | None = None
    p50_queue_wait_ms: float | None = None
    p50_render_ms: float | None = None  # the pipeline call (inference) alone
    p95_render_ms: float | None = None
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def success_rate(self) -> float | None:
        finished = self.succeeded + self.failed
        return self.succeeded / finished if finished else None


def _nearest_rank(
    engine: Engine, column: ColumnElement, where: ColumnElement, q: float
) -> dict[str, float]:
    """Nearest-rank percentile per version with window functions (portable across backends)."""
    ranked = (
        select(
            Job.model_version.label("version"),
            column.label("value"),
            func.row_number().over(partition_by=Job.model_version, order_by=column).label("rank"),
            func.count().over(partition_by=Job.model_version).label("n"),
        )
        .where(where, Job.status == JobStatus.SUCCEEDED, column.is_not(None))
        .subquery()
    )
    # nearest rank: the smallest rank r with r >= q * n (no ceil(), which SQLite lacks)
    query = select(ranked.c.version, ranked.c.value).where(
        ranked.c.rank >= ranked.c.n * q, ranked.c.rank - 1 < ranked.c.n * q
    )
    with engine.connect() as connection:
        return {version: float(value) for version, value in connection.execute(query)}


def summarize(engine: Engine, *, batch_id: str | None = None) -> list[VersionSummary]:
    where = Job.batch_id == batch_id if batch_id else true()
    summaries: dict[str, VersionSummary] = {}
    counts = (
        select(Job.model_version, Job.status, Job.failure_kind, func.count())
        .where(where)
        .group_by(Job.model_version, Job.status, Job.failure_kind)
    )
    with engine.connect() as connection:
        for version, status, kind, n in connection.execute(counts):
            summary = summaries.setdefault(version, VersionSummary(version))
            summary.jobs += n
            if status == JobStatus.SUCCEEDED:
                summary.succeeded += n
            elif status == JobStatus.FAILED:
                summary.failed += n
                summary.failures[kind or "unknown"] = summary.failures.get(kind or "unknown", 0) + n
            else:
                summary.pending += n
    for attribute, column, q in (
        ("p50_end_to_end_ms", Job.end_to_end_ms, 0.5),
        ("p95_end_to_end_ms", Job.end_to_end_ms, 0.95),
        ("p50_queue_wait_ms", Job.queue_wait_ms, 0.5),
        ("p50_render_ms", Job.inference_ms, 0.5),
        ("p95_render_ms", Job.inference_ms, 0.95),
    ):
        for version, value in _nearest_rank(engine, column, where, q).items():
            setattr(summaries[version], attribute, value)
    return [summaries[v] for v in sorted(summaries)]
