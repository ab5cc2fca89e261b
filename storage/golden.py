"""Golden runs, their per-image results and human grades: the state changes as guarded SQL.

A run is created once (its id is the primary key), submitted only by the holder of its
lease, and completed when every result has been checked, so two schedulers, a retry or a
resumed run can never enqueue a case twice for a version.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import func, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from storage.db import dialect_insert
from storage.models import (
    TERMINAL_STATUSES,
    GoldenGrade,
    GoldenResult,
    GoldenRun,
    GoldenRunStatus,
    Job,
    JobStatus,
    utcnow,
)


def create_run(engine: Engine, run: GoldenRun) -> bool:
    """Insert the run unless its id exists; True when this call created it."""
    statement = (
        dialect_insert(engine)(GoldenRun)
        .values(**run.model_dump())
        .on_conflict_do_nothing()
        .returning(GoldenRun.id)
    )
    with engine.begin() as connection:
        return connection.execute(statement).first() is not None


def get_run(engine: Engine, run_id: str) -> GoldenRun | None:
    with Session(engine) as session:
        return session.get(GoldenRun, run_id)


def list_runs(engine: Engine, limit: int = 20) -> list[GoldenRun]:
    with Session(engine) as session:
        query = select(GoldenRun).order_by(col(GoldenRun.created_at).desc()).limit(limit)
        return list(session.exec(query))


def runs_with_status(engine: Engine, status: GoldenRunStatus) -> list[GoldenRun]:
    with Session(engine) as session:
        return list(session.exec(select(GoldenRun).where(GoldenRun.status == status)))


def acquire_lease(engine: Engine, run_id: str, owner: str, lease_s: float) -> bool:
    """Take (or extend) the right to submit a run's cases; False if someone else holds it."""
    now = utcnow()
    statement = (
        update(GoldenRun)
        .where(
            col(GoldenRun.id) == run_id,
            col(GoldenRun.status) == GoldenRunStatus.SUBMITTING,
            or_(
                col(GoldenRun.lease_until).is_(None),
                col(GoldenRun.lease_until) < now,
                col(GoldenRun.lease_owner) == owner,
            ),
        )
        .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_s))
    )
    with engine.begin() as connection:
        return connection.execute(statement).rowcount == 1


def finish_submission(engine: Engine, run_id: str, owner: str) -> bool:
    statement = (
        update(GoldenRun)
        .where(
            col(GoldenRun.id) == run_id,
            col(GoldenRun.status) == GoldenRunStatus.SUBMITTING,
            col(GoldenRun.lease_owner) == owner,
        )
        .values(
            status=GoldenRunStatus.RUNNING,
            submitted_at=utcnow(),
            lease_owner=None,
            lease_until=None,
        )
    )
    with engine.begin() as connection:
        return connection.execute(statement).rowcount == 1


def add_results(engine: Engine, rows: Sequence[GoldenResult]) -> None:
    """Record the (case, version) -> job manifest; rows that exist are left alone."""
    if not rows:
        return
    statement = (
        dialect_insert(engine)(GoldenResult)
        .values([row.model_dump() for row in rows])
        .on_conflict_do_nothing()
    )
    with engine.begin() as connection:
        connection.execute(statement)


def results(engine: Engine, run_id: str) -> list[GoldenResult]:
    with Session(engine) as session:
        query = select(GoldenResult).where(GoldenResult.run_id == run_id)
        return list(session.exec(query.order_by(GoldenResult.case_id, GoldenResult.version)))


def results_with_jobs(engine: Engine, run_id: str) -> list[tuple[GoldenResult, Job]]:
    with Session(engine) as session:
        query = (
            select(GoldenResult, Job)
            .join(Job, col(Job.id) == GoldenResult.job_id)
            .where(GoldenResult.run_id == run_id)
            .order_by(GoldenResult.case_id, GoldenResult.version)
        )
        return [(result, job) for result, job in session.exec(query)]


def unchecked_finished(engine: Engine, run_id: str) -> list[tuple[GoldenResult, Job]]:
    """Results whose job has finished but whose image has not been checked yet."""
    with Session(engine) as session:
        query = (
            select(GoldenResult, Job)
            .join(Job, col(Job.id) == GoldenResult.job_id)
            .where(
                GoldenResult.run_id == run_id,
                col(GoldenResult.checked_at).is_(None),
                col(Job.status).in_(TERMINAL_STATUSES),
            )
            .order_by(GoldenResult.case_id, GoldenResult.version)
        )
        return [(result, job) for result, job in session.exec(query)]


