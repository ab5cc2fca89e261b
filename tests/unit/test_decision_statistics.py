"""Decisions you can trust, shown on simulated experiments (no database).

Per-segment SRM, multiple testing, intervals inside their range, planned power, and the
promotion rule read with intervals; plus the 99.9% stage's exact bucket shares. Seeds are
fixed; every tolerance is a 99.9% binomial quantile (one-sided for false-alarm rates,
two-sided for rates that must lie in a band), as in test_statistics_simulation.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.stats import binom

from analysis.experiment_report import MIN_TESTED_USERS
from analysis.gates_policy import Promotion
from analysis.guardrails import worsening
from analysis.intervals import Scale
from analysis.metrics import METRICS, Sufficient
from analysis.multiple_testing import benjamini_hochberg, holm
from analysis.power import plan, power
from analysis.promotion import evaluate_promotion
from analysis.simulation.generate import Simulator
from analysis.simulation.model import SEGMENTS, Effects, SimulationSpec
from analysis.simulation.reduce import Reducer
from analysis.simulation.resample import Population
from analysis.srm import candidate_bucket_share, candidate_buckets, check_split
from analysis.stats import SRM_ALPHA, compare, compare_stratified, sample_ratio
from gateway.assignment import CompiledExperiment
from gateway.experiments import Experiment
from gateway.hashing import NUM_BUCKETS, bucket
from storage.metrics import Key

pytestmark = pytest.mark.slow  # statistical simulations: `make test`, not `make test-fast`

ALPHA = 0.05
SCALES = {metric.name: metric.scale for metric in METRICS}
HIGHER = {metric.name: metric.higher_is_better for metric in METRICS}


def upper(n: int, p: float) -> float:
    """99.9% upper quantile of a binomial rate."""
    return float(binom.ppf(0.999, n, p)) / n


def band(n: int, low: float, high: float) -> tuple[float, float]:
    """Where an observed rate of n trials falls (99.9%) when its true rate is in [low, high]."""
    return float(binom.ppf(0.0005, n, low)) / n, float(binom.ppf(0.9995, n, high)) / n


# ---------------------------------------------------------------- 1. SRM per segment
def split_cells(spec: SimulationSpec, seed: int) -> dict[str, tuple[int, int, float]]:
    simulator = Simulator(spec, seed)
    arm, lost = simulator.first_exposures()
    cells = {}
    for index, segment in enumerate(SEGMENTS):
        kept = (simulator.segments == index) & ~lost & (arm >= 0)
        b, c = int((arm[kept] == 0).sum()), int((arm[kept] == 1).sum())
        if b + c:
            cells[segment] = (b, c, spec.share(index))
    return cells


def pooled_p(cells: dict[str, tuple[int, int, float]]) -> float:
    b = sum(v[0] for v in cells.values())
    c = sum(v[1] for v in cells.values())
    expected = sum((v[0] + v[1]) * v[2] for v in cells.values()) / (b + c)
    found = sample_ratio(b, c, expected)
    assert found is not None
    return found.p_value


def test_a_broken_segment_trips_the_split_check_that_the_pooled_test_misses() -> None:
    """New users over-enrolled in the candidate (40% of their baseline users lost), and two
    segments with opposite errors: the pooled test stays quiet, the gate's check does not,
    and it names the segment."""
    base = {"users": 12_000, "days": 5, "pre_days": 7}
    one = check_split(split_cells(SimulationSpec(**base, broken_segments={"new_user": -0.4}), 1))
    assert one.mismatch and one.worst is not None and one.worst.scope == "new_user"
    assert one.worst.p_value < 1e-8
    two_cells = split_cells(
        SimulationSpec(**base, broken_segments={"new_user": -0.25, "everyone_else": 0.1}), 2
    )
    two = check_split(two_cells)
    assert pooled_p(two_cells) > SRM_ALPHA  # the errors cancel in the pooled count
    assert two.mismatch and two.joint_p_value < SRM_ALPHA / 2
    print(
        f"\nbroken new_user: segment p {one.worst.p_value:.2g}, joint p {one.joint_p_value:.2g}; "
        f"offsetting: pooled p {pooled_p(two_cells):.2g}, joint p {two.joint_p_value:.2g}"
    )


def test_a_correct_split_rarely_trips_the_split_check() -> None:
    """Joint and per-segment tests at half the SRM level each: at most 0.1% false alarms."""
    seeds = range(1500)
    spec = SimulationSpec(users=1000, days=3, pre_days=0, shares={"default": 0.5, "new_user": 0.2})
    alarms = np.mean([check_split(split_cells(spec, seed)).mismatch for seed in seeds])
    assert alarms <= upper(len(seeds), SRM_ALPHA)


def test_the_999_stage_expects_its_exact_buckets() -> None:
    """At 99.9% GrowthBook's float range start (1 - 0.999 = 0.0010000000000000009) gives the
    baseline 11 of the 10,000 buckets. With 1.5 M users hashed for real, the configured
    share trips SRM; the exact bucket share does not."""
    experiment = Experiment.model_validate(
        {"name": "ramp", "seed": "ramp-seed", "baseline": "v1", "candidate": "v2",
         "stages": [{"name": "99.9%", "shares": {"default": 0.999}}], "stage": "99.9%"}
    )  # fmt: skip
    start = CompiledExperiment(experiment).starts["everyone_else"]
    assert candidate_buckets(0.999) == sum(b / NUM_BUCKETS >= start for b in range(NUM_BUCKETS))
    assert candidate_buckets(0.999) == 9989 and candidate_bucket_share(0.5) == 0.5
    # the real hash puts users in those buckets at the exact rate
    buckets = np.array([bucket("ramp-seed", f"user-{i}") for i in range(1_000_000)])
    candidate = int((buckets / NUM_BUCKETS >= start).sum())
    exact = sample_ratio(len(buckets) - candidate, candidate, candidate_bucket_share(0.999))
    assert exact is not None and not exact.mismatch
    # at 3 M users (uniform buckets, 300 seeds) the configured share trips SRM nearly
    # always, the exact share at its 0.1% rate
    rng = np.random.default_rng(999)
    seeds, users = 300, 3_000_000
    baseline = rng.binomial(users, 1 - candidate_bucket_share(0.999), seeds)
    nominal_alarms = np.mean([sample_ratio(b, users - b, 0.999).mismatch for b in baseline])  # type: ignore[union-attr]
    exact_alarms = np.mean(
        [sample_ratio(b, users - b, candidate_bucket_share(0.999)).mismatch for b in baseline]  # type: ignore[union-attr]
    )
    print(f"\n99.9% stage, 3 M users: SRM alarms {nominal_alarms:.0%} with the configured "
          f"share, {exact_alarms:.1%} with the exact bucket share")  # fmt: skip
    assert nominal_alarms > 0.9
    assert exact_alarms <= upper(seeds, SRM_ALPHA)


# ---------------------------------------------------------------- 2. multiple testing
AA = SimulationSpec(users=500, days=9, pre_days=7)
AA_SEEDS = range(200)
ALL_METRICS = [metric.name for metric in METRICS]
GUARDRAILS = ["success_rate", "negative_feedback_rate", "download_rate"]


def by_segment(stats: dict[Key, Sufficient], day: object = None) -> dict:
    segments = {s for _, s, d in stats if d == day}
    return {
        s: (stats[("baseline", s, day)], stats[("candidate", s, day)])
        for s in segments
        if ("baseline", s, day) in stats and ("candidate", s, day) in stats
    }


@dataclass
class AaFamily:
    raw_any: list[bool]  # some row with a fixed-horizon p < alpha
    bh_any: list[bool]  # some row with a BH q < alpha
    rows: list[int]
    gate_holm: list[bool]  # a guardrail breach at some daily look, Holm
    gate_raw: list[bool]  # the same without correction


@pytest.fixture(scope="module")
def aa_family() -> AaFamily:
    found = AaFamily([], [], [], [], [])
    for seed in AA_SEEDS:
        reducer = Reducer(Simulator(AA, seed).run())
        p_values = []
        for metric in ALL_METRICS:
            stats = reducer.sufficient(metric, by_day=False)
            rows = [compare_stratified(by_segment(stats))]
            rows += [compare(b, c) for b, c in by_segment(stats).values()]
            p_values += [  # the report's family: rows with enough users to test
                r.p_value
                for r in rows
                if r is not None and min(r.n_baseline, r.n_candidate) >= MIN_TESTED_USERS
            ]
        found.rows.append(len(p_values))
        found.raw_any.append(min(p_values) < ALPHA)
        found.bh_any.append(min(benjamini_hochberg(p_values)) < ALPHA)
        # the gate looks every day; tuned to the sample it has at the end
        looks = {m: reducer.cumulative(m) for m in GUARDRAILS}
        holm_alarm = raw_alarm = False
        for day in range(AA.days):
            comparisons = {}
            for m in GUARDRAILS:
                b, c = looks[m][day]
                found_c = compare(b, c, tuning_users=AA.users) if b.n > 1 < c.n else None
                comparisons[m] = found_c and {
                    "lift": found_c.lift, "sequential_p_value": found_c.sequential_p_value,
                }  # fmt: skip
            members, _ = worsening(comparisons, HIGHER)
            holm_alarm |= any(w.breach(ALPHA) for w in members)
            raw_alarm |= any(w.worse and w.p_value < ALPHA for w in members)
        found.gate_holm.append(holm_alarm)
        found.gate_raw.append(raw_alarm)
    return found


def _as_dict(c: object) -> dict | None:
    from dataclasses import asdict

    return None if c is None else asdict(c)  # type: ignore[call-overload]


def promotion_readings(reducer: Reducer, rule: Promotion, spec: SimulationSpec) -> dict:
    """The promotion rule on in-memory data, as the report builds it."""
    metric, scale = rule.metric, SCALES[rule.metric]
    daily_stats = reducer.sufficient(metric, by_day=True)
    days = sorted({d for _, _, d in daily_stats})
    daily = [
        {"day": d.isoformat(), "comparison": _as_dict(
            compare_stratified(by_segment(daily_stats, d), tuning_users=spec.users, scale=scale)
        )}
        for d in days
    ]  # fmt: skip
    last = Reducer(reducer.sim, first=spec.days - rule.days)
    pooled = compare_stratified(
        by_segment(last.sufficient(metric, by_day=False)), tuning_users=spec.users, scale=scale
    )
    retries = reducer.sufficient(rule.must_decrease or "", by_day=False)
    falling = compare_stratified(by_segment(retries), tuning_users=spec.users)
    return evaluate_promotion(daily, _as_dict(pooled), _as_dict(falling), rule)


def test_aa_exploratory_rows_need_fdr_adjustment(aa_family: AaFamily) -> None:
    """~30 metric x scope rows (with 30+ users per arm) at 0.05 each: most A/A runs show
    something "significant"; with Benjamini-Hochberg (in an A/A test FDR = family-wise
    error) at most alpha do."""
    raw, adjusted = np.mean(aa_family.raw_any), np.mean(aa_family.bh_any)
    print(f"\nA/A, {np.mean(aa_family.rows):.0f} rows: any raw p < 0.05 in {raw:.1%} of runs, "
          f"any BH q < 0.05 in {adjusted:.1%}")  # fmt: skip
    assert min(aa_family.rows) >= 20
    assert raw > 0.5
    assert adjusted <= upper(len(AA_SEEDS), ALPHA)


def test_aa_gate_family_wise_false_alarms_are_at_most_alpha(aa_family: AaFamily) -> None:
    """The gate's guardrail family, looked at every day with always-valid p-values and
    Holm's correction: a false rollback in at most alpha of A/A runs."""
    holm_rate, raw_rate = np.mean(aa_family.gate_holm), np.mean(aa_family.gate_raw)
    print(f"\nA/A gate, daily looks, 3 guardrails: false alarm {holm_rate:.1%} with Holm, "
          f"{raw_rate:.1%} without")  # fmt: skip
    assert holm_rate <= upper(len(AA_SEEDS), ALPHA)
    assert holm_rate <= raw_rate


