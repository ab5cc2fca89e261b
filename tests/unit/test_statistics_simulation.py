"""The statistics, proven on simulated experiments (no database).

Each seed is one simulated experiment (analysis.simulation), reduced in numpy to the same
sufficient statistics the SQL gives and compared with analysis.stats. Seeds are fixed, so
every number here is reproducible. Each tolerance is a 99.9% binomial quantile of the rate
under the nominal level (one-sided for false-positive rates, two-sided for coverage): a
correct implementation passes each check with any seeds at least 99.9% of the time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from scipy.stats import binom

from analysis.metrics import Sufficient
from analysis.simulation.generate import Simulator
from analysis.simulation.model import Effects, SimulationSpec, prompt_text
from analysis.simulation.reduce import Reducer, totals
from analysis.simulation.truth import TrueValue, true_values
from analysis.stats import (
    DEFAULT_ALPHA,
    SRM_ALPHA,
    Comparison,
    compare,
    compare_stratified,
    sample_ratio,
)
from gateway.segments import SegmentRules
from storage.metrics import Key

pytestmark = pytest.mark.slow  # statistical simulations: `make test`, not `make test-fast`

ALPHA = DEFAULT_ALPHA
AA_SEEDS = range(300)
AB_SEEDS = range(1000, 1250)
AA = SimulationSpec(users=500, days=7, pre_days=0)
AB = SimulationSpec(
    users=500,
    days=9,  # retention needs 8 days after the first exposure
    pre_days=7,  # the CUPED covariate: generations in the 7 days before
    effects=Effects(dwell=0.15, quick_retry=-0.3, generation_rate=0.1, retention=0.15),
)
AA_METRICS = ("long_dwell_share", "quick_retry_share", "download_rate", "negative_feedback_rate")
AB_METRICS = ("long_dwell_share", "quick_retry_share", "retention_7d", "generations_per_week")


def rate_bound(n: int, p: float) -> float:
    """The 99.9% upper quantile of a binomial rate with success probability p."""
    return float(binom.ppf(0.999, n, p)) / n


def coverage_band(n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided 99.9% band of the observed coverage of a correct ``level`` interval."""
    return float(binom.ppf(0.0005, n, level)) / n, float(binom.ppf(0.9995, n, level)) / n


def by_segment(stats: dict[Key, Sufficient]) -> dict[str, tuple[Sufficient, Sufficient]]:
    """Segments with both arms, as the report stratifies them."""
    segments = {segment for _, segment, _ in stats}
    return {
        s: (stats[("baseline", s, None)], stats[("candidate", s, None)])
        for s in segments
        if ("baseline", s, None) in stats and ("candidate", s, None) in stats
    }


def overall(reducer: Reducer, metric: str, **options: object) -> Comparison:
    baseline, candidate = totals(reducer.sufficient(metric, by_day=False))
    assert baseline is not None and candidate is not None
    found = compare(baseline, candidate, **options)  # type: ignore[arg-type]
    assert found is not None
    return found


@dataclass
class AaRuns:
    fixed: dict[str, list[float]]  # p-values at the end, per metric
    sequential: dict[str, list[float]]
    peek_fixed: dict[str, list[float]]  # smallest p-value over the daily looks
    peek_sequential: dict[str, list[float]]


@pytest.fixture(scope="module")
def aa_runs() -> AaRuns:
    runs = AaRuns({}, {}, {}, {})
    for seed in AA_SEEDS:
        reducer = Reducer(Simulator(AA, seed).run())
        for metric in AA_METRICS:
            found = overall(reducer, metric)
            runs.fixed.setdefault(metric, []).append(found.p_value)
            runs.sequential.setdefault(metric, []).append(found.sequential_p_value)
        for metric in AA_METRICS[:2]:
            looks = [compare(b, c) for b, c in reducer.cumulative(metric) if b.n > 1 < c.n]
            runs.peek_fixed.setdefault(metric, []).append(min(x.p_value for x in looks if x))
            runs.peek_sequential.setdefault(metric, []).append(
                min(x.sequential_p_value for x in looks if x)
            )
    return runs


@dataclass
class AbRuns:
    truth: dict[str, TrueValue]
    plain: dict[str, list[Comparison]]
    cuped: list[Comparison]  # generations per week, CUPED-adjusted


@pytest.fixture(scope="module")
def ab_runs() -> AbRuns:
    runs = AbRuns(true_values(AB, list(AB_METRICS), users=30_000), {}, [])
    for seed in AB_SEEDS:
        reducer = Reducer(Simulator(AB, seed).run())
        for metric in AB_METRICS:
            runs.plain.setdefault(metric, []).append(overall(reducer, metric))
        cuped = overall(reducer, "generations_per_week", use_cuped=True)
        assert cuped.cuped
        runs.cuped.append(cuped)
    return runs


