"""Job submission: validate, record QUEUED, enqueue on the version's queue.

One code path for single and bulk submission. Rows are inserted in batches and messages
published over one reused producer connection. A job id derived from an idempotency key
makes a repeated request return the same job without a second message.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from types import SimpleNamespace
from typing import Any

from celery import Celery
from pydantic_core import PydanticUndefined
from redis.exceptions import RedisError
from sqlalchemy.engine import Engine

from canary.contracts import PriorityClass
from canary.settings import Settings
from gateway.job_requests import JobRequest
from storage import jobs
from storage.models import Job, JobStatus, utcnow
from tasks.publish import send_claimed
from tasks.release import Releaser, releaser_for

log = logging.getLogger(__name__)

JOB_ID_NAMESPACE = uuid.UUID("6f1c3c1e-5a55-4a8e-9b59-0c6b1b8b7a10")
# Column defaults of a new job row (the factories, e.g. created_at, are filled per row).
# How long a submission waits for a release in progress elsewhere before leaving its held
# jobs to the next release (a worker's or beat's).
RELEASE_WAIT_S = 2.0
NEW_JOB: dict[str, Any] = {
    name: None if field.default is PydanticUndefined else field.default
    for name, field in Job.model_fields.items()
}


@dataclass(frozen=True)
class PreparedJob:
    """A validated request with the version that will serve it and why."""

    request: JobRequest
    model_version: str
    experiment: str | None = None
    arm: str | None = None
    segment: str | None = None
    seed_given: bool = True  # False: the gateway drew the seed (a replay may draw another)


@dataclass(frozen=True)
class Submitted:
    job_id: str
    model_version: str
    created: bool  # False when an earlier submission with the same key already exists
    sent: bool = True  # False: the broker did not take it yet; the outbox sends it later
    held: bool = False  # True: fair share holds it until its tenant's turn (tasks/release.py)


def job_id_for(request: JobRequest) -> str:
    if request.idempotency_key:
        return str(uuid.uuid5(JOB_ID_NAMESPACE, request.idempotency_key))
    return str(uuid.uuid4())


def new_job_row(
    job: PreparedJob,
    source: str,
    batch_id: str | None,
    api_key_id: str | None,
    priority: PriorityClass = PriorityClass.BULK,
) -> dict[str, Any]:
    """A prepared job's column values as a new, unsent ``jobs`` row (a plain dict: building
    a ``Job`` per row would cost more than inserting it)."""
    request = job.request
    assert request.seed is not None, "validate_request assigns a seed"
    return {
        **NEW_JOB,
        "id": job_id_for(request),
        "idempotency_key": request.idempotency_key,
        "user_id": request.user_id,
        "source": source,
        "batch_id": batch_id,
        "priority_class": priority.value,
        "api_key_id": api_key_id,
        "experiment": job.experiment,
        "arm": job.arm,
        "segment": job.segment,
        "model_version": job.model_version,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "seed": request.seed,
        "steps": request.steps,
        "guidance": request.guidance,
        "width": request.width,
        "height": request.height,
        "created_at": utcnow(),
    }


class Producer:
    """Submits jobs for one settings/engine/app triple; cheap to keep for a process."""

    def __init__(self, settings: Settings, engine: Engine, app: Celery) -> None:
        self.settings = settings
        self.engine = engine
        self.app = app

    @cached_property
    def releaser(self) -> Releaser:
        """Fair share's release of held bulk jobs (tasks/release.py)."""
        return releaser_for(self.settings, self.engine, self.app)

    def submit_many(
        self,
        jobs_in: Sequence[PreparedJob],
        *,
        source: str = "api",
        batch_id: str | None = None,
        api_key_id: str | None = None,
        priority: PriorityClass = PriorityClass.BULK,
    ) -> list[Submitted]:
        """Record and enqueue prepared jobs, in order, on their versions' ``priority``
        queues (an earlier submission of the same key keeps its class). Under fair share
        bulk jobs are recorded held and released up to their tenant's share of the broker
        (tasks/release.py); the rest follow as workers take jobs."""
        fair = self.releaser.enabled
        hold = fair and priority == PriorityClass.BULK
        rows = [new_job_row(job, source, batch_id, api_key_id, priority) for job in jobs_in]
        if not hold:
            for row in rows:
                # The INSERT claims the send (see storage.jobs.claim_sends): a concurrent
                # replay of the same key finds the job claimed and sends nothing; only this
                # caller sends it, and gives the claim back if the broker refuses it.
                row["enqueued_at"] = row["created_at"]
        inserted = jobs.insert_new_jobs(self.engine, rows)
        existing_ids = [row["id"] for row in rows if row["id"] not in inserted]
        existing = {job.id: job for job in jobs.get_jobs(self.engine, existing_ids)}
        # A job recorded earlier but never sent (the broker refused it, or fair share holds
        # it) is sent now, by whichever caller claims it (one conditional UPDATE: replays
        # race); a held bulk job is left to the release.
        unsent_before = [
            job
            for job in existing.values()
            if job.status == JobStatus.QUEUED and job.enqueued_at is None
        ]
        held_before = {
            j.id for j in unsent_before if fair and j.priority_class == PriorityClass.BULK
        }
        claimed = jobs.claim_sends(
            self.engine, [j.id for j in unsent_before if j.id not in held_before]
        )
        to_send: list[Any] = (
            [] if hold else [SimpleNamespace(**r) for r in rows if r["id"] in inserted]
        )
        to_send += [job for job in unsent_before if job.id in claimed]
        unsent = send_claimed(self.engine, self.app, to_send)
        held_versions = {existing[job_id].model_version for job_id in held_before}
        if hold:
            held_versions |= {row["model_version"] for row in rows if row["id"] in inserted}
        released, refused = self._release(held_versions)
        held_ids = {row["id"] for row in rows if hold and row["id"] in inserted}
        held_ids |= held_before
        held_ids -= released
        return [
            Submitted(
                row["id"],
                existing[row["id"]].model_version
                if row["id"] in existing
                else row["model_version"],
                row["id"] in inserted,
                sent=row["id"] not in unsent and not (refused and row["id"] in held_ids),
                held=row["id"] in held_ids,
            )
            for row in rows
        ]

    def _release(self, versions: set[str]) -> tuple[set[str], bool]:
        """Release held bulk jobs of ``versions`` now (waiting for a release in progress
        elsewhere, so these jobs are counted). Returns the ids sent and whether the broker
        refused any; a broker that cannot be reached leaves them held for beat's release."""
        sent: set[str] = set()
        refused = False
        for version in sorted(versions):
            try:
                released = self.releaser.release(version, wait_s=RELEASE_WAIT_S)
            except (RedisError, OSError) as exc:
                log.warning(
                    "held jobs of %s stay held, the broker is unreachable: %s", version, exc
                )
                refused = True
                continue
            sent |= released.sent_ids
            refused = refused or released.refused > 0
        return sent, refused

    def publish(self, rows: Sequence[Any]) -> set[str]:
        """Send recorded, never-sent jobs to their version queues over one producer
        connection, each by one caller only: the jobs are claimed first (one conditional
        UPDATE, see storage.jobs.claim_sends); one another caller claimed is left to it.

        Returns the ids of the claimed jobs the broker did not take (empty when all were
        sent). Those stay QUEUED with ``enqueued_at`` unset and nothing is marked failed:
        the outbox (``scheduler.maintenance.republish_unsent``) sends them once the broker
        is back, and a replayed idempotent request sends its job at once.
        """
        if not rows:
            return set()
        claimed = jobs.claim_sends(self.engine, [row.id for row in rows])
        return send_claimed(self.engine, self.app, [row for row in rows if row.id in claimed])
