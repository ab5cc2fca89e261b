"""Gate evaluation: every guardrail, the promotion rule, and what each failure means."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from analysis.gates import GatePolicy, GatePolicyError, evaluate, load_policy

DAYS = ["2026-11-14", "2026-11-15", "2026-11-16"]


def comparison(
    baseline: float, candidate: float, p: float = 0.5, half: float = 0.02
) -> dict[str, Any]:
    """A comparison whose relative intervals are the relative lift +- ``half``."""
    relative = candidate / baseline - 1 if baseline else None
    ci = {"low": relative - half, "high": relative + half} if relative is not None else None
    return {
        "baseline": baseline,
        "candidate": candidate,
        "lift": candidate - baseline,
        "relative_lift": relative,
        "relative_ci": ci,
        "sequential_relative_ci": ci,
        "sequential_p_value": p,
    }


def green_report() -> dict[str, Any]:
    return {
        "users": {"baseline": 500, "candidate": 500},
        "metrics": {
            "success_rate": {"overall": comparison(0.998, 0.997)},
            "mean_peak_vram_gb": {"overall": comparison(18.0, 19.0)},
            "negative_feedback_rate": {"overall": comparison(0.02, 0.021, p=0.6)},
            "download_rate": {"overall": comparison(0.30, 0.30, p=0.9)},
            "quick_retry_share": {"overall": comparison(0.10, 0.08, p=0.01)},
            "long_dwell_share": {
                "daily": [{"day": d, "comparison": comparison(0.30, 0.34)} for d in DAYS]
            },
        },
        "latency_p95": {"overall": {"candidate": {"value": 6200.0, "n": 900}}},
        "srm": {
            "overall": {
                "baseline": 500,
                "candidate": 500,
                "expected_candidate_share": 0.5,
                "p_value": 0.9,
            }
        },
        "golden": {"run_id": "nightly-2026-11-16", "baseline_s": 2, "candidate_s": 2},
    }


def verdict_of(report: dict[str, Any], policy: GatePolicy | None = None) -> tuple[str, str]:
    result = evaluate(report, policy or GatePolicy())
    return result.verdict.value, " | ".join(result.reasons)


def test_all_green_advances() -> None:
    verdict, reasons = verdict_of(green_report())
    assert verdict == "advance"
    assert "+13.3%" in reasons


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda r: r["metrics"]["success_rate"]["overall"].update(candidate=0.985), "success rate"),
        (lambda r: r["latency_p95"]["overall"]["candidate"].update(value=9100.0), "P95 latency"),
        (lambda r: r["metrics"]["mean_peak_vram_gb"]["overall"].update(candidate=22.0), "VRAM"),
        (
            lambda r: r["metrics"]["negative_feedback_rate"].update(
                overall=comparison(0.02, 0.03, p=0.001)
            ),
            "negative feedback",
        ),
        (lambda r: r["golden"].update(candidate_s=5), "golden set"),
    ],
)
def test_a_guardrail_breach_rolls_back(change, fragment: str) -> None:  # type: ignore[no-untyped-def]
    report = copy.deepcopy(green_report())
    change(report)
    verdict, reasons = verdict_of(report)
    assert verdict == "rollback" and fragment in reasons


def test_srm_holds_by_default_and_rolls_back_when_configured() -> None:
    report = green_report()
    report["srm"]["overall"]["p_value"] = 1e-6
    assert verdict_of(report)[0] == "hold"
    strict = GatePolicy.model_validate({"guardrails": {"on_srm": "rollback"}})
    assert verdict_of(report, strict)[0] == "rollback"


def test_promotion_rule_needs_every_one_of_the_last_days_and_fewer_retries() -> None:
    report = green_report()
    report["metrics"]["long_dwell_share"]["daily"][1]["comparison"] = comparison(0.30, 0.31)
    verdict, reasons = verdict_of(report)
    assert verdict == "hold" and "+3.3%" in reasons
    report = green_report()
    report["metrics"]["long_dwell_share"]["daily"] = report["metrics"]["long_dwell_share"]["daily"][
        1:
    ]
    assert verdict_of(report)[0] == "hold"  # only two days of data
    report = green_report()
    report["metrics"]["quick_retry_share"]["overall"] = comparison(0.10, 0.12)
    assert verdict_of(report)[0] == "hold"


def test_too_few_users_hold_but_a_breach_still_rolls_back() -> None:
    report = green_report()
    report["users"] = {"baseline": 40, "candidate": 35}
    verdict, reasons = verdict_of(report)
    assert verdict == "hold" and "sample size" in reasons
    report["metrics"]["success_rate"]["overall"]["candidate"] = 0.5
    assert verdict_of(report)[0] == "rollback"


def test_policy_file_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "gates.yaml"
    path.write_text("guardrails:\n  success_rate_min: 1.5\n  colour: blue\n")
    with pytest.raises(GatePolicyError) as caught:
        load_policy(path)
    assert "guardrails.success_rate_min" in str(caught.value)
    assert "guardrails.colour" in str(caught.value)
    assert load_policy(None).guardrails.p95_latency_max_ms == 8500


def test_guardrails_are_a_holm_family() -> None:
    """p = 0.02 would breach alone; across three guardrails Holm needs < 0.05/3 for the
    smallest p, so a single 0.02 is not a breach, 0.01 is."""
    report = green_report()
    report["metrics"]["negative_feedback_rate"]["overall"] = comparison(0.02, 0.03, p=0.02)
    verdict, reasons = verdict_of(report)
    assert verdict == "advance", reasons
    assert "Holm-adjusted over 3 guardrails 0.06" in reasons
    report["metrics"]["negative_feedback_rate"]["overall"] = comparison(0.02, 0.03, p=0.01)
    assert verdict_of(report)[0] == "rollback"
    # a significant *improvement* is not a breach; a significant drop in downloads is
    report["metrics"]["negative_feedback_rate"]["overall"] = comparison(0.03, 0.02, p=1e-6)
    assert verdict_of(report)[0] == "advance"
    report["metrics"]["download_rate"]["overall"] = comparison(0.30, 0.25, p=1e-6)
    verdict, reasons = verdict_of(report)
    assert verdict == "rollback" and "downloads per generation not worse" in reasons
    # the family comes from the policy
    narrow = GatePolicy.model_validate({"guardrails": {"must_not_worsen": ["success_rate"]}})
    assert verdict_of(report, narrow)[0] == "advance"
    with pytest.raises(ValueError, match="unknown metrics"):
        GatePolicy.model_validate({"guardrails": {"must_not_worsen": ["typo_rate"]}})


def test_a_guardrail_without_data_holds_not_fails() -> None:
    report = green_report()
    report["metrics"]["download_rate"]["overall"] = None
    result = evaluate(report, GatePolicy())
    check = next(c for c in result.checks if c.name.startswith("downloads"))
    assert result.verdict.value == "hold" and check.status == "insufficient"


def srm_joint(p: float, worst_adjusted: float, mismatch: bool) -> dict[str, Any]:
    return {
        "overall": {"baseline": 500, "candidate": 500, "expected_candidate_share": 0.5,
                    "p_value": 0.67, "mismatch": False},
        "joint": {"statistic": 30.0, "df": 4, "p_value": p, "worst": "sim/new_user",
                  "min_adjusted_p_value": worst_adjusted, "alpha": 0.001, "mismatch": mismatch},
        "segments": {"sim/new_user": {"baseline": 60, "candidate": 140,
                                      "expected_candidate_share": 0.5,
                                      "adjusted_p_value": worst_adjusted}},
    }  # fmt: skip


def test_the_gate_reads_the_joint_split_check_not_the_pooled_one() -> None:
    report = green_report()
    report["srm"] = srm_joint(3e-5, 2e-8, mismatch=True)
    verdict, reasons = verdict_of(report)
    assert verdict == "hold"
    assert "most off: sim/new_user" in reasons and "pooled p 0.67" in reasons
    report["srm"] = srm_joint(0.4, 0.9, mismatch=False)
    assert verdict_of(report)[0] == "advance"


def test_promotion_evidence_point_vs_intervals() -> None:
    """Daily lifts of +13% whose intervals reach down to +3%: the literal rule passes, the
    interval readings do not, and the pass is flagged as resting on noise."""
    report = green_report()
    daily = report["metrics"]["long_dwell_share"]["daily"]
    for row in daily:
        row["comparison"] = comparison(0.30, 0.34, half=0.10)
    report["metrics"]["long_dwell_share"]["last_days"] = comparison(0.30, 0.34, half=0.07)
    literal = evaluate(report, GatePolicy())
    assert literal.verdict.value == "advance"
    assert literal.promotion is not None and literal.promotion["rests_on_noise"]
    for evidence in ("daily_interval", "pooled_always_valid"):
        strict = GatePolicy.model_validate({"promotion": {"evidence": evidence}})
        result = evaluate(report, strict)
        assert result.verdict.value == "hold", evidence
        assert "rests on noise" in " ".join(result.reasons)
    # narrow intervals clear the threshold: both readings pass, nothing rests on noise
    for row in daily:
        row["comparison"] = comparison(0.30, 0.34, half=0.02)
    report["metrics"]["long_dwell_share"]["last_days"] = comparison(0.30, 0.34, half=0.01)
    for evidence in ("daily_interval", "pooled_always_valid"):
        strict = GatePolicy.model_validate({"promotion": {"evidence": evidence}})
        result = evaluate(report, strict)
        assert result.verdict.value == "advance", (evidence, result.reasons)
        assert result.promotion is not None and not result.promotion["rests_on_noise"]
    # the interval readings also need quick retries down for sure, not just on average
    report["metrics"]["quick_retry_share"]["overall"] = comparison(0.10, 0.09, half=0.2)
    strict = GatePolicy.model_validate({"promotion": {"evidence": "pooled_always_valid"}})
    assert evaluate(report, strict).verdict.value == "hold"
    assert evaluate(report, GatePolicy()).verdict.value == "advance"


def test_the_tuning_size_is_per_experiment_else_the_stage_plan() -> None:
    planning = GatePolicy.model_validate(
        {"planning": {"planned_users_per_arm": {"default": 5000, "5%": 800},
                      "tuning_users_per_arm": {"big-test": 40000}}}
    ).planning  # fmt: skip
    assert planning.tuning_users_per_arm_for("small-test", "5%") == 800
    assert planning.tuning_users_per_arm_for("small-test", "50%") == 5000
    assert planning.tuning_users_per_arm_for("big-test", "5%") == 40000
    with pytest.raises(ValueError, match="default"):
        GatePolicy.model_validate({"planning": {"planned_users_per_arm": {"5%": 800}}})
