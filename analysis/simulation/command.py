"""`canary simulate`: a simulated experiment in the configured database, to try the report.

Writes its own experiment file (so the operator's stays untouched), sends the simulated
traffic through the real pipeline with a progress bar, then prints what was simulated next
to what the report measured.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.engine import Engine

from analysis.simulation.generate import Simulator
from analysis.simulation.model import SimulationSpec
from analysis.simulation.pipeline import (
    EXPERIMENT,
    IngestTotals,
    PipelineDriver,
    write_experiment_file,
)
from canary.settings import Settings
from storage import jobs as job_records

console = Console()
SHOWN = (
    ("long_dwell_share", "dwell"),
    ("quick_retry_share", "quick_retry"),
    ("download_rate", "download"),
    ("negative_feedback_rate", "negative_feedback"),
    ("success_rate", "failure"),
    ("retention_7d", "retention"),
    ("generations_per_week", "generation_rate"),
    ("trial_to_paid", "conversion"),
)


class SimulationRefused(ValueError):
    pass


def parse_broken_split(values: list[str]) -> tuple[float, dict[str, float]]:
    """``--broken-split`` values: FRACTION (every segment's candidates) or SEGMENT=FRACTION
    (a negative fraction loses that segment's baseline users: the candidate looks
    over-enrolled). Returns (everywhere, per segment); SimulationSpec checks the names."""
    everywhere, by_segment = 0.0, {}
    for value in values:
        segment, _, fraction = value.rpartition("=")
        try:
            number = float(fraction)
        except ValueError:
            raise ValueError(f"{value!r}: expected FRACTION or SEGMENT=FRACTION") from None
        if segment:
            by_segment[segment] = number
        elif not 0 <= number <= 1:
            raise ValueError(f"{value!r}: a fraction for every segment is between 0 and 1")
        else:
            everywhere = number
    return everywhere, by_segment


def experiment_path(settings: Settings) -> Path:
    return settings.home / "simulated-experiment.yaml"


def _already_simulated(engine: Engine, run_id: str) -> bool:
    return job_records.any_idempotency_key_starting(engine, f"{run_id}-")


def run_simulation(
    settings: Settings, spec: SimulationSpec, *, seed: int, last: date, run_id: str
) -> None:
    from analysis.experiment_report import build_report
    from analysis.gates import load_policy
    from gateway.experiments import load_config
    from storage.db import get_engine, init_db

    try:
        import time_machine  # noqa: F401
    except ImportError:
        raise SimulationRefused(
            "the simulator needs time-machine: pip install time-machine"
        ) from None
    if len(settings.versions) < 2:
        raise SimulationRefused("two configured versions are needed (CANARY_VERSIONS)")
    engine = get_engine(settings.resolved_database_url)
    init_db(engine)
    if _already_simulated(engine, run_id):
        raise SimulationRefused(f"run {run_id!r} is already in the database: use another --seed")
    baseline, candidate = settings.versions[:2]
    path = write_experiment_file(experiment_path(settings), spec, baseline, candidate)
    settings = settings.model_copy(update={"experiment_file": path})
    first = last - timedelta(days=spec.days - 1)
    simulator = Simulator(spec, seed, start=first)
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[jobs]:,} jobs"), TimeElapsedColumn(),
    ) as progress:  # fmt: skip
        task = progress.add_task("simulated days", total=spec.pre_days + spec.days, jobs=0)

        def advance(jobs: int) -> None:
            done = progress.tasks[task].fields["jobs"] + jobs
            progress.update(task, advance=1, jobs=done)

        driver = PipelineDriver(settings, engine, path, simulator, run_id=run_id, progress=advance)
        run = driver.run()
    experiment = load_config(path, settings.versions).experiment(EXPERIMENT)
    policy = load_policy(settings.gate_policy_file)
    report = build_report(engine, experiment, first, last, policy)
    _print_summary(spec, run.jobs, run.events, report)
    console.print(
        f"\nexperiment file: {path}\nsee it: CANARY_EXPERIMENT_FILE={path} canary report "
        f"{EXPERIMENT} --date {last.isoformat()} --html dashboard.html"
    )


def _print_summary(
    spec: SimulationSpec, jobs: int, events: IngestTotals, report: dict[str, Any]
) -> None:
    users = report["users"]
    console.print(
        f"{jobs:,} jobs, {events.accepted:,} events stored ({events.duplicates:,} duplicates "
        f"and {events.rejected:,} invalid events refused); users with jobs: baseline "
        f"{users['baseline']:,}, candidate {users['candidate']:,}"
    )
    table = Table(title=f"Simulated effects vs the report ({report['window']['first']} to "
                  f"{report['window']['last']})")  # fmt: skip
    for column in (
        "metric",
        "simulated behaviour change",
        "measured lift",
        "95% CI",
        "always-valid p",
    ):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for metric, effect in SHOWN:
        overall = report["metrics"][metric]["overall"]
        change = getattr(spec.effects, effect)
        shown = f"{change:+.0%} {effect.replace('_', ' ')}" if change else "none"
        if overall is None or overall["relative_lift"] is None:
            table.add_row(metric, shown, "-", "-", "-")
            continue
        ci = overall["relative_ci"]
        table.add_row(
            metric, shown, f"{overall['relative_lift']:+.1%}",
            f"[{ci['low']:+.1%}, {ci['high']:+.1%}]", f"{overall['sequential_p_value']:.3g}",
        )  # fmt: skip
    console.print(table)
    srm, joint = report["srm"]["overall"], report["srm"].get("joint")
    if srm and joint:
        console.print(
            f"sample ratio: joint over segments p {joint['p_value']:.3g}, most off "
            f"{joint['worst']} (Holm-adjusted p {joint['min_adjusted_p_value']:.3g}), pooled p "
            f"{srm['p_value']:.3g}{' [bold red]MISMATCH[/]' if joint['mismatch'] else ''}"
        )
    console.print(f"gate verdict: [bold]{report['gates']['verdict'].upper()}[/]")
