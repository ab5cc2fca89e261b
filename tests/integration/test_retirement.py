"""Retiring a version: no new jobs, queue drained or re-routed, workers stopped, retention."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.job_requests import InvalidJob
from scheduler.retention import purge_retired
from storage import jobs, versions
from storage.images import image_key
from storage.models import JobStatus, utcnow
from storage.objects import open_store
from tests.integration.conftest import PROJECT_ROOT, Stack, local_stack

pytestmark = pytest.mark.integration

JOB = {"prompt": "a kettle", "steps": 3, "width": 64, "height": 64}


@pytest.fixture
def stack(tmp_path: Path, clean_redis: str, model_dir: Path) -> Iterator[Stack]:
    stack = local_stack(tmp_path, clean_redis, model_dir)
    yield stack
    stack.stop_workers()


def retire(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canary.cli", "retire", *args, "--timeout", "120"],
        env={**stack.env, "COLUMNS": "200"},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_retire_drains_stops_workers_and_refuses_new_jobs(stack: Stack) -> None:
    stack.start_worker("v1")
    v2_worker = stack.start_worker("v2")
    gateway = stack.gateway()
    ids = [gateway.submit({**JOB, "model_version": "v2", "seed": i}).job_id for i in range(6)]
    result = retire(stack, "--model-version", "v2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "retired v2" in result.stdout and "render-v2-cpu-" in result.stdout
    rows = stack.wait_finished(ids)  # nothing queued was lost: the drain finished them
    assert {r.status for r in rows.values()} == {JobStatus.SUCCEEDED}
    v2_worker.wait(timeout=30)  # its worker shut down
    assert stack.workers[0].poll() is None  # v1's did not
    with pytest.raises(InvalidJob, match="'v2' is retired"):
        stack.gateway().submit({**JOB, "model_version": "v2"})
    assert len(jobs.get_jobs(stack.engine, ids)) == 6  # records stay readable


def test_retire_can_reroute_queued_jobs_to_the_baseline(stack: Stack) -> None:
    gateway = stack.gateway()
    ids = [gateway.submit({**JOB, "model_version": "v2", "seed": i}).job_id for i in range(4)]
    stack.start_worker("v1")  # no v2 worker: its jobs wait in render.v2
    result = retire(stack, "--model-version", "v2", "--reroute-to", "v1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "re-routed 4 queued jobs to v1" in result.stdout
    rows = stack.wait_finished(ids)
    assert {(r.status, r.model_version, r.worker_version) for r in rows.values()} == {
        (JobStatus.SUCCEEDED, "v1", "v1")
    }
    assert sum(r.misroutes for r in rows.values()) == 0


def test_assignment_avoids_a_retired_arm(stack: Stack, tmp_path: Path) -> None:
    import yaml

    experiment = {
        "default_version": "v1",
        "experiments": [
            {
                "name": "all-in",
                "baseline": "v1",
                "candidate": "v2",
                "stages": [{"name": "100%", "shares": {"default": 1.0}}],
                "stage": "100%",
            }
        ],
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    stack.settings = stack.settings.model_copy(update={"experiment_file": path})
    assert stack.gateway().prepare({**JOB, "user_id": "u1"}).model_version == "v2"
    versions.retire(stack.engine, "v2", rerouted_to=None, retention_days=7)
    prepared = stack.gateway().prepare({**JOB, "user_id": "u1"})
    assert (prepared.model_version, prepared.arm) == ("v1", "baseline")


def test_retention_deletes_images_and_logs_but_keeps_records(stack: Stack) -> None:
    store = open_store(stack.settings.resolved_storage_url)
    gateway = stack.gateway()
    keys: dict[str, list[str]] = {}
    for version in ("v1", "v2"):
        for i in range(2):  # keys name no version: found through the jobs' rows
            job_id = gateway.submit({**JOB, "model_version": version, "seed": i}).job_id
            key = image_key(job_id)
            store.put(key, b"png")
            jobs.claim(stack.engine, job_id, utcnow(), worker_host="test")
            jobs.finish(stack.engine, job_id, JobStatus.SUCCEEDED, image_key=key)
            keys.setdefault(version, []).append(key)
        store.put(f"renders/{version}/job-old.png", b"png")  # the legacy layout
    log_dir = stack.settings.log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "worker-v2.log").write_text("old log")
    (log_dir / "worker-v1.log").write_text("live log")
    versions.retire(stack.engine, "v2", rerouted_to=None, retention_days=7)
    assert purge_retired(stack.settings, store) == {}  # not yet: 7 days have not passed
    store.put("logs/v2/jobs.jsonl", b"{}")  # what `canary retire` exported
    versions.retire(stack.engine, "v2", rerouted_to=None, retention_days=0)
    assert purge_retired(stack.settings, store) == {"v2": 3}
    assert store.list("renders/v2/") == [] and len(store.list("renders/v1/")) == 1
    assert not any(store.exists(key) for key in keys["v2"])
    assert all(store.exists(key) for key in keys["v1"])
    assert len(jobs.get_jobs(stack.engine, [k[8:-4] for k in keys["v2"]])) == 2  # rows kept
    assert store.list("logs/v2/") == []
    assert not (log_dir / "worker-v2.log").exists() and (log_dir / "worker-v1.log").exists()
    assert purge_retired(stack.settings, store) == {}  # once


def test_lifecycle_gauges_for_metrics(stack: Stack) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from gateway.http.broker_probe import BrokerReading
    from gateway.http.lifecycle_metrics import lifecycle_metrics

    def scrape(reading: BrokerReading | None) -> dict[tuple[str, ...], float]:
        class Collector:
            def collect(self):  # type: ignore[no-untyped-def]
                return lifecycle_metrics(stack.settings, stack.engine, reading)

        registry = CollectorRegistry()
        registry.register(Collector())  # type: ignore[arg-type]
        text = generate_latest(registry).decode()
        return {
            (sample.name, sample.labels["version"], *filter(None, [sample.labels.get("state")])): (
                sample.value
            )
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    before = scrape(None)
    assert before[("canary_version_lifecycle", "v2", "active")] == 1
    assert before[("canary_version_lifecycle", "v2", "retired")] == 0
    state = versions.retire(stack.engine, "v2", rerouted_to="v1", retention_days=7)
    draining = scrape(BrokerReading(depths={"v1": 0, "v2": 4}, consumers={}))
    assert draining[("canary_version_lifecycle", "v2", "retiring")] == 1
    done = scrape(BrokerReading(depths={"v1": 0, "v2": 0}, consumers={}))
    assert done[("canary_version_lifecycle", "v2", "retired")] == 1
    assert done[("canary_version_lifecycle", "v1", "active")] == 1
    retired_at = done[("canary_version_retired_timestamp_seconds", "v2")]
    assert abs(retired_at - state.retired_at.timestamp()) < 1  # type: ignore[union-attr]
    assert done[("canary_version_purge_timestamp_seconds", "v2")] - retired_at == 7 * 86400
    assert ("canary_version_retired_timestamp_seconds", "v1") not in done


def test_retire_writes_the_log_export_and_announces_it(stack: Stack) -> None:
    from tests.webhook_receiver import webhook_receiver

    stack.start_worker("v1")
    stack.start_worker("v2")
    gateway = stack.gateway()
    ids = [gateway.submit({**JOB, "model_version": "v1", "seed": i}).job_id for i in range(3)]
    stack.wait_finished(ids)
    log_dir = stack.settings.log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "worker-v1.log").write_text("v1 rendered things\n")
    with webhook_receiver() as hook:
        stack.env["CANARY_NOTIFY_WEBHOOKS"] = f"slack={hook.url}"
        result = retire(stack, "--model-version", "v1", "--reroute-to", "v2")
        assert result.returncode == 0, result.stdout + result.stderr
        [message] = hook.wait_for(1)
    assert message["text"].startswith("canary v1: retired (queued jobs re-routed to v2)")
    store = open_store(stack.settings.resolved_storage_url)
    exported = store.get("logs/v1/jobs.jsonl").decode().splitlines()
    rows = [json.loads(line) for line in exported]
    assert sorted(row["id"] for row in rows) == sorted(ids)
    assert {(row["status"], row["worker_version"]) for row in rows} == {("SUCCEEDED", "v1")}
    assert store.get("logs/v1/worker-v1.log") == b"v1 rendered things\n"
