"""Job records: the state transitions producers and workers make, as conditional updates.

Each transition is one UPDATE guarded by the current status, so concurrent or redelivered
deliveries cannot produce two success records or resurrect a finished job.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, bindparam, func, or_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from storage.models import TERMINAL_STATUSES, Job, JobAttempt, JobStatus, utcnow

_JOBS: Table = Job.__table__  # type: ignore[attr-defined]  # SQLModel leaves __table__ undeclared


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
    return insert(Job).on_conflict_do_nothing().returning(col(Job.id))


def mark_enqueued(engine: Engine, job_ids: Iterable[str], when: datetime | None = None) -> None:
    ids = list(job_ids)
    if not ids:
        return
    with engine.begin() as connection:
        connection.execute(
            update(Job).where(col(Job.id).in_(ids)).values(enqueued_at=when or utcnow())
        )


def claim_sends(engine: Engine, job_ids: Iterable[str], when: datetime | None = None) -> set[str]:
    """Claim the sending of QUEUED jobs never sent (``enqueued_at`` unset): one conditional
    UPDATE stamps ``enqueued_at``, so of concurrent callers (idempotent replays, the outbox)
    exactly one sends each job. Returns the ids this caller claimed; it sends them, then
    stamps the sending time (:func:`mark_enqueued`) or gives the claim back
    (:func:`unclaim_sends`). A new row is claimed by its INSERT (``enqueued_at`` set)."""
    ids = list(job_ids)
    if not ids:
        return set()
    with engine.begin() as connection:
        result = connection.execute(
            update(Job)
            .where(
                col(Job.id).in_(ids),
                col(Job.status) == JobStatus.QUEUED,
                col(Job.enqueued_at).is_(None),
            )
            .values(enqueued_at=when or utcnow())
            .returning(col(Job.id))
        )
        return {row[0] for row in result}


def unclaim_sends(engine: Engine, job_ids: Iterable[str]) -> None:
    """Give back send claims whose message the broker did not take: the jobs are unsent
    again (``enqueued_at`` unset) for the outbox or the next replay."""
    ids = list(job_ids)
    if not ids:
        return
    with engine.begin() as connection:
        connection.execute(
            update(Job)
            .where(col(Job.id).in_(ids), col(Job.status) == JobStatus.QUEUED)
            .values(enqueued_at=None)
        )


def get_job(engine: Engine, job_id: str) -> Job | None:
    with Session(engine) as session:
        return session.get(Job, job_id)


def get_jobs(engine: Engine, job_ids: Sequence[str]) -> list[Job]:
    if not job_ids:  # e.g. a submission that replays nothing: no round trip
        return []
    with Session(engine) as session:
        return list(session.exec(select(Job).where(col(Job.id).in_(job_ids))))


def unsent_created_before(
    engine: Engine, created_before: datetime, limit: int, except_class: str | None = None
) -> list[Job]:
    """QUEUED jobs recorded before ``created_before`` whose message was never sent
    (``enqueued_at`` unset: the producer died in between, or the broker refused it), but
    for jobs of ``except_class`` (bulk, which fair share releases)."""
    query = select(Job).where(
        Job.status == JobStatus.QUEUED,
        col(Job.enqueued_at).is_(None),
        Job.created_at < created_before,
    )
    if except_class is not None:
        query = query.where(col(Job.priority_class) != except_class)
    with Session(engine) as session:
        return list(session.exec(query.limit(limit)))


def any_idempotency_key_starting(engine: Engine, prefix: str) -> bool:
    """Whether some job's idempotency key starts with ``prefix`` (a LIKE pattern: ``%``
    and ``_`` in it match as wildcards)."""
    query = select(Job.id).where(col(Job.idempotency_key).like(f"{prefix}%")).limit(1)
    with engine.connect() as connection:
        return connection.execute(query).first() is not None


# claim_job's default cutoff: every RUNNING job counts as stale
NO_CUTOFF = datetime(9999, 1, 1, tzinfo=UTC)
# A job claimed ahead (tasks/claim_ahead.py) carries the time it entered its pool process's
# pipe as ``started_at`` until it is confirmed: at most this much before its real start.
# Rules that presume a worker lost from ``started_at`` allow for it.
STARTED_EARLY_SLACK = timedelta(seconds=1)


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
    queued_only: bool = False,
    **worker: Any,
) -> Claimed | None:
    """Claim a job for a worker: -> RUNNING and count the attempt, in one statement; None
    when it has finished, does not exist, or another worker holds it.

    A QUEUED job is claimable. A RUNNING one is claimable when nobody holds it (re-sent by
    :mod:`tasks.recovery`), when this worker (``worker_host``) holds it (redelivered after
    its pool process died), or when it started before ``stale_before`` (its worker is
    presumed lost; default: any RUNNING job). A RUNNING job another worker claimed recently
    is not: that worker renders it (e.g. as a micro-batch mate) and recovery re-sends it if
    that worker dies. ``queued_only`` (tasks/claim_ahead.py): a QUEUED job only; a RUNNING
    one, even one this worker holds, is left to the render task, which knows what its
    process holds.
    """
    params = {f"claim_{name}": value for name, value in worker.items()}
    params.update(
        claim_id=job_id,
        claim_started_at=started_at,
        claim_owner=worker.get("worker_host"),
        claim_stale_before=stale_before or NO_CUTOFF,
    )
    with engine.begin() as connection:
        statement = _claim_statement(tuple(sorted(worker)), queued_only)
        row = connection.execute(statement, params).first()
    return None if row is None else Claimed(*row)


def confirm_claim(
    engine: Engine, job_id: str, attempt: int, worker_host: str, started_at: datetime
) -> bool:
    """Still held by ``worker_host`` in ``attempt``? Then its ``started_at`` becomes the
    render's real start (True); False if anything took it since."""
    statement = (
        update(Job)
        .where(
            col(Job.id) == job_id,
            col(Job.status) == JobStatus.RUNNING,
            col(Job.worker_host) == worker_host,
            col(Job.attempts) == attempt,
        )
        .values(started_at=started_at)
    )
    with engine.begin() as connection:
        return connection.execute(statement).rowcount == 1


