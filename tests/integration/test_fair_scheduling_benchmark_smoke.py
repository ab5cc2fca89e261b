"""Smoke run of the fair-scheduling benchmark (``benchmarks.fair_scheduling``) in --quick
mode: three configurations, each with two real workers on the tiny model, on this
session's Redis database.

It finishes, prints its figure lines and table, and writes a result file whose outcomes
hold every configuration. Timings are never asserted; counts are, since the quick sizes
are fixed (every B and interactive job of the uncapped configurations ran).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import fair_scheduling
from tests.benchmark_runs import run_quick_benchmark

pytestmark = pytest.mark.integration
RUN_TIMEOUT_S = 840
FIGURES = {
    "interactive_wait_p95_renders",
    "interactive_wait_p50_s",
    "interactive_wait_p95_s",
    "tenant_b_completion_vs_alone",
    "busy_fraction_delta",
    "throughput_vs_single_queue",
}


@pytest.mark.timeout(RUN_TIMEOUT_S + 200)
def test_fair_scheduling_quick_run_writes_every_configuration(
    tmp_path: Path, clean_redis: str
) -> None:
    # three configurations, two workers each: minutes on a loaded 2-core machine
    out, printed = run_quick_benchmark(
        "benchmarks.fair_scheduling", tmp_path, clean_redis, RUN_TIMEOUT_S
    )
    assert set(printed) >= FIGURES, out
    for key in FIGURES:
        assert float(printed[key].group("value")) >= 0, out
    assert "Fair scheduling: one version, two workers" in out

    data = json.loads((tmp_path / "fair_scheduling.quick.json").read_text())
    assert data["quick"] is True and {f["key"] for f in data["figures"]} == FIGURES
    outcomes = data["extra"]["outcomes"]
    assert set(outcomes) == set(fair_scheduling.CONFIGS)
    quick = fair_scheduling.QUICK
    for config in ("alone", "classes"):
        outcome = outcomes[config]
        assert outcome["complete"], outcome
        assert outcome["b_done"] == quick["b_jobs"], outcome
        assert outcome["interactive_started"] == quick["interactive"], outcome
        assert 0 < outcome["busy"] <= 1, outcome
        assert outcome["throughput"] > 0, outcome
    assert 0 < outcomes["single"]["busy"] <= 1, outcomes["single"]
