"""End-to-end efficiency: ``python -m benchmarks.end_to_end [--quick]``.

The same jobs (the tiny Stable Diffusion model, same prompts, seeds, size and steps) are
rendered two ways in one run, alternating ``--rounds`` times (5 rounds of 20 jobs: the
speed of a shared machine drifts over minutes, and short alternating rounds give both
paths the same drift):

- a bare in-process loop, what a user would hand-roll: call the pipeline with a seeded
  generator, save the PNG to a directory (run in a fresh interpreter that holds nothing
  else, after one warm-up call);
- the whole path: ``Gateway.submit_many`` (validation, job rows, messages on the version
  queue) -> Celery/Redis -> one ``canary worker`` -> object storage -> job row SUCCEEDED,
  timed from the submission to the last job's ``finished_at``.

Both use ``--torch-threads`` CPU threads for the model (1 by default: the other core is
left to the orchestration, as a GPU leaves the host CPU free). The figure is system jobs/s
divided by bare-loop jobs/s; target >= 0.95. On a GPU host pass ``--device cuda``: the
same run then also prints the render time and peak VRAM per job.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import (
    PROJECT_ROOT,
    BenchStack,
    Figure,
    Report,
    bench_main,
    broker_url,
    epoch,
    job_requests,
)
from storage.models import Job
from tasks.pipelines import Pipeline, load_pipeline_from
from tasks.tiny_model import make_tiny_model

VERSION = "bench-tiny"
TARGET = 0.95

# --quick: sizes for a CI smoke run (its figures mean nothing)
QUICK: dict[str, Any] = {"jobs": 4, "rounds": 1, "steps": 2}


def bare_loop(
    pipeline: Pipeline, requests: list[dict[str, Any]], out_dir: Path, device: str
) -> float:
    """Seconds to render and save every request in a plain loop."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for index, request in enumerate(requests):
        generator = torch.Generator(device=device).manual_seed(request["seed"])
        image = pipeline(
            prompt=request["prompt"],
            num_inference_steps=request["steps"],
            guidance_scale=request["guidance"],
            width=request["width"],
            height=request["height"],
            generator=generator,
        ).images[0]
        image.save(out_dir / f"{index}.png")
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def bare_loop_process(
    folder: Path, requests: list[dict[str, Any]], out_dir: Path, device: str, threads: int
) -> float:
    """:func:`bare_loop` in a fresh interpreter holding nothing but the pipeline (as a
    user's script would), after one warm-up call; returns its timed seconds."""
    job = out_dir.with_suffix(".json")
    job.write_text(json.dumps({"folder": str(folder), "requests": requests, "out": str(out_dir),
                               "device": device, "threads": threads}))  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.end_to_end", "--bare", str(job)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def _bare_main(job_file: Path) -> int:
    job = json.loads(job_file.read_text())
    torch.set_num_threads(job["threads"])
    model = load_pipeline_from(Path(job["folder"]), VERSION, job["device"])
    out = Path(job["out"])
    bare_loop(model.pipeline, job["requests"][:1], out / "warm", job["device"])
    print(bare_loop(model.pipeline, job["requests"], out, job["device"]))
    return 0


def system_run(
    stack: BenchStack, requests: list[dict[str, Any]], batch_id: str
) -> tuple[float, list[Job]]:
    """Seconds from submission to the last job's record, and the job rows."""
    started = time.time()
    stack.submit(requests, batch_id)
    rows = stack.wait(batch_id, len(requests))
    return max(epoch(r.finished_at) for r in rows) - started, rows


def run(args: argparse.Namespace) -> Report:
    report = Report("end_to_end", "End-to-end efficiency (tiny model)", quick=args.quick)
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp, broker_url() as broker:
        root = Path(tmp)
        stack = BenchStack(root, broker, [VERSION], torch_threads=args.torch_threads)
        try:
            folder = make_tiny_model(stack.model_dir / VERSION, seed=1)
            stack.start_worker(VERSION, device=args.device)
            size, steps = args.size, args.steps
            warm = job_requests(VERSION, 3, width=size, height=size, steps=steps, tag="warm")
            system_run(stack, warm, "warm")
            bare_s, system_s, rows, round_ratios = 0.0, 0.0, [], []
            for round_no in range(args.rounds):
                requests = job_requests(
                    VERSION, args.jobs, width=size, height=size, steps=steps, tag=f"r{round_no}-"
                )
                round_bare_s = bare_loop_process(
                    folder, requests, root / f"bare{round_no}", args.device, args.torch_threads
                )
                round_system_s, round_rows = system_run(stack, requests, f"round{round_no}")
                bare_s += round_bare_s
                system_s += round_system_s
                rows += round_rows
                round_ratios.append(round_bare_s / round_system_s)
        finally:
            stack.close()
    total = args.jobs * args.rounds
    bare_rate, system_rate = total / bare_s, total / system_s
    render_ms = statistics.median(r.inference_ms or 0.0 for r in rows)
    added_ms = (system_s - bare_s) / total * 1000
    report.add(
        Figure(
            "end_to_end_efficiency",
            system_rate / bare_rate,
            "ratio",
            f"system {system_rate:.2f} jobs/s vs bare loop {bare_rate:.2f} jobs/s; "
            f"{total} jobs of {size}x{size}, {steps} steps; render median {render_ms:.0f} ms; "
            f"added {added_ms:.1f} ms/job; per-round ratios {min(round_ratios):.3f}-"
            f"{max(round_ratios):.3f} over {args.rounds} rounds",
            ">=",
            TARGET,
        )
    )
    report.add(Figure("end_to_end_jobs_per_s", system_rate, "jobs/s", f"bare {bare_rate:.2f}"))
    report.extra = {
        "jobs": total,
        "size": size,
        "steps": steps,
        "bare_jobs_per_s": bare_rate,
        "system_jobs_per_s": system_rate,
        "render_ms_median": render_ms,
        "added_ms_per_job": added_ms,
        "round_ratios": round_ratios,
    }
    vram = [r.peak_vram_bytes for r in rows if r.peak_vram_bytes]
    if vram:
        report.add(Figure("peak_vram_mib", max(vram) / 2**20, "MiB", f"device {args.device}"))
    return report


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="jobs per round and path")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="a smoke run (not meaningful)")
    parser.add_argument("--bare", type=Path, help=argparse.SUPPRESS)  # the bare loop's process
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.bare:
        return _bare_main(args.bare)
    return bench_main("end-to-end efficiency", parser(), run, QUICK, argv)


if __name__ == "__main__":
    sys.exit(main())