@lru_cache(maxsize=16)
def _claim_statement(fields: tuple[str, ...], queued_only: bool = False) -> Any:
    """Built once per set of worker fields: a worker claims on its critical path, and
    building the statement costs twice what executing it on SQLite does."""
    running_unheld = and_(
        col(Job.status) == JobStatus.RUNNING,
        or_(
            col(Job.worker_host).is_(None),
            col(Job.worker_host) == bindparam("claim_owner"),
            col(Job.started_at) < bindparam("claim_stale_before"),
        ),
    )
    claimable = (
        col(Job.status) == JobStatus.QUEUED
        if queued_only
        else or_(col(Job.status) == JobStatus.QUEUED, running_unheld)
    )
    return (
        update(Job)
        .where(col(Job.id) == bindparam("claim_id"), claimable)
        .values(
            status=JobStatus.RUNNING,
            attempts=Job.attempts + 1,
            started_at=bindparam("claim_started_at"),
            **{name: bindparam(f"claim_{name}") for name in fields},
        )
        .returning(col(Job.id), col(Job.attempts), col(Job.created_at), col(Job.enqueued_at))
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
            # never tried: a job re-sent after losing its worker renders alone, through its
            # own message (its attempts checked, no mates taken down with a poison job)
            Job.attempts == 0,
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
        .where(col(Job.id).in_(candidates), col(Job.status) == JobStatus.QUEUED)
        .values(
            status=JobStatus.RUNNING, attempts=Job.attempts + 1, started_at=started_at, **worker
        )
        .returning(*_JOBS.columns)
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
            .where(col(Job.id).in_(ids), col(Job.status) == JobStatus.RUNNING)
            .values(
                status=JobStatus.QUEUED, attempts=Job.attempts - 1, started_at=None,
                worker_host=None,
            )
            .returning(*_JOBS.columns)
        )  # fmt: skip
        return [Job.model_validate(dict(row._mapping)) for row in result]


