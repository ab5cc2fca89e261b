"""An API developer: keys -> POST with and without an Idempotency-Key -> poll -> image ->
the error cases, each with its status code and message; all over HTTP against
`canary api` and `canary up` running on the embedded defaults."""

from __future__ import annotations

import io
import json
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.journeys.conftest import Checkout, free_port

pytestmark = pytest.mark.integration

JOB = {"user_id": "dev-1", "prompt": "a lighthouse at dusk", "steps": 4, "seed": 11}


@pytest.fixture(scope="module", autouse=True)
def fault_injection(checkout: Checkout) -> None:
    # the documented test-only switch: a [[fault:...]] marker makes a real render fail
    checkout.env["CANARY_FAULT_INJECTION"] = "true"


@pytest.fixture(scope="module")
def api(running_stack: Checkout) -> Iterator[tuple[httpx.Client, httpx.Client, str]]:
    """(client-key client, operator-key client, base URL) on a running `canary api`, with
    two server processes as the operator's guide recommends on this machine's two cores."""
    port = free_port()
    process = running_stack.start(f"canary api --port {port} --workers 2", "api")
    base = f"http://127.0.0.1:{port}"
    running_stack.wait_for_api(process, base)
    client_token = running_stack.run("canary keys create --name app --role client").stdout
    operator_token = running_stack.run("canary keys create --name ops --role operator").stdout
    with (
        httpx.Client(base_url=base, headers=_auth(client_token), timeout=90) as client,
        httpx.Client(base_url=base, headers=_auth(operator_token), timeout=90) as operator,
    ):
        yield client, operator, base


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.strip()}"}


def test_submit_poll_and_fetch_the_image(api: tuple[httpx.Client, httpx.Client, str]) -> None:
    client, _, _ = api
    accepted = client.post("/v1/jobs", json=JOB)
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert body["created"] is True and body["sent"] is True and body["status"] == "QUEUED"
    job = client.get(f"/v1/jobs/{body['job_id']}", params={"wait": 60}).json()
    assert job["status"] == "SUCCEEDED", job
    assert job["width"] == 512 and job["steps"] == 4  # the version's default size
    assert "model_version" not in job or job["model_version"] is None  # blind to clients
    image = client.get(f"/v1/jobs/{body['job_id']}/image", follow_redirects=True)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (512, 512)


def test_an_idempotency_key_names_one_request(api: tuple[httpx.Client, httpx.Client, str]) -> None:
    client, _, _ = api
    key = {"Idempotency-Key": "order-42"}
    first = client.post("/v1/jobs", json=JOB, headers=key)
    again = client.post("/v1/jobs", json=JOB, headers=key)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["job_id"] == again.json()["job_id"]
    other = client.post("/v1/jobs", json={**JOB, "prompt": "a fox"}, headers=key)
    assert other.status_code == 422, other.text
    [message] = other.json()["errors"]
    assert f"already used for job {first.json()['job_id']} with a different request" in message
    assert "(prompt differ)" in message
    # a seed left out is drawn anew, but a replay without one is still the same request
    unseeded = {k: v for k, v in JOB.items() if k != "seed"}
    key2 = {"Idempotency-Key": "order-43"}
    assert client.post("/v1/jobs", json=unseeded, headers=key2).status_code == 202
    assert client.post("/v1/jobs", json=unseeded, headers=key2).status_code == 200


def test_a_form_encoded_body_is_415_naming_its_content_type(
    api: tuple[httpx.Client, httpx.Client, str], running_stack: Checkout
) -> None:
    _, _, base = api
    token = running_stack.run("canary keys create --name curl-user --role client").stdout.strip()
    # what `curl -d` sends without a Content-Type header
    result = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {token}",
         "-d", json.dumps(JOB), f"{base}/v1/jobs"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    body, code = result.stdout.rsplit("\n", 1)
    assert code == "415"
    assert "application/x-www-form-urlencoded" in json.loads(body)["detail"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({**JOB, "width": 2048}, 422, "width: at most 1024 on the version serving this user"),
        ({**JOB, "steps": 80}, 422, "steps: at most 50 on the version serving this user"),
        ({**JOB, "width": 100}, 422, "width: must be a multiple of 8"),
        ({"prompt": "no user"}, 422, "user_id: required when model_version is not given"),
        ({**JOB, "model_version": "v2"}, 403, "only operator keys may choose model_version"),
    ],
)
def test_bad_jobs_are_refused_at_submission_naming_the_limit(
    api: tuple[httpx.Client, httpx.Client, str], body: dict[str, object], status: int, message: str
) -> None:
    client, _, _ = api
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    answer = response.json()
    assert message in answer["detail"] + " ".join(answer["errors"])


