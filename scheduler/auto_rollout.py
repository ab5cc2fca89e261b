"""The daily automatic-mode job: evaluate each auto experiment's gates and act on them.

The report (and with it scipy and statsmodels) is imported when the job runs, so the
scheduler worker starts without the statistics stack (see scheduler/dashboards.py).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy.engine import Engine

from canary.settings import Settings
from gateway.experiment_source import ExperimentSource
from scheduler.context import context
from scheduler.rollout import Rollout, Step
from scheduler.schedule import AUTO_ROLLOUT_TASK
from storage.models import utcnow
from tasks.app import app

log = logging.getLogger(__name__)


def run_auto(
    settings: Settings,
    engine: Engine,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    only: str | None = None,
    celery: Celery | None = None,
) -> dict[str, Step]:
    """One pass over the experiments in automatic mode (or ``only`` that one, on or off)."""
    from analysis.experiment_report import report_for_experiment

    now = now or utcnow()
    config = ExperimentSource.from_settings(settings, engine).config
    control = Rollout(settings, engine, config, celery)
    steps: dict[str, Step] = {}
    for experiment in config.experiments:
        if only is not None and experiment.name != only:
            continue
        if only is None and not control.state(experiment.name).auto:
            continue
        yesterday = (now - timedelta(days=1)).date()
        report = report_for_experiment(settings, engine, config, experiment.name, yesterday)
        step = control.auto_step(experiment.name, report["gates"], now=now, dry_run=dry_run)
        log.info("automatic rollout of %s: %s %s -> %s", experiment.name, step.action,
                 step.from_stage, step.to_stage)  # fmt: skip
        steps[experiment.name] = step
    return steps


@app.task(name=AUTO_ROLLOUT_TASK)  # type: ignore[untyped-decorator]  # Celery ships no type hints
def auto_rollout_task() -> dict[str, str]:
    ctx = context()
    steps = run_auto(ctx.settings, ctx.engine, celery=app)
    return {name: f"{s.action}: {s.from_stage} -> {s.to_stage}" for name, s in steps.items()}
