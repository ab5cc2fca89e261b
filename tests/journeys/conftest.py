"""Journeys: the product used only through its public surfaces, as a person uses it.

Every journey works in a fresh directory that looks like a checkout (``.venv`` and
``examples/`` linked from this project), on the embedded defaults of the README: a
private Valkey broker started by `canary up`, a SQLite file and a local object directory
under ``./.canary``, tiny models. Only ports are chosen here (free ones), through the
documented settings, so that journeys never meet a developer's own stack.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.journeys.ready import api_ready, stack_ready

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = PROJECT_ROOT / ".venv" / "bin"
# the embedded defaults apply only when none of these is set
SERVICE_VARIABLES = (
    "REDIS_URL", "CANARY_REDIS_URL", "DATABASE_URL", "CANARY_DATABASE_URL", "STORAGE_URL",
    "CANARY_STORAGE_URL", "S3_ENDPOINT_URL", "CANARY_EXPERIMENT_FILE", "CANARY_HOME",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Checkout:
    """A fresh working directory with the project's venv, and how to run commands in it."""

    root: Path
    env: dict[str, str]
    background: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stack: subprocess.Popen[bytes] | None = None  # `canary up`, once started

    def run(
        self, command: str, *, check: bool = True, timeout: float = 600, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run one shell command line (bash) in the checkout, as a person types it."""
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=stdin,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"`{command}` exited {result.returncode}\n--- stdout\n{result.stdout}"
                f"\n--- stderr\n{result.stderr}\n{self.logs()}"
            )
        return result

    def start(self, command: str, log_name: str) -> subprocess.Popen[bytes]:
        """Start a long-running command (`canary up`, `canary api`) in the background."""
        log = (self.root / f"{log_name}.out").open("ab")
        process = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=self.root,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.background.append(process)
        return process

    def logs(self) -> str:
        parts = []
        for path in sorted(self.root.glob("*.out")) + sorted(
            (self.root / ".canary" / "logs").glob("*.log")
        ):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-2500:]}")
        return "\n".join(parts)

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """Stop a background command as a person does: Ctrl-C in its terminal (SIGINT to
        its process group; `canary up` then stops its workers first and its broker last).
        Once the command has exited, SIGTERM reaches what is left of its group (a script's
        `&` services, which ignore SIGINT). Whatever it started that still runs after
        ``STOP_WAIT_S`` gets SIGKILL, including `canary up`'s processes, which run in
        sessions of their own and would otherwise outlive the test."""
        started = _Descendants(process.pid)
        _signal_group(process.pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_WAIT_S
        while process.poll() is None and time.monotonic() < deadline:
            started.update()
            time.sleep(0.2)
        _signal_group(process.pid, signal.SIGTERM)
        while (_group_alive(process.pid) or started.alive()) and time.monotonic() < deadline:
            time.sleep(0.2)
        _signal_group(process.pid, signal.SIGKILL)
        started.kill()
        process.wait()
        if process in self.background:
            self.background.remove(process)

    def stop_background(self) -> None:
        for process in list(self.background):
            self.stop(process)

    def start_stack(self) -> subprocess.Popen[bytes]:
        """`canary up` in the background, once every version's worker answers."""
        process = self.start("canary up", "stack")
        self.wait_for_stack(process)
        return process

    def wait_for_stack(self, process: subprocess.Popen[bytes]) -> None:
        """Until a render worker of every version answers a ping on the stack's broker."""
        if not stack_ready(self.env["CANARY_LOCAL_BROKER_PORT"]):
            pytest.fail(f"the local stack did not come up\n{self.logs()}")
        if process.poll() is not None:
            pytest.fail(f"`canary up` exited {process.returncode}\n{self.logs()}")

    def wait_for_api(self, process: subprocess.Popen[bytes], url: str) -> None:
        if not api_ready(url) or process.poll() is not None:
            pytest.fail(f"the API did not come up at {url}\n{self.logs()}")


# longer than `canary up`'s own stop grace (60 s by default), after which it kills what
# has not stopped
STOP_WAIT_S = 75.0


class _Descendants:
    """Every process a command started (recursively), remembered while it runs."""

    def __init__(self, pid: int) -> None:
        self.root = pid
        self.seen: dict[int, psutil.Process] = {}
        self.update()

    def update(self) -> None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.root).children(recursive=True):
                self.seen.setdefault(child.pid, child)

    def alive(self) -> bool:
        return bool(self._left())

    def kill(self) -> None:
        for proc in self._left():
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def _left(self) -> list[psutil.Process]:
        left = []
        for proc in self.seen.values():
            # is_running() also checks the start time: a reused pid does not count
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(proc)
        return left


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def make_checkout(root: Path) -> Checkout:
    root.mkdir(parents=True, exist_ok=True)
    for name in (".venv", "examples", "golden"):
        link = root / name
        if not link.exists():
            link.symlink_to(PROJECT_ROOT / name)
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(PROJECT_ROOT / ".venv"),
        CANARY_LOCAL_BROKER_PORT=str(free_port()),
        CANARY_FLOWER_PORT=str(free_port()),
        CANARY_TORCH_THREADS="1",
        COLUMNS="200",
        PYTHONUNBUFFERED="1",
    )
    return Checkout(root, env)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checkout]:
    """A fresh checkout for the module; background processes are stopped afterwards."""
    place = make_checkout(tmp_path_factory.mktemp("checkout"))
    yield place
    place.stop_background()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1 (seed 1) and v2 (seed 2), built once per test process: what `canary models
    make-tiny` builds (test_readme runs those lines on an empty checkout)."""
    from tasks.tiny_model import make_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    for seed, version in enumerate(("v1", "v2"), start=1):
        make_tiny_model(root / version, seed)
    return root


@pytest.fixture(scope="module")
def running_stack(checkout: Checkout, tiny_models: Path) -> Checkout:
    """The checkout with tiny models, the schema and `canary up` running (one per module).
    The models are copied from the session's build; the make-tiny lines then find them
    built with the same seeds (and would fail if they were not)."""
    shutil.copytree(tiny_models, checkout.root / ".canary" / "models", dirs_exist_ok=True)
    checkout.run("canary models make-tiny v1 --seed 1 && canary models make-tiny v2 --seed 2")
    checkout.run("canary db init")
    checkout.stack = checkout.start_stack()
    return checkout
