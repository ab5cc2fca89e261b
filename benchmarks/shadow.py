"""Shadow traffic: ``python -m benchmarks.shadow [--quick]``.

Issue 18's scenario: an experiment whose stage sends half of the users to the candidate
and copies ``--shadow`` (20%) of the baseline's live jobs to it, on one baseline and one
candidate ``canary worker`` (the tiny Stable Diffusion model; each render slowed by the
fault-injection marker ``[[fault:slow=S]]``, so the render time dominates the hand-over;
8 steps by default, so that a step is a small part of a render, as with a real model's
25-50: a background render steps aside for live work at its next step, tasks/step_aside.py).
The candidate worker serves its live jobs and, at background priority, the shadow copies.

**Live queue wait, shadow on and off, in one run.** One stack, the workers started once.
Each of ``--rounds`` rounds streams ``--live`` interactive API jobs twice, shadow paused
(``off``) and resumed (``on``) in alternating order, with the same Poisson arrival
schedule and the same users (so the same arms) both times. The arrival rate keeps each
worker ``--load`` busy with live work (from the warm-up's render time). Before each
stream every job, shadow copies included, has finished, so a stream never inherits the
previous one's backlog. Figures, from the job rows: live jobs' queue wait
(``started_at - enqueued_at``) P95 with shadow on over off (target <= 1.05), shadow jobs
completed per minute during the ``on`` streams, and the candidate worker's busy fraction
(its pipeline time over the stream's wall time) off and on: the idle time shadow uses.

**The backlog under a burst.** The workers are stopped (nothing drains: the worst case),
shadow is resumed, and ``--burst`` live bulk jobs of distinct users are submitted at once.
Figures: the candidate's queued shadow jobs over ``CANARY_SHADOW_MAX_QUEUED``
(``--max-queued``; target <= 1), the samples skipped because the backlog was full, and the
broker memory of the shadow queue (``MEMORY USAGE`` of its keys) beside the live queue's.

Writes ``benchmarks/results/shadow.json`` (``--quick``: ``shadow.quick.json``, its figures
mean nothing).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import yaml
from rich.console import Console
from rich.table import Table
from sqlalchemy import func
from sqlmodel import Session, col, select

from benchmarks.harness import (
    BenchStack,
    Figure,
    Report,
    broker_url,
    epoch,
    percentile,
    progress,
    standalone_main,
)
from canary.contracts import PriorityClass, queue_for
from gateway.shadow import SAMPLED, SKIPPED_FULL
from storage.models import TERMINAL_STATUSES, Job
from storage.shadow import queued_shadow_jobs
from tasks.tiny_model import make_tiny_model

BASELINE, CANDIDATE = "bench-shadow-v1", "bench-shadow-v2"
EXPERIMENT = "bench-shadow"
DEVELOPERS = "bench-api-developers"
MODES = ("off", "on")
TARGET_WAIT_RATIO = 1.05
TARGET_BACKLOG = 1.0
RESULTS = Path(__file__).resolve().parent / "results"

# --quick: sizes for a CI smoke run (its figures mean nothing)
QUICK: dict[str, Any] = {
    "rounds": 1, "live": 6, "burst": 200, "max_queued": 8, "steps": 2, "slow_s": 0.05,
}  # fmt: skip


@dataclass
class Stream:
    """What one live stream measured."""

    mode: str
    round: int
    window_s: float  # first arrival to the last live job's finish
    live: int
    waits_s: list[float] = field(default_factory=list)  # every live job's queue wait
    candidate_waits_s: list[float] = field(default_factory=list)  # the candidate arm's
    shadow_sampled: int = 0
    shadow_done_in_window: int = 0
    candidate_busy: float = 0.0
    baseline_busy: float = 0.0
    drain_s: float = 0.0  # after the window, until every shadow copy had finished


@dataclass
class Burst:
    jobs: int
    submit_s: float
    shadow_queued: int
    max_queued: int
    sampled: int
    skipped_full: int
    shadow_queue_bytes: int
    shadow_messages: int
    live_queue_bytes: int
    live_messages: int  # in the broker: fair share holds the rest of a bulk batch back
    live_queued: int


def experiment_file(path: Path, shadow: float) -> Path:
    stage = {"name": "50%", "shares": {"default": 0.5}, "shadow": shadow}
    experiment = {
        "name": EXPERIMENT, "seed": "bench-shadow", "baseline": BASELINE,
        "candidate": CANDIDATE, "stages": [stage], "stage": "50%",
    }  # fmt: skip
    path.write_text(yaml.safe_dump({"default_version": BASELINE, "experiments": [experiment]}))
    return path


def new_stack(root: Path, broker: str, args: argparse.Namespace) -> BenchStack:
    stack = BenchStack(root, broker, [BASELINE, CANDIDATE])
    path = experiment_file(root / "experiments.yaml", args.shadow)
    stack.settings = stack.settings.model_copy(
        update={
            "fault_injection": True,
            "experiment_file": path,
            "shadow_max_queued": args.max_queued,
        }
    )
    stack.env.update(
        CANARY_FAULT_INJECTION="true",
        CANARY_EXPERIMENT_FILE=str(path),
        CANARY_SHADOW_MAX_QUEUED=str(args.max_queued),
    )
    for seed, version in enumerate((BASELINE, CANDIDATE), start=1):
        make_tiny_model(stack.model_dir / version, seed=seed)
    return stack


def live_request(user: str, n: int, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    return {
        "user_id": user,
        "prompt": f"a harbour at dawn, {tag} {n} [[fault:slow={args.slow_s:g}]]",
        "seed": n,
        "steps": args.steps,
        "guidance": 7.5,
        "width": 64,
        "height": 64,
    }


def count(stack: BenchStack, *where: Any) -> int:
    with Session(stack.engine) as session:
        query = select(func.count()).select_from(Job).where(*where)
        return int(session.exec(query).one())


def wait_until_all_finished(stack: BenchStack, label: str, timeout: float = 1800) -> float:
    """Polls until no job is queued or running; returns the seconds it took."""
    began = time.monotonic()
    total = count(stack)
    with progress() as bar:
        task = bar.add_task(label, total=total)
        while (done := count(stack, col(Job.status).in_(list(TERMINAL_STATUSES)))) < total:
            bar.update(task, completed=done)
            if time.monotonic() - began > timeout:
                raise TimeoutError(f"{label}: {done} of {total} finished in {timeout:.0f} s")
            time.sleep(0.25)
    return time.monotonic() - began


def warm_up(stack: BenchStack, args: argparse.Namespace) -> float:
    """Two jobs per version, pinned, shadow paused; returns the median render time (s)."""
    requests = [
        {**live_request(f"warm-{v}-{i}", 900_000 + i, args, "warm"), "model_version": v}
        for v in (BASELINE, CANDIDATE)
        for i in range(2)
    ]
    stack.submit(requests, "warm")
    rows = stack.wait("warm", len(requests), timeout=600)
    return statistics.median((r.inference_ms or 0.0) / 1000 for r in rows)


def arrivals(count: int, rate_per_s: float, seed: int) -> list[float]:
    """Offsets (s) of a Poisson arrival process: the same for both modes of a round."""
    rng = random.Random(seed)
    at, offsets = 0.0, []
    for _ in range(count):
        offsets.append(at)
        at += rng.expovariate(rate_per_s)
    return offsets


def stream(
    stack: BenchStack, mode: str, round_: int, offsets: Sequence[float],
    args: argparse.Namespace,
) -> Stream:  # fmt: skip
    """Submit one live stream on its schedule, wait for its live jobs, then for the shadow
    copies it made; measure from the rows."""
    stack.gateway.shadower.controls.set_paused(EXPERIMENT, mode == "off")
    tag = f"{mode}-{round_}"
    ids: list[str] = []
    t0 = time.time()
    with progress() as bar:
        task = bar.add_task(f"round {round_ + 1}, shadow {mode}", total=len(offsets))
        for n, offset in enumerate(offsets):
            time.sleep(max(0.0, t0 + offset - time.time()))
            request = live_request(f"user-{round_}-{n}", n, args, tag)
            sent = stack.gateway.submit(request, source="api", api_key_id=DEVELOPERS)
            ids.append(sent.job_id)
            bar.update(task, completed=n + 1)
        finished = col(Job.status).in_(list(TERMINAL_STATUSES))
        while count(stack, col(Job.id).in_(ids), finished) < len(ids):
            time.sleep(0.25)
    drain_s = wait_until_all_finished(stack, f"round {round_ + 1}: shadow copies")
    return measure(stack, mode, round_, ids, t0, drain_s)


def measure(
    stack: BenchStack, mode: str, round_: int, ids: list[str], t0: float, drain_s: float
) -> Stream:
    with Session(stack.engine) as session:
        live = list(session.exec(select(Job).where(col(Job.id).in_(ids))))
        t_end = max(epoch(r.finished_at) for r in live)
        start, end = datetime.fromtimestamp(t0, UTC), datetime.fromtimestamp(t_end, UTC)
        copies = list(session.exec(select(Job).where(col(Job.shadow_of).in_(ids))))
        rendering = list(
            session.exec(
                select(Job).where(
                    col(Job.started_at).is_not(None),
                    col(Job.started_at) <= end,
                    col(Job.finished_at) >= start,
                )
            )
        )
    failed = [r for r in live if r.status != "SUCCEEDED"]
    if failed:
        raise RuntimeError(f"{len(failed)} live job(s) failed, e.g. {failed[0].failure_message}")
    window = t_end - t0
    busy = {BASELINE: 0.0, CANDIDATE: 0.0}
    for row in rendering:
        # the pipeline call, from the render's start (upload and record overlap the next)
        began = epoch(row.started_at)
        begin, stop = max(began, t0), min(began + (row.inference_ms or 0.0) / 1000, t_end)
        if stop > begin and row.model_version in busy:
            busy[row.model_version] += stop - begin
    waits = {r.id: epoch(r.started_at) - epoch(r.enqueued_at) for r in live}
    return Stream(
        mode=mode,
        round=round_,
        window_s=window,
        live=len(live),
        waits_s=sorted(waits.values()),
        candidate_waits_s=sorted(waits[r.id] for r in live if r.model_version == CANDIDATE),
        shadow_sampled=len(copies),
        shadow_done_in_window=sum(
            1 for r in copies if r.finished_at is not None and epoch(r.finished_at) <= t_end
        ),
        candidate_busy=busy[CANDIDATE] / window,
        baseline_busy=busy[BASELINE] / window,
        drain_s=drain_s,
    )


def burst(stack: BenchStack, args: argparse.Namespace) -> Burst:
    """``--burst`` live bulk jobs at once with no worker running: the backlog's bound."""
    stack.stop_workers()
    controls = stack.gateway.shadower.controls
    controls.set_paused(EXPERIMENT, False)
    before = controls.counts(EXPERIMENT)
    requests = [live_request(f"burst-user-{n}", n, args, "burst") for n in range(args.burst)]
    began = time.perf_counter()
    with progress() as bar:
        task = bar.add_task(f"burst of {args.burst:,} live jobs", total=args.burst)
        for at in range(0, args.burst, 500):
            chunk = [stack.gateway.prepare(r) for r in requests[at : at + 500]]
            stack.gateway.submit_many(chunk, source="bench", batch_id="burst",
                                      priority=PriorityClass.BULK)  # fmt: skip
            bar.update(task, completed=at + len(chunk))
    submit_s = time.perf_counter() - began
    after = controls.counts(EXPERIMENT)
    client = redis.Redis.from_url(stack.settings.broker_url)
    shadow_queue = queue_for(CANDIDATE, PriorityClass.BACKGROUND)
    live_queues = [queue_for(v, PriorityClass.BULK) for v in (BASELINE, CANDIDATE)]
    return Burst(
        jobs=args.burst,
        submit_s=submit_s,
        shadow_queued=queued_shadow_jobs(stack.engine, CANDIDATE),
        max_queued=args.max_queued,
        sampled=after[SAMPLED] - before[SAMPLED],
        skipped_full=after[SKIPPED_FULL] - before[SKIPPED_FULL],
        shadow_queue_bytes=queue_bytes(client, shadow_queue),
        shadow_messages=int(client.llen(shadow_queue)),
        live_queue_bytes=sum(queue_bytes(client, q) for q in live_queues),
        live_messages=sum(int(client.llen(q)) for q in live_queues),
        live_queued=count(stack, col(Job.batch_id) == "burst"),
    )


