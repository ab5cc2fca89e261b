"""What is known about users: reported sign-up times, and activity counted from their jobs
(SQL only; segmentation itself is gateway.segments')."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import String, any_, bindparam, func, or_, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine
from sqlmodel import col

if TYPE_CHECKING:
    from sqlalchemy.orm import Mapped

from storage.db import dialect_insert
from storage.models import Job, UserProfile

CHUNK = 500  # users per IN (...) list


def chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    """``items`` in slices of at most :data:`CHUNK` (one IN list each)."""
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


@dataclass(frozen=True, slots=True)
class Activity:
    """Per user (absent: none): reported sign-up time, live jobs created since a moment,
    and live jobs whose prompt names a style tag."""

    signed_up_at: dict[str, datetime | None]
    recent_jobs: dict[str, int]
    styled_jobs: dict[str, int]


def activity(
    engine: Engine, user_ids: Sequence[str], since: datetime, style_tags: Collection[str]
) -> Activity:
    """:class:`Activity` of many users: two queries per chunk of users, whose text is the
    same for every chunk (on PostgreSQL the users go as one array parameter)."""
    profiles, counts = _activity_statements(engine.dialect.name, tuple(style_tags))
    signed: dict[str, datetime | None] = {}
    recent: dict[str, int] = {}
    styled: dict[str, int] = {}
    with engine.connect() as connection:
        for chunk in chunks(user_ids):
            ids = list(chunk)
            signed.update(connection.execute(profiles, {"ids": ids}).all())
            for user, recent_jobs, styled_jobs in connection.execute(
                counts, {"ids": ids, "since": since}
            ):
                recent[user], styled[user] = recent_jobs, styled_jobs
    return Activity(signed, recent, styled)


def user_in(column: Any, dialect: str) -> Any:
    """``column`` is one of the values of the ``ids`` parameter (a list): ``= ANY(<one
    array>)`` on PostgreSQL, an expanding ``IN (...)`` elsewhere."""
    if dialect == "postgresql":
        return column == any_(bindparam("ids", type_=ARRAY(String)))
    return column.in_(bindparam("ids", expanding=True))


@lru_cache(maxsize=8)
def _activity_statements(dialect: str, style_tags: tuple[str, ...]) -> tuple[Any, Any]:
    """(sign-up times, job counts) of the users in ``ids``; counts of live jobs created since
    ``since`` and of live jobs whose prompt names a style tag."""
    style = or_(*(func.lower(Job.prompt).contains(tag.lower()) for tag in style_tags))
    live = col(Job.source) != "golden"
    profiles = select(col(UserProfile.user_id), col(UserProfile.signed_up_at)).where(
        user_in(col(UserProfile.user_id), dialect)
    )
    # typed non-null: the IN filter excludes jobs without a user
    user_id = cast("Mapped[str]", col(Job.user_id))
    counts = (
        select(
            user_id,
            func.count().filter(col(Job.created_at) >= bindparam("since")),
            func.count().filter(style),
        )
        .where(user_in(user_id, dialect), live)
        .group_by(user_id)
    )
    return profiles, counts


def remember_signups(engine: Engine, signups: Mapping[str, datetime]) -> None:
    """Store reported sign-up times in one statement; a user's first report wins."""
    if not signups:
        return
    with engine.begin() as connection:
        store_signups(connection, signups)


def store_signups(connection: Connection, signups: Mapping[str, datetime]) -> None:
    """:func:`remember_signups` inside the caller's transaction. Rows go in user order, so
    concurrent batches sharing users take their row locks in the same order (no deadlock)."""
    if not signups:
        return
    statement = dialect_insert(connection.engine)(UserProfile).on_conflict_do_nothing()
    rows = [{"user_id": u, "signed_up_at": signups[u]} for u in sorted(signups)]
    connection.execute(statement, rows)
