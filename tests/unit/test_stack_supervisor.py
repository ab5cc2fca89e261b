"""`canary up`'s supervisor: restart with backoff, give up after fast failures, leave a
retired worker stopped, stop everything gracefully on SIGTERM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from canary.cli.stack import build_processes
from canary.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The supervisor starts processes: run it in a fresh interpreter, as `canary up` does,
# not inside the test process, whose other threads (earlier tests') can deadlock a fork.
# ``script`` runs in a thread next to the supervisor (``sup``), then SIGTERMs it.
SUPERVISE = """
import io, json, os, signal, sys, threading, time
from honcho.printer import Printer
from canary.cli.supervisor import RestartPolicy, Supervisor

spec = json.loads(sys.argv[1])
output = io.StringIO()
policy = RestartPolicy(**spec["policy"])
sup = Supervisor(lambda name: name in spec["expected"], printer=Printer(output), policy=policy)
for name, command in spec["processes"].items():
    sup.add_process(name, command)

def pid(name):
    unit = sup._units[name]
    return unit.popen.pid if unit.state == "running" else None

def wait(condition, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        time.sleep(0.05)
    return condition()

def drive():
    time.sleep(0.5)
    exec(spec["script"], {"sup": sup, "pid": pid, "wait": wait, "os": os, "signal": signal,
                           "time": time, "report": report})
    os.kill(os.getpid(), signal.SIGTERM)

report = {}
threading.Thread(target=drive, daemon=True).start()
started = time.monotonic()
sup.loop()
report.update(elapsed=time.monotonic() - started, code=sup.exit_code, states=sup.states(),
              output=output.getvalue())
print(json.dumps(report))
"""
FAST = {"backoff_s": 0.1, "backoff_max_s": 0.4, "fast_s": 2.0, "max_fast_failures": 3}


def supervise(processes: dict, script: str, expected=(), **policy) -> dict:  # type: ignore[no-untyped-def]
    spec = {
        "processes": processes, "script": script, "expected": list(expected),
        "policy": {**FAST, **policy},
    }  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", SUPERVISE, json.dumps(spec)],
        capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT, check=True,
    )  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_killed_process_is_restarted_and_the_others_are_untouched() -> None:
    report = supervise(
        {"worker-v1": "sleep 60", "worker-v2": "sleep 60"},
        """
first, other = pid("worker-v1"), pid("worker-v2")
os.kill(first, signal.SIGKILL)
report["restarted"] = wait(lambda: pid("worker-v1") not in (None, first))
report["other_same"] = pid("worker-v2") == other
""",
        fast_s=0.1,  # it ran longer than that: a slow failure, first backoff
    )
    out = report["output"]
    assert report["restarted"] and report["other_same"], out
    assert "worker-v1 exited with code -9; restarting in 0.1 s (restart 1)" in out
    assert "worker-v2 exited" not in out
    assert report["code"] == 143 and "SIGTERM received; stopping everything" in out
    assert report["states"] == {"worker-v1": "stopped", "worker-v2": "stopped"}


def test_a_process_that_always_fails_fast_is_given_up_and_the_rest_runs_on() -> None:
    report = supervise(
        {"flower": "echo boom; exit 3", "beat": "sleep 60"},
        """
report["gave_up"] = wait(lambda: sup.states()["flower"] == "given up")
report["beat_running"] = sup.states()["beat"] == "running"
""",
    )
    out = report["output"]
    assert report["gave_up"] and report["beat_running"], out
    # backoff doubles: 0.1 s, then 0.2 s; the third fast failure gives up
    assert "flower exited with code 3; restarting in 0.1 s (restart 1)" in out
    assert "flower exited with code 3; restarting in 0.2 s (restart 2)" in out
    assert (
        "flower exited with code 3; giving up on it: it failed 3 times in a row, each within "
        "2 s of starting (see its log); the rest of the stack keeps running"
    ) in out
    assert out.count("boom") == 3
    assert report["code"] == 143  # then SIGTERM stopped beat


def test_a_retired_workers_exit_is_not_restarted() -> None:
    report = supervise(
        {"worker-v1": "sleep 0.3; exit 0", "beat": "sleep 60"},
        'report["retired"] = wait(lambda: sup.states()["worker-v1"] == "retired")',
        expected={"worker-v1"},
    )
    assert report["retired"]
    assert "worker-v1 stopped: its version is retired; the rest runs on" in report["output"]
    assert "restarting" not in report["output"]


def test_sigterm_gives_each_process_its_warm_shutdown_then_kills_after_the_grace() -> None:
    # "warm" finishes its work within the grace after SIGTERM; "stuck" ignores SIGTERM
    warm = "trap 'sleep 0.5; echo warm done; exit 0' TERM; while :; do sleep 0.1; done"
    stuck = "trap '' TERM; while :; do sleep 0.1; done"
    report = supervise({"warm": warm, "stuck": stuck}, "", stop_grace_s=2.0)
    out = report["output"]
    assert "sending SIGTERM to warm" in out and "sending SIGTERM to stuck" in out
    assert "warm done" in out and "still running after 2 s: sending SIGKILL to stuck" in out
    assert "sending SIGKILL to warm" not in out
    assert 2.0 <= report["elapsed"] < 10 and report["code"] == 143


def test_retired_versions_get_no_worker(tmp_path: Path) -> None:
    processes = build_processes(Settings(home=tmp_path), {}, retired={"v1"})
    assert "worker-v1" not in processes and "worker-v2" in processes
