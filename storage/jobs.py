"""Job records: the state transitions producers and workers make, as conditional updates.

Each transition is one UPDATE guarded by the current status, so concurrent or redelivered
deliveries cannot produce two success records or resurrect a finished job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from storage.models import TERMINAL_STATUSES, Job, JobStatus, utcnow


def insert_new_jobs(engine: Engine, jobs: Sequence[Job | Mapping[str, Any]]) -> set[str]:
    """Insert jobs (rows or column-value mappings) whose id is not taken yet; return the ids
    inserted.

    Ids derived from idempotency keys make re-submission of the same request a no-op.
    """
    if not jobs:
        return set()
    rows = [job.model_dump() if isinstance(job, Job) else job for job in jobs]
    # One statement executed with many parameter sets: SQLAlchemy batches them into
    # multi-row INSERTs ("insertmanyvalues") and compiles the statement once.
    statement = _insert_new_statement(engine.dialect.name)
    with engine.begin() as connection:
        return {row[0] for row in connection.execute(statement, rows)}


@lru_cache(maxsize=4)
def _insert_new_statement(dialect: str) -> Any:
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(Job).on_conflict_do_nothing().returning(Job.id)


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


# claim_job's default cutoff: every RUNNING job counts as stale
NO_CUTOFF = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job a worker has just claimed: what it needs besides the message's spec."""

    id: str
    attempt: int
    created_at: datetime
    enqueued_at: datetime | None


def claim_job(
    engine: Engine,
    job_id: str,
    started_at: datetime,
    *,
    stale_before: datetime | None = None,
    **worker: Any,
) -> Claimed | None:
    """Claim a job for a worker: -> RUNNING and count the attempt, in one statement; None
    when it has finished, does not exist, or another worker holds it.

    A QUEUED job is claimable. A RUNNING one is claimable when nobody holds it (re-sent by
    :mod:`tasks.recovery`), when this worker (``worker_host``) holds it (redelivered after
    its pool process died), or when it started before ``stale_before`` (its worker is
    presumed lost; default: any RUNNING job). A RUNNING job another worker claimed recently
    is not: that worker renders it (e.g. as a micro-batch mate) and recovery re-sends it if
    that worker dies.
    """
    params = {f"claim_{name}": value for name, value in worker.items()}
    params.update(
        claim_id=job_id,
        claim_started_at=started_at,
        claim_owner=worker.get("worker_host"),
        claim_stale_before=stale_before or NO_CUTOFF,
    )
    with engine.begin() as connection:
        row = connection.execute(_claim_statement(tuple(sorted(worker))), params).first()
    return None if row is None else Claimed(*row)


@lru_cache(maxsize=16)
def _claim_statement(fields: tuple[str, ...]) -> Any:
    """Built once per set of worker fields: a worker claims on its critical path, and
    building the statement costs twice what executing it on SQLite does."""
    running_unheld = and_(
        Job.status == JobStatus.RUNNING,
        or_(
            Job.worker_host.is_(None),  # type: ignore[union-attr]
            Job.worker_host == bindparam("claim_owner"),
            Job.started_at < bindparam("claim_stale_before"),  # type: ignore[operator]
        ),
    )
    return (
        update(Job)
        .where(Job.id == bindparam("claim_id"), or_(Job.status == JobStatus.QUEUED, running_unheld))
        .values(
            status=JobStatus.RUNNING,
            attempts=Job.attempts + 1,
            started_at=bindparam("claim_started_at"),
            **{name: bindparam(f"claim_{name}") for name in fields},
        )
        .returning(Job.id, Job.attempts, Job.created_at, Job.enqueued_at)
    )


def claim(engine: Engine, job_id: str, started_at: datetime, **worker: Any) -> int | None:
    """:func:`claim_job`, returning just the attempt number."""
    claimed = claim_job(engine, job_id, started_at, **worker)
    return None if claimed is None else claimed.attempt


