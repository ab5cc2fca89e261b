"""Tests for the pure assignment step (gateway.assignment.Assigner) and gateway.segments.

No database: distribution per segment, monotone ramps, rollback, allowlist, namespaces,
GrowthBook compatibility of the decision, and segment thresholds.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.assignment import Assigner, CompiledExperiment, Decision, in_namespace
from gateway.experiments import Experiment, parse_config
from gateway.hashing import NUM_BUCKETS, bucket, bucket_ranges, choose_variation, growthbook_hash
from gateway.segments import (
    EVERYONE_ELSE,
    HIGH_FREQUENCY,
    NEW_USER,
    SEGMENTS,
    STYLE_PREFERENCE,
    SegmentRules,
    UserAttributes,
    segment_of,
)
from storage.models import Arm

VERSIONS = ["v1", "v2", "v3"]
RAMP = [("internal", 0.0), ("5%", 0.05), ("15%", 0.15), ("50%", 0.5), ("100%", 1.0)]
CHI2_CRITICAL_1DOF_ALPHA_0001 = 10.828  # chi-square, 1 degree of freedom, upper 0.1% point


def config_for(stage: str = "5%", **experiment: Any) -> Assigner:
    """An Assigner for one experiment ``exp`` (v1 -> v2) ramping through RAMP."""
    data = {
        "default_version": "v1",
        "experiments": [
            {
                "name": "exp",
                "seed": "exp-seed",
                "baseline": "v1",
                "candidate": "v2",
                "stages": [{"name": n, "shares": {"default": s}} for n, s in RAMP],
                "stage": stage,
                **experiment,
            }
        ],
    }
    return Assigner(parse_config(data, VERSIONS))


def candidate_fraction_expected(share: float) -> float:
    """Exact share of the 10,000 buckets that GrowthBook's ranges give the candidate."""
    start = bucket_ranges(2, 1.0, [1 - share, share])[1][0]
    return sum(1 for b in range(NUM_BUCKETS) if b / NUM_BUCKETS >= start) / NUM_BUCKETS


def chi_square_two_cells(observed_candidates: int, n: int, p: float) -> float:
    """Goodness-of-fit statistic for (candidate, baseline) counts against shares (p, 1 - p)."""
    expected = (n * p, n * (1 - p))
    observed = (observed_candidates, n - observed_candidates)
    return sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))


# --- distribution ------------------------------------------------------------------------


def test_candidate_share_per_segment_matches_its_configured_share() -> None:
    shares = {"default": 0.15, NEW_USER: 0.05, HIGH_FREQUENCY: 0.5, STYLE_PREFERENCE: 0.3}
    data = {
        "default_version": "v1",
        "experiments": [
            {
                "name": "stratified",
                "baseline": "v1",
                "candidate": "v2",
                "stages": [{"name": "ramp", "shares": shares}],
                "stage": "ramp",
            }
        ],
    }
    assigner = Assigner(parse_config(data, VERSIONS))
    n = 100_000
    for segment in SEGMENTS:
        share = shares.get(segment, shares["default"])
        p = candidate_fraction_expected(share)
        assert abs(p - share) <= 1 / NUM_BUCKETS
        candidates = 0
        for i in range(n):
            decision = assigner.decide(f"{segment}-user-{i:06d}", segment)
            assert decision.segment == segment and decision.reason == "hash"
            candidates += decision.arm == Arm.CANDIDATE
        statistic = chi_square_two_cells(candidates, n, p)
        assert statistic < CHI2_CRITICAL_1DOF_ALPHA_0001, (segment, candidates / n, share)


def test_chi_square_helper_detects_a_wrong_share() -> None:
    # guard for the test above: a 1-point miss on 100,000 users at 15% is detected
    assert chi_square_two_cells(16_000, 100_000, 0.15) > CHI2_CRITICAL_1DOF_ALPHA_0001
    assert chi_square_two_cells(15_000, 100_000, 0.15) == 0


# --- monotone ramps, rollback, allowlist ----------------------------------------------------


def candidates_at(stage: str, users: list[str], **experiment: Any) -> set[str]:
    assigner = config_for(stage, **experiment)
    return {u for u in users if assigner.decide(u, EVERYONE_ELSE).arm == Arm.CANDIDATE}