def queue_bytes(client: redis.Redis, queue: str) -> int:
    """Broker memory of a queue: its list and, with kombu's priority steps, its sub-lists."""
    keys = [queue.encode(), *client.scan_iter(match=f"{queue}\x06\x16*")]
    return sum(int(client.memory_usage(key) or 0) for key in keys)


def run(args: argparse.Namespace) -> Report:
    report = Report("shadow", "Shadow traffic (issue 18)", quick=args.quick)
    streams: list[Stream] = []
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp, broker_url() as broker:
        stack = new_stack(Path(tmp) / "stack", broker, args)
        try:
            stack.start_workers([BASELINE, CANDIDATE], CANARY_FAULT_INJECTION="true")
            stack.gateway.shadower.controls.set_paused(EXPERIMENT, True)
            render_s = warm_up(stack, args)
            rate = 2 * args.load / render_s  # two workers, each ``load`` busy with live work
            print(f"  warm-up render {render_s * 1000:.0f} ms; live arrivals "
                  f"{rate:.2f}/s (Poisson)", flush=True)  # fmt: skip
            for round_ in range(args.rounds):
                offsets = arrivals(args.live, rate, seed=round_)
                order = MODES if round_ % 2 == 0 else MODES[::-1]
                for mode in order:
                    streams.append(stream(stack, mode, round_, offsets, args))
                    print(f"  {summary(streams[-1])}", flush=True)
            bursted = burst(stack, args)
        finally:
            stack.gateway.shadower.controls.client.delete(f"canary:shadow:counts:{EXPERIMENT}")
            stack.gateway.shadower.controls.set_paused(EXPERIMENT, False)
            stack.close()
    add_figures(report, streams, bursted, render_s)
    report.extra = {
        "render_s": render_s,
        "arrival_rate_per_s": rate,
        "load": args.load,
        "shadow_share": args.shadow,
        "live_per_stream": args.live,
        "rounds": args.rounds,
        "steps": args.steps,
        "slow_s_per_step": args.slow_s,
        "streams": [asdict(s) for s in streams],
        "burst": asdict(bursted),
    }
    print_table(streams, bursted)
    return report


