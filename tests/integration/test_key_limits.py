"""Limits per API key over HTTP, with real Redis and real SQLite and PostgreSQL: the
request rate shared by API processes (429 + Retry-After), the cap on unfinished jobs
(single jobs and whole batches, replays still answered), the keys that are not limited,
failing open without Redis, and the refusals in /metrics."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session, func, select

from gateway.auth import create_key
from gateway.http.app import create_app
from gateway.key_limits import RATE_KEY_PREFIX, RequestRateLimiter, set_key_limits
from storage import jobs
from storage.models import ApiKeyRole, Assignment, Batch, Job
from tests.http_server import serve
from tests.integration.conftest import Stack, fresh_database_url, make_stack
from tests.prometheus_checks import scrape_with

pytestmark = pytest.mark.integration

JOB = {"prompt": "a lantern in fog", "steps": 3, "width": 64, "height": 64}


@pytest.fixture(params=["sqlite", "postgresql"])
def stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    clean_redis: str,
    postgres_schema_url: str,
    model_dir: Path,
) -> Iterator[Stack]:
    database_url = fresh_database_url(request.param, tmp_path, postgres_schema_url)
    stack = make_stack(tmp_path, clean_redis, database_url, f"file://{tmp_path / 'o'}", model_dir)
    # short windows keep the waits short: 2 s instead of the default 10 s
    stack.settings = stack.settings.model_copy(update={"key_rate_window_s": 2})
    yield stack
    stack.engine.dispose()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def job(user: str, **extra: object) -> dict[str, object]:
    return {**JOB, "user_id": user, **extra}


def broker_messages(stack: Stack) -> int:
    """Every message waiting in the broker (the limiter's own keys left out)."""
    client = redis.Redis.from_url(stack.settings.broker_url)
    return sum(
        client.llen(key)
        for key in client.scan_iter()
        if not key.startswith(b"canary:") and client.type(key) == b"list"
    )


def count(stack: Stack, table: type) -> int:
    with Session(stack.engine) as session:
        return int(session.exec(select(func.count()).select_from(table)).one())


# ---------------------------------------------------------------- the request rate


def test_the_rate_is_shared_by_api_processes_and_answered_429_with_retry_after(
    stack: Stack,
) -> None:
    """Two apps on one Redis (two `canary api` processes) count into one window per key;
    the refusal is the API's error shape with an integer Retry-After, and after it the
    key may call again."""
    _, token = create_key(stack.engine, "app", ApiKeyRole.CLIENT, rate_per_s=1)  # 2 in any 2 s
    _, other = create_key(stack.engine, "other", ApiKeyRole.CLIENT, rate_per_s=1)
    with serve(create_app(stack.settings)) as first, serve(create_app(stack.settings)) as second:
        assert httpx.get(f"{first}/v1/jobs/nope", headers=auth(token)).status_code == 404
        assert httpx.get(f"{second}/v1/jobs/nope", headers=auth(token)).status_code == 404
        refused = httpx.get(f"{first}/v1/jobs/nope", headers=auth(token))
        assert refused.status_code == 429, refused.text
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 2
        assert refused.json() == {
            "detail": f"rate limit exceeded: this key may make 2 requests in any 2 s; "
            f"retry in {retry_after} s",
            "errors": [],
        }
        # a POST is counted the same way, and refused before anything is recorded
        post = httpx.post(f"{second}/v1/jobs", json=job("u-1"), headers=auth(token))
        assert post.status_code == 429 and count(stack, Job) == 0
        # another key has its own window
        assert httpx.get(f"{second}/v1/jobs/nope", headers=auth(other)).status_code == 404
        time.sleep(retry_after)
        again = httpx.post(f"{second}/v1/jobs", json=job("u-1"), headers=auth(token))
        assert again.status_code == 202, again.text


def test_operator_and_events_keys_are_not_rate_limited(stack: Stack) -> None:
    settings = stack.settings.model_copy(update={"key_rate_per_s": 0.5})  # 1 in any 2 s
    tokens = {role: create_key(stack.engine, role, ApiKeyRole(role))[1] for role in
              ("client", "operator", "events", "grader")}  # fmt: skip
    event = {"type": "login", "user_id": "u-1", "occurred_at": "2026-01-01T00:00:00Z"}
    with TestClient(create_app(settings)) as client:
        for n in range(6):
            operator = client.get("/v1/jobs/nope", headers=auth(tokens["operator"]))
            grader = client.get("/v1/golden/runs", headers=auth(tokens["grader"]))
            events = client.post(
                "/v1/events",
                json={"events": [{**event, "event_id": f"e-{n}"}]},
                headers=auth(tokens["events"]),
            )
            assert (operator.status_code, grader.status_code) == (404, 200)
            assert events.status_code == 200, events.text
        assert client.get("/v1/jobs/nope", headers=auth(tokens["client"])).status_code == 404
        assert client.get("/v1/jobs/nope", headers=auth(tokens["client"])).status_code == 429


def test_a_key_without_its_own_rate_has_the_default_and_zero_is_unlimited(stack: Stack) -> None:
    settings = stack.settings.model_copy(update={"key_rate_per_s": 0.5})
    key, token = create_key(stack.engine, "app", ApiKeyRole.CLIENT)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs/nope", headers=auth(token)).status_code == 404
        assert client.get("/v1/jobs/nope", headers=auth(token)).status_code == 429
        set_key_limits(stack.engine, key.id, rate_per_s=0)  # from the next request on
        assert all(
            client.get("/v1/jobs/nope", headers=auth(token)).status_code == 404 for _ in range(5)
        )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_without_redis_the_limiter_lets_every_request_through(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    _, token = create_key(stack.engine, "app", ApiKeyRole.CLIENT, rate_per_s=0.5)
    app = create_app(stack.settings)
    app.state.rate_limiter = RequestRateLimiter(f"redis://127.0.0.1:{closed_port()}/0", 2)
    with caplog.at_level(logging.WARNING, logger="gateway.key_limits"), TestClient(app) as client:
        answers = [client.get("/v1/jobs/nope", headers=auth(token)) for _ in range(5)]
        accepted = client.post("/v1/jobs", json=job("u-1"), headers=auth(token))
    assert [a.status_code for a in answers] == [404] * 5
    assert accepted.status_code == 202, accepted.text
    outage = [r.getMessage() for r in caplog.records if "cannot reach Redis" in r.getMessage()]
    assert len(outage) == 1, outage


# ---------------------------------------------------------------- unfinished jobs


def test_max_queued_refuses_new_jobs_answers_replays_and_frees_up_as_jobs_finish(
    stack: Stack,
) -> None:
    _, token = create_key(stack.engine, "app", ApiKeyRole.CLIENT, max_queued=2)
    _, operator = create_key(stack.engine, "ops", ApiKeyRole.OPERATOR)
    with TestClient(create_app(stack.settings)) as client:
        first = client.post("/v1/jobs", json=job("u-1"), headers={**auth(token),
                            "Idempotency-Key": "order-1"})  # fmt: skip
        second = client.post("/v1/jobs", json=job("u-2"), headers=auth(token))
        assert (first.status_code, second.status_code) == (202, 202)
        messages = broker_messages(stack)

        third = client.post("/v1/jobs", json=job("u-3"), headers=auth(token))
        assert third.status_code == 429, third.text
        assert third.headers["Retry-After"] == "5"
        assert third.json() == {
            "detail": "too many unfinished jobs: this key has 2 jobs queued or running and "
            "may have at most 2; retry when one has finished",
            "errors": [],
        }
        assert count(stack, Job) == 2 and broker_messages(stack) == messages

        # a replay of an accepted job is answered with that job, not refused
        replay = client.post("/v1/jobs", json=job("u-1"), headers={**auth(token),
                             "Idempotency-Key": "order-1"})  # fmt: skip
        assert replay.status_code == 200, replay.text
        assert replay.json()["job_id"] == first.json()["job_id"]
        # operators are not limited
        pinned = client.post("/v1/jobs", json=job("u-9", model_version="v1"),
                             headers=auth(operator))  # fmt: skip
        assert pinned.status_code == 202

        jobs.fail_unstarted(stack.engine, [first.json()["job_id"]], "error", "test")
        after = client.post("/v1/jobs", json=job("u-3"), headers=auth(token))
        assert after.status_code == 202, after.text


def test_a_batch_over_the_limit_is_refused_whole_and_leaves_nothing(stack: Stack) -> None:
    key, token = create_key(stack.engine, "app", ApiKeyRole.CLIENT, max_queued=3)
    with TestClient(create_app(stack.settings)) as client:
        assert client.post("/v1/jobs", json=job("u-0"), headers=auth(token)).status_code == 202
        before = {table: count(stack, table) for table in (Job, Batch, Assignment)}
        messages = broker_messages(stack)

        items = [job(f"new-{i}", idempotency_key=f"item-{i}") for i in range(3)]
        refused = client.post("/v1/jobs:batch", json={"jobs": items}, headers=auth(token))
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["detail"] == (
            "batch refused, nothing was queued: its 3 new jobs and the 1 this key has "
            "queued or running would make 4, over the key's limit of 3 unfinished jobs"
        )
        # no job, no batch, no first exposure of the new users, no message
        assert {table: count(stack, table) for table in (Job, Batch, Assignment)} == before
        assert broker_messages(stack) == messages

        fits = client.post("/v1/jobs:batch", json={"jobs": items[:2]}, headers=auth(token))
        assert fits.status_code == 202, fits.text
        # at the limit now: the same items again are replays, answered and not refused
        again = client.post("/v1/jobs:batch", json={"jobs": items[:2]}, headers=auth(token))
        assert again.status_code == 202, again.text
        assert [j["created"] for j in again.json()["jobs"]] == [False, False]
        assert [j["job_id"] for j in again.json()["jobs"]] == [
            j["job_id"] for j in fits.json()["jobs"]
        ]
        one_more = client.post("/v1/jobs:batch", json={"jobs": [items[2]]}, headers=auth(token))
        assert one_more.status_code == 429
        assert "its 1 new job and the 3" in one_more.json()["detail"]

        set_key_limits(stack.engine, key.id, max_queued=None)  # back to the default: 1000
        assert client.post("/v1/jobs:batch", json={"jobs": [items[2]]},
                           headers=auth(token)).status_code == 202  # fmt: skip


# ---------------------------------------------------------------- /metrics


def test_refusals_are_counted_by_reason_in_metrics(stack: Stack) -> None:
    # 2 requests in any 60 s: this test does not wait for a window to pass, and a long one
    # keeps a slow first request (PostgreSQL on a loaded machine) from ageing out of it
    # before the third is counted
    stack.settings = stack.settings.model_copy(update={"key_rate_window_s": 60})
    _, token = create_key(stack.engine, "app", ApiKeyRole.CLIENT, rate_per_s=1 / 30, max_queued=1)
    _, operator = create_key(stack.engine, "ops", ApiKeyRole.OPERATOR)
    # two API processes: the count is kept in the broker, so either one exports the total
    with (
        TestClient(create_app(stack.settings)) as one,
        TestClient(create_app(stack.settings)) as two,
    ):
        assert one.post("/v1/jobs", json=job("u-1"), headers=auth(token)).status_code == 202
        assert two.post("/v1/jobs", json=job("u-2"), headers=auth(token)).status_code == 429
        assert one.get("/v1/jobs/nope", headers=auth(token)).status_code == 429  # rate
        # a scrape leaves out what it read from the broker if the broker did not answer in
        # time (a loaded machine): the next one has it
        exposition = scrape_with(
            lambda: two.get("/metrics", headers=auth(operator)).text,
            ("canary_requests_refused_total",),
        )
    [family] = [
        f for f in text_string_to_metric_families(exposition) if f.name == "canary_requests_refused"
    ]
    assert family.type == "counter" and family.documentation
    assert all(s.name == "canary_requests_refused_total" for s in family.samples)
    assert {s.labels["reason"]: s.value for s in family.samples} == {"rate": 1.0, "queued": 1.0}
    # the windows are the limiter's own keys in the broker, one per key
    keys = redis.Redis.from_url(stack.settings.broker_url).keys(f"{RATE_KEY_PREFIX}:*")
    assert len(keys) == 1
