"""Operations: Prometheus metrics after real jobs, and `canary status` as one screen."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth import create_key
from gateway.http.app import create_app
from storage.models import ApiKeyRole
from storage.revisions import worker_records
from tests.integration.conftest import PROJECT_ROOT, Stack, local_stack
from tests.prometheus_checks import (
    assert_monitoring_files_use,
    assert_prometheus_conventions,
    scrape_with,
)

pytestmark = pytest.mark.integration
EXPERIMENT = {
    "default_version": "v1",
    "experiments": [
        {
            "name": "v2-canary",
            "baseline": "v1",
            "candidate": "v2",
            "stages": [
                {"name": "5%", "shares": {"default": 0.05}},
                {"name": "50%", "shares": {"default": 0.5, "new_user": 0.2}},
            ],
            "stage": "50%",
        }
    ],
}


@pytest.fixture
def ops_stack(tmp_path: Path, clean_redis: str, model_dir: Path) -> Stack:
    experiment_file = tmp_path / "experiments.yaml"
    experiment_file.write_text(yaml.safe_dump(EXPERIMENT))
    stack = local_stack(
        tmp_path, clean_redis, model_dir,
        CANARY_EXPERIMENT_FILE=str(experiment_file), CANARY_FAULT_INJECTION="true",
    )  # fmt: skip
    stack.settings = stack.settings.model_copy(update={"experiment_file": experiment_file})
    return stack


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_metrics_after_real_jobs(ops_stack: Stack) -> None:
    gateway = ops_stack.gateway()
    prompts = ["a lighthouse"] * 4 + ["a storm [[fault:nan]]"]
    prepared = [
        gateway.prepare(
            {"prompt": p, "model_version": "v1", "seed": n, "steps": 2, "width": 64, "height": 64}
        )
        for n, p in enumerate(prompts)
    ] + [
        gateway.prepare(
            {
                "prompt": "a cat",
                "model_version": "v2",
                "seed": 9,
                "steps": 2,
                "width": 64,
                "height": 64,
            }
        )
    ]
    submitted = gateway.submit_many(prepared)
    latest = ops_stack.settings.dashboard_dir / "v2-canary" / "latest.json"
    latest.parent.mkdir(parents=True)
    latest.write_text(json.dumps({"gates": {"verdict": "hold"}, "window": {"last": "2026-01-02"}}))
    operator = create_key(ops_stack.engine, "prometheus", ApiKeyRole.OPERATOR)[1]
    headers = {"Authorization": f"Bearer {operator}"}
    with TestClient(create_app(ops_stack.settings)) as client:
        assert client.get("/metrics").status_code == 401

        # a scrape leaves out what it read from the broker if the broker did not answer in
        # time (a loaded machine): the next one has it
        def scrape() -> str:
            response = client.get("/metrics", headers=headers)
            assert response.headers["content-type"].startswith("text/plain")
            return response.text

        before = samples(scrape_with(scrape, ("canary_queue_messages",)))
        assert value(before, "canary_queue_messages", version="v1") == 5
        assert value(before, "canary_queue_messages", version="v2") == 1
        assert value(before, "canary_broker_up") == 1

        ops_stack.start_worker("v1")
        try:
            ops_stack.wait_finished([s.job_id for s in submitted[:5]], timeout=120)
            text = scrape_with(
                scrape, ("canary_queue_messages", "canary_workers_online_by_revision")
            )
        finally:
            ops_stack.stop_workers()
    after = samples(text)
    assert value(after, "canary_queue_messages", version="v1") == 0
    assert value(after, "canary_queue_messages", version="v2") == 1  # no v2 worker ran
    live = {"source": "live"}
    finished = "canary_jobs_finished_total"
    assert value(after, finished, version="v1", outcome="succeeded", **live) == 4
    assert value(after, finished, version="v1", outcome="failed", **live) == 1
    assert value(after, "canary_job_failures_total", version="v1", kind="nan_output") == 1
    assert value(after, "canary_jobs_unfinished", version="v2", status="queued", **live) == 1
    assert value(after, "canary_render_seconds_count", version="v1") == 4
    assert value(after, "canary_render_seconds_bucket", version="v1", le="+Inf") == 4
    assert value(after, "canary_end_to_end_seconds_count", version="v1") == 4
    assert value(after, "canary_render_seconds_sum", version="v1") > 0
    workers = [k for k in after if k[0] == "canary_workers_online_by_revision"]
    assert len(workers) == 1  # the worker answered the scrape, with its device and revision
    labels = dict(workers[0][1])
    assert labels["version"] == "v1" and labels["device"] == "cpu" and len(labels["revision"]) >= 8
    assert value(after, "canary_workers_online", version="v1") == 1
    assert value(after, "canary_experiment_stage", experiment="v2-canary", stage="50%") == 1
    assert value(after, "canary_experiment_stage_index", experiment="v2-canary") == 1
    share = {"experiment": "v2-canary", "segment": "new_user"}
    assert value(after, "canary_experiment_candidate_share_ratio", **share) == 0.2
    assert value(after, "canary_experiment_rolled_back", experiment="v2-canary") == 0
    assert value(after, "canary_experiment_gate_verdict", experiment="v2-canary", verdict="hold")
    assert_prometheus_conventions(text)
    assert_monitoring_files_use(text)


def test_status_overview_is_one_screen(ops_stack: Stack) -> None:
    ops_stack.start_worker("v2")
    try:
        deadline = time.monotonic() + 60  # the record is written once its model has loaded
        while not worker_records(ops_stack.engine, "v2") and time.monotonic() < deadline:
            time.sleep(0.2)
        result = subprocess.run(
            [sys.executable, "-m", "canary.cli", "status"],
            env={**ops_stack.env, "COLUMNS": "200"},
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        ops_stack.stop_workers()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "v2-canary" in out and "50%" in out and "new_user 20%" in out
    assert "render.v1" in out and "render.v2" in out
    assert "render-v2-cpu" in out and "(cpu," in out, out  # the v2 worker with its revision
    assert "golden set: no run yet" in out
    assert "no dashboard yet" in out