def summary(s: Stream) -> str:
    return (
        f"round {s.round + 1}, shadow {s.mode}: {s.live} live jobs in {s.window_s:.1f} s, "
        f"wait P50 {percentile(s.waits_s, 50):.2f} s P95 {percentile(s.waits_s, 95):.2f} s; "
        f"{s.shadow_sampled} copies ({s.shadow_done_in_window} done in the window, the rest "
        f"in {s.drain_s:.1f} s after); candidate busy {s.candidate_busy:.3f}"
    )


def pooled(streams: Sequence[Stream], mode: str, attribute: str) -> list[float]:
    return sorted(w for s in streams if s.mode == mode for w in getattr(s, attribute))


def add_figures(report: Report, streams: Sequence[Stream], bursted: Burst, render_s: float) -> None:
    off, on = pooled(streams, "off", "waits_s"), pooled(streams, "on", "waits_s")
    p95_off, p95_on = percentile(off, 95), percentile(on, 95)
    cand_off = pooled(streams, "off", "candidate_waits_s")
    cand_on = pooled(streams, "on", "candidate_waits_s")
    cand = (
        f"; the candidate's live jobs P95 {percentile(cand_on, 95):.2f} s vs "
        f"{percentile(cand_off, 95):.2f} s"
        if cand_off and cand_on
        else ""
    )
    report.add(
        Figure(
            "live_wait_p95_shadow_on_vs_off",
            p95_on / p95_off if p95_off > 0 else float("inf"),
            "ratio",
            f"P95 {p95_on:.2f} s on, {p95_off:.2f} s off (P50 {percentile(on, 50):.2f} vs "
            f"{percentile(off, 50):.2f} s) over {len(on)} live jobs each, render "
            f"{render_s * 1000:.0f} ms" + cand,
            "<=",
            TARGET_WAIT_RATIO,
        )
    )
    on_streams = [s for s in streams if s.mode == "on"]
    minutes = sum(s.window_s for s in on_streams) / 60
    done = sum(s.shadow_done_in_window for s in on_streams)
    busy_off = statistics.mean(s.candidate_busy for s in streams if s.mode == "off")
    busy_on = statistics.mean(s.candidate_busy for s in on_streams)
    report.add(
        Figure(
            "shadow_completed_per_min",
            done / minutes if minutes else 0.0,
            "jobs/min",
            f"{done} of {sum(s.shadow_sampled for s in on_streams)} copies finished within "
            f"{minutes:.1f} min of live streams; candidate worker busy {busy_off:.3f} off, "
            f"{busy_on:.3f} on",
        )
    )
    report.add(
        Figure(
            "shadow_backlog_vs_bound",
            bursted.shadow_queued / bursted.max_queued if bursted.max_queued else 0.0,
            "ratio",
            f"{bursted.shadow_queued:,} shadow jobs queued of at most {bursted.max_queued:,} "
            f"after {bursted.jobs:,} live jobs in {bursted.submit_s:.1f} s; "
            f"{bursted.sampled:,} sampled, {bursted.skipped_full:,} skipped as full",
            "<=",
            TARGET_BACKLOG,
        )
    )
    report.add(
        Figure(
            "shadow_queue_broker_kib",
            bursted.shadow_queue_bytes / 1024,
            "KiB",
            f"{bursted.shadow_messages:,} shadow messages; the live bulk queues hold "
            f"{bursted.live_queue_bytes / 1024:,.0f} KiB in {bursted.live_messages:,} messages "
            f"(fair share holds the rest of the {bursted.live_queued:,} jobs in the database)",
        )
    )


