"""Render workers for tests, started from a fork server that has the heavy libraries loaded.

A render worker started with ``python -m canary.cli worker`` spends much of its start-up
CPU importing torch, Celery and SQLAlchemy in its main process, and the integration tests
start a few hundred of them. Here a ``multiprocessing`` fork server imports those
third-party libraries once per test process; each worker is a fork of it that then runs
the real command line (``canary.cli`` as ``__main__``, with its own argv, environment,
working directory, new session and log file), so everything first-party, configuration
included, is imported and read afresh in the worker, as in a fresh interpreter. Only
imports are shared.

``CANARY_TEST_FORKSERVER=0`` starts each worker as a fresh interpreter instead (the
``subprocess.Popen`` the product's own process supervisor uses), e.g. to rule the fork
server out when a worker behaves differently in a test.

The handle returned has the part of ``subprocess.Popen`` the tests use (``pid``,
``poll``, ``wait``, ``returncode``, signals); the exit status comes from the fork server,
which reaps the worker, negative for a signal as with ``Popen``.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Protocol

# Third-party only, and only what a worker's main process imports in production: a
# first-party module could read settings or the environment as it is imported, which must
# happen in the worker; and diffusers, transformers and boto3 are left to the pool process,
# which imports them as it loads the model, so that a replaced pool process takes as long
# to get ready as it does in production (the claim-ahead and crash tests depend on that).
PRELOADED = (
    "torch",
    "PIL.Image",
    "celery.apps.worker",
    "celery.concurrency.prefork",
    "celery.worker.consumer",
    "kombu.transport.redis",
    "sqlalchemy",
    "sqlmodel",
    "typer",
    "rich.console",
)
_context: multiprocessing.context.ForkServerContext | None = None


class WorkerProcess(Protocol):
    """What the tests do with a started worker process (a ``subprocess.Popen`` has it)."""

    pid: int

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, signum: int) -> None: ...

    def kill(self) -> None: ...


class ForkedWorker:
    """A worker forked from the fork server (not this process's child: the server reaps
    it and reports its exit status)."""

    def __init__(self, process: multiprocessing.process.BaseProcess, args: list[str]) -> None:
        self._process = process
        self.args = args
        assert process.pid is not None
        self.pid: int = process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return code

    def send_signal(self, signum: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _fork_server() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(PRELOADED))
        _context = context
    return _context


def _run_command_line(
    args: list[str], env: dict[str, str], cwd: str, log_path: str
) -> None:  # pragma: no cover - runs in the forked worker
    """In the fork: become what ``Popen(args, env=env, cwd=cwd, stdout=log, stderr=log,
    start_new_session=True)`` of ``python -m canary.cli ...`` would have started."""
    import runpy

    os.setsid()
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["canary", *args]
    sys.path[0:0] = [cwd]  # as `python -m` puts the working directory first
    try:
        runpy.run_module("canary.cli", run_name="__main__", alter_sys=True)
    finally:
        atexit._run_exitfuncs()  # the fork ends with os._exit: run what exit would run
        sys.stdout.flush()
        sys.stderr.flush()


def spawn_command_line(
    args: list[str], env: dict[str, str], cwd: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    """``python -m canary.cli ARGS`` in a fresh interpreter (for processes that must not
    have torch imported, such as the scheduler worker and beat), in its own session."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "canary.cli", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )


def start_command_line(
    args: list[str], env: dict[str, str], cwd: Path, log_path: Path
) -> WorkerProcess:
    """``python -m canary.cli ARGS`` in its own session, output appended to ``log_path``:
    forked from the fork server (a render worker), or a fresh interpreter if
    CANARY_TEST_FORKSERVER=0."""
    if os.environ.get("CANARY_TEST_FORKSERVER", "1") == "0":
        return spawn_command_line(args, env, cwd, log_path)
    process = _fork_server().Process(
        target=_run_command_line,
        args=(args, env, str(cwd), str(log_path)),
        name=f"canary {' '.join(args)}",
    )
    process.start()
    return ForkedWorker(process, ["canary", *args])
