"""Event ingestion: client instrumentation posts batches of user-behaviour events.

Each event is checked on its own, so a bad event is rejected with its reasons while the
good ones of the same batch are stored. Events are deduplicated by the client's event
id (a client retrying a batch after a timeout stores nothing twice). Timestamps must lie
between ``event_max_age_days`` ago and ``event_max_skew_s`` into the future; events about
an image must name a job of the same user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy import String, any_, bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine

from canary.settings import Settings
from gateway.job_requests import _format_pydantic
from gateway.text import StorableStr, printable
from storage.db import dialect_insert
from storage.models import JOB_EVENTS, Event, EventType, Job, utcnow

MAX_DWELL_MS = 6 * 3600 * 1000
FeedbackReason = Literal["poor_quality", "style_mismatch", "other"]
PRINTABLE_ID = r"^[\x21-\x7e]{1,100}$"
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


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(pattern=PRINTABLE_ID)
    type: EventType
    user_id: StorableStr = Field(min_length=1, max_length=200)
    occurred_at: AwareDatetime
    job_id: StorableStr | None = Field(default=None, min_length=1, max_length=36)
    dwell_ms: int | None = Field(default=None, ge=0, le=MAX_DWELL_MS)
    reason: FeedbackReason | None = None

    @field_validator("occurred_at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        """Stored in UTC: SQLite keeps a datetime's wall-clock time and drops its offset."""
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _fields_for_type(self) -> EventIn:
        errors = []
        if self.type in JOB_EVENTS and self.job_id is None:
            errors.append(f"job_id: required for {self.type.value}")
        if self.type not in JOB_EVENTS and self.job_id is not None:
            errors.append(f"job_id: not allowed for {self.type.value}")
        if (self.type == EventType.IMAGE_VIEWED) != (self.dwell_ms is not None):
            errors.append("dwell_ms: required for image_viewed and only there")
        if (self.type == EventType.FEEDBACK_REPORTED) != (self.reason is not None):
            errors.append("reason: required for feedback_reported and only there")
        if errors:
            raise ValueError("; ".join(errors))
        return self


@dataclass
class Rejected:
    index: int
    event_id: str | None
    errors: list[str]


@dataclass
class IngestOutcome:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)


def _parse(index: int, item: Any) -> EventIn | Rejected:
    event_id = item.get("event_id") if isinstance(item, dict) else None
    event_id = printable(event_id) if isinstance(event_id, str) else None
    if not isinstance(item, dict):
        return Rejected(index, None, [f"event must be an object, not {type(item).__name__}"])
    try:
        return EventIn.model_validate(item)
    except ValidationError as exc:
        messages = [printable(m.replace("Value error, ", "")) for m in _format_pydantic(exc)]
        return Rejected(index, event_id, messages)


class EventIngestor:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        # built once, so SQLAlchemy compiles each statement once and caches it
        self._owners_statement = select(Job.id, Job.user_id).where(
            Job.id == any_(bindparam("ids", type_=ARRAY(String)))
            if self._postgres
            else Job.id.in_(bindparam("ids", expanding=True))  # type: ignore[attr-defined]
        )
        table = Event.__table__  # type: ignore[attr-defined]
        self._insert_statement = (
            _UNNEST_INSERT
            if self._postgres
            else dialect_insert(engine)(table).on_conflict_do_nothing().returning(table.c.id)
        )

    def ingest(
        self, items: list[Any], *, api_key_id: str | None = None, now: datetime | None = None
    ) -> IngestOutcome:
        now = now or utcnow()
        earliest = now - timedelta(days=self.settings.event_max_age_days)
        latest = now + timedelta(seconds=self.settings.event_max_skew_s)
        outcome = IngestOutcome()
        parsed: list[tuple[int, EventIn]] = []
        for index, item in enumerate(items):
            result = _parse(index, item)
            if isinstance(result, Rejected):
                outcome.rejected.append(result)
            elif not earliest <= result.occurred_at <= latest:
                outcome.rejected.append(
                    Rejected(
                        index,
                        result.event_id,
                        [
                            f"occurred_at: {result.occurred_at.isoformat()} is outside "
                            f"[{earliest.isoformat()}, {latest.isoformat()}]"
                        ],
                    )
                )
            else:
                parsed.append((index, result))
        with self.engine.begin() as connection:  # one connection for the whole batch
            owners = self._job_owners(connection, {e.job_id for _, e in parsed if e.job_id})
            events = self._owned(parsed, owners, outcome)
            inserted = self._insert(connection, list(events.values()), now, api_key_id)
        outcome.accepted = inserted
        outcome.duplicates += len(events) - inserted
        return outcome

    @staticmethod
    def _owned(
        parsed: list[tuple[int, EventIn]],
        owners: dict[str, str | None],
        outcome: IngestOutcome,
    ) -> dict[str, EventIn]:
        """The events naming no job or one of their user's, once per id; rejects the rest."""
        events: dict[str, EventIn] = {}
        for index, event in parsed:
            if event.job_id is not None:
                owner = owners.get(event.job_id, ...)
                if owner is ...:
                    outcome.rejected.append(
                        Rejected(index, event.event_id, [f"job_id: no job {event.job_id}"])
                    )
                    continue
                if owner != event.user_id:
                    outcome.rejected.append(
                        Rejected(index, event.event_id, ["job_id: the job is another user's"])
                    )
                    continue
            if event.event_id in events:
                outcome.duplicates += 1
                continue
            events[event.event_id] = event
        return events

    def _job_owners(self, connection: Connection, job_ids: set[str]) -> dict[str, str | None]:
        """Who owns each named job that exists, in one query for the whole batch."""
        if not job_ids:
            return {}
        rows = connection.execute(self._owners_statement, {"ids": sorted(job_ids)})
        return {job_id: user_id for job_id, user_id in rows}

    def _insert(
        self,
        connection: Connection,
        events: list[EventIn],
        now: datetime,
        api_key_id: str | None,
    ) -> int:
        """Store the events whose id is new; return how many were stored.

        One statement per batch whose text never changes (so it is compiled once): on
        PostgreSQL an INSERT ... SELECT FROM unnest() of one array per column, elsewhere an
        executemany that SQLAlchemy sends as multi-row INSERT pages; both ON CONFLICT DO
        NOTHING RETURNING id. Rows go in id order, so concurrent batches sharing ids take
        their locks in the same order and cannot deadlock.
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
