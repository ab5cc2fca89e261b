"""The HTTP API's surface (issue 13): content types, error messages, body limits, the
OpenAPI schema, the offline /docs page and submission while the broker is down.

Real Redis and a real SQLite database; the docs page is opened in Debian's headless
Chromium with every request that leaves the machine blocked.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from canary.contracts import queues_for
from canary.settings import Settings
from gateway.auth import create_key
from gateway.http.app import create_app
from gateway.service import Gateway
from gateway.submit import Producer
from scheduler.maintenance import republish_unsent
from storage.models import ApiKeyRole, Job, JobStatus
from tasks.app import make_app
from tests.browser_support import chromium_page
from tests.http_server import serve
from tests.integration.conftest import Stack, local_stack

pytestmark = pytest.mark.integration

LIMIT = 20_000  # CANARY_API_MAX_BODY_BYTES in these tests
JOB = {"user_id": "u-1", "prompt": "a lighthouse at dusk", "seed": 1, "width": 64, "height": 64}
SCREENSHOT = Path("/tmp/docs.png")


@pytest.fixture
def stack(tmp_path: Path, clean_redis: str, model_dir: Path) -> Stack:
    stack = local_stack(tmp_path, clean_redis, model_dir)
    stack.settings = stack.settings.model_copy(update={"api_max_body_bytes": LIMIT})
    return stack


@pytest.fixture
def tokens(stack: Stack) -> dict[str, str]:
    return {
        role: create_key(stack.engine, role, ApiKeyRole(role))[1]
        for role in ("client", "operator", "events")
    }


@pytest.fixture
def client(stack: Stack) -> Iterator[TestClient]:
    with TestClient(create_app(stack.settings)) as client:
        yield client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def queued(stack: Stack) -> int:
    broker = redis.Redis.from_url(stack.settings.broker_url)
    return sum(broker.llen(q) for v in stack.settings.versions for q in queues_for(v))


def rows(stack: Stack) -> list[Job]:
    with Session(stack.engine) as session:
        return list(session.exec(select(Job)))


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


# ---------------------------------------------------------------- 1. content types

JSON_ROUTES = [
    ("POST", "/v1/jobs", "client"),
    ("POST", "/v1/jobs:batch", "client"),
    ("POST", "/v1/events", "events"),
    ("PUT", "/v1/golden/runs/no-such-run/grades", "operator"),
]


@pytest.mark.parametrize(("method", "path", "role"), JSON_ROUTES)
@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain; charset=utf-8"]
)
def test_a_body_that_is_not_json_is_415_naming_both_types(
    stack: Stack, tokens: dict[str, str], client: TestClient, method, path, role, content_type
) -> None:
    """What the README's `curl -d '{...}'` sends: JSON text labelled as a form."""
    headers = {**auth(tokens[role]), "Content-Type": content_type}
    response = client.request(method, path, content=json.dumps(JOB), headers=headers)
    assert response.status_code == 415, response.text
    assert response.json() == {
        "detail": f"unsupported Content-Type {content_type!r}: send the body as application/json",
        "errors": [],
    }
    assert queued(stack) == 0 and rows(stack) == []


def test_json_with_parameters_or_without_content_type_is_accepted(
    stack: Stack, tokens: dict[str, str], client: TestClient
) -> None:
    """No Content-Type at all is read as JSON; media type parameters do not matter."""
    for count, extra in enumerate(({}, {"Content-Type": "application/json; charset=utf-8"}), 1):
        headers = auth(tokens["client"]) | extra
        response = client.post("/v1/jobs", content=json.dumps(JOB), headers=headers)
        assert response.status_code == 202, response.text
        assert queued(stack) == count


# ---------------------------------------------------------------- 2. JSON error positions


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '{"user_id": "u-1", "prompt" "a lighthouse"}',
            "body: invalid JSON at line 1, column 29 (character 28): Expecting ':' delimiter",
        ),
        (
            '{"user_id": "u-1",\n "prompt": "a lighthouse"\n "steps": 3}',
            "body: invalid JSON at line 3, column 2 (character 46): Expecting ',' delimiter",
        ),
        (
            '{"user_id": "u-1",\r\n "prompt": "ünïcödé"\r\n  "steps": 3}',
            "body: invalid JSON at line 3, column 3 (character 44): Expecting ',' delimiter",
        ),
    ],
)
def test_invalid_json_is_reported_by_line_and_column(
    stack: Stack, tokens: dict[str, str], client: TestClient, body: str, message: str
) -> None:
    headers = {**auth(tokens["client"]), "Content-Type": "application/json"}
    response = client.post("/v1/jobs", content=body.encode(), headers=headers)
    assert response.status_code == 422, response.text
    assert response.json() == {"detail": "invalid request", "errors": [message]}
    assert queued(stack) == 0