def test_aa_promotion_on_noise_literal_vs_intervals() -> None:
    """Small A/A runs (75 users per arm): the literal rule passes on noise now and then; the
    interval readings, which need the evidence above +8%, practically never."""
    spec, seeds = SimulationSpec(users=150, days=5, pre_days=0), range(300)
    passes: dict[str, list[bool]] = {"point": [], "daily_interval": [], "pooled_always_valid": []}
    for seed in seeds:
        readings = promotion_readings(Reducer(Simulator(spec, seed).run()), Promotion(), spec)
        for name, ok in readings["readings"].items():
            passes[name].append(ok)
    rates = {name: float(np.mean(found)) for name, found in passes.items()}
    print(f"\nA/A promotion passes at 75/arm: {rates}")
    assert rates["point"] > 0.01
    for strict in ("daily_interval", "pooled_always_valid"):
        assert rates[strict] <= upper(len(seeds), 0.001) and rates[strict] < rates["point"]


def test_holm_and_bh_agree_with_statsmodels() -> None:
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(3)
    for p in ([0.01, 0.04, 0.03, 0.2], [0.5, 0.5, 0.01], list(rng.random(40) ** 3)):
        assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))
        assert benjamini_hochberg(p) == pytest.approx(list(multipletests(p, method="fdr_bh")[1]))
    assert holm([]) == [] and benjamini_hochberg([]) == []


