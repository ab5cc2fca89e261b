"""The beat schedule: given to the beat process only (:func:`configure_beat`, called where
beat starts); workers, producers and Flower do not get it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery.schedules import crontab, schedule

from canary.settings import Settings, parse_schedule

if TYPE_CHECKING:
    from celery import Celery

NIGHTLY_GOLDEN_TASK = "canary.golden.nightly"
CHECK_GOLDEN_TASK = "canary.golden.check"
DASHBOARD_TASK = "canary.scheduler.dashboards"
AUTO_ROLLOUT_TASK = "canary.scheduler.auto_rollout"
# Fair share's release when no worker is finishing jobs (workers release as they do).
RELEASE_EVERY_S = 5.0


def configure_beat(app: Celery, settings: Settings) -> None:
    """Give ``app`` the periodic jobs: call it in the beat process, before beat starts."""
    app.conf.beat_schedule = beat_schedule(settings)


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        "republish-unsent-jobs": {
            "task": "canary.scheduler.republish_unsent",
            "schedule": schedule(run_every=settings.republish_every_s),
            "kwargs": {"older_than_s": settings.republish_every_s},
        },
        "release-held-jobs": {
            "task": "canary.scheduler.release_held",
            "schedule": schedule(run_every=RELEASE_EVERY_S),
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
