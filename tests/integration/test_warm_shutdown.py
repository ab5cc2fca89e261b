"""Warm shutdown of a render worker whose next job already waits in the pool process's
pipe (tasks/pool.py, prefetch 2): that job runs, its result and acknowledgement are
processed before the pool stops, and the worker exits without waiting out billiard's
30 s for an unread result or handing the message back for a second delivery."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest

from storage import jobs
from storage.models import JobStatus
from tests.integration import test_crash_safety
from tests.integration.conftest import Stack
from tests.integration.test_crash_safety import assert_exactly_once, running, submit, wait_until

pytestmark = pytest.mark.integration

stack = test_crash_safety.stack  # the same fixture: a stack with short limits and faults on

EXIT_BOUND_S = 15.0  # a bound, not a benchmark: about 5 s of render left, 31 s when broken
RESTORED = re.compile(r"Restoring \d+ unacknowledged message")


def deliveries(stack: Stack, job_id: str) -> int:
    logs = "".join(p.read_text(errors="replace") for p in stack.log_dir.glob("*.log"))
    return logs.count(f"canary.render[{job_id}] received")


def test_warm_shutdown_runs_and_acknowledges_the_job_in_the_pipe(stack: Stack) -> None:
    worker = stack.start_worker("v1", name="first")
    node = stack.nodes[worker.pid]
    job_ids = submit(stack, 4, "[[fault:slow=0.75]]")  # 4 steps: 3 s per job
    wait_until(lambda: running(stack, job_ids), what="the first job to start")
    # the earliest start: a warm worker may already have claimed the next job ahead, as it
    # wrote it to the pool process's pipe (tasks/claim_ahead.py), which makes it RUNNING too
    first = min(
        (r for r in jobs.get_jobs(stack.engine, job_ids) if r.status == JobStatus.RUNNING),
        key=lambda r: r.started_at or r.created_at,
    ).id
    time.sleep(1.0)  # the second message is reserved and written to the pool process's pipe

    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)  # warm shutdown
    try:
        code = worker.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not exit within 90 s of SIGTERM: {stack.log('first')}")
    took = time.monotonic() - sent
    print(f"warm shutdown with a job in the pipe: exited {took:.1f} s after SIGTERM")
    log = (stack.log_dir / "first.log").read_text(errors="replace")

    assert code == 0, stack.log("first")
    assert not RESTORED.search(log), "a message was handed back: " + stack.log("first")
    assert took < EXIT_BOUND_S, f"exited {took:.1f} s after SIGTERM: {stack.log('first')}"
    rows = {row.id: row for row in jobs.get_jobs(stack.engine, job_ids)}
    done = [j for j in job_ids if rows[j].status == JobStatus.SUCCEEDED]
    # the running job and the one in the pipe, both finished by this worker before it left
    assert first in done and len(done) == 2, {j: rows[j].status for j in job_ids}
    assert all((rows[j].worker_host, rows[j].attempts) == (node, 1) for j in done)
    # the others were never taken: still queued on the broker for the next worker
    assert all(
        (rows[j].status, rows[j].attempts) == (JobStatus.QUEUED, 0)
        for j in job_ids
        if j not in done
    )

    stack.start_worker("v1", name="second")
    rows = assert_exactly_once(stack, job_ids, "warm-shutdown-job-in-pipe")
    assert [rows[j].attempts for j in job_ids] == [1, 1, 1, 1]
    # each message delivered once: nothing came back to be turned into ALREADY_FINISHED
    assert {j: deliveries(stack, j) for j in job_ids} == {j: 1 for j in job_ids}
