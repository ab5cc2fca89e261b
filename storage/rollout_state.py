"""Live experiment stages and the rollout audit log; a change and its audit row commit together."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from storage.models import ExperimentState, RolloutEvent, utcnow


class ConcurrentChange(RuntimeError):
    """Someone changed the stage between reading it and writing it."""


def states(engine: Engine) -> dict[str, ExperimentState]:
    with Session(engine) as session:
        return {s.experiment: s for s in session.scalars(select(ExperimentState))}


def get_state(engine: Engine, experiment: str) -> ExperimentState | None:
    with Session(engine) as session:
        return session.get(ExperimentState, experiment)


def change_state(
    engine: Engine,
    experiment: str,
    *,
    expected: tuple[str, bool] | None,
    stage: str,
    rolled_back: bool,
    auto: bool | None,
    event: RolloutEvent,
    now: datetime | None = None,
) -> ExperimentState:
    """Write the new state if the current one is still ``expected``; audit it atomically.

    ``expected`` is (stage, rolled_back) as the caller saw it, or None when no row existed.
    """
    now = now or utcnow()
    with Session(engine, expire_on_commit=False) as session:
        current = session.get(ExperimentState, experiment, with_for_update=True)
        seen = (current.stage, current.rolled_back) if current else None
        if current is not None and seen != expected:
            raise ConcurrentChange(
                f"{experiment} changed meanwhile (now {current.stage}"
                f"{', rolled back' if current.rolled_back else ''}); look again and retry"
            )
        state = current or ExperimentState(experiment=experiment, stage=stage, stage_since=now)
        if state.stage != stage or state.rolled_back != rolled_back:
            state.stage_since = now
        state.stage, state.rolled_back = stage, rolled_back
        if auto is not None:
            state.auto = auto
        state.updated_at, state.updated_by = now, event.actor
        event.at = now
        session.add(state)
        session.add(event)
        session.commit()
        return state


def record(engine: Engine, event: RolloutEvent) -> None:
    with Session(engine) as session:
        session.add(event)
        session.commit()


def audit_log(engine: Engine, experiment: str, limit: int = 50) -> list[RolloutEvent]:
    with Session(engine) as session:
        query = (
            select(RolloutEvent)
            .where(col(RolloutEvent.experiment) == experiment)
            .order_by(col(RolloutEvent.at).desc(), col(RolloutEvent.id).desc())
            .limit(limit)
        )
        return list(session.scalars(query))


def evaluation_json(evaluation: dict[str, Any] | None) -> str | None:
    return json.dumps(evaluation, default=str) if evaluation is not None else None
