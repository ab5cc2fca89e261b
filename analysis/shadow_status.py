"""What `canary shadow status EXPERIMENT` shows: the stage's shadow rule, the pause switch,
the counters, the shadow jobs by outcome and the paired comparison with its health verdict."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy.engine import Engine

from analysis.shadow import margins_from, report
from canary.settings import Settings
from gateway.experiments import Experiment
from gateway.shadow import ShadowControls
from storage.models import utcnow
from storage.objects import store_from_settings
from storage.shadow import pairs, totals


def status_document(
    settings: Settings, engine: Engine, experiment: Experiment, days: int
) -> dict[str, Any]:
    """The status of one experiment's shadow traffic over the last ``days`` days (by the
    live jobs' creation). Counters kept in the broker are None when it does not answer."""
    rule = experiment.current_stage.shadow
    controls = ShadowControls(settings.broker_url)
    try:
        paused: bool | None = controls.is_paused(experiment.name)
        counts: dict[str, int] | None = controls.counts(experiment.name)
    except (RedisError, OSError):
        paused, counts = None, None
    finally:
        controls.close()
    jobs = {"recorded": 0, "sent": 0, "queued": 0, "succeeded": 0, "failed": 0}
    for row in totals(engine):
        if row.experiment == experiment.name:
            jobs["recorded"] += row.recorded
            jobs["sent"] += row.sent
            jobs["queued"] += row.queued
            jobs["succeeded"] += row.succeeded
            jobs["failed"] += row.failed
    found = pairs(engine, experiment.name, start=utcnow() - timedelta(days=days))
    return {
        "experiment": experiment.name,
        "baseline": experiment.baseline,
        "candidate": experiment.candidate,
        "stage": experiment.stage,
        "rolled_back": experiment.rolled_back,
        "shadow": {"share": rule.share, "segments": rule.segments},
        "paused": paused,
        "counters": counts,
        "max_queued": settings.shadow_max_queued,
        "jobs": jobs,
        "days": days,
        "comparison": report(found, store_from_settings(settings), margins_from(settings)),
    }
