"""Statistics of an A/B comparison from per-user sufficient statistics.

- Ratio metrics (num/den summed per user) use the delta method, which clusters by user:
  a heavy user's many jobs count as one correlated unit, not as independent samples.
- Each comparison gives the absolute and relative lift with a fixed-horizon interval
  and p-value, and an always-valid interval and p-value from a mixture sequential
  probability ratio test (normal mixture, as GrowthBook, Eppo and Optimizely's Stats
  Engine use): looking at the dashboard every day does not inflate false positives.
- CUPED (optional, mean metrics with a pre-period covariate) removes the part of the
  variance the pre-period explains, with theta pooled over both arms.
- Sample-ratio mismatch: chi-square of users per arm against the configured share
  (analysis.srm tests all segments jointly).
- Intervals respect their range (analysis.intervals): each arm's interval stays in [0, 1]
  for a rate and >= 0 otherwise; the relative lift's interval is built on log(c/b), so it
  is asymmetric like the ratio and never below -100%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import chisquare, norm

from analysis.intervals import (
    Interval,
    Scale,
    arm_interval,
    log_ratio_variance,
    relative_interval,
)
from analysis.metrics import Sufficient

DEFAULT_ALPHA = 0.05
# The mSPRT's normal mixture is tuned, as GrowthBook does, to give its tightest interval
# when the experiment has this many users (both arms): the mixing variance is the
# per-user variance times rho^2 = (-2 ln a + ln(1 - 2 ln a)) / N (Howard et al. 2021).
# The report takes N from the gate policy (analysis.gates.Planning): the planned sample.
DEFAULT_TUNING_USERS = 10_000
SRM_ALPHA = 0.001


@dataclass(frozen=True)
class Estimate:
    value: float
    variance: float  # of the estimate
    n: int


def ratio_estimate(s: Sufficient) -> Estimate | None:
    """num/den with its delta-method variance over users; None without 2 users or den."""
    if s.n < 2 or s.sum_den <= 0:
        return None
    n = s.n
    mean_num, mean_den = s.sum_num / n, s.sum_den / n
    var_num = max(0.0, (s.sum_num2 - n * mean_num**2) / (n - 1))
    var_den = max(0.0, (s.sum_den2 - n * mean_den**2) / (n - 1))
    cov = (s.sum_num_den - n * mean_num * mean_den) / (n - 1)
    ratio = mean_num / mean_den
    variance = (var_num - 2 * ratio * cov + ratio**2 * var_den) / (n * mean_den**2)
    # rounding leaves ~1e-18 where the true variance is 0 (e.g. every job succeeded)
    return Estimate(ratio, variance if variance > 1e-15 else 0.0, n)


def is_mean_metric(s: Sufficient) -> bool:
    return s.sum_den == s.n and s.sum_den2 == s.n


def cuped_estimates(
    baseline: Sufficient, candidate: Sufficient
) -> tuple[Estimate, Estimate] | None:
    """Per-arm means adjusted by the pre-period covariate z (mean metrics only)."""
    if not (is_mean_metric(baseline) and is_mean_metric(candidate)):
        return None
    pooled = baseline + candidate
    n = pooled.n
    if n < 4 or baseline.n < 2 or candidate.n < 2:
        return None
    mean_z = pooled.sum_z / n
    var_z = (pooled.sum_z2 - n * mean_z**2) / (n - 1)
    if var_z <= 0:
        return None
    cov = (pooled.sum_num_z - n * (pooled.sum_num / n) * mean_z) / (n - 1)
    theta = cov / var_z
    adjusted = []
    for arm in (baseline, candidate):
        m = arm.n
        x, z = arm.sum_num / m, arm.sum_z / m
        vx = (arm.sum_num2 - m * x**2) / (m - 1)
        vz = (arm.sum_z2 - m * z**2) / (m - 1)
        cxz = (arm.sum_num_z - m * x * z) / (m - 1)
        variance = max(0.0, vx - 2 * theta * cxz + theta**2 * vz) / m
        adjusted.append(Estimate(x - theta * (z - mean_z), variance, m))
    return adjusted[0], adjusted[1]


@dataclass(frozen=True)
class Comparison:
    baseline: float
    candidate: float
    n_baseline: int
    n_candidate: int
    lift: float  # candidate - baseline
    lift_ci: Interval  # fixed horizon
    p_value: float  # fixed horizon, two-sided z test
    relative_lift: float | None  # candidate / baseline - 1
    relative_ci: Interval | None
    sequential_ci: Interval  # always valid (absolute)
    sequential_relative_ci: Interval | None
    sequential_p_value: float
    baseline_ci: Interval  # each arm's own 95% interval (for trend plots), in range
    candidate_ci: Interval
    cuped: bool = False
    alpha: float = DEFAULT_ALPHA
    variance: float = 0.0  # of the lift
    log_ratio_variance: float | None = None  # of log(candidate / baseline)
    tuning_users: int = DEFAULT_TUNING_USERS  # both arms

    @property
    def significant(self) -> bool:
        """Decided by the always-valid p-value, the one safe under daily looks."""
        return self.sequential_p_value < self.alpha


def mixing_variance(variance: float, users: int, tuning_users: int, alpha: float) -> float:
    """tau^2 on the estimate's scale: per-user variance (variance * users) times rho^2."""
    log_alpha = math.log(alpha)
    rho2 = (-2 * log_alpha + math.log(1 - 2 * log_alpha)) / tuning_users
    return max(variance * users * rho2, 1e-18)


