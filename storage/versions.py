"""Retired versions: recorded once, read by every gateway (cached for a few seconds)."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import or_, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from storage.models import Job, VersionState, utcnow


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
            session.scalars(select(VersionState).where(col(VersionState.retired_at).is_not(None)))
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


LifecycleState = Literal["active", "retiring", "retired", "purged"]


@dataclass(frozen=True)
class Lifecycle:
    """Where a version stands: active; retiring (routing stopped, but jobs still queued
    or workers still online); retired since ``retired_since``; purged (images and logs
    deleted) once ``purge_after`` has passed."""

    version: str
    state: LifecycleState
    retired_since: datetime | None = None
    purge_after: datetime | None = None
    purged_at: datetime | None = None
    rerouted_to: str | None = None


def lifecycles(
    engine: Engine, versions: Iterable[str], busy: Collection[str] = ()
) -> dict[str, Lifecycle]:
    """Each version's lifecycle; ``busy`` names the versions that still have queued jobs
    or online workers (the broker knows that, not the database)."""
    states = {s.version: s for s in retired_states(engine)}
    out = {}
    for version in versions:
        state = states.get(version)
        if state is None or state.retired_at is None:
            out[version] = Lifecycle(version, "active")
            continue
        since = _aware(state.retired_at)
        stage: LifecycleState = (
            "purged" if state.purged_at else "retiring" if version in busy else "retired"
        )
        out[version] = Lifecycle(
            version, stage, since, since + timedelta(days=state.retention_days),
            _aware(state.purged_at) if state.purged_at else None, state.rerouted_to,
        )  # fmt: skip
    return out


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def jobs_served_by(engine: Engine, version: str) -> list[Job]:
    """Every job routed to or rendered by ``version``, oldest first (for its log export)."""
    with Session(engine) as session:
        query = (
            select(Job)
            .where(or_(col(Job.model_version) == version, col(Job.worker_version) == version))
            .order_by(col(Job.created_at))
        )
        return list(session.scalars(query))
