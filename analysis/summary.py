"""Per-version health summary of a set of jobs, aggregated in SQL (SQLite and PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from storage import overview
from storage.models import JobStatus


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


def summarize(engine: Engine, *, batch_id: str | None = None) -> list[VersionSummary]:
    summaries: dict[str, VersionSummary] = {}
    for version, status, kind, n in overview.counts_by_version(engine, batch_id=batch_id):
        summary = summaries.setdefault(version, VersionSummary(version))
        summary.jobs += n
        if status == JobStatus.SUCCEEDED:
            summary.succeeded += n
        elif status == JobStatus.FAILED:
            summary.failed += n
            summary.failures[kind or "unknown"] = summary.failures.get(kind or "unknown", 0) + n
        else:
            summary.pending += n
    durations: tuple[tuple[str, overview.Duration, float], ...] = (
        ("p50_end_to_end_ms", "end_to_end_ms", 0.5),
        ("p95_end_to_end_ms", "end_to_end_ms", 0.95),
        ("p50_queue_wait_ms", "queue_wait_ms", 0.5),
        ("p50_render_ms", "inference_ms", 0.5),
        ("p95_render_ms", "inference_ms", 0.95),
    )
    for attribute, duration, q in durations:
        found = overview.percentile_by_version(engine, duration, q, batch_id=batch_id)
        for version, value in found.items():
            setattr(summaries[version], attribute, value)
    return [summaries[v] for v in sorted(summaries)]
