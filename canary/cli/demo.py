"""`canary demo`: the README's main job, end to end on embedded defaults.

Builds two tiny model versions if missing, creates the schema, starts `canary up` in the
background, submits a batch split between the versions, waits for it with a progress bar
and prints the per-version summary. The stack is stopped afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from canary.cli.common import fail
from canary.settings import Settings, get_settings, reset_settings_cache

if TYPE_CHECKING:
    from celery import Celery

console = Console()
PROMPTS = [
    "a lighthouse at dusk, cinematic lighting",
    "portrait of a dancer mid-jump, film grain",
    "a brass teapot on linen, macro detail",
    "a city street in the style of a woodcut print",
    "a fox in the snow, golden hour",
]


DEMO_EXPERIMENT = """\
# Written by `canary demo`: v2 is the candidate, at its 50% stage.
default_version: {baseline}
experiments:
  - name: demo-canary
    seed: demo-canary
    baseline: {baseline}
    candidate: {candidate}
    allowlist: [dogfood-user]
    stages:
      - {{name: internal, shares: {{default: 0.0}}}}
      - {{name: 5%, shares: {{default: 0.05}}}}
      - {{name: 15%, shares: {{default: 0.15}}}}
      - {{name: 50%, shares: {{default: 0.5}}}}
      - {{name: 100%, shares: {{default: 1.0}}}}
    stage: 50%
"""


class DemoError(RuntimeError):
    pass


def ensure_experiment(settings: Settings) -> Path:
    """The configured experiment file, else a demo one (baseline v1, candidate v2 at 50%)
    at ``home/experiments.yaml``, where every later `canary` command finds it."""
    configured = settings.resolved_experiment_file
    if configured is not None:
        return configured
    path = settings.home / "experiments.yaml"
    baseline, candidate = settings.versions[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DEMO_EXPERIMENT.format(baseline=baseline, candidate=candidate))
    return path


def ensure_models(settings: Settings) -> None:
    from tasks.registry import ModelNotFound, require_version_dir, version_dir
    from tasks.tiny_model import make_tiny_model

    for seed, version in enumerate(settings.versions[:2], start=1):
        try:
            require_version_dir(settings.resolved_model_dir, version)
        except ModelNotFound:
            console.print(f"building tiny model {version} (seed {seed})")
            make_tiny_model(version_dir(settings.resolved_model_dir, version), seed)


@contextmanager
def background_stack(settings: Settings, app: Celery) -> Iterator[None]:
    """Run `canary up` as a child process group until the block ends (or use the local
    stack that is already running)."""
    from canary.cli.stack import broker_reachable, running_stack_pid

    pid = running_stack_pid(settings)
    if pid is not None and broker_reachable(settings.broker_url):
        console.print(f"using the local stack that is already running (pid {pid})")
        yield
        return
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.log_dir / "stack.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "canary.cli", "up"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_workers(settings, app, process, log_path)
        yield
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                # `canary up` gives its processes this long to stop, then kills them itself
                process.wait(timeout=settings.stack_stop_grace_s + 10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_for_workers(
    settings: Settings,
    app: Celery,
    process: subprocess.Popen[bytes],
    log_path: Path,
    timeout: float = 120.0,
) -> None:
    deadline = time.monotonic() + timeout
    from canary.cli.stack import broker_reachable
    from tasks.nodes import node_prefix, serves

    expected = [node_prefix(v, "cpu") for v in settings.versions]
    with console.status("starting the local stack (broker, workers, beat, Flower)"):
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise DemoError(f"the local stack exited early; see {log_path}")
            if not broker_reachable(settings.broker_url, timeout=0.5):
                time.sleep(0.2)  # `canary up` has not started its broker yet
                continue
            replies = app.control.ping(timeout=1.0) or []
            seen = [node for reply in replies for node in reply]
            if all(any(serves(node, prefix) for node in seen) for prefix in expected):
                return
            time.sleep(0.5)
    raise DemoError(f"workers did not come up within {timeout:.0f} s; see {log_path}")


def run_demo(settings: Settings, n_jobs: int) -> None:
    if len(settings.versions) < 2:
        raise DemoError("the demo needs two configured versions (CANARY_VERSIONS)")
    ensure_models(settings)
    experiment_file = ensure_experiment(settings)
    # The stack we start, and our own gateway, share this experiment file.
    os.environ["CANARY_EXPERIMENT_FILE"] = str(experiment_file.resolve())
    reset_settings_cache()
    _render_batch(get_settings(), n_jobs)


def _render_batch(settings: Settings, n_jobs: int) -> None:
    from analysis.summary import summarize
    from canary.cli.batch import make_gateway, submit_lines, wait_for_batch
    from canary.cli.report import print_summary
    from storage.db import get_engine, init_db
    from storage.models import Batch
    from storage.objects import store_from_settings

    engine = get_engine(settings.resolved_database_url)
    init_db(engine)
    gateway = make_gateway(settings)
    lines = [
        (
            i + 1,
            gateway.prepare(
                {
                    "prompt": PROMPTS[i % len(PROMPTS)],
                    "seed": 1000 + i,
                    "steps": 8,
                    "width": 64,
                    "height": 64,
                    "user_id": f"demo-user-{i}",
                }
            ),
        )
        for i in range(n_jobs)
    ]
    console.print(
        f"experiment file {settings.resolved_experiment_file}: the gateway assigns each demo "
        "user a version (sticky, deterministic)"
    )
    with background_stack(settings, gateway.producer.app):
        batch = Batch(id=uuid.uuid4().hex, source="demo")
        submit_lines(gateway, lines, batch, chunk=100)
        counts = wait_for_batch(settings, batch.id, timeout=600)
    print_summary(summarize(engine, batch_id=batch.id), store_from_settings(settings).describe())
    unfinished = sum(v for k, v in counts.items() if k not in ("SUCCEEDED", "FAILED"))
    if unfinished:
        raise DemoError(f"{unfinished} jobs did not finish in time; see {settings.log_dir}")
    experiments = gateway.experiments.config.experiments
    experiment = experiments[0].name if experiments else "NAME"
    console.print(
        f"logs: {settings.log_dir}; Flower ran at http://127.0.0.1:{settings.flower_port}\n"
        "next:\n"
        f"  canary status {batch.id}      # this batch, line by line\n"
        f"  canary rollout status {experiment}     # the demo experiment's stage and audit log\n"
        "  canary up                              # the local stack again, in the foreground"
    )


def demo(
    jobs: Annotated[int, typer.Option(min=2, max=10_000, help="Jobs to render")] = 40,
) -> None:
    """The whole loop on this machine: tiny models, local stack, a batch over two versions."""
    try:
        run_demo(get_settings(), jobs)
    except DemoError as exc:
        raise fail(str(exc)) from None
