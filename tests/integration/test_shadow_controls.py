"""Shadow traffic's controls on a real stack: `canary shadow status|pause|resume` as an
operator runs it, and the shadow counters on /metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth import create_key
from gateway.http.app import create_app
from storage.models import ApiKeyRole
from tests.integration.conftest import PROJECT_ROOT, Stack, local_stack
from tests.integration.test_shadow_copies import (
    EXPERIMENT,
    experiment_file,
    shadow_jobs,
    submit,
)
from tests.prometheus_checks import assert_prometheus_conventions, scrape_with

pytestmark = pytest.mark.integration
MARGINS = {
    "CANARY_SHADOW_MIN_PAIRS": "4",
    "CANARY_SHADOW_MAX_FAILURE_INCREASE": "0.6",
    "CANARY_SHADOW_MAX_P95_RATIO": "50",
}


@pytest.fixture
def stack(tmp_path: Path, clean_redis: str, model_dir: Path) -> Iterator[Stack]:
    path = experiment_file(tmp_path / "experiments.yaml", 1.0)
    built = local_stack(
        tmp_path, clean_redis, model_dir, CANARY_EXPERIMENT_FILE=str(path), **MARGINS
    )
    built.settings = built.settings.model_copy(update={"experiment_file": path})
    yield built
    built.stop_workers()


def canary(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canary.cli", *args],
        env=stack.env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_status_shows_pairs_and_the_health_verdict_and_pause_stops_copies(
    stack: Stack,
) -> None:
    gw = stack.gateway()
    live_ids = submit(gw, 5)
    copies = shadow_jobs(stack)
    stack.start_worker("v1")
    stack.start_worker("v2")
    stack.wait_finished([*live_ids, *(c.id for c in copies.values())])

    shown = canary(stack, "shadow", "status", EXPERIMENT, "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["shadow"] == {"share": 1.0, "segments": None}
    assert doc["paused"] is False
    assert doc["counters"] == {"sampled": 5, "skipped_full": 0}
    assert doc["jobs"] == {"recorded": 5, "sent": 5, "queued": 0, "succeeded": 5, "failed": 0}
    overall = doc["comparison"]["overall"]
    assert overall["pairs"] == 5
    assert overall["failure_rate"] == {"baseline": 0.0, "candidate": 0.0}
    assert overall["image_distance"]["pairs"] == 5  # both images of every pair were read
    assert overall["render_latency"]["p95"]["delta_ms"] is not None
    assert len(doc["comparison"]["worst_pairs"]) == 5
    assert {w["live_id"] for w in doc["comparison"]["worst_pairs"]} == set(live_ids)
    assert doc["comparison"]["health"]["verdict"] == "pass", doc["comparison"]["health"]

    text = canary(stack, "shadow", "status", EXPERIMENT)
    assert text.returncode == 0, text.stderr
    assert "shadow health: pass" in text.stdout
    assert "sampled 5, skipped (backlog full, max 500) 0" in text.stdout

    paused = canary(stack, "shadow", "pause", EXPERIMENT)
    assert paused.returncode == 0, paused.stderr
    assert json.loads(canary(stack, "shadow", "status", EXPERIMENT, "--json").stdout)["paused"]
    more = submit(stack.gateway(), 3, start=5)  # a gateway started after the pause
    assert not set(more) & set(shadow_jobs(stack))
    assert canary(stack, "shadow", "resume", EXPERIMENT).returncode == 0
    again = submit(stack.gateway(), 2, start=8)
    assert set(again) <= set(shadow_jobs(stack))


def test_an_unknown_experiment_is_a_usage_error(stack: Stack) -> None:
    for command in ("status", "pause", "resume"):
        result = canary(stack, "shadow", command, "no-such-experiment")
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "unknown experiment 'no-such-experiment' (known: v2-canary)" in result.stderr


def test_metrics_export_the_shadow_counters(stack: Stack) -> None:
    stack.settings = stack.settings.model_copy(update={"shadow_max_queued": 2})
    submit(stack.gateway(), 4)  # 2 copied, 2 skipped: the backlog is full
    copies = shadow_jobs(stack)
    assert len(copies) == 2
    stack.start_worker("v2")
    stack.wait_finished([c.id for c in copies.values()])
    token = create_key(stack.engine, "ops", ApiKeyRole.OPERATOR)[1]
    with TestClient(create_app(stack.settings)) as http:

        def metrics() -> str:
            answer = http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200
            return answer.text

        text = scrape_with(metrics, ("canary_shadow_sampled_total",))
    assert_prometheus_conventions(text)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("canary_shadow_")
    }
    experiment = (("experiment", EXPERIMENT),)
    assert samples[("canary_shadow_sampled_total", experiment)] == 4
    assert samples[("canary_shadow_skipped_total", (*experiment, ("reason", "full")))] == 2
    version = (*experiment, ("version", "v2"))
    assert samples[("canary_shadow_sent_total", version)] == 2
    completed = (*experiment[:1], ("outcome", "completed"), ("version", "v2"))
    failed = (*experiment[:1], ("outcome", "failed"), ("version", "v2"))
    assert samples[("canary_shadow_finished_total", completed)] == 2
    assert samples[("canary_shadow_finished_total", failed)] == 0
    assert samples[("canary_shadow_paused", experiment)] == 0
