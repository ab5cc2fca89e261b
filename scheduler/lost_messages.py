"""The reconciler: QUEUED jobs whose broker message is gone are sent again.

The outbox (scheduler.maintenance) sends jobs never sent and the recovery sweep
(tasks.recovery) jobs RUNNING on a lost worker; neither sees a job that was sent, is still
QUEUED, and whose message the broker no longer holds (a broker restarted without its
data, or one that lost its last ``appendfsync everysec`` second). Every
``CANARY_RECONCILE_EVERY_S`` this task compares each version's QUEUED jobs sent more than
that long ago with the task ids the broker holds (queue and unacknowledged set) and
re-sends the missing ones. Should a message only have looked missing, the extra copy meets
the claim guard (storage.jobs.claim_job): a job renders once, whichever copy arrives first.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery
from sqlalchemy.engine import Engine

from canary.contracts import queues_for
from canary.settings import Settings
from scheduler.context import context
from storage import jobs
from storage.models import utcnow
from tasks.app import app
from tasks.queues import count_resent, job_ids_in_broker
from tasks.recovery import resend

log = logging.getLogger(__name__)
RECONCILE_TASK = "canary.scheduler.reconcile_lost_messages"


def reconcile(
    celery: Celery, settings: Settings, engine: Engine, older_than: timedelta, limit: int = 5000
) -> dict[str, int]:
    """Re-send every version's QUEUED jobs whose message the broker lost; returns how many
    per version (also added to the count /metrics exports)."""
    cutoff = utcnow() - older_than
    counts: dict[str, int] = {}
    for version in settings.versions:
        queues = list(queues_for(version))
        queued = {job.id for job in jobs.queued_sent_before(engine, version, cutoff, limit)}
        missing = queued - job_ids_in_broker(celery, queues)
        if missing:
            # A second look: a message being delivered is briefly in neither the queue
            # nor the unacknowledged set, and a job claimed meanwhile is no longer QUEUED.
            missing -= job_ids_in_broker(celery, queues)
            # Taken with one conditional UPDATE (still QUEUED, not re-sent meanwhile):
            # enqueued_at becomes the new message's sending time.
            lost = jobs.take_lost(engine, missing, cutoff)
        else:
            lost = []
        if lost:
            log.warning("re-sending %d queued job(s) of %s whose message the broker lost",
                        len(lost), version)  # fmt: skip
            resend(celery, settings, lost)
        counts[version] = len(lost)
    count_resent(celery, counts)
    return counts


@app.task(name=RECONCILE_TASK)  # type: ignore[untyped-decorator]  # Celery ships no type hints
def reconcile_task(older_than_s: float = 60.0) -> dict[str, int]:
    ctx = context()
    return reconcile(app, ctx.settings, ctx.engine, timedelta(seconds=older_than_s))
