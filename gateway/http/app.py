"""The HTTP API: submit jobs, poll them, fetch images. A thin shell over the Gateway."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.params import Form
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from canary.settings import Settings, get_settings
from gateway.auth import KeyVerifier, Principal
from gateway.blinding import hide_versions, may_presign
from gateway.http.auth import Caller, require_role
from gateway.http.batches import batches_router
from gateway.http.events import events_router
from gateway.http.golden import golden_router
from gateway.http.metrics import metrics_router
from gateway.http.reports import reports_router
from gateway.job_requests import InvalidJob, JobRequest
from gateway.service import Gateway
from gateway.submit import Submitted
from gateway.text import printable, unstorable_reason
from storage import jobs
from storage.batches import record_batch
from storage.db import get_engine
from storage.models import TERMINAL_STATUSES, ApiKeyRole, Batch, Job, JobStatus
from storage.objects import ObjectNotFound, ObjectStore, store_from_settings

MAX_WAIT_S = 60.0  # GET /v1/jobs/{id}?wait=: the longest a request may wait for a job
WAIT_POLL_S = 0.2

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


class ErrorOut(BaseModel):
    detail: str
    errors: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------- body size limit


class BodySizeLimit:
    """Refuse bodies over ``limit`` bytes with 413, whether or not Content-Length is sent.

    The body is read here, before the app runs, and handed on whole: a chunked body over
    the limit is refused like a declared one. (An error raised while FastAPI reads the
    body would become its 400 "There was an error parsing the body".)
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _declared_length(scope) > self.limit:
            await self._reject(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away: nobody to answer
            body += message.get("body", b"")
            if len(body) > self.limit:
                await self._reject(scope, receive, send)
                return
            more = message.get("more_body", False)
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body larger than {self.limit} bytes", "errors": []},
            status_code=413,
        )
        await response(scope, receive, send)


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the read body once, then whatever the client sends next."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# ---------------------------------------------------------------- request errors

JSON = "application/json"


def _validation_messages(exc: RequestValidationError) -> list[str]:
    messages = []
    for item in exc.errors():
        if item["type"] == "json_invalid":
            messages.append(_json_error(item, exc.body))
            continue
        location = [str(part) for part in item["loc"] if part != "body"]
        where = ".".join(location) or "body"
        message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        messages.append(f"{where}: {message}")
    return messages


def _json_error(item: dict[str, Any], body: Any) -> str:
    """Where a body stopped being JSON, as line, column and character (FastAPI reports
    only the character offset, in ``loc``)."""
    reason = item.get("ctx", {}).get("error", item["msg"])
    offset = item["loc"][-1]
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not isinstance(offset, int):
        return f"body: invalid JSON: {reason}"
    where = json.JSONDecodeError(reason, body, offset)  # counts lines and columns
    return (
        f"body: invalid JSON at line {where.lineno}, column {where.colno} "
        f"(character {offset}): {reason}"
    )


def _is_json(content_type: str) -> bool:
    """The media types FastAPI parses as JSON: application/json and application/*+json."""
    media_type = content_type.partition(";")[0].strip().lower()
    kind, _, subtype = media_type.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _require_json_body(request: Request) -> None:
    """415 for a body sent as anything but JSON to an operation that takes JSON.

    Without this FastAPI would validate the raw bytes and answer 422 "Input should be a
    valid dictionary" (e.g. to curl's ``-d``, which sends a form). A body without any
    Content-Type is read as JSON.
    """
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or route.body_field is None:
        return
    if isinstance(route.body_field.field_info, Form):
        return
    content_type = request.headers.get("content-type")
    if content_type and not _is_json(content_type):
        raise HTTPException(
            415, f"unsupported Content-Type {content_type!r}: send the body as {JSON}"
        )


def _storable_params(request: Request) -> None:
    """422 naming the parameter for a NUL or lone surrogate in any path or query
    parameter: one check for every route (PostgreSQL would fail on them as a 500)."""
    located = [("path", request.path_params.items()), ("query", request.query_params.items())]
    errors = [
        {"type": "value_error", "loc": (where, name), "msg": reason, "input": value}
        for where, params in located
        for name, value in params
        if isinstance(value, str) and (reason := unstorable_reason(value))
    ]
    if errors:
        raise RequestValidationError(errors)