def test_the_simulator_is_deterministic_and_speaks_the_gateway_rules() -> None:
    spec = SimulationSpec(users=200, days=3)
    first, again = Simulator(spec, 11).run(), Simulator(spec, 11).run()
    assert np.array_equal(first.jobs.t, again.jobs.t)
    assert np.array_equal(first.events.dwell_ms, again.events.dwell_ms)
    assert np.array_equal(first.arm, again.arm)
    assert not np.array_equal(first.jobs.t, Simulator(spec, 12).run().jobs.t[: len(first.jobs)])
    # the style-tag rule the gateway applies to prompt text (gateway.assignment) and the
    # simulator's prompt ids agree
    rules = SegmentRules()
    for prompt in range(0, 24 * (len(rules.style_tags) + 1)):
        text = prompt_text(prompt, rules).lower()
        styled = any(tag.lower() in text for tag in rules.style_tags)
        assert styled == (prompt % (len(rules.style_tags) + 1) > 0), text
    # all four segments occur, each user's arm is fixed at first exposure
    assert set(first.segment.tolist()) == {0, 1, 2, 3}
    live = first.jobs.arm >= 0
    assert np.array_equal(first.jobs.arm[live], first.arm[first.jobs.user[live]])


@pytest.mark.parametrize("metric", AA_METRICS)
def test_aa_false_positive_rate_is_at_most_alpha(aa_runs: AaRuns, metric: str) -> None:
    """A/A: both p-values reject at most alpha of the time (tolerance: 99.9% binomial)."""
    bound = rate_bound(len(AA_SEEDS), ALPHA)  # 0.093 for 300 seeds
    fixed = np.mean(np.array(aa_runs.fixed[metric]) < ALPHA)
    sequential = np.mean(np.array(aa_runs.sequential[metric]) < ALPHA)
    assert fixed <= bound, f"{metric}: fixed-horizon false positives {fixed:.3f} > {bound:.3f}"
    assert sequential <= bound, f"{metric}: always-valid false positives {sequential:.3f}"


def test_aa_p_values_are_uniform_enough(aa_runs: AaRuns) -> None:
    """Not just the tail: the fixed-horizon p-value of an A/A test is ~uniform (all metrics
    pooled, 1,200 p-values; KS 99.9% critical distance 1.95/sqrt(n))."""
    p = np.sort(np.concatenate([aa_runs.fixed[m] for m in AA_METRICS]))
    distance = np.max(np.abs(p - np.arange(1, len(p) + 1) / len(p)))
    assert distance < 1.95 / np.sqrt(len(p))


@pytest.mark.parametrize("metric", AA_METRICS[:2])
def test_daily_peeking_inflates_the_fixed_horizon_p_value_only(
    aa_runs: AaRuns, metric: str
) -> None:
    """Looking every day (7 looks) and stopping at the first p < alpha: the fixed-horizon
    test then errs far more often than alpha, the always-valid one still at most alpha."""
    bound = rate_bound(len(AA_SEEDS), ALPHA)
    peek_fixed = np.mean(np.array(aa_runs.peek_fixed[metric]) < ALPHA)
    peek_sequential = np.mean(np.array(aa_runs.peek_sequential[metric]) < ALPHA)
    assert peek_sequential <= bound, f"{metric}: always-valid with peeking {peek_sequential:.3f}"
    assert peek_fixed > bound, f"{metric}: peeking should inflate, got {peek_fixed:.3f}"


@pytest.mark.parametrize("metric", AB_METRICS)
def test_ab_intervals_cover_the_true_effect(ab_runs: AbRuns, metric: str) -> None:
    """A/B with known behaviour effects: the 95% interval covers the true lift (measured on
    30,000 users per arm) at 95% within the binomial band; the always-valid one at least."""
    truth = ab_runs.truth[metric]
    found = ab_runs.plain[metric]
    low, high = coverage_band(len(found))  # [0.900, 0.988] for 250 seeds
    coverage = np.mean([c.lift_ci.contains(truth.lift) for c in found])
    sequential = np.mean([c.sequential_ci.contains(truth.lift) for c in found])
    relative = np.mean([c.relative_ci.contains(truth.relative_lift) for c in found])  # type: ignore[union-attr]
    assert low <= coverage <= high, f"{metric}: coverage {coverage:.3f} not in [{low}, {high}]"
    assert low <= relative <= high, f"{metric}: relative coverage {relative:.3f}"
    assert sequential >= low, f"{metric}: always-valid coverage {sequential:.3f}"
    # and the estimates centre on the effect (within 4 SE, the truth's own included)
    lifts = np.array([c.lift for c in found])
    se = np.hypot(lifts.std() / np.sqrt(len(lifts)), truth.lift_se)
    assert abs(lifts.mean() - truth.lift) < 4 * se


