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
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from celery import Celery
from kombu.exceptions import BatchPublishError, OperationalError
from pydantic_core import PydanticUndefined
from redis.exceptions import RedisError
from sqlalchemy.engine import Engine

from canary.contracts import PriorityClass
from canary.settings import Settings
from gateway.job_requests import JobRequest
from storage import jobs
from storage.models import Job, JobStatus, utcnow
from tasks.publish import PUBLISH_BATCH, publish_chunks

log = logging.getLogger(__name__)

JOB_ID_NAMESPACE = uuid.UUID("6f1c3c1e-5a55-4a8e-9b59-0c6b1b8b7a10")
# Column defaults of a new job row (the factories, e.g. created_at, are filled per row).
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
        queues (an earlier submission of the same key keeps its class)."""
        rows = [new_job_row(job, source, batch_id, api_key_id, priority) for job in jobs_in]
        for row in rows:
            # The INSERT claims the send (see storage.jobs.claim_sends): a concurrent replay
            # of the same key finds the job claimed and sends nothing; only this caller
            # sends it, and gives the claim back if the broker refuses it.
            row["enqueued_at"] = row["created_at"]
        inserted = jobs.insert_new_jobs(self.engine, rows)
        existing_ids = [row["id"] for row in rows if row["id"] not in inserted]
        existing = {job.id: job for job in jobs.get_jobs(self.engine, existing_ids)}
        # A job recorded earlier but never sent (the broker refused it) is sent now, by
        # whichever caller claims it (one conditional UPDATE: replays race).
        to_send: list[Any] = [SimpleNamespace(**row) for row in rows if row["id"] in inserted]
        unsent_before = [
            job.id
            for job in existing.values()
            if job.status == JobStatus.QUEUED and job.enqueued_at is None
        ]
        claimed = jobs.claim_sends(self.engine, unsent_before)
        to_send += [existing[job_id] for job_id in unsent_before if job_id in claimed]
        unsent = self._send_claimed(to_send)
        return [
            Submitted(
                row["id"],
                existing[row["id"]].model_version
                if row["id"] in existing
                else row["model_version"],
                row["id"] in inserted,
                sent=row["id"] not in unsent,
            )
            for row in rows
        ]

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
        return self._send_claimed([row for row in rows if row.id in claimed])

    def _send_claimed(self, rows: Sequence[Any]) -> set[str]:
        """Send jobs this caller claimed; stamp the sent ones' sending time and give back
        the claims of the others (returned)."""
        if not rows:  # e.g. an idempotent replay of a sent job: no broker round trip
            return set()
        # (when the chunk's sending began, its job ids): a job is stamped enqueued before
        # its message can reach a worker, so its queue wait is never negative
        sent: list[tuple[datetime, list[str]]] = []
        try:
            # pipelined: one broker round trip per PUBLISH_BATCH jobs instead of two per job
            # (tasks/publish.py); jobs count as sent once their chunk is flushed
            for chunk in publish_chunks(self.app, rows, PUBLISH_BATCH):
                sent.append(chunk)
        # BatchPublishError: a broker that went away mid-batch leaves delivery uncertain; the
        # chunk stays unsent, and a message that did arrive meets the claim guard, which
        # never renders a job twice.
        except (OperationalError, BatchPublishError, RedisError, OSError) as exc:
            log.warning(
                "the broker refused %d of %d jobs; they stay queued for the outbox: %s",
                len(rows) - sum(len(ids) for _, ids in sent),
                len(rows),
                exc,
            )
        except BaseException:
            self._mark_enqueued(sent)
            done = {job_id for _, ids in sent for job_id in ids}
            jobs.unclaim_sends(self.engine, [row.id for row in rows if row.id not in done])
            raise
        self._mark_enqueued(sent)
        done = {job_id for _, ids in sent for job_id in ids}
        unsent = {row.id for row in rows if row.id not in done}
        jobs.unclaim_sends(self.engine, unsent)
        return unsent

    def _mark_enqueued(self, sent: list[tuple[datetime, list[str]]]) -> None:
        for sending_at, job_ids in sent:
            jobs.mark_enqueued(self.engine, job_ids, when=sending_at)
