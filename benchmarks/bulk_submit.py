"""Bulk submission: ``python -m benchmarks.bulk_submit [--quick]``.

Two ways of queueing the same ``--lines`` jobs (100,000 by default), measured in one run:

- ``canary submit FILE`` as a user runs it (a subprocess, interpreter start included): a
  JSONL file whose lines name a user but no version, so every line is validated, assigned
  by the experiment (stratified, sticky: an assignment row per new user), recorded as a job
  row and published on its version's queue;
- the reference: a plain loop of ``send_task`` with the options ``render.apply_async``
  passes (``ignore_result`` from ``task_ignore_result``) for the same jobs, one message at a
  time over the app's producer pool, writing nothing to the database.

The figure is the ratio of the two rates (target >= 2). ``canary submit`` publishes no
task-sent events (the reference, with the project's Celery settings, does), so the same
loop without them is timed too. The run checks what arrived: job rows, assignment rows and
messages in the version queues must all match the file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from sqlmodel import Session, func, select

from benchmarks.harness import (
    PROJECT_ROOT,
    BenchStack,
    Figure,
    Report,
    bench_main,
    broker_url,
    progress,
)
from canary.contracts import RENDER_TASK, queue_for, queues_for
from storage.models import Assignment, Job

VERSIONS = ["bench-base", "bench-cand"]
TARGET = 2.0
EXPERIMENT = {
    "default_version": "bench-base",
    "experiments": [
        {
            "name": "bench-bulk",
            "baseline": "bench-base",
            "candidate": "bench-cand",
            "stages": [{"name": "50%", "shares": {"default": 0.5}}],
            "stage": "50%",
        }
    ],
}

# --quick: sizes for a CI smoke run (its figures mean nothing)
QUICK: dict[str, Any] = {"lines": 2_000, "users": 400}


def write_file(path: Path, lines: int, users: int) -> None:
    with path.open("w") as handle:
        for i in range(lines):
            record = {
                "prompt": f"a lighthouse at dusk, study {i}",
                "user_id": f"user-{i % users:06d}",
                "seed": i,
                "steps": 25,
            }
            handle.write(json.dumps(record) + "\n")


def queued(stack: BenchStack) -> int:
    client = redis.Redis.from_url(stack.settings.broker_url)
    return sum(client.llen(q) for v in VERSIONS for q in queues_for(v))


def clear_queues(stack: BenchStack) -> None:
    client = redis.Redis.from_url(stack.settings.broker_url)
    client.delete(*(q for v in VERSIONS for q in queues_for(v)))


def reference_loop(stack: BenchStack, lines: int) -> float:
    """Seconds for one ``send_task`` per job (the same messages, no database)."""
    specs: list[dict[str, Any]] = [
        {
            "job_id": str(uuid.uuid4()),
            "model_version": VERSIONS[i % 2],
            "prompt": f"a lighthouse at dusk, study {i}",
            "negative_prompt": "",
            "seed": i,
            "steps": 25,
            "guidance": 7.5,
            "width": 512,
            "height": 512,
        }
        for i in range(lines)
    ]
    app = stack.app
    with progress() as bar:
        task = bar.add_task("apply_async loop", total=lines)
        started = time.perf_counter()
        for n, spec in enumerate(specs, 1):
            app.send_task(
                RENDER_TASK,
                args=(spec["job_id"], spec),
                queue=queue_for(spec["model_version"]),
                task_id=spec["job_id"],
                ignore_result=True,  # what render.apply_async passes (task_ignore_result)
            )
            if n % 1000 == 0:
                bar.update(task, completed=n)
        return time.perf_counter() - started


def run(args: argparse.Namespace) -> Report:
    report = Report("bulk_submit", "Bulk submission", quick=args.quick)
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp, broker_url() as broker:
        root = Path(tmp)
        stack = BenchStack(root, broker, VERSIONS)
        try:
            experiment = root / "experiment.json"
            experiment.write_text(json.dumps(EXPERIMENT))
            path = root / "jobs.jsonl"
            write_file(path, args.lines, args.users)
            clear_queues(stack)
            started = time.perf_counter()
            result = subprocess.run(
                [sys.executable, "-m", "canary.cli", "submit", str(path)],
                # fair share off: the figure is the rate of putting every job on the
                # broker, as the reference loop does (with it on, a tenant's jobs beyond
                # its share are only recorded, and released as workers take jobs)
                env={
                    **stack.env,
                    "CANARY_EXPERIMENT_FILE": str(experiment),
                    "CANARY_FAIR_SHARE_QUEUED": "0",
                },
                cwd=PROJECT_ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            submit_s = time.perf_counter() - started
            if result.returncode != 0:
                raise RuntimeError(f"canary submit failed: {result.stderr[-2000:]}")
            with Session(stack.engine) as session:
                job_rows = session.exec(select(func.count()).select_from(Job)).one()
                assignment_rows = session.exec(select(func.count()).select_from(Assignment)).one()
            messages = queued(stack)
            expected = (args.lines, min(args.users, args.lines), args.lines)
            if (job_rows, assignment_rows, messages) != expected:
                raise RuntimeError(
                    f"jobs/assignments/messages {job_rows}/{assignment_rows}/{messages}, "
                    f"expected {expected}"
                )
            clear_queues(stack)
            reference_s = reference_loop(stack, args.lines)
            if queued(stack) != args.lines:
                raise RuntimeError("the reference loop did not queue every message")
            clear_queues(stack)
            # the same loop without task-sent events, which canary submit does not emit
            stack.app.conf.task_send_sent_event = False
            quiet_s = reference_loop(stack, args.lines)
            clear_queues(stack)
        finally:
            stack.close()
    submit_rate, reference_rate = args.lines / submit_s, args.lines / reference_s
    report.add(
        Figure(
            "bulk_submit_vs_apply_async",
            submit_rate / reference_rate,
            "ratio",
            f"canary submit {submit_rate:,.0f} jobs/s ({args.lines:,} lines, {args.users:,} "
            f"users, job + assignment rows + messages) vs apply_async loop "
            f"{reference_rate:,.0f} jobs/s",
            ">=",
            TARGET,
        )
    )
    report.add(Figure("bulk_submit_jobs_per_s", submit_rate, "jobs/s", "canary submit"))
    report.add(Figure("apply_async_jobs_per_s", reference_rate, "jobs/s", "reference loop"))
    report.add(
        Figure(
            "apply_async_no_sent_event_jobs_per_s",
            args.lines / quiet_s,
            "jobs/s",
            f"the reference loop without task-sent events; canary submit is "
            f"{submit_rate / (args.lines / quiet_s):.2f}x of it",
        )
    )
    report.extra = {"lines": args.lines, "users": args.users}
    return report


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=20_000, help="distinct user ids")
    parser.add_argument("--quick", action="store_true", help="a smoke run (not meaningful)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return bench_main("bulk submission", parser(), run, QUICK, argv)


if __name__ == "__main__":
    sys.exit(main())
