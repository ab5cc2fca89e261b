"""An API developer meets the limits of their key: an operator gives keys a low request
rate and a cap on unfinished jobs with the CLI; the developer hits each over real HTTP,
gets 429 with Retry-After and a message that says what the limit is, waits, and is served;
`canary keys list` shows every key's limits and its unfinished jobs. All against
`canary api --workers 2` and `canary up` on the embedded defaults."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.journeys.conftest import Checkout, free_port

pytestmark = pytest.mark.integration

JOB = {"user_id": "dev-1", "prompt": "a lighthouse at dusk", "steps": 4, "seed": 11}


@pytest.fixture(scope="module")
def base_url(running_stack: Checkout) -> Iterator[str]:
    port = free_port()
    process = running_stack.start(f"canary api --port {port} --workers 2", "api")
    base = f"http://127.0.0.1:{port}"
    running_stack.wait_for_api(process, base)
    yield base


def create_key(checkout: Checkout, options: str) -> tuple[str, str]:
    """(key id, token) of a new key, as the operator's terminal shows them."""
    result = checkout.run(f"canary keys create {options}")
    key_id = re.search(r"created client key (\S+) ", result.stderr)
    assert key_id, result.stderr
    return key_id.group(1), result.stdout.strip()


def key_line(checkout: Checkout, name: str) -> str:
    listing = checkout.run("canary keys list").stdout
    [line] = [line for line in listing.splitlines() if line.rstrip().endswith(f"  {name}")]
    return line


def test_a_low_request_rate_is_answered_429_until_the_window_moves(
    running_stack: Checkout, base_url: str
) -> None:
    _, token = create_key(running_stack, "--name slow-app --rate 0.2")
    line = key_line(running_stack, "slow-app")
    assert "rate 0.2/s (2 in any 10 s)" in line and "queued 0 of 1000 default" in line

    headers = {"Authorization": f"Bearer {token}"}
    # a new connection each time: either API process may answer, they share the window
    accepted = httpx.post(f"{base_url}/v1/jobs", json=JOB, headers=headers, timeout=30)
    assert accepted.status_code == 202, accepted.text
    job_url = f"{base_url}/v1/jobs/{accepted.json()['job_id']}"
    assert httpx.get(job_url, headers=headers, timeout=30).status_code == 200
    refused = httpx.get(job_url, headers=headers, timeout=30)
    assert refused.status_code == 429, refused.text
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 10
    assert refused.json()["detail"] == (
        f"rate limit exceeded: this key may make 2 requests in any 10 s; retry in {retry_after} s"
    )

    time.sleep(retry_after)
    served = httpx.get(job_url, headers=headers, params={"wait": 60}, timeout=90)
    assert served.status_code == 200 and served.json()["status"] == "SUCCEEDED", served.text


def test_a_cap_on_unfinished_jobs_refuses_more_until_one_finishes(
    running_stack: Checkout, base_url: str
) -> None:
    key_id, token = create_key(running_stack, "--name one-at-a-time --max-queued 1")
    line = key_line(running_stack, "one-at-a-time")
    assert "rate 50/s default (500 in any 10 s)" in line and "of 1  " in line

    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=90
    ) as client:
        first = client.post("/v1/jobs", json={**JOB, "user_id": "dev-2"})
        assert first.status_code == 202, first.text
        second = client.post("/v1/jobs", json={**JOB, "user_id": "dev-3"})
        assert second.status_code == 429, second.text
        assert int(second.headers["Retry-After"]) >= 1
        assert second.json()["detail"] == (
            "too many unfinished jobs: this key has 1 job queued or running and may have "
            "at most 1; retry when one has finished"
        )
        # the refused job left nothing behind: only the first one is the key's
        assert re.search(r"queued [01] of 1  ", key_line(running_stack, "one-at-a-time"))

        done = client.get(f"/v1/jobs/{first.json()['job_id']}", params={"wait": 60}).json()
        assert done["status"] == "SUCCEEDED", done
        again = client.post("/v1/jobs", json={**JOB, "user_id": "dev-3"})
        assert again.status_code == 202, again.text

        # a batch that would go over the cap is refused whole, saying so
        batch = {"jobs": [{**JOB, "user_id": f"dev-{n}"} for n in (4, 5)]}
        refused = client.post("/v1/jobs:batch", json=batch)
        assert refused.status_code == 429, refused.text
        assert refused.json()["detail"].startswith("batch refused, nothing was queued: its 2 ")
        assert "over the key's limit of 1 unfinished jobs" in refused.json()["detail"]

        # the operator raises the cap; the very next request has it
        changed = running_stack.run(f"canary keys limits {key_id} --max-queued 3").stdout
        assert "of 3" in changed and "default" not in changed.split(",")[1]
        accepted = client.post("/v1/jobs:batch", json=batch)
        assert accepted.status_code == 202, accepted.text
    assert re.search(r"queued [0-3] of 3  ", key_line(running_stack, "one-at-a-time"))
