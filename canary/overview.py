"""`canary status` without a job id: one screen of the whole system for an operator."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from canary.settings import Settings
from gateway.experiment_source import ExperimentSource
from scheduler.dashboards import dashboard_paths
from storage import golden, overview
from storage.db import get_engine
from tasks.queues import consumers, queue_depth

console = Console()


def print_overview(settings: Settings) -> None:
    from tasks.app import make_app

    engine = get_engine(settings.resolved_database_url)
    app = make_app(settings)
    config = ExperimentSource.from_settings(settings, engine).config

    experiments = Table(title="Experiments")
    for column in ("experiment", "baseline", "candidate", "stage", "candidate share", "gates"):
        experiments.add_column(column)
    for experiment in config.experiments:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in experiment.current_stage.shares.items())
        stage = experiment.stage + (" [bold red](rolled back)[/]" if experiment.rolled_back else "")
        experiments.add_row(
            experiment.name, experiment.baseline, experiment.candidate, stage, shares,
            _verdict(settings, experiment.name),
        )  # fmt: skip
    console.print(experiments)

    online = consumers(app, timeout=1.0)
    records = {r.node: r for r in overview.worker_records(engine)}
    queues = Table(title="Queues and workers")
    for column in ("version", "queue", "waiting", "workers (device, revision)"):
        queues.add_column(column)
    for version in settings.versions:
        queue = settings.queue_for(version)
        nodes = sorted(node for node, names in online.items() if queue in names)
        described = ", ".join(
            f"{node} ({records[node].device}, {records[node].revision or '-'})"
            if node in records
            else node
            for node in nodes
        )
        queues.add_row(version, queue, str(queue_depth(app, queue)), described or "[red]none[/]")
    console.print(queues)

    run = golden.latest_run(engine)
    if run is None:
        console.print("golden set: no run yet (`canary golden run`)")
    else:
        progress = golden.run_progress(engine, run.id)
        console.print(
            f"golden set: last run {run.id} ({run.status}, {run.baseline} vs {run.candidate}, "
            f"{progress.get('checked', 0)}/{2 * run.case_count} images checked, started "
            f"{run.created_at:%Y-%m-%d %H:%M} UTC)"
        )


def _verdict(settings: Settings, experiment: str) -> str:
    """The gate verdict of the latest daily dashboard, with its day."""
    _, latest = dashboard_paths(settings, experiment, None)
    if not latest.exists():
        return "no dashboard yet (`canary report`)"
    report = json.loads(latest.read_text(encoding="utf-8"))
    verdict = report["gates"]["verdict"]
    colour = {"advance": "green", "hold": "yellow", "rollback": "red"}[verdict]
    return f"[{colour}]{verdict}[/] ({report['window']['last']})"
