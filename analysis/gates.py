"""The gate's evaluation: advance, hold or roll back, with every reason.

The policy (analysis.gates_policy) names the limits. A guardrail breach means roll back;
advancing needs every guardrail green and the promotion rule met; anything else holds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal

from analysis.gates_policy import (
    GatePolicy,
    GatePolicyError,
    Guardrails,
    Planning,
    Promotion,
    load_policy,
)
from analysis.guardrails import worsening
from analysis.metrics import METRICS
from analysis.promotion import evaluate_promotion

HIGHER_IS_BETTER = {metric.name: metric.higher_is_better for metric in METRICS}
LABELS = {metric.name: metric.label for metric in METRICS}

__all__ = [
    "Check",
    "GateEvaluation",
    "GatePolicy",
    "GatePolicyError",
    "Guardrails",
    "Planning",
    "Promotion",
    "Verdict",
    "evaluate",
    "load_policy",
]


class Verdict(StrEnum):
    ADVANCE = "advance"
    HOLD = "hold"
    ROLLBACK = "rollback"


@dataclass
class Check:
    name: str
    status: Literal["pass", "fail", "insufficient"]
    detail: str
    breach: Verdict | None = None  # what a failure means (rollback or hold)


@dataclass
class GateEvaluation:
    verdict: Verdict
    reasons: list[str]
    checks: list[Check] = field(default_factory=list)
    promotion: dict[str, Any] | None = None  # analysis.promotion's three readings

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "reasons": self.reasons,
            "promotion": self.promotion,
            "checks": [
                asdict(c) | {"breach": c.breach.value if c.breach else None} for c in self.checks
            ],
        }


def _overall(report: dict[str, Any], metric: str) -> dict[str, Any] | None:
    overall: dict[str, Any] | None = report["metrics"].get(metric, {}).get("overall")
    return overall


def _limit(
    name: str,
    value: float | None,
    limit: float,
    kind: Literal["minimum", "maximum"],
    unit: str,
    missing: str,
    *,
    missing_passes: bool = False,
) -> Check:
    """A candidate guardrail with a fixed limit; breaching it means roll back."""
    if value is None:
        return Check(name, "pass" if missing_passes else "insufficient", missing)
    ok = value >= limit if kind == "minimum" else value <= limit
    detail = f"candidate {unit.format(value)} ({kind} {unit.format(limit)})"
    return Check(name, "pass" if ok else "fail", detail, Verdict.ROLLBACK)


def evaluate(report: dict[str, Any], policy: GatePolicy) -> GateEvaluation:
    """Apply the policy to an experiment report (analysis.experiment_report)."""
    g, p = policy.guardrails, policy.promotion
    checks: list[Check] = []
    users = report["users"]
    enough = min(users.get("baseline", 0), users.get("candidate", 0)) >= g.min_users_per_arm
    checks.append(
        Check(
            "sample size",
            "pass" if enough else "insufficient",
            f"users: baseline {users.get('baseline', 0)}, candidate {users.get('candidate', 0)} "
            f"(at least {g.min_users_per_arm} each)",
        )
    )

    success = _overall(report, "success_rate")
    p95 = report["latency_p95"]["overall"].get("candidate")
    vram = _overall(report, "mean_peak_vram_gb")
    checks += [
        _limit(
            "success rate", success["candidate"] if success is not None else None,
            g.success_rate_min, "minimum", "{:.4%}", "no finished jobs in both arms",
        ),
        _limit(
            "P95 latency", p95 and p95["value"], g.p95_latency_max_ms, "maximum", "{:,.0f} ms",
            "no successful candidate jobs",
        ),
        _limit(
            "peak VRAM", vram["candidate"] if vram is not None else None, g.peak_vram_max_gb,
            "maximum", "{:.2f} GB", "no VRAM recorded (CPU workers)", missing_passes=True,
        ),
    ]  # fmt: skip

    checks += _worsening_checks(report, policy)
    checks.append(_srm_check(report, g))

    golden = report.get("golden")
    if g.golden_s_not_worse:
        if golden is None:
            checks.append(Check("golden set", "insufficient", "no complete golden run"))
        else:
            worse = golden["candidate_s"] > golden["baseline_s"]
            checks.append(
                Check(
                    "golden set",
                    "fail" if worse else "pass",
                    f"S-level images in {golden['run_id']}: candidate {golden['candidate_s']}, "
                    f"baseline {golden['baseline_s']}",
                    Verdict.ROLLBACK,
                )
            )

    shadow = _shadow_check(report.get("shadow"))
    if shadow is not None:
        checks.append(shadow)

    promotion = evaluate_promotion(
        report["metrics"].get(p.metric, {}).get("daily", []),
        report["metrics"].get(p.metric, {}).get("last_days"),
        _overall(report, p.must_decrease) if p.must_decrease else None,
        p,
    )
    checks.append(_promotion_check(promotion, p))

    breaches = [c for c in checks if c.status == "fail" and c.breach == Verdict.ROLLBACK]
    if breaches:  # safety first: a breach rolls back even before the sample is large
        verdict, shown = Verdict.ROLLBACK, breaches
    else:
        blocking = [c for c in checks if c.status != "pass"]
        verdict, shown = (Verdict.HOLD, blocking) if blocking else (Verdict.ADVANCE, checks)
    return GateEvaluation(verdict, [f"{c.name}: {c.detail}" for c in shown], checks, promotion)


def _shadow_check(shadow: dict[str, Any] | None) -> Check | None:
    """Leaving the first stage (internal) with shadow traffic on needs a passing
    shadow-health verdict: the candidate rendered copies of live jobs about as reliably and
    as fast as the baseline did. A failure holds (no user is on the candidate yet)."""
    if shadow is None or not shadow["required"]:
        return None
    verdict = shadow["health"]
    detail = f"{verdict['pairs']} live jobs copied to the candidate and compared"
    if verdict["reasons"]:
        detail += ": " + "; ".join(verdict["reasons"])
    return Check("shadow health", verdict["verdict"], detail, Verdict.HOLD)


def _worsening_checks(report: dict[str, Any], policy: GatePolicy) -> list[Check]:
    """One check per must-not-worsen metric, Holm-adjusted across them."""
    family = policy.worsening_family()
    alpha = policy.guardrails.alpha
    members, missing = worsening(
        {name: _overall(report, name) for name in family}, HIGHER_IS_BETTER
    )
    checks = [
        Check(
            f"{LABELS[w.metric]} not worse",
            "fail" if w.breach(alpha) else "pass",
            f"lift {w.lift:+.4g}, always-valid p {w.p_value:.3g}, Holm-adjusted over "
            f"{len(family)} guardrails {w.adjusted_p_value:.3g} (breach: worse and < {alpha:g})",
            Verdict.ROLLBACK,
        )
        for w in members
    ]
    checks += [
        Check(f"{LABELS[name]} not worse", "insufficient", "fewer than 2 users in an arm")
        for name in missing
    ]
    return checks


def _srm_check(report: dict[str, Any], g: Guardrails) -> Check:
    """The joint split check (analysis.srm); a report without it: the pooled test."""
    srm = report["srm"]
    joint, overall = srm.get("joint"), srm["overall"]
    if joint is None and overall is None:
        return Check("sample ratio", "insufficient", srm.get("note", "no users"))
    if joint is None:
        bad = overall["p_value"] < g.srm_alpha
        detail = (
            f"baseline {overall['baseline']}, candidate {overall['candidate']}, expected "
            f"candidate share {overall['expected_candidate_share']:.2%}, p {overall['p_value']:.3g}"
        )
        return Check("sample ratio", "fail" if bad else "pass", detail, Verdict(g.on_srm))
    worst = srm["segments"].get(joint["worst"]) if joint["worst"] else None
    detail = (
        f"joint chi-square over {joint['df']} segment cells p {joint['p_value']:.3g}; "
        f"most off: {joint['worst']} (baseline {worst['baseline']}, candidate "
        f"{worst['candidate']}, expected candidate share {worst['expected_candidate_share']:.2%}"
        f", Holm-adjusted p {worst['adjusted_p_value']:.3g})"
        if worst
        else f"joint p {joint['p_value']:.3g}"
    )
    if overall:
        detail += f"; pooled p {overall['p_value']:.3g}"
    return Check("sample ratio", "fail" if joint["mismatch"] else "pass", detail, Verdict(g.on_srm))


def _promotion_check(promotion: dict[str, Any], p: Promotion) -> Check:
    shown = ", ".join(
        f"{d['day']}: {d['relative_lift']:+.1%}" for d in promotion["days"] if d["relative_lift"]
    )
    detail = (
        f"{p.metric} relative lift on the last {p.days} days: {shown or 'no data'} "
        f"(need > {p.min_relative_lift:+.0%} each, evidence: {p.evidence})"
    )
    decrease = promotion["must_decrease"]
    if decrease:
        lift = decrease["relative_lift"]
        detail += (
            f"; {p.must_decrease} lift {lift:+.1%}" if lift is not None
            else f"; no {p.must_decrease} data"
        )  # fmt: skip
    readings = promotion["readings"]
    detail += "; readings: " + ", ".join(
        f"{name} {'pass' if ok else 'fail'}" for name, ok in readings.items()
    )
    if promotion["rests_on_noise"]:
        detail += "; the literal pass rests on noise (no interval clears the threshold)"
    return Check("promotion rule", "pass" if promotion["passes"] else "fail", detail, Verdict.HOLD)
