"""What is known about users: reported sign-up times, and activity counted from their jobs
(SQL only; segmentation itself is gateway.segments')."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, cast

from sqlalchemy import func, or_, select
from sqlalchemy.engine import Engine
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
    """:class:`Activity` of many users: two queries per chunk of users."""
    style = or_(*(func.lower(Job.prompt).contains(tag.lower()) for tag in style_tags))
    live = col(Job.source) != "golden"
    signed: dict[str, datetime | None] = {}
    recent: dict[str, int] = {}
    styled: dict[str, int] = {}
    with engine.connect() as connection:
        for chunk in chunks(user_ids):
            signed.update(
                connection.execute(
                    select(col(UserProfile.user_id), col(UserProfile.signed_up_at)).where(
                        col(UserProfile.user_id).in_(chunk)
                    )
                ).all()
            )
            # typed non-null: the IN filter excludes jobs without a user
            user_id = cast("Mapped[str]", col(Job.user_id))
            counts = (
                select(
                    user_id,
                    func.count().filter(col(Job.created_at) >= since),
                    func.count().filter(style),
                )
                .where(user_id.in_(chunk), live)
                .group_by(user_id)
            )
            for user, recent_jobs, styled_jobs in connection.execute(counts):
                recent[user], styled[user] = recent_jobs, styled_jobs
    return Activity(signed, recent, styled)


def remember_signups(engine: Engine, signups: Mapping[str, datetime]) -> None:
    """Store reported sign-up times in one statement; a user's first report wins."""
    if not signups:
        return
    statement = dialect_insert(engine)(UserProfile).on_conflict_do_nothing()
    rows = [{"user_id": u, "signed_up_at": when} for u, when in signups.items()]
    with engine.begin() as connection:
        connection.execute(statement, rows)
