"""Fair scheduling: ``python -m benchmarks.fair_scheduling [--quick]``.

Issue 19's scenario on one version served by two real ``canary worker`` processes (the
tiny Stable Diffusion model, each render slowed by the fault-injection marker
``[[fault:slow=S]]``: every denoising step sleeps S seconds, so the render time dominates
the hand-over; the model's own CPU time remains, and varies with the machine's load).
Tenant A submits a
``--a-jobs`` bulk backlog; once the workers are rendering it, tenant B submits ``--b-jobs``
bulk jobs and ``--interactive`` single jobs arrive as a stream, evenly spaced about one
render time apart (API developers each waiting for one image; the spacing is the median
started -> finished time of the warm-up jobs of the first configuration, and the same
schedule is used in every configuration). Three configurations, each on a fresh database
and purged queues, side by side in one run:

- ``alone``: B's jobs and the interactive stream without A's backlog (classes and fair
  share on): the time B's jobs take alone;
- ``classes``: the product default: three priority classes (interactive jobs on the
  interactive queue) and fair share among bulk tenants (``CANARY_FAIR_SHARE_QUEUED``,
  64 unless ``--fair-share``);
- ``single``: the no-priority baseline: fair share off and every job, the interactive
  ones included, submitted as bulk into the one bulk queue.

A configuration's window runs from B's submission to the last finish among B's and the
interactive jobs. In ``single`` they wait behind the whole backlog (hours at 10,000 jobs),
so its window is capped at the length of the ``classes`` window (``--single-cap-s``
overrides): what it has of B's and the interactive jobs by then is reported with an
estimate of when the rest would run. Figures, from the job rows: interactive queue wait
(``started_at - enqueued_at``) P50/P95 and P95 over the run's median render time (target
<= 1.5); B's completion (last B finish - B's submission) over B alone (target <= 2.5);
the workers' busy fraction over the window (time between a job's ``started_at`` and
``started_at + inference_ms``: the pipeline call, per ``worker_host``, over two workers'
wall time; ``finished_at`` is not used since a job's upload and record overlap the
worker's next render on its recorder thread; ``classes`` within 0.01 of ``single``) and
throughput (jobs finished per second in the window; ``classes`` over ``single`` >= 0.97).
Writes ``benchmarks/results/fair_scheduling.json`` (``--quick``:
``fair_scheduling.quick.json``, its figures mean nothing).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, or_
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
from canary.contracts import PriorityClass
from storage.models import TERMINAL_STATUSES, Job
from tasks.tiny_model import make_tiny_model

VERSION = "bench-fair"
WORKERS = 2
TENANT_A, TENANT_B, DEVELOPERS = "bench-tenant-a", "bench-tenant-b", "bench-api-developers"
CONFIGS = ("alone", "classes", "single")  # run in this order; see the module docstring
LABELS = {
    "alone": "B alone",
    "classes": "classes + fair share",
    "single": "single queue",
}
TARGET_WAIT_RATIO = 1.5
TARGET_B_RATIO = 2.5
TARGET_BUSY_DELTA = 0.01
TARGET_THROUGHPUT = 0.97
RESULTS = Path(__file__).resolve().parent / "results"

# --quick: sizes for a CI smoke run (its figures mean nothing)
QUICK: dict[str, Any] = {
    "a_jobs": 120,
    "b_jobs": 6,
    "interactive": 3,
    "slow_s": 0.05,
    "fair_share": 4,
}


@dataclass
class Outcome:
    """What one configuration measured."""

    config: str
    window_s: float
    complete: bool  # B's and the interactive jobs all finished within the window
    render_ms: float  # median pipeline time of the jobs finished in the window
    job_ms: float  # median started_at -> finished_at of the same jobs
    busy: float
    throughput: float  # jobs finished per second in the window
    finished: int
    b_done: int
    b_completion_s: float | None
    waits_s: list[float] = field(default_factory=list)  # of the started interactive jobs
    interactive_started: int = 0
    backlog_ahead: int = 0  # single: A's jobs still ahead of B's first job at the window's end
    submit_a_s: float = 0.0
    per_worker_busy: dict[str, float] = field(default_factory=dict)

    def wait(self, q: float) -> float | None:
        return percentile(self.waits_s, q) if self.waits_s else None

    def wait_ratio(self) -> float | None:
        p95 = self.wait(95)
        return None if p95 is None or not self.interactive_complete else p95 / self.render_s

    @property
    def render_s(self) -> float:
        return self.render_ms / 1000

    @property
    def interactive_complete(self) -> bool:
        return bool(self.waits_s) and self.complete

    def summary(self) -> str:
        p50, p95 = self.wait(50), self.wait(95)
        waits = (
            f"interactive wait P50 {p50:.2f} s P95 {p95:.2f} s"
            if p50 is not None and p95 is not None
            else "no interactive job started"
        )
        b = (
            f"B done in {self.b_completion_s:.1f} s"
            if self.b_completion_s is not None
            else f"B {self.b_done} done, {self.backlog_ahead:,} of A's jobs still ahead"
        )
        return (
            f"{LABELS[self.config]}: window {self.window_s:.1f} s"
            f"{'' if self.complete else ' (capped)'}; {waits} "
            f"({self.interactive_started} started); {b}; render median {self.render_ms:.0f} ms "
            f"(job {self.job_ms:.0f} ms); busy {self.busy:.4f}; {self.throughput:.3f} jobs/s"
        )


def requests(tag: str, count: int, args: argparse.Namespace, seed0: int) -> list[dict[str, Any]]:
    marker = f"[[fault:slow={args.slow_s:g}]]"
    return [
        {
            "prompt": f"a lighthouse at dusk, {tag} {i} {marker}",
            "model_version": VERSION,
            "seed": seed0 + i,
            "steps": args.steps,
            "guidance": 7.5,
            "width": 64,
            "height": 64,
        }
        for i in range(count)
    ]


def new_stack(root: Path, broker: str, fair_share: int, model: Path) -> BenchStack:
    stack = BenchStack(root, broker, [VERSION])
    stack.settings = stack.settings.model_copy(
        update={"fair_share_queued": fair_share, "fault_injection": True}
    )
    shutil.copytree(model, stack.model_dir / VERSION)
    return stack


def submit_bulk(
    stack: BenchStack, reqs: Sequence[dict[str, Any]], tenant: str, batch: str
) -> list[str]:
    prepared = [stack.gateway.prepare(r) for r in reqs]
    submitted = stack.gateway.submit_many(
        prepared, source="bench", batch_id=batch, api_key_id=tenant, priority=PriorityClass.BULK
    )
    return [s.job_id for s in submitted]


def wait_for(stack: BenchStack, condition: str, where: Any, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with progress() as bar:
        task = bar.add_task(condition, total=total)
        while (done := count_terminal(stack, where)) < total:
            bar.update(task, completed=done)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{condition}: {done} of {total} within {timeout:.0f} s")
            time.sleep(0.25)


def count_terminal(stack: BenchStack, where: Any) -> int:
    with Session(stack.engine) as session:
        return int(
            session.exec(
                select(func.count())
                .select_from(Job)
                .where(where, col(Job.status).in_(list(TERMINAL_STATUSES)))
            ).one()
        )


def warm_up(stack: BenchStack, args: argparse.Namespace) -> float:
    """Two jobs per worker, so both pool processes have rendered once; returns the median
    job time (started -> finished) in seconds."""
    ids = submit_bulk(stack, requests("warm", 2 * WORKERS, args, 900_000), DEVELOPERS, "warm")
    wait_for(stack, "warm-up", col(Job.batch_id) == "warm", len(ids), 300)
    rows = stack.rows("warm")
    return statistics.median(epoch(r.finished_at) - epoch(r.started_at) for r in rows)


def run_config(
    config: str, args: argparse.Namespace, root: Path, broker: str, model: Path,
    interval_s: float | None, cap_s: float | None,
) -> tuple[Outcome, float]:  # fmt: skip
    """One configuration on a fresh stack; returns its outcome and the arrival interval."""
    fair_share = 0 if config == "single" else args.fair_share
    stack = new_stack(root / config, broker, fair_share, model)
    try:
        env = {"CANARY_FAIR_SHARE_QUEUED": str(fair_share), "CANARY_FAULT_INJECTION": "true"}
        stack.start_workers([VERSION] * WORKERS, **env)
        warm_s = warm_up(stack, args)
        interval_s = interval_s or warm_s
        submit_a_s = 0.0
        if config != "alone":
            began = time.perf_counter()
            submit_bulk(stack, requests("A", args.a_jobs, args, 0), TENANT_A, "fair-a")
            submit_a_s = time.perf_counter() - began
            # the workers are rendering A's backlog before B arrives
            wait_for(stack, "A under way", col(Job.api_key_id) == TENANT_A, 2 * WORKERS, 300)
        backlog = f"; A's {args.a_jobs:,} jobs submitted in {submit_a_s:.1f} s"
        print(f"  {LABELS[config]}: warm-up job {warm_s * 1000:.0f} ms"
              + backlog * (config != "alone"), flush=True)  # fmt: skip
        t0, complete = stream(stack, config, args, interval_s, cap_s)
        t_end = time.time()
        stack.stop_workers()  # warm shutdown: the jobs rendering at t_end finish (clipped)
        outcome = measure(stack, config, t0, t_end, complete, submit_a_s)
    finally:
        stack.close()
    print(f"  {outcome.summary()}", flush=True)
    return outcome, interval_s


def stream(
    stack: BenchStack, config: str, args: argparse.Namespace, interval_s: float,
    cap_s: float | None,
) -> tuple[float, bool]:  # fmt: skip
    """B's submission, then the interactive stream; polls until B's and the interactive
    jobs have finished (or ``cap_s`` has passed). Returns B's submission time and whether
    they all finished."""
    priority = PriorityClass.BULK if config == "single" else PriorityClass.INTERACTIVE
    singles = requests("interactive", args.interactive, args, 500_000)
    total = args.b_jobs + args.interactive
    watched = or_(col(Job.api_key_id) == TENANT_B, col(Job.batch_id).is_(None))
    t0 = time.time()
    submit_bulk(stack, requests("B", args.b_jobs, args, 100_000), TENANT_B, "fair-b")
    next_poll = 0.0
    with progress() as bar:
        task = bar.add_task(f"{LABELS[config]}: B + interactive", total=total)
        sent = 0
        while True:
            now = time.time()
            while sent < len(singles) and now >= t0 + sent * interval_s:
                stack.gateway.submit(singles[sent], source="api", api_key_id=DEVELOPERS,
                                     priority=priority)  # fmt: skip
                sent += 1
            if now >= next_poll:
                done = count_terminal(stack, watched)
                bar.update(task, completed=done)
                if done >= total:
                    return t0, True
                if cap_s is not None and now - t0 >= cap_s and sent == len(singles):
                    return t0, False
                next_poll = now + 0.25
            due = t0 + sent * interval_s if sent < len(singles) else next_poll
            time.sleep(max(0.0, min(due, next_poll) - time.time()))


def measure(
    stack: BenchStack, config: str, t0: float, t_end: float, complete: bool, submit_a_s: float
) -> Outcome:
    start, end = datetime.fromtimestamp(t0, UTC), datetime.fromtimestamp(t_end, UTC)
    with Session(stack.engine) as session:
        rows = list(
            session.exec(
                select(Job).where(
                    col(Job.started_at).is_not(None),
                    or_(col(Job.finished_at).is_(None), col(Job.finished_at) >= start),
                    col(Job.started_at) <= end,
                )
            )
        )
        ahead = 0
        if not complete and config == "single":
            ahead = int(
                session.exec(
                    select(func.count())
                    .select_from(Job)
                    .where(col(Job.api_key_id) == TENANT_A, col(Job.started_at).is_(None))
                ).one()
            )
    b = [r for r in rows if r.api_key_id == TENANT_B and r.finished_at is not None]
    b_done = [r for r in b if epoch(r.finished_at) <= t_end]
    singles = [r for r in rows if r.api_key_id == DEVELOPERS and r.batch_id is None]
    started = [r for r in singles if epoch(r.started_at) <= t_end]
    if complete:  # the window ends at the last finish among B's and the interactive jobs
        t_end = max(epoch(r.finished_at) for r in [*b, *singles])
    window = t_end - t0
    busy_by_worker: dict[str, float] = defaultdict(float)
    finished = []
    for row in rows:
        if row.finished_at is None:
            continue
        # the pipeline call, from the render's start: a job's finished_at comes after its
        # upload and record, which overlap the worker's next render (the recorder thread)
        began = epoch(row.started_at)
        begin, stop = max(began, t0), min(began + (row.inference_ms or 0.0) / 1000, t_end)
        if stop > begin:
            busy_by_worker[row.worker_host or "?"] += stop - begin
        if t0 <= epoch(row.finished_at) <= t_end:
            finished.append(row)
    return Outcome(
        config=config,
        window_s=window,
        complete=complete,
        render_ms=statistics.median(r.inference_ms or 0.0 for r in finished),
        job_ms=statistics.median(
            (epoch(r.finished_at) - epoch(r.started_at)) * 1000 for r in finished
        ),
        busy=sum(busy_by_worker.values()) / (WORKERS * window),
        throughput=len(finished) / window,
        finished=len(finished),
        b_done=len(b_done),
        b_completion_s=max(epoch(r.finished_at) for r in b) - t0 if complete else None,
        waits_s=sorted(epoch(r.started_at) - epoch(r.enqueued_at) for r in started),
        interactive_started=len(started),
        backlog_ahead=ahead,
        submit_a_s=submit_a_s,
        per_worker_busy={w: s / window for w, s in sorted(busy_by_worker.items())},
    )


def run(args: argparse.Namespace) -> Report:
    report = Report("fair_scheduling", "Fair scheduling (issue 19)", quick=args.quick)
    outcomes: dict[str, Outcome] = {}
    interval_s: float | None = None
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp, broker_url() as broker:
        root = Path(tmp)
        model = make_tiny_model(root / "model", seed=1)
        for config in CONFIGS:
            cap_s = None
            if config == "single":
                cap_s = args.single_cap_s or outcomes["classes"].window_s
            outcomes[config], interval_s = run_config(
                config, args, root, broker, model, interval_s, cap_s
            )
    assert interval_s is not None
    add_figures(report, outcomes)
    report.extra = {
        "arrival_interval_s": interval_s,
        "a_jobs": args.a_jobs,
        "b_jobs": args.b_jobs,
        "interactive": args.interactive,
        "workers": WORKERS,
        "steps": args.steps,
        "slow_s_per_step": args.slow_s,
        "fair_share_queued": args.fair_share,
        "outcomes": {name: asdict(o) for name, o in outcomes.items()},
    }
    print_table(outcomes)
    return report


def add_figures(report: Report, outcomes: dict[str, Outcome]) -> None:
    alone, classes, single = outcomes["alone"], outcomes["classes"], outcomes["single"]
    p50, p95 = classes.wait(50) or 0.0, classes.wait(95) or 0.0
    report.add(
        Figure(
            "interactive_wait_p95_renders",
            classes.wait_ratio() or float("inf"),
            "renders",
            f"P50 {p50:.2f} s, P95 {p95:.2f} s, render median {classes.render_ms:.0f} ms; "
            f"alone P95 {alone.wait(95) or 0:.2f} s; " + single_waits(single),
            "<=",
            TARGET_WAIT_RATIO,
        )
    )
    report.add(Figure("interactive_wait_p50_s", p50, "s", "classes + fair share"))
    report.add(Figure("interactive_wait_p95_s", p95, "s", "classes + fair share"))
    b_ratio = (
        classes.b_completion_s / alone.b_completion_s
        if classes.b_completion_s is not None and alone.b_completion_s
        else float("inf")
    )
    report.add(
        Figure(
            "tenant_b_completion_vs_alone",
            b_ratio,
            "ratio",
            f"B's jobs in {classes.b_completion_s or 0:.1f} s behind A's backlog, "
            f"{alone.b_completion_s or 0:.1f} s alone; single queue: " + single_b(single),
            "<=",
            TARGET_B_RATIO,
        )
    )
    report.add(
        Figure(
            "busy_fraction_delta",
            abs(classes.busy - single.busy),
            "ratio",
            f"classes + fair share {classes.busy:.4f}, single queue {single.busy:.4f}",
            "<=",
            TARGET_BUSY_DELTA,
        )
    )
    report.add(
        Figure(
            "throughput_vs_single_queue",
            classes.throughput / single.throughput,
            "ratio",
            f"{classes.throughput:.3f} vs {single.throughput:.3f} jobs/s over windows of "
            f"{classes.window_s:.0f} and {single.window_s:.0f} s",
            ">=",
            TARGET_THROUGHPUT,
        )
    )


def single_waits(single: Outcome) -> str:
    if single.interactive_complete:
        return f"single queue P95 {single.wait(95) or 0:.2f} s"
    return (
        f"single queue: {single.interactive_started} interactive job(s) started in "
        f"{single.window_s:.0f} s"
    )


def single_b(single: Outcome) -> str:
    if single.b_completion_s is not None:
        return f"{single.b_completion_s:.1f} s"
    estimate = single.window_s + single.backlog_ahead / single.throughput
    return (
        f"{single.b_done} of B's jobs done in {single.window_s:.0f} s, "
        f"{single.backlog_ahead:,} of A's jobs still ahead (about {estimate:,.0f} s in all)"
    )


def print_table(outcomes: dict[str, Outcome]) -> None:
    table = Table(title="Fair scheduling: one version, two workers")
    table.add_column("figure")
    for config in ("single", "classes", "alone"):
        table.add_column(LABELS[config], justify="right")
    table.add_column("target")

    def cell(value: float | None, fmt: str, missing: str = "-") -> str:
        return missing if value is None else format(value, fmt)

    def row(name: str, values: list[str], target: str = "") -> None:
        table.add_row(name, *values, target)

    ordered = [outcomes[c] for c in ("single", "classes", "alone")]
    row("window (s)", [f"{o.window_s:.1f}{'' if o.complete else ' (cap)'}" for o in ordered])
    row("render median (ms)", [f"{o.render_ms:.0f}" for o in ordered])
    row("interactive started", [str(o.interactive_started) for o in ordered])
    row("interactive wait P50 (s)", [cell(o.wait(50), ".2f") for o in ordered])
    row("interactive wait P95 (s)", [cell(o.wait(95), ".2f") for o in ordered])
    row(
        "P95 / render",
        [cell(o.wait_ratio(), ".2f", "unfinished") for o in ordered],
        f"<= {TARGET_WAIT_RATIO} (classes)",
    )
    row("B done", [str(o.b_done) for o in ordered])
    row("B completion (s)", [cell(o.b_completion_s, ".1f", "unfinished") for o in ordered])
    alone_b = outcomes["alone"].b_completion_s
    row(
        "B completion / alone",
        [
            cell(
                o.b_completion_s / alone_b if o.b_completion_s and alone_b else None,
                ".2f",
                "unfinished",
            )
            for o in ordered
        ],
        f"<= {TARGET_B_RATIO} (classes)",
    )
    row(
        "busy fraction",
        [f"{o.busy:.4f}" for o in ordered],
        f"classes within {TARGET_BUSY_DELTA} of single",
    )
    base = outcomes["single"].throughput
    row("throughput (jobs/s)", [f"{o.throughput:.3f}" for o in ordered])
    row(
        "throughput / single",
        [f"{o.throughput / base:.3f}" for o in ordered],
        f">= {TARGET_THROUGHPUT} (classes)",
    )
    Console().print(table)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a-jobs", type=int, default=10_000, help="tenant A's bulk backlog")
    parser.add_argument("--b-jobs", type=int, default=100, help="tenant B's bulk jobs")
    parser.add_argument("--interactive", type=int, default=50, help="interactive jobs")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per job")
    parser.add_argument("--slow-s", type=float, default=0.2,
                        help="seconds each step sleeps ([[fault:slow=S]])")  # fmt: skip
    parser.add_argument("--fair-share", type=int, default=64,
                        help="CANARY_FAIR_SHARE_QUEUED of the classes configuration")  # fmt: skip
    parser.add_argument("--single-cap-s", type=float, default=0.0,
                        help="cap of the single-queue window (0: the classes window)")  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write results")
    parser.add_argument("--quick", action="store_true", help="a smoke run (not meaningful)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return standalone_main("fair_scheduling", "fair scheduling", parser(), run, QUICK, argv)


if __name__ == "__main__":
    sys.exit(main())
