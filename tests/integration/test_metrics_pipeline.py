"""Simulated traffic through the real pipeline, then the A/B report from SQL.

The traffic simulator (analysis.simulation) sends users' generations through the real
gateway (sticky assignment with segments read from the database), records them with the
producer's rows and a worker's outcomes, and posts their events through the event
ingestor (validation, ownership, dedupe; with duplicate and invalid events mixed in).
Then: the SQL's sufficient statistics equal numpy's on the simulator's own records, and
build_report finds (or does not find) what was put in. Fixed seeds: deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from analysis import metrics as m
from analysis.experiment_report import build_report
from analysis.gates import GatePolicy, Guardrails, Planning
from analysis.simulation.generate import Simulator
from analysis.simulation.model import Effects, SimulationSpec
from analysis.simulation.pipeline import (
    EXPERIMENT,
    STAGE,
    PipelineDriver,
    PipelineRun,
    write_experiment_file,
)
from analysis.simulation.reduce import Reducer
from analysis.simulation.truth import true_values
from canary.settings import Settings
from gateway.experiments import load_config
from gateway.segments import SegmentRules
from storage import metrics as storage_metrics
from storage.db import get_engine
from storage.metrics import Key, Window
from tests.integration.conftest import VERSIONS, fresh_database_url

pytestmark = pytest.mark.integration
# short histories are enough to tell creators apart with a lower threshold
RULES = SegmentRules(high_frequency_min_generations=6)
SHARES = {"default": 0.5, "new_user": 0.3}  # new users are shielded a little
POLICY = GatePolicy(
    guardrails=Guardrails(min_users_per_arm=30, golden_s_not_worse=False),
    # these experiments plan for a few hundred users: the always-valid test is tuned to that
    planning=Planning(planned_users_per_arm={"default": 150}),
)
DWELL_VS_RETENTION = m.MetricDef(
    "dwell_vs_retention", "", m.VALUE, storage_metrics.dwell_vs_retention, True
)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, postgres_schema_url: str) -> str:
    return fresh_database_url(request.param, tmp_path, postgres_schema_url)


@dataclass
class Simulated:
    run: PipelineRun
    report: dict[str, Any]
    engine: Any

    def overall(self, metric: str) -> dict[str, Any]:
        return self.report["metrics"][metric]["overall"]

    def check(self, name: str) -> dict[str, Any]:
        return next(c for c in self.report["gates"]["checks"] if c["name"] == name)


def simulate(url: str, tmp_path: Path, spec: SimulationSpec, seed: int) -> Simulated:
    engine = get_engine(url)
    path = write_experiment_file(tmp_path / "simulated.yaml", spec, *VERSIONS)
    settings = Settings(
        database_url=url, experiment_file=path, versions=list(VERSIONS), home=tmp_path / "home"
    )
    run = PipelineDriver(settings, engine, path, Simulator(spec, seed), run_id=f"s{seed}").run()
    experiment = load_config(path, list(VERSIONS)).experiment(EXPERIMENT)
    return Simulated(run, build_report(engine, experiment, run.first, run.last, POLICY), engine)


def assert_same(sql: dict[Key, m.Sufficient], truth: dict[Key, m.Sufficient], what: str) -> None:
    assert set(sql) == set(truth), f"{what}: keys differ: {set(sql) ^ set(truth)}"
    for key, found in sql.items():
        pairs = zip(found.astuple(), truth[key].astuple(), strict=True)
        assert all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in pairs), (
            f"{what} {key}: SQL {found} != simulated {truth[key]}"
        )


AB = SimulationSpec(
    users=200,
    days=9,  # the first day's cohort reaches 7-day retention
    pre_days=3,
    shares=SHARES,
    rules=RULES,
    effects=Effects(dwell=0.8, quick_retry=-0.6),
)


def test_the_sql_equals_the_simulated_truth_and_a_large_effect_is_found(
    database_url: str, tmp_path: Path
) -> None:
    simulated = simulate(database_url, tmp_path, AB, seed=5)
    run, engine = simulated.run, simulated.engine
    sim = run.simulation
    # (i) the SQL metric definitions, recomputed from the simulator's own records
    reducer = Reducer(sim)
    window = Window.days(run.experiment, run.first, run.last)
    for metric in (*m.METRICS, DWELL_VS_RETENTION):
        for by_day in (False, True):
            sql = m.sufficient_statistics(engine, metric.units, window, by_day=by_day)
            assert sql, metric.name
            assert_same(sql, reducer.sufficient(metric.name, by_day=by_day), metric.name)
    for by_day in (False, True):
        assert storage_metrics.percentile_by_arm(
            engine, window, 0.95, by_day=by_day
        ) == reducer.percentile(0.95, by_day=by_day)
    assert storage_metrics.failures_by_kind(engine, window) == reducer.failures_by_kind()
    exposures = {
        (seg, arm): n for stage, seg, arm, n in storage_metrics.exposures(engine, run.experiment)
    }
    assert exposures == reducer.exposures() and {s for s, _ in exposures} == {
        "new_user", "high_frequency", "style_preference", "everyone_else",
    }  # fmt: skip
    # the client's duplicates and invalid events were all kept out
    assert run.events.duplicates > 0 and run.events.rejected > 0
    assert run.events.accepted == len(reducer.sim.events)

    # (ii) the effect, with the right sign, inside the interval; the gates advance
    truth = true_values(AB, ["long_dwell_share", "quick_retry_share"], users=10_000)
    dwell, retries = simulated.overall("long_dwell_share"), simulated.overall("quick_retry_share")
    assert dwell["significant"] and dwell["lift"] > 0
    assert dwell["lift_ci"]["low"] <= truth["long_dwell_share"].lift <= dwell["lift_ci"]["high"]
    assert retries["lift"] < 0
    assert (
        retries["lift_ci"]["low"] <= truth["quick_retry_share"].lift <= retries["lift_ci"]["high"]
    )
    assert simulated.report["srm"]["overall"]["mismatch"] is False
    assert simulated.report["gates"]["verdict"] == "advance", simulated.report["gates"]["reasons"]
    correlation = simulated.report["dwell_retention_correlation"]["baseline"]
    assert correlation is not None and correlation["n"] > 10


def test_an_aa_run_finds_nothing_and_the_gates_hold(database_url: str, tmp_path: Path) -> None:
    """No effect: nothing significant, the promotion rule fails, no guardrail breaks.

    The promotion rule reads daily point estimates (> +8% on each of the last 3 days), not
    significance: in memory, 0.75% of A/A runs of this size pass it (5.5% at 150 users).
    """
    spec = SimulationSpec(users=400, days=5, pre_days=0, shares=SHARES, rules=RULES)
    simulated = simulate(database_url, tmp_path, spec, seed=8)
    report = simulated.report
    for name, section in report["metrics"].items():
        if section["overall"] is not None:
            assert not section["overall"]["significant"], name
    # every metric x scope row with enough users is in one BH family; none is called
    tested = [
        c
        for section in report["metrics"].values()
        for c in [section["overall"], section["cuped"], *section["segments"].values()]
        if c is not None and c["sequential_q_value"] is not None
    ]
    assert len(tested) == report["statistics"]["exploratory_family"] >= 10
    assert all(c["q_value"] >= c["p_value"] and not c["significant"] for c in tested)
    # the guardrail family: Holm-adjusted, no breach; lift-over-time charts' data is there
    family = [c for c in report["gates"]["checks"] if c["name"].endswith("not worse")]
    assert len(family) == 3 and all(c["status"] == "pass" for c in family)
    assert all("Holm-adjusted over 3 guardrails" in c["detail"] for c in family)
    cumulative = report["metrics"]["long_dwell_share"]["cumulative"]
    assert len(cumulative) == spec.days
    last = cumulative[-1]["comparison"]
    assert last["n_baseline"] == report["metrics"]["long_dwell_share"]["overall"]["n_baseline"]
    # intervals inside their ranges; a power plan for each promotion metric
    for section in report["metrics"].values():
        for day in section["daily"]:
            c = day["comparison"]
            if c and section["scale"] == "rate":
                assert c["baseline_ci"]["low"] >= 0 and c["candidate_ci"]["high"] <= 1
    assert [p["metric"] for p in report["power"]] == ["long_dwell_share", "quick_retry_share"]
    assert report["power"][0]["mde"] > 0 and report["power"][1]["mde"] < 0
    assert report["gates"]["promotion"]["readings"]["daily_interval"] is False
    assert simulated.report["srm"]["overall"]["mismatch"] is False
    assert simulated.report["srm"]["joint"]["mismatch"] is False
    assert simulated.report["gates"]["verdict"] == "hold"
    assert simulated.check("promotion rule")["status"] == "fail"
    assert all(
        c["status"] == "pass"
        for c in simulated.report["gates"]["checks"]
        if c["breach"] == "rollback"
    )


def test_a_broken_split_trips_the_srm_alarm(database_url: str, tmp_path: Path) -> None:
    """A candidate client that loses half of its users' traffic before the gateway."""
    spec = SimulationSpec(
        users=300, days=2, pre_days=0, shares=SHARES, rules=RULES, broken_split=0.5
    )
    simulated = simulate(database_url, tmp_path, spec, seed=3)
    srm = simulated.report["srm"]
    assert srm["overall"]["mismatch"] and srm["overall"]["p_value"] < 0.001
    assert srm["overall"]["candidate"] < srm["overall"]["baseline"]
    assert f"{STAGE}/everyone_else" in srm["segments"]
    check = simulated.check("sample ratio")
    assert check["status"] == "fail" and check["breach"] == "hold"
    assert simulated.report["gates"]["verdict"] == "hold"


