"""Confidence intervals for pass rates and for the paired difference of two pass rates.

The golden set renders the same cases with the same seeds through both versions, so the
two pass rates are paired: Newcombe's hybrid score interval (method 10 of Newcombe 1998,
"Improved confidence intervals for the difference between binomial proportions based on
paired data") uses that pairing and keeps close to nominal coverage at the small counts of
a category (50 cases), where the Wald interval does not. McNemar's exact test gives the
p-value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import binomtest, norm


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


def wilson(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a proportion."""
    if n <= 0:
        raise ValueError("n must be positive")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n ({n})")
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class PairedDifference:
    """Candidate pass rate minus baseline pass rate over cases graded for both."""

    n: int
    both_pass: int
    only_candidate: int  # candidate passes, baseline does not (improved)
    only_baseline: int  # baseline passes, candidate does not (regressed)
    both_fail: int
    interval: Interval
    p_value: float  # McNemar exact (two-sided binomial test on the discordant pairs)


def _pair_correlation(both_pass: int, only_one: int, only_other: int, both_fail: int) -> float:
    """Newcombe's continuity-corrected phi: 0 with an empty margin or 0 <= ad - bc <= n/2."""
    n = both_pass + only_one + only_other + both_fail
    row, column = both_pass + only_one, both_pass + only_other
    margins = row * (n - row) * column * (n - column)
    if margins == 0:
        return 0.0
    cross: float = both_pass * both_fail - only_one * only_other
    if cross > n / 2:
        cross -= n / 2
    elif cross >= 0:
        cross = 0
    return cross / math.sqrt(margins)


def paired_difference(
    both_pass: int,
    only_candidate: int,
    only_baseline: int,
    both_fail: int,
    confidence: float = 0.95,
) -> PairedDifference:
    """Newcombe's method 10 interval for p(candidate) - p(baseline) from a 2x2 paired table."""
    counts = (both_pass, only_candidate, only_baseline, both_fail)
    if min(counts) < 0:
        raise ValueError("counts must not be negative")
    n = sum(counts)
    if n == 0:
        raise ValueError("no paired cases")
    candidate_pass = both_pass + only_candidate
    baseline_pass = both_pass + only_baseline
    p1, p2 = candidate_pass / n, baseline_pass / n
    one, two = wilson(candidate_pass, n, confidence), wilson(baseline_pass, n, confidence)
    phi = _pair_correlation(both_pass, only_candidate, only_baseline, both_fail)
    d1, u1 = p1 - one.low, one.high - p1
    d2, u2 = p2 - two.low, two.high - p2
    below = math.sqrt(max(0.0, d1 * d1 - 2 * phi * d1 * u2 + u2 * u2))
    above = math.sqrt(max(0.0, u1 * u1 - 2 * phi * u1 * d2 + d2 * d2))
    difference = p1 - p2
    interval = Interval(difference, max(-1.0, difference - below), min(1.0, difference + above))
    discordant = only_candidate + only_baseline
    p_value = binomtest(only_candidate, discordant, 0.5).pvalue if discordant else 1.0
    return PairedDifference(
        n, both_pass, only_candidate, only_baseline, both_fail, interval, float(p_value)
    )
