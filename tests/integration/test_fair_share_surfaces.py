"""Fair share where an operator sees it: `/metrics` (canary_jobs_waiting), `canary status`
(the "Waiting per tenant" table and its JSON), `canary status BATCH_ID` and `canary
submit` (jobs held), and `canary keys` (share weights). Real Redis and SQLite, no workers:
nothing is taken from the queue, so the held and queued counts stay put."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth import create_key
from gateway.http.app import create_app
from storage.models import ApiKeyRole
from tests.integration.conftest import PROJECT_ROOT, Stack, local_stack
from tests.prometheus_checks import assert_prometheus_conventions

pytestmark = pytest.mark.integration

SHARE = 3  # CANARY_FAIR_SHARE_QUEUED in these tests


@pytest.fixture
def stack(tmp_path: Path, clean_redis: str) -> Stack:
    made = local_stack(
        tmp_path, clean_redis, tmp_path / "models", CANARY_FAIR_SHARE_QUEUED=str(SHARE)
    )
    made.env.pop("CANARY_EXPERIMENT_FILE", None)
    made.env["COLUMNS"] = "200"
    return made


def canary(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canary.cli", *args],
        env=stack.env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def submit(stack: Stack, n: int, *, key_id: str | None = None, batch_id: str | None = None) -> None:
    gateway = stack.gateway()
    jobs = [
        gateway.prepare({"prompt": f"scene {i}", "model_version": "v1", "steps": 2, "seed": i})
        for i in range(n)
    ]
    gateway.submit_many(jobs, api_key_id=key_id, batch_id=batch_id, source="bulk")


def three_tenants(stack: Stack) -> None:
    """alpha (weight 2, cap 6): 10 jobs; beta (cap 3): 4; a CLI batch without a key: 2."""
    alpha, _ = create_key(stack.engine, "alpha", ApiKeyRole.CLIENT, share_weight=2.0)
    beta, _ = create_key(stack.engine, "beta", ApiKeyRole.CLIENT)
    submit(stack, 10, key_id=alpha.id)
    submit(stack, 4, key_id=beta.id)
    submit(stack, 2, batch_id="b1")


def test_metrics_export_held_and_queued_jobs_per_tenant(stack: Stack) -> None:
    three_tenants(stack)
    _, operator = create_key(stack.engine, "ops", ApiKeyRole.OPERATOR)
    with TestClient(create_app(stack.settings)) as client:
        exposition = client.get("/metrics", headers={"Authorization": f"Bearer {operator}"}).text
    assert_prometheus_conventions(exposition)
    [family] = [
        f for f in text_string_to_metric_families(exposition) if f.name == "canary_jobs_waiting"
    ]
    assert family.type == "gauge"
    assert "held" in family.documentation and "queued" in family.documentation
    found = {
        (s.labels["version"], s.labels["tenant"], s.labels["state"]): s.value
        for s in family.samples
    }
    assert found == {
        ("v1", "key:alpha", "held"): 4, ("v1", "key:alpha", "queued"): 6,
        ("v1", "key:beta", "held"): 1, ("v1", "key:beta", "queued"): 3,
        ("v1", "batch:b1", "held"): 0, ("v1", "batch:b1", "queued"): 2,
    }  # fmt: skip
    # labels in alphabetical order, as every family of the exposition
    assert 'canary_jobs_waiting{state="held",tenant="key:alpha",version="v1"} 4.0' in exposition


def test_metrics_leave_the_family_empty_when_nothing_waits(stack: Stack) -> None:
    _, operator = create_key(stack.engine, "ops", ApiKeyRole.OPERATOR)
    with TestClient(create_app(stack.settings)) as client:
        exposition = client.get("/metrics", headers={"Authorization": f"Bearer {operator}"}).text
    assert_prometheus_conventions(exposition)
    [family] = [
        f for f in text_string_to_metric_families(exposition) if f.name == "canary_jobs_waiting"
    ]
    assert family.samples == []


def test_status_shows_waiting_per_tenant_in_text_and_json(stack: Stack) -> None:
    quiet = canary(stack, "status")
    assert quiet.returncode == 0, quiet.stderr
    assert "Waiting per tenant" not in quiet.stdout
    assert json.loads(canary(stack, "status", "--json").stdout)["waiting_by_tenant"] == []

    three_tenants(stack)
    text = canary(stack, "status")
    assert text.returncode == 0, text.stderr
    assert "Waiting per tenant" in text.stdout
    rows = {
        tuple(cell.strip() for cell in line.split("│")[1:-1])
        for line in text.stdout.splitlines()
        if line.startswith("│") and "v1" in line and ":" in line
    }
    assert {
        ("v1", "key:alpha", "4", "6", "6, weight 2"),
        ("v1", "key:beta", "1", "3", "3"),
        ("v1", "batch:b1", "0", "2", "3"),
    } <= rows, text.stdout
    assert f"CANARY_FAIR_SHARE_QUEUED={SHARE}" in text.stdout

    document = json.loads(canary(stack, "status", "--json").stdout)
    waiting = {w["tenant"]: w for w in document["waiting_by_tenant"]}
    assert set(waiting) == {"key:alpha", "key:beta", "batch:b1"}
    alpha = waiting["key:alpha"]
    assert alpha["tenant_id"].startswith("key:") and alpha["tenant_id"] != "key:alpha"
    assert (alpha["version"], alpha["held"], alpha["queued"]) == ("v1", 4, 6)
    assert (alpha["share_weight"], alpha["share_cap"]) == (2.0, 6)
    assert (waiting["key:beta"]["held"], waiting["key:beta"]["share_cap"]) == (1, 3)
    assert waiting["batch:b1"] == {
        "version": "v1", "tenant": "batch:b1", "tenant_id": "batch:b1", "held": 0,
        "queued": 2, "share_weight": 1.0, "share_cap": 3,
    }  # fmt: skip


def test_submit_and_batch_status_say_how_many_jobs_are_held(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": f"a harbour {i}", "model_version": "v1", "steps": 2}) + "\n"
            for i in range(8)
        )
    )
    submitted = canary(stack, "submit", str(path))
    assert submitted.returncode == 0, submitted.stderr
    held = (
        f"5 held for fair share: released as workers take jobs "
        f"(CANARY_FAIR_SHARE_QUEUED={SHARE} per tenant)"
    )
    assert held in submitted.stdout, submitted.stdout
    batch_id = submitted.stdout.split("(batch ")[1].split(")")[0]

    as_json = canary(stack, "submit", str(path), "--resubmit", "--json")
    # a new batch without a key is a tenant of its own: it has its own 3 queued
    assert json.loads(as_json.stdout)["held"] == 5

    status = canary(stack, "status", batch_id)
    assert status.returncode == 0, status.stderr
    assert held in status.stdout, status.stdout
    assert json.loads(canary(stack, "status", batch_id, "--json").stdout)["held"] == 5


def test_keys_take_a_share_weight_and_list_it(stack: Stack) -> None:
    created = canary(stack, "keys", "create", "--name", "partner", "--share-weight", "2")
    assert created.returncode == 0, created.stderr
    key_id = created.stderr.split("client key ")[1].split()[0]
    plain = canary(stack, "keys", "create", "--name", "plain")
    assert plain.returncode == 0, plain.stderr

    listed = canary(stack, "keys", "list").stdout
    lines = {line.split()[-1]: line for line in listed.splitlines() if line.strip()}
    assert "share 2 (6 bulk queued/version)" in lines["partner"], listed
    assert "share 1 default (3 bulk queued/version)" in lines["plain"], listed

    changed = canary(stack, "keys", "limits", key_id, "--share-weight", "3")
    assert changed.returncode == 0, changed.stderr
    assert "share 3 (9 bulk queued/version)" in changed.stdout
    back = canary(stack, "keys", "limits", key_id, "--share-weight", "default")
    assert "share 1 default (3 bulk queued/version)" in back.stdout, back.stdout

    for bad in ("0", "-1", "nan", "lots"):
        refused = canary(stack, "keys", "limits", key_id, "--share-weight", bad)
        assert refused.returncode == 2, (bad, refused.stdout, refused.stderr)
        assert "--share-weight" in refused.stderr, refused.stderr
    refused = canary(stack, "keys", "create", "--name", "x", "--share-weight", "0")
    assert refused.returncode == 2 and "--share-weight: must be a number above 0" in refused.stderr
    grader = canary(
        stack, "keys", "create", "--name", "g", "--role", "grader", "--share-weight", "2"
    )
    assert grader.returncode == 2 and "--share-weight" in grader.stderr, grader.stderr
    # nothing was created by the refusals
    assert len([line for line in canary(stack, "keys", "list").stdout.splitlines() if line]) == 2
