"""`canary models ...`, `canary hotfix` and `canary retire`: a version's weights and life.

(`canary images ...`, a version's rendered images, is in canary/cli/images.py.)
"""

from __future__ import annotations

import getpass
import re
from pathlib import Path
from typing import Annotated

import typer

from canary.cli.common import console, db_engine, fail, usage_error
from canary.settings import VERSION_PATTERN, get_settings, mask_url

models_app = typer.Typer(help="Model versions in the local registry.", no_args_is_help=True)


@models_app.command("make-tiny")
def models_make_tiny(
    version: str,
    seed: Annotated[int, typer.Option(help="Weights seed; versions differ by seed")] = 0,
    force: Annotated[bool, typer.Option(help="Overwrite an existing folder")] = False,
) -> None:
    """Build a tiny random-weight Stable Diffusion pipeline (no hub access) as VERSION."""
    if not re.match(VERSION_PATTERN, version):
        raise usage_error(f"version {version!r} must match {VERSION_PATTERN}")
    from tasks.registry import version_dir, weights_revision
    from tasks.tiny_model import make_tiny_model, tiny_model_seed

    target = version_dir(get_settings().resolved_model_dir, version)
    if (target / "model_index.json").exists() and not force:
        if tiny_model_seed(target) == seed:
            console.print(f"{version} is already built (seed {seed}) at {target}")
            return
        raise fail(f"{target} already holds another model (use --force to overwrite)", 1)
    make_tiny_model(target, seed)
    console.print(f"built {version} (seed {seed}) at {target}, revision {weights_revision(target)}")


@models_app.command("make-tiny-scorer")
def models_make_tiny_scorer(
    target: Path, seed: Annotated[int, typer.Option(help="Weights seed")] = 0
) -> None:
    """Build a tiny random-weight CLIP scorer folder (for CANARY_GOLDEN_SCORER_DIR tests)."""
    from tasks.tiny_model import make_tiny_scorer

    make_tiny_scorer(target, seed)
    console.print(f"built a tiny CLIP scorer at {target} (its scores are meaningless)")


@models_app.command("list")
def models_list() -> None:
    """Versions present in the model directory, with their weights revision."""
    from tasks.registry import available_versions, version_dir, weights_revision

    model_dir = get_settings().resolved_model_dir
    versions = available_versions(model_dir)
    if not versions:
        console.print(f"no model versions under {model_dir}")
    for version in versions:
        console.print(f"{version}\t{weights_revision(version_dir(model_dir, version))}")


def hotfix(
    model_version: Annotated[str, typer.Option("--model-version", help="Version to patch")],
    weights: Annotated[str, typer.Option(help="A diffusers folder path or s3://bucket/prefix")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the workers")] = 900.0,
) -> None:
    """Publish new weights for a version; its online workers swap them in between jobs."""
    settings = get_settings()
    if model_version not in settings.versions:
        raise usage_error(f"unknown version {model_version!r}")
    # imported after the checks: they bring torch, which a usage error should not wait for
    from scheduler.hotfix_rollout import hotfix as run_hotfix
    from tasks.app import make_app
    from tasks.registry import ModelNotFound

    try:
        outcome = run_hotfix(settings, make_app(settings), model_version, weights, timeout)
    except ModelNotFound as exc:
        raise fail(str(exc)) from None
    console.print(f"published {model_version} revision {outcome.revision} from {weights}")
    for node in outcome.workers:
        if node in outcome.updated:
            console.print(
                f"  {node}: serving {outcome.revision} after {outcome.updated[node]:.2f} s"
            )
        elif node in outcome.errors:
            console.print(f"  {node}: [red]{outcome.errors[node]}[/] (still on the old revision)")
        else:
            console.print(f"  {node}: [yellow]no report within {timeout:.0f} s[/]")
    if not outcome.workers:
        console.print("  no worker of this version is online; new workers will load it")
    console.print(
        f"all workers on the new revision in {outcome.elapsed_s:.2f} s"
        if outcome.complete
        else f"incomplete after {outcome.elapsed_s:.2f} s"
    )
    if not outcome.complete:
        raise typer.Exit(1)


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def retire(
    model_version: Annotated[str, typer.Option("--model-version", help="Version to retire")],
    reroute_to: Annotated[
        str | None, typer.Option(help="Move its queued jobs to this version instead of draining")
    ] = None,
    retention_days: Annotated[float, typer.Option(min=0)] = 7.0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the drain")] = 3600.0,
) -> None:
    """Retire a version: no new jobs, queue drained (or re-routed), its workers stopped."""
    from scheduler.retirement import RetireError
    from scheduler.retirement import retire as run_retire
    from tasks.app import make_app

    settings = get_settings()
    try:
        outcome = run_retire(
            settings,
            make_app(settings),
            db_engine(),
            model_version,
            reroute_to=reroute_to,
            retention_days=retention_days,
            timeout=timeout,
            actor=_current_user(),
        )
    except RetireError as exc:
        raise fail(str(exc)) from None
    if reroute_to:
        console.print(f"re-routed {outcome.rerouted} queued jobs to {reroute_to}")
    console.print(
        f"retired {model_version} in {outcome.elapsed_s:.1f} s; stopped "
        f"{', '.join(outcome.stopped) or 'no workers'}; images and logs are deleted after "
        f"{retention_days:g} days, job records are kept"
    )
    store = mask_url(settings.resolved_storage_url)
    console.print(
        f"log export (kept as long as the images): {', '.join(outcome.exported)} in {store}"
    )