def msprt(estimate: float, variance: float, tau2: float, alpha: float) -> tuple[float, float]:
    """(always-valid p-value, half-width of the always-valid interval) of a normal mixture."""
    if variance <= 0:
        return (1.0 if estimate == 0 else 0.0), 0.0
    total = variance + tau2
    log_lr = 0.5 * math.log(variance / total) + tau2 * estimate**2 / (2 * variance * total)
    p_value = 1.0 if log_lr <= 0 else min(1.0, math.exp(-log_lr))
    half = math.sqrt(
        (2 * variance * total / tau2) * (math.log(1 / alpha) + 0.5 * math.log(total / variance))
    )
    return p_value, half


def compare(
    baseline: Sufficient,
    candidate: Sufficient,
    *,
    alpha: float = DEFAULT_ALPHA,
    tuning_users: int = DEFAULT_TUNING_USERS,
    use_cuped: bool = False,
    scale: Scale = Scale.NONNEGATIVE,
) -> Comparison | None:
    """Candidate vs baseline; None when either arm has fewer than two users."""
    found = _estimates(baseline, candidate, use_cuped)
    if found is None:
        return None
    return _compare_estimates(*found, alpha=alpha, tuning_users=tuning_users, scale=scale)


def _estimates(
    baseline: Sufficient, candidate: Sufficient, use_cuped: bool
) -> tuple[Estimate, Estimate, bool] | None:
    """Each arm's estimate (CUPED-adjusted when asked and possible), and whether it is."""
    if use_cuped:
        adjusted = cuped_estimates(baseline, candidate)
        if adjusted is not None:
            return adjusted[0], adjusted[1], True
    b, c = ratio_estimate(baseline), ratio_estimate(candidate)
    return None if b is None or c is None else (b, c, False)


def compare_stratified(
    by_segment: dict[str, tuple[Sufficient, Sufficient]],
    *,
    alpha: float = DEFAULT_ALPHA,
    tuning_users: int = DEFAULT_TUNING_USERS,
    use_cuped: bool = False,
    scale: Scale = Scale.NONNEGATIVE,
) -> Comparison | None:
    """Candidate vs baseline within each segment, combined with each segment's share of the
    metric's denominator over both arms (the population's own mix).

    Segments may have different candidate shares: then the arms' segment mixes differ and
    a pooled comparison reports that difference as an effect (an A/A test with a smaller
    new-user share "finds" fewer generations per user). Within a segment the split is
    random. Segments without two users in each arm are left out.
    """
    parts: list[tuple[float, Estimate, Estimate, bool]] = []
    for baseline, candidate in by_segment.values():
        found = _estimates(baseline, candidate, use_cuped)
        if found is not None:
            parts.append((baseline.sum_den + candidate.sum_den, *found))
    total = sum(weight for weight, _, _, _ in parts)
    if total <= 0:
        return None

    def combined(estimates: list[tuple[float, Estimate]]) -> Estimate:
        return Estimate(
            sum(w / total * e.value for w, e in estimates),
            sum((w / total) ** 2 * e.variance for w, e in estimates),
            sum(e.n for _, e in estimates),
        )

    return _compare_estimates(
        combined([(w, b) for w, b, _, _ in parts]),
        combined([(w, c) for w, _, c, _ in parts]),
        any(cuped for _, _, _, cuped in parts),
        alpha=alpha,
        tuning_users=tuning_users,
        scale=scale,
    )