def take_stranded(
    engine: Engine,
    *,
    model_version: str,
    worker_host: str | None = None,
    started_before: datetime | None = None,
    cause: str | None = None,
    detected_by: str = "recovery",
) -> list[Job]:
    """RUNNING jobs of the version claimed by ``worker_host`` or started before
    ``started_before``, taken to be sent again: in the same statement they go back to
    QUEUED (so two concurrent callers never both take one job, and every surface shows them
    waiting), their holder and start cleared, ``enqueued_at`` set to now (the new message
    waits at the back of the queue: the queue wait recorded is that of the last attempt)
    and ``attempts`` kept (so ``CANARY_MAX_ATTEMPTS`` still ends a job that kills every
    worker); whichever worker receives the new message claims them as usual. Given a
    ``cause``, each taken attempt is recorded as lost with it (unless the worker's main
    process recorded how its pool process died, see :func:`record_process_loss`)."""
    assert (worker_host is None) != (started_before is None)
    where = [col(Job.model_version) == model_version, col(Job.status) == JobStatus.RUNNING]
    if worker_host is not None:
        where.append(col(Job.worker_host) == worker_host)
    else:
        where.append(col(Job.started_at) < started_before)
    statement = (
        update(Job)
        .where(*where)
        .values(status=JobStatus.QUEUED, started_at=None, worker_host=None, enqueued_at=utcnow())
        .returning(*_JOBS.columns)
    )
    with engine.begin() as connection:
        holders: dict[str, str | None] = dict(
            connection.execute(select(Job.id, Job.worker_host).where(*where)).all()
        )
        taken = [Job.model_validate(dict(row._mapping)) for row in connection.execute(statement)]
        if cause is not None:
            # each attempt's loss, unless the worker's main process recorded how it died
            per_holder = Counter(holders.get(job.id) for job in taken)
            _record_attempts(
                connection,
                [
                    {"job_id": job.id, "attempt": job.attempts, "node": holders.get(job.id),
                     "lost_at": utcnow(), "cause": cause, "detected_by": detected_by,
                     "other_jobs": per_holder[holders.get(job.id)] - 1}
                    for job in taken
                    if job.attempts > 0
                ],
                overwrite=False,
            )  # fmt: skip
        return taken


def _record_attempts(connection: Any, records: list[dict[str, Any]], *, overwrite: bool) -> None:
    if not records:
        return
    insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
    statement = insert(JobAttempt)
    keys = ["job_id", "attempt"]
    if overwrite:
        changed = ("node", "lost_at", "cause", "detected_by", "other_jobs")
        statement = statement.on_conflict_do_update(
            index_elements=keys, set_={name: statement.excluded[name] for name in changed}
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=keys)
    connection.execute(statement, records)


def record_process_loss(
    engine: Engine, node: str, job_id: str, cause: str, *, job_itself: bool = True
) -> list[str]:
    """A worker's pool process died running ``job_id``: record the attempt of every job it
    held (that one, and any in its recorder or micro-batch: the RUNNING jobs of ``node``,
    whose concurrency is 1) as lost with ``cause`` and how many other jobs it held, over
    what recovery may have recorded. ``job_itself=False``: ``job_id`` ended otherwise (its
    hard time limit killed the process), only the others were lost. Returns their ids."""
    with engine.begin() as connection:
        rows = connection.execute(
            select(Job.id, Job.attempts, Job.status, Job.worker_host).where(
                or_(
                    col(Job.id) == job_id,
                    and_(col(Job.worker_host) == node, col(Job.status) == JobStatus.RUNNING),
                )
            )
        ).all()
        held = {
            r.id: r.attempts
            for r in rows
            if r.status == JobStatus.RUNNING and r.worker_host == node
        }
        own = next((r for r in rows if r.id == job_id), None)
        if own is not None and own.status == JobStatus.QUEUED and own.attempts > 0:
            held.setdefault(job_id, own.attempts)  # recovery re-queued it first
        in_process = len(held | {job_id: 0})
        now = utcnow()
        records = [
            {"job_id": held_id, "attempt": attempt, "node": node, "lost_at": now, "cause": cause,
             "detected_by": "pool", "other_jobs": in_process - 1}
            for held_id, attempt in held.items()
            if attempt > 0 and (job_itself or held_id != job_id)
        ]  # fmt: skip
        _record_attempts(connection, records, overwrite=True)
    return [record["job_id"] for record in records]


