"""Sending render messages: the only code that publishes ``canary.contracts.RENDER_TASK``.

Every sender goes through :func:`publish` (the gateway's submissions and the outbox,
recovery's re-sends, a worker re-routing another version's job, `canary retire`'s
re-route), so every render message is built with the same options:

- the queue is the version's queue of the job's priority class
  (``queue_for(spec["model_version"], priority)``; a recorded job's ``priority_class``);
- the task id is the job id (a re-route keeps the id of the delivery it passes on, which is
  the job id for every message sent here), so Flower follows a job across re-sends;
- ``ignore_result``: the render stores no result (``task_ignore_result``), so no sender
  subscribes to one;
- ``argsrepr``/``kwargsrepr`` built here (``repr``: Celery's own saferepr costs more than
  the rest of the message); with prompts hidden (the default) the app's AMQP class
  replaces the argument text anyway (tasks/message_privacy.py).

:func:`publish_jobs` sends recorded jobs over one producer connection (recovery);
:func:`publish_chunks` pipelines a bulk submission's messages, one broker round trip per
``PUBLISH_BATCH`` jobs; :func:`send_claimed` sends jobs whose sending the caller claimed
(storage.jobs.claim_sends) with it and records the outcome (the gateway, fair share's
release).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kombu.exceptions import BatchPublishError, OperationalError
from redis.exceptions import RedisError

from canary.contracts import RENDER_TASK, PriorityClass, RenderSpec, queue_for
from storage import jobs as job_records
from storage.models import utcnow

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy.engine import Engine

    from storage.models import Job

log = logging.getLogger(__name__)

# Jobs per pipelined round trip to the broker when publishing in bulk.
PUBLISH_BATCH = 500


def render_spec(job: Job) -> RenderSpec:
    """The message spec of a recorded job (what a producer or a recovery sends)."""
    return RenderSpec(
        job_id=job.id,
        model_version=job.model_version,
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        seed=job.seed,
        steps=job.steps,
        guidance=job.guidance,
        width=job.width,
        height=job.height,
    )


def publish(
    app: Celery,
    job_id: str,
    spec: RenderSpec | dict[str, Any],
    *,
    priority: PriorityClass | str,
    producer: Any = None,
    task_id: str | None = None,
) -> None:
    """Send one render message to the ``priority`` class queue of ``spec["model_version"]``.

    ``producer``: a producer to send over (one connection for many messages), else one is
    taken from the app's pool. ``task_id``: only for passing a delivery on under its own id
    (a re-route); otherwise the job id.
    """
    args = (job_id, spec)
    app.send_task(
        RENDER_TASK,
        args=args,
        argsrepr=repr(args),
        kwargsrepr="{}",
        queue=queue_for(spec["model_version"], priority),
        task_id=task_id or job_id,
        producer=producer,
        ignore_result=True,  # as render.apply_async: no result to wait on
    )


def publish_jobs(app: Celery, jobs: Iterable[Job]) -> None:
    """Send recorded jobs, one message each, over one producer connection."""
    with app.producer_or_acquire() as producer:
        for job in jobs:
            publish(app, job.id, render_spec(job), priority=job.priority_class, producer=producer)


def publish_chunks(
    app: Celery, jobs: Sequence[Any], chunk_size: int = PUBLISH_BATCH
) -> Iterator[tuple[datetime, list[str]]]:
    """Send recorded jobs (rows with a job's columns) over one producer, pipelined: kombu
    buffers a chunk's Redis writes (the messages and their task-sent events) and sends them
    in one round trip instead of two per job.

    Yields, for each chunk once it is flushed, when its sending began and its job ids: a
    job counts as sent only then. A broker error propagates (``BatchPublishError`` when it
    went away mid-chunk); the chunks yielded before it were sent.
    """
    with (
        app.producer_or_acquire() as producer,
        producer.batch(max_size=4 * chunk_size) as batch,
    ):
        for start in range(0, len(jobs), chunk_size):
            chunk = jobs[start : start + chunk_size]
            sending_at = utcnow()
            for job in chunk:
                publish(
                    app, job.id, render_spec(job), priority=job.priority_class, producer=producer
                )
            batch.flush()
            yield sending_at, [job.id for job in chunk]


def send_claimed(engine: Engine, app: Celery, rows: Sequence[Any]) -> set[str]:
    """Send jobs whose sending this caller claimed; stamp the sent ones' sending time and
    give back the claims of the others, whose ids are returned (empty when all were sent).

    Those stay QUEUED with ``enqueued_at`` unset and nothing is marked failed: the outbox
    (or fair share's release) sends them once the broker is back.
    """
    if not rows:  # e.g. an idempotent replay of a sent job: no broker round trip
        return set()
    # (when the chunk's sending began, its job ids): a job is stamped enqueued before its
    # message can reach a worker, so its queue wait is never negative
    sent: list[tuple[datetime, list[str]]] = []
    try:
        for chunk in publish_chunks(app, rows, PUBLISH_BATCH):
            sent.append(chunk)
    # BatchPublishError: a broker that went away mid-batch leaves delivery uncertain; the
    # chunk stays unsent, and a message that did arrive meets the claim guard, which never
    # renders a job twice.
    except (OperationalError, BatchPublishError, RedisError, OSError) as exc:
        log.warning(
            "the broker refused %d of %d jobs; they stay queued for the outbox: %s",
            len(rows) - sum(len(ids) for _, ids in sent),
            len(rows),
            exc,
        )
    finally:  # also on an unexpected error, which propagates after this
        for sending_at, job_ids in sent:
            job_records.mark_enqueued(engine, job_ids, when=sending_at)
        done = {job_id for _, ids in sent for job_id in ids}
        unsent = {row.id for row in rows if row.id not in done}
        job_records.unclaim_sends(engine, unsent)
    return unsent
