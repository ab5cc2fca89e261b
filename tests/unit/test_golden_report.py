"""Golden report numbers on a hand-made set of grades, and the interval they rest on."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.golden.cases import Level
from analysis.golden.html import render_report_html
from analysis.golden.report import build_report, consensus
from analysis.proportions import paired_difference, wilson
from canary.settings import Settings
from storage.models import GoldenGrade, GoldenResult, GoldenRun, Job, JobStatus
from tests.golden_fixtures import small_set

GOLDEN_SET, TEXT = small_set(Settings(), cases_per_category=2)

# case -> (baseline v1, candidate v2); each side: (grades by grader, automatic level)
SCENARIO: dict[str, tuple[tuple[dict[str, str], str | None], tuple[dict[str, str], str | None]]] = {
    "pose-001": (({"alice": "pass", "bob": "pass"}, None), ({"alice": "pass"}, None)),
    "pose-002": (({"alice": "pass"}, None), ({"alice": "pass"}, "S")),  # hard failure wins
    "lighting-001": (({"alice": "B", "bob": "pass"}, None), ({"bob": "pass"}, None)),
    "lighting-002": (({"alice": "A", "bob": "A", "carol": "pass"}, None), ({"bob": "pass"}, None)),
    "material-001": (({"alice": "pass"}, None), ({"alice": "pass"}, None)),
    "material-002": (({}, None), ({"alice": "pass"}, None)),  # baseline ungraded
    "style-001": (({"alice": "pass"}, None), ({}, "A")),  # the scorer's A, no human grade
    "style-002": (({"alice": "S"}, None), ({"alice": "B"}, None)),
}  # fmt: skip


def scenario_report() -> dict:
    run = GoldenRun(
        id="r1", trigger="manual", set_name="test-golden", set_sha256=GOLDEN_SET.sha256,
        set_text=TEXT, case_count=8, baseline="v1", candidate="v2", status="COMPLETE",
    )  # fmt: skip
    rows, grades = [], []
    for case in GOLDEN_SET.cases:
        for version, (by_grader, auto) in zip(("v1", "v2"), SCENARIO[case.id], strict=True):
            job_id = f"{case.id}-{version}"
            failed = auto == "S"
            job = Job(
                id=job_id, model_version=version, prompt=case.prompt, seed=case.seed, steps=2,
                guidance=7.5, width=64, height=64,
                status=JobStatus.FAILED if failed else JobStatus.SUCCEEDED,
                failure_kind="oom" if failed else None,
            )  # fmt: skip
            result = GoldenResult(
                run_id="r1", case_id=case.id, version=version, job_id=job_id,
                category=case.category, auto_level=auto, auto_reason="oom" if failed else None,
            )  # fmt: skip
            rows.append((result, job))
            grades += [
                GoldenGrade(run_id="r1", case_id=case.id, version=version, grader=g, level=lv)
                for g, lv in by_grader.items()
            ]
    return build_report(run, rows, grades)


def test_consensus_is_the_most_common_grade_ties_to_the_more_severe() -> None:
    assert consensus(["pass", "pass", "A"]) == Level.PASS
    assert consensus(["B", "pass"]) == Level.B
    assert consensus(["A", "S", "A", "S"]) == Level.S
    assert consensus([]) is None


def test_pass_rates_and_levels_per_version() -> None:
    report = scenario_report()
    v1, v2 = report["versions"]["v1"]["overall"], report["versions"]["v2"]["overall"]
    assert v1["levels"] == {"pass": 4, "B": 1, "A": 1, "S": 1, "ungraded": 1}
    assert v2["levels"] == {"pass": 5, "B": 1, "A": 1, "S": 1, "ungraded": 0}
    assert (v1["graded"], v1["images"]) == (7, 8)
    assert v1["pass_rate"] == pytest.approx(4 / 7)
    assert v2["pass_rate"] == pytest.approx(5 / 8)
    interval = wilson(4, 7)
    assert v1["pass_rate_ci"] == [pytest.approx(interval.low), pytest.approx(interval.high)]
    pose = report["versions"]["v2"]["categories"]["pose_control"]
    assert pose["levels"]["pass"] == 1 and pose["levels"]["S"] == 1
    assert report["s_level"] == {"v1": 1, "v2": 1}
    assert report["graders"] == ["alice", "bob", "carol"]


def test_paired_difference_changed_cases_and_hard_failures() -> None:
    report = scenario_report()
    overall = report["difference"]["overall"]
    # pairs with a level on both sides: 7 (material-002's baseline is ungraded)
    # both pass 2, only candidate 2, only baseline 2, both fail 1
    assert overall["pairs"] == 7
    assert overall["estimate"] == pytest.approx(0.0)
    assert (overall["improved"], overall["regressed"]) == (2, 2)
    assert overall["p_value"] == pytest.approx(1.0)
    expected = paired_difference(2, 2, 2, 1).interval
    assert overall["ci"] == [pytest.approx(expected.low), pytest.approx(expected.high)]
    changed = {
        c["case_id"]: (c["baseline"], c["candidate"], c["direction"]) for c in report["changed"]
    }
    assert changed == {
        "pose-002": ("pass", "S", "worse"),
        "lighting-001": ("B", "pass", "better"),
        "lighting-002": ("A", "pass", "better"),
        "style-001": ("pass", "A", "worse"),
        "style-002": ("S", "B", "better"),
    }
    assert [(f["case_id"], f["version"], f["reason"]) for f in report["hard_failures"]] == [
        ("pose-002", "v2", "oom")
    ]
    lighting = report["difference"]["categories"]["lighting_narrative"]
    assert lighting["estimate"] == pytest.approx(1.0) and lighting["pairs"] == 2


def test_html_report_has_the_chart_and_tables() -> None:
    html = render_report_html(scenario_report())
    assert "<svg" in html and "Pass rate by category" in html
    assert "pose-002" in html and "57.1%" in html and "62.5%" in html


def test_newcombe_interval_matches_the_published_example() -> None:
    # Cavo et al. 2012 via Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency
    # Tables" ch. 8: table (59, 6 / 16, 80) -> -0.0621 (95% CI -0.1186 to -0.0046)
    result = paired_difference(both_pass=59, only_candidate=6, only_baseline=16, both_fail=80)
    assert result.interval.estimate == pytest.approx(-0.0621, abs=5e-5)
    assert result.interval.low == pytest.approx(-0.1186, abs=5e-5)
    assert result.interval.high == pytest.approx(-0.0046, abs=5e-5)


@pytest.mark.slow
def test_newcombe_interval_covers_the_true_difference_at_about_95_percent() -> None:
    # a known joint distribution of (baseline, candidate) outcomes over 50 paired cases:
    # both pass .60, only baseline .15, only candidate .05, both fail .20 -> true diff -0.10
    rng = np.random.default_rng(7)
    probabilities = [0.60, 0.05, 0.15, 0.20]  # both, only candidate, only baseline, neither
    truth = (0.60 + 0.05) - (0.60 + 0.15)
    trials = 4000
    tables = rng.multinomial(50, probabilities, size=trials)
    covered = sum(
        (i := paired_difference(*map(int, table)).interval).low <= truth <= i.high
        for table in tables
    )
    assert 0.93 <= covered / trials <= 0.975


def one_sided_report(baseline: str, candidate: str, cases: int | None = None) -> dict:
    """Every case graded ``baseline`` on v1 and ``candidate`` on v2 (first ``cases`` only)."""
    run = GoldenRun(
        id="r2", trigger="manual", set_name="test-golden", set_sha256=GOLDEN_SET.sha256,
        set_text=TEXT, case_count=8, baseline="v1", candidate="v2", status="COMPLETE",
    )  # fmt: skip
    rows, grades = [], []
    for case in GOLDEN_SET.cases[:cases]:
        for version, level in (("v1", baseline), ("v2", candidate)):
            job_id = f"{case.id}-{version}"
            job = Job(
                id=job_id, model_version=version, prompt=case.prompt, seed=case.seed, steps=2,
                guidance=7.5, width=64, height=64, status=JobStatus.SUCCEEDED,
            )  # fmt: skip
            rows.append(
                (GoldenResult(run_id="r2", case_id=case.id, version=version, job_id=job_id,
                              category=case.category), job)
            )  # fmt: skip
            grades.append(
                GoldenGrade(run_id="r2", case_id=case.id, version=version, grader="g", level=level)
            )
    return build_report(run, rows, grades)


def test_zero_and_full_pass_rates_have_intervals_that_contain_them() -> None:
    report = one_sided_report("A", "pass")
    for category, block in report["versions"]["v1"]["categories"].items():
        assert block["pass_rate"] == 0.0, category
        low, high = block["pass_rate_ci"]
        assert low == 0.0 and 0.0 < high < 1.0  # exactly 0: the estimate is inside
    for block in report["versions"]["v2"]["categories"].values():
        low, high = block["pass_rate_ci"]
        assert block["pass_rate"] == 1.0 and high == 1.0 and 0.0 < low < 1.0
    # 0 of 8 with 95% confidence: Wilson's upper bound is z^2 / (n + z^2)
    z2 = 1.959963984540054**2
    assert report["versions"]["v1"]["overall"]["pass_rate_ci"] == [
        0.0,
        pytest.approx(z2 / (8 + z2)),
    ]


@pytest.mark.parametrize(
    ("baseline", "candidate", "cases"),
    [("A", "pass", None), ("pass", "S", None), ("pass", "pass", None), ("S", "S", 1),
     ("pass", "B", 1)],
)  # fmt: skip
def test_html_report_renders_extreme_and_single_case_reports(
    baseline: str, candidate: str, cases: int | None
) -> None:
    report = one_sided_report(baseline, candidate, cases)
    html = render_report_html(report)
    assert "<svg" in html and "Pass rate by category" in html
    expected = {"pass": "100.0%", "A": "0.0%", "S": "0.0%", "B": "0.0%"}
    assert expected[baseline] in html and expected[candidate] in html
    if cases == 1:
        assert list(report["versions"]["v1"]["categories"]) == ["pose_control"]
        assert report["versions"]["v1"]["overall"]["graded"] == 1
