"""`POST /v1/events`: batched client events, authenticated with a write-only events key."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from gateway.auth import Principal
from gateway.http.auth import require_role
from gateway.http.dependencies import AppSettings, Ingestor
from storage.models import ApiKeyRole

EventWriter = Annotated[Principal, Depends(require_role(ApiKeyRole.EVENTS, ApiKeyRole.OPERATOR))]

router = APIRouter()


class EventBatchIn(BaseModel):
    events: list[Any] = Field(min_length=1, description="Each event is checked on its own")


class RejectedOut(BaseModel):
    index: int
    event_id: str | None
    errors: list[str]


class EventBatchOut(BaseModel):
    accepted: int = Field(description="Events stored by this request")
    duplicates: int = Field(description="Events whose id was stored before (or twice here)")
    rejected: list[RejectedOut]


@router.post("/v1/events", response_model=EventBatchOut)
def post_events(
    body: EventBatchIn, caller: EventWriter, settings: AppSettings, ingestor: Ingestor
) -> EventBatchOut:
    """Store a batch of events; bad events are listed with reasons, the rest are kept."""
    if len(body.events) > settings.api_max_events:
        raise HTTPException(422, f"events: at most {settings.api_max_events} per batch")
    outcome = ingestor.ingest(body.events, api_key_id=caller.key_id)
    return EventBatchOut(
        accepted=outcome.accepted,
        duplicates=outcome.duplicates,
        rejected=[RejectedOut(**asdict(r)) for r in outcome.rejected],
    )
