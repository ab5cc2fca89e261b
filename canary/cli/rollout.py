"""`canary rollout ...`: the operator's controls, each recorded in the audit log."""

from __future__ import annotations

import getpass
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from canary.settings import get_settings

if TYPE_CHECKING:
    from scheduler.rollout import LiveState, QueuedPolicy, Rollout

T = TypeVar("T")

rollout_app = typer.Typer(
    help="Stages of an experiment: status (with the audit log), advance, hold, rollback, "
    "set-stage, auto, auto-run.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)

Actor = Annotated[str, typer.Option(help="Who acts (recorded in the audit log)")]
Reason = Annotated[str, typer.Option(help="Why (recorded in the audit log)")]
Force = Annotated[
    bool,
    typer.Option(help="Override gates that do not say advance (needs --reason; marked forced)"),
]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _fail(message: str, code: int = 1) -> typer.Exit:
    """Exit codes as in canary/cli/common.py: 1 the operation was refused or failed, 2 bad usage."""
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def _control() -> Rollout:
    from gateway.experiment_source import ExperimentSource
    from scheduler.rollout import Rollout
    from storage.db import get_engine
    from tasks.app import make_app

    settings = get_settings()
    engine = get_engine(settings.resolved_database_url)
    config = ExperimentSource.from_settings(settings, engine).config
    return Rollout(settings, engine, config, make_app(settings))


def _evaluation(control: Rollout, name: str) -> dict[str, Any]:
    from analysis.experiment_report import report_for_experiment
    from storage.models import utcnow

    yesterday = (utcnow() - timedelta(days=1)).date()
    report = report_for_experiment(
        control.settings, control.engine, control.config, name, yesterday
    )
    gates: dict[str, Any] = report["gates"]
    return gates


def _run(action: Callable[[], T], control: Rollout | None = None) -> T:
    """Run a rollout action; refusals exit 1, failed notifications are only reported."""
    from scheduler.rollout import RolloutError

    try:
        return action()
    except RolloutError as exc:
        raise _fail(str(exc)) from None
    finally:
        for failure in control.notifier.failures if control is not None else []:
            err.print(f"[yellow]warning:[/] notification failed: {failure}", soft_wrap=True)


@rollout_app.command("status")
def status(
    experiment: str,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document (and nothing else)")
    ] = False,
) -> None:
    """The live stage, its shares, automatic mode, and the latest audit entries."""
    control = _control()
    state = _run(lambda: control.state(experiment))
    document = _status_document(control, experiment, state)
    if as_json:
        from canary.cli.common import print_json

        print_json(document)
    else:
        _print_status(document)


def _status_document(control: Rollout, experiment: str, state: LiveState) -> dict[str, Any]:
    """What `rollout status` shows, as plain JSON data (times in ISO 8601, UTC)."""
    from storage import rollout_state as rollout

    spec = control.experiment(experiment)
    stage = next(s for s in spec.stages if s.name == state.stage)
    audit = rollout.audit_log(control.engine, experiment, 10)
    return {
        "experiment": experiment,
        "baseline": spec.baseline,
        "candidate": spec.candidate,
        "stages": [s.name for s in spec.stages],
        "stage": state.stage,
        "stage_since": state.stage_since.isoformat() if state.stage_since else None,
        "candidate_shares": dict(stage.shares),
        "rolled_back": state.rolled_back,
        "auto": state.auto,
        "audit": [
            {
                "at": event.at.isoformat(),
                "actor": event.actor,
                "action": event.action,
                "from_stage": event.from_stage,
                "to_stage": event.to_stage,
                "reason": event.reason,
                "gates": (evidence := _evidence(event.evaluation)).get("verdict"),
                "forced": bool(evidence.get("forced")),
            }
            for event in audit
        ],
    }


def _evidence(evaluation: str | None) -> dict[str, Any]:
    import json

    return json.loads(evaluation) if evaluation else {}


def _print_status(doc: dict[str, Any]) -> None:
    ladder = " -> ".join(f"[bold]{s}[/]" if s == doc["stage"] else s for s in doc["stages"])
    shares = ", ".join(f"{k} {v:.0%}" for k, v in doc["candidate_shares"].items())
    console.print(
        f"{doc['experiment']}: {doc['baseline']} (baseline) vs {doc['candidate']} (candidate)"
    )
    console.print(f"stages: {ladder}")
    flag = " [bold red]ROLLED BACK: everyone gets the baseline[/]" if doc["rolled_back"] else ""
    since = f" since {_minute(doc['stage_since'])} UTC" if doc["stage_since"] else " (file)"
    console.print(f"stage {doc['stage']}{since}: candidate share {shares}{flag}")
    console.print(f"automatic mode: {'on' if doc['auto'] else 'off'}")
    table = Table(title="Audit log (latest first)")
    for column in ("when (UTC)", "who", "action", "from", "to", "gates", "reason"):
        table.add_column(column)
    for event in doc["audit"]:
        action = event["action"] + (" [bold red](FORCED)[/]" if event["forced"] else "")
        table.add_row(
            event["at"][:19].replace("T", " "), event["actor"], action,
            event["from_stage"] or "-", event["to_stage"] or "-", event["gates"] or "-",
            event["reason"],
        )  # fmt: skip
    console.print(table)