def test_the_true_effects_follow_the_behaviour_effects(ab_runs: AbRuns) -> None:
    """A relative change of P(dwell >= 15 s) is the long-dwell share's relative lift (up to
    the other effects reweighting users a little); quick retries fall, retention rises."""
    truth = ab_runs.truth
    assert truth["long_dwell_share"].relative_lift == pytest.approx(AB.effects.dwell, abs=0.02)
    assert truth["quick_retry_share"].relative_lift < -0.2
    assert truth["retention_7d"].lift > 0
    assert truth["generations_per_week"].relative_lift > AB.effects.generation_rate


def test_cuped_reduces_variance_and_stays_unbiased(ab_runs: AbRuns) -> None:
    """Generations in week 1 with the pre-period's generations as covariate."""
    truth = ab_runs.truth["generations_per_week"].lift
    plain = np.array([c.lift for c in ab_runs.plain["generations_per_week"]])
    cuped = np.array([c.lift for c in ab_runs.cuped])
    assert cuped.var() < 0.6 * plain.var(), (cuped.var(), plain.var())
    # the reported intervals shrink the same way (they are honest about it) ...
    widths = [
        np.mean([c.lift_ci.high - c.lift_ci.low for c in runs])
        for runs in (ab_runs.cuped, ab_runs.plain["generations_per_week"])
    ]
    assert widths[0] < 0.8 * widths[1]
    # ... and still cover the truth; unbiased: on the same seeds it agrees with the
    # unadjusted (unbiased) lift, within 4 SE of the paired difference
    low, high = coverage_band(len(cuped))
    assert low <= np.mean([c.lift_ci.contains(truth) for c in ab_runs.cuped]) <= high
    difference = cuped - plain
    assert abs(difference.mean()) < 4 * difference.std() / np.sqrt(len(difference))


def srm_p_values(spec: SimulationSpec, seeds: range) -> np.ndarray:
    found = []
    for seed in seeds:
        arm, lost = Simulator(spec, seed).first_exposures()
        kept = arm[~lost]
        result = sample_ratio(
            int((kept == 0).sum()), int((kept == 1).sum()), spec.shares["default"]
        )
        assert result is not None
        found.append(result.p_value)
    return np.array(found)


def test_a_broken_split_trips_the_srm_alarm_and_a_correct_one_rarely() -> None:
    """A client losing 30% of the candidate's users (of 2,000: z about -7) trips the
    chi-square alarm (p < 0.001) in every run; a correct split trips it at about its 0.1%
    rate (tolerance: 99.9% binomial quantile, 0.004 for 1,500 runs)."""
    seeds = range(1500)
    alarms = np.mean(
        srm_p_values(SimulationSpec(users=1000, days=3, pre_days=0), seeds) < SRM_ALPHA
    )
    assert alarms <= rate_bound(len(seeds), SRM_ALPHA)
    broken = SimulationSpec(users=2000, days=3, pre_days=0, broken_split=0.3)
    assert np.all(srm_p_values(broken, range(100)) < SRM_ALPHA)


def test_different_segment_shares_confound_a_pooled_comparison_not_a_stratified_one() -> None:
    """A/A with a smaller candidate share for new users and creators: pooling the segments
    reports the arms' different user mix as an effect; the report's stratified comparison
    (analysis.stats.compare_stratified) does not."""
    spec = SimulationSpec(
        users=800, days=9, shares={"default": 0.5, "new_user": 0.1, "high_frequency": 0.2}
    )
    seeds = range(40)
    pooled, stratified = [], []
    for seed in seeds:
        stats = Reducer(Simulator(spec, seed).run()).sufficient(
            "generations_per_week", by_day=False
        )
        baseline, candidate = totals(stats)
        pooled.append(compare(baseline, candidate))  # type: ignore[arg-type]
        stratified.append(compare_stratified(by_segment(stats)))
    assert np.mean([c.relative_lift for c in pooled]) < -0.15  # fewer creators, fewer images
    assert np.mean([c.p_value < ALPHA for c in pooled]) > 0.5
    assert np.mean([c.p_value < ALPHA for c in stratified]) <= rate_bound(len(seeds), ALPHA)
    assert abs(np.mean([c.relative_lift for c in stratified])) < 0.03
