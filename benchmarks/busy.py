"""Accelerator-busy fraction: ``python -m benchmarks.busy [--quick]``.

A real ``canary worker`` serves a benchmark stub whose pipeline sleeps a fixed time per
image (200 ms by default; a sleeping call holds no GIL, like a GPU kernel) and returns a
fixed 512x512 image, so each job also has a realistic PNG to encode (~0.8 MB) and store.
The jobs are queued before the worker starts. The figure is the share of the worker's
wall time spent inside the pipeline call: the sum of the jobs' render times over the time
from the first claim to the last record. Target >= 0.98: uploading and recording overlap
the next render (tasks/recorder.py), so only the hand-over between jobs is lost.
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
)
from tasks.stub_pipelines import make_stub_model

VERSION = "bench-sleep"
TARGET = 0.98

# --quick: sizes for a CI smoke run (its figures mean nothing)
QUICK: dict[str, Any] = {"jobs": 10, "render_s": 0.05}


def run(args: argparse.Namespace) -> Report:
    report = Report("busy", "Accelerator-busy fraction (fixed-time pipeline)", quick=args.quick)
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp, broker_url() as broker:
        stack = BenchStack(Path(tmp), broker, [VERSION])
        try:
            make_stub_model(stack.model_dir / VERSION, "sleep", seconds_per_image=args.render_s)
            stack.submit(
                job_requests(VERSION, args.jobs, width=args.size, height=args.size, steps=25),
                batch_id="busy",
            )
            stack.start_worker(VERSION)
            rows = stack.wait("busy", args.jobs)
        finally:
            stack.close()
    rows.sort(key=lambda r: epoch(r.started_at))
    wall_s = max(epoch(r.finished_at) for r in rows) - epoch(rows[0].started_at)
    render_s = sum(r.inference_ms or 0.0 for r in rows) / 1000
    starts = [epoch(r.started_at) for r in rows]
    gaps_ms = [
        (b - a) * 1000 - (r.inference_ms or 0.0)
        for (a, b), r in zip(itertools.pairwise(starts), rows, strict=False)
    ]
    upload_ms = statistics.median(r.upload_ms or 0.0 for r in rows)
    report.add(
        Figure(
            "busy_fraction",
            render_s / wall_s,
            "ratio",
            f"{render_s:.2f} s rendering in {wall_s:.2f} s wall over {len(rows)} jobs of "
            f"{args.render_s * 1000:.0f} ms; hand-over median {statistics.median(gaps_ms):.2f} "
            f"ms/job; upload+record median {upload_ms:.1f} ms/job (overlapped)",
            ">=",
            TARGET,
        )
    )
    report.extra = {
        "jobs": len(rows),
        "render_s": render_s,
        "wall_s": wall_s,
        "handover_ms_median": statistics.median(gaps_ms),
        "upload_ms_median": upload_ms,
    }
    return report


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--render-s", type=float, default=0.2, help="stub render time/image")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--quick", action="store_true", help="a smoke run (not meaningful)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return bench_main("accelerator-busy fraction", parser(), run, QUICK, argv)


if __name__ == "__main__":
    sys.exit(main())
