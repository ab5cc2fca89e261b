"""Smoke run of the measurement benchmarks (event ingestion, daily report) in --quick mode.

They start (a real uvicorn server, SQLite and the machine's PostgreSQL), finish and print
their figures in the documented format. Timings are never asserted; counts are, since the
quick sizes are fixed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from benchmarks.harness import FIGURE_LINE
from tests.integration.conftest import PROJECT_ROOT, TEST_POSTGRES_URL

pytestmark = pytest.mark.integration
NUMBER = r"[\d,]+"
METRICS = (
    "success_rate",
    "mean_peak_vram_gb",
    "long_dwell_share",
    "download_rate",
    "quick_retry_share",
    "negative_feedback_rate",
    "retention_7d",
    "generations_per_week",
    "trial_to_paid",
    "latency_p95",
    "dwell_vs_retention",
)


def run_quick(module: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", module, "--quick"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "BENCH_POSTGRES_URL": TEST_POSTGRES_URL},
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def as_int(text: str) -> int:
    return int(text.replace(",", ""))


def test_event_ingestion_quick_run_prints_rates_for_both_backends() -> None:
    out = run_quick("benchmarks.event_ingestion")
    for backend in ("sqlite", "postgresql"):
        http = re.search(
            rf"^{backend} HTTP: ({NUMBER}) events/s accepted \| target 5,000/s \| "
            rf"ratio (\d+\.\d\d)x \| request p50 [\d.]+ ms, p99 [\d.]+ ms \| 8 requests$",
            out,
            re.MULTILINE,
        )
        assert http, out
        rate = as_int(http.group(1))
        # the rate is printed rounded to whole events, the ratio from the exact rate
        assert rate > 0 and float(http.group(2)) == pytest.approx(rate / 5_000, abs=0.0051)
        direct = re.search(
            rf"^{backend} in-process \(EventIngestor\.ingest\): ({NUMBER}) events/s accepted "
            rf"\| ratio \d+\.\d\dx \| batch p50 [\d.]+ ms, p99 [\d.]+ ms$",
            out,
            re.MULTILINE,
        )
        assert direct and as_int(direct.group(1)) > 0, out
        checks = re.findall(
            rf"^  {backend} (?:HTTP|in-process): .*accepted ({NUMBER}), duplicates ({NUMBER}), "
            rf"rejected ({NUMBER}) as expected$",
            out,
            re.MULTILINE,
        )
        assert len(checks) == 2, out
        for counts in checks:  # every posted event is answered one way or another
            accepted, duplicates, rejected = map(as_int, counts)
            assert accepted > 0 and duplicates > 0 and rejected > 0
            assert accepted + duplicates + rejected == 2_000


def test_daily_report_quick_run_prints_times_for_both_backends() -> None:
    out = run_quick("benchmarks.daily_report")
    summaries = []
    for backend in ("sqlite", "postgresql"):
        generated = re.search(
            rf"^{backend} data generation: ({NUMBER}) users, ({NUMBER}) jobs, ({NUMBER}) events "
            rf"in [\d.]+ s \(",
            out,
            re.MULTILINE,
        )
        assert generated, out
        assert [as_int(g) for g in generated.groups()] == [1_000, 10_000, 100_000]
        report = re.search(
            rf"^{backend} report \(build_report, 14 days\): [\d.]+ s \| (\d+) queries "
            rf"\| peak RSS ({NUMBER}) MB$",
            out,
            re.MULTILINE,
        )
        assert report and int(report.group(1)) > 0 and as_int(report.group(2)) > 0, out
        section = out[report.end() :].split("\n\n")[0]
        for metric in METRICS:
            line = rf"^  {metric}: .*\d+\.\d\d s \(\d+ quer(y|ies)\)$"
            assert re.search(line, section, re.MULTILINE), section
        summary = re.search(
            r"^  users baseline [\d,]+, candidate [\d,]+; long-dwell lift [+-][\d.]+%; "
            r"daily rows 14; gate verdict (advance|hold|rollback)$",
            section,
            re.MULTILINE,
        )
        assert summary, section
        summaries.append(summary.group(0))
    # the same generated data gives the same report on both databases
    assert summaries[0] == summaries[1], summaries


def test_http_submit_quick_run_prints_both_servers_at_each_concurrency() -> None:
    """The API and the anchor each answer every request at each level (the run checks one
    job row and one queued message per accepted request, and exits non-zero otherwise)."""
    out = run_quick("benchmarks.http_submit")
    levels = re.findall(
        r"^  concurrency +(\d+): API +[\d,]+ jobs/s p50 +[\d.]+ ms p99 +[\d.]+ ms \| anchor "
        r"+[\d,]+ jobs/s p50 +[\d.]+ ms p99 +[\d.]+ ms$",
        out,
        re.MULTILINE,
    )
    assert levels == ["1", "4"], out
    figures = {m["key"]: m for m in FIGURE_LINE.finditer(out)}
    assert set(figures) == {
        "http_submit_vs_anchor", "http_submit_p99_ms", "http_submit_p50_ms",
        "http_submit_jobs_per_s", "http_anchor_jobs_per_s",
    }, out  # fmt: skip
    ratio, p99 = figures["http_submit_vs_anchor"], figures["http_submit_p99_ms"]
    assert (ratio["op"], ratio["target"], p99["op"], p99["target"]) == (">=", "0.7", "<=", "50")
    assert "postgresql" in p99["detail"] and "uvicorn worker(s)" in p99["detail"], out
