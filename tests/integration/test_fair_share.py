"""Fair share against real Redis, SQLite/PostgreSQL and Celery workers: bulk jobs are held
in the database and released per tenant, round-robin, without losing or doubling a job
(a releaser killed between its claim and its send included)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import update
from sqlmodel import Session, col, select

from canary.contracts import PriorityClass, queue_for
from gateway.submit import PreparedJob
from scheduler.lost_messages import reconcile
from storage import fair_share
from storage.models import ApiKey, Job, JobStatus
from tests.integration.conftest import PROJECT_ROOT, Stack, fresh_database_url, make_stack

pytestmark = pytest.mark.integration

SHARE = 5  # queued bulk jobs per tenant and version in the broker


@pytest.fixture(params=["sqlite", "postgresql"])
def stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    clean_redis: str,
    postgres_schema_url: str,
    model_dir: Path,
) -> Iterator[Stack]:
    database_url = fresh_database_url(request.param, tmp_path, postgres_schema_url)
    stack = make_stack(
        tmp_path,
        clean_redis,
        database_url,
        f"file://{tmp_path / 'objects'}",
        model_dir,
        CANARY_FAIR_SHARE_QUEUED=SHARE,
    )
    yield stack
    stack.stop_workers()


def prepared(stack: Stack, n: int, tag: str) -> list[PreparedJob]:
    gateway = stack.gateway()
    return [
        gateway.prepare({"prompt": f"{tag} {i}", "model_version": "v1", "steps": 2, "seed": i})
        for i in range(n)
    ]


def broker_order(stack: Stack, priority: PriorityClass = PriorityClass.BULK) -> list[str]:
    """Job ids in the version's queue, the next to be taken first."""
    client = redis.Redis.from_url(stack.settings.broker_url)
    messages = client.lrange(queue_for("v1", priority), 0, -1)
    return [json.loads(m)["headers"]["id"] for m in reversed(messages)]


def tenants(stack: Stack, job_ids: list[str]) -> list[str]:
    with Session(stack.engine) as session:
        rows = {j.id: j for j in session.exec(select(Job).where(col(Job.id).in_(job_ids)))}
    return [fair_share.tenant_of(rows[i].api_key_id, rows[i].batch_id) for i in job_ids]


def take(stack: Stack, job_ids: list[str]) -> None:
    """What a worker does to the jobs it takes: they are no longer QUEUED."""
    with Session(stack.engine) as session:
        session.exec(
            update(Job).where(col(Job.id).in_(job_ids)).values(status=JobStatus.RUNNING)  # type: ignore[call-overload]
        )
        session.commit()
    client = redis.Redis.from_url(stack.settings.broker_url)
    for _ in job_ids:
        client.rpop(queue_for("v1", PriorityClass.BULK))


def waiting(stack: Stack) -> dict[str, tuple[int, int]]:
    return {w.tenant: (w.held, w.queued) for w in fair_share.waiting_by_tenant(stack.engine)}


def test_a_batch_is_held_beyond_its_share_and_released_round_robin(stack: Stack) -> None:
    gateway = stack.gateway()
    a = gateway.submit_many(prepared(stack, 30, "a"), api_key_id="key-a")
    b = gateway.submit_many(prepared(stack, 8, "b"), api_key_id="key-b")
    assert [s.held for s in a] == [False] * SHARE + [True] * (30 - SHARE)
    assert [s.held for s in b] == [False] * SHARE + [True] * 3
    assert all(s.sent for s in a + b)
    assert waiting(stack) == {"key:key-a": (25, 5), "key:key-b": (3, 5)}
    assert tenants(stack, broker_order(stack)) == ["key:key-a"] * 5 + ["key:key-b"] * 5

    # workers take the first 6 (5 of A, 1 of B); a release tops both up, interleaved
    take(stack, broker_order(stack)[:6])
    released = gateway.producer.releaser.release("v1")
    assert released.sent == {"key:key-a": 5, "key:key-b": 1}
    order = tenants(stack, broker_order(stack))
    assert order == ["key:key-b"] * 4 + ["key:key-a", "key:key-b"] + ["key:key-a"] * 4
    assert waiting(stack) == {"key:key-a": (20, 5), "key:key-b": (2, 5)}

    # an interactive job is never held
    [single] = gateway.submit_many(
        prepared(stack, 1, "i"), api_key_id="key-a", priority=PriorityClass.INTERACTIVE
    )
    assert not single.held
    assert broker_order(stack, PriorityClass.INTERACTIVE) == [single.job_id]

    # a release with nothing taken sends nothing
    assert gateway.producer.releaser.release("v1").sent == {}


def test_weights_scale_a_tenants_share(stack: Stack) -> None:
    with Session(stack.engine) as session:
        for key_id, weight in (("key-a", None), ("key-b", 2.0)):
            session.add(ApiKey(id=key_id, name=key_id, role="client", key_hash=key_id, prefix="x"))
            session.commit()
            session.exec(
                update(ApiKey).where(col(ApiKey.id) == key_id).values(share_weight=weight)  # type: ignore[call-overload]
            )
            session.commit()
    gateway = stack.gateway()
    gateway.submit_many(prepared(stack, 40, "a"), api_key_id="key-a")
    gateway.submit_many(prepared(stack, 40, "b"), api_key_id="key-b")
    assert waiting(stack) == {"key:key-a": (35, 5), "key:key-b": (30, 10)}
    # everything taken: the release sends B two jobs for each of A's
    take(stack, broker_order(stack))
    assert gateway.producer.releaser.release("v1").sent == {"key:key-a": 5, "key:key-b": 10}
    order = tenants(stack, broker_order(stack))
    assert order[:6] == ["key:key-b", "key:key-a", "key:key-b"] * 2


