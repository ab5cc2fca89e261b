"""API keys: their stored digests, roles and revocation (SQL only; tokens and hashing are
gateway.auth's)."""

from __future__ import annotations

from sqlalchemy import Row, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from storage.models import ApiKey, utcnow


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


def active_key(engine: Engine, key_hash: str) -> Row[str, str, str] | None:
    """``(id, name, role)`` of the unrevoked key with this digest (an indexed lookup)."""
    with engine.connect() as connection:
        return connection.execute(
            select(col(ApiKey.id), col(ApiKey.name), col(ApiKey.role)).where(
                col(ApiKey.key_hash) == key_hash,
                col(ApiKey.revoked_at).is_(None),
            )
        ).first()
