"""An object-store outage longer than the upload retries fails no job (tasks/spool.py).

A real SeaweedFS is stopped while a batch renders on a real worker and started again on the
same ports with the same data: the images rendered meanwhile wait in the worker's spool, its
breaker opens (the worker stops consuming its queue, `canary status` and /metrics say so),
and once storage answers every job ends SUCCEEDED with exactly one object, rendered once.
A second test kills the worker while its spool holds images: the worker started after it
uploads them instead of rendering them again.

The outage uses a server of its own rather than the session's ``s3_server``: stopping that
one would change its ports and empty it under the other tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from canary.cli.overview import collect_overview
from gateway.experiment_source import ExperimentSource
from gateway.http.metrics import CanaryCollector
from storage import jobs
from storage.db import get_engine, init_db
from storage.models import Job, JobStatus
from storage.objects import open_store
from tasks import storage_health
from tests.integration.conftest import Stack, make_stack
from tests.prometheus_checks import assert_prometheus_conventions, scrape_with
from tests.s3server import _COMPONENTS, _GRPC_SOCKET, SeaweedS3Server, find_weed

pytestmark = pytest.mark.integration

JOBS = 10
OUTAGE_S = 20.0  # beyond the retry window: 2 attempts, each with boto's own 5 tries
# Jobs a worker may hold when the breaker opens: the one being uploaded, the record queue
# (CANARY_RECORD_QUEUE_SIZE, 2), the render waiting to hand over, the reserved messages (2)
IN_FLIGHT = 1 + 2 + 1 + 2


class OutageS3Server(SeaweedS3Server):
    """A SeaweedFS that can go down and come back on the same ports with the same data."""

    def go_down(self) -> None:
        process, self._process = self._process, None
        assert process is not None
        process.kill()  # a crash, not a drain: requests are refused at once
        process.wait()
        for kind in _COMPONENTS:
            socket_path = Path(_GRPC_SOCKET.format(kind=kind, port=self.ports[f"{kind}.grpc"]))
            socket_path.unlink(missing_ok=True)

    def come_back(self) -> None:
        assert self.tmpdir is not None and self._process is None
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEED_")}
        env["WEED_MASTER_VOLUME_GROWTH_COPY_1"] = "1"
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(self.weed or find_weed(), self.tmpdir),
                cwd=self.tmpdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready(started)


@pytest.fixture
def outage_s3() -> Iterator[OutageS3Server]:
    with OutageS3Server() as server:
        yield server


@pytest.fixture
def stack(
    tmp_path: Path, clean_redis: str, model_dir: Path, outage_s3: OutageS3Server
) -> Iterator[Stack]:
    bucket = outage_s3.create_bucket()
    database_url = f"sqlite:///{tmp_path / 'canary.db'}"
    init_db(get_engine(database_url))
    credentials = outage_s3.credentials_env()
    os.environ.update(credentials)  # this process's boto3 (the test's own store)
    stack = make_stack(
        tmp_path, clean_redis, database_url, f"s3://{bucket}", model_dir,
        S3_ENDPOINT_URL=outage_s3.endpoint_url, CANARY_UPLOAD_ATTEMPTS="2",
        CANARY_UPLOAD_BACKOFF_S="0.1", CANARY_SPOOL_RETRY_S="1", **credentials,
        # an outage longer than the visibility timeout: the sweep (every 2 s) would take the
        # spooled jobs as lost if their worker did not keep them fresh
        CANARY_TASK_SOFT_TIME_LIMIT_S="5", CANARY_TASK_TIME_LIMIT_S="8",
        CANARY_VISIBILITY_TIMEOUT_S="12", CANARY_RECOVERY_SWEEP_EVERY_S="2",
    )  # fmt: skip
    yield stack
    stack.stop_workers()


def submit_batch(stack: Stack, n: int, tag: str) -> list[str]:
    gateway = stack.gateway()
    size = {"steps": 2, "width": 64, "height": 64}
    prompts = [f"a lighthouse {tag} {i}" for i in range(n)]
    prepared = [
        gateway.prepare({"prompt": p, "model_version": "v1", "seed": i, **size})
        for i, p in enumerate(prompts)
    ]
    return [s.job_id for s in gateway.submit_many(prepared)]


def rows(stack: Stack, job_ids: list[str]) -> list[Job]:
    return jobs.get_jobs(stack.engine, job_ids)


def wait_until(what: str, check, timeout: float, stack: Stack):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    pytest.fail(f"{what} not within {timeout:.0f} s; worker log:\n{stack.log('worker-v1-0')}")


def spool_files(stack: Stack) -> list[Path]:
    root = stack.settings.resolved_spool_dir / "v1"
    return sorted(root.glob("*.json")) if root.is_dir() else []


def scrape(stack: Stack) -> dict[str, float]:
    registry = CollectorRegistry(auto_describe=False)
    experiments = ExperimentSource.from_settings(stack.settings, stack.engine)
    registry.register(CanaryCollector(stack.settings, stack.engine, stack.app, experiments))
    text = scrape_with(
        lambda: generate_latest(registry).decode(),
        ("canary_storage_breaker_open", "canary_spooled_images", "canary_spool_uploads_total"),
    )
    assert_prometheus_conventions(text)
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(("canary_storage", "canary_spool")) and s.labels["version"] == "v1"
    }


def assert_all_stored_once(stack: Stack, job_ids: list[str]) -> list[Job]:
    finished = stack.wait_finished(job_ids, timeout=240)
    failed = {r.id: (r.failure_kind, r.failure_message) for r in finished.values()
              if r.status != JobStatus.SUCCEEDED}  # fmt: skip
    assert not failed, failed
    store = open_store(
        stack.settings.resolved_storage_url, endpoint_url=stack.settings.s3_endpoint_url
    )
    keys = store.list("")
    assert sorted(keys) == sorted(r.image_key for r in finished.values())  # one object each
    assert len(set(keys)) == len(job_ids)
    return list(finished.values())


def test_a_storage_outage_longer_than_the_retries_fails_no_job(
    stack: Stack, outage_s3: OutageS3Server
) -> None:
    stack.start_worker("v1")
    first = submit_batch(stack, 2, "before")
    stack.wait_finished(first)
    outage_s3.go_down()
    down_at = time.monotonic()
    batch = submit_batch(stack, JOBS, "during")

    def breaker_open() -> bool:
        states = storage_health.read_all(stack.app)
        return any(s.open and s.spooled for s in states.values())

    wait_until("the breaker opening", breaker_open, OUTAGE_S + 30, stack)
    # what operators see while storage is down
    overview = collect_overview(stack.settings)
    [v1] = [q for q in overview["queues"] if q["version"] == "v1"]
    assert v1["storage"] and v1["storage"][0]["open"] and v1["storage"][0]["spooled"] >= 1
    assert v1["workers"] == []  # the worker stopped consuming its queue
    metrics = scrape(stack)
    assert metrics["canary_storage_breaker_open"] == 1
    assert metrics["canary_spooled_images"] >= 1
    spooled_during = {p.stem for p in spool_files(stack)}
    assert spooled_during
    statuses = {r.status for r in rows(stack, batch)}
    assert JobStatus.FAILED not in statuses
    # the worker takes no new job while the breaker is open: the rest of the batch waits
    taken = {r.id for r in rows(stack, batch) if r.status != JobStatus.QUEUED}
    assert len(taken) <= IN_FLIGHT, statuses
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
    assert all(r.status != JobStatus.FAILED for r in rows(stack, batch))
    assert {r.id for r in rows(stack, batch) if r.status != JobStatus.QUEUED} == taken
    spooled_during = {p.stem for p in spool_files(stack)}  # all of them, now
    assert len(spooled_during) <= len(taken)
    outage_s = time.monotonic() - down_at
    outage_s3.come_back()

    finished = assert_all_stored_once(stack, first + batch)
    assert all(r.attempts == 1 for r in finished)  # nothing was rendered twice
    spooled_rows = [r for r in finished if r.id in spooled_during]
    assert spooled_rows and all((r.upload_ms or 0) > 1000 for r in spooled_rows)
    assert all(r.worker_host == stack.nodes[stack.workers[0].pid] for r in finished)
    wait_until("the breaker closing", lambda: not breaker_open() and not spool_files(stack),
               30, stack)  # fmt: skip
    metrics = scrape(stack)
    assert metrics["canary_storage_breaker_open"] == 0 and metrics["canary_spooled_images"] == 0
    assert metrics["canary_spool_uploads_total"] == len(spooled_during)
    print(f"outage {outage_s:.1f} s: {len(spooled_during)} image(s) spooled, {JOBS + 2} jobs "
          "succeeded, 0 failed, 0 rendered twice")  # fmt: skip


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "warm"])
def test_a_spool_outlives_its_worker_process(
    stack: Stack, outage_s3: OutageS3Server, stop: signal.Signals
) -> None:
    first = stack.start_worker("v1")
    outage_s3.go_down()
    batch = submit_batch(stack, 4, "spooled")
    wait_until("images in the spool", lambda: len(spool_files(stack)) >= 2, OUTAGE_S + 30, stack)
    os.killpg(first.pid, stop)  # the worker and its pool process; SIGTERM: a warm shutdown
    first.wait(timeout=60)
    spooled = {p.stem for p in spool_files(stack)}
    assert len(spooled) >= 2  # the files outlive the process
    stack.start_worker("v1", name="worker-v1-1")  # a new node name, same host and version
    time.sleep(3)
    outage_s3.come_back()
    finished = {r.id: r for r in assert_all_stored_once(stack, batch)}
    for job_id in spooled:  # uploaded from the spool by the new worker, not rendered again
        assert finished[job_id].attempts == 1, finished[job_id]
    assert "taking over spooled job" in (stack.log_dir / "worker-v1-1.log").read_text()
    wait_until("an empty spool", lambda: not spool_files(stack), 30, stack)
