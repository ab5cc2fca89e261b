"""Assignment with a cold cache: ``python -m benchmarks.cold_assignment [--quick]``.

First exposures per second through the gateway, as the API and ``canary submit`` assign
them: a fresh :class:`~gateway.service.Gateway` (empty sticky cache) meets users it has
never seen, whose segments must be looked up in the database (sign-up times in ``users``,
job counts from ``jobs``), decides their arm and records the first assignment. Three
paths, side by side in one run, on fresh users from the same population each time:

- ``single``: ``Gateway.prepare`` once per request, as ``POST /v1/jobs`` does;
- ``api-batch``: ``Gateway.prepare_all`` per batch of ``--batch`` requests, as
  ``POST /v1/jobs:batch`` does;
- ``bulk``: ``Gateway.prepare_many`` per chunk of ``--chunk`` requests, as ``canary
  submit FILE`` does.

Requests arrive already parsed (FastAPI and the file reader validate the JSON before the
gateway sees it); a quarter carry the client's ``signed_up_at``, the rest no attributes.
Job rows and messages are not part of it (``benchmarks.http_submit`` and
``benchmarks.bulk_submit`` cover them). The rounds alternate the paths; each path's figure
is its best round. Every decision is checked against the pure step on the users' true
attributes, and every first exposure against one stored row, so a speed-up that skips the
look-ups or the insert fails the run.

The breakdown counts SQL statements, transactions and connection check-outs per user and
splits the time into SQL execution by purpose, transaction ends (commit or rollback) and
the rest (Python: decisions, render limits; connection handling).

Both backends by default: an SQLite file and a fresh schema in the machine's PostgreSQL
(``BENCH_POSTGRES_URL``, dropped afterwards). ``--quick`` uses tiny sizes for a CI smoke
run; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import event, func, insert, select, text
from sqlalchemy.engine import Engine
from sqlmodel import col

from benchmarks.assignment import CONFIG
from benchmarks.http_servers import Backend, postgres_backend, sqlite_backend
from canary.settings import Settings
from gateway.assignment import Assigner
from gateway.experiment_source import ExperimentSource
from gateway.experiments import parse_config
from gateway.job_requests import InvalidJob, JobRequest, UserAttributesIn
from gateway.segments import UserAttributes, segment_of
from gateway.service import Gateway
from gateway.submit import PreparedJob
from storage import jobs
from storage import users as user_records
from storage.db import get_engine, init_db
from storage.models import Assignment, utcnow
from tasks.app import make_app

TARGET_PER_SECOND = 5_000
WARM_UP = 20  # users per path in the unmeasured first round
VERSIONS = ["v1", "v2"]
PATHS = ("single", "api-batch", "bulk")
STYLED_PROMPT = "a cinematic film still of a harbour at dawn"
PLAIN_PROMPT = "a watercolour fox in the snow"
# --quick: sizes for a CI smoke run (its figures mean nothing)
QUICK: dict[str, Any] = {"single": 60, "batched": 300, "rounds": 1, "enrolled": 200}


# ---------------------------------------------------------------- the population


@dataclass(frozen=True)
class User:
    user_id: str
    truth: UserAttributes  # what the database knows (sign-up time may be unknown)
    sends_signup: bool  # the client sends signed_up_at with the request


def make_population(n: int, now: datetime, seed: int) -> list[User]:
    """benchmarks.assignment's mix (about 8% new users, a long-tailed weekly generation
    count, some style-tag regulars, 5% without a known sign-up time), with times kept an
    hour or more from the segment boundaries so a run that takes minutes decides alike."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        user_id = f"cold-{seed}-{i:07d}-{rng.getrandbits(32):08x}"
        recent = rng.random() < 0.08
        age_days = rng.uniform(0.1, 2.9) if recent else 3.1 + rng.expovariate(1 / 180)
        signed_up = None if rng.random() < 0.05 else now - timedelta(days=age_days)
        generations = int(rng.expovariate(1 / 5))
        styled = int(rng.expovariate(1 / 2.5)) if rng.random() < 0.6 else 0
        sends = signed_up is not None and rng.random() < 0.25
        out.append(User(user_id, UserAttributes(signed_up, generations, styled), sends))
    return out


