"""`GET /v1/batches/{id}`: a batch's counts by status, refused and failed items, images.

Client keys see only their own batches (another's is reported as absent), reach images
through the job image route and do not see which version served each item, as on
`GET /v1/jobs/{id}`; operators see every batch, file batches of `canary submit` too.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from gateway.batch_report import batch_report
from gateway.http.auth import Caller
from gateway.http.dependencies import AppSettings, Database
from storage import batches

router = APIRouter()


class BatchItemFailure(BaseModel):
    line: int | None = Field(default=None, description="Line number (file batches)")
    item: int | None = Field(default=None, description="Index in the request (API batches)")
    job_id: str
    failure_kind: str | None
    failure_message: str | None
    model_version: str | None = Field(default=None, description="Hidden from client keys")


class BatchImage(BaseModel):
    line: int | None = None
    item: int | None = None
    job_id: str
    url: str
    model_version: str | None = Field(default=None, description="Hidden from client keys")


class BatchOut(BaseModel):
    batch_id: str
    source: str = Field(description="bulk (a file: canary submit), api (POST /v1/jobs:batch), demo")
    file: str | None
    created_at: str
    unit: str = Field(description="What `line`/`item` numbers count")
    lines: int
    jobs: int
    created: int
    duplicates: int
    counts: dict[str, int] = Field(description="Jobs by status")
    done: bool = Field(description="True once no job is QUEUED or RUNNING")
    rejected: list[dict[str, Any]] = Field(description="Refused at submission, not queued")
    failed: list[BatchItemFailure]
    images: list[BatchImage]
    images_listed: int
    images_total: int


@router.get("/v1/batches/{batch_id}", response_model=BatchOut)
def get_batch(
    batch_id: str, caller: Caller, request: Request, settings: AppSettings, engine: Database
) -> dict[str, Any]:
    """A batch: counts by status, every refused or failed item, where the images are."""
    batch = batches.get_batch(engine, batch_id)
    if batch is None or (not caller.is_operator and batch.api_key_id != caller.key_id):
        raise HTTPException(404, f"no batch {batch_id}")
    return batch_report(
        engine,
        batch,
        lambda job_id, _key: str(request.url_for("get_image", job_id=job_id)),
        show_versions=caller.is_operator or settings.show_variant_to_clients,
    )
