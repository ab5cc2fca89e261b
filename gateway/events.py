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
from sqlalchemy.engine import Engine

from canary.settings import Settings
from gateway.job_requests import format_pydantic
from gateway.text import StorableStr, printable
from storage.events import EventStore, Owners
from storage.models import JOB_EVENTS, EventType, utcnow

MAX_DWELL_MS = 6 * 3600 * 1000
FeedbackReason = Literal["poor_quality", "style_mismatch", "other"]
PRINTABLE_ID = r"^[\x21-\x7e]{1,100}$"


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
        messages = [printable(m.replace("Value error, ", "")) for m in format_pydantic(exc)]
        return Rejected(index, event_id, messages)


class EventIngestor:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.store = EventStore(engine)

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
        events: dict[str, EventIn] = {}

        def accept(owners: Owners) -> list[Any]:
            events.update(self._owned(parsed, owners, outcome))
            return list(events.values())

        inserted = self.store.insert(  # one connection and one query each for the batch
            {e.job_id for _, e in parsed if e.job_id},
            accept,
            received_at=now,
            api_key_id=api_key_id,
        )
        outcome.accepted = inserted
        outcome.duplicates += len(events) - inserted
        return outcome

    @staticmethod
    def _owned(
        parsed: list[tuple[int, EventIn]],
        owners: Owners,
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
