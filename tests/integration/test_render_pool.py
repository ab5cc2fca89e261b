"""The render pool (tasks/pool.py) with a real worker: the next job waits in the pool
process's pipe, so it starts without a round trip through the worker's main process."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.integration import test_crash_safety
from tests.integration.conftest import Stack
from tests.integration.test_crash_safety import assert_exactly_once, running, submit, wait_until

pytestmark = pytest.mark.integration

stack = test_crash_safety.stack  # the same fixture: a stack with short limits and faults on


def test_next_job_starts_while_the_main_process_is_frozen(stack: Stack) -> None:
    worker = stack.start_worker("v1")
    job_ids = submit(stack, 2, "[[fault:slow=0.75]]")  # 4 steps: 3 s per job
    wait_until(lambda: running(stack, job_ids), what="the first job to start")
    first = running(stack, job_ids)[0]
    (second,) = set(job_ids) - {first}
    time.sleep(1.0)  # the main process has reserved the second message and handed it over
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        # Nothing from the main process can reach the pool process now: the second job can
        # start only because it already waits in the pool process's pipe.
        wait_until(lambda: second in running(stack, job_ids), what="the second job to start")
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    rows = assert_exactly_once(stack, job_ids)
    assert [rows[job_id].attempts for job_id in job_ids] == [1, 1]
