"""Producer crash recovery: jobs recorded QUEUED whose message was never published."""

from __future__ import annotations

from datetime import timedelta

from gateway.submit import Producer
from scheduler.context import context
from storage import jobs
from storage.models import utcnow
from tasks.app import app

REPUBLISH_TASK = "canary.scheduler.republish_unsent"


def republish_unsent(producer: Producer, older_than: timedelta, limit: int = 1000) -> int:
    """Publish jobs that were recorded but never enqueued (the producer died in between)."""
    cutoff = utcnow() - older_than
    orphans = jobs.unsent_created_before(producer.engine, cutoff, limit)
    return len(orphans) - len(producer.publish(orphans))


@app.task(name=REPUBLISH_TASK)  # type: ignore[untyped-decorator]  # Celery ships no type hints
def republish_unsent_task(older_than_s: float = 60.0) -> int:
    ctx = context()
    producer = Producer(ctx.settings, ctx.engine, app)
    return republish_unsent(producer, timedelta(seconds=older_than_s))
