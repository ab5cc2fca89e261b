"""`canary golden ...`: start or resume a golden run by hand, wait for it, print its report.

The submission and checking machinery (and the database) is imported where it is used, so
that the CLI starts quickly and listing runs (and `canary status`, which shows the last
one) stays quick.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from canary.cli.common import db_engine, fail, print_json, write_file
from canary.settings import Settings, get_settings
from storage.models import GoldenRun, GoldenRunStatus, utcnow

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from scheduler.golden_replay import ReplayOutcome

golden_app = typer.Typer(
    help="The golden set: nightly replay through both versions, grading, reports.",
    no_args_is_help=True,
)
console = Console()


@golden_app.command("run")
def golden_run(
    run_id: Annotated[str | None, typer.Option(help="Run id (default: manual-<time>)")] = None,
    resume: Annotated[
        str | None, typer.Option(help="Resume this run's submission instead of starting one")
    ] = None,
    set_file: Annotated[Path | None, typer.Option(help="Golden set file")] = None,
    baseline: Annotated[str | None, typer.Option(help="Default: the experiment's")] = None,
    candidate: Annotated[str | None, typer.Option(help="Default: the experiment's")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the images and check them")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait at most")] = 3600.0,
) -> None:
    """Replay the golden set through the baseline and the candidate now."""
    from analysis.golden.cases import GoldenSetError
    from scheduler.golden_replay import GoldenRunRefused

    settings = get_settings()
    try:
        if resume:
            outcome = resume_run(settings, resume)
        else:
            outcome = start_run(
                settings, run_id=run_id, set_file=set_file, baseline=baseline, candidate=candidate
            )
    except GoldenSetError as exc:
        raise fail("invalid golden set:\n  " + "\n  ".join(exc.errors)) from None
    except GoldenRunRefused as exc:
        raise fail(str(exc)) from None
    console.print(
        f"golden run {outcome.run_id}: {outcome.status}, {outcome.new_jobs} new jobs"
        + ("" if outcome.created or resume else " (the run existed; nothing enqueued twice)")
    )
    if not wait:
        return
    if not wait_and_check(settings, outcome.run_id, timeout):
        raise fail(f"golden run {outcome.run_id} not complete after {timeout:.0f} s")
    from analysis.golden.report import report_for_run

    report = report_for_run(db_engine(), outcome.run_id)
    assert report is not None
    print_report(report)


@golden_app.command("report")
def golden_report(
    run_id: str,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the JSON report instead of the table")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json-out", dir_okay=False, help="Write the JSON here")
    ] = None,
    html_out: Annotated[
        Path | None, typer.Option("--html", dir_okay=False, help="Write the HTML here")
    ] = None,
) -> None:
    """Summary table of a golden run; or its JSON; optionally JSON and HTML files."""
    import json

    from analysis.golden.html import render_report_html
    from analysis.golden.report import report_for_run

    report = report_for_run(db_engine(), run_id)
    if report is None:
        raise fail(f"no golden run {run_id}")
    if as_json:
        print_json(report)
    else:
        print_report(report)
    write_file(json_out, lambda: json.dumps(report, indent=2), "JSON report")
    write_file(html_out, lambda: render_report_html(report), "HTML report")


@golden_app.command("list")
def golden_list(
    limit: Annotated[int, typer.Option(min=1)] = 20,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document (and nothing else)")
    ] = False,
) -> None:
    """Recent golden runs."""
    from storage import golden

    engine = db_engine()
    runs = [run_summary(engine, run) for run in golden.list_runs(engine, limit)]
    if as_json:
        print_json({"runs": runs})
    else:
        print_runs(runs)


def start_run(
    settings: Settings,
    *,
    run_id: str | None,
    set_file: Path | None,
    baseline: str | None,
    candidate: str | None,
) -> ReplayOutcome:
    from analysis.golden.cases import load_golden_set
    from canary.cli.batch import make_gateway, progress_bar
    from scheduler.golden_replay import GoldenReplay, manual_run_id, versions_under_test

    gateway = make_gateway(settings)
    path = set_file or settings.golden_set_file
    golden_set = load_golden_set(path, settings)
    default_baseline, default_candidate = versions_under_test(settings, gateway.experiments.config)
    replay = GoldenReplay(settings, gateway)
    with progress_bar() as progress:
        task = progress.add_task("enqueue golden cases", total=2 * len(golden_set.cases))
        return replay.start(
            run_id or manual_run_id(utcnow()),
            golden_set,
            path.read_text(encoding="utf-8"),
            trigger="manual",
            baseline=baseline or default_baseline,
            candidate=candidate or default_candidate,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )


def resume_run(settings: Settings, run_id: str) -> ReplayOutcome:
    from canary.cli.batch import make_gateway, progress_bar
    from scheduler.golden_replay import GoldenReplay

    gateway = make_gateway(settings)
    with progress_bar() as progress:
        task = progress.add_task("enqueue remaining cases", total=None)
        return GoldenReplay(settings, gateway).resume(
            run_id, progress=lambda done, total: progress.update(task, completed=done, total=total)
        )


def wait_and_check(settings: Settings, run_id: str, timeout: float) -> bool:
    """Wait for every image of the run, checking each as it finishes; True when complete."""
    from analysis.golden.run_checks import check_run, scorer_from_settings
    from canary.cli.batch import progress_bar
    from storage import golden
    from storage.db import get_engine
    from storage.objects import store_from_settings

    engine = get_engine(settings.resolved_database_url)
    store = store_from_settings(settings)
    scorer = scorer_from_settings(settings)
    deadline = time.monotonic() + timeout
    with progress_bar() as progress:
        run = golden.get_run(engine, run_id)
        assert run is not None
        task = progress.add_task("render and check", total=2 * run.case_count)
        while True:
            run = golden.get_run(engine, run_id)
            assert run is not None
            check_run(settings, engine, store, run, scorer)
            counts = golden.run_progress(engine, run_id)
            progress.update(task, completed=counts.get("checked", 0))
            if golden.complete_if_checked(engine, run_id) or run.status == GoldenRunStatus.COMPLETE:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)


def run_summary(engine: Engine, run: GoldenRun) -> dict[str, Any]:
    """One run as plain JSON data: who, when, and how many of its images are checked."""
    from storage import golden

    return {
        "id": run.id,
        "trigger": run.trigger,
        "status": run.status,
        "created_at": run.created_at.isoformat(),
        "cases": run.case_count,
        "baseline": run.baseline,
        "candidate": run.candidate,
        "checked": golden.run_progress(engine, run.id).get("checked", 0),
        "images": 2 * run.case_count,
    }


def print_runs(runs: list[dict[str, Any]]) -> None:
    if not runs:
        console.print("no golden run yet (`canary golden run`)")
        return
    table = Table(title="Golden runs")
    for column in ("run", "trigger", "status", "created", "cases", "versions", "checked"):
        table.add_column(column)
    for run in runs:
        table.add_row(
            run["id"],
            run["trigger"],
            run["status"],
            run["created_at"][:16].replace("T", " "),
            str(run["cases"]),
            f"{run['baseline']} vs {run['candidate']}",
            f"{run['checked']}/{run['images']}",
        )
    console.print(table)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def print_report(report: dict[str, Any]) -> None:
    run = report["run"]
    versions = [run["baseline"], run["candidate"]]
    console.print(
        f"[bold]golden run {run['id']}[/] ({run['trigger']}, {run['status']}): "
        f"{run['cases']} cases of {run['set_name']} (sha256 {run['set_sha256'][:12]}), "
        f"graders: {', '.join(report['graders']) or 'none'}"
    )
    table = Table(title=f"Pass rate: baseline {versions[0]} vs candidate {versions[1]}")
    table.add_column("scope")
    for version in versions:
        table.add_column(f"{version} pass", justify="right")
        table.add_column(f"{version} S/A/B", justify="right")
        table.add_column(f"{version} graded", justify="right")
    table.add_column("candidate - baseline (95% CI)", justify="right")
    table.add_column("p", justify="right")
    scopes = ["overall", *report["versions"][versions[0]]["categories"]]
    for scope in scopes:
        cells = [scope]
        for version in versions:
            data = report["versions"][version]
            block = data["overall"] if scope == "overall" else data["categories"][scope]
            levels = block["levels"]
            cells += [
                _pct(block["pass_rate"]),
                f"{levels['S']}/{levels['A']}/{levels['B']}",
                f"{block['graded']}/{block['images']}",
            ]
        diff = (
            report["difference"]["overall"]
            if scope == "overall"
            else report["difference"]["categories"][scope]
        )
        if diff is None:
            cells += ["-", "-"]
        else:
            low, high = diff["ci"]
            cells += [
                f"{100 * diff['estimate']:+.1f} pp [{100 * low:+.1f}, {100 * high:+.1f}]",
                f"{diff['p_value']:.3g}",
            ]
        table.add_row(*cells)
    console.print(table)
    console.print(
        f"changed level: {len(report['changed'])} cases "
        f"({sum(c['direction'] == 'worse' for c in report['changed'])} worse); "
        f"hard failures: {len(report['hard_failures'])}; drifted images: {len(report['drift'])}"
    )
    for failure in report["hard_failures"][:20]:
        console.print(f"  S {failure['version']} {failure['case_id']}: {failure['reason']}")
