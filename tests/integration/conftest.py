"""Real services for integration tests: Redis, SQLite/PostgreSQL, tiny models, workers.

Redis and PostgreSQL are the machine's own (REDIS_URL / TEST_POSTGRES_URL override the
defaults). Each test session uses its own Redis database number and its own PostgreSQL
schema, so nothing a developer keeps there is touched.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import redis
from celery import Celery

from canary.settings import Settings
from gateway.service import Gateway
from storage import jobs
from storage.db import get_engine, init_db
from storage.models import TERMINAL_STATUSES, Job
from tasks.app import make_app
from tasks.nodes import SUFFIX_BYTES, node_prefix
from tasks.tiny_model import make_tiny_model
from tests.worker_processes import WorkerProcess, start_command_line

TEST_REDIS_SERVER = os.environ.get("TEST_REDIS_SERVER", "redis://127.0.0.1:6379")
TEST_POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
VERSIONS = ("v1", "v2")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A database number of the machine's Redis that no other test session is using.

    Sessions claim a number with a lock key in database 0, so two test runs on one machine
    (a developer's and CI's) never consume each other's jobs or flush each other's queues.
    """
    control = redis.Redis.from_url(f"{TEST_REDIS_SERVER}/0")
    try:
        control.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {TEST_REDIS_SERVER} is not running ({exc}); see README")
    for db in range(1, 16):
        lock = f"canary-render:test-session:{db}"
        if control.set(lock, os.getpid(), nx=True, ex=4 * 3600):
            break
    else:
        pytest.fail("every Redis database 1-15 is claimed by another test session")
    url = f"{TEST_REDIS_SERVER}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    control.delete(lock)


@pytest.fixture
def clean_redis(redis_url: str) -> str:
    redis.Redis.from_url(redis_url).flushdb()
    return redis_url


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for seed, version in enumerate(VERSIONS, start=1):
        make_tiny_model(root / version, seed)
    return root


