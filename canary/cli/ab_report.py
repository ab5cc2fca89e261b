"""`canary report EXPERIMENT`: the A/B report as terminal tables (and its JSON and
dashboard files); `canary simulate`: a simulated experiment to try the report on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from canary.cli.common import db_engine, err, fail, print_json, usage_error, write_file
from canary.settings import get_settings

console = Console()
VERDICT_STYLE = {"advance": "bold green", "hold": "bold yellow", "rollback": "bold red"}


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}%"


def _interval(ci: dict[str, float] | None) -> str:
    return "-" if not ci else f"[{_pct(ci['low'])}, {_pct(ci['high'])}]"


def _wait(cell: dict[str, Any] | None, key: str) -> str:
    return "-" if not cell else f"{cell[key]:,.0f} ms"


def print_queue_wait(rows: list[dict[str, Any]]) -> None:
    """Queue wait per priority class and arm: a backlog shows here, not as model latency."""
    table = Table(title="Queue wait by priority class (time from submission to a worker)")
    for column in ("class", "arm", "jobs", "P50", "P95", "in health metrics"):
        table.add_column(column, justify="right" if column in {"jobs", "P50", "P95"} else "left")
    for row in rows:
        counted = "yes" if row["in_health_metrics"] else "no (excluded)"
        for arm in ("baseline", "candidate"):
            cell = row.get(arm)
            table.add_row(
                row["class"], arm, str(cell["n"]) if cell else "0",
                _wait(cell, "p50"), _wait(cell, "p95"), counted,
            )  # fmt: skip
    console.print(table)


def print_ab_report(report: dict[str, Any]) -> None:
    users = report["users"]
    console.print(
        f"[bold]{report['experiment']}[/]: baseline {report['baseline']} vs candidate "
        f"{report['candidate']}, stage {report['stage']}"
        f"{' (rolled back)' if report['rolled_back'] else ''}, days {report['window']['first']}"
        f" to {report['window']['last']}, users {users.get('baseline', 0)} / "
        f"{users.get('candidate', 0)}"
    )
    table = Table(title="Metrics (all users; always-valid intervals hold under daily looks)")
    for column in ("layer", "metric", "baseline", "candidate", "lift", "95% CI",
                   "always-valid CI", "p (always valid)", ""):  # fmt: skip
        table.add_column(column, justify="left" if column in {"layer", "metric", ""} else "right")
    for section in report["metrics"].values():
        c = section.get("cuped") or section["overall"]
        if c is None:
            table.add_row(section["layer"], section["label"], *["-"] * 6, "not enough data")
            continue
        arrow = "better" if (c["lift"] > 0) == section["higher_is_better"] else "worse"
        flag = f"significant, {arrow}" if c["significant"] else ""
        name = section["label"] + (" (CUPED)" if c.get("cuped") else "")
        table.add_row(
            section["layer"], name, _num(c["baseline"]), _num(c["candidate"]),
            _pct(c["relative_lift"]), _interval(c["relative_ci"]),
            _interval(c["sequential_relative_ci"]), f"{c['sequential_p_value']:.3g}", flag,
        )  # fmt: skip
    console.print(table)
    p95 = report["latency_p95"]["overall"]
    shown = ", ".join(
        f"{arm} {p95[arm]['value']:,.0f} ms (n {p95[arm]['n']})" for arm in p95 if p95[arm]
    )
    console.print(f"P95 latency of successful jobs: {shown or 'no data'}")
    scope = report.get("health_scope")
    if scope:
        console.print(f"priority classes: {scope['note']}")
    if report.get("queue_wait"):
        print_queue_wait(report["queue_wait"])
    srm, joint = report["srm"]["overall"], report["srm"].get("joint")
    if srm:
        bad = joint["mismatch"] if joint else srm["mismatch"]
        status = "[bold red]MISMATCH[/]" if bad else "ok"
        by_segment = (
            f"; per segment: joint p {joint['p_value']:.3g}, most off {joint['worst']}"
            if joint
            else ""
        )
        console.print(
            f"sample ratio: {srm['baseline']} / {srm['candidate']} users, expected candidate "
            f"share {srm['expected_candidate_share']:.1%}, pooled p {srm['p_value']:.3g}"
            f"{by_segment}: {status}"
        )
    gates = report["gates"]
    style = VERDICT_STYLE[gates["verdict"]]
    console.print(f"gate verdict: [{style}]{gates['verdict'].upper()}[/]")
    for reason in gates["reasons"]:
        console.print(f"  - {reason}")


def report(
    experiment: str,
    day: Annotated[
        str | None, typer.Option("--date", help="Last day of the report (UTC, YYYY-MM-DD)")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the JSON report instead of the tables")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json-out", dir_okay=False, help="Write the JSON here")
    ] = None,
    html_out: Annotated[
        Path | None, typer.Option("--html", dir_okay=False, help="Write the dashboard here")
    ] = None,
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="Recompute every day from the jobs and events instead of reading the "
            "rolled-up days (the same numbers, slower)",
        ),
    ] = False,
    roll_up: Annotated[
        bool,
        typer.Option(
            "--roll-up",
            help="First roll up the report's completed days (the daily job does this)",
        ),
    ] = False,
) -> None:
    """The A/B report of an experiment: three metric layers, statistics, SRM, gates."""
    import json
    from datetime import date

    from storage.models import utcnow

    settings = get_settings()
    try:
        last = date.fromisoformat(day) if day else utcnow().date()
    except ValueError:
        raise usage_error(f"--date {day!r} is not YYYY-MM-DD") from None
    from gateway.experiment_source import ExperimentSource

    config = ExperimentSource.from_settings(settings, db_engine()).config
    if experiment not in {e.name for e in config.experiments}:
        known = ", ".join(e.name for e in config.experiments) or "none (no experiment file)"
        raise fail(f"no experiment {experiment!r}; configured: {known}")
    # imported after the checks: the statistics libraries take seconds to load
    from analysis.dashboard import render_dashboard
    from analysis.experiment_report import report_for_experiment
    from analysis.gates import GatePolicyError, load_policy

    if roll_up and not full:
        from analysis.experiment_report import report_window
        from analysis.rollups import roll_up as roll_up_days

        first, _ = report_window(settings, last)
        done = roll_up_days(db_engine(), experiment, first, last)
        err.print(
            f"rolled up {len(done.rolled_up)} days, re-rolled {len(done.rerolled)} "
            f"({done.late_events} late events, {done.late_outcomes} late job outcomes) "
            f"in {done.seconds:.1f} s"
        )
    try:
        result = report_for_experiment(
            settings, db_engine(), config, experiment, last, incremental=not full
        )
        policy = load_policy(settings.gate_policy_file)
    except GatePolicyError as exc:
        raise fail(f"gate policy: {exc}") from None
    if as_json:
        print_json(result)
    else:
        print_ab_report(result)
    write_file(json_out, lambda: json.dumps(result, indent=1, default=str), "JSON report")
    write_file(
        html_out,
        lambda: render_dashboard(result, policy.guardrails.p95_latency_max_ms),
        "dashboard",
    )


Effect = Annotated[float, typer.Option(min=-0.99, help="Relative change for the candidate")]


def simulate(
    users: Annotated[int, typer.Option(min=10, max=1_000_000)] = 1000,
    days: Annotated[int, typer.Option(min=1, max=60, help="Experiment days")] = 10,
    seed: Annotated[int, typer.Option(help="The same seed simulates the same traffic")] = 1,
    last: Annotated[str | None, typer.Option(help="Last day (default yesterday, UTC)")] = None,
    share: Annotated[float, typer.Option(min=0, max=1, help="Candidate's share")] = 0.5,
    broken_split: Annotated[
        list[str] | None,
        typer.Option(
            help="FRACTION of candidate users lost in every segment, or SEGMENT=FRACTION for "
            "one segment (repeatable; a negative FRACTION loses baseline users instead)",
        ),
    ] = None,
    dwell_effect: Effect = 0.0,
    retry_effect: Effect = 0.0,
    download_effect: Effect = 0.0,
    feedback_effect: Effect = 0.0,
    retention_effect: Effect = 0.0,
    generation_effect: Effect = 0.0,
    conversion_effect: Effect = 0.0,
    failure_effect: Annotated[float, typer.Option(min=-0.99)] = 0.0,
) -> None:
    """Fill the database with a simulated experiment (fake users, jobs, events) to try the
    report and the dashboard; effects are relative changes of the candidate's behaviour."""
    from datetime import date, timedelta

    from analysis.simulation.command import SimulationRefused, parse_broken_split, run_simulation
    from analysis.simulation.model import Effects, SimulationSpec
    from storage.models import utcnow

    try:
        end = date.fromisoformat(last) if last else utcnow().date() - timedelta(days=1)
    except ValueError:
        raise usage_error(f"--last {last!r} is not YYYY-MM-DD") from None
    effects = Effects(
        dwell=dwell_effect, quick_retry=retry_effect, download=download_effect,
        negative_feedback=feedback_effect, retention=retention_effect,
        generation_rate=generation_effect, conversion=conversion_effect, failure=failure_effect,
    )  # fmt: skip
    try:
        everywhere, by_segment = parse_broken_split(broken_split or [])
        spec = SimulationSpec(
            users=users, days=days, effects=effects, shares={"default": share},
            broken_split=everywhere, broken_segments=by_segment,
        )  # fmt: skip
    except ValueError as exc:
        raise usage_error(f"--broken-split: {exc}") from None
    try:
        run_simulation(get_settings(), spec, seed=seed, last=end, run_id=f"sim{seed}")
    except SimulationRefused as exc:
        raise fail(str(exc)) from None