def seed_history(engine: Engine, population: Sequence[User], now: datetime, enrolled: int) -> int:
    """Store what the gateway looks up: sign-up times (of users whose client does not send
    one) and job rows: ``generations_7d`` in the last 7 days, older ones besides, the first
    ``style_tag_uses`` with a style tag; and ``enrolled`` other users' assignments from
    earlier days, so the assignments table is not empty. Returns the number of job rows."""
    rng = random.Random(7)
    arms = ["candidate" if rng.random() < 0.15 else "baseline" for _ in range(enrolled)]
    earlier = [
        {"experiment": "v2-canary", "user_id": f"earlier-{i:07d}", "arm": arm,
         "variant": "v2" if arm == "candidate" else "v1", "segment": "everyone_else",
         "stage": "15%", "first_seen": now - timedelta(days=30),
         "last_seen": now - timedelta(days=1)}
        for i, arm in enumerate(arms)
    ]  # fmt: skip
    with engine.begin() as connection:
        for start in range(0, len(earlier), 5_000):
            connection.execute(insert(Assignment), earlier[start : start + 5_000])
    user_records.remember_signups(
        engine,
        {
            u.user_id: u.truth.signed_up_at
            for u in population
            if u.truth.signed_up_at is not None and not u.sends_signup
        },
    )
    rows: list[dict[str, Any]] = []
    total = 0
    for user in population:
        recent = user.truth.generations_7d or 0
        styled = user.truth.style_tag_uses or 0
        older = max(styled - recent, 0) + rng.randrange(3)
        for k in range(recent + older):
            age = rng.uniform(0.05, 6.9) if k < recent else rng.uniform(7.1, 60)
            rows.append(
                {"id": f"{user.user_id}-{k}", "user_id": user.user_id, "model_version": "v1",
                 "prompt": STYLED_PROMPT if k < styled else PLAIN_PROMPT, "steps": 20,
                 "guidance": 7.5, "width": 512, "height": 512, "seed": k,
                 "created_at": now - timedelta(days=age)}
            )  # fmt: skip
        if len(rows) >= 5_000:
            jobs.insert_new_jobs(engine, rows)
            total += len(rows)
            rows = []
    jobs.insert_new_jobs(engine, rows)
    # Planner statistics, as a serving database has them (autovacuum would gather them a
    # minute or so later): without them PostgreSQL guesses that the IN/ANY list of a
    # chunk's users matches half the jobs table and scans all of it.
    with engine.begin() as connection:
        for table in ("jobs", "users", "assignments"):
            connection.execute(text(f"ANALYZE {table}"))
    return total + len(rows)


def request_for(user: User) -> JobRequest:
    attributes = (
        UserAttributesIn(signed_up_at=user.truth.signed_up_at) if user.sends_signup else None
    )
    return JobRequest(prompt=PLAIN_PROMPT, user_id=user.user_id, user_attributes=attributes)


# ---------------------------------------------------------------- what the database saw


PHASES = ("stored reads", "sign-ups", "attribute look-ups", "first-exposure inserts", "other")


def phase_of(statement: str) -> str:
    text = " ".join(statement.split()).lower()
    if text.startswith("insert into assignments"):
        return "first-exposure inserts"
    if text.startswith("insert into users"):
        return "sign-ups"
    if "from assignments" in text:
        return "stored reads"
    if "from users" in text or ("from jobs" in text and "group by" in text):
        return "attribute look-ups"
    return "other"


@dataclass
class Tally:
    statements: Counter[str] = field(default_factory=Counter)
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    transaction_ends: int = 0
    end_seconds: float = 0.0
    checkouts: int = 0


class Recorder:
    """Counts and times what the engine sends, by purpose (SQLAlchemy events)."""

    def __init__(self, engine: Engine) -> None:
        self.tally = Tally()
        self._began: dict[int, tuple[str, float]] = {}
        self._ending: dict[int, float] = {}
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)
        event.listen(engine, "commit", self._end)
        event.listen(engine, "rollback", self._end)
        event.listen(engine.pool, "checkout", self._checkout)
        event.listen(engine.pool, "checkin", self._checkin)

    def reset(self) -> Tally:
        tally, self.tally = self.tally, Tally()
        return tally

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self._began[id(cursor)] = (phase_of(statement), time.perf_counter())

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        phase, began = self._began.pop(id(cursor))
        self.tally.statements[phase] += 1
        self.tally.seconds[phase] += time.perf_counter() - began

    def _end(self, conn: Any) -> None:
        self._ending[id(conn.connection.dbapi_connection)] = time.perf_counter()

    def _checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        self.tally.checkouts += 1

    def _checkin(self, dbapi_connection: Any, record: Any) -> None:
        began = self._ending.pop(id(dbapi_connection), None)
        if began is not None:
            self.tally.transaction_ends += 1
            self.tally.end_seconds += time.perf_counter() - began


