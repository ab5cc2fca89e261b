"""Pipelined bulk publishing keeps the producer's guarantees: a chunk the broker refused is
sent again (once) when the same file is submitted again, and nothing is sent twice."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis
from sqlmodel import Session, select

from canary.cli.batch import make_gateway, submit_file
from storage.models import Job, JobStatus
from tasks.publish import PUBLISH_BATCH
from tests.integration.conftest import Stack, local_stack

pytestmark = pytest.mark.integration


def dead_broker_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


def write_jobs(path: Path, count: int) -> None:
    path.write_text(
        "".join(
            f'{{"prompt": "a boat {i}", "model_version": "v{1 + i % 2}", "seed": {i}}}\n'
            for i in range(count)
        )
    )


@pytest.fixture
def stack(tmp_path: Path, clean_redis: str, model_dir: Path) -> Stack:
    return local_stack(tmp_path, clean_redis, model_dir)


def test_refused_chunks_are_sent_once_on_resubmission(stack: Stack, tmp_path: Path) -> None:
    count = PUBLISH_BATCH + 37  # more than one pipelined chunk in one submission chunk
    path = tmp_path / "jobs.jsonl"
    write_jobs(path, count)
    down = stack.settings.model_copy(update={"redis_url": dead_broker_url()})
    refused = submit_file(path, down, batch_id="first", chunk=count)
    assert (refused.created, refused.duplicates, refused.unsent) == (count, 0, count)
    with Session(stack.engine) as session:
        rows = session.exec(select(Job)).all()
    assert len(rows) == count  # recorded before publishing...
    assert {(r.status, r.enqueued_at) for r in rows} == {(JobStatus.QUEUED, None)}  # ...unsent

    outcome = submit_file(path, stack.settings, batch_id="second", chunk=count)
    assert (outcome.created, outcome.duplicates) == (0, count)
    client = redis.Redis.from_url(stack.settings.broker_url)
    assert client.llen("render.v1") + client.llen("render.v2") == count
    with Session(stack.engine) as session:
        assert all(r.enqueued_at is not None for r in session.exec(select(Job)).all())

    again = submit_file(
        path, stack.settings, batch_id="third", chunk=count
    )  # nothing is sent twice
    assert again.duplicates == count
    assert client.llen("render.v1") + client.llen("render.v2") == count


def test_bulk_gateway_sends_no_task_sent_events(stack: Stack) -> None:
    assert make_gateway(stack.settings).producer.app.conf.task_send_sent_event is False
    assert stack.app.conf.task_send_sent_event is True  # the API's producer keeps them
