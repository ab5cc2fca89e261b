"""The HTTP API: submit jobs, poll them, fetch images. A thin shell over the Gateway."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from canary.settings import Settings, get_settings
from gateway.auth import KeyVerifier, Principal
from gateway.events_api import events_router
from gateway.golden_api import golden_router
from gateway.http_auth import Caller, require_role
from gateway.metrics_api import metrics_router
from gateway.reports_api import reports_router
from gateway.service import Gateway
from gateway.specs import InvalidJob, JobRequest
from gateway.submit import BrokerUnavailable, Submitted
from storage import jobs
from storage.db import get_engine
from storage.models import ApiKeyRole, Job, JobStatus
from storage.objects import ObjectNotFound, ObjectStore, store_from_settings

# ---------------------------------------------------------------- schemas


class JobAccepted(BaseModel):
    job_id: str
    status: str
    created: bool = Field(description="False when the idempotency key named an earlier job")


class BatchIn(BaseModel):
    jobs: list[JobRequest] = Field(min_length=1)


class BatchAccepted(BaseModel):
    jobs: list[JobAccepted]


class JobOut(BaseModel):
    job_id: str
    status: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int
    prompt: str
    seed: int
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


class ErrorOut(BaseModel):
    detail: str
    errors: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------- body size limit


class BodySizeLimit:
    """Refuse bodies over ``limit`` bytes with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send)
                    return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body larger than {self.limit} bytes", "errors": []},
            status_code=413,
        )
        await response({"type": "http"}, _empty_receive, send)


class _BodyTooLarge(Exception):
    pass


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}


# ---------------------------------------------------------------- app

Submitter = Annotated[Principal, Depends(require_role(ApiKeyRole.CLIENT, ApiKeyRole.OPERATOR))]


def _validation_messages(exc: RequestValidationError) -> list[str]:
    messages = []
    for item in exc.errors():
        location = [str(part) for part in item["loc"] if part != "body"]
        where = ".".join(location) or "body"
        message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        messages.append(f"{where}: {message}")
    return messages


