"""Background upload + record (tasks/recorder.py) with real workers: a job whose message was
acknowledged before its image was stored still ends with one image and one success record,
whether the worker shuts down warm, its pool process is killed, the whole worker is killed,
or its host never comes back."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import update

from canary.contracts import queues_for
from storage import jobs
from storage.models import Job, JobStatus, utcnow
from tests.integration.conftest import Stack
from tests.integration.test_crash_safety import (
    assert_exactly_once,
    crash_stack,
    pool_children,
    submit,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path: Path, clean_redis: str, model_dir: Path) -> Iterator[Stack]:
    stack = crash_stack(tmp_path, clean_redis, model_dir)
    yield stack
    stack.stop_workers()


def rendered_not_recorded(stack: Stack, job_id: str, log: str = "worker-v1-0") -> None:
    """Wait until the task has returned (message acknowledged) while the upload is pending."""
    wait_until(
        lambda: f"canary.render[{job_id}] succeeded" in stack.log(log),
        what="the render task to return",
    )
    row = jobs.get_job(stack.engine, job_id)
    assert row is not None and row.status == JobStatus.RUNNING  # the upload is still going


def test_warm_shutdown_records_what_was_rendered(stack: Stack) -> None:
    worker = stack.start_worker("v1")
    (job_id,) = submit(stack, 1, "[[fault:upload-slow=3]]", steps=2)
    rendered_not_recorded(stack, job_id)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    rows = assert_exactly_once(stack, [job_id])
    assert rows[job_id].attempts == 1  # recorded on the way out, not rendered again


def test_sigkill_after_render_before_upload_renders_again(stack: Stack) -> None:
    worker = stack.start_worker("v1")
    (job_id,) = submit(stack, 1, "[[fault:upload-slow=3]]", steps=2)
    rendered_not_recorded(stack, job_id)
    (child,) = pool_children(worker)
    os.kill(child, signal.SIGKILL)
    rows = assert_exactly_once(stack, [job_id])
    assert rows[job_id].attempts == 2
    assert "re-sending 1 job(s) left unfinished" in stack.log("worker-v1-0")


def test_whole_worker_killed_after_render_is_recovered_by_its_successor(stack: Stack) -> None:
    worker = stack.start_worker("v1")
    (job_id,) = submit(stack, 1, "[[fault:upload-slow=3]]", steps=2)
    rendered_not_recorded(stack, job_id)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    stack.start_worker("v1")  # same node name: it re-sends what its predecessor held
    rows = assert_exactly_once(stack, [job_id])
    assert rows[job_id].attempts == 2


def test_a_job_stranded_on_a_lost_host_is_swept_up(
    tmp_path: Path, clean_redis: str, model_dir: Path
) -> None:
    stack = crash_stack(tmp_path, clean_redis, model_dir, CANARY_RECOVERY_SWEEP_EVERY_S="1")
    try:
        (job_id,) = submit(stack, 1, "", steps=2)
        # a worker on another host claimed it, acknowledged the message, and vanished
        redis.Redis.from_url(clean_redis).delete(*queues_for("v1"))
        with stack.engine.begin() as connection:
            connection.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(
                    status=JobStatus.RUNNING,
                    attempts=1,
                    worker_host="render-v1-cpu@lost-host",
                    started_at=utcnow() - timedelta(seconds=120),
                )
            )
        stack.start_worker("v1")
        started = time.monotonic()
        rows = assert_exactly_once(stack, [job_id])
        assert rows[job_id].attempts == 2
        assert time.monotonic() - started < 60
    finally:
        stack.stop_workers()
