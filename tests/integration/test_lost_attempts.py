"""A job whose worker is lost again and again ends worker_lost with each attempt's cause on
record: which node, when, how its pool process died (signal or exit code, as the worker's
main process saw it) and how many other jobs that process held, so an operator can tell a
poison job (the same death every time) from bad luck (unrelated crashes). The failure
message, GET /v1/jobs/{id} (operator keys) and `canary status JOB_ID` list them.

Real worker processes; the crashes are signals sent to the pool process (SIGKILL is also
what the kernel's OOM killer sends).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.auth import create_key
from gateway.http.app import create_app
from storage import jobs
from storage.models import ApiKeyRole, FailureKind, JobStatus
from tests.integration.conftest import PROJECT_ROOT, Stack, local_stack
from tests.integration.test_crash_safety import LIMITS as CRASH_LIMITS
from tests.integration.test_crash_safety import pool_children, wait_until

pytestmark = pytest.mark.integration

# the crash suite's short limits, with at most two attempts per job
LIMITS = {**CRASH_LIMITS, "CANARY_MAX_ATTEMPTS": "2"}


def on_attempt(stack: Stack, job_id: str, n: int) -> Callable[[], bool]:
    def check() -> bool:
        row = jobs.get_job(stack.engine, job_id)
        return row is not None and row.attempts == n and row.status == JobStatus.RUNNING

    return check


def test_three_crashes_end_worker_lost_with_each_cause_on_record(
    tmp_path: Path, clean_redis: str, model_dir: Path
) -> None:
    stack = local_stack(tmp_path, clean_redis, model_dir, **LIMITS)
    try:
        worker = stack.start_worker("v1")
        node = stack.nodes[worker.pid]
        gateway = stack.gateway()

        def submit(prompt: str, seed: int) -> str:
            return gateway.submit({"prompt": prompt, "model_version": "v1", "seed": seed,
                                   "steps": 4, "width": 64, "height": 64}).job_id  # fmt: skip

        # attempt 1: killed (SIGKILL) while the recorder still uploads another job's image
        uploading = submit("a kite [[fault:upload-slow=6]]", 1)
        poison = submit("a storm [[fault:slow=0.5]]", 2)
        wait_until(on_attempt(stack, poison, 1), timeout=120, what="attempt 1")
        assert jobs.get_job(stack.engine, uploading).status == JobStatus.RUNNING  # type: ignore[union-attr]
        (child,) = pool_children(worker)
        os.kill(child, signal.SIGKILL)
        # attempt 2: a crash of another kind (a segfault)
        wait_until(on_attempt(stack, poison, 2), timeout=120, what="attempt 2")
        (child,) = pool_children(worker)
        os.kill(child, signal.SIGSEGV)
        # attempt 3 gives up (CANARY_MAX_ATTEMPTS=2)
        rows = stack.wait_finished([poison, uploading], timeout=180)
    finally:
        stack.stop_workers()

    row = rows[poison]
    assert (row.status, row.failure_kind) == (JobStatus.FAILED, FailureKind.WORKER_LOST)
    message = row.failure_message or ""
    assert message.startswith("gave up after 2 attempts whose worker was lost: "), message
    first, second = message.split(": ", 1)[1].split("; ")
    assert first.startswith(f"attempt 1: SIGKILL (killed, e.g. by the OOM killer) on {node} at ")
    assert "(with 1 other job, seen by pool)" in first, first
    assert second.startswith(f"attempt 2: SIGSEGV on {node} at ") and "(alone, " in second, second

    (lost,) = jobs.lost_attempts(stack.engine, uploading)  # lost with the poison job, re-sent
    assert (lost.attempt, lost.node, lost.other_jobs) == (1, node, 1)
    assert rows[uploading].status == JobStatus.SUCCEEDED and rows[uploading].attempts == 2

    token = create_key(stack.engine, "ops", ApiKeyRole.OPERATOR)[1]
    client_token = create_key(stack.engine, "client", ApiKeyRole.CLIENT)[1]
    with TestClient(create_app(stack.settings)) as client:
        shown = client.get(f"/v1/jobs/{poison}", headers={"Authorization": f"Bearer {token}"})
        hidden = client.get(
            f"/v1/jobs/{poison}", headers={"Authorization": f"Bearer {client_token}"}
        )
    assert shown.status_code == 200, shown.text
    attempts = shown.json()["lost_attempts"]
    assert [(a["attempt"], a["node"], a["other_jobs"], a["detected_by"]) for a in attempts] == [
        (1, node, 1, "pool"),
        (2, node, 0, "pool"),
    ]
    assert attempts[0]["cause"].startswith("SIGKILL") and attempts[1]["cause"] == "SIGSEGV"
    assert hidden.status_code in (200, 404)
    if hidden.status_code == 200:
        assert hidden.json().get("lost_attempts") is None  # operators only

    cli = subprocess.run(
        [sys.executable, "-m", "canary.cli", "status", poison, "--json"], env=stack.env,
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert cli.returncode == 1, cli.stderr  # the job failed
    document = json.loads(cli.stdout)
    assert [a["cause"] for a in document["lost_attempts"]] == [attempts[0]["cause"], "SIGSEGV"]
    printed = subprocess.run(
        [sys.executable, "-m", "canary.cli", "status", poison], env=stack.env,
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "lost attempts" in printed.stdout and "SIGSEGV" in printed.stdout, printed.stdout
