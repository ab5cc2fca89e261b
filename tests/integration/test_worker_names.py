"""Worker identity: every render worker has its own node name (the claim guard keys on it),
so two workers of one version on one host never render one job twice, and a name a live
worker answers to is refused."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from storage import jobs
from storage.models import JobStatus
from tests.integration.conftest import PROJECT_ROOT, local_stack
from tests.integration.test_crash_safety import (
    LIMITS,
    assert_exactly_once,
    free_port,
    running,
    start_redis,
    submit,
    wait_until,
)

pytestmark = pytest.mark.integration
DROPS = 3


def test_two_workers_of_a_version_get_distinct_names_and_a_taken_name_is_refused(
    tmp_path: Path, clean_redis: str, model_dir: Path
) -> None:
    stack = local_stack(tmp_path, clean_redis, model_dir)
    try:
        first, second = stack.start_worker("v1"), stack.start_worker("v1")
        names = {stack.nodes[first.pid], stack.nodes[second.pid]}
        host = re.escape(socket.gethostname())
        assert len(names) == 2, names
        assert all(re.fullmatch(rf"render-v1-cpu-[0-9a-f]{{6}}@{host}", n) for n in names)
        taken = stack.nodes[first.pid].split("@")[0]
        refused = subprocess.run(
            [sys.executable, "-m", "canary.cli", "worker", "--model-version", "v1",
             "--name", taken],
            env=stack.env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert refused.returncode != 0
        assert f"a worker named {taken}@" in refused.stderr and "already running" in refused.stderr
    finally:
        stack.stop_workers()


def test_a_job_redelivered_after_a_connection_drop_is_not_rendered_by_the_other_worker(
    tmp_path: Path, model_dir: Path
) -> None:
    """Two workers of one version on one host; the broker drops every client connection
    while one renders: the running job's message is restored to the queue and the idle
    worker receives it, finds the job held by a live worker and leaves it."""
    port = free_port()
    (tmp_path / "redis").mkdir()
    broker = start_redis(port, tmp_path / "redis")
    stack = local_stack(tmp_path, f"redis://127.0.0.1:{port}/0", model_dir, **LIMITS)
    try:
        stack.start_worker("v1")
        stack.start_worker("v1")
        job_ids: list[str] = []
        for drop in range(DROPS):
            (job_id,) = submit(stack, 1, f"drop {drop} [[fault:slow=0.5]]", steps=10)
            job_ids.append(job_id)
            wait_until(lambda j=job_id: running(stack, [j]), what="the job to start")
            holder = jobs.get_job(stack.engine, job_id).worker_host  # type: ignore[union-attr]
            redis.Redis(port=port).client_kill_filter(_type="normal", skipme=True)
            row = stack.wait_finished([job_id], timeout=120)[job_id]
            assert (row.status, row.attempts, row.worker_host) == (
                JobStatus.SUCCEEDED, 1, holder,
            )  # fmt: skip
        assert_exactly_once(stack, job_ids)
        logs = "".join(p.read_text(errors="replace") for p in stack.log_dir.glob("worker-v1-*"))
        deliveries = sum(logs.count(f"canary.render[{j}] received") for j in job_ids)
        assert deliveries > len(job_ids), "no message came back after a drop: nothing tested"
        assert "is held by render-v1-cpu-" in logs  # a second delivery met the claim guard
    finally:
        stack.stop_workers()
        broker.terminate()
        broker.wait()
