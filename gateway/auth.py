"""API keys: random 256-bit tokens, stored only as SHA-256 digests, each with one role."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from storage.models import ApiKey, ApiKeyRole, utcnow

TOKEN_PREFIX = "cr_"


@dataclass(frozen=True)
class Principal:
    key_id: str
    name: str
    role: ApiKeyRole

    @property
    def is_operator(self) -> bool:
        return self.role == ApiKeyRole.OPERATOR


def digest(token: str) -> str:
    # The tokens are uniformly random, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def create_key(engine: Engine, name: str, role: ApiKeyRole) -> tuple[ApiKey, str]:
    """Create a key; the token is returned once and never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=str(uuid.uuid4()), name=name, role=role, key_hash=digest(token), prefix=token[:10]
    )
    with Session(engine, expire_on_commit=False) as session:
        session.add(key)
        session.commit()
    return key, token


def list_keys(engine: Engine) -> list[ApiKey]:
    with Session(engine) as session:
        return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(engine: Engine, key_id: str) -> bool:
    with engine.begin() as connection:
        result = connection.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))  # type: ignore[union-attr]
            .values(revoked_at=utcnow())
        )
        return result.rowcount == 1


class KeyVerifier:
    """Looks keys up by digest, caching answers briefly so polling does not hit the DB."""

    def __init__(self, engine: Engine, ttl_s: float = 5.0, max_entries: int = 10_000) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    def verify(self, token: str) -> Principal | None:
        key_hash = digest(token)
        now = time.monotonic()
        cached = self._cache.get(key_hash)
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        with self.engine.connect() as connection:
            row = connection.execute(
                select(ApiKey.id, ApiKey.name, ApiKey.role).where(
                    ApiKey.key_hash == key_hash,
                    ApiKey.revoked_at.is_(None),  # type: ignore[union-attr]
                )
            ).first()
        principal = Principal(row.id, row.name, ApiKeyRole(row.role)) if row else None
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[key_hash] = (now, principal)
        return principal