def test_a_replayed_held_job_stays_held_and_is_sent_once(stack: Stack) -> None:
    gateway = stack.gateway()
    jobs_in = [
        gateway.prepare(
            {"prompt": f"p{i}", "model_version": "v1", "idempotency_key": f"k{i}", "seed": i}
        )
        for i in range(SHARE + 3)
    ]
    first = gateway.submit_many(jobs_in, api_key_id="key-a")
    again = gateway.submit_many(jobs_in, api_key_id="key-a")
    assert [s.job_id for s in again] == [s.job_id for s in first]
    assert [s.held for s in again] == [s.held for s in first]
    assert len(broker_order(stack)) == SHARE  # the replay sent nothing past the share
    take(stack, broker_order(stack))
    gateway.producer.releaser.release("v1")
    assert sorted(broker_order(stack)) == sorted(s.job_id for s in first if s.held)


def test_a_batch_submitted_while_the_broker_is_down_is_released_when_it_is_back(
    stack: Stack,
) -> None:
    from tests.integration.test_bulk_publish import dead_broker_url

    down = stack.settings.model_copy(update={"redis_url": dead_broker_url()})
    from gateway.service import Gateway

    refused = Gateway(down, stack.engine, stack.app).submit_many(
        prepared(stack, 8, "a"), api_key_id="key-a"
    )
    assert all(s.held and not s.sent for s in refused)
    assert waiting(stack) == {"key:key-a": (8, 0)}
    # beat's release, once the broker is back
    from scheduler.maintenance import Producer

    released = Producer(stack.settings, stack.engine, stack.app).releaser.release_all()
    assert [r.total for r in released] == [SHARE]
    assert len(broker_order(stack)) == SHARE


KILLED_RELEASER = textwrap.dedent(
    """
    import os, sys
    from canary.settings import get_settings
    from gateway.submit import Producer
    from storage.db import get_engine
    from tasks.app import make_app
    import tasks.release

    def killed(*args, **kwargs):  # the process dies after its claim, before its send
        os.kill(os.getpid(), 9)

    tasks.release.send_claimed = killed
    settings = get_settings()
    engine = get_engine(settings.resolved_database_url)
    Producer(settings, engine, make_app(settings)).releaser.release("v1")
    """
)


def test_a_releaser_killed_after_its_claim_loses_nothing_and_doubles_nothing(
    stack: Stack,
) -> None:
    gateway = stack.gateway()
    gateway.submit_many(prepared(stack, 2 * SHARE, "a"), api_key_id="key-a")
    first = broker_order(stack)
    take(stack, first)  # a worker took (and rendered) the first five
    with Session(stack.engine) as session:
        session.exec(
            update(Job).where(col(Job.id).in_(first)).values(status=JobStatus.SUCCEEDED)  # type: ignore[call-overload]
        )
        session.commit()
        held = session.exec(select(Job.id).where(col(Job.enqueued_at).is_(None))).all()
    assert len(held) == SHARE

    process = subprocess.run(
        [sys.executable, "-c", KILLED_RELEASER],
        env=stack.env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == -9, process.stderr
    # the killed releaser claimed the other five and sent nothing
    assert waiting(stack) == {"key:key-a": (0, SHARE)}
    assert broker_order(stack) == []

    # the reconciler finds them missing from the broker and sends each once
    resent = reconcile(stack.app, stack.settings, stack.engine, timedelta(0))
    assert resent["v1"] == SHARE
    assert sorted(broker_order(stack)) == sorted(held)

    stack.start_worker("v1")
    finished = stack.wait_finished(list(held), timeout=180)
    assert {j.status for j in finished.values()} == {JobStatus.SUCCEEDED}
    assert {j.attempts for j in finished.values()} == {1}


def test_workers_release_as_they_finish_and_a_small_batch_overtakes_a_big_one(
    stack: Stack,
) -> None:
    gateway = stack.gateway()
    big = gateway.submit_many(prepared(stack, 40, "big"), api_key_id="key-a")
    small = gateway.submit_many(prepared(stack, SHARE + 2, "small"), api_key_id="key-b")
    stack.start_worker("v1")
    finished = stack.wait_finished([s.job_id for s in big + small], timeout=300)
    assert {j.status for j in finished.values()} == {JobStatus.SUCCEEDED}
    assert {j.attempts for j in finished.values()} == {1}
    last_small = max(finished[s.job_id].finished_at for s in small)
    after_small = [s for s in big if finished[s.job_id].finished_at > last_small]
    # B's jobs were interleaved with A's, not put behind all 40 of them
    assert len(after_small) >= 20, f"only {len(after_small)} of A's jobs finished after B's"
    with Session(stack.engine) as session:
        images = session.exec(select(Job.image_key)).all()
    assert len(images) == len(set(images)) == 40 + SHARE + 2


def test_retiring_a_version_hands_its_held_jobs_to_the_other(stack: Stack) -> None:
    from scheduler.retirement import reroute_queued

    stack.gateway().submit_many(prepared(stack, SHARE + 3, "a"), api_key_id="key-a")
    moved = reroute_queued(stack.app, stack.engine, stack.settings, "v1", "v2")
    assert moved == SHARE + 3  # 3 held in the database, 5 messages in the broker
    assert fair_share.waiting_by_tenant(stack.engine) == [
        fair_share.TenantWaiting("v2", "key:key-a", held=3, queued=SHARE)
    ]
    client = redis.Redis.from_url(stack.settings.broker_url)
    assert client.llen(queue_for("v1", PriorityClass.BULK)) == 0
    assert client.llen(queue_for("v2", PriorityClass.BULK)) == SHARE
