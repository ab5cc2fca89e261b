"""User-behaviour events: the owners of the jobs events name, and the deduplicating bulk
insert (SQL only; validation is gateway.events')."""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime
from operator import attrgetter
from typing import Any, Protocol

from sqlalchemy import String, any_, bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine
from sqlmodel import col

from storage.db import dialect_insert
from storage.models import Event, EventType, Job

# PostgreSQL: a batch as one array per column, so the statement text is the same for every
# batch (psycopg and SQLAlchemy parse it once) and the server gets one short query. Rows are
# inserted in array order (ORDER BY the ordinality), which the caller makes the id order.
_UNNEST_INSERT = text(
    "INSERT INTO events"
    " (id, type, user_id, job_id, occurred_at, dwell_ms, reason, received_at, api_key_id)"
    " SELECT e.id, e.type, e.user_id, e.job_id, e.occurred_at, e.dwell_ms, e.reason,"
    " CAST(:received_at AS TIMESTAMPTZ), CAST(:api_key_id AS VARCHAR)"
    " FROM unnest(CAST(:id AS VARCHAR[]), CAST(:type AS VARCHAR[]),"
    " CAST(:user_id AS VARCHAR[]), CAST(:job_id AS VARCHAR[]),"
    " CAST(:occurred_at AS TIMESTAMPTZ[]), CAST(:dwell_ms AS BIGINT[]),"
    " CAST(:reason AS VARCHAR[]))"
    " WITH ORDINALITY AS e(id, type, user_id, job_id, occurred_at, dwell_ms, reason, n)"
    " ORDER BY e.n"
    " ON CONFLICT DO NOTHING RETURNING id"
)


class NewEvent(Protocol):
    """An accepted event, as the store reads it (``event_id`` is the client's id)."""

    @property
    def event_id(self) -> str: ...
    @property
    def type(self) -> EventType: ...
    @property
    def user_id(self) -> str: ...
    @property
    def job_id(self) -> str | None: ...
    @property
    def occurred_at(self) -> datetime: ...
    @property
    def dwell_ms(self) -> int | None: ...
    @property
    def reason(self) -> str | None: ...


Owners = dict[str, str | None]  # job id -> its user, for the named jobs that exist


class EventStore:
    """Stores batches of events for one engine; its statements are built once, so
    SQLAlchemy compiles each once and caches it. Cheap to keep for a process."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._owners_statement = select(col(Job.id), col(Job.user_id)).where(
            col(Job.id) == any_(bindparam("ids", type_=ARRAY(String)))
            if self._postgres
            else col(Job.id).in_(bindparam("ids", expanding=True))
        )
        table = Event.__table__  # type: ignore[attr-defined]  # SQLModel leaves __table__ undeclared
        self._insert_statement = (
            _UNNEST_INSERT
            if self._postgres
            else dialect_insert(engine)(table).on_conflict_do_nothing().returning(table.c.id)
        )

    def insert(
        self,
        job_ids: Collection[str],
        accept: Callable[[Owners], list[NewEvent]],
        *,
        received_at: datetime,
        api_key_id: str | None,
    ) -> int:
        """Store a batch on one connection, in one transaction: look up who owns the jobs
        in ``job_ids`` (one query for the whole batch), let ``accept`` choose the events to
        store given those owners, and insert those whose id is new. Returns how many were
        stored."""
        with self.engine.begin() as connection:  # one connection for the whole batch
            owners = self._job_owners(connection, job_ids)
            return self._insert(connection, accept(owners), received_at, api_key_id)

    def _job_owners(self, connection: Connection, job_ids: Collection[str]) -> Owners:
        if not job_ids:
            return {}
        rows = connection.execute(self._owners_statement, {"ids": sorted(job_ids)})
        return {job_id: user_id for job_id, user_id in rows}

    def _insert(
        self,
        connection: Connection,
        events: list[NewEvent],
        now: datetime,
        api_key_id: str | None,
    ) -> int:
        """Store the events whose id is new; return how many were stored.

        One statement per batch whose text never changes (so it is compiled once): on
        PostgreSQL an INSERT ... SELECT FROM unnest() of one array per column, elsewhere an
        executemany that SQLAlchemy sends as multi-row INSERT pages; both ON CONFLICT DO
        NOTHING RETURNING id. Rows go in id order (``events`` is sorted in place), so
        concurrent batches sharing ids take their locks in the same order and cannot
        deadlock.
        """
        if not events:
            return 0
        events.sort(key=attrgetter("event_id"))
        if self._postgres:
            parameters: Any = {
                "id": [e.event_id for e in events],
                "type": [e.type.value for e in events],
                "user_id": [e.user_id for e in events],
                "job_id": [e.job_id for e in events],
                "occurred_at": [e.occurred_at for e in events],
                "dwell_ms": [e.dwell_ms for e in events],
                "reason": [e.reason for e in events],
                "received_at": now,
                "api_key_id": api_key_id,
            }
        else:
            parameters = [
                {
                    "id": e.event_id,
                    "type": e.type.value,
                    "user_id": e.user_id,
                    "job_id": e.job_id,
                    "occurred_at": e.occurred_at,
                    "received_at": now,
                    "dwell_ms": e.dwell_ms,
                    "reason": e.reason,
                    "api_key_id": api_key_id,
                }
                for e in events
            ]
        return len(connection.execute(self._insert_statement, parameters).all())
