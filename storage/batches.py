"""Batches: a bulk submission, its lines and the jobs that serve them (SQL only)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from storage.db import dialect_insert
from storage.models import Batch, BatchLine, Job, JobStatus


@dataclass(frozen=True)
class LineJob:
    """A line of a batch with the state of its job."""

    line: int
    job_id: str
    status: str
    model_version: str
    failure_kind: str | None
    failure_message: str | None
    image_key: str | None


def record_batch(batch: Batch, lines: Sequence[tuple[int, str]], engine: Engine) -> None:
    """Store a batch and its (line, job id) pairs; adding lines again is a no-op."""
    with Session(engine) as session:
        session.merge(batch)
        session.commit()
    add_lines(engine, batch.id, lines)


def add_lines(engine: Engine, batch_id: str, lines: Sequence[tuple[int, str]]) -> None:
    if not lines:
        return
    statement = dialect_insert(engine)(BatchLine).on_conflict_do_nothing()
    with engine.begin() as connection:
        connection.execute(
            statement, [{"batch_id": batch_id, "line": n, "job_id": j} for n, j in lines]
        )


def get_batch(engine: Engine, batch_id: str) -> Batch | None:
    if len(batch_id) > 64:
        return None
    with Session(engine) as session:
        return session.get(Batch, batch_id)


def rejected_lines(batch: Batch) -> list[dict[str, object]]:
    return list(json.loads(batch.rejected))


def count_by_status(engine: Engine, batch_id: str) -> dict[str, int]:
    """Jobs of the batch's lines by status (a resubmitted line counts its earlier job)."""
    statement = (
        select(col(Job.status), func.count())
        .select_from(BatchLine)
        .join(Job, col(Job.id) == BatchLine.job_id)
        .where(col(BatchLine.batch_id) == batch_id)
        .group_by(col(Job.status))
    )
    with engine.connect() as connection:
        return {status: count for status, count in connection.execute(statement)}


def line_jobs(
    engine: Engine, batch_id: str, *, status: JobStatus | None = None, limit: int | None = None
) -> list[LineJob]:
    """The batch's lines in order with their jobs, optionally only those in ``status``."""
    statement = (
        select(
            col(BatchLine.line),
            col(Job.id),
            col(Job.status),
            col(Job.model_version),
            col(Job.failure_kind),
            col(Job.failure_message),
            col(Job.image_key),
        )
        .join(Job, col(Job.id) == BatchLine.job_id)
        .where(col(BatchLine.batch_id) == batch_id)
        .order_by(col(BatchLine.line))
        .limit(limit)
    )
    if status is not None:
        statement = statement.where(col(Job.status) == status)
    with engine.connect() as connection:
        return [LineJob(*row) for row in connection.execute(statement)]