# ---------------------------------------------------------------- 3. body size limit


def chunks(data: bytes, size: int = 4096) -> Iterator[bytes]:
    """A generator body: httpx sends it chunked, without Content-Length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_chunked_and_declared_bodies_over_the_limit_are_413(
    stack: Stack, tokens: dict[str, str]
) -> None:
    too_big = json.dumps({**JOB, "prompt": "x" * (LIMIT + 1)}).encode()
    fits = json.dumps(JOB).encode()
    expected = {"detail": f"request body larger than {LIMIT} bytes", "errors": []}
    headers = {**auth(tokens["client"]), "Content-Type": "application/json"}
    with serve(create_app(stack.settings)) as url, httpx.Client(base_url=url) as http:
        chunked = http.post("/v1/jobs", content=chunks(too_big), headers=headers)
        assert "content-length" not in chunked.request.headers
        assert chunked.request.headers["transfer-encoding"] == "chunked"
        assert (chunked.status_code, chunked.json()) == (413, expected)

        declared = http.post("/v1/jobs", content=too_big, headers=headers)
        assert declared.request.headers["content-length"] == str(len(too_big))
        assert (declared.status_code, declared.json()) == (413, expected)
        assert queued(stack) == 0

        small = http.post("/v1/jobs", content=chunks(fits, size=16), headers=headers)
        assert small.status_code == 202, small.text
        assert queued(stack) == 1


# ---------------------------------------------------------------- 4. OpenAPI and /docs


def test_bearer_auth_is_a_security_scheme_and_keeps_401_and_403(
    tokens: dict[str, str], client: TestClient
) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `canary keys create`, as `Authorization: Bearer <key>`",
    }
    paths = schema["paths"]
    assert {"bearer": ["client", "operator"]} in paths["/v1/jobs"]["post"]["security"]
    assert {"bearer": []} in paths["/v1/jobs/{job_id}"]["get"]["security"]
    assert {"bearer": ["events", "operator"]} in paths["/v1/events"]["post"]["security"]
    assert all(
        operation.get("security")
        for operations in paths.values()
        for operation in operations.values()
    )

    for headers in ({}, auth("cr_not-a-key"), {"Authorization": "Basic dTpw"}):
        missing = client.post("/v1/jobs", json=JOB, headers=headers)
        assert missing.status_code == 401
        assert missing.json() == {"detail": "missing or unknown API key", "errors": []}
        assert missing.headers["www-authenticate"] == "Bearer"
    assert client.post("/v1/jobs", json=JOB, headers={"X-API-Key": tokens["client"]}).is_success
    wrong_role = client.post("/v1/events", json={"events": [{}]}, headers=auth(tokens["client"]))
    assert wrong_role.status_code == 403
    assert wrong_role.json()["detail"] == "this needs a key with role events, operator"


def test_job_limits_of_the_apps_settings_are_in_the_schema(stack: Stack) -> None:
    settings = stack.settings.model_copy(
        update={"min_side": 128, "max_side": 1024, "max_steps": 60, "max_prompt_chars": 500}
    )
    with TestClient(create_app(settings)) as client:
        schema = client.get("/openapi.json").json()
    fields = schema["components"]["schemas"]["JobRequest"]["properties"]

    def integer(name: str) -> dict[str, Any]:
        return next(branch for branch in fields[name]["anyOf"] if branch["type"] == "integer")

    side_limits = {"type": "integer", "minimum": 128, "maximum": 1024, "multipleOf": 8}
    assert integer("width") == integer("height") == side_limits
    assert integer("steps")["maximum"] == 60
    assert fields["prompt"]["maxLength"] == fields["negative_prompt"]["maxLength"] == 500
    batch_items = schema["components"]["schemas"]["BatchIn"]["properties"]["jobs"]["items"]
    assert batch_items == {"$ref": "#/components/schemas/JobRequest"}


def test_every_operation_documents_its_errors_as_error_out(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(schema)
    error_out = {"$ref": "#/components/schemas/ErrorOut"}
    documented: dict[str, set[int]] = {}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            errors = {int(code) for code in operation["responses"] if int(code) >= 400}
            documented[f"{method.upper()} {path}"] = errors
            for code in errors:
                content = operation["responses"][str(code)]["content"]
                assert content == {"application/json": {"schema": error_out}}, (path, code)
    body = {400, 401, 403, 413, 415, 422}
    # 429: the limits of client keys, on every operation a client key may call
    assert documented["POST /v1/jobs"] == body | {429}
    assert documented["POST /v1/jobs:batch"] == body | {429}
    assert documented["POST /v1/events"] == body
    assert documented["PUT /v1/golden/runs/{run_id}/grades"] == body | {404, 409}
    assert documented["GET /v1/jobs/{job_id}"] == {401, 404, 422, 429}  # any key: no 403
    assert documented["GET /v1/jobs/{job_id}/image"] == {401, 404, 409, 422, 429}
    assert documented["GET /v1/golden/runs"] == {401, 403, 422}
    assert documented["GET /v1/experiments/{name}/report"] == {401, 403, 404, 422}
    assert schema["components"]["schemas"]["ErrorOut"]["required"] == ["detail"]


@pytest.fixture
def browser_page() -> Iterator[Any]:
    with chromium_page(1280, 1000) as page:
        yield page


def test_docs_work_without_internet(stack: Stack, browser_page: Any) -> None:
    from playwright.sync_api import Route, expect

    page = browser_page
    outside: list[str] = []

    def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_loopback)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    with serve(create_app(stack.settings)) as url:
        page.goto(f"{url}/docs")
        expect(page.locator(".opblock").first).to_be_visible(timeout=15_000)
        expect(page.get_by_role("button", name="Authorize")).to_be_visible()
        expect(page.locator(".opblock-summary-path", has_text="/v1/jobs:batch")).to_be_visible()
        expect(page.locator(".opblock .authorization__btn").first).to_be_visible()  # a lock
        page.screenshot(path=str(SCREENSHOT), full_page=False)
        page.get_by_role("button", name="Authorize").click()
        dialog = page.locator(".dialog-ux")
        expect(dialog).to_contain_text("bearer")
        expect(dialog).to_contain_text("X-API-Key")
    assert outside == [], "the docs page reached outside the machine"
    assert errors == []


# ---------------------------------------------------------------- 5. broker down


def test_jobs_accepted_while_the_broker_is_down_are_sent_when_it_is_back(
    stack: Stack, tokens: dict[str, str]
) -> None:
    down: Settings = stack.settings.model_copy(update={"redis_url": closed_port_url()})
    gateway = Gateway(down, stack.engine, make_app(down))
    headers = auth(tokens["client"])
    with TestClient(create_app(down, gateway=gateway)) as client:
        one = client.post("/v1/jobs", json=JOB, headers=headers)
        batch = client.post(
            "/v1/jobs:batch",
            json={"jobs": [{**JOB, "user_id": f"b-{i}"} for i in range(2)]},
            headers=headers,
        )
        keyed = {**headers, "Idempotency-Key": "order-1"}
        first = client.post("/v1/jobs", json=JOB, headers=keyed)
        replay = client.post("/v1/jobs", json=JOB, headers=keyed)
    assert one.status_code == 202, one.text
    assert one.json() | {"job_id": "-"} == {
        "job_id": "-",
        "status": "QUEUED",
        "created": True,
        "sent": False,
    }
    assert batch.status_code == 202, batch.text
    assert [(j["status"], j["sent"]) for j in batch.json()["jobs"]] == [("QUEUED", False)] * 2
    assert (first.status_code, replay.status_code) == (202, 200)
    assert replay.json()["job_id"] == first.json()["job_id"] and not replay.json()["sent"]

    job_ids = {one.json()["job_id"], first.json()["job_id"]}
    job_ids |= {j["job_id"] for j in batch.json()["jobs"]}
    kept = rows(stack)
    assert {row.id for row in kept} == job_ids
    for row in kept:  # kept for the outbox: QUEUED, unsent, not failed
        assert (row.status, row.enqueued_at, row.failure_kind) == (JobStatus.QUEUED, None, None)
    assert queued(stack) == 0

    # the broker is back: the outbox (run by beat) sends every kept job, once
    producer = Producer(stack.settings, stack.engine, stack.app)
    assert republish_unsent(producer, timedelta(0)) == len(job_ids)
    broker = redis.Redis.from_url(stack.settings.broker_url)
    messages = [
        json.loads(raw)
        for version in stack.settings.versions
        for queue in queues_for(version)
        for raw in broker.lrange(queue, 0, -1)
    ]
    assert {message["headers"]["id"] for message in messages} == job_ids
    assert all(row.enqueued_at is not None for row in rows(stack))
    assert republish_unsent(producer, timedelta(0)) == 0

    with TestClient(create_app(stack.settings)) as client:
        again = client.post("/v1/jobs", json=JOB, headers=keyed)
    assert (again.status_code, again.json()["sent"]) == (200, True)
    assert queued(stack) == len(job_ids)  # the replay sent nothing twice
