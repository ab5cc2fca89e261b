"""The promotion rule, literally and with intervals.

The seed's rule: the promotion metric's relative lift above the threshold (+8%) on each of
the last 3 days, and the must-decrease metric (quick retries) down. Read literally, on
daily point estimates, day-to-day noise alone passes it now and then. Two stricter
readings need the *evidence* to clear the threshold:

- daily_interval: each of the last days' 95% interval of the relative lift lies above it;
- pooled_always_valid: the always-valid interval of those days pooled lies above it.

Both also need the must-decrease metric's always-valid interval below 0. The gate uses the
reading the policy names; all three are reported, and a literal pass that neither interval
reading supports is flagged as resting on noise.
"""

from __future__ import annotations

from typing import Any

from analysis.gates_policy import Promotion


def _clears(interval: dict[str, float] | None, threshold: float) -> bool:
    return interval is not None and interval["low"] > threshold


def evaluate_promotion(
    daily: list[dict[str, Any]],
    pooled: dict[str, Any] | None,
    falling: dict[str, Any] | None,
    rule: Promotion,
) -> dict[str, Any]:
    """``daily``: the metric's daily rows; ``pooled``: its comparison over the last
    ``rule.days`` days; ``falling``: the must-decrease metric's overall comparison."""
    recent = [d for d in daily if d["comparison"]][-rule.days :]
    enough = len(recent) == rule.days
    days = []
    for row in recent:
        c = row["comparison"]
        lift = c["relative_lift"]
        days.append(
            {
                "day": row["day"],
                "relative_lift": lift,
                "relative_ci": c.get("relative_ci"),
                "point_pass": lift is not None and lift > rule.min_relative_lift,
                "interval_pass": _clears(c.get("relative_ci"), rule.min_relative_lift),
            }
        )
    literal = enough and all(d["point_pass"] for d in days)
    daily_interval = enough and all(d["interval_pass"] for d in days)
    pooled_ci = pooled.get("sequential_relative_ci") if pooled else None
    pooled_pass = enough and _clears(pooled_ci, rule.min_relative_lift)
    decrease: dict[str, Any] | None = None
    down = down_for_sure = True
    if rule.must_decrease:
        ci = falling.get("sequential_relative_ci") if falling else None
        down = falling is not None and falling["lift"] < 0
        down_for_sure = ci is not None and ci["high"] < 0
        decrease = {
            "metric": rule.must_decrease,
            "relative_lift": falling.get("relative_lift") if falling else None,
            "sequential_relative_ci": ci,
            "point_pass": down,
            "interval_pass": down_for_sure,
        }
    readings = {
        "point": literal and down,
        "daily_interval": daily_interval and down_for_sure,
        "pooled_always_valid": pooled_pass and down_for_sure,
    }
    return {
        "metric": rule.metric,
        "threshold": rule.min_relative_lift,
        "days_required": rule.days,
        "evidence": rule.evidence,
        "days": days,
        "pooled": {
            "first": recent[0]["day"] if recent else None,
            "last": recent[-1]["day"] if recent else None,
            "relative_lift": pooled["relative_lift"] if pooled else None,
            "sequential_relative_ci": pooled_ci,
            "pass": pooled_pass,
        },
        "must_decrease": decrease,
        "readings": readings,
        "passes": readings[rule.evidence],
        "rests_on_noise": readings["point"]
        and not (readings["daily_interval"] or readings["pooled_always_valid"]),
    }
