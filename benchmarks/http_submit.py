"""HTTP submission: ``python -m benchmarks.http_submit [--quick] [--backend sqlite]``.

``POST /v1/jobs`` on the real API (``canary api``'s app under uvicorn in a subprocess, with
a client key, a 50/50 experiment that assigns each user, the job row and the message on the
version's queue) against an anchor served the same way in the same run: a bare FastAPI
route that only calls Celery's ``send_task`` with ``render.apply_async``'s options on the
same broker (no key, no database). Both run as ``canary api --workers N`` runs (one process
per core by default; canary/cli/api_server.py, which keeps ``TCP_NODELAY`` on with several
workers). Both get the same requests at increasing concurrency
(keep-alive httpx connections), interleaved level by level; each prints throughput and
P50/P99 latency.

The figures are taken at the concurrency where the anchor peaks: the API's throughput as a
share of the anchor's (target >= 0.7) and the API's P99 there (target <= 50 ms). The run
checks what arrived: one job row and one queued message per accepted request.

The client key's limits (gateway/key_limits.py) are checked on every request as in
production, set high enough never to refuse one: a request rate far above the load, and
room for every job of the run. Nothing renders, so the key's unfinished jobs only grow
(up to ``--requests`` x levels): the count of them on each submission is the worst case
of a key whose limit is that high.

Users come from a pool (``--users``), so the run mixes first exposures (an assignment row
written) with returning users (the sticky cache). PostgreSQL (a fresh schema in
``BENCH_POSTGRES_URL``, dropped afterwards) is the default, as the target asks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from fastapi import FastAPI
from pydantic import BaseModel
from sqlmodel import Session, func, select

from benchmarks import http_servers
from benchmarks.harness import Figure, Report, bench_main, broker_url, percentile, progress
from benchmarks.http_servers import (
    Backend,
    free_port,
    postgres_backend,
    serve_command,
    sqlite_backend,
)
from canary.contracts import RENDER_TASK, PriorityClass, queue_for, queues_for
from canary.settings import get_settings
from gateway.auth import create_key
from storage.db import get_engine, init_db
from storage.models import ApiKeyRole, Job

VERSIONS = ["bench-base", "bench-cand"]
RATIO_TARGET = 0.7
P99_TARGET_MS = 50.0
ANCHOR_FACTORY = "benchmarks.http_submit:create_anchor_app"
EXPERIMENT = {
    "default_version": "bench-base",
    "experiments": [
        {
            "name": "bench-http",
            "baseline": "bench-base",
            "candidate": "bench-cand",
            "stages": [{"name": "50%", "shares": {"default": 0.5}}],
            "stage": "50%",
        }
    ],
}
# --quick: sizes for a CI smoke run (its figures mean nothing)
BENCH_RATE_PER_S = 1_000_000.0  # checked on every request, never reached
QUICK: dict[str, Any] = {"requests": 60, "levels": [1, 4], "users": 40}


# ---------------------------------------------------------------- the anchor


class AnchorJob(BaseModel):
    prompt: str
    user_id: str | None = None
    seed: int = 0


def create_anchor_app() -> FastAPI:
    """The anchor: one route that sends the render message and nothing else (a sync route,
    like the API's, so both run in uvicorn's thread pool)."""
    from tasks.app import make_app

    celery = make_app(get_settings())
    version = VERSIONS[0]
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/jobs", status_code=202)
    def submit(body: AnchorJob) -> dict[str, str]:
        job_id = str(uuid.uuid4())
        spec = {"job_id": job_id, "model_version": version, "prompt": body.prompt,
                "negative_prompt": "", "seed": body.seed, "steps": 4, "guidance": 5.0,
                "width": 64, "height": 64}  # fmt: skip
        celery.send_task(
            RENDER_TASK,
            args=(job_id, spec),
            queue=queue_for(version, PriorityClass.INTERACTIVE),  # the route's queue
            task_id=job_id,
            ignore_result=True,
        )
        return {"job_id": job_id, "status": "QUEUED"}

    return app


# ---------------------------------------------------------------- load


@dataclass
class Level:
    """One server's answers at one concurrency."""

    concurrency: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    dropped: int = 0  # connections the server closed or reset before answering

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def bodies(count: int, users: int, tag: str, rng: random.Random) -> list[bytes]:
    def body(i: int) -> dict[str, Any]:
        user = f"user-{rng.randrange(users)}"
        prompt = f"a lighthouse at dusk {tag}-{i}"
        return {"prompt": prompt, "user_id": user, "seed": i, "steps": 4, "width": 64, "height": 64}

    return [json.dumps(body(i)).encode() for i in range(count)]


