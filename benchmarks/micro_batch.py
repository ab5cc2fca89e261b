"""Micro-batching: ``python -m benchmarks.micro_batch [--quick]``.

For each N in ``--sizes`` (1, 2, 4, 8) a real ``canary worker`` with
``CANARY_MICRO_BATCH=N`` drains the same queued jobs (tiny model, same prompts, seeds, size
and steps): images/s from the first claim to the last record. For reference the pipeline
alone is timed in-process for each N (one call for N images). Each job keeps its own seeded
generator, so its image must not depend on its batch mates: the largest pixel difference
between a job rendered in a batch and the same job rendered alone (N=1) is printed too
(PNG levels, 0-255; tests/integration/test_micro_batch.py holds it to the stated bound).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from benchmarks.harness import (
    BenchStack,
    Figure,
    Report,
    bench_main,
    broker_url,
    epoch,
    job_requests,
)
from canary.contracts import RenderSpec
from storage.objects import open_store
from tasks.faults import NO_FAULTS
from tasks.pipelines import LoadedModel, load_pipeline_from
from tasks.render import render_batch
from tasks.tiny_model import make_tiny_model

VERSION = "bench-tiny"
# The largest difference (0-255 PNG levels) a batch may make to a job's image.
TOLERANCE_LEVELS = 2

# --quick: sizes for a CI smoke run (its figures mean nothing)
QUICK: dict[str, Any] = {"jobs": 4, "sizes": [1, 2], "steps": 2}


def pipeline_rate(model: LoadedModel, size: int, steps: int, n: int, calls: int) -> float:
    """Images/s of ``render_batch`` with ``n`` jobs per call, in this process."""
    specs = cast(
        "list[RenderSpec]",  # job_requests gives every other field of a spec
        [
            {**request, "job_id": str(i), "negative_prompt": ""}
            for i, request in enumerate(
                job_requests(VERSION, n, width=size, height=size, steps=steps)
            )
        ],
    )
    render_batch(model, specs, [NO_FAULTS] * n)
    started = time.perf_counter()
    for _ in range(calls):
        render_batch(model, specs, [NO_FAULTS] * n)
    return n * calls / (time.perf_counter() - started)


def run(args: argparse.Namespace) -> Report:
    report = Report("micro_batch", "Micro-batching (tiny model, CPU)", quick=args.quick)
    torch.set_num_threads(args.torch_threads)
    rates: dict[int, float] = {}
    alone_rates: dict[int, float] = {}
    images: dict[int, dict[int, np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp, broker_url() as broker:
        stack = BenchStack(Path(tmp), broker, [VERSION], torch_threads=args.torch_threads)
        folder = stack.model_dir / VERSION
        make_tiny_model(folder, seed=1)
        store = open_store(stack.settings.resolved_storage_url)
        try:
            model = load_pipeline_from(folder, VERSION, args.device)
            for n in args.sizes:
                calls = max(1, args.jobs // n // 2)
                alone_rates[n] = pipeline_rate(model, args.size, args.steps, n, calls)
                batch_id = f"batch{n}"
                requests = job_requests(
                    VERSION, args.jobs, width=args.size, height=args.size, steps=args.steps
                )
                ids = stack.submit(
                    [{**r, "idempotency_key": f"{batch_id}-{i}"} for i, r in enumerate(requests)],
                    batch_id,
                )
                worker = stack.start_worker(VERSION, device=args.device, CANARY_MICRO_BATCH=str(n))
                rows = stack.wait(batch_id, args.jobs)
                stack.stop_worker(worker)
                span = max(epoch(r.finished_at) for r in rows) - min(
                    epoch(r.started_at) for r in rows
                )
                rates[n] = len(rows) / span
                by_id = {r.id: r for r in rows}
                images[n] = {
                    i: np.asarray(Image.open(io.BytesIO(store.get(by_id[job_id].image_key or ""))))
                    for i, job_id in enumerate(ids)
                }
        finally:
            stack.close()
    base = args.sizes[0]
    worst = 0
    for n in args.sizes[1:]:
        for i, image in images[n].items():
            worst = max(worst, int(np.abs(image.astype(int) - images[base][i].astype(int)).max()))
    for n in args.sizes:
        report.add(
            Figure(
                f"micro_batch_{n}_images_per_s",
                rates[n],
                "images/s",
                f"worker; {rates[n] / rates[base]:.2f}x of N={base}; pipeline alone "
                f"{alone_rates[n]:.2f} images/s ({alone_rates[n] / alone_rates[base]:.2f}x)",
            )
        )
    report.add(
        Figure(
            "micro_batch_max_pixel_diff",
            worst,
            "levels",
            f"largest difference batched vs alone, {args.jobs} jobs x {len(args.sizes) - 1} sizes",
            "<=",
            TOLERANCE_LEVELS,
        )
    )
    report.extra = {"worker": rates, "pipeline": alone_rates, "size": args.size}
    return report


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=64, help="jobs per batch size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="a smoke run (not meaningful)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return bench_main("micro-batching", parser(), run, QUICK, argv)


if __name__ == "__main__":
    sys.exit(main())
