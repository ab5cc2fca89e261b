"""Stopping a benchmark run stops its workers: `python -m benchmarks.all` that gets
SIGTERM (an operator's `kill`, or a test's timeout) leaves no render worker running. It
once did: the default action ended the run at once, and its workers, in sessions of their
own, kept running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import PROJECT_ROOT

pytestmark = pytest.mark.integration


def _workers_of(run: psutil.Process) -> list[psutil.Process]:
    workers = []
    for child in run.children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:  # ended meanwhile
            continue
        if "canary.cli" in command and " worker " in f"{command} ":
            workers.append(child)
    return workers


def test_sigterm_to_a_benchmark_run_stops_its_workers(clean_redis: str, tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.all",
            "--quick",
            "--only",
            "overhead",
            "--output",
            str(tmp_path),
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "REDIS_URL": clean_redis},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run = psutil.Process(process.pid)
    workers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while not workers and time.monotonic() < deadline and process.poll() is None:
            workers = _workers_of(run)
            time.sleep(0.2)
        assert workers, "the benchmark started no worker"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 128 + signal.SIGTERM
        _gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for worker in workers:
            if worker.is_running():
                worker.kill()
