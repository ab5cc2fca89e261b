"""`canary status` (the overview): ``python -m benchmarks.status_overview [--quick]``.

A private stack with two benchmark stub versions (``sleep`` pipelines, so the workers are
busy rendering queued jobs while it is measured, without taking the CPU) and one real
``canary worker`` each, and an experiment file naming them. Measured side by side in one
run, each the median of ``--runs``:

- finding the online workers and their queues the old way: a broadcast ``active_queues``
  to every node with Celery's 1 s timeout, which always waits out the timeout;
- the new way: asking only the workers recorded in the database (``workers`` table), which
  returns as soon as all of them replied; and the same with one recorded worker gone,
  which is bounded by ``canary.cli.overview.WORKER_REPLY_TIMEOUT_S``;
- importing ``scheduler.dashboards`` (fresh interpreter), which the old overview imported
  for a file path and which pulls in scipy and matplotlib;
- ``canary status`` and ``canary status --json`` as a user runs them (a subprocess,
  interpreter start included). Target: <= 1 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    PROJECT_ROOT,
    BenchStack,
    Figure,
    Report,
    bench_main,
    broker_url,
    job_requests,
)
from canary.cli.overview import WORKER_REPLY_TIMEOUT_S
from storage import revisions
from storage.overview import worker_records
from tasks.queues import consumers
from tasks.stub_pipelines import make_stub_model

VERSIONS = ["bench-base", "bench-cand"]
TARGET_S = 1.0
RENDER_S = 0.2  # per stub image: the workers stay busy while the figures are taken
EXPERIMENT = {
    "default_version": VERSIONS[0],
    "experiments": [
        {
            "name": "bench-status",
            "baseline": VERSIONS[0],
            "candidate": VERSIONS[1],
            "stages": [{"name": "50%", "shares": {"default": 0.5}}],
            "stage": "50%",
        }
    ],
}

# --quick: sizes for a CI smoke run (its figures mean nothing)
# 150 stub jobs keep each queue non-empty for 30 s, longer than a loaded machine needs to
# start the CLI and take the quick figures
QUICK: dict[str, Any] = {"runs": 1, "busy_jobs": 100}


def median_s(action: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run_cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "canary.cli", *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"canary {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result.stdout


def import_s(module: str, runs: int) -> float:
    command = [sys.executable, "-c", f"import {module}"]
    return median_s(lambda: subprocess.run(command, cwd=PROJECT_ROOT, check=True), runs)


def recorded_workers(stack: BenchStack, timeout: float = 120.0) -> list[str]:
    """The node of each version's worker, once it has loaded its model and recorded it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nodes = [r.node for r in worker_records(stack.engine) if r.revision]
        if len(nodes) == len(VERSIONS):
            return nodes
        time.sleep(0.2)
    raise RuntimeError(f"workers did not record their models within {timeout:.0f} s")


def check_overview(stdout: str, nodes: Sequence[str]) -> None:
    """The command saw both workers and the queued jobs (the figures are of a real answer)."""
    overview = json.loads(stdout)
    seen = {w["node"] for q in overview["queues"] for w in q["workers"]}
    if seen != set(nodes) or not any(q["waiting"] for q in overview["queues"]):
        raise RuntimeError(f"the overview missed workers or queued jobs: {overview['queues']}")


def run(args: argparse.Namespace) -> Report:
    report = Report("status_overview", "canary status overview", quick=args.quick)
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp, broker_url() as broker:
        root = Path(tmp)
        stack = BenchStack(root, broker, VERSIONS)
        try:
            experiment = root / "experiment.json"
            experiment.write_text(json.dumps(EXPERIMENT))
            env = {**stack.env, "CANARY_EXPERIMENT_FILE": str(experiment), "COLUMNS": "200"}
            for version in VERSIONS:
                make_stub_model(stack.model_dir / version, "sleep", seconds_per_image=RENDER_S)
            stack.start_workers(VERSIONS)
            # queued only once every worker is up, so neither queue drains before the figures
            for version in VERSIONS:
                stack.submit(
                    job_requests(version, args.busy_jobs, width=64, height=64, steps=1),
                    batch_id=f"busy-{version}",
                )
            nodes = recorded_workers(stack)
            check_overview(run_cli(env, "status", "--json"), nodes)
            broadcast = median_s(lambda: consumers(stack.app, timeout=1.0), args.runs)
            recorded = median_s(
                lambda: consumers(stack.app, WORKER_REPLY_TIMEOUT_S, nodes=nodes), args.runs
            )
            command = median_s(lambda: run_cli(env, "status"), args.runs)
            command_json = median_s(lambda: run_cli(env, "status", "--json"), args.runs)
            dashboards_import = import_s("scheduler.dashboards", args.runs)
            # last: a worker that loaded its model once and is gone now
            revisions.report(stack.engine, "bench-gone@nowhere", VERSIONS[0], "cpu", "stale")
            stale = median_s(
                lambda: consumers(
                    stack.app, WORKER_REPLY_TIMEOUT_S, nodes=[*nodes, "bench-gone@nowhere"]
                ),
                args.runs,
            )
        finally:
            stack.close()
    runs = f"median of {args.runs}, {len(nodes)} busy workers"
    report.add(
        Figure(
            "status_overview_command_s",
            command,
            "s",
            f"`canary status` as a subprocess, interpreter start included; {runs}",
            "<=",
            TARGET_S,
        )
    )
    report.add(Figure("status_overview_json_command_s", command_json, "s", "`--json`; " + runs))
    report.add(
        Figure(
            "workers_broadcast_s",
            broadcast,
            "s",
            "old: active_queues broadcast to every node, 1 s timeout; " + runs,
        )
    )
    report.add(
        Figure(
            "workers_recorded_s",
            recorded,
            "s",
            f"new: only the recorded workers asked, {broadcast / recorded:.0f}x faster",
        )
    )
    report.add(
        Figure(
            "workers_recorded_one_gone_s",
            stale,
            "s",
            f"new, one recorded worker gone: bounded by {WORKER_REPLY_TIMEOUT_S:g} s",
        )
    )
    report.add(
        Figure(
            "import_scheduler_dashboards_s",
            dashboards_import,
            "s",
            "fresh interpreter; the old overview imported it (scipy, matplotlib)",
        )
    )
    report.extra = {"runs": args.runs, "busy_jobs": args.busy_jobs, "render_s": RENDER_S}
    return report


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="measurements per figure")
    parser.add_argument("--busy-jobs", type=int, default=400, help="stub jobs queued per version")
    parser.add_argument("--quick", action="store_true", help="a smoke run (not meaningful)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return bench_main("canary status overview", parser(), run, QUICK, argv)


if __name__ == "__main__":
    sys.exit(main())