@pytest.fixture(scope="session")
def postgres_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    schema = f"canary_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(TEST_POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {TEST_POSTGRES_URL} is not running ({exc}); see README")
    yield f"{TEST_POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with psycopg.connect(TEST_POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def fresh_database_url(kind: str, tmp_path: Path, postgres_url: str) -> str:
    """An empty database of the given kind with the schema created."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'canary.db'}"
    else:
        url = postgres_url
        engine = get_engine(url)
        from sqlmodel import SQLModel

        SQLModel.metadata.drop_all(engine)
    init_db(get_engine(url))
    return url


@dataclass
class Stack:
    """One test's configuration plus the workers it started."""

    settings: Settings
    env: dict[str, str]
    log_dir: Path
    app: Celery
    workers: list[WorkerProcess] = field(default_factory=list)
    nodes: dict[int, str] = field(default_factory=dict)  # worker pid -> its node name

    @property
    def engine(self):  # type: ignore[no-untyped-def]
        return get_engine(self.settings.resolved_database_url)

    def gateway(self) -> Gateway:
        return Gateway(self.settings, self.engine, self.app)

    def start_worker(
        self, version: str, name: str | None = None, node: str | None = None
    ) -> WorkerProcess:
        """Start a worker process; ``node`` sets its Celery node name (else the default,
        render-VERSION-cpu-<unique suffix>); its node name is kept in ``nodes``."""
        name = name or f"worker-{version}-{len(self.workers)}"
        started_before = set(self.nodes.values())
        process = self._spawn_worker(version, name, node)
        self.nodes[process.pid] = self.wait_for_worker(
            node or f"render-{version}-cpu", process, name, started_before
        )
        return process

    def start_workers(self, version: str, n: int) -> list[WorkerProcess]:
        """Start ``n`` workers of ``version`` at once (faster than one after another: they
        load in parallel), each under a unique name of the default form
        render-VERSION-cpu-<6 hex digits>, and wait for all of them."""
        named = []
        for _ in range(n):
            node = f"{node_prefix(version, 'cpu')}-{secrets.token_hex(SUFFIX_BYTES)}"
            name = f"worker-{version}-{len(self.workers)}"
            named.append((self._spawn_worker(version, name, node), name, node))
        for process, name, node in named:
            self.nodes[process.pid] = self.wait_for_worker(node, process, name)
        return [process for process, _, _ in named]

    def _spawn_worker(self, version: str, name: str, node: str | None) -> WorkerProcess:
        node_args = ["--name", node] if node else []
        process = start_command_line(
            ["worker", "--model-version", version, *node_args],
            self.env,
            PROJECT_ROOT,
            self.log_dir / f"{name}.log",
        )
        self.workers.append(process)
        return process

    def online_nodes(self, timeout: float) -> set[str]:
        return {n for reply in self.app.control.ping(timeout=timeout) or [] for n in reply}

    def wait_for_worker(
        self,
        node_prefix: str,
        process: WorkerProcess,
        name: str,
        started_before: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> str:
        """Wait for a node named after ``node_prefix``, not one of ``started_before``;
        returns its name."""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"{name} exited: {self.log(name)}")
            for node in self.online_nodes(0.5) - started_before:
                if node.startswith(node_prefix):
                    return node
        pytest.fail(f"{name} did not answer within 90 s: {self.log(name)}")

    def wait_finished(self, job_ids: list[str], timeout: float = 120) -> dict[str, Job]:
        """Poll until every job is SUCCEEDED or FAILED; fail with the worker logs if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = {row.id: row for row in jobs.get_jobs(self.engine, job_ids)}
            if len(rows) == len(set(job_ids)) and all(
                row.status in TERMINAL_STATUSES for row in rows.values()
            ):
                return rows
            time.sleep(0.2)
        logs = "\n".join(self.log(p.name) for p in sorted(self.log_dir.glob("*.log")))
        pytest.fail(f"jobs did not finish in {timeout:.0f} s; worker logs:\n{logs}")

    def log(self, name: str) -> str:
        path = self.log_dir / (name if name.endswith(".log") else f"{name}.log")
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"

    def stop_workers(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.workers:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def make_stack(
    tmp_path: Path, redis_url: str, database_url: str, storage_url: str, model_dir: Path, **extra
) -> Stack:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "STORAGE_URL": storage_url,
        "CANARY_MODEL_DIR": str(model_dir),
        "CANARY_HOME": str(tmp_path / "home"),
        "CANARY_VERSIONS": ",".join(VERSIONS),
        "CANARY_TORCH_THREADS": "1",
        # Fair share off unless a test turns it on (test_fair_share*.py, the journeys run
        # the product's default): the other tests find a whole batch in the broker.
        "CANARY_FAIR_SHARE_QUEUED": "0",
        **{k: str(v) for k, v in extra.items()},
    }
    settings = Settings(
        fair_share_queued=int(env["CANARY_FAIR_SHARE_QUEUED"]),
        redis_url=redis_url,
        database_url=database_url,
        storage_url=storage_url,
        s3_endpoint_url=extra.get("S3_ENDPOINT_URL"),
        model_dir=model_dir,
        home=tmp_path / "home",
        versions=list(VERSIONS),
    )
    log_dir = tmp_path / "logs"
    log_dir.mkdir(exist_ok=True)
    return Stack(settings, env, log_dir, make_app(settings))


def local_stack(tmp_path: Path, redis_url: str, model_dir: Path, **extra: str) -> Stack:
    """A stack on a fresh SQLite file and a local object directory (no PostgreSQL, no S3)."""
    database_url = f"sqlite:///{tmp_path / 'canary.db'}"
    init_db(get_engine(database_url))
    return make_stack(
        tmp_path, redis_url, database_url, f"file://{tmp_path / 'objects'}", model_dir, **extra
    )