def test_ramp_up_is_monotone() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    by_stage = [candidates_at(name, users) for name, _ in RAMP]
    assert by_stage[0] == set()  # internal stage: nobody (no allowlist here)
    assert by_stage[-1] == set(users)  # 100%: everyone
    for earlier, later in itertools.pairwise(by_stage):
        assert earlier <= later
    for (_, share), chosen in zip(RAMP, by_stage, strict=True):
        assert abs(len(chosen) / len(users) - share) < 0.01


def test_candidates_get_the_candidate_version() -> None:
    assigner = config_for("50%")
    decisions = [assigner.decide(f"user-{i}", NEW_USER) for i in range(200)]
    assert {(d.arm, d.variant) for d in decisions} == {
        (Arm.BASELINE, "v1"),
        (Arm.CANDIDATE, "v2"),
    }
    assert {(d.experiment, d.segment, d.reason) for d in decisions} == {("exp", NEW_USER, "hash")}


@pytest.mark.parametrize("stage", [name for name, _ in RAMP])
def test_rollback_sends_everyone_to_the_baseline(stage: str) -> None:
    assigner = config_for(stage, rolled_back=True, allowlist=["alice", "bob"])
    for user in ["alice", "bob", *(f"user-{i}" for i in range(2_000))]:
        for segment in SEGMENTS:
            assert assigner.decide(user, segment) == Decision(
                "v1", "exp", Arm.BASELINE, segment, "rollback"
            )


@pytest.mark.parametrize("stage", [name for name, _ in RAMP])
def test_allowlisted_users_always_get_the_candidate(stage: str) -> None:
    allowlist = ["alice@example.com", "bob", "user-1"]
    assigner = config_for(stage, allowlist=allowlist)
    for user in allowlist:
        for segment in SEGMENTS:
            assert assigner.decide(user, segment) == Decision(
                "v2", "exp", Arm.CANDIDATE, segment, "allowlist"
            )
    if stage == "internal":
        others = [assigner.decide(f"user-{i}", EVERYONE_ELSE) for i in range(2, 2_000)]
        assert {d.arm for d in others} == {Arm.BASELINE}


def compiled(seed: str, shares: list[float], stage: int) -> CompiledExperiment:
    experiment = Experiment(
        name="prop",
        seed=seed,
        baseline="v1",
        candidate="v2",
        stages=[{"name": f"s{i}", "shares": {"default": s}} for i, s in enumerate(shares)],
        stage=f"s{stage}",
    )
    return CompiledExperiment(experiment)


unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    seed=st.text(min_size=1, max_size=40),
    shares=st.tuples(unit, unit).map(sorted),
    users=st.lists(st.text(max_size=30), min_size=1, max_size=20),
    segment=st.sampled_from(SEGMENTS),
)
def test_candidate_at_a_share_stays_candidate_at_any_larger_share(
    seed: str, shares: list[float], users: list[str], segment: str
) -> None:
    low, high = compiled(seed, shares, 0), compiled(seed, shares, 1)
    for user in users:
        if low.hashed_arm(user, segment) == Arm.CANDIDATE:
            assert high.hashed_arm(user, segment) == Arm.CANDIDATE
    if shares[0] == 0.0:
        assert all(low.hashed_arm(u, segment) == Arm.BASELINE for u in users)
    if shares[1] == 1.0:
        assert all(high.hashed_arm(u, segment) == Arm.CANDIDATE for u in users)


# --- namespaces ---------------------------------------------------------------------------


def namespaced(ranges: list[tuple[float, float]]) -> Assigner:
    experiments = [
        {
            "name": f"exp-{i}",
            "baseline": "v1",
            "candidate": f"v{i + 2}",
            "namespace": {"id": "render", "start": start, "end": end},
            "stages": [{"name": "half", "shares": {"default": 0.5}}],
            "stage": "half",
        }
        for i, (start, end) in enumerate(ranges)
    ]
    return Assigner(parse_config({"default_version": "v1", "experiments": experiments}, VERSIONS))


def test_experiments_in_one_namespace_never_share_a_user() -> None:
    assigner = namespaced([(0.0, 0.5), (0.5, 1.0)])
    first, second = assigner.experiments
    n = 20_000
    counts = {first.name: 0, second.name: 0}
    for i in range(n):
        user = f"user-{i}"
        inside = [e for e in (first, second) if e.contains(user)]
        assert len(inside) == 1, user  # the two ranges cover [0, 1) without overlap
        (experiment,) = inside
        counts[experiment.name] += 1
        assert assigner.experiment_for(user) is experiment
        decision = assigner.decide(user, EVERYONE_ELSE)
        assert decision.experiment == experiment.name
        assert decision.variant in (experiment.baseline, experiment.candidate)
    for count in counts.values():
        assert abs(count / n - 0.5) < 0.02, counts