def save_check(engine: Engine, result: GoldenResult, **fields: Any) -> None:
    statement = (
        update(GoldenResult)
        .where(
            col(GoldenResult.run_id) == result.run_id,
            col(GoldenResult.case_id) == result.case_id,
            col(GoldenResult.version) == result.version,
        )
        .values(checked_at=utcnow(), **fields)
    )
    with engine.begin() as connection:
        connection.execute(statement)


def complete_if_checked(engine: Engine, run_id: str) -> bool:
    """RUNNING -> COMPLETE once no result is left unchecked; True when it completed now."""
    unchecked = (
        select(func.count())
        .select_from(GoldenResult)
        .where(GoldenResult.run_id == run_id, col(GoldenResult.checked_at).is_(None))
        .scalar_subquery()
    )
    statement = (
        update(GoldenRun)
        .where(
            col(GoldenRun.id) == run_id,
            col(GoldenRun.status) == GoldenRunStatus.RUNNING,
            unchecked == 0,
        )
        .values(status=GoldenRunStatus.COMPLETE, completed_at=utcnow())
    )
    with engine.begin() as connection:
        return connection.execute(statement).rowcount == 1


def previous_images(
    engine: Engine, run: GoldenRun, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str, str]]:
    """For each (case, version): (run id, image key) of the latest earlier successful render."""
    wanted = set(keys)
    if not wanted:
        return {}
    case_ids = sorted({case for case, _ in wanted})
    versions = sorted({version for _, version in wanted})
    with Session(engine) as session:
        query = (
            # image_key typed non-null: is_not(None) below
            select(
                GoldenResult.case_id, GoldenResult.version, GoldenRun.id, cast(str, Job.image_key)
            )
            .join(GoldenRun, col(GoldenRun.id) == GoldenResult.run_id)
            .join(Job, col(Job.id) == GoldenResult.job_id)
            .where(
                col(GoldenRun.created_at) < run.created_at,
                col(GoldenResult.case_id).in_(case_ids),
                col(GoldenResult.version).in_(versions),
                Job.status == JobStatus.SUCCEEDED,
                col(Job.image_key).is_not(None),
            )
            .order_by(col(GoldenRun.created_at))  # latest last, so it wins below
        )
        found: dict[tuple[str, str], tuple[str, str]] = {}
        for case_id, version, run_id, image_key in session.exec(query):
            if (case_id, version) in wanted:
                found[(case_id, version)] = (run_id, image_key)
        return found


def save_grade(
    engine: Engine, run_id: str, case_id: str, version: str, grader: str, level: str
) -> None:
    """Insert or replace one grader's grade of one image."""
    insert = dialect_insert(engine)(GoldenGrade).values(
        run_id=run_id,
        case_id=case_id,
        version=version,
        grader=grader,
        level=level,
        graded_at=utcnow(),
    )
    statement = insert.on_conflict_do_update(
        index_elements=["run_id", "case_id", "version", "grader"],
        set_={"level": insert.excluded.level, "graded_at": insert.excluded.graded_at},
    )
    with engine.begin() as connection:
        connection.execute(statement)


def grades(engine: Engine, run_id: str, grader: str | None = None) -> list[GoldenGrade]:
    with Session(engine) as session:
        query = select(GoldenGrade).where(GoldenGrade.run_id == run_id)
        if grader is not None:
            query = query.where(GoldenGrade.grader == grader)
        return list(session.exec(query))


def latest_run(engine: Engine, status: GoldenRunStatus | None = None) -> GoldenRun | None:
    with Session(engine) as session:
        query = select(GoldenRun)
        if status is not None:
            query = query.where(GoldenRun.status == status)
        query = query.order_by(col(GoldenRun.created_at).desc()).limit(1)
        return session.exec(query).first()


def run_progress(engine: Engine, run_id: str) -> dict[str, int]:
    """Jobs of a run by status, plus how many results have been checked."""
    with Session(engine) as session:
        by_status = session.exec(
            select(Job.status, func.count())
            .join(GoldenResult, col(GoldenResult.job_id) == Job.id)
            .where(GoldenResult.run_id == run_id)
            .group_by(Job.status)
        )
        counts = {str(status): int(n) for status, n in by_status}
        checked = session.exec(
            select(func.count())
            .select_from(GoldenResult)
            .where(GoldenResult.run_id == run_id, col(GoldenResult.checked_at).is_not(None))
        ).one()
    counts["checked"] = int(checked)
    return counts
