"""Gate evaluation: every guardrail, the promotion rule, and what each failure means."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from analysis.gates import GatePolicy, GatePolicyError, evaluate, load_policy

DAYS = ["2026-11-14", "2026-11-15", "2026-11-16"]


def comparison(baseline: float, candidate: float, p: float = 0.5) -> dict[str, Any]:
    return {
        "baseline": baseline,
        "candidate": candidate,
        "lift": candidate - baseline,
        "relative_lift": candidate / baseline - 1 if baseline else None,
        "sequential_p_value": p,
    }


def green_report() -> dict[str, Any]:
    return {
        "users": {"baseline": 500, "candidate": 500},
        "metrics": {
            "success_rate": {"overall": comparison(0.998, 0.997)},
            "mean_peak_vram_gb": {"overall": comparison(18.0, 19.0)},
            "negative_feedback_rate": {"overall": comparison(0.02, 0.021, p=0.6)},
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
