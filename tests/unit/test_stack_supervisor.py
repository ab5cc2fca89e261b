"""`canary up`'s supervisor: a retired worker's exit leaves the rest of the stack running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from canary.settings import Settings
from canary.stack import build_processes

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Honcho forks its process runners: run it in a fresh interpreter, as `canary up` does,
# not inside the test process, whose other threads (earlier tests') can deadlock a fork.
SUPERVISE = """
import io, json, sys, time
from honcho.printer import Printer
from canary.stack import Supervisor

expected = set(json.loads(sys.argv[1]))
output = io.StringIO()
supervisor = Supervisor(lambda name: name in expected, printer=Printer(output))
supervisor.add_process("worker-v1", "sleep 0.3; exit 0")  # shut down by `canary retire`
supervisor.add_process("flower", "sleep 2; exit 3")  # later, a real failure
supervisor.add_process("beat", "sleep 30")
started = time.monotonic()
supervisor.loop()
elapsed = time.monotonic() - started
print(json.dumps([elapsed, supervisor.exit_code, output.getvalue()]))
"""


def run(expected: set[str]) -> tuple[float, int, str]:
    result = subprocess.run(
        [sys.executable, "-c", SUPERVISE, json.dumps(sorted(expected))],
        capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT, check=True,
    )  # fmt: skip
    elapsed, code, output = json.loads(result.stdout.strip().splitlines()[-1])
    return elapsed, code, output


def test_a_retired_workers_exit_does_not_stop_the_others() -> None:
    elapsed, code, output = run(expected={"worker-v1"})
    assert "worker-v1 stopped: its version is retired; the rest runs on" in output
    assert elapsed >= 1.9  # beat and flower ran on after worker-v1 left
    assert code == 3  # flower's failure still stops everything and is the exit code
    assert "sending SIGTERM to beat" in output


def test_any_other_exit_stops_the_whole_stack_as_honcho_does() -> None:
    elapsed, code, output = run(expected=set())
    assert elapsed < 1.9 and "sending SIGTERM to flower" in output and code == 0


def test_retired_versions_get_no_worker(tmp_path: Path) -> None:
    processes = build_processes(Settings(home=tmp_path), {}, retired={"v1"})
    assert "worker-v1" not in processes and "worker-v2" in processes
