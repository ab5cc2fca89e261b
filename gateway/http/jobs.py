"""Jobs: submit one or a batch, poll one, fetch its image; and the liveness probe."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field, field_validator
from sqlalchemy.engine import Engine

from canary.settings import Settings
from gateway.auth import Principal
from gateway.blinding import hide_versions, may_presign
from gateway.http.auth import Caller, refused, require_role
from gateway.http.dependencies import AppSettings, Database, JobGateway, Limiter, Store
from gateway.http.errors import ErrorOut
from gateway.job_requests import InvalidJob, JobRequest
from gateway.key_limits import LimitExceeded, RequestRateLimiter, check_queued, effective_limits
from gateway.submit import Submitted
from storage import jobs
from storage.batches import record_batch
from storage.models import TERMINAL_STATUSES, ApiKeyRole, Batch, Job, JobStatus
from storage.objects import ObjectNotFound

MAX_WAIT_S = 60.0  # GET /v1/jobs/{id}?wait=: the longest a request may wait for a job
WAIT_POLL_S = 0.2
ACCEPTED = "Accepted (`sent` is false for a job kept until the job queue is reachable)"
Submitter = Annotated[Principal, Depends(require_role(ApiKeyRole.CLIENT, ApiKeyRole.OPERATOR))]

router = APIRouter()

# ---------------------------------------------------------------- schemas


class JobAccepted(BaseModel):
    job_id: str
    status: str
    created: bool = Field(description="False when the idempotency key named an earlier job")
    sent: bool = Field(
        description="False when the job queue could not be reached: the job is kept and "
        "sent automatically when the queue is back"
    )


class BatchIn(BaseModel):
    jobs: list[JobRequest] = Field(min_length=1)


class BatchAccepted(BaseModel):
    batch_id: str = Field(description="For GET /v1/batches/{batch_id}")
    jobs: list[JobAccepted]


class LostAttemptOut(BaseModel):
    """An attempt whose worker was lost: where, when and how its pool process died."""

    attempt: int
    node: str | None = None
    lost_at: datetime
    cause: str
    detected_by: str
    other_jobs: int = Field(description="Other jobs in the same worker process at the time")

    @field_validator("lost_at")
    @classmethod
    def _in_utc(cls, moment: datetime) -> datetime:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


class JobOut(BaseModel):
    job_id: str
    status: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int
    prompt: str
    seed: int
    steps: int
    width: int
    height: int
    failure_kind: str | None = None
    failure_message: str | None = None
    queue_wait_ms: float | None = None
    inference_ms: float | None = None
    upload_ms: float | None = None
    end_to_end_ms: float | None = None
    image_url: str | None = None
    model_version: str | None = Field(default=None, description="Hidden from client keys")
    model_revision: str | None = None
    experiment: str | None = None
    arm: str | None = None
    lost_attempts: list[LostAttemptOut] | None = Field(
        default=None, description="Operator keys only: attempts whose worker was lost, and how"
    )

    @field_validator("created_at", "started_at", "finished_at")
    @classmethod
    def _in_utc(cls, moment: datetime | None) -> datetime | None:
        """SQLite hands back naive datetimes; every stored time is UTC, so say so."""
        return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment


# ---------------------------------------------------------------- helpers


def load_job(engine: Engine, job_id: str, caller: Principal) -> Job:
    job = jobs.get_job(engine, job_id) if len(job_id) <= 36 else None
    # Clients only see their own jobs; someone else's, or a shadow copy (gateway/shadow.py),
    # is reported as absent.
    if job is None or (
        not caller.is_operator and (job.api_key_id != caller.key_id or job.shadow_of is not None)
    ):
        raise HTTPException(404, f"no job {job_id}")
    return job


def require_pin_rights(requests: list[JobRequest], caller: Principal) -> None:
    if not caller.is_operator and any(r.model_version for r in requests):
        raise HTTPException(403, "only operator keys may choose model_version")


def accepted(engine: Engine, submitted: list[Submitted]) -> list[JobAccepted]:
    """What the client learns of its jobs; a job the broker did not take yet is kept
    unsent (``enqueued_at`` unset) and sent by the outbox when the broker is back."""
    replays = [s.job_id for s in submitted if not s.created]
    rows = {row.id: row for row in jobs.get_jobs(engine, replays)} if replays else {}
    answers = []
    for item in submitted:
        row = rows.get(item.job_id)
        # a replay reports where the earlier job is now
        status = row.status if row is not None else JobStatus.QUEUED
        answers.append(
            JobAccepted(job_id=item.job_id, status=status, created=item.created, sent=item.sent)
        )
    return answers


def _scope_key(request: JobRequest, caller: Principal) -> JobRequest:
    """Idempotency keys are per API key, so two clients cannot collide (or probe each other)."""
    if not request.idempotency_key:
        return request
    return request.model_copy(
        update={"idempotency_key": f"{caller.key_id}:{request.idempotency_key}"}
    )


def within_queued_limit(
    engine: Engine,
    settings: Settings,
    limiter: RequestRateLimiter,
    caller: Principal,
    requests: list[JobRequest],
    *,
    batch: bool = False,
) -> None:
    """429 when the new jobs would take the key over its limit of unfinished jobs; checked
    before anything of the request is done, so a refused one leaves nothing behind."""
    limit = effective_limits(caller.role, caller.rate_per_s, caller.max_queued, settings)
    if limit.max_queued is None:
        return
    try:
        check_queued(engine, caller.key_id, limit.max_queued, requests, batch=batch)
    except LimitExceeded as exc:
        raise refused(limiter, exc) from None


# ---------------------------------------------------------------- routes


@router.get("/healthz", include_in_schema=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobAccepted,
    responses={
        200: {"model": JobAccepted, "description": "Idempotent replay"},
        202: {"description": ACCEPTED},
    },
)
def submit_job(
    body: JobRequest,
    caller: Submitter,
    response: Response,
    settings: AppSettings,
    gateway: JobGateway,
    engine: Database,
    limiter: Limiter,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobAccepted:
    """Queue one job. The experiment picks the version unless an operator pins it.

    The job is never lost: when the job queue cannot be reached the answer is still
    202 with the job id, with `sent: false`, and the job is sent when the queue is back.
    A client key with as many unfinished jobs as its limit gets 429 (a replay of a job it
    submitted before still gets that job).
    """
    if idempotency_key and not body.idempotency_key:
        body = body.model_copy(update={"idempotency_key": idempotency_key})
    require_pin_rights([body], caller)
    body = _scope_key(body, caller)
    within_queued_limit(engine, settings, limiter, caller, [body])
    submitted = gateway.submit(
        body, source="api", api_key_id=caller.key_id, may_pin_version=caller.is_operator
    )
    if not submitted.created:
        response.status_code = 200
    return accepted(engine, [submitted])[0]


@router.post(
    "/v1/jobs:batch",
    status_code=202,
    response_model=BatchAccepted,
    responses={202: {"description": ACCEPTED}},
)
def submit_batch(
    body: BatchIn,
    caller: Submitter,
    settings: AppSettings,
    gateway: JobGateway,
    engine: Database,
    limiter: Limiter,
) -> BatchAccepted:
    """Queue up to the configured number of jobs; nothing is queued if any is invalid.

    As for one job, `sent: false` marks jobs kept for when the job queue is back. A batch
    whose new jobs would take a client key over its limit of unfinished jobs is refused
    whole (429).
    """
    if len(body.jobs) > settings.api_max_batch:
        raise InvalidJob([f"jobs: at most {settings.api_max_batch} per batch"])
    require_pin_rights(body.jobs, caller)
    requests = [_scope_key(j, caller) for j in body.jobs]
    within_queued_limit(engine, settings, limiter, caller, requests, batch=True)
    prepared = gateway.prepare_all(requests, may_pin_version=caller.is_operator)
    batch = Batch(id=uuid.uuid4().hex, source="api", api_key_id=caller.key_id)
    record_batch(batch, [], engine)
    submitted = gateway.submit_many(
        prepared, source="api", batch_id=batch.id, api_key_id=caller.key_id
    )
    batch.created = sum(s.created for s in submitted)
    batch.duplicates = len(submitted) - batch.created
    record_batch(batch, [(i, s.job_id) for i, s in enumerate(submitted)], engine)
    return BatchAccepted(batch_id=batch.id, jobs=accepted(engine, submitted))


@router.get("/v1/jobs/{job_id}", response_model=JobOut, responses={404: {"model": ErrorOut}})
def get_job(
    job_id: str,
    caller: Caller,
    request: Request,
    settings: AppSettings,
    engine: Database,
    store: Store,
    wait: Annotated[
        float,
        Query(ge=0, le=MAX_WAIT_S, description="Seconds to wait for the job to finish"),
    ] = 0,
) -> JobOut:
    job = load_job(engine, job_id, caller)
    blind = not (caller.is_operator or settings.show_variant_to_clients)
    deadline = time.monotonic() + wait
    while job.status not in TERMINAL_STATUSES and time.monotonic() < deadline:
        time.sleep(WAIT_POLL_S)
        job = load_job(engine, job_id, caller)
    out = JobOut(
        job_id=job.id,
        status=job.status,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        attempts=job.attempts,
        prompt=job.prompt,
        seed=job.seed,
        steps=job.steps,
        width=job.width,
        height=job.height,
        failure_kind=job.failure_kind,
        failure_message=(
            hide_versions(job.failure_message, [job.model_version, *settings.versions])
            if blind
            else job.failure_message
        ),
        queue_wait_ms=job.queue_wait_ms,
        inference_ms=job.inference_ms,
        upload_ms=job.upload_ms,
        end_to_end_ms=job.end_to_end_ms,
    )
    if job.image_key:
        url = ""
        if may_presign(job.image_key, blind=blind):
            url = store.url(job.image_key, settings.presign_expiry_s)
        if not url.startswith("http"):
            url = str(request.url_for("get_image", job_id=job.id))
        out.image_url = url
    if not blind:
        out.model_version = job.model_version
        out.model_revision = job.model_revision
        out.experiment = job.experiment
        out.arm = job.arm
    if caller.is_operator:
        out.lost_attempts = [
            LostAttemptOut.model_validate(attempt, from_attributes=True)
            for attempt in jobs.lost_attempts(engine, job.id)
        ]
    return out


@router.get(
    "/v1/jobs/{job_id}/image",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}},
        307: {"description": "Redirect to a presigned object URL"},
        404: {"model": ErrorOut},
        409: {"model": ErrorOut, "description": "The job has no image (yet)"},
    },
)
def get_image(
    job_id: str, caller: Caller, settings: AppSettings, engine: Database, store: Store
) -> Response:
    job = load_job(engine, job_id, caller)
    if job.status != JobStatus.SUCCEEDED or not job.image_key:
        raise HTTPException(409, f"job {job_id} is {job.status}; it has no image")
    blind = not (caller.is_operator or settings.show_variant_to_clients)
    # a legacy key names the version: streamed to clients instead (gateway/blinding.py)
    if may_presign(job.image_key, blind=blind):
        url = store.url(job.image_key, settings.presign_expiry_s)
        if url.startswith("http"):
            return RedirectResponse(url, status_code=307)
    try:
        return Response(store.get(job.image_key), media_type="image/png")
    except ObjectNotFound:
        raise HTTPException(404, f"the image of job {job_id} is gone") from None
