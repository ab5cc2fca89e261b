"""What fair share reads: bulk jobs waiting per tenant, held in the database or queued in
the broker, and the tenants' share weights.

A bulk job is *held* while it is QUEUED and unsent (``enqueued_at`` unset: recorded, not
yet released to the broker, or refused by it) and *queued* once sent and not yet claimed by
a worker. A tenant is the API key that submitted the job, else the batch it came in (a file
submitted from the CLI without a key), else ``local``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, case, func, literal, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from canary.contracts import PriorityClass
from storage.models import ApiKey, Job, JobStatus

LOCAL_TENANT = "local"
KEY_PREFIX = "key:"
BATCH_PREFIX = "batch:"


def tenant_of(api_key_id: str | None, batch_id: str | None) -> str:
    """The tenant of a job submitted with this key and batch (:data:`job_tenant` in SQL)."""
    if api_key_id is not None:
        return KEY_PREFIX + api_key_id
    if batch_id is not None:
        return BATCH_PREFIX + batch_id
    return LOCAL_TENANT


# The same in SQL, so waiting jobs are counted and selected per tenant without a column.
job_tenant: ColumnElement[Any] = case(
    (col(Job.api_key_id).is_not(None), literal(KEY_PREFIX) + col(Job.api_key_id)),
    (col(Job.batch_id).is_not(None), literal(BATCH_PREFIX) + col(Job.batch_id)),
    else_=literal(LOCAL_TENANT),
)


@dataclass(frozen=True, order=True)
class TenantWaiting:
    """One tenant's bulk jobs of one version that no worker has taken yet."""

    version: str
    tenant: str
    held: int  # in the database, waiting for release
    queued: int  # in the broker


def _waiting_bulk() -> tuple[ColumnElement[bool], ...]:
    return (
        col(Job.status) == JobStatus.QUEUED,
        col(Job.priority_class) == PriorityClass.BULK.value,
    )


def waiting_by_tenant(engine: Engine, version: str | None = None) -> list[TenantWaiting]:
    """Held and queued bulk jobs per version and tenant (tenants with none are left out),
    by version then tenant."""
    held = func.sum(case((col(Job.enqueued_at).is_(None), 1), else_=0))
    query = (
        select(col(Job.model_version), job_tenant.label("tenant"), held, func.count())
        .where(*_waiting_bulk())
        .group_by(col(Job.model_version), job_tenant)
    )
    if version is not None:
        query = query.where(col(Job.model_version) == version)
    with Session(engine) as session:
        rows = session.exec(query).all()
    return sorted(
        TenantWaiting(v, tenant, int(n_held), int(total) - int(n_held))
        for v, tenant, n_held, total in rows
    )


def versions_with_held(engine: Engine) -> list[str]:
    """Versions that have bulk jobs held for release."""
    with Session(engine) as session:
        rows = session.exec(
            select(col(Job.model_version))
            .where(*_waiting_bulk(), col(Job.enqueued_at).is_(None))
            .distinct()
        ).all()
    return sorted(rows)


def held_jobs(engine: Engine, version: str, tenant: str, limit: int) -> list[Job]:
    """A tenant's oldest held bulk jobs of ``version``, in submission order."""
    if limit <= 0:
        return []
    with Session(engine) as session:
        return list(
            session.exec(
                select(Job)
                .where(
                    *_waiting_bulk(),
                    col(Job.enqueued_at).is_(None),
                    col(Job.model_version) == version,
                    job_tenant == tenant,
                )
                .order_by(col(Job.created_at), col(Job.id))
                .limit(limit)
            )
        )


def _key_columns(engine: Engine, tenants: Iterable[str], column: Any) -> dict[str, Any]:
    """``column`` of each API-key tenant's key, by tenant (keys where it is NULL left out)."""
    key_ids = [t.removeprefix(KEY_PREFIX) for t in tenants if t.startswith(KEY_PREFIX)]
    if not key_ids:
        return {}
    with Session(engine) as session:
        rows = session.exec(
            select(col(ApiKey.id), column).where(col(ApiKey.id).in_(key_ids), column.is_not(None))
        ).all()
    return {KEY_PREFIX + key_id: value for key_id, value in rows}


def share_weights(engine: Engine, tenants: Iterable[str]) -> dict[str, float]:
    """The share weight of each API-key tenant that has one set (others weigh 1)."""
    return _key_columns(engine, tenants, col(ApiKey.share_weight))


def key_names(engine: Engine, tenants: Sequence[str]) -> dict[str, str]:
    """Display names of API-key tenants: ``key:<name>``."""
    names = _key_columns(engine, tenants, col(ApiKey.name))
    return {tenant: f"{KEY_PREFIX}{name}" for tenant, name in names.items()}


def reroute_held(engine: Engine, version: str, to_version: str) -> int:
    """Hand ``version``'s held bulk jobs to ``to_version`` (a retired or rolled-back
    version's backlog); returns how many. A job being released meanwhile (its send claimed)
    is not held any more and is left to the broker's re-route."""
    with engine.begin() as connection:
        result = connection.execute(
            update(Job)
            .where(
                *_waiting_bulk(),
                col(Job.enqueued_at).is_(None),
                col(Job.model_version) == version,
            )
            .values(model_version=to_version)
        )
        return int(result.rowcount)


def held_in_batch(engine: Engine, batch_id: str) -> int:
    """The batch's bulk jobs held in the database (QUEUED, not sent to the broker yet)."""
    with Session(engine) as session:
        return int(
            session.exec(
                select(func.count()).where(
                    *_waiting_bulk(),
                    col(Job.enqueued_at).is_(None),
                    col(Job.batch_id) == batch_id,
                )
            ).one()
        )
