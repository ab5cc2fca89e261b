"""Failure taxonomy with real worker processes: each kind is recorded on the job row.

Faults are injected with prompt markers (CANARY_FAULT_INJECTION=true, tests only) into
the real pipeline call, so detection runs on what the pipeline really returned.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from canary.contracts import RENDER_TASK
from storage import jobs
from storage.models import FailureKind, Job, JobStatus
from storage.objects import open_store
from tests.integration.conftest import Stack, local_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, model_dir: Path
) -> Iterator[Stack]:
    """One worker per version for the whole module: every test submits its own jobs and
    reads only their rows, so they share the workers' start-up (most of this file's time)."""
    redis.Redis.from_url(redis_url).flushdb()
    stack = local_stack(
        tmp_path_factory.mktemp("failures"),
        redis_url,
        model_dir,
        CANARY_FAULT_INJECTION="true",
        CANARY_UPLOAD_BACKOFF_S="0.05",
        CANARY_TASK_SOFT_TIME_LIMIT_S="3",
        CANARY_TASK_TIME_LIMIT_S="6",
        CANARY_VISIBILITY_TIMEOUT_S="30",
    )
    for version in ("v1", "v2"):
        stack.start_worker(version)
    yield stack
    stack.stop_workers()


def submit(stack: Stack, prompt: str, version: str = "v1", steps: int = 3) -> str:
    request = {"prompt": prompt, "model_version": version, "steps": steps, "seed": 9}
    return stack.gateway().submit({**request, "width": 64, "height": 64}).job_id


@pytest.mark.parametrize(
    ("marker", "status", "kind"),
    [
        ("[[fault:nan]]", JobStatus.FAILED, FailureKind.NAN_OUTPUT),
        ("[[fault:oom]]", JobStatus.FAILED, FailureKind.OOM),
        ("[[fault:oom-once]]", JobStatus.SUCCEEDED, None),
        ("[[fault:nsfw]]", JobStatus.FAILED, FailureKind.NSFW_FILTERED),
        ("[[fault:upload-error=2]]", JobStatus.SUCCEEDED, None),
        # retries run out: spooled, then uploaded by the spool drain (tasks/spool.py)
        ("[[fault:upload-error=9]]", JobStatus.SUCCEEDED, None),
        ("[[fault:slow=1.5]]", JobStatus.FAILED, FailureKind.TIMEOUT),
        ("[[fault:hang=30]]", JobStatus.FAILED, FailureKind.TIMEOUT),
    ],
)
def test_each_failure_kind_is_recorded(
    stack: Stack, marker: str, status: JobStatus, kind: FailureKind | None
) -> None:
    job_id = submit(stack, f"a lamp {marker}")
    row = stack.wait_finished([job_id])[job_id]
    assert (row.status, row.failure_kind) == (status, kind), row.failure_message
    store = open_store(stack.settings.resolved_storage_url)
    assert store.exists(f"renders/{job_id}.png") == (status == JobStatus.SUCCEEDED)
    if kind is not None:
        assert row.failure_message and row.finished_at is not None


def test_misrouted_message_is_sent_to_its_own_queue_and_counted(stack: Stack) -> None:
    job_id = submit(stack, "a bridge", version="v2")
    time.sleep(0.1)
    job = jobs.get_job(stack.engine, job_id)
    assert job is not None
    stack.wait_finished([job_id])
    # now deliberately deliver a v2-tagged copy of a fresh job to v1's queue
    other = Job.model_validate({**job.model_dump(), "id": "misrouted-1", "status": "QUEUED"})
    other.idempotency_key = None
    jobs.insert_new_jobs(stack.engine, [other])
    spec = {
        "job_id": other.id,
        "model_version": "v2",
        "prompt": other.prompt,
        "negative_prompt": "",
        "seed": 9,
        "steps": 3,
        "guidance": 7.5,
        "width": 64,
        "height": 64,
    }
    app: Celery = stack.app
    app.send_task(RENDER_TASK, args=(other.id, spec), queue="render.v1")
    row = stack.wait_finished([other.id])[other.id]
    assert row.status == JobStatus.SUCCEEDED
    assert row.worker_version == "v2" and row.misroutes == 1
    assert "re-routing" in stack.log("worker-v1-0")


def test_unknown_version_tag_fails_loudly(stack: Stack) -> None:
    job_id = submit(stack, "a boat")
    stack.wait_finished([job_id])
    spec_row = jobs.get_job(stack.engine, job_id)
    assert spec_row is not None
    orphan = Job.model_validate({**spec_row.model_dump(), "id": "bad-tag", "status": "QUEUED"})
    orphan.idempotency_key = None
    jobs.insert_new_jobs(stack.engine, [orphan])
    spec = {"job_id": "bad-tag", "model_version": "v9", "prompt": "x", "negative_prompt": ""}
    spec |= {"seed": 1, "steps": 2, "guidance": 7.5, "width": 64, "height": 64}
    stack.app.send_task(RENDER_TASK, args=("bad-tag", spec), queue="render.v1")
    row = stack.wait_finished(["bad-tag"])["bad-tag"]
    assert (row.status, row.failure_kind) == (JobStatus.FAILED, FailureKind.INVALID_JOB)
    assert "'v9'" in (row.failure_message or "")
