"""Flower agrees with the database: a job FAILED in its row is a failed task, kind included.

A batch with every injectable failure kind runs on real workers (one of them with weights
that do not load) while a real Flower listens; then every job row is compared with
Flower's task list (`/api/tasks`) and its per-worker counters (`/workers?json=1`).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from canary.contracts import RENDER_TASK
from storage import jobs
from storage.models import FailureKind, Job, JobStatus
from tasks.publish import render_spec
from tests.integration.conftest import Stack, local_stack
from tests.integration.test_flower import AUTH, free_port, start_flower, stop, wait_for

pytestmark = pytest.mark.integration

# prompt marker (v1 worker) -> the kind its job must fail with (None: it succeeds)
V1_CASES = {
    "": None,
    "[[fault:oom-once]]": None,
    "[[fault:upload-error=2]]": None,
    "[[fault:nan]]": FailureKind.NAN_OUTPUT,
    "[[fault:oom]]": FailureKind.OOM,
    "[[fault:nsfw]]": FailureKind.NSFW_FILTERED,
    "[[fault:upload-error=9]]": None,  # spooled, then uploaded (tasks/spool.py)
    "[[fault:slow=1.5]]": FailureKind.TIMEOUT,  # soft time limit, inside the task
    "[[fault:hang=30]]": FailureKind.TIMEOUT,  # hard time limit kills the pool process
}


def _copy_job(stack: Stack, template: Job, job_id: str) -> Job:
    row = Job.model_validate({**template.model_dump(), "id": job_id, "status": "QUEUED"})
    row.idempotency_key = None
    jobs.insert_new_jobs(stack.engine, [row])
    return row


def test_flower_counts_and_states_match_the_job_rows(
    tmp_path: Path, clean_redis: str, model_dir: Path
) -> None:
    registry = tmp_path / "registry"
    shutil.copytree(model_dir, registry)
    (registry / "v2" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"broken")
    stack = local_stack(
        tmp_path, clean_redis, registry,
        CANARY_FAULT_INJECTION="true", CANARY_UPLOAD_BACKOFF_S="0.05",
        CANARY_TASK_SOFT_TIME_LIMIT_S="3", CANARY_TASK_TIME_LIMIT_S="6",
        CANARY_VISIBILITY_TIMEOUT_S="30",
    )  # fmt: skip
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    flower = start_flower(stack, port)
    try:
        gateway = stack.gateway()
        requests = [
            {"prompt": f"a lamp {marker}", "model_version": "v1", "seed": n, "steps": 3}
            for n, marker in enumerate(V1_CASES)
        ] + [{"prompt": "a tree", "model_version": "v2", "seed": 1, "steps": 3}]  # model_load
        prepared = [gateway.prepare({**r, "width": 64, "height": 64}) for r in requests]
        submitted = [s.job_id for s in gateway.submit_many(prepared)]
        expected = dict(zip(submitted, [*V1_CASES.values(), FailureKind.MODEL_LOAD], strict=True))

        # a job whose earlier deliveries all lost their worker: the next one gives up
        template = jobs.get_job(stack.engine, submitted[0])
        assert template is not None
        lost = _copy_job(stack, template, "lost-job")
        with stack.engine.begin() as connection:
            connection.execute(update(Job).where(Job.id == lost.id).values(attempts=3))
        # an unknown version tag (invalid job); a v2 job delivered to v1 (re-routed, same id)
        bad_tag = _copy_job(stack, template, "bad-tag")
        misrouted = _copy_job(stack, template, "misrouted")
        with stack.engine.begin() as connection:
            connection.execute(update(Job).where(Job.id == "misrouted").values(model_version="v2"))
        for row, tag in ((lost, "v1"), (bad_tag, "v9"), (misrouted, "v2")):
            spec = {**render_spec(row), "job_id": row.id, "model_version": tag}
            stack.app.send_task(RENDER_TASK, args=(row.id, spec), queue="render.v1", task_id=row.id)
        expected |= {
            "lost-job": FailureKind.WORKER_LOST,
            "bad-tag": FailureKind.INVALID_JOB,
            "misrouted": FailureKind.MODEL_LOAD,
        }

        stack.start_worker("v1")
        stack.start_worker("v2")
        rows = stack.wait_finished(list(expected), timeout=180)
        for job_id, kind in expected.items():
            status = JobStatus.SUCCEEDED if kind is None else JobStatus.FAILED
            assert (rows[job_id].status, rows[job_id].failure_kind) == (status, kind), job_id

        def flower_tasks() -> dict | None:
            tasks = httpx.get(f"{base}/api/tasks", auth=AUTH, timeout=5).json()
            final = {"SUCCESS", "FAILURE"}
            done = all(tasks.get(job_id, {}).get("state") in final for job_id in expected)
            return tasks if done else None

        tasks = wait_for(flower_tasks, timeout=30)
        for job_id, row in rows.items():
            task = tasks[job_id]
            if row.status == JobStatus.SUCCEEDED:
                assert task["state"] == "SUCCESS", (job_id, task)
                assert task["result"] == repr(f"SUCCEEDED renders/{job_id}.png")
            else:
                assert task["state"] == "FAILURE", (job_id, task)
                # JobFailed('kind: message') (quoted with " when the message holds a ')
                assert re.match(rf"JobFailed\(['\"]{row.failure_kind}: ", task["exception"]), (
                    job_id,
                    task["exception"],
                )
        assert tasks["misrouted"]["worker"].startswith("render-v2")  # followed to v2
        failed = httpx.get(f"{base}/api/tasks", params={"state": "FAILURE"}, auth=AUTH).json()
        assert set(failed) == {job_id for job_id, r in rows.items() if r.status == "FAILED"}

        workers = httpx.get(f"{base}/workers?json=1", auth=AUTH, timeout=10).json()["data"]
        totals = {
            kind: sum(worker.get(kind, 0) for worker in workers)
            for kind in ("task-succeeded", "task-failed")
        }
        statuses = [row.status for row in rows.values()]
        assert totals == {
            "task-succeeded": statuses.count(JobStatus.SUCCEEDED),
            "task-failed": statuses.count(JobStatus.FAILED),
        }
    finally:
        stop(flower)
        stack.stop_workers()