def lost_attempts(engine: Engine, job_id: str) -> list[JobAttempt]:
    """The job's attempts whose worker was lost, in order."""
    with Session(engine) as session:
        statement = select(JobAttempt).where(JobAttempt.job_id == job_id)
        return list(session.exec(statement.order_by(col(JobAttempt.attempt))))


def describe_lost_attempts(attempts: Sequence[JobAttempt], count: int | None = None) -> str:
    """One line for an operator: "attempt 1: SIGKILL on node@host at ...Z (with 1 other job,
    seen by pool); ...", for attempts 1..``count`` (those without a record say so) or just
    the recorded ones."""

    def one(a: JobAttempt) -> str:
        lost_at = a.lost_at if a.lost_at.tzinfo else a.lost_at.replace(tzinfo=UTC)
        others = {0: "alone", 1: "with 1 other job"}.get(
            a.other_jobs, f"with {a.other_jobs} other jobs"
        )
        return (
            f"attempt {a.attempt}: {a.cause} on {a.node or 'an unknown worker'} at "
            f"{lost_at.strftime('%Y-%m-%dT%H:%M:%SZ')} ({others}, seen by {a.detected_by})"
        )

    recorded = {a.attempt: one(a) for a in attempts}
    numbers = range(1, count + 1) if count is not None else sorted(recorded)
    return "; ".join(recorded.get(n, f"attempt {n}: no cause recorded") for n in numbers)


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
                    col(Job.enqueued_at) < sent_before,
                )
                .order_by(col(Job.enqueued_at))
                .limit(limit)
            )
        )


def take_lost(engine: Engine, job_ids: Iterable[str], sent_before: datetime) -> list[Job]:
    """QUEUED jobs whose message the broker lost, taken to be sent again: in the same
    statement ``enqueued_at`` is set to now (the new message's queue wait), so two
    concurrent reconcilers never both take one job, and a job claimed meanwhile is left."""
    ids = list(job_ids)
    if not ids:
        return []
    statement = (
        update(Job)
        .where(
            col(Job.id).in_(ids),
            col(Job.status) == JobStatus.QUEUED,
            col(Job.enqueued_at) < sent_before,
        )
        .values(enqueued_at=utcnow())
        .returning(*_JOBS.columns)
    )
    with engine.begin() as connection:
        return [Job.model_validate(dict(row._mapping)) for row in connection.execute(statement)]


def running_holders(engine: Engine, model_version: str) -> set[str]:
    """Node names holding RUNNING jobs of the version."""
    with Session(engine) as session:
        statement = select(Job.worker_host).where(
            Job.model_version == model_version,
            Job.status == JobStatus.RUNNING,
            col(Job.worker_host).is_not(None),
        )
        return {host for host in session.exec(statement.distinct()) if host}


def count_misroute(engine: Engine, job_id: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            update(Job).where(col(Job.id) == job_id).values(misroutes=Job.misroutes + 1)
        )


def reroute_queued(engine: Engine, job_id: str, to_version: str) -> None:
    """Route a job still QUEUED to ``to_version`` (`canary retire --reroute-to`); a job
    that has started or finished keeps the version it was routed to."""
    with engine.begin() as connection:
        connection.execute(
            update(Job)
            .where(col(Job.id) == job_id, col(Job.status) == JobStatus.QUEUED)
            .values(model_version=to_version)
        )