def post_all(base: str, token: str, payloads: list[bytes], concurrency: int) -> Level:
    def answered(response: httpx.Response) -> None:
        if response.status_code != 202:
            raise RuntimeError(f"POST /v1/jobs: {response.status_code} {response.text}")

    load = http_servers.post_all(
        base, "/v1/jobs", token, payloads, concurrency, answered, tolerate_drops=True
    )
    return Level(concurrency, load.seconds, load.latencies_ms, load.dropped)


# ---------------------------------------------------------------- the run


@contextmanager
def backend_for(name: str, directory: Path) -> Iterator[Backend]:
    if name == "sqlite":
        with sqlite_backend(directory, "http.db") as backend:
            yield backend
    else:
        with postgres_backend("bench_http") as backend:
            yield backend


def server(
    entry: list[str], env: dict[str, str], home: Path, workers: int
) -> AbstractContextManager[str]:
    """``python <entry> --host 127.0.0.1 --port P --workers N`` on a free port."""
    port = free_port()
    command = [sys.executable, *entry, "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers)]  # fmt: skip
    return serve_command(command, port, env, home / f"{entry[1]}.log")


def queued_messages(broker: str) -> int:
    client = redis.Redis.from_url(broker)
    return sum(int(client.llen(q)) for v in VERSIONS for q in queues_for(v))


def clear_queues(broker: str) -> None:
    redis.Redis.from_url(broker).delete(*(q for v in VERSIONS for q in queues_for(v)))


def job_rows(url: str) -> int:
    with Session(get_engine(url)) as session:
        return int(session.exec(select(func.count()).select_from(Job)).one())


def run(args: argparse.Namespace) -> Report:
    report = Report("http_submit", "HTTP submission", quick=args.quick)
    rng = random.Random(7)
    api_levels: list[Level] = []
    anchor_levels: list[Level] = []
    with (
        tempfile.TemporaryDirectory(prefix="canary-bench-http-") as tmp,
        broker_url() as broker,
        backend_for(args.backend, Path(tmp)) as backend,
        ExitStack() as servers,
    ):
        home = Path(tmp)
        engine = get_engine(backend.url)
        init_db(engine)
        # the key's limits are checked on every request (gateway/key_limits.py: the rate in
        # the broker, its unfinished jobs in the database) but set above what the run sends
        _, token = create_key(
            engine,
            "bench-http",
            ApiKeyRole.CLIENT,
            rate_per_s=BENCH_RATE_PER_S,
            max_queued=args.requests * len(args.levels),
        )
        experiment = home / "experiment.json"
        experiment.write_text(json.dumps(EXPERIMENT))
        env = os.environ | {
            "REDIS_URL": broker,
            "DATABASE_URL": backend.url,
            "STORAGE_URL": f"file://{home / 'objects'}",
            "CANARY_HOME": str(home / "home"),
            "CANARY_MODEL_DIR": str(home / "models"),
            "CANARY_VERSIONS": ",".join(VERSIONS),
            "CANARY_EXPERIMENT_FILE": str(experiment),
        }
        api = servers.enter_context(server(["-m", "canary.cli", "api"], env, home, args.workers))
        anchor = servers.enter_context(
            server(["-m", "benchmarks.http_submit", "--serve-anchor"], env, home, args.workers)
        )
        clear_queues(broker)
        accepted = 0
        with progress() as bar:
            task = bar.add_task("POST /v1/jobs: anchor, API", total=2 * len(args.levels))
            for concurrency in args.levels:
                payloads = bodies(args.requests, args.users, f"c{concurrency}", rng)
                anchor_levels.append(post_all(anchor, token, payloads, concurrency))
                clear_queues(broker)
                bar.advance(task)
                level = post_all(api, token, payloads, concurrency)
                api_levels.append(level)
                # every answered request has its row and message; a dropped one may have
                # been served all the same (the route runs to the end), so both or neither
                rows_before, answered = accepted, len(level.latencies_ms)
                accepted, messages = job_rows(backend.url), queued_messages(broker)
                if not answered <= accepted - rows_before == messages <= len(payloads):
                    raise RuntimeError(
                        f"{answered} answered, {level.dropped} dropped: "
                        f"{accepted - rows_before} job rows, {messages} queued messages"
                    )
                clear_queues(broker)
                bar.advance(task)
        engine.dispose()
    for anchor_level, api_level in zip(anchor_levels, api_levels, strict=True):
        print(
            f"  concurrency {anchor_level.concurrency:>3}: API {api_level.rate:7,.0f} jobs/s "
            f"p50 {api_level.p(50):6.1f} ms p99 {api_level.p(99):6.1f} ms | anchor "
            f"{anchor_level.rate:7,.0f} jobs/s p50 {anchor_level.p(50):6.1f} ms "
            f"p99 {anchor_level.p(99):6.1f} ms"
            + "".join(
                f" | {name} dropped {level.dropped} connection(s)"
                for name, level in (("API", api_level), ("anchor", anchor_level))
                if level.dropped
            )
        )
    peak = max(range(len(anchor_levels)), key=lambda i: anchor_levels[i].rate)
    anchor_peak, api_at_peak = anchor_levels[peak], api_levels[peak]
    where = (
        f"at concurrency {anchor_peak.concurrency} (the anchor's peak), {args.backend}, "
        f"{args.workers} uvicorn worker(s), {args.requests:,} requests per level"
        + (f", {api_at_peak.dropped} dropped by the API" if api_at_peak.dropped else "")
    )
    report.add(
        Figure(
            "http_submit_vs_anchor",
            api_at_peak.rate / anchor_peak.rate,
            "ratio",
            f"API {api_at_peak.rate:,.0f} jobs/s vs anchor {anchor_peak.rate:,.0f} jobs/s {where}",
            ">=",
            RATIO_TARGET,
        )
    )
    report.add(
        Figure(
            "http_submit_p99_ms", api_at_peak.p(99), "ms", f"API P99 {where}", "<=", P99_TARGET_MS
        )
    )
    report.add(Figure("http_submit_p50_ms", api_at_peak.p(50), "ms", f"API P50 {where}"))
    report.add(Figure("http_submit_jobs_per_s", api_at_peak.rate, "jobs/s", where))
    report.add(Figure("http_anchor_jobs_per_s", anchor_peak.rate, "jobs/s", where))
    report.extra = {
        "backend": args.backend,
        "workers": args.workers,
        "requests_per_level": args.requests,
        "users": args.users,
        "levels": [
            {
                "concurrency": a.concurrency,
                "api_jobs_per_s": b.rate,
                "api_p50_ms": b.p(50),
                "api_p99_ms": b.p(99),
                "anchor_jobs_per_s": a.rate,
                "anchor_p50_ms": a.p(50),
                "anchor_p99_ms": a.p(99),
                "api_dropped": b.dropped,
                "anchor_dropped": a.dropped,
            }
            for a, b in zip(anchor_levels, api_levels, strict=True)
        ],
    }
    return report


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3_000, help="requests per level")
    parser.add_argument(
        "--levels", type=int, nargs="+", default=[1, 4, 16, 64], help="concurrencies"
    )
    parser.add_argument("--users", type=int, default=20_000, help="distinct user ids")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="uvicorn worker processes"
    )
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--quick", action="store_true", help="a smoke run (not meaningful)")
    return parser


def serve_anchor(argv: list[str]) -> int:
    """``--serve-anchor --host H --port P --workers N``: serve the anchor as the API is."""
    from canary.cli.api_server import serve_app

    options = argparse.ArgumentParser()
    options.add_argument("--serve-anchor", action="store_true")
    options.add_argument("--host", default="127.0.0.1")
    options.add_argument("--port", type=int, required=True)
    options.add_argument("--workers", type=int, default=1)
    args = options.parse_args(argv)
    serve_app(ANCHOR_FACTORY, args.host, args.port, args.workers)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--serve-anchor" in argv:
        return serve_anchor(argv)
    return bench_main("HTTP submission", parser(), run, QUICK, argv)


if __name__ == "__main__":
    sys.exit(main())
