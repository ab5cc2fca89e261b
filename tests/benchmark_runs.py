"""Running a benchmark module's --quick mode as its own process, as a person would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.harness import FIGURE_LINE

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def run_quick_benchmark(
    module: str, output: Path, redis_url: str, timeout_s: float
) -> tuple[str, dict[str, re.Match[str]]]:
    """``python -m MODULE --quick --output OUTPUT`` on ``redis_url``; asserts it exited 0
    and returns its standard output with its figure lines by key. On timeout the benchmark
    gets SIGTERM, which stops its workers before it exits."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--quick", "--output", str(output)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "REDIS_URL": redis_url},
    )
    try:
        out, err = process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.terminate()
            process.communicate(timeout=180)
    assert process.returncode == 0, out + err
    return out, {m.group("key"): m for m in FIGURE_LINE.finditer(out)}
