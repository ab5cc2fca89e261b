"""Smoke run of the cold-cache assignment benchmark (``benchmarks.cold_assignment``) in
--quick mode, on SQLite and the machine's PostgreSQL.

It starts, checks every decision and stored row itself (exiting non-zero otherwise),
finishes and prints its figures and breakdown in the documented format. Timings are never
asserted; the per-user statement counts are, since they say whether the batched paths
batch.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.integration.conftest import PROJECT_ROOT, TEST_POSTGRES_URL

pytestmark = pytest.mark.integration
NUMBER = r"[\d,]+"
PATHS = ("single", "api-batch", "bulk")


def test_cold_assignment_quick_run_prints_each_path_on_both_backends() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.cold_assignment", "--quick"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "BENCH_POSTGRES_URL": TEST_POSTGRES_URL},
        timeout=180,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for backend in ("sqlite", "postgresql"):
        for path in PATHS:
            target = "" if path == "single" else r" \| target 5,000/s: (met|NOT met)"
            figure = re.search(
                rf"^{backend} {path}: ({NUMBER}) first exposures/s \| \d+\.\d\dx single"
                rf"{target} \| rounds {NUMBER}$",
                out,
                re.MULTILINE,
            )
            assert figure and int(figure.group(1).replace(",", "")) > 0, out
            breakdown = re.search(
                rf"^  {backend} {path} per user: ([\d.]+) statements, [\d.]+ transactions, "
                rf"[\d.]+ connection check-outs; \d+ us = SQL \d+ \+ commit/rollback \d+ \+ "
                rf"rest -?\d+$\n    statements \(us\) per user: (.*)$",
                out,
                re.MULTILINE,
            )
            assert breakdown, out
            statements = float(breakdown.group(1))
            phases = breakdown.group(2)
            for phase in ("stored reads", "attribute look-ups", "first-exposure inserts"):
                assert phase in phases, phases
            if path == "single":
                assert statements >= 3, out  # a read, the look-ups and an insert per user
            else:
                assert statements < 0.2, out  # a few statements per batch, not per user