# ---------------------------------------------------------------- 3. intervals in range
AB = SimulationSpec(
    users=1000, days=7, pre_days=0, effects=Effects(dwell=0.15, negative_feedback=-0.2)
)
SIZES = (200, 1000, 10_000)
REPS = 2000


@pytest.fixture(scope="module")
def populations() -> dict[str, Population]:
    return Population.of(AB, ["long_dwell_share", "negative_feedback_rate"], users=40_000)


@pytest.mark.parametrize("metric", ["long_dwell_share", "negative_feedback_rate"])
def test_relative_intervals_miss_evenly_on_both_sides(
    populations: dict[str, Population], metric: str
) -> None:
    """Experiments of 200, 1,000 and 10,000 users per arm drawn from a simulated population
    of 40,000 (its own ratio is the exact truth): the relative lift's 95% interval misses
    below and above at 1.5-3.5% each; arm intervals and plotted bands stay in range."""
    population = populations[metric]
    truth = population.relative_lift
    low, high = band(REPS, 0.015, 0.035)
    scale = SCALES[metric]
    for n in SIZES:
        rng = np.random.default_rng(n)
        baseline, candidate = (
            population.baseline.draw(n, REPS, rng),
            population.candidate.draw(n, REPS, rng),
        )
        below = above = 0
        for b, c in zip(baseline, candidate, strict=True):
            found = compare(b, c, scale=scale, tuning_users=2 * n)
            assert found is not None and found.relative_ci is not None
            below += truth < found.relative_ci.low
            above += truth > found.relative_ci.high
            assert found.relative_ci.low >= -1
            seq = found.sequential_relative_ci
            assert seq is not None and seq.low >= -1
            for arm in (found.baseline_ci, found.candidate_ci):
                assert arm.low >= 0 and (scale != Scale.RATE or arm.high <= 1)
        print(f"\n{metric} n={n}/arm: misses below {below / REPS:.2%}, above {above / REPS:.2%}")
        assert low <= below / REPS <= high, (n, below / REPS)
        assert low <= above / REPS <= high, (n, above / REPS)


