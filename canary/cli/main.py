"""The `canary` command line: a thin shell over the gateway, tasks, storage and analysis."""

from __future__ import annotations

import getpass
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from canary.cli.images import images_app
from canary.cli.rollout import rollout_app
from canary.contracts import queue_for
from canary.settings import (
    VERSION_PATTERN,
    ConfigError,
    Settings,
    get_settings,
    mask_url,
    reset_settings_cache,
)
from storage.models import ApiKeyRole

if TYPE_CHECKING:
    from storage.models import Job

app = typer.Typer(
    help="Canary releases and A/B tests of diffusion model versions.",
    no_args_is_help=True,
    # a traceback's local variables can hold URLs with passwords and tokens
    pretty_exceptions_show_locals=False,
)
models_app = typer.Typer(help="Model versions in the local registry.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
keys_app = typer.Typer(
    help="API keys (stored hashed; a token is shown once).", no_args_is_help=True
)
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")
golden_app = typer.Typer(
    help="The golden set: nightly replay through both versions, grading, reports.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
app.add_typer(golden_app, name="golden")
app.add_typer(rollout_app, name="rollout")
app.add_typer(images_app, name="images")
console = Console()
err = Console(stderr=True)

DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")
# how long `canary worker` waits for a live worker under its name to answer
NAME_CHECK_TIMEOUT_S = 2.0


# Exit codes of every command (README, "Exit codes"): 0 done; 1 the operation failed (a
# failed job, a timeout, an unknown id, a refusal, a broker or database out of reach);
# 2 bad usage (Typer's own usage errors and invalid option values).
EXIT_FAILED = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``message`` to stderr (unwrapped, for scripts); returns the exit to raise."""
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def usage_error(message: str) -> typer.Exit:
    """An invalid option value: exit code 2, like Typer's own usage errors."""
    return fail(message, EXIT_USAGE)


def _print_json(document: object) -> None:
    from canary.cli.report import print_json

    print_json(document)


def _write(path: Path | None, text: Callable[[], str], what: str) -> None:
    """Write a report file if asked to; the note goes to stderr (stdout may be JSON)."""
    if path is not None:
        path.write_text(text(), encoding="utf-8")
        err.print(f"{what}: {path}")


@contextmanager
def _database_errors(settings: Settings) -> Iterator[None]:
    """A database out of reach (or without the schema) as one line and exit code 1."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError, ProgrammingError

    try:
        yield
    except (OperationalError, ProgrammingError) as exc:
        shown = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
        first_line = str(exc.orig).strip().splitlines()[0]
        raise fail(f"database {shown}: {first_line}") from None


def _engine():  # type: ignore[no-untyped-def]
    from storage.db import get_engine

    return get_engine(get_settings().resolved_database_url)


# ---------------------------------------------------------------- db / models
@db_app.command("init")
def db_init() -> None:
    """Create the tables, or upgrade an existing database (idempotent)."""
    from sqlalchemy.engine import make_url

    from storage.db import init_db
    from storage.migrate import SchemaError

    with _database_errors(get_settings()):
        try:
            init_db(_engine())
        except SchemaError as exc:
            raise fail(str(exc)) from None
    shown = make_url(get_settings().resolved_database_url).render_as_string(hide_password=True)
    console.print(f"database ready: {shown}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Upgrade the schema to this release with Alembic migrations, keeping every row.

    A database made before migrations existed (by `canary db init`) is recognised first.
    """
    from sqlalchemy.engine import make_url

    from storage.migrate import SchemaError, upgrade_db

    with _database_errors(get_settings()):
        try:
            before, after = upgrade_db(_engine())
        except SchemaError as exc:
            raise fail(str(exc)) from None
    shown = make_url(get_settings().resolved_database_url).render_as_string(hide_password=True)
    if before == after:
        console.print(f"database up to date (revision {after}): {shown}")
    else:
        console.print(f"database upgraded {before or 'empty'} -> {after}: {shown}")


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


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses the key")],
    role: Annotated[ApiKeyRole, typer.Option(help="What the key may do")] = ApiKeyRole.CLIENT,
) -> None:
    """Create an API key and print its token (the only time it is shown)."""
    from gateway.auth import create_key

    key, token = create_key(_engine(), name, role)
    err.print(f"created {key.role} key {key.id} ({key.name}); store the token now:")
    print(token)


@keys_app.command("list")
def keys_list() -> None:
    """Keys with their role and prefix (never the token)."""
    from gateway.auth import list_keys

    for key in list_keys(_engine()):
        state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
        console.print(f"{key.id}  {key.prefix}…  {key.role:8}  {state:18}  {key.name}")


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key; requests with it get 401 within seconds."""
    from gateway.auth import revoke_key

    if not revoke_key(_engine(), key_id):
        raise fail(f"no active key {key_id}")
    console.print(f"revoked {key_id}")


# ---------------------------------------------------------------- processes
@app.command()
def api(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """The HTTP API (OpenAPI schema at /openapi.json, docs at /docs)."""
    import uvicorn

    uvicorn.run("gateway.http.app:create_app", factory=True, host=host, port=port, workers=workers)


@app.command()
def worker(
    model_version: Annotated[str, typer.Option("--model-version", help="Version to serve")],
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    name: Annotated[
        str | None,
        typer.Option(
            help="Node name; must be unique on this host (default "
            "render-VERSION-DEVICE-<random suffix>)"
        ),
    ] = None,
    loglevel: Annotated[str, typer.Option()] = "info",
) -> None:
    """A render worker bound to one model version and one device (concurrency 1)."""
    if not DEVICE_PATTERN.match(device):
        raise usage_error(f"device {device!r} is not cpu, cuda or cuda:N")
    settings = get_settings()
    if model_version not in settings.versions:
        raise usage_error(
            f"unknown version {model_version!r} (configured: {', '.join(settings.versions)})"
        )
    from tasks.registry import ModelNotFound, require_version_dir
    from tasks.version_config import VersionConfigError, load_version_config

    try:
        folder = require_version_dir(settings.resolved_model_dir, model_version)
        limits = load_version_config(folder).limits
    except (ModelNotFound, VersionConfigError) as exc:
        raise fail(str(exc)) from None
    # The binding travels in the environment so the pool's child processes see it too.
    import socket

    from tasks.nodes import unique_node_name

    host = socket.gethostname()
    node = f"{name}@{host}" if name else unique_node_name(model_version, device, host)
    if name:  # a default name is unique already (6 random hex digits)
        _refuse_a_taken_name(settings, node)
    from tasks import node_locks

    node_locks.hold(node)  # tells a successor on this host when this worker is gone
    os.environ["CANARY_WORKER_MODEL_VERSION"] = model_version
    os.environ["CANARY_WORKER_DEVICE"] = device
    os.environ["CANARY_WORKER_NODE"] = node
    # The version's own time limits (canary.yaml) unless the environment sets them for
    # every version (an operator's override).
    overridden = {"task_time_limit_s", "task_soft_time_limit_s"} & settings.model_fields_set
    if limits.time_limit_s is not None and not overridden:
        os.environ["CANARY_TASK_SOFT_TIME_LIMIT_S"] = str(limits.soft_time_limit_s)
        os.environ["CANARY_TASK_TIME_LIMIT_S"] = str(limits.time_limit_s)
    reset_settings_cache()
    try:
        settings = get_settings()
    except ConfigError as exc:
        raise fail(f"{folder / 'canary.yaml'} limits: {exc.lines[0]}") from None
    from tasks import app as celery_app

    # The app's configuration was read before the version's limits were known; its tasks
    # take their limits from it when the worker finalizes the app.
    celery_app.conf.task_soft_time_limit = settings.task_soft_time_limit_s
    celery_app.conf.task_time_limit = settings.task_time_limit_s
    celery_app.worker_main(
        [
            "worker",
            "--queues", queue_for(model_version),
            "--concurrency", "1",
            "--pool", "prefork",
            "--hostname", node,
            "--loglevel", loglevel,
            "--without-mingle",
            "--without-gossip",
            "--task-events",
        ]
    )  # fmt: skip


def _refuse_a_taken_name(settings: Settings, node: str) -> None:
    """Two workers under one node name would each take the other's jobs for their own (the
    claim guard keys on it), so a name a live worker answers to is refused."""
    from tasks.app import make_app
    from tasks.queues import broker_answers, node_online

    if not broker_answers(settings.broker_url, NAME_CHECK_TIMEOUT_S):
        return  # nobody can be consuming under it; the worker waits for the broker
    if node_online(make_app(settings), node, NAME_CHECK_TIMEOUT_S):
        raise fail(
            f"a worker named {node} is already running; give this one another --name "
            "or leave --name out for a unique one"
        )


@app.command("scheduler-worker")
def scheduler_worker(loglevel: Annotated[str, typer.Option()] = "info") -> None:
    """The worker for periodic jobs (queue canary.default); it loads no model."""
    from celeryconfig import DEFAULT_QUEUE
    from tasks import app as celery_app

    celery_app.worker_main(
        [
            "worker",
            "--queues", DEFAULT_QUEUE,
            "--concurrency", "1",
            "--hostname", "scheduler@%h",
            "--loglevel", loglevel,
            "--without-mingle",
            "--without-gossip",
            "--task-events",
        ]
    )  # fmt: skip


@app.command()
def beat(loglevel: Annotated[str, typer.Option()] = "info") -> None:
    """Celery beat: runs the periodic jobs of scheduler/ (one active beat per broker)."""
    from tasks import app as celery_app

    celery_app.start(["beat", "--loglevel", loglevel])


@app.command()
def flower() -> None:
    """Flower, the Celery monitor (CANARY_FLOWER_ADDRESS:CANARY_FLOWER_PORT).

    Basic auth comes from CANARY_FLOWER_BASIC_AUTH (handed to Flower in its environment,
    never on the command line, where `ps` would show it); off loopback it is required. On
    loopback without it, user `canary` logs in with a password generated once and kept in
    $CANARY_HOME/flower-password (0600); the password is never printed.
    """
    from canary.cli.flower_info import flower_credentials
    from tasks import app as celery_app

    settings = get_settings()
    loopback = settings.flower_address in {"127.0.0.1", "::1", "localhost"}
    if settings.flower_basic_auth is None and not loopback:
        raise fail(
            f"Flower on {settings.flower_address} needs CANARY_FLOWER_BASIC_AUTH=user:password"
        )
    os.environ["FLOWER_BASIC_AUTH"] = flower_credentials(settings)
    arguments = [
        "flower",
        f"--port={settings.flower_port}",
        f"--address={settings.flower_address}",
        "--purge_offline_workers=60",
    ]
    if settings.flower_persistent:
        settings.home.mkdir(parents=True, exist_ok=True)
        arguments += ["--persistent=True", f"--db={settings.home / 'flower.db'}"]
    from canary.cli.flower_info import flower_lines

    for line in flower_lines(settings):
        err.print(line, soft_wrap=True, highlight=False)
    celery_app.start(arguments)


@app.command()
def up(
    device: Annotated[
        list[str] | None, typer.Option(help="VERSION=DEVICE, e.g. v2=cuda:1 (default cpu)")
    ] = None,
) -> None:
    """Run the local stack: broker (private Valkey unless REDIS_URL), workers, beat, Flower."""
    from canary.cli.stack import StackError, run_stack

    devices: dict[str, str] = {}
    for item in device or []:
        version, _, dev = item.partition("=")
        if not dev or not DEVICE_PATTERN.match(dev):
            raise usage_error(f"--device {item!r}: expected VERSION=cpu|cuda|cuda:N")
        devices[version] = dev
    try:
        raise typer.Exit(run_stack(get_settings(), devices))
    except StackError as exc:
        raise fail(str(exc)) from None


# ---------------------------------------------------------------- producer side
@app.command()
def submit(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help=".jsonl or .csv")],
    model_version: Annotated[
        str | None, typer.Option("--model-version", help="For lines that name none")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until every job has finished")] = False,
    resubmit: Annotated[
        bool,
        typer.Option(help="Queue lines submitted before again, as new jobs (default: skip them)"),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the outcome (and with --wait the batch) as JSON")
    ] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: seconds to wait at most")] = 3600.0,
    chunk: Annotated[int, typer.Option(min=1, max=10_000)] = 500,
) -> None:
    """Submit every line of FILE as a job; bad lines are reported by line number and
    skipped, lines submitted before are skipped (see --resubmit). Exits 1 if a line was
    rejected or, with --wait, a job failed."""
    import json

    from canary.cli.batch import submit_file, wait_for_batch
    from canary.cli.batch_status import explain_skipped, show_batch
    from canary.cli.stack import broker_problem

    settings = get_settings()
    problem = broker_problem(settings)
    if problem:
        raise fail(f"nothing submitted: {problem}", 1)
    try:
        outcome = submit_file(
            file,
            settings,
            default_version=model_version,
            chunk=chunk,
            resubmit=resubmit,
            quiet=as_json,
        )
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    for error in outcome.errors:
        err.print(f"[red]{file}:{error.line}:[/] {error.message}", highlight=False, soft_wrap=True)
    skipped = explain_skipped(outcome, str(file))
    summary = (
        f"{outcome.created} jobs queued, {outcome.duplicates} already submitted, "
        f"{len(outcome.errors)} lines rejected (batch {outcome.batch_id})"
    )
    if outcome.unsent:
        summary += (
            f"; {outcome.unsent} not sent yet: the broker {settings.shown_broker_url} refused "
            "them, and they are sent when it is back (they stay QUEUED)"
        )
    (err if as_json else console).print(summary, highlight=False, soft_wrap=True)
    if skipped:
        (err if as_json else console).print(skipped, highlight=False, soft_wrap=True)
    if not wait:
        if as_json:
            print(json.dumps(outcome.as_json(), indent=2))
        raise typer.Exit(1 if outcome.errors else 0)
    wait_for_batch(settings, outcome.batch_id, timeout=timeout, quiet=as_json)
    code = show_batch(settings, outcome.batch_id, as_json=as_json, wait=True, timeout=0)
    raise typer.Exit(code or 0)


@app.command()
def status(
    job_id: Annotated[
        str | None,
        typer.Argument(help="A job id or a batch id; without one: the whole system"),
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Wait until the job (or every job of the batch) has finished")
    ] = False,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait at most")] = 600.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document (and nothing else)")
    ] = False,
) -> None:
    """One job (status, version, timings, failure, image), one batch (counts by status,
    rejected and failed lines, images), or the system overview: experiments and stages,
    queues and workers, the last golden run, the gate verdicts."""
    settings = get_settings()
    if job_id is None:
        _status_overview(settings, as_json)
        return
    from storage import jobs

    with _database_errors(settings):
        job = jobs.get_job(_engine(), job_id)
    if job is None:
        from canary.cli.batch_status import show_batch

        with _database_errors(settings):
            code = show_batch(settings, job_id, as_json=as_json, wait=wait, timeout=timeout)
        if code is None:
            raise fail(f"no job or batch {job_id}")
        raise typer.Exit(code)
    _status_of_job(settings, job, wait, timeout, as_json)


def _status_overview(settings: Settings, as_json: bool) -> None:
    from canary.cli.overview import OverviewError, collect_overview, print_overview

    try:
        with _database_errors(settings):
            overview = collect_overview(settings)
    except OverviewError as exc:
        raise fail(str(exc)) from None
    if as_json:
        _print_json(overview)
    else:
        print_overview(settings, overview)


def _status_of_job(settings: Settings, job: Job, wait: bool, timeout: float, as_json: bool) -> None:
    """Print the job (after waiting for it if asked); exit 1 if it failed or is not done."""
    from canary.cli.report import job_document, print_job
    from storage import jobs
    from storage.models import JobStatus
    from storage.objects import store_from_settings

    done = True
    if wait:
        job, done = _wait_for_job(job, timeout)
    image_url = None
    if job.image_key:
        image_url = store_from_settings(settings).url(job.image_key, settings.presign_expiry_s)
    lost = jobs.lost_attempts(_engine(), job.id)  # how each attempt's worker died
    if as_json:
        _print_json(job_document(job, image_url, lost))
    else:
        print_job(job, image_url, lost)
    if not done:
        raise fail(f"job {job.id} still {job.status} after {timeout:g} s")
    if job.status == JobStatus.FAILED:
        raise fail(f"job {job.id} failed ({job.failure_kind})")


def _wait_for_job(job: Job, timeout: float) -> tuple[Job, bool]:
    """The job as it is once finished (True) or after ``timeout`` seconds (False)."""
    from storage import jobs
    from storage.models import TERMINAL_STATUSES

    deadline = time.monotonic() + timeout
    while job.status not in TERMINAL_STATUSES:
        if time.monotonic() > deadline:
            return job, False
        time.sleep(0.5)
        job = jobs.get_job(_engine(), job.id) or job
    return job, True


@app.command()
def hotfix(
    model_version: Annotated[str, typer.Option("--model-version", help="Version to patch")],
    weights: Annotated[str, typer.Option(help="A diffusers folder path or s3://bucket/prefix")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the workers")] = 900.0,
) -> None:
    """Publish new weights for a version; its online workers swap them in between jobs."""
    from scheduler.hotfix_rollout import hotfix as run_hotfix
    from tasks.app import make_app
    from tasks.registry import ModelNotFound

    settings = get_settings()
    if model_version not in settings.versions:
        raise usage_error(f"unknown version {model_version!r}")
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


@app.command()
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
            _engine(),
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


# ---------------------------------------------------------------- golden set
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
    from canary.cli import golden as golden_cli
    from scheduler.golden_replay import GoldenRunRefused

    settings = get_settings()
    try:
        if resume:
            outcome = golden_cli.resume_run(settings, resume)
        else:
            outcome = golden_cli.start_run(
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
    if not golden_cli.wait_and_check(settings, outcome.run_id, timeout):
        raise fail(f"golden run {outcome.run_id} not complete after {timeout:.0f} s")
    from analysis.golden.report import report_for_run

    report = report_for_run(_engine(), outcome.run_id)
    assert report is not None
    golden_cli.print_report(report)


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
    from canary.cli import golden as golden_cli

    report = report_for_run(_engine(), run_id)
    if report is None:
        raise fail(f"no golden run {run_id}")
    if as_json:
        _print_json(report)
    else:
        golden_cli.print_report(report)
    _write(json_out, lambda: json.dumps(report, indent=2), "JSON report")
    _write(html_out, lambda: render_report_html(report), "HTML report")


@golden_app.command("list")
def golden_list(
    limit: Annotated[int, typer.Option(min=1)] = 20,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document (and nothing else)")
    ] = False,
) -> None:
    """Recent golden runs."""
    from canary.cli.golden import print_runs, run_summary
    from storage import golden

    engine = _engine()
    runs = [run_summary(engine, run) for run in golden.list_runs(engine, limit)]
    if as_json:
        _print_json({"runs": runs})
    else:
        print_runs(runs)


# ---------------------------------------------------------------- measurement
@app.command()
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
) -> None:
    """The A/B report of an experiment: three metric layers, statistics, SRM, gates."""
    import json
    from datetime import date

    from analysis.dashboard import render_dashboard
    from analysis.experiment_report import report_for_experiment
    from analysis.gates import GatePolicyError, load_policy
    from canary.cli.ab_report import print_ab_report
    from gateway.experiment_source import ExperimentSource
    from storage.models import utcnow

    settings = get_settings()
    try:
        last = date.fromisoformat(day) if day else utcnow().date()
    except ValueError:
        raise usage_error(f"--date {day!r} is not YYYY-MM-DD") from None
    config = ExperimentSource.from_settings(settings, _engine()).config
    if experiment not in {e.name for e in config.experiments}:
        known = ", ".join(e.name for e in config.experiments) or "none (no experiment file)"
        raise fail(f"no experiment {experiment!r}; configured: {known}")
    try:
        result = report_for_experiment(settings, _engine(), config, experiment, last)
        policy = load_policy(settings.gate_policy_file)
    except GatePolicyError as exc:
        raise fail(f"gate policy: {exc}") from None
    if as_json:
        _print_json(result)
    else:
        print_ab_report(result)
    _write(json_out, lambda: json.dumps(result, indent=1, default=str), "JSON report")
    _write(
        html_out,
        lambda: render_dashboard(result, policy.guardrails.p95_latency_max_ms),
        "dashboard",
    )


@app.command()
def demo(
    jobs: Annotated[int, typer.Option(min=2, max=10_000, help="Jobs to render")] = 40,
) -> None:
    """The whole loop on this machine: tiny models, local stack, a batch over two versions."""
    from canary.cli.demo import DemoError, run_demo

    try:
        run_demo(get_settings(), jobs)
    except DemoError as exc:
        raise fail(str(exc)) from None


# ---------------------------------------------------------------- simulated traffic
Effect = Annotated[float, typer.Option(min=-0.99, help="Relative change for the candidate")]


@app.command()
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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except ConfigError as exc:  # one line per bad setting, never a traceback with values
        for line in exc.lines:
            err.print(f"[bold red]configuration error:[/] {line}", soft_wrap=True, highlight=False)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
