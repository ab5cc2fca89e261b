"""The beat schedule (read by celeryconfig)."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab, schedule

from canary.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        "republish-unsent-jobs": {
            "task": "canary.scheduler.republish_unsent",
            "schedule": schedule(run_every=settings.republish_every_s),
            "kwargs": {"older_than_s": settings.republish_every_s},
        },
        "purge-retired-versions": {
            "task": "canary.scheduler.purge_retired",
            "schedule": crontab(minute=17, hour=3),  # daily, off the hour
        },
    }