def test_users_outside_every_namespace_get_the_default_version() -> None:
    assigner = namespaced([(0.0, 0.2), (0.5, 0.7)])
    outside = 0
    for i in range(5_000):
        user = f"user-{i}"
        n = growthbook_hash("__render", user, 1)
        assert n is not None
        expected = "exp-0" if n < 0.2 else "exp-1" if 0.5 <= n < 0.7 else None
        decision = assigner.decide(user, NEW_USER)
        assert decision.experiment == expected
        if expected is None:
            outside += 1
            assert decision == Decision("v1")  # default_version, no experiment, no arm
            assert decision.reason == "default" and decision.arm is None
    assert abs(outside / 5_000 - 0.6) < 0.03


def test_in_namespace_matches_growthbook_hash_v1() -> None:
    # GrowthBook's inNamespace: hash v1 of the user under "__" + namespace id
    for i in range(500):
        user = f"u{i}"
        n = growthbook_hash("__ns", user, 1)
        assert n is not None
        assert in_namespace(user, "ns", 0.25, 0.75) == (0.25 <= n < 0.75)


def test_no_experiments_means_the_default_version_for_everyone() -> None:
    assigner = Assigner(parse_config({"default_version": "v3"}, VERSIONS))
    assert assigner.decide("anyone", EVERYONE_ELSE) == Decision("v3")
    assert assigner.experiment_for("anyone") is None


# --- GrowthBook compatibility ---------------------------------------------------------------


@pytest.mark.parametrize("share", [0.0, 0.05, 0.15, 1 / 3, 0.5, 0.9999, 1.0])
def test_arm_is_what_a_growthbook_sdk_would_choose(share: float) -> None:
    experiment = compiled("gb-seed", [share], 0)
    ranges = bucket_ranges(2, 1.0, [1 - share, share])
    for user in ["alice", "bob", "123", "user-42", "a@b.c", *(f"x{i}" for i in range(300))]:
        n = growthbook_hash("gb-seed", user, 2)
        assert n is not None
        variation = choose_variation(n, ranges)
        expected = [Arm.BASELINE, Arm.CANDIDATE][variation]
        assert experiment.hashed_arm(user, EVERYONE_ELSE) == expected, (user, n)