# ---------------------------------------------------------------- OpenAPI

ERRORS = {
    400: "The body could not be read",
    401: "Missing or unknown API key",
    403: "The key's role may not do this",
    404: "Not found",
    409: "Not possible in the resource's current state",
    413: "Body larger than CANARY_API_MAX_BODY_BYTES",
    415: f"Body not sent as {JSON}",
    422: "Invalid request",
}
# Operations of other modules' routers that answer 409 (their job has no result yet).
CONFLICTING = {
    ("PUT", "/v1/golden/runs/{run_id}/grades"),
    ("GET", "/v1/golden/runs/{run_id}/cases/{case_id}/{side}/image"),
}


def _error_statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    """The error statuses an operation can answer, from what it takes and who may call."""
    parameters = operation.get("parameters", [])
    security = operation.get("security", [])
    statuses = {status for status in ERRORS if str(status) in operation["responses"]}
    if (method.upper(), path) in CONFLICTING:
        statuses.add(409)
    if "requestBody" in operation:
        statuses |= {400, 413, 415, 422}
    if parameters:
        statuses.add(422)
    if any(parameter["in"] == "path" for parameter in parameters):
        statuses.add(404)
    if security:
        statuses.add(401)
    if any(roles for requirement in security for roles in requirement.values()):
        statuses.add(403)  # only keys with the listed roles may call it
    return statuses


def _document_errors(schema: dict[str, Any]) -> None:
    """Every operation lists its error answers, each an ErrorOut (FastAPI's own 422
    schema does not describe what our handlers send)."""
    ref = {"$ref": "#/components/schemas/ErrorOut"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            for status in sorted(_error_statuses(path, method, operation)):
                declared = responses.get(str(status), {}).get("description")
                keep = declared if declared and status != 422 else None
                responses[str(status)] = {
                    "description": keep or ERRORS[status],
                    "content": {JSON: {"schema": ref}},
                }
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorOut"] = ErrorOut.model_json_schema()
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)


def _publish_job_limits(schema: dict[str, Any], settings: Settings) -> None:
    """Put the limits validate_request enforces (from these settings) into JobRequest."""
    fields = schema["components"]["schemas"]["JobRequest"]["properties"]
    side = {"minimum": settings.min_side, "maximum": settings.max_side, "multipleOf": 8}
    limits = {
        "width": side,
        "height": side,
        "steps": {"maximum": settings.max_steps},
        "prompt": {"maxLength": settings.max_prompt_chars},
        "negative_prompt": {"maxLength": settings.max_prompt_chars},
    }
    for name, constraints in limits.items():
        # an optional field is an anyOf with null: the limits go on its non-null branch
        for branch in fields[name].get("anyOf", [fields[name]]):
            if branch.get("type") != "null":
                branch.update(constraints)