def finish(engine: Engine, job_id: str, status: JobStatus, **fields: Any) -> bool:
    """RUNNING -> SUCCEEDED/FAILED exactly once; returns False if another delivery won."""
    assert status in TERMINAL_STATUSES
    statement = (
        update(Job)
        .where(col(Job.id) == job_id, col(Job.status) == JobStatus.RUNNING)
        .values(status=status, finished_at=fields.pop("finished_at", None) or utcnow(), **fields)
    )
    with engine.begin() as connection:
        return connection.execute(statement).rowcount == 1


# what :func:`claim_and_finish_many` sets from each outcome; bound as ``b_<column>``: an
# UPDATE reserves bind names equal to its table's columns
_OUTCOME_COLUMNS = (
    "status", "started_at", "finished_at", "worker_host", "worker_version", "image_key",
    "failure_kind", "failure_message", "queue_wait_ms", "inference_ms", "upload_ms",
    "end_to_end_ms", "peak_vram_bytes",
)  # fmt: skip
_CLAIM_AND_FINISH = (
    update(Job)
    .where(
        col(Job.id) == bindparam("b_id"),
        # claim (QUEUED/RUNNING) then finish; no IN list: executemany cannot expand one
        or_(col(Job.status) == JobStatus.QUEUED, col(Job.status) == JobStatus.RUNNING),
    )
    .values(
        attempts=Job.attempts + 1,
        device="cuda:0",
        **{column: bindparam(f"b_{column}") for column in _OUTCOME_COLUMNS},
    )
)


def claim_and_finish_many(engine: Engine, outcomes: Sequence[Mapping[str, Any]]) -> None:
    """What a worker records over a job's life (claim, then finish on ``cuda:0``), for many
    unfinished jobs in one executemany: each outcome maps ``id`` and every column of
    ``_OUTCOME_COLUMNS`` to its value. Finished jobs are left alone. (The simulator records
    a simulated day's outcomes this way instead of two guarded UPDATEs per job.)"""
    if not outcomes:
        return
    parameters = [{f"b_{key}": value for key, value in outcome.items()} for outcome in outcomes]
    with engine.begin() as connection:
        connection.execute(_CLAIM_AND_FINISH, parameters)


def fail_unstarted(engine: Engine, job_ids: Iterable[str], kind: str, message: str) -> None:
    """Mark QUEUED jobs FAILED without a worker (e.g. the broker refused the message)."""
    ids = list(job_ids)
    if not ids:
        return
    with engine.begin() as connection:
        connection.execute(
            update(Job)
            .where(col(Job.id).in_(ids), col(Job.status) == JobStatus.QUEUED)
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


def hold_running(
    engine: Engine,
    job_ids: Iterable[str],
    worker_host: str,
    *,
    take_from: Iterable[str | None] = (),
    started_at: datetime | None = None,
) -> set[str]:
    """Spooled jobs (tasks/spool.py): RUNNING jobs among ``job_ids`` held by ``worker_host``
    (or by one of ``take_from``, ``None`` for nobody: taken over) get ``worker_host`` and a
    fresh ``started_at``, so neither the recovery sweep nor a claim guard takes them for
    lost; returns the ids now held."""
    ids = list(job_ids)
    if not ids:
        return set()
    take = list(take_from)
    owners = [worker_host, *(h for h in take if h is not None)]
    holder: ColumnElement[bool] = col(Job.worker_host).in_(owners)
    if None in take:
        holder = or_(holder, col(Job.worker_host).is_(None))
    statement = (
        update(Job)
        .where(col(Job.id).in_(ids), col(Job.status) == JobStatus.RUNNING, holder)
        .values(worker_host=worker_host, started_at=started_at or utcnow())
        .returning(col(Job.id))
    )
    with engine.begin() as connection:
        return {row[0] for row in connection.execute(statement)}
