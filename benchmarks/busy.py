"""Accelerator-busy fraction: ``python -m benchmarks.busy [--quick]``.

A real ``canary worker`` serves a benchmark stub whose pipeline sleeps a fixed time per
image (a sleeping call holds no GIL, like a GPU kernel) and returns a fixed 512x512 image,
so each job also has a realistic PNG to encode (~0.8 MB) and store. The jobs are queued
before the worker starts. The figure is the share of the worker's wall time spent inside
the pipeline call: the sum of the jobs' render times over the time from the first render's
start to the last record; the hand-over is the gap between one render's end and the next
one's start.

Each render time (50 ms, a turbo/LCM model's 1-4 steps on a data-centre GPU; 200 ms;
1,000 ms) runs twice, side by side in one run: with the job waiting in the pool process's
pipe claimed ahead by the worker's main process (``CANARY_CLAIM_AHEAD``, the default,
tasks/claim_ahead.py), and with each render claiming its own job first (the anchor: the
hand-over as it was). Targets at the shortest render time: busy >= 0.99 and hand-over
median <= 0.5 ms.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
from dataclasses import dataclass
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
)
from storage.models import Job
from tasks.stub_pipelines import make_stub_model

TARGET_BUSY = 0.99
TARGET_HANDOVER_MS = 0.5
MODES = {"claim_ahead": "true", "claim_in_task": "false"}  # CANARY_CLAIM_AHEAD

# --quick: sizes for a CI smoke run (its figures mean nothing)
QUICK: dict[str, Any] = {"jobs": 10, "render_s": [0.05]}


@dataclass
class Run:
    render_ms: float
    mode: str
    jobs: int
    busy: float
    wall_s: float
    render_s: float
    handover_ms: float
    upload_ms: float

    def summary(self) -> str:
        return (
            f"{self.render_s:.2f} s rendering in {self.wall_s:.2f} s wall over {self.jobs} jobs "
            f"of {self.render_ms:.0f} ms, {self.mode.replace('_', ' ')}; hand-over median "
            f"{self.handover_ms:.2f} ms/job; upload+record median {self.upload_ms:.1f} ms/job "
            "(overlapped)"
        )


def measure(rows: list[Job], render_ms: float, mode: str) -> Run:
    rows.sort(key=lambda r: epoch(r.started_at))
    wall_s = max(epoch(r.finished_at) for r in rows) - epoch(rows[0].started_at)
    render_s = sum(r.inference_ms or 0.0 for r in rows) / 1000
    starts = [epoch(r.started_at) for r in rows]
    gaps_ms = [
        (b - a) * 1000 - (r.inference_ms or 0.0)
        for (a, b), r in zip(itertools.pairwise(starts), rows, strict=False)
    ]
    return Run(
        render_ms=render_ms,
        mode=mode,
        jobs=len(rows),
        busy=render_s / wall_s,
        wall_s=wall_s,
        render_s=render_s,
        handover_ms=statistics.median(gaps_ms),
        upload_ms=statistics.median(r.upload_ms or 0.0 for r in rows),
    )


def jobs_for(render_s: float, args: argparse.Namespace) -> int:
    """``--jobs`` at the shortest render time; fewer for longer ones (about as much wall)."""
    shortest: float = min(args.render_s)
    least = 1 if args.quick else int(args.min_jobs)
    return max(least, round(int(args.jobs) * shortest / render_s))


def run(args: argparse.Namespace) -> Report:
    report = Report("busy", "Accelerator-busy fraction (fixed-time pipeline)", quick=args.quick)
    render_times = sorted(args.render_s)
    versions = {r: f"bench-sleep-{round(r * 1000)}ms" for r in render_times}
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp, broker_url() as broker:
        stack = BenchStack(Path(tmp), broker, list(versions.values()))
        try:
            for render_s, version in versions.items():
                make_stub_model(stack.model_dir / version, "sleep", seconds_per_image=render_s)
                count = jobs_for(render_s, args)
                for mode, claim_ahead in MODES.items():  # side by side, same stack
                    batch = f"busy-{version}-{mode}"
                    requests = job_requests(version, count, width=args.size, height=args.size,
                                            steps=25)  # fmt: skip
                    stack.submit(requests, batch_id=batch)
                    worker = stack.start_worker(version, CANARY_CLAIM_AHEAD=claim_ahead)
                    rows = stack.wait(batch, count)
                    stack.stop_worker(worker)
                    runs.append(measure(rows, render_s * 1000, mode))
                    print(f"  {runs[-1].summary()}", flush=True)
        finally:
            stack.close()
    add_figures(report, runs)
    report.extra = {"runs": [vars(r) for r in runs]}
    return report


def add_figures(report: Report, runs: list[Run]) -> None:
    """The headline at the shortest render time; the others' busy fractions for context."""
    by = {(r.render_ms, r.mode): r for r in runs}
    shortest = min(r.render_ms for r in runs)
    ahead, anchor = by[(shortest, "claim_ahead")], by[(shortest, "claim_in_task")]
    report.add(Figure("busy_fraction", ahead.busy, "ratio", ahead.summary(), ">=", TARGET_BUSY))
    report.add(
        Figure(
            "handover_median_ms",
            ahead.handover_ms,
            "ms",
            f"claim in the task: {anchor.handover_ms:.2f} ms",
            "<=",
            TARGET_HANDOVER_MS,
        )
    )
    report.add(Figure("busy_fraction_claim_in_task", anchor.busy, "ratio", anchor.summary()))
    for render_ms in sorted({r.render_ms for r in runs} - {shortest}):
        for mode in MODES:
            run_ = by[(render_ms, mode)]
            suffix = "" if mode == "claim_ahead" else "_claim_in_task"
            key = f"busy_fraction_{render_ms:.0f}ms{suffix}"
            report.add(Figure(key, run_.busy, "ratio", run_.summary()))


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs at the shortest render")
    parser.add_argument("--min-jobs", type=int, default=30, help="jobs at the longest render")
    parser.add_argument("--render-s", type=float, nargs="+", default=[0.05, 0.2, 1.0],
                        help="stub render times per image")  # fmt: skip
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--quick", action="store_true", help="a smoke run (not meaningful)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return bench_main("accelerator-busy fraction", parser(), run, QUICK, argv)


if __name__ == "__main__":
    sys.exit(main())
