"""A small process supervisor for `canary up`: restart with backoff, give up, stop gracefully.

Honcho's Manager stops every process as soon as one exits and has no restart, so the local
stack runs its processes here instead (honcho's printer and colours are kept for the
prefixed, coloured output). What it does, as a process manager would:

- A process that exits while the stack runs is restarted after a backoff that doubles on
  each failure in a row (``backoff_s``, ``2 * backoff_s``, ... up to ``backoff_max_s``); a
  process that ran longer than ``fast_s`` before exiting starts a new streak.
- After ``max_fast_failures`` exits in a row, each within ``fast_s`` of starting, it gives
  that process up, says so, and keeps the others running.
- A process whose exit ``expected`` accepts (a retired version's worker) is not restarted.
- Watched services (the embedded broker, which runs in this process's hands, not as a
  child command) are checked every second and restarted under the same rules.
- SIGINT/SIGTERM stop everything: SIGTERM to each process itself (a Celery worker's warm
  shutdown: it finishes its running job; its pool children are not signalled directly),
  SIGKILL to its process group after ``stop_grace_s``; a second signal kills at once.

Every process runs in its own session (process group), so Ctrl-C in the terminal reaches
only the supervisor, and a crashed process's leftover children (a worker's pool) are
killed with it instead of running on as orphans.
"""

from __future__ import annotations

import datetime
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from honcho.colour import get_colours
from honcho.printer import Message, Printer

SYSTEM = "system"
SIGNAL_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
POLL_S = 0.1
WATCH_EVERY_S = 1.0


@dataclass(frozen=True)
class RestartPolicy:
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    fast_s: float = 10.0  # an exit within this long of starting is a fast failure
    max_fast_failures: int = 5  # fast failures in a row before giving a process up
    stop_grace_s: float = 60.0  # how long a process may take to stop before SIGKILL

    def delay(self, streak: int) -> float:
        """Backoff before the next start; ``streak`` counts fast failures in a row."""
        factor: int = 2 ** max(streak - 1, 0)  # typeshed types int ** int as Any
        return min(self.backoff_s * factor, self.backoff_max_s)


@dataclass
class _Unit:
    """One supervised thing: a child command, or a watched in-process service."""

    name: str
    colour: Any = None
    command: str | Sequence[str] = ()
    env: dict[str, str] | None = None
    # watched services only: is it alive, and (re)start it
    alive: Callable[[], bool] | None = None
    start: Callable[[], None] | None = None
    popen: subprocess.Popen[bytes] | None = None
    state: str = "new"  # running, waiting (restart due), stopped, given up, retired
    started_at: float = 0.0
    restart_at: float = 0.0
    restarts: int = 0
    streak: int = 0  # fast failures in a row
    misses: int = 0  # watched services: failed checks in a row
    readers: list[threading.Thread] = field(default_factory=list)

    @property
    def watched(self) -> bool:
        return self.alive is not None