# ---------------------------------------------------------------- the paths


@dataclass
class Run:
    path: str
    users: int
    seconds: float
    tally: Tally

    @property
    def rate(self) -> float:
        return self.users / self.seconds


def run_path(
    path: str,
    gateway: Gateway,
    requests: Sequence[JobRequest],
    *,
    batch: int,
    chunk: int,
) -> list[PreparedJob]:
    """Prepare every request the way ``path`` does; raises on any refused request."""
    if path == "single":
        return [gateway.prepare(r, may_pin_version=False) for r in requests]
    if path == "api-batch":
        out: list[PreparedJob] = []
        for start in range(0, len(requests), batch):
            out += gateway.prepare_all(requests[start : start + batch], may_pin_version=False)
        return out
    prepared: list[PreparedJob] = []
    for start in range(0, len(requests), chunk):
        for item in gateway.prepare_many(requests[start : start + chunk]):
            if isinstance(item, InvalidJob):
                raise SystemExit(f"bulk path refused a request: {item}")
            prepared.append(item)
    return prepared


def check(
    engine: Engine, assigner: Assigner, users: Sequence[User], prepared: Sequence[PreparedJob]
) -> None:
    """Each decision is the pure step's on the user's true attributes (so the look-ups
    happened), and each user has one stored row that says the same."""
    rules = assigner.rules
    expected_rows = {}
    for user, job in zip(users, prepared, strict=True):
        now = utcnow()
        decision = assigner.decide(user.user_id, segment_of(user.truth, rules, now))
        got = (job.model_version, job.experiment, job.arm, job.segment)
        want = (decision.variant, decision.experiment, decision.arm, decision.segment)
        if got != want:
            raise SystemExit(f"{user.user_id}: assigned {got}, the pure step says {want}")
        expected_rows[user.user_id] = (decision.arm, decision.segment)
    ids = list(expected_rows)
    stored = {}
    with engine.connect() as connection:
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            rows = connection.execute(
                select(col(Assignment.user_id), col(Assignment.arm), col(Assignment.segment)).where(
                    col(Assignment.user_id).in_(part)
                )
            )
            stored.update({user: (arm, segment) for user, arm, segment in rows})
    if stored != expected_rows:
        wrong = [u for u in ids if stored.get(u) != expected_rows[u]]
        raise SystemExit(f"{len(wrong)} stored assignments differ, e.g. {wrong[:3]}")


@contextmanager
def gateway_environment(backend: Backend, directory: Path) -> Iterator[tuple[Settings, Path]]:
    experiment_file = directory / "experiments.yaml"
    experiment_file.write_text(yaml.safe_dump(CONFIG))
    settings = Settings(
        database_url=backend.url,
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        versions=VERSIONS,
        model_dir=directory / "models",
        home=directory / "home",
    )
    yield settings, experiment_file


def bench_backend(backend: Backend, args: argparse.Namespace, directory: Path) -> list[Run]:
    engine = get_engine(backend.url)
    init_db(engine)
    now = utcnow()
    sizes = {"single": args.single, "api-batch": args.batched, "bulk": args.batched}
    warm_up = {path: WARM_UP for path in PATHS}
    population = make_population(
        sum(sizes.values()) * args.rounds + WARM_UP * len(PATHS), now, seed=2026
    )
    began = time.perf_counter()
    job_rows = seed_history(engine, population, now, args.enrolled)
    print(
        f"{backend.name}: history of {len(population):,} users ({job_rows:,} jobs) and "
        f"{args.enrolled:,} earlier assignments stored in "
        f"{time.perf_counter() - began:.1f} s",
        flush=True,
    )
    recorder = Recorder(engine)
    runs: list[Run] = []
    remaining = iter(population)
    with gateway_environment(backend, directory) as (settings, experiment_file):
        app = make_app(settings)
        assigner = Assigner(parse_config(CONFIG, VERSIONS))
        # an unmeasured round first: statements compiled, connections open, as in a
        # serving process
        for round_, round_sizes in enumerate([warm_up] + [sizes] * args.rounds):
            order = PATHS if round_ % 2 == 0 else tuple(reversed(PATHS))
            for path in order:
                users = [next(remaining) for _ in range(round_sizes[path])]
                requests = [request_for(u) for u in users]
                source = ExperimentSource(experiment_file, VERSIONS, engine=engine)
                gateway = Gateway(settings, engine, app, source)
                gateway.retired.get()  # per-process state a serving gateway already holds
                assert not gateway.sticky.cache
                recorder.reset()
                start = time.perf_counter()
                prepared = run_path(path, gateway, requests, batch=args.batch, chunk=args.chunk)
                seconds = time.perf_counter() - start
                tally = recorder.reset()
                check(engine, assigner, users, prepared)
                if round_ > 0:
                    runs.append(Run(path, len(users), seconds, tally))
    engine.dispose()
    return runs