def create_app(
    settings: Settings | None = None,
    *,
    gateway: Gateway | None = None,
    store: ObjectStore | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    engine = get_engine(settings.resolved_database_url)
    if gateway is None:
        from tasks.app import make_app

        gateway = Gateway(settings, engine, make_app(settings))
    store = store or store_from_settings(settings)
    verifier = KeyVerifier(engine)

    app = FastAPI(
        title="canary-render",
        version="1",
        description="Submit text-to-image jobs, poll them, fetch their images.",
        responses={
            401: {"model": ErrorOut, "description": "Missing or unknown API key"},
            403: {"model": ErrorOut, "description": "The key's role may not do this"},
            413: {"model": ErrorOut, "description": "Body too large"},
            422: {"model": ErrorOut, "description": "Invalid request"},
        },
    )
    app.add_middleware(BodySizeLimit, limit=settings.api_max_body_bytes)
    app.state.gateway = gateway
    app.state.verifier = verifier

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_messages(exc)
        return JSONResponse({"detail": "invalid request", "errors": errors}, status_code=422)

    @app.exception_handler(InvalidJob)
    async def _invalid_job(_: Request, exc: InvalidJob) -> JSONResponse:
        return JSONResponse({"detail": "invalid job", "errors": exc.errors}, status_code=422)

    @app.exception_handler(BrokerUnavailable)
    async def _broker_down(_: Request, exc: BrokerUnavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": "the job queue is unavailable; retry later", "errors": []},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.detail, "errors": []},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    def load_job(job_id: str, caller: Principal) -> Job:
        job = jobs.get_job(engine, job_id) if len(job_id) <= 36 else None
        # Clients only see their own jobs; someone else's is reported as absent.
        if job is None or (not caller.is_operator and job.api_key_id != caller.key_id):
            raise HTTPException(404, f"no job {job_id}")
        return job

    def require_pin_rights(requests: list[JobRequest], caller: Principal) -> None:
        if not caller.is_operator and any(r.model_version for r in requests):
            raise HTTPException(403, "only operator keys may choose model_version")

    def accepted(submitted: Submitted) -> JobAccepted:
        status: str = JobStatus.QUEUED
        if not submitted.created:  # a replay reports where the earlier job is now
            earlier = jobs.get_job(engine, submitted.job_id)
            status = earlier.status if earlier else JobStatus.QUEUED
        return JobAccepted(job_id=submitted.job_id, status=status, created=submitted.created)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobAccepted,
        responses={200: {"model": JobAccepted, "description": "Idempotent replay"}},
    )
    def submit_job(
        body: JobRequest,
        caller: Submitter,
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> JobAccepted:
        """Queue one job. The experiment picks the version unless an operator pins it."""
        if idempotency_key and not body.idempotency_key:
            body = body.model_copy(update={"idempotency_key": idempotency_key})
        require_pin_rights([body], caller)
        body = _scope_key(body, caller)
        submitted = gateway.submit(
            body, source="api", api_key_id=caller.key_id, may_pin_version=caller.is_operator
        )
        if not submitted.created:
            response.status_code = 200
        return accepted(submitted)

    @app.post("/v1/jobs:batch", status_code=202, response_model=BatchAccepted)
    def submit_batch(body: BatchIn, caller: Submitter) -> BatchAccepted:
        """Queue up to the configured number of jobs; nothing is queued if any is invalid."""
        if len(body.jobs) > settings.api_max_batch:
            raise InvalidJob([f"jobs: at most {settings.api_max_batch} per batch"])
        require_pin_rights(body.jobs, caller)
        prepared = gateway.prepare_all(
            [_scope_key(j, caller) for j in body.jobs], may_pin_version=caller.is_operator
        )
        submitted = gateway.submit_many(prepared, source="api", api_key_id=caller.key_id)
        return BatchAccepted(jobs=[accepted(s) for s in submitted])

    @app.get("/v1/jobs/{job_id}", response_model=JobOut, responses={404: {"model": ErrorOut}})
    def get_job(job_id: str, caller: Caller, request: Request) -> JobOut:
        job = load_job(job_id, caller)
        out = JobOut(
            job_id=job.id,
            status=job.status,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            attempts=job.attempts,
            prompt=job.prompt,
            seed=job.seed,
            width=job.width,
            height=job.height,
            failure_kind=job.failure_kind,
            failure_message=job.failure_message,
            queue_wait_ms=job.queue_wait_ms,
            inference_ms=job.inference_ms,
            upload_ms=job.upload_ms,
            end_to_end_ms=job.end_to_end_ms,
        )
        if job.image_key:
            url = store.url(job.image_key, settings.presign_expiry_s)
            if not url.startswith("http"):
                url = str(request.url_for("get_image", job_id=job.id))
            out.image_url = url
        if caller.is_operator or settings.show_variant_to_clients:
            out.model_version = job.model_version
            out.model_revision = job.model_revision
            out.experiment = job.experiment
            out.arm = job.arm
        return out

    @app.get(
        "/v1/jobs/{job_id}/image",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}},
            307: {"description": "Redirect to a presigned object URL"},
            404: {"model": ErrorOut},
            409: {"model": ErrorOut, "description": "The job has no image (yet)"},
        },
    )
    def get_image(job_id: str, caller: Caller) -> Response:
        job = load_job(job_id, caller)
        if job.status != JobStatus.SUCCEEDED or not job.image_key:
            raise HTTPException(409, f"job {job_id} is {job.status}; it has no image")
        url = store.url(job.image_key, settings.presign_expiry_s)
        if url.startswith("http"):
            return RedirectResponse(url, status_code=307)
        try:
            return Response(store.get(job.image_key), media_type="image/png")
        except ObjectNotFound:
            raise HTTPException(404, f"the image of job {job_id} is gone") from None

    app.include_router(golden_router(settings, engine, store))
    app.include_router(events_router(settings, engine))
    app.include_router(reports_router(settings, engine, gateway.experiments))
    app.include_router(metrics_router(settings, engine, gateway.producer.app, gateway.experiments))
    return app


def _scope_key(request: JobRequest, caller: Principal) -> JobRequest:
    """Idempotency keys are per API key, so two clients cannot collide (or probe each other)."""
    if not request.idempotency_key:
        return request
    return request.model_copy(
        update={"idempotency_key": f"{caller.key_id}:{request.idempotency_key}"}
    )