class Supervisor:
    def __init__(
        self,
        expected: Callable[[str], bool] = lambda name: False,
        printer: Printer | None = None,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.expected = expected
        self.policy = policy or RestartPolicy()
        self._printer = printer if printer is not None else Printer(sys.stdout)
        self._printer.width = len(SYSTEM)
        self._colours = get_colours()
        self._units: dict[str, _Unit] = {}
        self._lines: queue.Queue[Message] = queue.Queue()
        self._signals: list[int] = []
        self._stopping_since: float | None = None
        self._killed = False
        self.returncode: int | None = None  # the signal's code (130, 143), if signalled

    # ---------------------------------------------------------------- setup
    def add_process(
        self, name: str, command: str | Sequence[str], env: dict[str, str] | None = None
    ) -> None:
        """A command: a string runs under ``/bin/sh -c``, a list is executed directly (so
        signals reach the program itself, not a shell)."""
        self._add(_Unit(name, next(self._colours), command=command, env=env))

    def watch(self, name: str, alive: Callable[[], bool], start: Callable[[], None]) -> None:
        """An in-process service (already started): checked every second, restarted by
        ``start()`` when ``alive()`` fails twice in a row."""
        unit = _Unit(name, next(self._colours), alive=alive, start=start)
        unit.state, unit.started_at = "running", time.monotonic()
        self._add(unit)

    def _add(self, unit: _Unit) -> None:
        assert unit.name not in self._units, "process names must be unique"
        self._units[unit.name] = unit
        self._printer.width = max(self._printer.width, len(unit.name))

    # ---------------------------------------------------------------- output
    def _print(self, name: str, data: str | bytes, colour: Any = None) -> None:
        now = datetime.datetime.now()
        self._printer.write(Message("line", data, now, name, colour))

    def notice(self, text: str, about: str | None = None) -> None:
        """A supervisor line in the multiplexed output, and in ``about``'s own log."""
        self._print(SYSTEM, text + "\n")
        also = getattr(self._printer, "log_only", None)
        if about is not None and also is not None:
            also(about, f"[canary up] {text}\n")

    def _drain(self) -> None:
        while True:
            try:
                message = self._lines.get_nowait()
            except queue.Empty:
                return
            self._printer.write(message)

    # ---------------------------------------------------------------- processes
    def _spawn(self, unit: _Unit) -> None:
        unit.started_at = time.monotonic()
        unit.misses = 0
        if unit.watched:
            assert unit.start is not None
            unit.start()
            unit.state = "running"
            self.notice(f"{unit.name} started", about=unit.name)
            return
        argv = unit.command
        if isinstance(argv, str):
            argv = ["/bin/sh", "-c", argv]
        unit.popen = subprocess.Popen(
            list(argv), env=unit.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True,
        )  # fmt: skip
        unit.state = "running"
        reader = threading.Thread(
            target=self._read, args=(unit.name, unit.colour, unit.popen.stdout), daemon=True
        )
        reader.start()
        unit.readers.append(reader)
        self.notice(f"{unit.name} started (pid={unit.popen.pid})", about=unit.name)

    def _read(self, name: str, colour: Any, stream: IO[bytes]) -> None:
        with stream:
            for line in iter(stream.readline, b""):
                self._lines.put(Message("line", line, datetime.datetime.now(), name, colour))

    def _signal_group(self, unit: _Unit, signum: int, group: bool) -> None:
        if unit.popen is None:
            return
        try:
            if group:
                os.killpg(unit.popen.pid, signum)
            elif unit.popen.poll() is None:
                unit.popen.send_signal(signum)
        except (ProcessLookupError, PermissionError):
            pass

    def _exited(self, unit: _Unit) -> int | None:
        """The exit code if the unit just stopped (a watched one: failed two checks)."""
        if unit.watched:
            assert unit.alive is not None
            unit.misses = 0 if unit.alive() else unit.misses + 1
            return -1 if unit.misses >= 2 else None
        assert unit.popen is not None
        code = unit.popen.poll()
        if code is not None:
            # whatever the process left behind in its group (a worker's pool children)
            self._signal_group(unit, signal.SIGKILL, group=True)
        return code

    def _on_exit(self, unit: _Unit, code: int) -> None:
        now = time.monotonic()
        ran = now - unit.started_at
        what = "stopped answering" if unit.watched else f"exited with code {code}"
        if self._stopping_since is not None:
            unit.state = "stopped"
            self.notice(f"{unit.name} stopped (rc={code})", about=unit.name)
            return
        if self.expected(unit.name):
            unit.state = "retired"
            self.notice(
                f"{unit.name} stopped: its version is retired; the rest runs on", about=unit.name
            )
            return
        unit.streak = unit.streak + 1 if ran < self.policy.fast_s else 0
        if unit.streak >= self.policy.max_fast_failures:
            unit.state = "given up"
            self.notice(
                f"{unit.name} {what}; giving up on it: it failed {unit.streak} times in a "
                f"row, each within {self.policy.fast_s:g} s of starting (see its log); the "
                "rest of the stack keeps running",
                about=unit.name,
            )
            return
        delay = self.policy.delay(unit.streak)
        unit.restarts += 1
        unit.state, unit.restart_at = "waiting", now + delay
        self.notice(
            f"{unit.name} {what}; restarting in {delay:g} s (restart {unit.restarts})",
            about=unit.name,
        )

    # ---------------------------------------------------------------- loop
    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def loop(self) -> None:
        """Start everything and supervise until a signal stops the stack (or nothing is
        left to supervise)."""
        previous = {s: signal.signal(s, self._on_signal) for s in SIGNAL_CODES}
        try:
            for unit in self._units.values():
                if not unit.watched:
                    self._spawn(unit)
            self._loop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for unit in self._units.values():
                for reader in unit.readers:
                    reader.join(timeout=2)
            self._drain()

    def _loop(self) -> None:
        last_watch = time.monotonic()
        while True:
            self._drain()
            self._handle_signals()
            now = time.monotonic()
            check_watched = now - last_watch >= WATCH_EVERY_S
            if check_watched:
                last_watch = now
            for unit in self._units.values():
                if unit.state == "running" and (check_watched or not unit.watched):
                    code = self._exited(unit)
                    if code is not None:
                        self._drain()  # its last lines before the notice
                        self._on_exit(unit, code)
                elif (
                    unit.state == "waiting"
                    and self._stopping_since is None
                    and now >= unit.restart_at
                ):
                    self._restart(unit)
            if self._stopping_since is not None:
                children = [u for u in self._units.values() if not u.watched]
                if all(u.state != "running" for u in children):
                    return
                if not self._killed and now - self._stopping_since > self.policy.stop_grace_s:
                    self._kill_all(f"still running after {self.policy.stop_grace_s:g} s")
            elif all(u.state in {"given up", "retired", "stopped"} for u in self._units.values()):
                self.notice("nothing left to supervise; exiting")
                return
            time.sleep(POLL_S)

    def _restart(self, unit: _Unit) -> None:
        try:
            self._spawn(unit)
        except Exception as exc:  # a watched service's start, or an exec that failed
            unit.state = "running"
            self.notice(f"{unit.name} could not be started: {exc}", about=unit.name)
            self._on_exit(unit, -1)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            name = signal.Signals(signum).name
            if self._stopping_since is None:
                self.notice(f"{name} received; stopping everything")
                self.returncode = SIGNAL_CODES.get(signal.Signals(signum), 1)
                self.stop()
            elif not self._killed:
                self._kill_all(f"second {name}")

    def stop(self) -> None:
        """SIGTERM to every running process (its warm shutdown)."""
        if self._stopping_since is not None:
            return
        self._stopping_since = time.monotonic()
        for unit in self._units.values():
            if unit.state == "waiting":
                unit.state = "stopped"
            elif unit.state == "running" and not unit.watched and unit.popen is not None:
                self.notice(f"sending SIGTERM to {unit.name} (pid {unit.popen.pid})")
                self._signal_group(unit, signal.SIGTERM, group=False)

    def _kill_all(self, why: str) -> None:
        self._killed = True
        for unit in self._units.values():
            if unit.state == "running" and unit.popen is not None:
                self.notice(f"{why}: sending SIGKILL to {unit.name} (pid {unit.popen.pid})")
                self._signal_group(unit, signal.SIGKILL, group=True)

    @property
    def exit_code(self) -> int:
        """130/143 when a signal stopped the stack; else 1 if a process was given up."""
        if self.returncode is not None:
            return self.returncode
        return 1 if any(u.state == "given up" for u in self._units.values()) else 0

    def states(self) -> dict[str, str]:
        return {name: unit.state for name, unit in self._units.items()}