def backends(names: Sequence[str], directory: Path) -> Iterator[AbstractContextManager[Backend]]:
    for name in names:
        yield sqlite_backend(directory) if name == "sqlite" else postgres_backend("bench_cold")


def report(backend: str, runs: Sequence[Run]) -> None:
    best: dict[str, Run] = {}
    for run in runs:
        if run.path not in best or run.rate > best[run.path].rate:
            best[run.path] = run
    single = best["single"].rate
    for path in PATHS:
        run = best[path]
        per_round = ", ".join(f"{r.rate:,.0f}" for r in runs if r.path == path)
        target = ""
        if path != "single":
            target = (
                f" | target {TARGET_PER_SECOND:,}/s: "
                f"{'met' if run.rate >= TARGET_PER_SECOND else 'NOT met'}"
            )
        print(
            f"{backend} {path}: {run.rate:,.0f} first exposures/s | {run.rate / single:.2f}x "
            f"single{target} | rounds {per_round}"
        )
    for path in PATHS:
        run = best[path]
        t = run.tally
        statements = sum(t.statements.values())
        sql = sum(t.seconds.values())
        per_user_us = 1e6 / run.users
        parts = ", ".join(
            f"{phase} {t.statements[phase] / run.users:.3g} ({t.seconds[phase] * per_user_us:.0f})"
            for phase in PHASES
            if t.statements[phase]
        )
        rest = run.seconds - sql - t.end_seconds
        print(
            f"  {backend} {path} per user: {statements / run.users:.3g} statements, "
            f"{t.transaction_ends / run.users:.3g} transactions, {t.checkouts / run.users:.3g} "
            f"connection check-outs; {run.seconds * per_user_us:.0f} us = SQL "
            f"{sql * per_user_us:.0f} + commit/rollback {t.end_seconds * per_user_us:.0f} + "
            f"rest {rest * per_user_us:.0f}"
        )
        print(f"    statements (us) per user: {parts}")


def postgres_version(url: str) -> str:
    with get_engine(url).connect() as connection:
        return str(connection.execute(select(func.version())).scalar_one()).split(",")[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], nargs="+",
                        default=["sqlite", "postgresql"])  # fmt: skip
    parser.add_argument("--single", type=int, default=1_000, help="users per single round")
    parser.add_argument("--batched", type=int, default=5_000, help="users per batched round")
    parser.add_argument("--batch", type=int, default=100, help="requests per API batch")
    parser.add_argument("--chunk", type=int, default=500, help="lines per bulk chunk")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (paths alternate)")
    parser.add_argument(
        "--enrolled", type=int, default=20_000, help="other users' earlier assignments"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    print(
        f"canary-render cold-cache assignment: Python {platform.python_version()}, "
        f"{os.cpu_count()} cores; {args.single:,} single + 2 x {args.batched:,} batched "
        f"first exposures per round, {args.rounds} round(s), API batches of {args.batch}, "
        f"bulk chunks of {args.chunk}"
        + (" (--quick: figures not meaningful)" if args.quick else ""),
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="canary-cold-") as tmp:
        for index, context in enumerate(backends(args.backend, Path(tmp))):
            directory = Path(tmp) / str(index)
            directory.mkdir()
            with context as backend:
                if backend.name == "postgresql":
                    print(f"postgresql: {postgres_version(backend.url)}", flush=True)
                runs = bench_backend(backend, args, directory)
                report(backend.name, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
