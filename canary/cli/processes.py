"""`canary api | worker | scheduler-worker | beat | flower | up`: the long-running processes.

Celery, uvicorn and the model registry are imported inside the commands: the CLI starts
quickly, and a parent process (`canary up`) never imports torch or CUDA.
"""

from __future__ import annotations

import os
import re
from typing import Annotated

import typer

from canary.cli.common import err, fail, usage_error
from canary.contracts import queues_for
from canary.settings import ConfigError, Settings, get_settings, reset_settings_cache

DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")
# how long `canary worker` waits for a live worker under its name to answer
NAME_CHECK_TIMEOUT_S = 2.0


def api(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, help="server processes (one per core is a good start)")
    ] = 1,
) -> None:
    """The HTTP API (OpenAPI schema at /openapi.json, docs at /docs)."""
    from canary.cli.api_server import serve_app

    serve_app("gateway.http.app:create_app", host, port, workers)


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
    from tasks.app import RENDER_TASK_MODULES, serve_only
    from tasks.app import app as celery_app

    serve_only(celery_app, RENDER_TASK_MODULES)
    # The app's configuration was read before the version's limits were known; its tasks
    # take their limits from it when the worker finalizes the app.
    celery_app.conf.task_soft_time_limit = settings.task_soft_time_limit_s
    celery_app.conf.task_time_limit = settings.task_time_limit_s
    celery_app.worker_main(
        [
            "worker",
            # highest class first: the consume order is the priority (celeryconfig)
            "--queues", ",".join(queues_for(model_version)),
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


def scheduler_worker(loglevel: Annotated[str, typer.Option()] = "info") -> None:
    """The worker for periodic jobs (queue canary.default); it loads no model."""
    from celeryconfig import DEFAULT_QUEUE
    from tasks.app import PERIODIC_TASK_MODULES, serve_only
    from tasks.app import app as celery_app

    serve_only(celery_app, PERIODIC_TASK_MODULES)
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


def beat(loglevel: Annotated[str, typer.Option()] = "info") -> None:
    """Celery beat: runs the periodic jobs of scheduler/ (one active beat per broker)."""
    from scheduler.schedule import configure_beat
    from tasks.app import app as celery_app
    from tasks.app import serve_only

    serve_only(celery_app, ())  # beat sends its tasks by name
    configure_beat(celery_app, get_settings())
    celery_app.start(["beat", "--loglevel", loglevel])


def flower() -> None:
    """Flower, the Celery monitor (CANARY_FLOWER_ADDRESS:CANARY_FLOWER_PORT).

    Basic auth comes from CANARY_FLOWER_BASIC_AUTH (handed to Flower in its environment,
    never on the command line, where `ps` would show it); off loopback it is required. On
    loopback without it, user `canary` logs in with a password generated once and kept in
    $CANARY_HOME/flower-password (0600); the password is never printed.
    """
    from canary.cli.flower_info import flower_credentials
    from tasks.app import app as celery_app
    from tasks.app import serve_only

    serve_only(celery_app, ())  # Flower shows tasks from the workers' events
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