def claim_compatible(
    engine: Engine,
    model_version: str,
    *,
    width: int,
    height: int,
    steps: int,
    guidance: float,
    limit: int,
    started_at: datetime,
    **worker: Any,
) -> list[Job]:
    """Claim up to ``limit`` QUEUED jobs of the version with the same size, steps and
    guidance (micro-batching), roughly oldest first (index order); returns them RUNNING.

    Their own messages stay queued: whichever worker receives one finds the job finished,
    or RUNNING under this worker and leaves it (:func:`claim_job`); if this worker dies,
    :mod:`tasks.recovery` sends it again.
    """
    candidates = (
        select(Job.id)
        .where(
            Job.model_version == model_version,
            Job.status == JobStatus.QUEUED,
            Job.width == width,
            Job.height == height,
            Job.steps == steps,
            Job.guidance == guidance,
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    statement = (
        update(Job)
        .where(Job.id.in_(candidates), Job.status == JobStatus.QUEUED)  # type: ignore[attr-defined]
        .values(
            status=JobStatus.RUNNING, attempts=Job.attempts + 1, started_at=started_at, **worker
        )
        .returning(*Job.__table__.columns)  # type: ignore[attr-defined]
    )
    with engine.begin() as connection:
        return [Job.model_validate(dict(row._mapping)) for row in connection.execute(statement)]


def release(engine: Engine, job_ids: Iterable[str]) -> list[Job]:
    """RUNNING -> QUEUED, undoing a claim that rendered nothing (a failed micro-batch);
    returns the released rows (their messages may have been dropped by other workers while
    the claim held, so the caller sends them again)."""
    ids = list(job_ids)
    if not ids:
        return []
    with engine.begin() as connection:
        result = connection.execute(
            update(Job)
            .where(Job.id.in_(ids), Job.status == JobStatus.RUNNING)  # type: ignore[attr-defined]
            .values(
                status=JobStatus.QUEUED, attempts=Job.attempts - 1, started_at=None,
                worker_host=None,
            )
            .returning(*Job.__table__.columns)  # type: ignore[attr-defined]
        )  # fmt: skip
        return [Job.model_validate(dict(row._mapping)) for row in result]


def take_stranded(
    engine: Engine,
    *,
    model_version: str,
    worker_host: str | None = None,
    started_before: datetime | None = None,
) -> list[Job]:
    """RUNNING jobs of the version claimed by ``worker_host`` or started before
    ``started_before``, taken to be sent again: in the same statement their ``started_at``
    is bumped (so two concurrent callers never both take one job) and their holder cleared
    (so whichever worker receives the new message may claim them, see :func:`claim_job`)."""
    assert (worker_host is None) != (started_before is None)
    statement = update(Job).where(
        Job.model_version == model_version, Job.status == JobStatus.RUNNING
    )
    if worker_host is not None:
        statement = statement.where(Job.worker_host == worker_host)
    else:
        statement = statement.where(Job.started_at < started_before)  # type: ignore[operator]
    statement = statement.values(started_at=utcnow(), worker_host=None).returning(
        *Job.__table__.columns  # type: ignore[attr-defined]
    )
    with engine.begin() as connection:
        return [Job.model_validate(dict(row._mapping)) for row in connection.execute(statement)]


def queued_sent_before(
    engine: Engine, model_version: str, sent_before: datetime, limit: int
) -> list[Job]:
    """QUEUED jobs of the version whose message was sent before ``sent_before``, oldest
    first (the candidates for a message the broker lost)."""
    with Session(engine) as session:
        return list(
            session.exec(
                select(Job)
                .where(
                    Job.model_version == model_version,
                    Job.status == JobStatus.QUEUED,
                    Job.enqueued_at < sent_before,  # type: ignore[operator]
                )
                .order_by(Job.enqueued_at)  # type: ignore[arg-type]
                .limit(limit)
            )
        )


def running_holders(engine: Engine, model_version: str) -> set[str]:
    """Node names holding RUNNING jobs of the version."""
    with Session(engine) as session:
        statement = select(Job.worker_host).where(
            Job.model_version == model_version,
            Job.status == JobStatus.RUNNING,
            Job.worker_host.is_not(None),  # type: ignore[union-attr]
        )
        return {host for host in session.exec(statement.distinct()) if host}


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
