"""Per-job overhead of a worker: ``python -m benchmarks.overhead [--quick]``.

A real ``canary worker`` serves a benchmark stub version whose pipeline returns a fixed
64x64 image at once (:mod:`tasks.stub_pipelines`), so everything a job costs on the worker
is orchestration: taking the message, claiming the row, handing the image to the
recorder, acknowledging, and (overlapped) checking, encoding, uploading and recording it.

The jobs are queued before the worker starts, so the worker is never starved. The added
time per job is the interval between consecutive claims on the worker (its cycle; the
render itself takes microseconds); the first ``--warmup`` jobs are left out. Target:
median <= 10 ms. Also printed: jobs/s of the worker process and the recorder's time per
job (PNG encode + local write + fsync + UPDATE, off the critical path).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    BenchStack,
    Figure,
    Report,
    bench_main,
    broker_url,
    epoch,
    job_requests,
    percentile,
)
from tasks.stub_pipelines import make_stub_model

VERSION = "bench-zero"
TARGET_MEDIAN_MS = 10.0

# --quick: sizes for a CI smoke run (its figures mean nothing)
QUICK: dict[str, Any] = {"jobs": 40, "warmup": 5}


def run(args: argparse.Namespace) -> Report:
    report = Report("overhead", "Per-job overhead (zero-cost pipeline)", quick=args.quick)
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp, broker_url() as broker:
        stack = BenchStack(Path(tmp), broker, [VERSION])
        try:
            make_stub_model(stack.model_dir / VERSION, "fixed_image")
            total = args.jobs + args.warmup
            stack.submit(
                job_requests(VERSION, total, width=64, height=64, steps=1), batch_id="overhead"
            )
            stack.start_worker(VERSION)
            rows = stack.wait("overhead", total)
        finally:
            stack.close()
    rows.sort(key=lambda r: epoch(r.started_at))
    measured = rows[args.warmup :]
    starts = [epoch(r.started_at) for r in measured]
    cycles_ms = [(b - a) * 1000 for a, b in itertools.pairwise(starts)]
    span_s = epoch(measured[-1].finished_at) - starts[0]
    rate = len(measured) / span_s
    median = statistics.median(cycles_ms)
    p99 = percentile(cycles_ms, 99)
    record_ms = statistics.median(r.upload_ms or 0.0 for r in measured)
    report.add(
        Figure(
            "overhead_median_ms",
            median,
            "ms/job",
            f"P99 {p99:.2f} ms, over {len(cycles_ms)} jobs after {args.warmup} warm-up",
            "<=",
            TARGET_MEDIAN_MS,
        )
    )
    report.add(Figure("overhead_p99_ms", p99, "ms/job"))
    report.add(
        Figure(
            "worker_jobs_per_s",
            rate,
            "jobs/s",
            f"one worker process; background upload median {record_ms:.2f} ms/job",
        )
    )
    report.extra = {"jobs": len(measured), "upload_ms_median": record_ms}
    return report


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="measured jobs")
    parser.add_argument("--warmup", type=int, default=50, help="jobs left out at the start")
    parser.add_argument("--quick", action="store_true", help="a smoke run (not meaningful)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return bench_main("per-job overhead", parser(), run, QUICK, argv)


if __name__ == "__main__":
    sys.exit(main())
