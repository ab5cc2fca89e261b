"""Smoke run of the shadow-traffic benchmark (``benchmarks.shadow``) in --quick mode: a
baseline and a candidate worker on the tiny model, on this session's Redis database.

It finishes, prints its figure lines and table, and writes a result file with both modes'
streams and the burst. Timings are never asserted; counts are, since the quick sizes are
fixed: every live job of each stream ran, no copy was made while shadow was paused, and
the burst left exactly the bound queued and skipped the rest of its samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import shadow
from tests.benchmark_runs import run_quick_benchmark

pytestmark = pytest.mark.integration
RUN_TIMEOUT_S = 600
FIGURES = {
    "live_wait_p95_shadow_on_vs_off",
    "shadow_completed_per_min",
    "shadow_backlog_vs_bound",
    "shadow_queue_broker_kib",
}


@pytest.mark.timeout(RUN_TIMEOUT_S + 200)
def test_shadow_quick_run_measures_both_modes_and_the_burst(
    tmp_path: Path, clean_redis: str
) -> None:
    out, printed = run_quick_benchmark("benchmarks.shadow", tmp_path, clean_redis, RUN_TIMEOUT_S)
    assert set(printed) >= FIGURES, out
    assert printed["shadow_backlog_vs_bound"].group("met") == "met", out
    assert "Shadow traffic: live queue wait, shadow off and on" in out

    data = json.loads((tmp_path / "shadow.quick.json").read_text())
    assert data["quick"] is True and {f["key"] for f in data["figures"]} == FIGURES
    streams = data["extra"]["streams"]
    quick = shadow.QUICK
    assert [s["mode"] for s in streams] == list(shadow.MODES) * quick["rounds"]
    for stream in streams:
        assert stream["live"] == len(stream["waits_s"]) == quick["live"], stream
        assert 0 < stream["candidate_busy"] <= 1, stream
    assert all(s["shadow_sampled"] == 0 for s in streams if s["mode"] == "off"), streams
    burst = data["extra"]["burst"]
    assert burst["jobs"] == burst["live_queued"] == quick["burst"], burst
    assert burst["shadow_queued"] == quick["max_queued"], burst
    assert burst["sampled"] == burst["shadow_queued"] + burst["skipped_full"], burst
    assert burst["shadow_queue_bytes"] > 0, burst
