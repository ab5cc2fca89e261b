"""The HTTP API contract, with real Redis, a real database and real worker processes."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from canary.contracts import queues_for
from gateway.auth import create_key
from gateway.http.app import create_app
from storage.models import ApiKeyRole
from tests.integration.conftest import Stack, fresh_database_url, make_stack

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "default_version": "v1",
    "experiments": [
        {
            "name": "v2-canary",
            "seed": "api-test",
            "baseline": "v1",
            "candidate": "v2",
            "stages": [{"name": "50%", "shares": {"default": 0.5}}],
            "stage": "50%",
        }
    ],
}


@pytest.fixture(params=["sqlite", "postgresql"])
def api_stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    clean_redis: str,
    postgres_schema_url: str,
    model_dir: Path,
) -> Iterator[tuple[Stack, dict[str, str], TestClient]]:
    experiment_file = tmp_path / "experiments.yaml"
    experiment_file.write_text(yaml.safe_dump(EXPERIMENT))
    database_url = fresh_database_url(request.param, tmp_path, postgres_schema_url)
    stack = make_stack(
        tmp_path,
        clean_redis,
        database_url,
        f"file://{tmp_path / 'objects'}",
        model_dir,
        CANARY_EXPERIMENT_FILE=str(experiment_file),
        CANARY_API_MAX_BATCH=5,
        CANARY_API_MAX_BODY_BYTES=20_000,
    )
    stack.settings = stack.settings.model_copy(
        update={
            "experiment_file": experiment_file,
            "api_max_batch": 5,
            "api_max_body_bytes": 20_000,
        }
    )
    tokens = {
        role: create_key(stack.engine, role, ApiKeyRole(role.rstrip("2")))[1]
        for role in ("client", "client2", "operator")
    }
    with TestClient(create_app(stack.settings)) as client:
        yield stack, tokens, client
    stack.stop_workers()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def queued(stack: Stack) -> int:
    client = redis.Redis.from_url(stack.settings.broker_url)
    return sum(client.llen(q) for v in stack.settings.versions for q in queues_for(v))


JOB = {"user_id": "u-1", "prompt": "a lantern in fog", "steps": 3, "width": 64, "height": 64}


def test_submit_poll_and_fetch_with_real_workers(api_stack) -> None:
    stack, tokens, client = api_stack
    for version in ("v1", "v2"):
        stack.start_worker(version)
    job_ids = []
    for i in range(6):
        response = client.post(
            "/v1/jobs",
            json={**JOB, "user_id": f"user-{i}", "seed": i},
            headers=auth(tokens["client"]),
        )
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "QUEUED"
        job_ids.append(response.json()["job_id"])

    deadline = time.monotonic() + 120
    pending = set(job_ids)
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            body = client.get(f"/v1/jobs/{job_id}", headers=auth(tokens["client"])).json()
            if body["status"] in ("SUCCEEDED", "FAILED"):
                pending.discard(job_id)
        time.sleep(0.3)
    assert not pending, stack.log("worker-v1-0") + stack.log("worker-v2-1")

    versions = set()
    for job_id in job_ids:
        seen_by_client = client.get(f"/v1/jobs/{job_id}", headers=auth(tokens["client"])).json()
        assert seen_by_client["status"] == "SUCCEEDED"
        assert seen_by_client["model_version"] is None  # hidden from end-user keys
        assert seen_by_client["image_url"].endswith(f"/v1/jobs/{job_id}/image")
        seen_by_operator = client.get(f"/v1/jobs/{job_id}", headers=auth(tokens["operator"])).json()
        assert seen_by_operator["experiment"] == "v2-canary"
        assert (
            seen_by_operator["model_version"]
            == {"baseline": "v1", "candidate": "v2"}[seen_by_operator["arm"]]
        )
        versions.add(seen_by_operator["model_version"])
        image = client.get(f"/v1/jobs/{job_id}/image", headers=auth(tokens["client"]))
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(image.content)).size == (64, 64)
    assert versions == {"v1", "v2"}  # six users at 50%: both arms served (fixed seed)


def test_idempotency_key_returns_the_same_job_once(api_stack) -> None:
    stack, tokens, client = api_stack
    headers = {**auth(tokens["client"]), "Idempotency-Key": "order-77"}
    first = client.post("/v1/jobs", json=JOB, headers=headers)
    second = client.post("/v1/jobs", json=JOB, headers=headers)
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["job_id"] == second.json()["job_id"]
    assert second.json()["created"] is False
    assert queued(stack) == 1
    # keys are scoped per API key: another client's identical key is another job
    other = client.post(
        "/v1/jobs", json=JOB, headers={**auth(tokens["client2"]), "Idempotency-Key": "order-77"}
    )
    assert other.status_code == 202 and other.json()["job_id"] != first.json()["job_id"]


def test_authentication_and_roles(api_stack) -> None:
    _, tokens, client = api_stack
    assert client.post("/v1/jobs", json=JOB).status_code == 401
    assert client.post("/v1/jobs", json=JOB, headers=auth("cr_not-a-key")).status_code == 401
    assert (
        client.post("/v1/jobs", json=JOB, headers={"X-API-Key": tokens["client"]}).status_code
        == 202
    )
    pinned = {**JOB, "model_version": "v2"}
    forbidden = client.post("/v1/jobs", json=pinned, headers=auth(tokens["client"]))
    assert forbidden.status_code == 403 and "operator" in forbidden.json()["detail"]
    allowed = client.post("/v1/jobs", json=pinned, headers=auth(tokens["operator"]))
    assert allowed.status_code == 202
    mine = client.post("/v1/jobs", json=JOB, headers=auth(tokens["client"])).json()["job_id"]
    assert client.get(f"/v1/jobs/{mine}", headers=auth(tokens["client2"])).status_code == 404
    assert client.get(f"/v1/jobs/{mine}", headers=auth(tokens["operator"])).status_code == 200
    assert "api_keys" not in client.get("/openapi.json").text  # schema is public, keys are not


def test_revoked_key_is_refused_at_once(api_stack) -> None:
    """Revocation takes effect on the next request of a running API, not after a cache
    expires (the key was just used, so a cache would hold its answer)."""
    stack, tokens, client = api_stack
    from gateway.auth import list_keys, revoke_key

    key = next(k for k in list_keys(stack.engine) if k.name == "client2")
    assert client.get("/v1/jobs/x", headers=auth(tokens["client2"])).status_code == 404
    assert revoke_key(stack.engine, key.id)
    assert client.get("/v1/jobs/x", headers=auth(tokens["client2"])).status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({**JOB, "prompt": ""}, 422, "prompt"),
        ({**JOB, "width": 100}, 422, "width: must be a multiple of 8"),
        ({**JOB, "steps": "many"}, 422, "steps"),
        ({**JOB, "colour": "red"}, 422, "colour: unknown field"),
        ({k: v for k, v in JOB.items() if k != "user_id"}, 422, "user_id: required"),
        ({**JOB, "prompt": "x" * 30_000}, 413, "larger than"),
        ([1, 2], 422, "body"),
    ],
)
def test_bad_input_is_a_clear_4xx_and_enqueues_nothing(api_stack, body, status, fragment) -> None:
    stack, tokens, client = api_stack
    response = client.post("/v1/jobs", json=body, headers=auth(tokens["client"]))
    assert response.status_code == status, response.text
    assert fragment in response.text
    assert queued(stack) == 0


def test_malformed_json_unknown_job_and_missing_image(api_stack) -> None:
    _, tokens, client = api_stack
    headers = {**auth(tokens["client"]), "Content-Type": "application/json"}
    assert client.post("/v1/jobs", content=b"{not json", headers=headers).status_code == 422
    assert client.get("/v1/jobs/nope", headers=auth(tokens["client"])).status_code == 404
    job_id = client.post("/v1/jobs", json=JOB, headers=auth(tokens["client"])).json()["job_id"]
    missing = client.get(f"/v1/jobs/{job_id}/image", headers=auth(tokens["client"]))
    assert missing.status_code == 409 and "QUEUED" in missing.json()["detail"]


def test_batch_is_all_or_nothing_and_bounded(api_stack) -> None:
    stack, tokens, client = api_stack
    good = [{**JOB, "user_id": f"b-{i}"} for i in range(3)]
    bad = [good[0], {**JOB, "height": 7}, good[2]]
    rejected = client.post("/v1/jobs:batch", json={"jobs": bad}, headers=auth(tokens["client"]))
    assert rejected.status_code == 422
    assert any(e.startswith("jobs.1.height") for e in rejected.json()["errors"]), rejected.text
    assert queued(stack) == 0
    too_many = client.post(
        "/v1/jobs:batch", json={"jobs": [JOB] * 6}, headers=auth(tokens["client"])
    )
    assert too_many.status_code == 422 and "at most 5" in too_many.text
    accepted = client.post("/v1/jobs:batch", json={"jobs": good}, headers=auth(tokens["client"]))
    assert accepted.status_code == 202
    assert len({j["job_id"] for j in accepted.json()["jobs"]}) == 3
    assert queued(stack) == 3


def test_s3_images_are_served_by_presigned_url(
    tmp_path: Path, clean_redis: str, model_dir: Path, s3_bucket_url: tuple[str, str]
) -> None:
    import urllib.request

    from sqlmodel import Session

    from storage.db import get_engine, init_db
    from storage.models import Job
    from storage.objects import open_store

    bucket_url, endpoint = s3_bucket_url
    database_url = f"sqlite:///{tmp_path / 'api.db'}"
    init_db(get_engine(database_url))
    stack = make_stack(
        tmp_path, clean_redis, database_url, bucket_url, model_dir, S3_ENDPOINT_URL=endpoint
    )
    _, token = create_key(stack.engine, "ops", ApiKeyRole.OPERATOR)
    store = open_store(bucket_url, endpoint_url=endpoint)
    store.put("renders/done-1.png", b"\x89PNG fake", content_type="image/png")
    with Session(stack.engine) as session:
        session.add(
            Job(
                id="done-1",
                model_version="v1",
                prompt="p",
                seed=1,
                steps=1,
                guidance=7.5,
                width=64,
                height=64,
                status="SUCCEEDED",
                image_key="renders/done-1.png",
            )
        )
        session.commit()
    with TestClient(create_app(stack.settings)) as client:
        body = client.get("/v1/jobs/done-1", headers=auth(token)).json()
        assert body["image_url"].startswith(endpoint) and "Signature=" in body["image_url"]
        with urllib.request.urlopen(body["image_url"], timeout=10) as response:
            assert response.read() == b"\x89PNG fake"
        redirect = client.get("/v1/jobs/done-1/image", headers=auth(token), follow_redirects=False)
        assert redirect.status_code == 307 and redirect.headers["location"].startswith(endpoint)
