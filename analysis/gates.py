"""The gate policy and its evaluation: advance, hold or roll back, with every reason.

Policy file (YAML; every field has the seed's default)::

    guardrails:
      success_rate_min: 0.992       # candidate's success rate
      p95_latency_max_ms: 8500      # candidate's P95 end-to-end latency of successful jobs
      peak_vram_max_gb: 21.3        # candidate's mean peak VRAM
      negative_feedback_may_rise: false   # a significant rise is a breach
      srm_alpha: 0.001              # sample-ratio mismatch alarm
      on_srm: hold                  # hold | rollback
      golden_s_not_worse: true      # candidate S-level count <= baseline's (last golden run)
      min_users_per_arm: 100        # below this nothing is decided: hold
    promotion:
      metric: long_dwell_share
      min_relative_lift: 0.08       # the daily relative lift must exceed this ...
      days: 3                       # ... on each of the last 3 days
      must_decrease: quick_retry_share

A guardrail breach means roll back; advancing needs every guardrail green and the
promotion rule met; anything else holds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Verdict(StrEnum):
    ADVANCE = "advance"
    HOLD = "hold"
    ROLLBACK = "rollback"


class Guardrails(BaseModel):
    model_config = ConfigDict(extra="forbid")

    success_rate_min: float = Field(default=0.992, ge=0, le=1)
    p95_latency_max_ms: float = Field(default=8500, gt=0)
    peak_vram_max_gb: float = Field(default=21.3, gt=0)
    negative_feedback_may_rise: bool = False
    srm_alpha: float = Field(default=0.001, gt=0, lt=1)
    on_srm: Literal["hold", "rollback"] = "hold"
    golden_s_not_worse: bool = True
    min_users_per_arm: int = Field(default=100, ge=2)


class Promotion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = "long_dwell_share"
    min_relative_lift: float = 0.08
    days: int = Field(default=3, ge=1)
    must_decrease: str | None = "quick_retry_share"


class GatePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    guardrails: Guardrails = Field(default_factory=Guardrails)
    promotion: Promotion = Field(default_factory=Promotion)


class GatePolicyError(ValueError):
    pass


def load_policy(path: Path | None) -> GatePolicy:
    if path is None:
        return GatePolicy()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return GatePolicy.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise GatePolicyError(f"{path}: {exc}") from None
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise GatePolicyError(f"{path}: {errors}") from None


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "reasons": self.reasons,
            "checks": [
                asdict(c) | {"breach": c.breach.value if c.breach else None} for c in self.checks
            ],
        }


def _overall(report: dict[str, Any], metric: str) -> dict[str, Any] | None:
    return report["metrics"].get(metric, {}).get("overall")


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
            "success rate", success and success["candidate"], g.success_rate_min, "minimum",
            "{:.4%}", "no finished jobs in both arms",
        ),
        _limit(
            "P95 latency", p95 and p95["value"], g.p95_latency_max_ms, "maximum", "{:,.0f} ms",
            "no successful candidate jobs",
        ),
        _limit(
            "peak VRAM", vram and vram["candidate"], g.peak_vram_max_gb, "maximum", "{:.2f} GB",
            "no VRAM recorded (CPU workers)", missing_passes=True,
        ),
    ]  # fmt: skip

    feedback = _overall(report, "negative_feedback_rate")
    if feedback is None:
        checks.append(Check("negative feedback", "insufficient", "no generations in both arms"))
    else:
        rose = feedback["lift"] > 0 and feedback["sequential_p_value"] < 0.05
        breach = rose and not g.negative_feedback_may_rise
        checks.append(
            Check(
                "negative feedback",
                "fail" if breach else "pass",
                f"lift {feedback['lift']:+.4f} per generation, always-valid p "
                f"{feedback['sequential_p_value']:.3g}",
                Verdict.ROLLBACK,
            )
        )

    srm = report["srm"]["overall"]
    if srm is None:
        checks.append(Check("sample ratio", "insufficient", report["srm"].get("note", "no users")))
    else:
        bad = srm["p_value"] < g.srm_alpha
        checks.append(
            Check(
                "sample ratio",
                "fail" if bad else "pass",
                f"baseline {srm['baseline']}, candidate {srm['candidate']}, expected candidate "
                f"share {srm['expected_candidate_share']:.2%}, p {srm['p_value']:.3g}",
                Verdict(g.on_srm),
            )
        )

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

    daily = [d for d in report["metrics"].get(p.metric, {}).get("daily", []) if d["comparison"]]
    recent = daily[-p.days :]
    lifts = [d["comparison"]["relative_lift"] for d in recent]
    promoted = len(recent) == p.days and all(
        lift is not None and lift > p.min_relative_lift for lift in lifts
    )
    shown = ", ".join(
        f"{d['day']}: {lift:+.1%}"
        for d, lift in zip(recent, lifts, strict=True)
        if lift is not None
    )
    detail = (
        f"{p.metric} relative lift on the last {p.days} days: {shown or 'no data'} "
        f"(need > {p.min_relative_lift:+.0%} each)"
    )
    if p.must_decrease:
        falling = _overall(report, p.must_decrease)
        down = falling is not None and falling["lift"] < 0
        promoted = promoted and down
        detail += (
            f"; {p.must_decrease} lift {falling['lift']:+.4f}"
            if falling
            else f"; no {p.must_decrease} data"
        )
    checks.append(Check("promotion rule", "pass" if promoted else "fail", detail, Verdict.HOLD))

    breaches = [c for c in checks if c.status == "fail" and c.breach == Verdict.ROLLBACK]
    if breaches:  # safety first: a breach rolls back even before the sample is large
        return GateEvaluation(Verdict.ROLLBACK, [f"{c.name}: {c.detail}" for c in breaches], checks)
    blocking = [c for c in checks if c.status != "pass"]
    if not blocking:
        return GateEvaluation(Verdict.ADVANCE, [f"{c.name}: {c.detail}" for c in checks], checks)
    return GateEvaluation(Verdict.HOLD, [f"{c.name}: {c.detail}" for c in blocking], checks)
