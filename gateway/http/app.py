"""The HTTP API: submit jobs, poll them, fetch images. A thin shell over the Gateway.

``create_app`` builds what the routes need once, puts it on ``app.state`` (read by the
dependencies in dependencies.py) and includes each resource module's ``router``; here
too: the body size limit, request checks, error answers, the OpenAPI schema and /docs.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.params import Form
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from canary.settings import Settings, get_settings
from gateway.auth import KeyVerifier
from gateway.events import EventIngestor
from gateway.http import batches, events, golden, jobs, metrics, reports, shadow_review
from gateway.http.errors import ErrorOut
from gateway.job_requests import InvalidJob
from gateway.key_limits import RequestRateLimiter
from gateway.service import Gateway
from gateway.text import printable, unstorable_reason
from storage.db import get_engine
from storage.models import ApiKeyRole
from storage.objects import ObjectStore, store_from_settings

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
    429: "Over a limit of the API key (see Retry-After)",
}
# Operations of the golden router that answer 409 (their job has no result yet).
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
    if any(
        not roles or ApiKeyRole.CLIENT in roles
        for requirement in security
        for roles in requirement.values()
    ):
        statuses.add(429)  # client keys may call it: their limits (gateway/key_limits.py)
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
    # built once, from these settings; the routers' dependencies (dependencies.py) read them
    app.state.settings = settings
    app.state.engine = engine
    app.state.store = store
    app.state.gateway = gateway
    app.state.experiments = gateway.experiments
    app.state.verifier = verifier
    app.state.rate_limiter = RequestRateLimiter(
        settings.broker_url, settings.key_rate_window_s, shown_url=settings.shown_broker_url
    )
    app.state.event_ingestor = EventIngestor(settings, engine)
    app.state.metrics_registry = metrics.registry_for(
        settings, engine, gateway.producer.app, gateway.experiments
    )
    _install_error_handlers(app)
    _serve_docs(app)
    _customise_openapi(app, settings)
    app.include_router(jobs.router)
    app.include_router(batches.router)
    app.include_router(golden.router)
    app.include_router(shadow_review.router)
    app.include_router(events.router)
    app.include_router(reports.router)
    app.include_router(metrics.router)
    return app
