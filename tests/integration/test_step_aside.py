"""Step aside (tasks/step_aside.py) on a real worker, Redis and SQLite: a background render
(a shadow copy, a golden replay) under way when a live job of its version arrives stops at
its next denoising step, goes back to its queue without counting an attempt, and renders
again once the live job has started; a bulk or interactive render under way is never
interrupted. The start-time checks (a bulk job giving way to an interactive one waiting in
the broker or handed to the pool process behind it) are tested directly: on a worker,
which of the two processes gets there first is a race of milliseconds."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from canary.contracts import PriorityClass, queue_for
from storage import jobs
from storage.models import JobStatus
from tasks.step_aside import mark_in_parent, step_aside_check
from tests.integration.conftest import Stack, fresh_database_url, make_stack

pytestmark = pytest.mark.integration

SLOW = "[[fault:slow=0.4]]"  # each denoising step sleeps 0.4 s: 12 steps, about 5 s


@pytest.fixture
def stack(tmp_path: Path, clean_redis: str, model_dir: Path) -> Iterator[Stack]:
    built = make_stack(
        tmp_path, clean_redis, fresh_database_url("sqlite", tmp_path, ""),
        f"file://{tmp_path / 'objects'}", model_dir, CANARY_FAULT_INJECTION="true",
    )  # fmt: skip
    built.settings = built.settings.model_copy(update={"fault_injection": True})
    yield built
    built.stop_workers()


def submit(stack: Stack, prompt: str, priority: PriorityClass, **extra: Any) -> str:
    request = {"prompt": prompt, "model_version": "v2", "seed": 7, "steps": 2, "width": 64,
               "height": 64, **extra}  # fmt: skip
    return stack.gateway().submit(request, source="api", priority=priority).job_id


def wait_started(stack: Stack, job_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (job := jobs.get_job(stack.engine, job_id)) is None or job.status != JobStatus.RUNNING:
        assert time.monotonic() < deadline, f"{job_id} did not start: {stack.log('worker-v2-0')}"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        (PriorityClass.BACKGROUND, PriorityClass.BULK),  # a shadow copy, a batch's job
        (PriorityClass.BACKGROUND, PriorityClass.INTERACTIVE),
    ],
)
def test_a_background_render_steps_aside_for_live_work_and_renders_after_it(
    stack: Stack, lower: PriorityClass, higher: PriorityClass
) -> None:
    stack.start_worker("v2")
    slow = submit(stack, f"a quiet harbour {SLOW}", lower, steps=12)
    wait_started(stack, slow)
    urgent = submit(stack, "a lighthouse at dusk", higher)
    done = stack.wait_finished([slow, urgent])

    assert done[urgent].status == done[slow].status == JobStatus.SUCCEEDED
    # the urgent job did not wait for the slow render's 12 steps: it started before the
    # slow job's second start, and finished long before it
    assert done[urgent].started_at < done[slow].started_at
    assert done[urgent].finished_at < done[slow].finished_at
    assert done[slow].attempts == 1  # stepping aside is not an attempt
    log = stack.log("worker-v2-0")
    assert f"job {slow} stepped aside for a job of a higher class" in log
    assert log.count(f"job {slow} claimed: attempt 1") == 2  # once again after


def written(version: str, priority: PriorityClass) -> SimpleNamespace:
    """A render message of ``priority`` as the main process hands it to the pool process
    (counted and stamped), as the pool process's task sees its request."""
    request: dict[str, Any] = {"delivery_info": {"routing_key": queue_for(version, priority)}}
    mark_in_parent(version, request)
    return SimpleNamespace(**request)


def test_a_bulk_job_gives_way_as_it_starts_to_a_waiting_interactive_one(
    clean_redis: str,
) -> None:
    """The start-time checks: a bulk job steps aside while an interactive message of its
    version waits in the broker, or has been handed to the pool process after it; once it
    renders it is not interrupted (no between-step check)."""
    broker = redis.Redis.from_url(clean_redis)
    bulk = step_aside_check(written("v2", PriorityClass.BULK), "v2", clean_redis)
    assert bulk is not None and bulk.between_steps is None
    assert not bulk.at_start()
    broker.lpush(queue_for("v1", PriorityClass.INTERACTIVE), b"another version's")
    broker.lpush(queue_for("v2", PriorityClass.BACKGROUND), b"a lower class")
    assert not bulk.at_start()
    broker.lpush(queue_for("v2", PriorityClass.INTERACTIVE), b"waiting")
    assert bulk.at_start()

    broker.delete(queue_for("v2", PriorityClass.INTERACTIVE))  # fetched by the worker ...
    assert not bulk.at_start()
    written("v2", PriorityClass.INTERACTIVE)  # ... and handed to the pool behind the bulk job
    assert bulk.at_start()
    # an interactive job never steps aside; a bulk job handed over after the interactive
    # one does not step aside for it (it is ahead of it in the pipe)
    assert step_aside_check(written("v2", PriorityClass.INTERACTIVE), "v2", clean_redis) is None
    later = step_aside_check(written("v2", PriorityClass.BULK), "v2", clean_redis)
    assert later is not None and not later.at_start()


def test_a_background_job_checks_between_steps_and_an_unanswering_broker_is_no_reason(
    clean_redis: str,
) -> None:
    background = step_aside_check(written("v2", PriorityClass.BACKGROUND), "v2", clean_redis)
    assert background is not None and background.between_steps is not None
    assert not background.between_steps()
    written("v2", PriorityClass.BULK)
    assert background.between_steps() and background.at_start()

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    silent = step_aside_check(written("v2", PriorityClass.BULK), "v2", closed)
    assert silent is not None and not silent.at_start()


@pytest.mark.parametrize("running", [PriorityClass.BULK, PriorityClass.INTERACTIVE])
def test_a_live_render_under_way_is_not_interrupted(stack: Stack, running: PriorityClass) -> None:
    stack.start_worker("v2")
    first = submit(stack, f"a quiet harbour {SLOW}", running, steps=6)
    wait_started(stack, first)
    second = submit(stack, "a lighthouse at dusk", PriorityClass.INTERACTIVE)
    done = stack.wait_finished([first, second])
    # the second started only after the first's six slow steps (6 x 0.4 s of sleep)
    assert (done[second].started_at - done[first].started_at).total_seconds() >= 2.4
    assert "stepped aside" not in stack.log("worker-v2-0")
