"""What today's sample can detect, and how long until it detects what the rule asks for.

The always-valid test rejects when |log(c/b)| passes its boundary h (the half-width of the
always-valid interval). With the estimate ~ N(effect, V), its power against an effect is
Phi((effect - h) / sqrt V) (plus the negligible other tail), so the minimum detectable
effect at power 1 - beta is h + z_(1-beta) sqrt V, on the log scale of the ratio.

Forecast: V falls as 1/users while the per-user variance stays as measured today, and
users keep arriving at today's average rate per day; the mixing variance depends only on
the per-user variance and the tuning size, so the boundary at a future size is exact
under those two assumptions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import norm

from analysis.stats import mixing_variance, msprt

DEFAULT_POWER = 0.8
MAX_DAYS = 365


def boundary(log_var: float, users: int, tuning_users: int, alpha: float) -> float:
    """h: the always-valid test rejects when |log(c/b)| > h."""
    return msprt(0.0, log_var, mixing_variance(log_var, users, tuning_users, alpha), alpha)[1]


def power(effect: float, log_var: float, users: int, tuning_users: int, alpha: float) -> float:
    """P(always-valid p < alpha) at a true relative lift ``effect`` (e.g. 0.08)."""
    shift = abs(math.log1p(effect))
    h, se = boundary(log_var, users, tuning_users, alpha), math.sqrt(log_var)
    return float(norm.cdf((shift - h) / se) + norm.cdf((-shift - h) / se))


def mde_log(
    log_var: float, users: int, tuning_users: int, alpha: float, target_power: float
) -> float:
    h = boundary(log_var, users, tuning_users, alpha)
    return h + float(norm.ppf(target_power)) * math.sqrt(log_var)


@dataclass(frozen=True)
class Plan:
    metric: str
    target: float  # the relative lift the promotion rule asks for (signed)
    users: int  # both arms, today
    users_per_day: float  # both arms
    mde: float  # relative lift detectable today at ``power`` (signed like the target)
    fixed_horizon_mde: float  # the same for a single look (for comparison)
    power_at_target: float  # of the always-valid test today
    days_needed: int | None  # more days at today's traffic; None: more than MAX_DAYS
    power: float = DEFAULT_POWER


def plan(
    metric: str,
    target: float,
    log_var: float,
    users: int,
    users_per_day: float,
    tuning_users: int,
    alpha: float,
    target_power: float = DEFAULT_POWER,
) -> Plan:
    """MDE today and days still needed to detect ``target`` (a relative lift, signed)."""
    sign = 1.0 if target >= 0 else -1.0
    per_user = log_var * users
    today = mde_log(log_var, users, tuning_users, alpha, target_power)
    fixed = (float(norm.ppf(1 - alpha / 2)) + float(norm.ppf(target_power))) * math.sqrt(log_var)
    wanted = abs(math.log1p(target))
    days: int | None = None
    for day in range(MAX_DAYS + 1):
        future = users + day * users_per_day
        if future > 0 and mde_log(per_user / future, round(future), tuning_users, alpha,
                                  target_power) <= wanted:  # fmt: skip
            days = day
            break
        if users_per_day <= 0:
            break
    return Plan(
        metric=metric,
        target=target,
        users=users,
        users_per_day=users_per_day,
        mde=math.expm1(sign * today),
        fixed_horizon_mde=math.expm1(sign * fixed),
        power_at_target=power(target, log_var, users, tuning_users, alpha),
        days_needed=days,
        power=target_power,
    )
