"""The daily job: each experiment's completed days rolled up (analysis.rollups), then its
report and dashboard, written where the API serves them.

Files: ``<home>/dashboards/<experiment>/<day>.html`` and ``.json`` plus ``latest.html`` /
``latest.json``, for the day that just ended (UTC).

The statistics stack (scipy, statsmodels, pandas, matplotlib: about 3 CPU-s to import) is
imported when a report is made, not with this module: the scheduler worker, the API (which
serves these files through :func:`dashboard_paths`) and Flower start without it.
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from canary.settings import Settings
from gateway.experiment_source import ExperimentSource
from scheduler.context import context
from scheduler.notify import Notice, Notifier
from scheduler.schedule import DASHBOARD_TASK
from storage.models import utcnow
from tasks.app import app

if TYPE_CHECKING:
    from analysis.rollups import RollupRun

log = logging.getLogger(__name__)


def dashboard_paths(settings: Settings, experiment: str, day: date | None) -> tuple[Path, Path]:
    folder = settings.dashboard_dir / experiment
    stem = day.isoformat() if day else "latest"
    return folder / f"{stem}.html", folder / f"{stem}.json"


def _previous_verdict(path: Path) -> str | None:
    try:
        verdict: str | None = json.loads(path.read_text(encoding="utf-8"))["gates"]["verdict"]
        return verdict
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_dashboards(
    settings: Settings, engine: Engine, day: date, notifier: Notifier | None = None
) -> list[Path]:
    """Report and dashboard of every experiment in the file for the days up to ``day``;
    a verdict that differs from the previous dashboard's is announced to the webhooks."""
    from analysis.dashboard import render_dashboard
    from analysis.experiment_report import report_for_experiment
    from analysis.gates import load_policy

    notifier = notifier or Notifier.from_settings(settings)
    config = ExperimentSource.from_settings(settings, engine).config
    p95_limit = load_policy(settings.gate_policy_file).guardrails.p95_latency_max_ms
    written = []
    for experiment in config.experiments:
        report = report_for_experiment(settings, engine, config, experiment.name, day)
        html = render_dashboard(report, p95_limit)
        text = json.dumps(report, indent=1, default=str)
        previous = _previous_verdict(dashboard_paths(settings, experiment.name, None)[1])
        for target_day in (day, None):
            html_path, json_path = dashboard_paths(settings, experiment.name, target_day)
            html_path.parent.mkdir(parents=True, exist_ok=True)
            html_path.write_text(html, encoding="utf-8")
            json_path.write_text(text, encoding="utf-8")
        written.append(dashboard_paths(settings, experiment.name, day)[0])
        verdict = report["gates"]["verdict"]
        if verdict != previous:
            notifier.send(
                Notice(
                    kind="verdict", subject=experiment.name, actor="daily report",
                    reason="; ".join(report["gates"].get("reasons", [])) or verdict,
                    verdict=verdict, previous_verdict=previous,
                )
            )  # fmt: skip
        log.info("dashboard of %s for %s: %s", experiment.name, day, report["gates"]["verdict"])
    return written


def roll_up_experiments(
    settings: Settings, engine: Engine, now: datetime | None = None
) -> list[RollupRun]:
    """Roll up every experiment's completed days that a report of today or yesterday reads
    (re-rolling days with late data), so the reports that follow compute only the new day."""
    from analysis import rollups
    from analysis.experiment_report import report_window

    now = now or utcnow()
    config = ExperimentSource.from_settings(settings, engine).config
    first, _ = report_window(settings, now.date() - timedelta(days=1))
    runs = []
    for experiment in config.experiments:
        run = rollups.roll_up(engine, experiment.name, first, now.date() - timedelta(days=1), now)
        log.info(
            "roll-up of %s: %d new days, %d re-rolled, %d late events, %d late outcomes, %.1f s",
            experiment.name, len(run.rolled_up), len(run.rerolled), run.late_events,
            run.late_outcomes, run.seconds,
        )  # fmt: skip
        runs.append(run)
    return runs


@app.task(name=DASHBOARD_TASK)  # type: ignore[untyped-decorator]  # Celery ships no type hints
def dashboards_task() -> list[str]:
    ctx = context()
    now = utcnow()
    roll_up_experiments(ctx.settings, ctx.engine, now)
    yesterday = (now - timedelta(days=1)).date()
    return [str(path) for path in write_dashboards(ctx.settings, ctx.engine, yesterday)]