def _minute(iso: str) -> str:
    """``2026-11-25T09:30:00+00:00`` as ``2026-11-25 09:30``."""
    return iso[:16].replace("T", " ")


@rollout_app.command("advance")
def advance(
    experiment: str,
    reason: Reason,
    actor: Actor = "",
    force: Force = False,
) -> None:
    """Move to the next stage (never skipping one); the gates must agree unless --force."""
    control = _control()
    evaluation = _evaluation(control, experiment)
    state = _run(
        lambda: control.advance(experiment, actor or _user(), reason, evaluation, force=force),
        control,
    )
    console.print(f"{experiment}: now at stage {state.stage}{_forced_note(evaluation, force)}")


def _forced_note(evaluation: dict[str, Any], force: bool) -> str:
    if force and evaluation.get("verdict") != "advance":
        return f" (FORCED over the gates' {evaluation.get('verdict')}; recorded)"
    return ""


@rollout_app.command("hold")
def hold(experiment: str, reason: Reason, actor: Actor = "") -> None:
    """Stay at the current stage; records the decision and today's gate evaluation."""
    control = _control()
    evaluation = _evaluation(control, experiment)
    state = _run(lambda: control.hold(experiment, actor or _user(), reason, evaluation), control)
    console.print(f"{experiment}: holding at {state.stage} (gates: {evaluation['verdict']})")


@rollout_app.command("rollback")
def rollback(
    experiment: str,
    reason: Reason,
    actor: Actor = "",
    queued: Annotated[
        str, typer.Option(help="Queued candidate jobs: finish (on the candidate) or reroute")
    ] = "finish",
) -> None:
    """Send all new traffic to the baseline at once."""
    if queued not in ("finish", "reroute"):
        raise _fail("--queued must be finish or reroute", 2)
    policy: QueuedPolicy = "reroute" if queued == "reroute" else "finish"
    control = _control()
    evaluation = _evaluation(control, experiment)
    state, moved = _run(
        lambda: control.rollback(experiment, actor or _user(), reason, evaluation, policy),
        control,
    )
    console.print(
        f"{experiment}: rolled back at stage {state.stage}; new traffic goes to the baseline"
        + (f"; {moved} queued jobs moved to the baseline" if queued == "reroute" else "")
    )


@rollout_app.command("set-stage")
def set_stage(
    experiment: str, stage: str, reason: Reason, actor: Actor = "", force: Force = False
) -> None:
    """Put the experiment at a named stage (also resumes after a rollback). A stage with
    more exposure than now needs the gates to say advance, as `advance` does, or --force."""
    control = _control()
    evaluation = _evaluation(control, experiment)
    before = _run(lambda: control.state(experiment))
    state = _run(
        lambda: control.set_stage(
            experiment, stage, actor or _user(), reason, evaluation, force=force
        ),
        control,
    )
    raised = control.raises_exposure(experiment, before, stage)
    note = _forced_note(evaluation, force) if raised else ""
    console.print(f"{experiment}: now at stage {state.stage}{note}")


@rollout_app.command("auto")
def auto(
    experiment: str,
    on: Annotated[bool, typer.Option("--on/--off", help="Switch automatic mode")] = True,
    actor: Actor = "",
) -> None:
    """Switch the automatic mode of one experiment (off by default)."""
    control = _control()
    _run(lambda: control.set_auto(experiment, on, actor or _user()))
    console.print(f"{experiment}: automatic mode {'on' if on else 'off'}")


@rollout_app.command("auto-run")
def auto_run(
    experiment: Annotated[str | None, typer.Argument(help="Default: every auto experiment")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print what it would do; change nothing")] = False,
) -> None:
    """Run the automatic mode's daily evaluation now."""
    from scheduler.auto_rollout import run_auto
    from storage.db import get_engine
    from tasks.app import make_app

    settings = get_settings()
    engine = get_engine(settings.resolved_database_url)
    steps = _run(
        lambda: run_auto(
            settings, engine, dry_run=dry_run, only=experiment, celery=make_app(settings)
        )
    )
    if not steps:
        console.print("no experiment is in automatic mode")
    for name, step in steps.items():
        verb = "would" if dry_run else "did"
        console.print(
            f"{name}: {verb} {step.action.upper()} ({step.from_stage} -> {step.to_stage})"
        )
        for reason in step.reasons:
            console.print(f"  - {reason}")
