"""What happened to a batch: counts by status, every refused or failed line, the images.

One report for `canary status BATCH_ID` and `GET /v1/batches/{id}`; they differ only in
how an image is reached (a path or presigned URL for the CLI, the job's image route for
API clients) and whether versions are shown.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from gateway.blinding import hide_versions
from storage import batches
from storage.models import Batch, JobStatus

ImageUrl = Callable[[str, str], str]  # (job id, object key) -> where to fetch the image


def batch_report(
    engine: Engine,
    batch: Batch,
    image_url: ImageUrl,
    *,
    show_versions: bool,
    image_limit: int | None = None,
) -> dict[str, Any]:
    """The batch as a JSON-ready dict (see the module docstring)."""
    counts = {status.value: 0 for status in JobStatus}
    counts.update(batches.count_by_status(engine, batch.id))
    jobs_total = sum(counts.values())
    failed = batches.line_jobs(engine, batch.id, status=JobStatus.FAILED)
    succeeded = batches.line_jobs(engine, batch.id, status=JobStatus.SUCCEEDED, limit=image_limit)
    rejected = batches.rejected_lines(batch)
    unit = "item" if batch.source == "api" else "line"

    def version(entry: batches.LineJob) -> dict[str, str]:
        return {"model_version": entry.model_version} if show_versions else {}

    return {
        "batch_id": batch.id,
        "source": batch.source,
        "file": batch.file,
        "created_at": _utc(batch.created_at).isoformat(),
        "unit": unit,
        "lines": jobs_total + len(rejected),
        "jobs": jobs_total,
        "created": batch.created,
        "duplicates": batch.duplicates,
        "counts": counts,
        "done": counts[JobStatus.QUEUED] + counts[JobStatus.RUNNING] == 0,
        "rejected": rejected,
        "failed": [
            {
                unit: entry.line,
                "job_id": entry.job_id,
                "failure_kind": entry.failure_kind,
                "failure_message": (
                    entry.failure_message
                    if show_versions
                    else hide_versions(entry.failure_message, [entry.model_version])
                ),
                **version(entry),
            }
            for entry in failed
        ],
        "images": [
            {
                unit: entry.line,
                "job_id": entry.job_id,
                "url": image_url(entry.job_id, entry.image_key or ""),
                **version(entry),
            }
            for entry in succeeded
        ],
        "images_listed": len(succeeded),
        "images_total": counts[JobStatus.SUCCEEDED],
    }


def _utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
