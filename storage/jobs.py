"""Job records: the state transitions producers and workers make, as conditional updates.

Each transition is one UPDATE guarded by the current status, so concurrent or redelivered
deliveries cannot produce two success records or resurrect a finished job.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from storage.db import dialect_insert
from storage.models import TERMINAL_STATUSES, Job, JobStatus, utcnow


def insert_new_jobs(engine: Engine, jobs: Sequence[Job]) -> set[str]:
    """Insert jobs whose id is not taken yet, in one statement; return the ids inserted.

    Ids derived from idempotency keys make re-submission of the same request a no-op.
    """
    if not jobs:
        return set()
    rows = [job.model_dump() for job in jobs]
    insert = dialect_insert(engine)
    statement = (
        insert(Job).values(rows).on_conflict_do_nothing().returning(Job.id)  # type: ignore[arg-type]
    )
    with engine.begin() as connection:
        return {row[0] for row in connection.execute(statement)}


def mark_enqueued(engine: Engine, job_ids: Iterable[str], when: datetime | None = None) -> None:
    ids = list(job_ids)
    if not ids:
        return
    with engine.begin() as connection:
        connection.execute(
            update(Job).where(Job.id.in_(ids)).values(enqueued_at=when or utcnow())  # type: ignore[attr-defined]
        )


def get_job(engine: Engine, job_id: str) -> Job | None:
    with Session(engine) as session:
        return session.get(Job, job_id)


def get_jobs(engine: Engine, job_ids: Sequence[str]) -> list[Job]:
    with Session(engine) as session:
        return list(session.exec(select(Job).where(Job.id.in_(job_ids))))  # type: ignore[attr-defined]


def claim(engine: Engine, job_id: str, started_at: datetime, **worker: Any) -> int | None:
    """QUEUED/RUNNING -> RUNNING and count the attempt; returns the attempt number, or None
    when the job has already finished.

    RUNNING is claimable because a job whose worker died is redelivered in that state.
    """
    statement = (
        update(Job)
        .where(Job.id == job_id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))  # type: ignore[attr-defined]
        .values(
            status=JobStatus.RUNNING, attempts=Job.attempts + 1, started_at=started_at, **worker
        )
        .returning(Job.attempts)
    )
    with engine.begin() as connection:
        return connection.execute(statement).scalar()


def count_misroute(engine: Engine, job_id: str) -> None:
    with engine.begin() as connection:
        connection.execute(update(Job).where(Job.id == job_id).values(misroutes=Job.misroutes + 1))


def finish(engine: Engine, job_id: str, status: JobStatus, **fields: Any) -> bool:
    """RUNNING -> SUCCEEDED/FAILED exactly once; returns False if another delivery won."""
    assert status in TERMINAL_STATUSES
    statement = (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
        .values(status=status, finished_at=fields.pop("finished_at", None) or utcnow(), **fields)
    )
    with engine.begin() as connection:
        return connection.execute(statement).rowcount == 1


def fail_unstarted(engine: Engine, job_ids: Iterable[str], kind: str, message: str) -> None:
    """Mark QUEUED jobs FAILED without a worker (e.g. the broker refused the message)."""
    ids = list(job_ids)
    if not ids:
        return
    with engine.begin() as connection:
        connection.execute(
            update(Job)
            .where(Job.id.in_(ids), Job.status == JobStatus.QUEUED)  # type: ignore[attr-defined]
            .values(
                status=JobStatus.FAILED,
                failure_kind=kind,
                failure_message=message,
                finished_at=utcnow(),
            )
        )


def count_batch_by_status(engine: Engine, batch_id: str) -> dict[str, int]:
    with Session(engine) as session:
        rows = session.exec(
            select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
        )
        return {status: count for status, count in rows}
