"""Producer crash recovery: jobs recorded QUEUED whose message was never published; and
fair share's periodic release of held bulk jobs (tasks/release.py)."""

from __future__ import annotations

from datetime import timedelta

from canary.contracts import PriorityClass
from gateway.submit import Producer
from scheduler.context import context
from storage import jobs
from storage.models import utcnow
from tasks.app import app

REPUBLISH_TASK = "canary.scheduler.republish_unsent"
RELEASE_TASK = "canary.scheduler.release_held"


def republish_unsent(producer: Producer, older_than: timedelta, limit: int = 1000) -> int:
    """Publish jobs that were recorded but never enqueued (the producer died in between).
    Under fair share, bulk jobs are left to the release (:func:`release_held_task`)."""
    cutoff = utcnow() - older_than
    held_class = PriorityClass.BULK.value if producer.releaser.enabled else None
    orphans = jobs.unsent_created_before(producer.engine, cutoff, limit, held_class)
    return len(orphans) - len(producer.publish(orphans))


@app.task(name=REPUBLISH_TASK)  # type: ignore[untyped-decorator]  # Celery ships no type hints
def republish_unsent_task(older_than_s: float = 60.0) -> int:
    ctx = context()
    producer = Producer(ctx.settings, ctx.engine, app)
    return republish_unsent(producer, timedelta(seconds=older_than_s))


@app.task(name=RELEASE_TASK)  # type: ignore[untyped-decorator]  # Celery ships no type hints
def release_held_task() -> int:
    """Release held bulk jobs of every version (workers release as they finish jobs; this
    covers the case where none is finishing any). Returns the jobs sent."""
    ctx = context()
    releaser = Producer(ctx.settings, ctx.engine, app).releaser
    if not releaser.enabled:
        return 0
    return sum(released.total for released in releaser.release_all(wait_s=1.0))