def users_in_buckets(seed: str, wanted: set[int]) -> dict[int, str]:
    """A user id for each wanted bucket (found by scanning synthetic ids)."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < len(wanted):
        user = f"edge-{i}"
        b = bucket(seed, user)
        if b in wanted and b not in found:
            found[b] = user
        i += 1
    return found


@pytest.mark.parametrize("share", [0.05, 0.15, 0.5, 0.7, 1.0])
def test_users_on_the_boundary_bucket_match_growthbook(share: float) -> None:
    """The first candidate bucket and its neighbours: where >= vs > or rounding would differ."""
    experiment = compiled("gb-seed", [share], 0)
    ranges = bucket_ranges(2, 1.0, [1 - share, share])
    # GrowthBook's first candidate bucket. Float rounding can move it: 1 - 0.7 is
    # 0.30000000000000004, so at 70% the candidate starts at bucket 3001 (owning 69.99%).
    first_candidate = next(b for b in range(NUM_BUCKETS) if choose_variation(b / 1e4, ranges))
    assert abs(first_candidate - round((1 - share) * NUM_BUCKETS)) <= 1
    wanted = {first_candidate - 1, first_candidate, first_candidate + 1}
    wanted = {b for b in wanted if 0 <= b < NUM_BUCKETS}
    for b, user in users_in_buckets("gb-seed", wanted).items():
        n = growthbook_hash("gb-seed", user, 2)
        assert n == b / NUM_BUCKETS
        expected = [Arm.BASELINE, Arm.CANDIDATE][choose_variation(n, ranges)]
        assert expected == (Arm.CANDIDATE if b >= first_candidate else Arm.BASELINE)
        assert experiment.hashed_arm(user, EVERYONE_ELSE) == expected, (b, user)


def test_seed_falls_back_to_the_experiment_name_when_hashing() -> None:
    data = {
        "default_version": "v1",
        "experiments": [
            {
                "name": "named-seed",
                "baseline": "v1",
                "candidate": "v2",
                "stages": [{"name": "half", "shares": {"default": 0.5}}],
                "stage": "half",
            }
        ],
    }
    (experiment,) = Assigner(parse_config(data, VERSIONS)).experiments
    ranges = bucket_ranges(2, 1.0, [0.5, 0.5])
    for i in range(200):
        n = growthbook_hash("named-seed", f"u{i}", 2)
        assert n is not None
        expected = [Arm.BASELINE, Arm.CANDIDATE][choose_variation(n, ranges)]
        assert experiment.hashed_arm(f"u{i}", EVERYONE_ELSE) == expected


# --- segments -----------------------------------------------------------------------------

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
RULES = SegmentRules()


def attrs(
    signed_up_days_ago: float | None = None,
    generations: int | None = None,
    styled: int | None = None,
) -> UserAttributes:
    signed_up = None if signed_up_days_ago is None else NOW - timedelta(days=signed_up_days_ago)
    return UserAttributes(signed_up, generations, styled)


@pytest.mark.parametrize(
    ("attributes", "segment"),
    [
        (UserAttributes(), EVERYONE_ELSE),
        (attrs(0), NEW_USER),
        (attrs(3), NEW_USER),  # exactly 3 days: still new
        (attrs(3 + 1 / 86_400), EVERYONE_ELSE),  # 3 days and a second: not new
        (attrs(-1), NEW_USER),  # a sign-up in the future (clock skew) counts as new
        (attrs(30, generations=10), HIGH_FREQUENCY),
        (attrs(30, generations=9), EVERYONE_ELSE),
        (attrs(None, generations=500), HIGH_FREQUENCY),
        (attrs(30, styled=5), STYLE_PREFERENCE),
        (attrs(30, styled=4), EVERYONE_ELSE),
        # precedence: new user > high frequency > style preference
        (attrs(1, generations=50, styled=50), NEW_USER),
        (attrs(30, generations=50, styled=50), HIGH_FREQUENCY),
        (attrs(30, generations=9, styled=50), STYLE_PREFERENCE),
        (attrs(30, generations=0, styled=0), EVERYONE_ELSE),
    ],
)
def test_segment_thresholds_and_precedence(attributes: UserAttributes, segment: str) -> None:
    assert segment_of(attributes, RULES, NOW) == segment


def test_segment_thresholds_are_configurable() -> None:
    rules = SegmentRules(
        new_user_days=1, high_frequency_min_generations=3, style_preference_min_uses=2
    )
    assert segment_of(attrs(2), rules, NOW) == EVERYONE_ELSE
    assert segment_of(attrs(0.5), rules, NOW) == NEW_USER
    assert segment_of(attrs(30, generations=3), rules, NOW) == HIGH_FREQUENCY
    assert segment_of(attrs(30, styled=2), rules, NOW) == STYLE_PREFERENCE
    # a zero-day window: only a sign-up at (or after) "now" is new
    assert segment_of(attrs(0), SegmentRules(new_user_days=0), NOW) == NEW_USER
    assert segment_of(attrs(0.01), SegmentRules(new_user_days=0), NOW) == EVERYONE_ELSE


@pytest.mark.parametrize("signed_up_hours_ago", [1, 71, 73, 200])
def test_naive_and_aware_datetimes_give_the_same_segment(signed_up_hours_ago: int) -> None:
    """Naive times are UTC (SQLite returns stored times naive); any mix gives one answer."""
    aware_signup = NOW - timedelta(hours=signed_up_hours_ago)
    naive_signup = aware_signup.replace(tzinfo=None)
    naive_now = NOW.replace(tzinfo=None)
    tokyo_now = NOW.astimezone(timezone(timedelta(hours=9)))  # same instant, other offset
    expected = NEW_USER if signed_up_hours_ago <= 72 else EVERYONE_ELSE
    for signed_up in (aware_signup, naive_signup, aware_signup.astimezone(tokyo_now.tzinfo)):
        for now in (NOW, naive_now, tokyo_now):
            got = segment_of(UserAttributes(signed_up_at=signed_up), RULES, now)
            assert got == expected, (signed_up, now)


def test_user_attributes_missing_and_merged() -> None:
    assert UserAttributes().missing()
    assert attrs(1, 2).missing()
    full = attrs(1, 2, 3)
    assert not full.missing()
    merged = UserAttributes(generations_7d=7).merged(full)
    assert merged == UserAttributes(full.signed_up_at, 7, 3)
    # zero is a known value, not a missing one
    assert UserAttributes(None, 0, 0).merged(attrs(1, 9, 9)) == UserAttributes(
        NOW - timedelta(days=1), 0, 0
    )