def _compare_estimates(
    b: Estimate,
    c: Estimate,
    cuped: bool,
    *,
    alpha: float,
    tuning_users: int,
    scale: Scale = Scale.NONNEGATIVE,
) -> Comparison:
    z = float(norm.ppf(1 - alpha / 2))
    lift = c.value - b.value
    variance = b.variance + c.variance
    se = math.sqrt(variance)
    p_value = 2 * float(norm.sf(abs(lift) / se)) if se > 0 else (1.0 if lift == 0 else 0.0)
    users = b.n + c.n
    seq_p, seq_half = msprt(
        lift, variance, mixing_variance(variance, users, tuning_users, alpha), alpha
    )
    relative = relative_ci = seq_relative = None
    log_var = log_ratio_variance(b.value, b.variance, c.value, c.variance)
    if b.value != 0:
        relative = c.value / b.value - 1
        relative_ci = relative_interval(b.value, b.variance, c.value, c.variance, z)
    if log_var is not None and log_var > 0:
        # the always-valid interval of log(c/b), mapped back: asymmetric, above -100%
        log_ratio = math.log(c.value / b.value)
        _, half = msprt(
            log_ratio, log_var, mixing_variance(log_var, users, tuning_users, alpha), alpha
        )
        seq_relative = Interval(math.exp(log_ratio - half) - 1, math.exp(log_ratio + half) - 1)
    return Comparison(
        baseline=b.value,
        candidate=c.value,
        n_baseline=b.n,
        n_candidate=c.n,
        lift=lift,
        lift_ci=Interval(lift - z * se, lift + z * se),
        p_value=p_value,
        relative_lift=relative,
        relative_ci=relative_ci,
        sequential_ci=Interval(lift - seq_half, lift + seq_half),
        sequential_relative_ci=seq_relative,
        sequential_p_value=seq_p,
        baseline_ci=arm_interval(b.value, b.variance, b.n, scale, z),
        candidate_ci=arm_interval(c.value, c.variance, c.n, scale, z),
        cuped=cuped,
        alpha=alpha,
        variance=variance,
        log_ratio_variance=log_var,
        tuning_users=tuning_users,
    )


@dataclass(frozen=True)
class Stratified:
    lift: float
    ci: Interval
    p_value: float
    weights: dict[str, float]


def stratified(
    by_segment: dict[str, tuple[Sufficient, Sufficient]], alpha: float = DEFAULT_ALPHA
) -> Stratified | None:
    """Segment lifts combined with weights proportional to each segment's users."""
    parts = []
    for segment, (baseline, candidate) in by_segment.items():
        b, c = ratio_estimate(baseline), ratio_estimate(candidate)
        if b is not None and c is not None:
            parts.append((segment, b.n + c.n, c.value - b.value, b.variance + c.variance))
    total = sum(size for _, size, _, _ in parts)
    if not total:
        return None
    weights = {segment: size / total for segment, size, _, _ in parts}
    lift = sum(weights[s] * d for s, _, d, _ in parts)
    variance = sum(weights[s] ** 2 * v for s, _, _, v in parts)
    z = float(norm.ppf(1 - alpha / 2))
    se = math.sqrt(variance)
    p_value = 2 * float(norm.sf(abs(lift) / se)) if se > 0 else 1.0
    return Stratified(lift, Interval(lift - z * se, lift + z * se), p_value, weights)


@dataclass(frozen=True)
class SampleRatio:
    baseline: int
    candidate: int
    expected_candidate_share: float
    p_value: float

    @property
    def mismatch(self) -> bool:
        return self.p_value < SRM_ALPHA


def sample_ratio(baseline: int, candidate: int, candidate_share: float) -> SampleRatio | None:
    """Chi-square test of users per arm against the configured candidate share."""
    total = baseline + candidate
    if total == 0:
        return None
    if candidate_share in (0.0, 1.0):
        unexpected = candidate if candidate_share == 0.0 else baseline
        return SampleRatio(baseline, candidate, candidate_share, 0.0 if unexpected else 1.0)
    expected = [total * (1 - candidate_share), total * candidate_share]
    p_value = float(chisquare([baseline, candidate], f_exp=expected).pvalue)
    return SampleRatio(baseline, candidate, candidate_share, p_value)


@dataclass(frozen=True)
class Correlation:
    r: float
    ci: Interval
    n: int


def pearson(s: Sufficient, alpha: float = DEFAULT_ALPHA) -> Correlation | None:
    """Correlation of num and den over users (Fisher-z interval)."""
    n = s.n
    if n < 4:
        return None
    sxx = s.sum_num2 - s.sum_num**2 / n
    syy = s.sum_den2 - s.sum_den**2 / n
    sxy = s.sum_num_den - s.sum_num * s.sum_den / n
    if sxx <= 0 or syy <= 0:
        return None
    r = max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))
    z = math.atanh(max(-0.999999, min(0.999999, r)))
    half = float(norm.ppf(1 - alpha / 2)) / math.sqrt(n - 3)
    return Correlation(r, Interval(math.tanh(z - half), math.tanh(z + half)), n)
