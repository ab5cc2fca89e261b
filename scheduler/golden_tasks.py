"""The golden set's periodic jobs: the nightly run and the image checks.

Beat (one active instance, RedBeat's lock) sends ``canary.golden.nightly`` at the
configured time; the run id is the night's date in the schedule's zone, so even a
duplicate trigger lands on the same run and enqueues nothing new.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime

from analysis.golden.cases import load_golden_set
from analysis.golden.run_checks import check_open_runs, scorer_from_settings
from canary.settings import Settings
from gateway.service import Gateway
from scheduler.context import context
from scheduler.golden_replay import (
    GoldenReplay,
    GoldenRunRefused,
    ReplayOutcome,
    nightly_run_id,
    versions_under_test,
)
from scheduler.schedule import CHECK_GOLDEN_TASK, NIGHTLY_GOLDEN_TASK
from storage import golden
from storage.models import GoldenRunStatus, utcnow
from tasks.app import app

log = logging.getLogger(__name__)


def trigger_nightly(
    settings: Settings, gateway: Gateway, now: datetime | None = None
) -> ReplayOutcome:
    """Start (or continue) tonight's run of the golden set file."""
    golden_set = load_golden_set(settings.golden_set_file, settings)
    text = settings.golden_set_file.read_text(encoding="utf-8")
    baseline, candidate = versions_under_test(settings, gateway.experiments.config)
    run_id = nightly_run_id(now or utcnow(), settings.golden_timezone)
    return GoldenReplay(settings, gateway).start(
        run_id, golden_set, text, trigger="nightly", baseline=baseline, candidate=candidate
    )


def resume_abandoned(settings: Settings, gateway: Gateway) -> list[str]:
    """Finish submitting runs whose submitter died (its lease ran out)."""
    resumed = []
    now = utcnow()
    for run in golden.runs_with_status(gateway.producer.engine, GoldenRunStatus.SUBMITTING):
        lease_until = run.lease_until
        if lease_until is not None and lease_until.tzinfo is None:
            lease_until = lease_until.replace(tzinfo=now.tzinfo)
        if lease_until is not None and lease_until > now:
            continue
        outcome = GoldenReplay(settings, gateway).resume(run.id)
        if outcome.submitted:
            log.info("resumed golden run %s: %d new jobs", run.id, outcome.new_jobs)
            resumed.append(run.id)
    return resumed


@app.task(name=NIGHTLY_GOLDEN_TASK)  # type: ignore[untyped-decorator]  # Celery ships no type hints
def nightly_task() -> dict[str, object]:
    ctx = context()
    try:
        outcome = trigger_nightly(ctx.settings, ctx.gateway)
    except GoldenRunRefused as exc:
        log.warning("nightly golden run skipped: %s", exc)
        return {"skipped": str(exc)}
    log.info("nightly golden run %s: %s", outcome.run_id, outcome)
    return asdict(outcome)


@app.task(name=CHECK_GOLDEN_TASK)  # type: ignore[untyped-decorator]  # Celery ships no type hints
def check_task() -> dict[str, int]:
    ctx = context()
    resume_abandoned(ctx.settings, ctx.gateway)
    return check_open_runs(ctx.settings, ctx.engine, ctx.store, scorer_from_settings(ctx.settings))