def print_table(streams: Sequence[Stream], bursted: Burst) -> None:
    table = Table(title="Shadow traffic: live queue wait, shadow off and on")
    headers = ("round", "shadow", "live", "window s", "wait P50", "wait P95", "copies",
               "in window", "cand. busy", "drain s")  # fmt: skip
    for name in headers:
        table.add_column(name, justify="right")
    for s in streams:
        table.add_row(
            str(s.round + 1), s.mode, str(s.live), f"{s.window_s:.1f}",
            f"{percentile(s.waits_s, 50):.2f}", f"{percentile(s.waits_s, 95):.2f}",
            str(s.shadow_sampled), str(s.shadow_done_in_window),
            f"{s.candidate_busy:.3f}", f"{s.drain_s:.1f}",
        )  # fmt: skip
    console = Console()
    console.print(table)
    console.print(
        f"burst: {bursted.jobs:,} live jobs, {bursted.shadow_queued:,} shadow jobs queued "
        f"(bound {bursted.max_queued:,}), {bursted.skipped_full:,} samples skipped; shadow "
        f"queue {bursted.shadow_queue_bytes / 1024:,.1f} KiB in the broker"
    )


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs of streams")
    parser.add_argument("--live", type=int, default=200, help="live jobs per stream")
    parser.add_argument("--load", type=float, default=0.5,
                        help="each worker's live busy fraction the arrivals aim at")  # fmt: skip
    parser.add_argument("--shadow", type=float, default=0.2,
                        help="share of the baseline's live jobs copied")  # fmt: skip
    parser.add_argument("--burst", type=int, default=10_000, help="live jobs in the burst")
    parser.add_argument("--max-queued", type=int, default=500,
                        help="CANARY_SHADOW_MAX_QUEUED (the product default: 500)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per job")
    parser.add_argument("--slow-s", type=float, default=0.05,
                        help="seconds each step sleeps ([[fault:slow=S]])")  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write results")
    parser.add_argument("--quick", action="store_true", help="a smoke run (not meaningful)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return standalone_main("shadow", "shadow traffic", parser(), run, QUICK, argv)


if __name__ == "__main__":
    sys.exit(main())