def test_a_failing_candidate_is_rolled_back(database_url: str, tmp_path: Path) -> None:
    spec = SimulationSpec(
        users=120, days=2, pre_days=0, shares=SHARES, rules=RULES, effects=Effects(failure=25.0)
    )
    simulated = simulate(database_url, tmp_path, spec, seed=4)
    success = simulated.overall("success_rate")
    assert success["candidate"] < POLICY.guardrails.success_rate_min < success["baseline"]
    assert sum(simulated.report["failures"]["candidate"].values()) > 5
    assert simulated.check("success rate")["status"] == "fail"
    assert simulated.report["gates"]["verdict"] == "rollback"


def test_a_broken_segment_trips_the_joint_split_check(database_url: str, tmp_path: Path) -> None:
    """New users over-enrolled in the candidate (90% of their baseline users lost before the
    gateway): the pooled test stays quiet, the gate's split check holds and names the
    segment, and the dashboard says which."""
    from analysis.dashboard import render_dashboard

    spec = SimulationSpec(
        users=600, days=2, pre_days=0, shares=SHARES, rules=RULES,
        broken_segments={"new_user": -0.9},
    )  # fmt: skip
    simulated = simulate(database_url, tmp_path, spec, seed=6)
    srm = simulated.report["srm"]
    cell = srm["segments"][f"{STAGE}/new_user"]
    assert cell["candidate"] > cell["baseline"] and cell["mismatch"]
    assert srm["overall"]["p_value"] > 0.001  # the pooled test alone would not alarm
    assert srm["joint"]["mismatch"] and srm["joint"]["worst"] == f"{STAGE}/new_user"
    check = simulated.check("sample ratio")
    assert check["status"] == "fail" and check["breach"] == "hold"
    assert f"most off: {STAGE}/new_user" in check["detail"]
    assert simulated.report["gates"]["verdict"] == "hold"
    html = render_dashboard(simulated.report)
    assert f"most clearly in <b>{STAGE}/new_user</b>" in html
