"""Intervals that stay inside the range of what they estimate.

- A rate (a share in [0, 1]) gets a Wilson score interval on its *effective* sample size
  p(1 - p) / variance, where the variance is the delta method's, clustered by user (the
  design-effect adjustment of Korn and Graubard 1998): inside [0, 1] by construction, and
  as wide as the clustering makes it.
- Any other metric is non-negative (counts, GB, means of counts): its interval is the
  delta method's on the log scale, so it never goes below 0.
- A relative lift c/b - 1 lies in (-1, inf) and its sampling distribution is skewed at
  small counts: the interval is the delta method's on log(c/b), asymmetric like the ratio
  (Fieller's interval where a arm's estimate is 0, when it is bounded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from statsmodels.stats.proportion import proportion_confint


class Scale(StrEnum):
    """What values a metric can take."""

    RATE = "rate"  # [0, 1]
    NONNEGATIVE = "nonnegative"  # [0, inf)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def arm_interval(value: float, variance: float, n: int, scale: Scale, z: float) -> Interval:
    """One arm's interval of a metric on ``scale`` (variance: of the estimate)."""
    if scale == Scale.RATE:
        return rate_interval(value, variance, n, z)
    return positive_interval(value, variance, z)


def rate_interval(value: float, variance: float, n: int, z: float) -> Interval:
    """Wilson on the effective sample size; with no variance (every unit 0, or every unit
    1) on the ``n`` users instead."""
    p = min(1.0, max(0.0, value))
    effective = p * (1 - p) / variance if variance > 0 and 0 < p < 1 else float(max(n, 1))
    alpha = 2 * (1 - _normal_cdf(z))
    low, high = proportion_confint(p * effective, effective, alpha=alpha, method="wilson")
    return Interval(max(0.0, float(low)), min(1.0, float(high)))


def positive_interval(value: float, variance: float, z: float) -> Interval:
    """Delta method on log(value): a non-negative metric's interval stays >= 0."""
    if value <= 0 or variance <= 0:
        half = z * math.sqrt(max(variance, 0.0))
        return Interval(max(0.0, value - half), value + half)
    spread = z * math.sqrt(variance) / value
    return Interval(value * math.exp(-spread), value * math.exp(spread))


def relative_interval(
    baseline: float, baseline_var: float, candidate: float, candidate_var: float, z: float
) -> Interval | None:
    """Interval of candidate / baseline - 1 (independent arms); None when unbounded."""
    if baseline > 0 and candidate > 0:
        log_ratio = math.log(candidate / baseline)
        spread = z * math.sqrt(candidate_var / candidate**2 + baseline_var / baseline**2)
        return Interval(math.exp(log_ratio - spread) - 1, math.exp(log_ratio + spread) - 1)
    return fieller(baseline, baseline_var, candidate, candidate_var, z)


def fieller(
    baseline: float, baseline_var: float, candidate: float, candidate_var: float, z: float
) -> Interval | None:
    """Fieller's interval of candidate / baseline - 1: the ratios r with
    (c - r b)^2 <= z^2 (var c + r^2 var b); None when it is unbounded (b not clearly > 0)."""
    a = baseline**2 - z * z * baseline_var
    if a <= 0:
        return None
    middle = baseline * candidate
    c = candidate**2 - z * z * candidate_var
    root = math.sqrt(max(0.0, middle * middle - a * c))
    return Interval(max(-1.0, (middle - root) / a - 1), (middle + root) / a - 1)


def log_ratio_variance(
    baseline: float, baseline_var: float, candidate: float, candidate_var: float
) -> float | None:
    """Delta-method variance of log(candidate / baseline); None unless both are > 0."""
    if baseline <= 0 or candidate <= 0:
        return None
    return candidate_var / candidate**2 + baseline_var / baseline**2


def _normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))
