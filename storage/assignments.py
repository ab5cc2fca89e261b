"""Sticky assignments: a user's first assignment per experiment, its exposure record
(``last_seen``) and the one change it allows, baseline -> candidate (SQL only; the
decisions are gateway.assignment's)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Row, bindparam, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import col

from storage.db import dialect_insert
from storage.models import Arm, Assignment
from storage.users import CHUNK, chunks, store_signups, user_in


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
    query per chunk of users (on PostgreSQL ``= ANY(<one array>)``: the statement text is
    the same for every chunk, so it is parsed once and sends one parameter, not one per
    user)."""
    found: list[Row[str, str, str, datetime]] = []
    statement = _stored_many_statement(engine.dialect.name)
    with engine.connect() as connection:
        for chunk in chunks(user_ids):
            found += connection.execute(
                statement, {"experiment": experiment, "ids": list(chunk)}
            ).all()
    return found


@lru_cache(maxsize=4)
def _stored_many_statement(dialect: str) -> Any:
    return select(
        col(Assignment.user_id),
        col(Assignment.arm),
        col(Assignment.segment),
        col(Assignment.last_seen),
    ).where(
        col(Assignment.experiment) == bindparam("experiment"),
        user_in(col(Assignment.user_id), dialect),
    )


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


# PostgreSQL: a chunk of first assignments as one array per column, so the statement text
# is the same for every chunk (parsed once) and the server gets one short query; rows go in
# array order (ORDER BY the ordinality), which the caller makes the user order.
_UNNEST_FIRST = text(
    "INSERT INTO assignments"
    " (experiment, user_id, arm, variant, segment, stage, first_seen, last_seen)"
    " SELECT CAST(:experiment AS VARCHAR), a.user_id, a.arm, a.variant, a.segment,"
    " CAST(:stage AS VARCHAR), CAST(:now AS TIMESTAMPTZ), CAST(:now AS TIMESTAMPTZ)"
    " FROM unnest(CAST(:user_id AS VARCHAR[]), CAST(:arm AS VARCHAR[]),"
    " CAST(:variant AS VARCHAR[]), CAST(:segment AS VARCHAR[]))"
    " WITH ORDINALITY AS a(user_id, arm, variant, segment, n)"
    " ORDER BY a.n"
    " ON CONFLICT DO NOTHING RETURNING user_id"
)


@lru_cache(maxsize=4)
def _insert_first_statement(dialect: str) -> Any:
    if dialect == "postgresql":
        return _UNNEST_FIRST
    return sqlite_insert(Assignment).on_conflict_do_nothing().returning(col(Assignment.user_id))


def record_first_many(
    engine: Engine,
    *,
    experiment: str,
    stage: str,
    now: datetime,
    choices: Sequence[tuple[str, str, str, str]],
    signups: Mapping[str, datetime] | None = None,
) -> set[str]:
    """:func:`record_first` for many users in one statement per chunk; ``choices`` are
    ``(user_id, arm, variant, segment)``, one per user. Returns the users whose assignment
    was stored now; the others had one already (a concurrent one wins). Reported sign-up
    times (``signups``, see :func:`storage.users.remember_signups`) are stored in the same
    transaction, first: one commit for both.

    Rows go in user order (sign-ups first, then assignments), so concurrent batches sharing
    users take their row locks in the same order and cannot deadlock.
    """
    ordered = sorted(choices)
    statement = _insert_first_statement(engine.dialect.name)
    stored_now: set[str] = set()
    with engine.begin() as connection:
        store_signups(connection, signups or {})
        for start in range(0, len(ordered), CHUNK):
            part = ordered[start : start + CHUNK]
            parameters: Any
            if engine.dialect.name == "postgresql":
                parameters = {
                    "experiment": experiment,
                    "stage": stage,
                    "now": now,
                    "user_id": [c[0] for c in part],
                    "arm": [c[1] for c in part],
                    "variant": [c[2] for c in part],
                    "segment": [c[3] for c in part],
                }
            else:
                parameters = [
                    {"experiment": experiment, "user_id": user, "arm": arm, "variant": variant,
                     "segment": segment, "stage": stage, "first_seen": now, "last_seen": now}
                    for user, arm, variant, segment in part
                ]  # fmt: skip
            stored_now.update(row[0] for row in connection.execute(statement, parameters))
    return stored_now


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
