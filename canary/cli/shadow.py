"""`canary shadow status|pause|resume EXPERIMENT`: shadow traffic's controls."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from canary.cli.common import console, database_errors, fail, print_json, usage_error
from canary.settings import get_settings

if TYPE_CHECKING:
    from gateway.experiments import Experiment

shadow_app = typer.Typer(
    help="Shadow traffic: copies of live baseline jobs rendered by the candidate. "
    "status (paired comparison and health), pause, resume.",
    no_args_is_help=True,
)
Name = Annotated[str, typer.Argument(help="The experiment")]


def _experiment(name: str) -> Experiment:
    from gateway.experiment_source import ExperimentSource
    from storage.db import get_engine

    settings = get_settings()
    engine = get_engine(settings.resolved_database_url)
    config = ExperimentSource.from_settings(settings, engine).config
    try:
        return config.experiment(name)
    except KeyError:
        known = ", ".join(e.name for e in config.experiments) or "none"
        raise usage_error(f"unknown experiment {name!r} (known: {known})") from None


def _set_paused(name: str, paused: bool) -> None:
    from redis.exceptions import RedisError

    from gateway.shadow import ShadowControls

    experiment = _experiment(name)
    controls = ShadowControls(get_settings().broker_url)
    try:
        controls.set_paused(experiment.name, paused)
    except (RedisError, OSError) as exc:
        raise fail(f"the broker did not answer: {exc}") from None
    finally:
        controls.close()
    state = "paused: no new copies" if paused else "resumed"
    console.print(f"shadow traffic of {experiment.name} {state} (every gateway within 1 s)")


@shadow_app.command("pause")
def pause(name: Name) -> None:
    """Stop copying live jobs of the experiment (copies already queued still render)."""
    _set_paused(name, True)


@shadow_app.command("resume")
def resume(name: Name) -> None:
    """Copy live jobs of the experiment again, as its current stage says."""
    _set_paused(name, False)


@shadow_app.command("status")
def status(
    name: Name,
    days: Annotated[int, typer.Option(min=1, max=366, help="Days of pairs compared")] = 7,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document (and nothing else)")
    ] = False,
) -> None:
    """The stage's shadow share, pause, counters, jobs and the paired comparison with the
    shadow-health verdict (exit 0 whatever the verdict)."""
    from analysis.shadow_status import status_document
    from storage.db import get_engine

    settings = get_settings()
    experiment = _experiment(name)
    with database_errors(settings):
        document = status_document(
            settings, get_engine(settings.resolved_database_url), experiment, days
        )
    if as_json:
        print_json(document)
        return
    _show(document)


def _show(doc: dict[str, Any]) -> None:
    rule = doc["shadow"]
    segments = ", ".join(rule["segments"]) if rule["segments"] else "all segments"
    paused = {True: "PAUSED", False: "on", None: "unknown (broker did not answer)"}[doc["paused"]]
    console.print(
        f"[bold]{doc['experiment']}[/]: {doc['baseline']} -> {doc['candidate']} "
        f"(shadow), stage {doc['stage']}{' (rolled back)' if doc['rolled_back'] else ''}"
    )
    console.print(f"shadow share {rule['share']:.0%} of live baseline jobs, {segments}; {paused}")
    counters = doc["counters"] or {"sampled": "?", "skipped_full": "?"}
    jobs = doc["jobs"]
    console.print(
        f"sampled {counters['sampled']}, skipped (backlog full, max {doc['max_queued']}) "
        f"{counters['skipped_full']}; jobs: {jobs['sent']} sent, {jobs['queued']} queued or "
        f"running, {jobs['succeeded']} completed, {jobs['failed']} failed"
    )
    comparison = doc["comparison"]
    table = Table(title=f"Paired comparison, last {doc['days']} days (baseline vs candidate)")
    for column in ("day", "segment", "pairs", "failed", "P50 ms", "P95 ms", "pHash p50/max"):
        table.add_column(column)
    for group in [{"day": "all", "segment": "all", **comparison["overall"]}, *comparison["groups"]]:
        rate = group["failure_rate"]
        p50, p95 = group["render_latency"]["p50"], group["render_latency"]["p95"]
        distance = group["image_distance"]
        table.add_row(
            group["day"], group["segment"], str(group["pairs"]),
            f"{_pct(rate['baseline'])} / {_pct(rate['candidate'])}",
            f"{_ms(p50['baseline_ms'])} / {_ms(p50['candidate_ms'])}",
            f"{_ms(p95['baseline_ms'])} / {_ms(p95['candidate_ms'])}",
            f"{_num(distance['phash_bits_p50'])} / {_num(distance['phash_bits_max'])}",
        )  # fmt: skip
    console.print(table)
    for kind, n in comparison["overall"]["failures_by_kind"].items():
        console.print(f"  failures {kind}: baseline {n['baseline']}, candidate {n['candidate']}")
    if comparison["worst_pairs"]:
        console.print("pairs that differ most (pHash bits):")
        for worst in comparison["worst_pairs"]:
            console.print(
                f"  {worst['phash_bits']:>3}  live {worst['live_id']}  shadow "
                f"{worst['shadow_id']}  seed {worst['seed']}  {worst['prompt'][:60]!r}",
                highlight=False,
            )
    verdict = comparison["health"]
    colour = {"pass": "green", "fail": "red"}.get(verdict["verdict"], "yellow")
    console.print(f"shadow health: [bold {colour}]{verdict['verdict']}[/]")
    for reason in verdict["reasons"]:
        console.print(f"  - {reason}", highlight=False)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
