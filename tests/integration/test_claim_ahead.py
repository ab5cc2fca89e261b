"""Claim ahead (tasks/claim_ahead.py): the job waiting in a pool process's pipe is claimed
by the worker's main process while the current job renders, and the render takes that
claim without a database round trip, only when it can be trusted.

The storage half runs on SQLite and PostgreSQL; the trust rules against a database row;
the whole path with a real worker: the waiting job is RUNNING before its render starts,
its record keeps the real start, and a pool process killed while a claimed job waits in
its pipe loses nothing and renders nothing twice."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy.engine import Engine

from storage import jobs
from storage.db import get_engine, init_db
from storage.models import JobStatus, utcnow
from tasks.claim_ahead import CONFIRM_AFTER_S, REQUEST_KEY, take_in_child
from tests.integration import test_job_claims
from tests.integration.conftest import Stack
from tests.integration.test_crash_safety import (
    Deaths,
    assert_exactly_once,
    crash_stack,
    pool_children,
    submit,
    wait_until,
)
from tests.integration.test_job_claims import new_job

pytestmark = pytest.mark.integration

NODE = "render-v1-0@host"
FIELDS = {"worker_host": NODE, "worker_version": "v1", "device": "cpu"}
engine = test_job_claims.engine  # the fixture: a fresh database, SQLite and PostgreSQL


def test_only_a_queued_job_is_claimed_ahead(engine: Engine) -> None:
    queued = new_job(engine, "queued")
    claimed = jobs.claim_job(engine, queued, utcnow(), queued_only=True, **FIELDS)
    assert claimed is not None and claimed.attempt == 1
    # running (even held by this very node) or finished: left to the render task's claim
    assert jobs.claim_job(engine, queued, utcnow(), queued_only=True, **FIELDS) is None
    jobs.finish(engine, queued, JobStatus.SUCCEEDED)
    assert jobs.claim_job(engine, queued, utcnow(), queued_only=True, **FIELDS) is None
    row = jobs.get_job(engine, queued)
    assert row is not None and (row.status, row.attempts) == (JobStatus.SUCCEEDED, 1)


def test_a_claim_is_confirmed_only_while_its_holder_still_has_it(engine: Engine) -> None:
    job_id = new_job(engine, "confirm")
    claimed = jobs.claim_job(
        engine, job_id, utcnow() - timedelta(seconds=5), queued_only=True, **FIELDS
    )
    assert claimed is not None
    real_start = utcnow()
    assert jobs.confirm_claim(engine, job_id, claimed.attempt, NODE, real_start)
    row = jobs.get_job(engine, job_id)
    assert row is not None and row.started_at is not None
    assert abs(aware(row.started_at).timestamp() - real_start.timestamp()) < 0.01
    assert not jobs.confirm_claim(engine, job_id, claimed.attempt, "other@host", real_start)
    assert not jobs.confirm_claim(engine, job_id, claimed.attempt + 1, NODE, real_start)
    jobs.take_stranded(engine, model_version="v1", worker_host=NODE)  # recovery re-queues it
    assert not jobs.confirm_claim(engine, job_id, claimed.attempt, NODE, real_start)


def aware(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=UTC)  # SQLite returns naive UTC


def ahead(claimed_at: float, claimed: jobs.Claimed) -> SimpleNamespace:
    """A task request carrying a claim made ahead at ``claimed_at`` (time.monotonic())."""
    value = (claimed_at, claimed.id, claimed.attempt, claimed.created_at, claimed.enqueued_at)
    return SimpleNamespace(**{REQUEST_KEY: value})


def test_the_render_trusts_a_claim_only_if_made_after_its_process_took_over(
    tmp_path: Path,
) -> None:
    engine = get_engine(f"sqlite:///{tmp_path / 'claims.db'}")
    init_db(engine)
    job_id = new_job(engine, "trust")
    before_claim = time.monotonic()
    claimed = jobs.claim_job(engine, job_id, utcnow(), queued_only=True, **FIELDS)
    assert claimed is not None
    ctx = SimpleNamespace(engine=engine, node=NODE, ready_at=before_claim - 1)
    taken = take_in_child(ctx, ahead(before_claim, claimed), job_id, utcnow())  # type: ignore[arg-type]
    assert taken == claimed
    # no claim, another job's, or one made before this process re-sent what its node held
    assert take_in_child(ctx, SimpleNamespace(), job_id, utcnow()) is None  # type: ignore[arg-type]
    assert take_in_child(ctx, ahead(before_claim, claimed), "other", utcnow()) is None  # type: ignore[arg-type]
    replaced = SimpleNamespace(engine=engine, node=NODE, ready_at=before_claim + 0.001)
    assert take_in_child(replaced, ahead(before_claim, claimed), job_id, utcnow()) is None  # type: ignore[arg-type]
    parent = SimpleNamespace(engine=engine, node=NODE, ready_at=None)
    assert take_in_child(parent, ahead(before_claim, claimed), job_id, utcnow()) is None  # type: ignore[arg-type]
    # a claim older than CONFIRM_AFTER_S is confirmed in the database first
    long_ago = before_claim - CONFIRM_AFTER_S - 1
    ctx.ready_at = long_ago - 1
    assert take_in_child(ctx, ahead(long_ago, claimed), job_id, utcnow()) == claimed  # type: ignore[arg-type]
    jobs.take_stranded(engine, model_version="v1", worker_host=NODE)
    assert take_in_child(ctx, ahead(long_ago, claimed), job_id, utcnow()) is None  # type: ignore[arg-type]


@pytest.fixture
def stack(tmp_path: Path, clean_redis: str, model_dir: Path) -> Iterator[Stack]:
    stack = crash_stack(tmp_path, clean_redis, model_dir)
    yield stack
    stack.stop_workers()


def started_and_ready(stack: Stack) -> tuple[subprocess.Popen, str]:
    """A worker whose pool process is up (nothing is claimed ahead while it starts, and the
    worker answers pings before its pool process has loaded the model), and the id of
    the job that showed it."""
    worker = stack.start_worker("v1")
    (warm_up,) = submit(stack, 1, "warm-up")
    stack.wait_finished([warm_up])
    return worker, warm_up


def test_the_waiting_job_is_claimed_while_the_current_one_renders(stack: Stack) -> None:
    worker, warm_up = started_and_ready(stack)
    first, waiting = submit(stack, 2, "[[fault:slow=1.0]]")

    def claimed_ahead() -> bool:
        rows = {r.id: r for r in jobs.get_jobs(stack.engine, [first, waiting])}
        return all(r.status == JobStatus.RUNNING for r in rows.values())

    wait_until(claimed_ahead, what="the second job to be claimed while the first renders")
    row = jobs.get_job(stack.engine, waiting)
    assert row is not None and (row.worker_host, row.attempts) == (stack.nodes[worker.pid], 1)
    rows = assert_exactly_once(stack, [warm_up, first, waiting], "claim-ahead")
    assert rows[waiting].attempts == 1
    # the record keeps the real start: after the first job's render, not its pipe time
    first_render_end = rows[first].started_at + timedelta(  # type: ignore[operator]
        milliseconds=rows[first].inference_ms or 0
    )
    assert rows[waiting].started_at >= first_render_end - timedelta(milliseconds=5)  # type: ignore[operator]


def test_a_pool_process_killed_with_a_claimed_job_in_its_pipe_loses_nothing(
    stack: Stack,
) -> None:
    worker, warm_up = started_and_ready(stack)
    deaths = Deaths()
    first, waiting = submit(stack, 2, "[[fault:slow=1.0]]")
    wait_until(
        lambda: all(r.status == JobStatus.RUNNING for r in jobs.get_jobs(stack.engine,
                                                                          [first, waiting])),
        what="the second job to be claimed ahead",
    )  # fmt: skip
    (child,) = pool_children(worker)
    deaths.kill_child(child)
    rows = assert_exactly_once(
        stack, [warm_up, first, waiting], "claim-ahead-child-killed", 1, deaths
    )
    assert worker.poll() is None  # its parent replaced the pool process
    # the waiting job's claim was made before the replacement took over: not trusted, so it
    # was claimed again (one more attempt) rather than rendered on a stale claim
    assert rows[waiting].attempts == 2
