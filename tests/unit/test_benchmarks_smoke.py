"""Smoke run of the benchmarks: they start, finish and print their figures (no timings)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_assignment_benchmark_quick_run_prints_the_figure() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.assignment", "--quick"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    headline = re.search(
        r"^pure assignment \(segment_of \+ Assigner\.decide\): ([\d,]+) assignments/s "
        r"\| target 200,000/s \| ratio (\d+\.\d\d)x$",
        out,
        re.MULTILINE,
    )
    assert headline, out
    rate = int(headline.group(1).replace(",", ""))
    assert rate > 0
    assert float(headline.group(2)) == round(rate / 200_000, 2)
    assert re.search(r"raw bucket\(\): [\d,]+ hashes/s", out), out
    assert re.search(r"sticky path, SQLite, 200 users: warm cache [\d,]+ assignments/s", out), out
    for segment in ("new_user", "high_frequency", "style_preference", "everyone_else"):
        assert segment in out