def _customise_openapi(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = FastAPI.openapi(app)  # FastAPI's own, cached on the app: patched in place
        _document_errors(schema)
        _publish_job_limits(schema, settings)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise it


def _serve_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the packaged bundle (swagger-ui-bundle-v2): no CDN, so the
    docs work on machines without internet access."""
    app.mount("/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/assets/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # no calls to swagger.io
        )


# ---------------------------------------------------------------- app

ACCEPTED = "Accepted (`sent` is false for a job kept until the job queue is reachable)"
Submitter = Annotated[Principal, Depends(require_role(ApiKeyRole.CLIENT, ApiKeyRole.OPERATOR))]


def _install_error_handlers(app: FastAPI) -> None:
    """Every error answer is an ErrorOut: ``{"detail": ..., "errors": [...]}``."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [printable(message) for message in _validation_messages(exc)]
        return JSONResponse({"detail": "invalid request", "errors": errors}, status_code=422)

    @app.exception_handler(InvalidJob)
    async def _invalid_job(_: Request, exc: InvalidJob) -> JSONResponse:
        errors = [printable(message) for message in exc.errors]
        return JSONResponse({"detail": "invalid job", "errors": errors}, status_code=422)

    # Starlette's class, so its own answers (unknown path, wrong method) take the shape too
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = printable(exc.detail) if isinstance(exc.detail, str) else exc.detail
        return JSONResponse(
            {"detail": detail, "errors": []}, status_code=exc.status_code, headers=exc.headers
        )


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
        dependencies=[Depends(_require_json_body), Depends(_storable_params)],
        # keys travel in headers, never cookies, so a body without a Content-Type cannot be
        # a cross-site form post riding on a login: read it as JSON, as clients expect
        strict_content_type=False,
        docs_url=None,  # served from the packaged Swagger UI below
        redoc_url=None,
    )
    app.add_middleware(BodySizeLimit, limit=settings.api_max_body_bytes)
    app.state.gateway = gateway
    app.state.verifier = verifier
    _install_error_handlers(app)
    _serve_docs(app)
    _customise_openapi(app, settings)

    def load_job(job_id: str, caller: Principal) -> Job:
        job = jobs.get_job(engine, job_id) if len(job_id) <= 36 else None
        # Clients only see their own jobs; someone else's is reported as absent.
        if job is None or (not caller.is_operator and job.api_key_id != caller.key_id):
            raise HTTPException(404, f"no job {job_id}")
        return job

    def require_pin_rights(requests: list[JobRequest], caller: Principal) -> None:
        if not caller.is_operator and any(r.model_version for r in requests):
            raise HTTPException(403, "only operator keys may choose model_version")

    def accepted(submitted: list[Submitted]) -> list[JobAccepted]:
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

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(
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
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> JobAccepted:
        """Queue one job. The experiment picks the version unless an operator pins it.

        The job is never lost: when the job queue cannot be reached the answer is still
        202 with the job id, with `sent: false`, and the job is sent when the queue is back.
        """
        if idempotency_key and not body.idempotency_key:
            body = body.model_copy(update={"idempotency_key": idempotency_key})
        require_pin_rights([body], caller)
        body = _scope_key(body, caller)
        submitted = gateway.submit(
            body, source="api", api_key_id=caller.key_id, may_pin_version=caller.is_operator
        )
        if not submitted.created:
            response.status_code = 200
        return accepted([submitted])[0]

    @app.post(
        "/v1/jobs:batch",
        status_code=202,
        response_model=BatchAccepted,
        responses={202: {"description": ACCEPTED}},
    )
    def submit_batch(body: BatchIn, caller: Submitter) -> BatchAccepted:
        """Queue up to the configured number of jobs; nothing is queued if any is invalid.

        As for one job, `sent: false` marks jobs kept for when the job queue is back.
        """
        if len(body.jobs) > settings.api_max_batch:
            raise InvalidJob([f"jobs: at most {settings.api_max_batch} per batch"])
        require_pin_rights(body.jobs, caller)
        prepared = gateway.prepare_all(
            [_scope_key(j, caller) for j in body.jobs], may_pin_version=caller.is_operator
        )
        batch = Batch(id=uuid.uuid4().hex, source="api", api_key_id=caller.key_id)
        record_batch(batch, [], engine)
        submitted = gateway.submit_many(
            prepared, source="api", batch_id=batch.id, api_key_id=caller.key_id
        )
        batch.created = sum(s.created for s in submitted)
        batch.duplicates = len(submitted) - batch.created
        record_batch(batch, [(i, s.job_id) for i, s in enumerate(submitted)], engine)
        return BatchAccepted(batch_id=batch.id, jobs=accepted(submitted))

    @app.get("/v1/jobs/{job_id}", response_model=JobOut, responses={404: {"model": ErrorOut}})
    def get_job(
        job_id: str,
        caller: Caller,
        request: Request,
        wait: Annotated[
            float,
            Query(ge=0, le=MAX_WAIT_S, description="Seconds to wait for the job to finish"),
        ] = 0,
    ) -> JobOut:
        job = load_job(job_id, caller)
        blind = not (caller.is_operator or settings.show_variant_to_clients)
        deadline = time.monotonic() + wait
        while job.status not in TERMINAL_STATUSES and time.monotonic() < deadline:
            time.sleep(WAIT_POLL_S)
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

    app.include_router(batches_router(settings, engine))
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
