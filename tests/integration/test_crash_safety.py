"""Crash safety with real worker processes: kills, broker restarts (with and without its
data) and warm shutdowns lose no job and duplicate none (one success record, one image
object per job)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from scheduler.lost_messages import reconcile
from storage import jobs
from storage.models import FailureKind, JobStatus, utcnow
from storage.objects import open_store
from tasks.queues import resent_counts
from tasks.spec import RENDER_TASK, render_spec
from tests.integration.conftest import Stack, local_stack

pytestmark = pytest.mark.integration

# short limits so a lost worker's message is redelivered within seconds
LIMITS = {
    "CANARY_TASK_SOFT_TIME_LIMIT_S": "20",
    "CANARY_TASK_TIME_LIMIT_S": "25",
    "CANARY_VISIBILITY_TIMEOUT_S": "30",
    "CANARY_FAULT_INJECTION": "true",
}


def crash_stack(tmp_path: Path, redis_url: str, model_dir: Path, **extra: str) -> Stack:
    return local_stack(tmp_path, redis_url, model_dir, **{**LIMITS, **extra})


@pytest.fixture
def stack(tmp_path: Path, clean_redis: str, model_dir: Path) -> Iterator[Stack]:
    stack = crash_stack(tmp_path, clean_redis, model_dir)
    yield stack
    stack.stop_workers()


def submit(stack: Stack, n: int, marker: str, steps: int = 4) -> list[str]:
    gateway = stack.gateway()
    return [
        gateway.submit(
            {
                "prompt": f"scene {i} {marker}",
                "model_version": "v1",
                "seed": i,
                "steps": steps,
                "width": 64,
                "height": 64,
            }
        ).job_id
        for i in range(n)
    ]


def pool_children(worker: subprocess.Popen) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def wait_until(condition: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def running(stack: Stack, job_ids: list[str], since: datetime | None = None) -> list[str]:
    """Jobs being rendered now (an attempt started after ``since``, if given)."""
    rows = jobs.get_jobs(stack.engine, job_ids)
    return [
        r.id
        for r in rows
        if r.status == JobStatus.RUNNING and (since is None or _aware(r.started_at) > since)
    ]


def _aware(when: datetime | None) -> datetime:
    if when is None:
        return datetime.min.replace(tzinfo=UTC)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def assert_exactly_once(stack: Stack, job_ids: list[str]) -> dict:
    rows = stack.wait_finished(job_ids, timeout=180)
    assert {r.status for r in rows.values()} == {JobStatus.SUCCEEDED}, {
        r.id: (r.status, r.failure_kind, r.failure_message) for r in rows.values()
    }
    store = open_store(stack.settings.resolved_storage_url)
    assert sorted(store.list("renders/v1/")) == sorted(f"renders/v1/{i}.png" for i in job_ids)
    return rows


def test_sigkill_of_the_pool_child_mid_render_loses_and_duplicates_nothing(stack: Stack) -> None:
    worker = stack.start_worker("v1")
    job_ids = submit(stack, 6, "[[fault:slow=0.3]]")
    since = None
    for _ in range(3):
        # a replaced pool child loads the model first: slow on a loaded machine
        wait_until(
            lambda s=since: running(stack, job_ids, s), timeout=180, what="a job being rendered"
        )
        time.sleep(0.4)  # inside the denoising loop
        (child,) = pool_children(worker)
        since = utcnow()
        os.kill(child, signal.SIGKILL)
    rows = assert_exactly_once(stack, job_ids)
    assert sum(r.attempts for r in rows.values()) >= len(job_ids) + 3
    assert worker.poll() is None  # the parent replaced its child and kept going


def test_sigkill_mid_upload_loses_and_duplicates_nothing(stack: Stack) -> None:
    worker = stack.start_worker("v1")
    (job_id,) = submit(stack, 1, "[[fault:upload-slow=3]]", steps=2)
    wait_until(lambda: running(stack, [job_id]), what="the job to start")
    time.sleep(1.5)  # rendering takes well under a second: now it is uploading
    (child,) = pool_children(worker)
    os.kill(child, signal.SIGKILL)
    rows = assert_exactly_once(stack, [job_id])
    assert rows[job_id].attempts == 2


def test_killing_the_whole_worker_redelivers_to_the_next_one(
    tmp_path: Path, clean_redis: str, model_dir: Path
) -> None:
    # the message of a dead worker comes back after the visibility timeout: keep it short
    stack = crash_stack(
        tmp_path,
        clean_redis,
        model_dir,
        CANARY_TASK_SOFT_TIME_LIMIT_S="4",
        CANARY_TASK_TIME_LIMIT_S="6",
        CANARY_VISIBILITY_TIMEOUT_S="8",
    )
    try:
        worker = stack.start_worker("v1")
        (job_id,) = submit(stack, 1, "[[fault:slow=0.5]]")
        wait_until(lambda: running(stack, [job_id]), what="the job to start")
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        stack.start_worker("v1")
        rows = assert_exactly_once(stack, [job_id])
        assert rows[job_id].attempts == 2
    finally:
        stack.stop_workers()


def test_warm_shutdown_finishes_the_current_job(stack: Stack) -> None:
    worker = stack.start_worker("v1")
    job_ids = submit(stack, 3, "[[fault:slow=0.4]]")
    wait_until(lambda: running(stack, job_ids), what="a running job")
    (in_flight,) = running(stack, job_ids)
    worker.send_signal(signal.SIGTERM)  # warm shutdown: finish what you hold, take no more
    assert worker.wait(timeout=60) == 0
    row = jobs.get_job(stack.engine, in_flight)
    assert row is not None and row.status == JobStatus.SUCCEEDED
    stack.start_worker("v1")  # the rest were never taken: the next worker does them
    assert_exactly_once(stack, job_ids)


def test_redelivery_of_a_finished_job_does_not_render_it_again(stack: Stack) -> None:
    stack.start_worker("v1")
    (job_id,) = submit(stack, 1, "")
    before = assert_exactly_once(stack, [job_id])[job_id]
    store = open_store(stack.settings.resolved_storage_url)
    image = store.get(f"renders/v1/{job_id}.png")
    spec = render_spec(before)
    stack.app.send_task(RENDER_TASK, args=(job_id, spec), queue="render.v1", task_id=job_id)
    wait_until(
        lambda: stack.log("worker-v1-0").count(f"canary.render[{job_id}] succeeded") == 2,
        what="the redelivered message to be handled",
    )
    after = jobs.get_job(stack.engine, job_id)
    assert after is not None
    assert (after.attempts, after.finished_at, after.inference_ms) == (
        before.attempts,
        before.finished_at,
        before.inference_ms,
    )
    assert store.get(f"renders/v1/{job_id}.png") == image


def test_a_job_that_kills_its_worker_every_time_ends_as_worker_lost(
    tmp_path: Path, clean_redis: str, model_dir: Path
) -> None:
    stack = crash_stack(tmp_path, clean_redis, model_dir, CANARY_MAX_ATTEMPTS="2")
    try:
        worker = stack.start_worker("v1")
        (job_id,) = submit(stack, 1, "[[fault:slow=0.5]]")
        for attempt in (1, 2):

            def on_attempt(n: int = attempt) -> bool:
                row = jobs.get_job(stack.engine, job_id)
                return row is not None and row.attempts == n and row.status == "RUNNING"

            wait_until(on_attempt, what=f"attempt {attempt}")
            (child,) = pool_children(worker)
            os.kill(child, signal.SIGKILL)
        row = stack.wait_finished([job_id], timeout=120)[job_id]
        assert (row.status, row.failure_kind) == (JobStatus.FAILED, FailureKind.WORKER_LOST)
        assert row.attempts == 3 and "2 attempts" in (row.failure_message or "")
    finally:
        stack.stop_workers()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(port: int, data_dir: Path) -> subprocess.Popen:
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (scripts/services.sh installs it)")
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
         "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    wait_until(lambda: _pings(client), timeout=20, what="redis to start")
    return process


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_broker_restart_mid_batch_loses_and_duplicates_nothing(
    tmp_path: Path, model_dir: Path
) -> None:
    port = free_port()
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    broker = start_redis(port, data_dir)
    stack = crash_stack(tmp_path, f"redis://127.0.0.1:{port}/0", model_dir)
    try:
        stack.start_worker("v1")
        job_ids = submit(stack, 8, "[[fault:slow=0.2]]")
        wait_until(
            lambda: sum(r.status == "SUCCEEDED" for r in jobs.get_jobs(stack.engine, job_ids)) >= 2,
            what="two finished jobs",
        )
        broker.kill()  # SIGKILL: no goodbye; the append-only file holds every write
        broker.wait()
        time.sleep(1)
        broker = start_redis(port, data_dir)
        assert_exactly_once(stack, job_ids)
    finally:
        stack.stop_workers()
        broker.terminate()
        broker.wait()


def test_jobs_whose_messages_a_restarted_broker_lost_are_sent_again_and_render_once(
    tmp_path: Path, model_dir: Path
) -> None:
    """The broker comes back without its data: the outbox (never-sent jobs) and the sweep
    (RUNNING jobs) see nothing to do, the reconciler finds the QUEUED jobs whose message
    is gone and sends them again; re-sends of messages that only looked gone (a job in
    flight while it runs every second) are stopped by the claim guard."""
    port = free_port()
    first_dir, second_dir = tmp_path / "redis-1", tmp_path / "redis-2"
    first_dir.mkdir()
    second_dir.mkdir()
    broker = start_redis(port, first_dir)
    stack = crash_stack(tmp_path, f"redis://127.0.0.1:{port}/0", model_dir)
    try:
        stack.start_worker("v1")
        job_ids = submit(stack, 12, "[[fault:slow=0.15]]")
        wait_until(
            lambda: sum(r.status == "SUCCEEDED" for r in jobs.get_jobs(stack.engine, job_ids)) >= 2,
            what="two finished jobs",
        )
        broker.kill()
        broker.wait()
        broker = start_redis(port, second_dir)  # same port, no data: every message is gone
        time.sleep(8)  # the worker reconnects; nothing arrives for the jobs left QUEUED
        queued = [r.id for r in jobs.get_jobs(stack.engine, job_ids) if r.status == "QUEUED"]
        assert queued, "every job finished before the broker lost its data"
        resent: dict[str, int] = {}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            rows = jobs.get_jobs(stack.engine, job_ids)
            if all(r.status in ("SUCCEEDED", "FAILED") for r in rows):
                break
            # as beat runs it, but every second and with no age threshold: a job whose
            # message is on its way to the worker may look lost, and is then sent twice
            for version, n in reconcile(
                stack.app, stack.settings, stack.engine, timedelta(0)
            ).items():
                resent[version] = resent.get(version, 0) + n
            time.sleep(1)
        rows = assert_exactly_once(stack, job_ids)
        assert resent.get("v1", 0) >= len(queued)
        assert all(rows[i].attempts == 1 for i in queued), {i: rows[i].attempts for i in queued}
        assert resent_counts(stack.app) == {"v1": resent["v1"]}  # what /metrics exports
        assert reconcile(stack.app, stack.settings, stack.engine, timedelta(0)) == {
            "v1": 0,
            "v2": 0,
        }
    finally:
        stack.stop_workers()
        broker.terminate()
        broker.wait()


def test_a_restarted_worker_resends_what_its_predecessor_left_and_spares_live_neighbours(
    tmp_path: Path, clean_redis: str, model_dir: Path
) -> None:
    """Node names are unique per worker, so a worker started after one was killed has
    another name; it re-sends the dead one's jobs at once (nothing else would before the
    5-minute visibility timeout), and never a live neighbour's."""
    stack = crash_stack(tmp_path, clean_redis, model_dir, CANARY_VISIBILITY_TIMEOUT_S="300")
    try:
        first = stack.start_worker("v1")
        (kept,) = submit(stack, 1, "kept [[fault:slow=0.4]]", steps=12)
        wait_until(lambda: running(stack, [kept]), what="the first job to start")
        stack.start_worker("v1")  # while the first worker renders: it must leave that job
        row = stack.wait_finished([kept])[kept]
        assert (row.status, row.attempts, row.worker_host) == (
            JobStatus.SUCCEEDED, 1, stack.nodes[first.pid],
        )  # fmt: skip
        (lost,) = submit(stack, 1, "lost [[fault:slow=0.4]]", steps=12)
        wait_until(lambda: running(stack, [lost]), what="the second job to start")
        holder = jobs.get_job(stack.engine, lost).worker_host  # type: ignore[union-attr]
        (victim,) = [w for w in stack.workers if stack.nodes.get(w.pid) == holder]
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        stack.start_worker("v1")
        row = stack.wait_finished([lost], timeout=90)[lost]
        assert (row.status, row.attempts) == (JobStatus.SUCCEEDED, 2)
        assert row.worker_host != holder
        assert_exactly_once(stack, [kept, lost])
    finally:
        stack.stop_workers()
