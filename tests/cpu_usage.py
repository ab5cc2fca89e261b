"""Where the suite's CPU goes: a pytest plugin (off unless asked for) that records, per
test, its wall time, the CPU of the test process itself and the CPU of the processes it
waited for (workers, `canary up` stacks, CLI commands, servers), then prints the files
that cost most.

    .venv/bin/python -m pytest -n 2 --dist worksteal -p tests.cpu_usage

Child CPU is counted when a child is reaped, so a module-scoped stack is charged to the
test that stopped it; add up by file. Render workers forked from the test fork server
(tests/worker_processes.py) are reaped by that server, not by the test: their CPU is in
neither column (``CANARY_TEST_FORKSERVER=0`` counts them). Records go to
``.pytest-cpu.jsonl`` in the directory pytest runs in (each xdist process appends its own
lines; a second run started there meanwhile deletes the first's); the summary is printed
by the process that reports. It also names each background thread of a test process that
used CPU during the tests of three or more files: a thread a test left running (one such
spinning thread once cost the suite 7 CPU-min, charged as "own" CPU to later tests).
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

RECORDS = Path(".pytest-cpu.jsonl")
SHOWN = 20


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def pytest_sessionstart(session: pytest.Session) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # the controller, or a run without xdist
        RECORDS.unlink(missing_ok=True)


_TICKS = os.sysconf("SC_CLK_TCK")
BUSY_THREAD_S = 0.1  # a background thread using more CPU than this during a test is named


def _thread_cpu_seconds() -> dict[str, float]:
    """CPU of each Python thread except the main one, by name and native id (Linux)."""
    usage = {}
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.native_id is None:
            continue
        try:
            stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
        except OSError:  # ended meanwhile, or not Linux
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state is field 3
        usage[f"{thread.name}#{thread.native_id}"] = (int(fields[11]) + int(fields[12])) / _TICKS
    return usage


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    started = time.monotonic()
    own = _cpu_seconds(resource.RUSAGE_SELF)
    children = _cpu_seconds(resource.RUSAGE_CHILDREN)
    threads_before = _thread_cpu_seconds()
    yield
    threads_after = _thread_cpu_seconds()
    record = {
        "test": item.nodeid,
        "wall_s": round(time.monotonic() - started, 3),
        "own_cpu_s": round(_cpu_seconds(resource.RUSAGE_SELF) - own, 3),
        "children_cpu_s": round(_cpu_seconds(resource.RUSAGE_CHILDREN) - children, 3),
        "process": os.environ.get("PYTEST_XDIST_WORKER", "main"),
        # threads still alive after the test: one left running charges its CPU to the
        # tests after it (their "own" CPU), so a leak shows up here
        "threads": sorted(
            t.name for t in threading.enumerate() if t is not threading.main_thread()
        ),
        # background threads that used CPU during the test, started before it or by it
        "busy_threads": {
            thread: round(cpu - threads_before.get(thread, 0.0), 2)
            for thread, cpu in threads_after.items()
            if cpu - threads_before.get(thread, 0.0) > BUSY_THREAD_S
        },
    }
    with RECORDS.open("a") as out:  # one short line per write: appends do not interleave
        out.write(json.dumps(record) + "\n")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") or not RECORDS.exists():
        return
    by_file: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0])
    # a background thread busy during the tests of several files outlived its own test
    thread_cpu: dict[tuple[str, str], float] = defaultdict(float)
    thread_files: dict[tuple[str, str], set[str]] = defaultdict(set)
    for line in RECORDS.read_text().splitlines():
        record = json.loads(line)
        for thread, cpu in record.get("busy_threads", {}).items():
            key = (record["process"], thread)
            thread_cpu[key] += cpu
            thread_files[key].add(record["test"].split("::")[0])
        totals = by_file[record["test"].split("::")[0]]
        totals[0] += record["wall_s"]
        totals[1] += record["own_cpu_s"]
        totals[2] += record["children_cpu_s"]
        totals[3] += 1
    own = sum(t[1] for t in by_file.values())
    children = sum(t[2] for t in by_file.values())
    write = terminalreporter.write_line
    terminalreporter.section("CPU by test file (tests.cpu_usage)")
    write(f"all files: {own / 60:.1f} CPU-min in the test processes, "
          f"{children / 60:.1f} CPU-min in the processes they started")  # fmt: skip
    write(f"{'CPU s':>8} {'own':>7} {'children':>9} {'wall s':>8} {'tests':>6}  file")
    ranked = sorted(by_file.items(), key=lambda kv: -(kv[1][1] + kv[1][2]))
    for path, (wall, own_s, children_s, count) in ranked[:SHOWN]:
        write(
            f"{own_s + children_s:8.1f} {own_s:7.1f} {children_s:9.1f} {wall:8.1f} "
            f"{int(count):6d}  {path}"
        )
    leaked = sorted((k for k, files in thread_files.items() if len(files) >= 3),
                    key=lambda k: -thread_cpu[k])  # fmt: skip
    for process, thread in leaked:
        files = thread_files[process, thread]
        write(f"LEAKED THREAD? {thread} in {process}: {thread_cpu[process, thread]:.1f} CPU-s "
              f"during the tests of {len(files)} files")  # fmt: skip
