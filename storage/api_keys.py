"""API keys: their stored digests, roles, revocation, limits and fair-share weights, and
the count of their unfinished jobs (SQL only; tokens and hashing are gateway.auth's, what
the limits mean is gateway.key_limits')."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, Select, bindparam, func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from storage.models import ApiKey, Job, JobStatus, utcnow

UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)
# "keep the key's value as it is" for set_limits (None means: back to the default)
UNCHANGED: Any = object()


def add_key(engine: Engine, key: ApiKey) -> None:
    """Store a new key; ``key`` stays usable (not expired) afterwards."""
    with Session(engine, expire_on_commit=False) as session:
        session.add(key)
        session.commit()


def list_keys(engine: Engine) -> list[ApiKey]:
    """Every key, revoked ones too, oldest first."""
    with Session(engine) as session:
        return list(session.scalars(select(ApiKey).order_by(col(ApiKey.created_at))))


def revoke_key(engine: Engine, key_id: str) -> bool:
    """Revoke a key now; False if there is no such key or it was revoked already."""
    with engine.begin() as connection:
        result = connection.execute(
            update(ApiKey)
            .where(col(ApiKey.id) == key_id, col(ApiKey.revoked_at).is_(None))
            .values(revoked_at=utcnow())
        )
        return result.rowcount == 1


def active_key(
    engine: Engine, key_hash: str
) -> Row[str, str, str, float | None, int | None] | None:
    """``(id, name, role, rate_per_s, max_queued)`` of the unrevoked key with this digest
    (an indexed lookup)."""
    with engine.connect() as connection:
        return connection.execute(
            select(
                col(ApiKey.id),
                col(ApiKey.name),
                col(ApiKey.role),
                col(ApiKey.rate_per_s),
                col(ApiKey.max_queued),
            ).where(
                col(ApiKey.key_hash) == key_hash,
                col(ApiKey.revoked_at).is_(None),
            )
        ).first()


def get_key(engine: Engine, key_id: str) -> ApiKey | None:
    with Session(engine, expire_on_commit=False) as session:
        return session.get(ApiKey, key_id)


def set_limits(
    engine: Engine,
    key_id: str,
    *,
    rate_per_s: float | None = UNCHANGED,
    max_queued: int | None = UNCHANGED,
    share_weight: float | None = UNCHANGED,
) -> bool:
    """Set a key's limits and fair-share weight (None: back to the default; a value left
    out stays); False if there is no such key."""
    values = {
        name: value
        for name, value in (
            ("rate_per_s", rate_per_s),
            ("max_queued", max_queued),
            ("share_weight", share_weight),
        )
        if value is not UNCHANGED
    }
    with engine.begin() as connection:
        if not values:
            found = connection.execute(select(col(ApiKey.id)).where(col(ApiKey.id) == key_id))
            return found.first() is not None
        result = connection.execute(update(ApiKey).where(col(ApiKey.id) == key_id).values(**values))
        return result.rowcount == 1


def count_unfinished_of_key(engine: Engine, key_id: str, at_most: int | None = None) -> int:
    """The key's QUEUED and RUNNING jobs, from the ``(api_key_id, status)`` index; with
    ``at_most``, counting stops there (reading at most that many index entries). On the
    submission path: one statement, built once."""
    if at_most is not None and at_most <= 0:
        return 0
    statement = _COUNT_UNFINISHED if at_most is None else _COUNT_UNFINISHED_UP_TO
    with engine.connect() as connection:
        return int(
            connection.execute(statement, {"key_id": key_id, "at_most": at_most}).scalar_one()
        )


def _unfinished_of_key() -> Select[Any]:
    # only indexed columns: read from the index alone (no table row per job)
    return select(col(Job.status)).where(
        col(Job.api_key_id) == bindparam("key_id"), col(Job.status).in_(UNFINISHED)
    )


_COUNT_UNFINISHED = select(func.count()).select_from(_unfinished_of_key().subquery())
_COUNT_UNFINISHED_UP_TO = select(func.count()).select_from(
    _unfinished_of_key().limit(bindparam("at_most")).subquery()
)


def unfinished_by_key(engine: Engine) -> dict[str, int]:
    """Each key's QUEUED and RUNNING jobs (keys without any are left out)."""
    query = (
        select(col(Job.api_key_id), func.count())
        .where(col(Job.api_key_id).is_not(None), col(Job.status).in_(UNFINISHED))
        .group_by(col(Job.api_key_id))
    )
    with engine.connect() as connection:
        return {str(key_id): int(n) for key_id, n in connection.execute(query)}


def existing_job_ids(engine: Engine, job_ids: Sequence[str]) -> set[str]:
    """Which of ``job_ids`` name a job (idempotent replays; primary-key lookups)."""
    if not job_ids:
        return set()
    with engine.connect() as connection:
        found = connection.execute(select(col(Job.id)).where(col(Job.id).in_(job_ids)))
        return {job_id for (job_id,) in found}