def test_operators_get_the_pinned_versions_limits_by_name(
    api: tuple[httpx.Client, httpx.Client, str],
) -> None:
    _, operator, _ = api
    response = operator.post("/v1/jobs", json={**JOB, "model_version": "v2", "height": 1536})
    assert response.status_code == 422
    assert response.json()["errors"] == ["height: at most 1024 on model version v2, got 1536"]


def test_invalid_json_and_oversized_bodies(api: tuple[httpx.Client, httpx.Client, str]) -> None:
    client, _, _ = api
    broken = client.post(
        "/v1/jobs", content=b'{"user_id": "u", "prompt": "x" "seed": 1}',
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert broken.status_code == 422
    assert "invalid JSON at line 1, column 32" in broken.json()["errors"][0]

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 65536

    huge = client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert huge.status_code == 413 and "larger than" in huge.json()["detail"]


def test_a_batch_over_http_can_be_followed(api: tuple[httpx.Client, httpx.Client, str]) -> None:
    client, operator, _ = api
    jobs = [{**JOB, "user_id": f"dev-{i}", "seed": i} for i in range(3)]
    jobs[1] = {**jobs[1], "prompt": "a black cat [[fault:nan]]"}
    accepted = client.post("/v1/jobs:batch", json={"jobs": jobs})
    assert accepted.status_code == 202, accepted.text
    batch_id = accepted.json()["batch_id"]
    deadline = time.monotonic() + 120
    report = client.get(f"/v1/batches/{batch_id}").json()
    while not report["done"] and time.monotonic() < deadline:
        time.sleep(0.5)
        report = client.get(f"/v1/batches/{batch_id}").json()
    assert report["counts"]["SUCCEEDED"] == 2 and report["counts"]["FAILED"] == 1
    assert [(f["item"], f["failure_kind"]) for f in report["failed"]] == [(1, "nan_output")]
    assert all("/image" in image["url"] for image in report["images"])
    assert all(image.get("model_version") is None for image in report["images"])
    assert "model_version" in operator.get(f"/v1/batches/{batch_id}").json()["images"][0]


def test_another_clients_batch_is_not_found(
    api: tuple[httpx.Client, httpx.Client, str], running_stack: Checkout
) -> None:
    client, _, base = api
    batch_id = client.post("/v1/jobs:batch", json={"jobs": [JOB]}).json()["batch_id"]
    token = running_stack.run("canary keys create --name other --role client").stdout
    with httpx.Client(base_url=base, headers=_auth(token)) as other:
        response = other.get(f"/v1/batches/{batch_id}")
    assert response.status_code == 404 and response.json()["detail"] == f"no batch {batch_id}"


def test_the_docs_are_served_without_a_cdn(api: tuple[httpx.Client, httpx.Client, str]) -> None:
    client, _, _ = api
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn." not in page.text and "unpkg" not in page.text
    schema = client.get("/openapi.json").json()
    assert "bearer" in schema["components"]["securitySchemes"]
    width = schema["components"]["schemas"]["JobRequest"]["properties"]["width"]
    assert json.dumps(width).count("2048") >= 1


def test_a_running_api_follows_a_restarted_local_stack(
    api: tuple[httpx.Client, httpx.Client, str], running_stack: Checkout
) -> None:
    """The local broker keeps its address, so an API started earlier keeps working."""
    client, _, _ = api
    assert running_stack.stack is not None
    running_stack.stop(running_stack.stack)
    down = client.post("/v1/jobs", json={**JOB, "user_id": "dev-down", "seed": 31})
    assert down.status_code == 202 and down.json()["sent"] is False  # kept for later
    running_stack.stack = running_stack.start_stack()
    after = client.post("/v1/jobs", json={**JOB, "user_id": "dev-after", "seed": 32})
    assert after.status_code == 202 and after.json()["sent"] is True
    job = client.get(f"/v1/jobs/{after.json()['job_id']}", params={"wait": 60}).json()
    assert job["status"] == "SUCCEEDED", job
