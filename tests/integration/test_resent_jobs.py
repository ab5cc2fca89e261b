"""A job re-sent by recovery, the sweep or the lost-message reconciler is QUEUED again, in
the same conditional UPDATE that takes it: no holder, no start, its attempts kept (so
CANARY_MAX_ATTEMPTS still applies) and ``enqueued_at`` = the new message's sending time
(the queue wait recorded is the last attempt's). The API and `canary status` say QUEUED,
and the next worker claims it from QUEUED as usual. SQLite and PostgreSQL, real Redis.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from gateway.auth import create_key
from gateway.http.app import create_app
from scheduler.lost_messages import reconcile
from storage import jobs
from storage.models import ApiKeyRole, Job, JobStatus, utcnow
from tasks import recovery
from tests.integration.conftest import PROJECT_ROOT, Stack, fresh_database_url, make_stack
from tests.integration.test_idempotency_race import messages_in

pytestmark = pytest.mark.integration

LONG_AGO = utcnow() - timedelta(hours=2)


@pytest.fixture(params=["sqlite", "postgresql"])
def stack(request, tmp_path: Path, clean_redis: str, postgres_schema_url: str, model_dir: Path):  # type: ignore[no-untyped-def]
    database_url = fresh_database_url(request.param, tmp_path, postgres_schema_url)
    return make_stack(tmp_path, clean_redis, database_url, f"file://{tmp_path / 'o'}", model_dir)


def running_job(stack: Stack, job_id: str, holder: str = "a@h") -> Job:
    jobs.insert_new_jobs(
        stack.engine,
        [Job(id=job_id, model_version="v1", prompt="a fox", seed=1, steps=2, guidance=7.5,
             width=64, height=64)],
    )  # fmt: skip
    assert jobs.claim_job(stack.engine, job_id, started_at=LONG_AGO, worker_host=holder)
    return jobs.get_job(stack.engine, job_id)  # type: ignore[return-value]


def assert_queued_again(stack: Stack, job_id: str, since) -> Job:  # type: ignore[no-untyped-def]
    row = jobs.get_job(stack.engine, job_id)
    assert row is not None
    assert (row.status, row.worker_host, row.started_at, row.attempts) == (
        JobStatus.QUEUED, None, None, 1,
    )  # fmt: skip
    enqueued = (
        row.enqueued_at if row.enqueued_at.tzinfo else row.enqueued_at.replace(tzinfo=since.tzinfo)
    )  # type: ignore[union-attr]
    assert enqueued >= since - timedelta(seconds=1)
    return row


def status_shown(stack: Stack, job_id: str) -> tuple[dict, dict]:
    """What GET /v1/jobs/{id} (operator key) and `canary status JOB_ID --json` say."""
    token = create_key(stack.engine, f"op-{job_id}", ApiKeyRole.OPERATOR)[1]
    with TestClient(create_app(stack.settings)) as client:
        response = client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    cli = subprocess.run(
        [sys.executable, "-m", "canary.cli", "status", job_id, "--json"], env=stack.env,
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert cli.returncode in (0, 1) and cli.stdout, cli.stderr  # 1: the job failed
    return response.json(), json.loads(cli.stdout)


def test_recovery_re_sends_a_stranded_job_as_queued(stack: Stack, clean_redis: str) -> None:
    running_job(stack, "stranded")
    before = utcnow()
    assert recovery.recover_node(stack.app, stack.settings, stack.engine, "v1", "a@h") == 1
    assert_queued_again(stack, "stranded", before)
    assert len(messages_in(clean_redis, "render.v1")) == 1
    api, cli = status_shown(stack, "stranded")
    assert (api["status"], api["attempts"], cli["status"]) == ("QUEUED", 1, "QUEUED")
    # the lost attempt is on record, for the operator
    assert [(a["attempt"], a["node"], a["detected_by"]) for a in api["lost_attempts"]] == [
        (1, "a@h", "restart")
    ]
    assert [a["attempt"] for a in cli["lost_attempts"]] == [1]
    # recovered once: a second pass finds nothing
    assert recovery.recover_node(stack.app, stack.settings, stack.engine, "v1", "a@h") == 0
    claimed = jobs.claim_job(stack.engine, "stranded", started_at=utcnow(), worker_host="b@h",
                             stale_before=utcnow() - timedelta(minutes=5))  # fmt: skip
    assert claimed is not None and claimed.attempt == 2
    row = jobs.get_job(stack.engine, "stranded")
    assert (row.status, row.worker_host) == (JobStatus.RUNNING, "b@h")  # type: ignore[union-attr]


def test_the_sweep_re_sends_a_silent_workers_job_as_queued(stack: Stack, clean_redis: str) -> None:
    running_job(stack, "silent", holder="gone@elsewhere")
    before = utcnow()
    assert recovery.sweep(stack.app, stack.settings, stack.engine, "v1") == 1
    assert_queued_again(stack, "silent", before)
    assert recovery.sweep(stack.app, stack.settings, stack.engine, "v1") == 0
    assert len(messages_in(clean_redis, "render.v1")) == 1
    (lost,) = jobs.lost_attempts(stack.engine, "silent")
    assert (lost.attempt, lost.node, lost.detected_by) == (1, "gone@elsewhere", "sweep")


def test_the_reconciler_takes_a_lost_message_with_one_update(
    stack: Stack, clean_redis: str
) -> None:
    jobs.insert_new_jobs(
        stack.engine,
        [Job(id="lost-msg", model_version="v1", prompt="a fox", seed=1, steps=2, guidance=7.5,
             width=64, height=64, enqueued_at=LONG_AGO)],
    )  # fmt: skip
    before = utcnow()
    assert reconcile(stack.app, stack.settings, stack.engine, timedelta(seconds=60))["v1"] == 1
    row = jobs.get_job(stack.engine, "lost-msg")
    assert row is not None and row.status == JobStatus.QUEUED
    enqueued = (
        row.enqueued_at if row.enqueued_at.tzinfo else row.enqueued_at.replace(tzinfo=before.tzinfo)
    )  # type: ignore[union-attr]
    assert enqueued >= before - timedelta(seconds=1)  # the new message's queue wait
    assert len(messages_in(clean_redis, "render.v1")) == 1
    # a concurrent reconciler that read the job before this one took it takes nothing
    assert jobs.take_lost(stack.engine, ["lost-msg"], utcnow() - timedelta(seconds=60)) == []
    with stack.engine.begin() as connection:
        connection.execute(update(Job).where(Job.id == "lost-msg").values(enqueued_at=LONG_AGO))
    assert [j.id for j in jobs.take_lost(stack.engine, ["lost-msg"], before)] == ["lost-msg"]
