"""Worker memory over many jobs: ``python -m benchmarks.memory [--quick]``.

A real ``canary worker`` renders ``--jobs`` queued jobs (1,000 by default) with the tiny
model while the resident set size (RSS) of its pool process (the one holding the model)
and of its main process is sampled every 50 ms. Printed: RSS after the first tenth of the
jobs (warm: model loaded, first allocations done), the peak over the whole run, and the
growth = peak over the last tenth minus peak over the first tenth, against a bound of
``--bound-mib`` (16 MiB). On a GPU host the peak VRAM per job is printed too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.harness import (
    BenchStack,
    Figure,
    Report,
    bench_main,
    broker_url,
    job_requests,
)
from storage import jobs
from storage.models import TERMINAL_STATUSES
from tasks.tiny_model import make_tiny_model

VERSION = "bench-tiny"
MIB = 2**20


class Sampler(threading.Thread):
    """RSS of the worker processes with the number of jobs finished at that moment."""

    def __init__(self, stack: BenchStack, child: psutil.Process, parent: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.stack, self.child, self.parent = stack, child, parent
        self.samples: list[tuple[int, int, int]] = []  # (jobs done, child RSS, parent RSS)
        self.done = 0
        self.stop = threading.Event()

    def run(self) -> None:
        last_count = 0.0
        while not self.stop.wait(0.05):
            if time.monotonic() - last_count > 0.5:
                counts = jobs.count_batch_by_status(self.stack.engine, "memory")
                self.done = sum(counts.get(status, 0) for status in TERMINAL_STATUSES)
                last_count = time.monotonic()
            try:
                rss = (self.child.memory_info().rss, self.parent.memory_info().rss)
            except psutil.Error:
                return
            self.samples.append((self.done, *rss))


# --quick: sizes for a CI smoke run (its figures mean nothing)
QUICK: dict[str, Any] = {"jobs": 20}


def run(args: argparse.Namespace) -> Report:
    report = Report("memory", "Worker memory over many jobs (tiny model)", quick=args.quick)
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp, broker_url() as broker:
        stack = BenchStack(Path(tmp), broker, [VERSION])
        try:
            make_tiny_model(stack.model_dir / VERSION, seed=1)
            requests = job_requests(VERSION, args.jobs, width=args.size, height=args.size,
                                    steps=args.steps)  # fmt: skip
            stack.submit(requests, "memory")
            worker = stack.start_worker(VERSION)
            sampler = Sampler(stack, stack.pool_child(worker), psutil.Process(worker.pid))
            sampler.start()
            rows = stack.wait("memory", args.jobs)
            sampler.stop.set()
            sampler.join()
        finally:
            stack.close()
    tenth = max(1, args.jobs // 10)
    samples = sampler.samples
    first = [s for s in samples if s[0] <= tenth] or samples[:1]
    last = [s for s in samples if s[0] >= args.jobs - tenth] or samples[-1:]
    warm_mib = first[-1][1] / MIB
    peak_mib = max(s[1] for s in samples) / MIB
    growth_mib = (max(s[1] for s in last) - max(s[1] for s in first)) / MIB
    parent_growth = (max(s[2] for s in last) - max(s[2] for s in first)) / MIB
    report.add(
        Figure(
            "worker_rss_growth_mib",
            growth_mib,
            "MiB",
            f"pool process: {warm_mib:.0f} MiB after {tenth} jobs, peak {peak_mib:.0f} MiB over "
            f"{len(rows)} jobs; main process growth {parent_growth:.1f} MiB",
            "<=",
            args.bound_mib,
        )
    )
    report.add(Figure("worker_rss_peak_mib", peak_mib, "MiB", "pool process (model loaded)"))
    report.extra = {
        "jobs": len(rows),
        "warm_mib": warm_mib,
        "peak_mib": peak_mib,
        "parent_growth_mib": parent_growth,
        "samples": len(samples),
    }
    vram = [r.peak_vram_bytes for r in rows if r.peak_vram_bytes]
    if vram:
        report.add(Figure("peak_vram_mib", max(vram) / MIB, "MiB", "largest per-job peak"))
    return report


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--bound-mib", type=float, default=16.0, help="allowed growth")
    parser.add_argument("--quick", action="store_true", help="a smoke run (not meaningful)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return bench_main("worker memory", parser(), run, QUICK, argv)


if __name__ == "__main__":
    sys.exit(main())
