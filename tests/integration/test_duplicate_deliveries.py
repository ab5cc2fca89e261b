"""A duplicate delivery of a finished job (its message re-sent under the same task id, as a
broker redelivery or a recovery re-send does) changes nothing Flower shows: the task keeps
the job's real outcome (SUCCESS with its result, FAILURE with its JobFailed), the
per-worker counters stay one per job, and the worker logs one INFO line saying it skipped
a duplicate delivery (Celery's own line for the task says ALREADY_FINISHED, neither
RENDERED nor HELD). Real worker, real Flower.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from canary.contracts import RENDER_TASK
from storage import jobs
from tasks.publish import render_spec
from tests.integration.conftest import local_stack
from tests.integration.test_flower import AUTH, free_port, start_flower, stop, wait_for

pytestmark = pytest.mark.integration


def test_a_duplicate_delivery_of_a_finished_job_keeps_its_outcome_in_flower(
    tmp_path: Path, clean_redis: str, model_dir: Path
) -> None:
    stack = local_stack(tmp_path, clean_redis, model_dir, CANARY_FAULT_INJECTION="true")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    flower = start_flower(stack, port)
    try:
        worker = stack.start_worker("v1")
        gateway = stack.gateway()
        ok, bad = (
            gateway.submit({"prompt": prompt, "model_version": "v1", "seed": 3, "steps": 2,
                            "width": 64, "height": 64}).job_id
            for prompt in ("a lamp", "a lamp [[fault:nan]]")
        )  # fmt: skip
        rows = stack.wait_finished([ok, bad])

        def info(task_id: str) -> dict:
            return httpx.get(f"{base}/api/task/info/{task_id}", auth=AUTH, timeout=5).json()

        def final(task_id: str) -> dict | None:
            found = info(task_id)
            return found if found.get("state") in {"SUCCESS", "FAILURE"} else None

        before = {job_id: wait_for(lambda j=job_id: final(j), timeout=30) for job_id in (ok, bad)}
        assert before[ok]["state"] == "SUCCESS" and before[bad]["state"] == "FAILURE"

        def counters() -> dict[str, int]:
            data = httpx.get(f"{base}/workers?json=1", auth=AUTH, timeout=10).json()["data"]
            return {
                kind: sum(w.get(kind, 0) for w in data)
                for kind in ("task-succeeded", "task-failed")
            }

        counted = counters()
        for job_id in (ok, bad):
            stack.app.send_task(
                RENDER_TASK, args=(job_id, render_spec(rows[job_id])), queue="render.v1",
                task_id=job_id,
            )  # fmt: skip

        log_name = next(p.name for p in stack.log_dir.glob("worker-v1-*.log"))

        def skipped_both() -> bool:
            text = stack.log(log_name)
            return all(
                any(f"job {j} is" in line and "skipped a duplicate delivery" in line
                    for line in text.splitlines())
                for j in (ok, bad)
            )  # fmt: skip

        wait_for(skipped_both, timeout=60)
        time.sleep(3)  # Flower has taken in every event the duplicates caused
        after = {job_id: info(job_id) for job_id in (ok, bad)}
        for job_id in (ok, bad):
            for name in ("state", "result", "exception", "succeeded", "failed"):
                assert after[job_id].get(name) == before[job_id].get(name), (job_id, name)
        assert after[ok]["result"] == repr(f"SUCCEEDED {rows[ok].image_key}")
        assert after[bad]["exception"].startswith("JobFailed('nan_output: ")
        assert counters() == counted

        log = (stack.log_dir / log_name).read_text(errors="replace")
        for job_id in (ok, bad):
            lines = [line for line in log.splitlines() if job_id in line]
            skipped = [line for line in lines if "skipped a duplicate delivery" in line]
            assert len(skipped) == 1 and "INFO" in skipped[0], lines
            # not rendered again, and not passed off as held by someone else or rendered
            assert sum(" claimed: attempt" in line for line in lines) == 1, lines
            handled = [line for line in lines if f"canary.render[{job_id}] succeeded" in line]
            assert handled[-1].endswith("'ALREADY_FINISHED'"), lines
        assert jobs.get_job(stack.engine, ok).attempts == 1  # type: ignore[union-attr]
        assert worker.poll() is None
    finally:
        stop(flower)
        stack.stop_workers()
