"""Retired versions: recorded once, read by every gateway (cached for a few seconds)."""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from storage.models import VersionState, utcnow


def retire(
    engine: Engine, version: str, *, rerouted_to: str | None, retention_days: float
) -> VersionState:
    with Session(engine, expire_on_commit=False) as session:
        state = session.get(VersionState, version) or VersionState(version=version)
        if state.retired_at is None:
            state.retired_at = utcnow()
        state.rerouted_to = rerouted_to
        state.retention_days = retention_days
        session.add(state)
        session.commit()
        return state


def retired_states(engine: Engine) -> list[VersionState]:
    with Session(engine) as session:
        return list(
            session.scalars(
                select(VersionState).where(VersionState.retired_at.is_not(None))  # type: ignore[union-attr]
            )
        )


def mark_purged(engine: Engine, version: str) -> None:
    with Session(engine) as session:
        state = session.get(VersionState, version)
        if state is not None:
            state.purged_at = utcnow()
            session.add(state)
            session.commit()


class RetiredVersions:
    """The set of retired versions, re-read at most every ``ttl_s`` seconds."""

    def __init__(self, engine: Engine, ttl_s: float = 2.0) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self._read_at = -float("inf")
        self._retired: frozenset[str] = frozenset()

    def get(self) -> frozenset[str]:
        if time.monotonic() - self._read_at >= self.ttl_s:
            self._retired = frozenset(s.version for s in retired_states(self.engine))
            self._read_at = time.monotonic()
        return self._retired
