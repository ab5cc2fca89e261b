"""Shadow jobs' SQL: the bounded backlog's count, a job's image key, counts by outcome and
the (live job, shadow job) pairs the paired comparison reads (gateway/shadow.py,
analysis/shadow.py).

A shadow job is a ``jobs`` row with ``shadow_of`` set (the live job it copies) and source
``shadow``; it goes through the same claim, recovery and outbox as every job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlmodel import col

from canary.contracts import image_key, shadow_image_key
from storage.models import Job, JobStatus

SHADOW_SOURCE = "shadow"


def queued_shadow_jobs(engine: Engine, version: str) -> int:
    """Shadow jobs of ``version`` still QUEUED: the backlog the gateway bounds."""
    query = select(func.count()).where(
        col(Job.model_version) == version,
        col(Job.status) == JobStatus.QUEUED,
        col(Job.shadow_of).is_not(None),
    )
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def image_key_for(engine: Engine, job_id: str) -> str:
    """Where a job's image goes: ``shadow/`` for a shadow job, else ``renders/``.

    One primary-key read on the worker's recorder thread; a job that is not found (it
    cannot be: the worker claimed it) is a live job's key.
    """
    query = select(col(Job.shadow_of)).where(col(Job.id) == job_id)
    with engine.connect() as connection:
        shadow_of = connection.execute(query).scalar_one_or_none()
    return image_key(job_id) if shadow_of is None else shadow_image_key(job_id)


@dataclass(frozen=True)
class Totals:
    """Shadow jobs of one experiment on one candidate version, since the first."""

    experiment: str
    version: str
    recorded: int
    sent: int  # handed to the broker (a refused one is sent by the outbox later)
    succeeded: int
    failed: int

    @property
    def queued(self) -> int:
        return self.recorded - self.succeeded - self.failed


def totals(engine: Engine) -> list[Totals]:
    """Shadow jobs by experiment and version: counts that only grow (rows are kept)."""
    sent = or_(col(Job.enqueued_at).is_not(None), col(Job.status) != JobStatus.QUEUED)
    query = (
        select(
            col(Job.experiment),
            col(Job.model_version),
            func.count(),
            func.sum(case((sent, 1), else_=0)),
            func.sum(case((col(Job.status) == JobStatus.SUCCEEDED, 1), else_=0)),
            func.sum(case((col(Job.status) == JobStatus.FAILED, 1), else_=0)),
        )
        .where(col(Job.shadow_of).is_not(None))
        .group_by(col(Job.experiment), col(Job.model_version))
        .order_by(col(Job.experiment), col(Job.model_version))
    )
    with engine.connect() as connection:
        return [
            Totals(e or "", v, int(n), int(s or 0), int(ok or 0), int(bad or 0))
            for e, v, n, s, ok, bad in connection.execute(query)
        ]


@dataclass(frozen=True)
class Pair:
    """A live job and its shadow copy: the same inputs on the baseline and the candidate."""

    live_id: str
    shadow_id: str
    segment: str | None
    created_at: datetime
    live_status: str
    shadow_status: str
    live_failure: str | None
    shadow_failure: str | None
    live_ms: float | None  # render (inference) time, see pairs()
    shadow_ms: float | None
    live_vram: int | None
    shadow_vram: int | None
    live_image: str | None
    shadow_image: str | None
    prompt: str
    seed: int


def pairs(
    engine: Engine,
    experiment: str,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    finished_only: bool = True,
    live_id: str | None = None,
) -> list[Pair]:
    """The experiment's shadow jobs with their live jobs, oldest first (by the live job's
    creation; ``start`` inclusive, ``end`` exclusive). ``finished_only``: both jobs
    SUCCEEDED or FAILED. ``live_id``: only that live job's pair. The latencies are render
    (inference) times: a shadow job waits behind live work by design, so end-to-end times
    would compare queues, not models."""
    live = aliased(Job, name="live")
    shadow = aliased(Job, name="shadow")
    conditions: list[Any] = [col(shadow.experiment) == experiment]
    if live_id is not None:
        conditions.append(col(shadow.shadow_of) == live_id)
    if start is not None:
        conditions.append(col(live.created_at) >= start)
    if end is not None:
        conditions.append(col(live.created_at) < end)
    if finished_only:
        finished = (JobStatus.SUCCEEDED, JobStatus.FAILED)
        conditions += [col(live.status).in_(finished), col(shadow.status).in_(finished)]
    columns = (
        (live.id, shadow.id, live.segment, live.created_at, live.status, shadow.status),
        (live.failure_kind, shadow.failure_kind, live.inference_ms, shadow.inference_ms),
        (live.peak_vram_bytes, shadow.peak_vram_bytes, live.image_key, shadow.image_key),
        (live.prompt, live.seed),
    )
    query = (
        select(*(cast(Any, col(c)) for group in columns for c in group))
        .join(live, col(live.id) == col(shadow.shadow_of))
        .where(and_(*conditions))
        .order_by(col(live.created_at), col(live.id))
    )
    with engine.connect() as connection:
        return [Pair(*row) for row in connection.execute(query)]
