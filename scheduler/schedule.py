"""The beat schedule (read by celeryconfig)."""

from __future__ import annotations

import re
from typing import Any

from celery.schedules import crontab, schedule

from canary.settings import Settings

NIGHTLY_GOLDEN_TASK = "canary.golden.nightly"
CHECK_GOLDEN_TASK = "canary.golden.check"
DASHBOARD_TASK = "canary.scheduler.dashboards"
AUTO_ROLLOUT_TASK = "canary.scheduler.auto_rollout"
_EVERY = re.compile(r"^every\s+(\d+(?:\.\d+)?)\s*s?$")


def parse_schedule(expression: str) -> crontab | schedule:
    """A 5-field crontab (minute hour day-of-month month day-of-week) or 'every N' seconds."""
    text = expression.strip()
    interval = _EVERY.match(text)
    if interval:
        seconds = float(interval.group(1))
        if seconds <= 0:
            raise ValueError(f"{expression!r}: the interval must be positive")
        return schedule(run_every=seconds)
    try:
        return crontab.from_string(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{expression!r} is neither a crontab ('30 2 * * *') nor 'every N': {exc}"
        ) from None


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        "republish-unsent-jobs": {
            "task": "canary.scheduler.republish_unsent",
            "schedule": schedule(run_every=settings.republish_every_s),
            "kwargs": {"older_than_s": settings.republish_every_s},
        },
        "reconcile-lost-messages": {
            "task": "canary.scheduler.reconcile_lost_messages",
            "schedule": schedule(run_every=settings.reconcile_every_s),
            "kwargs": {"older_than_s": settings.reconcile_every_s},
        },
        "purge-retired-versions": {
            "task": "canary.scheduler.purge_retired",
            "schedule": crontab(minute=17, hour=3),  # daily, off the hour
        },
        "golden-nightly-run": {
            "task": NIGHTLY_GOLDEN_TASK,
            "schedule": parse_schedule(settings.golden_schedule),
        },
        "daily-dashboards": {
            "task": DASHBOARD_TASK,
            "schedule": parse_schedule(settings.dashboard_schedule),
        },
        "automatic-rollout": {
            "task": AUTO_ROLLOUT_TASK,
            "schedule": parse_schedule(settings.rollout_schedule),
        },
        "golden-check-images": {
            "task": CHECK_GOLDEN_TASK,
            "schedule": schedule(run_every=settings.golden_check_every_s),
        },
    }