def test_a_rate_interval_stays_in_its_range_at_tiny_counts() -> None:
    """Three users each side, all converting or none: the bands stay inside [0, 1]."""
    everyone = Sufficient(3, 3, 3, 3, 3, 3)
    nobody = Sufficient(3, 0, 3, 0, 3, 0)
    found = compare(nobody, everyone, scale=Scale.RATE)
    assert found is not None
    assert 0 <= found.baseline_ci.low <= found.baseline_ci.high <= 1
    assert 0 <= found.candidate_ci.low <= found.candidate_ci.high <= 1
    assert found.candidate_ci.high == 1 and found.baseline_ci.low == pytest.approx(0, abs=1e-12)


# ---------------------------------------------------------------- 4. power you can plan
def test_tuning_to_the_planned_sample_gives_the_power_the_plan_says(
    populations: dict[str, Population],
) -> None:
    """500 users per arm, dwell up 15%: the always-valid test tuned to 5,000 per arm (the
    old fixed setting) rarely detects it; tuned to the planned 500 it does, at the power
    analysis.power predicts; and at the effect the plan calls detectable (its MDE), the
    simulated power is the 80% it promises."""
    population = populations["long_dwell_share"]
    rng = np.random.default_rng(7)
    reps, n = 1000, 500
    baseline, candidate = (
        population.baseline.draw(n, reps, rng),
        population.candidate.draw(n, reps, rng),
    )
    rates, predicted = {}, {}
    for per_arm in (5000, 500):
        found = [
            compare(b, c, tuning_users=2 * per_arm)
            for b, c in zip(baseline, candidate, strict=True)
        ]
        rates[per_arm] = np.mean([f.sequential_p_value < ALPHA for f in found])  # type: ignore[union-attr]
        predicted[per_arm] = np.mean(
            [power(population.relative_lift, f.log_ratio_variance, 2 * n, 2 * per_arm, ALPHA)  # type: ignore[union-attr,arg-type]
             for f in found]
        )  # fmt: skip
    print(
        f"\npower at 500/arm, +15% dwell: tuned to 5,000/arm {rates[5000]:.1%} (predicted "
        f"{predicted[5000]:.1%}), tuned to 500/arm {rates[500]:.1%} ({predicted[500]:.1%})"
    )
    assert rates[500] > rates[5000] + 0.2
    for per_arm in (5000, 500):
        lo, hi = band(reps, predicted[per_arm] - 0.03, predicted[per_arm] + 0.03)
        assert lo <= rates[per_arm] <= hi
    # the plan's MDE is the effect detected 80% of the time
    first = compare(baseline[0], candidate[0], tuning_users=2 * n)
    assert first is not None and first.log_ratio_variance is not None
    today = plan("long_dwell_share", 0.08, first.log_ratio_variance, 2 * n, 2 * n / 7, 2 * n, ALPHA)
    shift = math.log1p(today.mde) - math.log1p(population.relative_lift)
    hits = [
        compare(b, Sufficient(c.n, c.sum_num * math.exp(shift), c.sum_den,
                              c.sum_num2 * math.exp(2 * shift), c.sum_den2,
                              c.sum_num_den * math.exp(shift)), tuning_users=2 * n)
        for b, c in zip(baseline, candidate, strict=True)
    ]  # fmt: skip
    detected = np.mean([h.sequential_p_value < ALPHA for h in hits if h])
    print(f"MDE today {today.mde:+.1%}: detected {detected:.1%}; the rule's +8% needs "
          f"{today.days_needed} more days at {today.users_per_day:.0f} users/day")  # fmt: skip
    lo, hi = band(reps, 0.74, 0.86)
    assert lo <= detected <= hi
    assert today.days_needed is not None and today.days_needed > 0
