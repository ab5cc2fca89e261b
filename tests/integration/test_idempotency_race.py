"""Fifty parallel submissions with one idempotency key: one job, one broker message.

Only the submission whose INSERT created the row sends its message; the others find the
row claimed for sending (``enqueued_at`` set in the INSERT) and send nothing. A row whose
send failed is released (``enqueued_at`` unset) and the next replay or the outbox claims
it with one conditional UPDATE, so that too is sent once. Real Redis, SQLite and
PostgreSQL.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from gateway.service import Gateway
from storage import jobs
from storage.models import JobStatus
from tasks.app import make_app
from tests.integration.conftest import fresh_database_url, make_stack
from tests.integration.test_bulk_publish import dead_broker_url

pytestmark = pytest.mark.integration

PARALLEL = 50


def messages_in(redis_url: str, queue_prefix: str) -> list[bytes]:
    """Every message body waiting in the version's queues (each priority's list)."""
    client = redis.Redis.from_url(redis_url)
    return [
        body
        for key in client.keys(f"{queue_prefix}*")
        if client.type(key) == b"list"
        for body in client.lrange(key, 0, -1)
    ]


@pytest.fixture(params=["sqlite", "postgresql"])
def stack(request, tmp_path: Path, clean_redis: str, postgres_schema_url: str, model_dir: Path):  # type: ignore[no-untyped-def]
    database_url = fresh_database_url(request.param, tmp_path, postgres_schema_url)
    return make_stack(tmp_path, clean_redis, database_url, f"file://{tmp_path / 'o'}", model_dir)


def test_fifty_parallel_replays_of_one_key_send_one_message(stack, clean_redis: str) -> None:  # type: ignore[no-untyped-def]
    gateway = stack.gateway()
    request = {"prompt": "a fox", "model_version": "v1", "seed": 7, "steps": 2,
               "width": 64, "height": 64, "idempotency_key": "race-key-1"}  # fmt: skip
    start = threading.Barrier(PARALLEL)

    def submit(_: int):  # type: ignore[no-untyped-def]
        start.wait()
        return gateway.submit(dict(request))

    with ThreadPoolExecutor(PARALLEL) as pool:
        results = list(pool.map(submit, range(PARALLEL)))

    assert len({r.job_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert all(r.sent for r in results)
    assert len(messages_in(clean_redis, "render.v1.interactive")) == 1
    row = jobs.get_job(stack.engine, results[0].job_id)
    assert row is not None and row.status == JobStatus.QUEUED and row.enqueued_at is not None


def test_a_job_whose_send_failed_is_sent_once_by_parallel_replays(stack, clean_redis: str) -> None:  # type: ignore[no-untyped-def]
    gateway = stack.gateway()
    request = {"prompt": "a fox", "model_version": "v1", "seed": 7, "steps": 2,
               "width": 64, "height": 64, "idempotency_key": "race-key-2"}  # fmt: skip
    down = stack.settings.model_copy(update={"redis_url": dead_broker_url()})
    first = Gateway(down, stack.engine, make_app(down)).submit(dict(request))
    assert first.created and not first.sent
    assert jobs.get_job(stack.engine, first.job_id).enqueued_at is None  # the outbox's

    start = threading.Barrier(PARALLEL)

    def submit(_: int):  # type: ignore[no-untyped-def]
        start.wait()
        return gateway.submit(dict(request))

    with ThreadPoolExecutor(PARALLEL) as pool:
        results = list(pool.map(submit, range(PARALLEL)))
    assert not any(r.created for r in results) and all(r.sent for r in results)
    assert len(messages_in(clean_redis, "render.v1.interactive")) == 1
