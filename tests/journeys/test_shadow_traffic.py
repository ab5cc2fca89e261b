"""An operator runs an experiment at `internal` with shadow traffic on: API users' live jobs
are served by the baseline, a copy of each renders on the candidate in the background, the
operator sees the paired results and the shadow-health verdict in `canary shadow status`,
no client key can see a shadow job or its image, and the A/B report counts none of them.
All on `canary up` with the embedded defaults."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.journeys.conftest import Checkout, free_port

pytestmark = pytest.mark.integration

USERS = 4
EXPERIMENTS = """\
default_version: v1
experiments:
  - name: v2-canary
    seed: journey-shadow
    baseline: v1
    candidate: v2
    stages:
      - {name: internal, shares: {default: 0.0}, shadow: 1.0}
      - {name: 5%, shares: {default: 0.05}}
    stage: internal
"""


@pytest.fixture(scope="module", autouse=True)
def experiment_file(checkout: Checkout) -> None:
    (checkout.root / ".canary").mkdir(exist_ok=True)
    (checkout.root / ".canary" / "experiments.yaml").write_text(EXPERIMENTS)
    # a verdict from a handful of pairs: generous margins (the defaults need hundreds)
    checkout.env.update(
        CANARY_SHADOW_MIN_PAIRS=str(USERS),
        CANARY_SHADOW_MAX_FAILURE_INCREASE="0.7",
        CANARY_SHADOW_MAX_P95_RATIO="50",
    )


@pytest.fixture(scope="module")
def api(running_stack: Checkout) -> Iterator[tuple[Checkout, httpx.Client, str, str]]:
    port = free_port()
    process = running_stack.start(f"canary api --port {port}", "api")
    base = f"http://127.0.0.1:{port}"
    running_stack.wait_for_api(process, base)
    client_key = running_stack.run("canary keys create --name app --role client").stdout.strip()
    operator_key = running_stack.run("canary keys create --name ops --role operator").stdout
    with httpx.Client(base_url=base, timeout=90) as client:
        yield running_stack, client, client_key, operator_key.strip()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def shadow_status(stack: Checkout) -> dict:  # type: ignore[type-arg]
    shown = stack.run("canary shadow status v2-canary --json")
    document: dict = json.loads(shown.stdout)  # type: ignore[type-arg]
    return document


def test_shadow_copies_render_on_the_candidate_unseen_by_users(
    api: tuple[Checkout, httpx.Client, str, str],
) -> None:
    stack, client, client_key, operator_key = api
    live_ids = []
    for n in range(USERS):
        answer = client.post(
            "/v1/jobs",
            json={"user_id": f"user-{n}", "prompt": f"a harbour at dawn {n}", "steps": 2},
            headers=bearer(client_key),
        )
        assert answer.status_code == 202, answer.text
        live_ids.append(answer.json()["job_id"])
    for job_id in live_ids:
        job = client.get(f"/v1/jobs/{job_id}?wait=60", headers=bearer(client_key)).json()
        assert job["status"] == "SUCCEEDED", job

    deadline = time.monotonic() + 120
    while (doc := shadow_status(stack))["comparison"]["overall"]["pairs"] < USERS:
        assert time.monotonic() < deadline, f"shadow pairs did not finish: {doc}\n{stack.logs()}"
        time.sleep(1)
    assert doc["jobs"]["succeeded"] == USERS and doc["counters"]["sampled"] == USERS
    assert doc["comparison"]["overall"]["image_distance"]["pairs"] == USERS
    assert doc["comparison"]["health"]["verdict"] == "pass", doc["comparison"]["health"]
    text = stack.run("canary shadow status v2-canary").stdout
    assert "shadow health: pass" in text and "pairs that differ most" in text

    shadow_ids = [pair["shadow_id"] for pair in doc["comparison"]["worst_pairs"]]
    assert {pair["live_id"] for pair in doc["comparison"]["worst_pairs"]} == set(live_ids)
    for shadow_id in shadow_ids:
        # the client never sees a shadow job or its image
        assert client.get(f"/v1/jobs/{shadow_id}", headers=bearer(client_key)).status_code == 404
        image = client.get(f"/v1/jobs/{shadow_id}/image", headers=bearer(client_key))
        assert image.status_code == 404
        # the operator does, rendered by the candidate, stored apart from users' images
        seen = client.get(f"/v1/jobs/{shadow_id}", headers=bearer(operator_key)).json()
        assert seen["status"] == "SUCCEEDED" and seen["model_version"] == "v2"
        stored = client.get(f"/v1/jobs/{shadow_id}/image", headers=bearer(operator_key))
        assert stored.status_code == 200 and stored.content.startswith(b"\x89PNG")
    assert len(list((stack.root / ".canary" / "objects" / "shadow").glob("*.png"))) == USERS
    # Prometheus counts the copies as their own source, never as the candidate's live jobs
    exposition = client.get("/metrics", headers=bearer(operator_key)).text
    finished = {
        (s.labels["version"], s.labels["source"]): s.value
        for family in text_string_to_metric_families(exposition)
        if family.name == "canary_jobs_finished"
        for s in family.samples
        if s.labels["outcome"] == "succeeded"
    }
    assert finished[("v2", "shadow")] == USERS and ("v2", "live") not in finished
    assert finished[("v1", "live")] == USERS

    today = datetime.now(UTC).date().isoformat()
    report = json.loads(stack.run(f"canary report v2-canary --date {today} --full --json").stdout)
    assert report["users"] == {"baseline": USERS, "candidate": 0}
    p95 = report["latency_p95"]["overall"]
    assert p95["candidate"] is None and p95["baseline"]["n"] == USERS

    # a gate input: at internal the candidate may leave only on a passing shadow verdict
    assert report["shadow"]["required"] and report["shadow"]["health"]["verdict"] == "pass"
    (check,) = [c for c in report["gates"]["checks"] if c["name"] == "shadow health"]
    assert check["status"] == "pass", check
    assert check["detail"] == f"{USERS} live jobs copied to the candidate and compared"
    page = stack.root / "dashboard.html"
    stack.run(f"canary report v2-canary --date {today} --full --html {page}")
    assert "Shadow traffic: <span class='chip ok'>pass</span>" in page.read_text()
    # `canary status` names the stage's shadow share (its verdict comes with the daily
    # dashboard, which the scheduler writes)
    (entry,) = json.loads(stack.run("canary status --json").stdout)["experiments"]
    assert entry["shadow"] == {
        "share": 1.0, "verdict": None, "pairs": None, "gate": False, "day": None,
    }  # fmt: skip
    assert "100% copied; no verdict yet" in stack.run("canary status").stdout
