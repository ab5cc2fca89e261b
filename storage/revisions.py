"""Weights revisions and worker records: the version's published revisions (`canary
hotfix`) and what each worker reports it serves (tasks/revisions.py fetches the files)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from storage.models import ModelRevision, WorkerRecord, utcnow


def add(engine: Engine, record: ModelRevision) -> ModelRevision:
    """Record a published revision; the newest one per version is the current one."""
    with Session(engine, expire_on_commit=False) as session:
        session.add(record)
        session.commit()
    return record


def current(engine: Engine, version: str) -> ModelRevision | None:
    with Session(engine) as session:
        return session.scalars(
            select(ModelRevision)
            .where(col(ModelRevision.version) == version)
            .order_by(col(ModelRevision.id).desc())
            .limit(1)
        ).first()


def report(
    engine: Engine,
    node: str,
    version: str,
    device: str,
    revision: str | None,
    error: str | None = None,
) -> None:
    """Record what a worker serves now (upsert by node name)."""
    with Session(engine) as session:
        record = session.get(WorkerRecord, node) or WorkerRecord(
            node=node, version=version, device=device
        )
        record.version, record.device, record.revision = version, device, revision
        record.error, record.updated_at = error, utcnow()
        session.add(record)
        session.commit()


def worker_records(engine: Engine, version: str) -> dict[str, WorkerRecord]:
    with Session(engine) as session:
        rows = session.scalars(select(WorkerRecord).where(col(WorkerRecord.version) == version))
        return {row.node: row for row in rows}
