"""Smoke run of the worker benchmarks (real broker, workers, database): each quick mode
starts, finishes and prints its figures in the documented format. No timing is asserted."""

from __future__ import annotations

import json

import pytest

from benchmarks.harness import FIGURE_LINE
from tests.benchmark_runs import run_quick_benchmark

RUN_TIMEOUT_S = 600
# the first test's set-up runs the benchmark: time out after it would have been stopped
pytestmark = [pytest.mark.integration, pytest.mark.timeout(RUN_TIMEOUT_S + 200)]

EXPECTED = {
    "end_to_end": {"end_to_end_efficiency", "end_to_end_jobs_per_s"},
    "overhead": {"overhead_median_ms", "overhead_p99_ms", "worker_jobs_per_s"},
    "busy": {"busy_fraction", "handover_median_ms", "busy_fraction_claim_in_task"},
    "bulk_submit": {
        "bulk_submit_vs_apply_async",
        "bulk_submit_jobs_per_s",
        "apply_async_jobs_per_s",
        "apply_async_no_sent_event_jobs_per_s",
    },
    "micro_batch": {
        "micro_batch_1_images_per_s",
        "micro_batch_2_images_per_s",
        "micro_batch_max_pixel_diff",
    },
    "memory": {"worker_rss_growth_mib", "worker_rss_peak_mib"},
}
TARGETED = {
    "end_to_end_efficiency": (">=", 0.95),
    "overhead_median_ms": ("<=", 10.0),
    "busy_fraction": (">=", 0.99),
    "handover_median_ms": ("<=", 0.5),
    "bulk_submit_vs_apply_async": (">=", 2.0),
    "micro_batch_max_pixel_diff": ("<=", 2.0),
    "worker_rss_growth_mib": ("<=", 16.0),
}


@pytest.fixture(scope="module")
def quick_run(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """``benchmarks.all --quick``; stopped with SIGTERM if the test times out, so that it
    stops its workers (a SIGKILL once left one running after a timed-out run)."""
    out = tmp_path_factory.mktemp("bench")
    stdout, _ = run_quick_benchmark("benchmarks.all", out, redis_url, RUN_TIMEOUT_S)
    return stdout, json.loads((out / "quick.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_benchmark_prints_its_figures(quick_run: tuple[str, dict], name: str) -> None:
    stdout, data = quick_run
    printed = {m["key"]: m for m in FIGURE_LINE.finditer(stdout)}
    assert EXPECTED[name] <= printed.keys(), stdout
    (report,) = [r for r in data["reports"] if r["name"] == name]
    assert {f["key"] for f in report["figures"]} == EXPECTED[name]
    for figure in report["figures"]:
        line = printed[figure["key"]]
        assert float(line["value"]) == pytest.approx(figure["value"], rel=1e-3, abs=1e-3)
        if figure["key"] in TARGETED:
            op, target = TARGETED[figure["key"]]
            assert (line["op"], float(line["target"])) == (op, target)
            assert line["met"] == ("met" if figure["met"] else "NOT met")


def test_results_name_the_machine(quick_run: tuple[str, dict]) -> None:
    _, data = quick_run
    assert data["quick"] is True
    assert data["machine"]["cores"] >= 1 and data["machine"]["torch"]
