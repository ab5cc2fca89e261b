"""benchmarks.daily_report times the report's metric functions by patching each on the
module that defines it (analysis.metrics' sufficient statistics, storage.metrics'
percentiles, failures and exposures): every one of them must be seen, under its label, with
its SQL statements counted, and the originals must be back afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis import metrics as m
from benchmarks import daily_report as bench
from storage import metrics as sql
from storage.db import get_engine, init_db

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("incremental", [False, True])
def test_every_timed_function_is_seen_under_its_label(tmp_path: Path, incremental: bool) -> None:
    engine = get_engine(f"sqlite:///{tmp_path / 'report.db'}")
    init_db(engine)
    bench.generate(engine, bench.Sizes(100, 1_000, 5_000))
    originals = {(module, name): getattr(module, name) for module, name in bench.TIMED}
    clock = bench.Clock()
    try:
        bench.run_report(engine, clock, incremental=incremental)
    finally:
        engine.dispose()

    assert {(module.__name__, name) for module, name in bench.TIMED} == {
        ("analysis.metrics", "sufficient_statistics"),
        ("analysis.metrics", "overall_and_daily_statistics"),
        ("analysis.metrics", "cumulative_statistics"),
        ("storage.metrics", "percentile_by_arm"),
        ("storage.metrics", "failures_by_kind"),
        ("storage.metrics", "exposures"),
    }
    assert all(getattr(module, name) is f for (module, name), f in originals.items())
    expected = {
        "latency_p95/overall", "latency_p95/daily", "failures/overall", "srm_exposures/overall",
        "dwell_vs_retention/overall",
        *(f"{metric.name}/overall+daily" for metric in m.METRICS),
    }  # fmt: skip
    assert expected <= set(clock.seconds), sorted(clock.seconds)
    assert any(label.endswith("/cumulative") for label in clock.seconds), sorted(clock.seconds)
    # every label names a metric (the incremental report's queries too), never "?"
    assert not any(label.startswith("?") for label in clock.seconds), sorted(clock.seconds)
    for label in expected:
        assert clock.statements[label] > 0, label
    # the patches are on the defining modules, so nothing stays on analysis.metrics
    assert not hasattr(m, "percentile_by_arm") and hasattr(sql, "percentile_by_arm")
