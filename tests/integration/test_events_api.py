"""POST /v1/events on SQLite and PostgreSQL: per-event rejection, dedupe, keys, limits."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from gateway.auth import create_key
from gateway.http.app import create_app
from storage import jobs
from storage.models import ApiKeyRole, Event, Job, utcnow
from tests.integration.conftest import Stack, fresh_database_url, make_stack

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def events_api(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    clean_redis: str,
    postgres_schema_url: str,
    model_dir: Path,
) -> Iterator[tuple[Stack, dict[str, str], TestClient]]:
    database_url = fresh_database_url(request.param, tmp_path, postgres_schema_url)
    stack = make_stack(
        tmp_path, clean_redis, database_url, f"file://{tmp_path / 'objects'}", model_dir
    )
    stack.settings = stack.settings.model_copy(update={"api_max_events": 50})
    jobs.insert_new_jobs(
        stack.engine,
        [
            Job(
                id=f"job-{user}",
                user_id=user,
                model_version="v1",
                prompt="p",
                seed=1,
                steps=1,
                guidance=1.0,
                width=64,
                height=64,
            )
            for user in ("ann", "ben")
        ],
    )
    tokens = {
        role.value: create_key(stack.engine, role.value, role)[1]
        for role in (ApiKeyRole.EVENTS, ApiKeyRole.CLIENT, ApiKeyRole.OPERATOR)
    }
    with TestClient(create_app(stack.settings)) as client:
        yield stack, tokens, client


def post(client: TestClient, token: str, events: list) -> tuple[int, dict]:
    response = client.post(
        "/v1/events", json={"events": events}, headers={"Authorization": f"Bearer {token}"}
    )
    return response.status_code, response.json()


def view(event_id: str, user: str = "ann", **extra: object) -> dict:
    return {
        "event_id": event_id,
        "type": "image_viewed",
        "user_id": user,
        "job_id": f"job-{user}",
        "occurred_at": utcnow().isoformat(),
        "dwell_ms": 16_000,
        **extra,
    }


def stored(stack: Stack) -> dict[str, Event]:
    with Session(stack.engine) as session:
        return {e.id: e for e in session.exec(select(Event))}


def test_bad_events_are_rejected_with_reasons_and_good_ones_kept(
    events_api: tuple[Stack, dict[str, str], TestClient],
) -> None:
    stack, tokens, client = events_api
    now = utcnow()
    batch = [
        view("e1"),
        {"event_id": "e2", "type": "login", "user_id": "ann", "occurred_at": now.isoformat()},
        view("e3", dwell_ms=-5),
        {
            "event_id": "e4",
            "type": "feedback_reported",
            "user_id": "ann",
            "job_id": "job-ann",
            "occurred_at": now.isoformat(),
        },
        view("e5", occurred_at=(now + timedelta(hours=1)).isoformat()),
        view("e6", occurred_at=(now - timedelta(days=30)).isoformat()),
        view("e7", job_id="job-ben"),
        view("e8", job_id="missing"),
        "not an object",
        {"event_id": "e10", "type": "teleported", "user_id": "ann", "occurred_at": now.isoformat()},
        view("e11", occurred_at="2026-11-25T10:00:00"),  # no time zone
        view("e1"),  # the same id twice in one batch
        {
            "event_id": "e13",
            "type": "download_clicked",
            "user_id": "ben",
            "job_id": "job-ben",
            "occurred_at": now.isoformat(),
        },
    ]
    status, body = post(client, tokens["events"], batch)
    assert status == 200
    assert body["accepted"] == 3 and body["duplicates"] == 1
    reasons = {r["index"]: " ".join(r["errors"]) for r in body["rejected"]}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert "dwell_ms" in reasons[2] and "greater than or equal to 0" in reasons[2]
    assert "reason: required for feedback_reported" in reasons[3]
    assert "outside" in reasons[4] and "outside" in reasons[5]
    assert reasons[6] == "job_id: the job is another user's"
    assert reasons[7] == "job_id: no job missing"
    assert "must be an object" in reasons[8]
    assert "type" in reasons[9]
    assert "timezone" in reasons[10]
    assert {r["event_id"] for r in body["rejected"] if r["index"] == 2} == {"e3"}
    rows = stored(stack)
    assert set(rows) == {"e1", "e2", "e13"}
    assert rows["e1"].dwell_ms == 16_000 and rows["e1"].job_id == "job-ann"

    # a client retrying the batch stores nothing twice
    status, again = post(client, tokens["events"], batch)
    assert again["accepted"] == 0 and again["duplicates"] == 4
    assert len(stored(stack)) == 3


def test_keys_and_limits(events_api: tuple[Stack, dict[str, str], TestClient]) -> None:
    _, tokens, client = events_api
    assert post(client, tokens["client"], [view("x")])[0] == 403
    assert client.post("/v1/events", json={"events": [view("x")]}).status_code == 401
    assert post(client, tokens["operator"], [view("x")])[1]["accepted"] == 1
    status, body = post(client, tokens["events"], [view(f"b{i}") for i in range(51)])
    assert status == 422 and "at most 50" in body["detail"]
    assert post(client, tokens["events"], [])[0] == 422
    # the events key writes only: it reads no job
    headers = {"Authorization": f"Bearer {tokens['events']}"}
    assert client.get("/v1/jobs/job-ann", headers=headers).status_code == 404
    assert (
        client.post("/v1/jobs", json={"prompt": "x", "user_id": "u"}, headers=headers).status_code
        == 403
    )
