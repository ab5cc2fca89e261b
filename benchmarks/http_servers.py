"""What the HTTP benchmarks share: a database to serve from, and uvicorn in a subprocess.

A :class:`Backend` is an SQLite file or a fresh schema in the machine's PostgreSQL
(``BENCH_POSTGRES_URL``), dropped afterwards. :func:`serve` runs an app factory under
uvicorn on a free loopback port, as an operator would run it, and stops it afterwards.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from storage.db import get_engine

POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Backend:
    name: str
    url: str


@contextmanager
def sqlite_backend(directory: Path, name: str = "bench.db") -> Iterator[Backend]:
    yield Backend("sqlite", f"sqlite:///{directory / name}")


@contextmanager
def postgres_backend(prefix: str = "bench") -> Iterator[Backend]:
    """A fresh schema in the machine's PostgreSQL, dropped afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield Backend("postgresql", url)
    finally:
        get_engine(url).dispose()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(
    factory: str,
    env: dict[str, str],
    log_path: Path,
    *,
    workers: int = 1,
    extra_args: Sequence[str] = ("--log-level", "warning", "--no-access-log"),
) -> Iterator[str]:
    """uvicorn serving ``factory`` (``module:function``) on a free loopback port with
    ``workers`` processes; yields its base URL. The log's end is printed if it fails."""
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "--factory", factory,
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), *extra_args,
    ]  # fmt: skip
    with serve_command(command, port, env, log_path) as base:
        yield base


@contextmanager
def serve_command(
    command: Sequence[str], port: int, env: dict[str, str], log_path: Path
) -> Iterator[str]:
    """Run ``command``, a server that listens on loopback ``port``; yields its base URL once
    ``/healthz`` answers, and stops it afterwards."""
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=log, stderr=log)
    failed = True
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, server, log_path)
        yield base
        failed = False
    finally:
        stop(server)
        if failed:
            log_tail = log_path.read_text(errors="replace")[-5000:]
            print(f"uvicorn log (end):\n{log_tail}", file=sys.stderr)


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def wait_ready(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"uvicorn exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"uvicorn did not answer within 60 s:\n{log.read_text()[-3000:]}")


@dataclass
class Load:
    """What one run of :func:`post_all` saw."""

    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)  # of the answered requests
    dropped: int = 0  # connections the server closed or reset before answering


def post_all(
    base: str,
    path: str,
    token: str,
    bodies: Sequence[bytes],
    connections: int,
    answered: Callable[[httpx.Response], None],
    *,
    tolerate_drops: bool = False,
) -> Load:
    """POST every body to ``path`` over ``connections`` keep-alive connections, as fast as
    answered; ``answered`` checks each answer (raise to stop the run). A dropped connection
    stops the run too, unless ``tolerate_drops`` (it is then counted)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    load = Load()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            began = time.perf_counter()
            try:
                response = await client.post(path, content=body, headers=headers)
            except httpx.TransportError:
                if not tolerate_drops:
                    raise
                load.dropped += 1
                continue
            load.latencies_ms.append((time.perf_counter() - began) * 1000)
            answered(response)

    async def run() -> None:
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
            # one small request per connection first, so connecting is not measured
            await asyncio.gather(*(client.get("/healthz") for _ in range(connections)))
            start = time.perf_counter()
            await asyncio.gather(*(client_loop(client) for _ in range(connections)))
            load.seconds = time.perf_counter() - start

    asyncio.run(run())
    return load
