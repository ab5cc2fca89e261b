"""Idempotent replays: the same key with the same request is the same job; the same key
with a different request is refused (as payment APIs do), never silently answered with
the earlier job."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.engine import Engine

from gateway.job_requests import InvalidJob
from gateway.submit import PreparedJob, job_id_for
from storage import jobs
from storage.models import Job

COMPARED = ("prompt", "negative_prompt", "steps", "guidance", "width", "height", "user_id")


def differences(earlier: Job, job: PreparedJob) -> list[str]:
    """Fields in which ``job`` asks for something else than the job recorded earlier."""
    request = job.request
    changed = [name for name in COMPARED if getattr(earlier, name) != getattr(request, name)]
    if job.seed_given and earlier.seed != request.seed:
        changed.append("seed")
    if request.model_version is not None and earlier.model_version != request.model_version:
        changed.append("model_version")
    return changed


def replay_conflicts(engine: Engine, prepared: Sequence[PreparedJob]) -> list[InvalidJob | None]:
    """Per job: an InvalidJob if its idempotency key names an earlier, different job."""
    ids = [job_id_for(job.request) if job.request.idempotency_key else None for job in prepared]
    keyed = [job_id for job_id in ids if job_id]
    earlier = {row.id: row for row in jobs.get_jobs(engine, keyed)} if keyed else {}
    conflicts: list[InvalidJob | None] = []
    for job_id, job in zip(ids, prepared, strict=True):
        row = earlier.get(job_id) if job_id else None
        changed = differences(row, job) if row is not None else []
        conflicts.append(
            InvalidJob(
                [
                    f"idempotency_key: already used for job {row.id} with a different "
                    f"request ({', '.join(changed)} differ); use a new key for a new job"
                ]
            )
            if row is not None and changed
            else None
        )
    return conflicts
