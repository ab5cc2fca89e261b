"""Sticky assignments: a user's first assignment per experiment, its exposure record
(``last_seen``) and the one change it allows, baseline -> candidate (SQL only; the
decisions are gateway.assignment's)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.engine import Engine
from sqlmodel import col

from storage.db import dialect_insert
from storage.models import Arm, Assignment
from storage.users import chunks


def stored(engine: Engine, experiment: str, user_id: str) -> Row[str, str, datetime] | None:
    """The user's stored ``(arm, segment, last_seen)`` in the experiment, or None."""
    with engine.connect() as connection:
        return connection.execute(
            select(col(Assignment.arm), col(Assignment.segment), col(Assignment.last_seen)).where(
                col(Assignment.experiment) == experiment, col(Assignment.user_id) == user_id
            )
        ).first()


def stored_many(
    engine: Engine, experiment: str, user_ids: Sequence[str]
) -> list[Row[str, str, str, datetime]]:
    """``(user_id, arm, segment, last_seen)`` of those users stored in the experiment, in a
    query per chunk of users."""
    found: list[Row[str, str, str, datetime]] = []
    with engine.connect() as connection:
        for chunk in chunks(user_ids):
            found += connection.execute(
                select(
                    col(Assignment.user_id),
                    col(Assignment.arm),
                    col(Assignment.segment),
                    col(Assignment.last_seen),
                ).where(
                    col(Assignment.experiment) == experiment,
                    col(Assignment.user_id).in_(chunk),
                )
            ).all()
    return found


def record_first(
    engine: Engine,
    *,
    experiment: str,
    user_id: str,
    arm: str,
    variant: str,
    segment: str,
    stage: str,
    now: datetime,
) -> bool:
    """Store a first assignment unless the user has one already (a concurrent one wins);
    returns whether this one was stored."""
    statement = dialect_insert(engine)(Assignment).values(
        experiment=experiment,
        user_id=user_id,
        arm=arm,
        variant=variant,
        segment=segment,
        stage=stage,
        first_seen=now,
        last_seen=now,
    )
    # RETURNING, not rowcount: on PostgreSQL (psycopg) rowcount was not 1 for a stored row
    statement = statement.on_conflict_do_nothing().returning(col(Assignment.user_id))
    with engine.begin() as connection:
        return connection.execute(statement).first() is not None


def record_first_many(engine: Engine, rows: Sequence[Mapping[str, Any]]) -> None:
    """:func:`record_first` for many users in one statement; ``rows`` hold the columns
    (experiment, user_id, arm, variant, segment, stage, first_seen, last_seen)."""
    if not rows:
        return
    statement = dialect_insert(engine)(Assignment).on_conflict_do_nothing()
    with engine.begin() as connection:
        connection.execute(statement, rows)


def touch(engine: Engine, experiment: str, user_id: str, now: datetime) -> None:
    """Record an exposure: ``last_seen`` = now."""
    with engine.begin() as connection:
        connection.execute(
            update(Assignment)
            .where(col(Assignment.experiment) == experiment, col(Assignment.user_id) == user_id)
            .values(last_seen=now)
        )


def promote(
    engine: Engine, experiment: str, user_id: str, *, variant: str, stage: str, now: datetime
) -> None:
    """Move a user stored in the baseline arm to the candidate (no-op otherwise)."""
    with engine.begin() as connection:
        connection.execute(
            update(Assignment)
            .where(
                col(Assignment.experiment) == experiment,
                col(Assignment.user_id) == user_id,
                col(Assignment.arm) == Arm.BASELINE,
            )
            .values(
                arm=Arm.CANDIDATE,
                variant=variant,
                stage=stage,
                promoted_at=now,
                last_seen=now,
            )
        )
