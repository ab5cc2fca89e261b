"""Smoke run of the command-exit benchmark (``benchmarks.cli_exit``) in --quick mode: it
finishes, prints every figure line and writes its result file. Timings are never
asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmark_runs import run_quick_benchmark

pytestmark = pytest.mark.integration
RUN_TIMEOUT_S = 300
FIGURES = {
    "cli_help_s",
    "cli_help_vs_without_exit_handler",
    "cli_db_init_s",
    "cli_db_init_vs_without_exit_handler",
    "worker_imports_exit_vs_without_exit_handler",
}


@pytest.mark.timeout(RUN_TIMEOUT_S + 200)
def test_cli_exit_quick_run_prints_every_figure(tmp_path: Path, redis_url: str) -> None:
    out, printed = run_quick_benchmark("benchmarks.cli_exit", tmp_path, redis_url, RUN_TIMEOUT_S)
    assert set(printed) == FIGURES, out
    for key in ("cli_help_vs_without_exit_handler", "cli_db_init_vs_without_exit_handler"):
        assert (printed[key].group("op"), printed[key].group("target")) == ("<=", "0.9"), out
    data = json.loads((tmp_path / "cli_exit.quick.json").read_text())
    assert data["quick"] is True and {f["key"] for f in data["figures"]} == FIGURES
