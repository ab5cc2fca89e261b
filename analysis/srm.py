"""Sample-ratio mismatch: is each segment's split what its stage configured?

A pooled test (all users, one expected share) can miss a broken segment: one segment's
excess is diluted by the others, and two segments' opposite errors cancel. So the alarm
combines two tests over the (stage, segment) cells, each at half the SRM level so that a
correct split trips the alarm at most at that level (Bonferroni over the two):

- a joint chi-square over segment x arm (df = number of cells): sums the evidence of all
  cells, catches offsetting errors and many slightly-off segments;
- each cell's own chi-square with Holm's correction over the cells: catches one clearly
  broken segment among many, and names it.

Expected counts use the exact share of the 10,000 hash buckets the candidate owns
(``candidate_bucket_share``), not the configured float share: at 99.9% GrowthBook's ranges
give the baseline 11 buckets, not 10, and a million users would see that as a mismatch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from scipy.stats import chi2
from sqlalchemy.engine import Engine

from analysis.multiple_testing import holm
from analysis.stats import SRM_ALPHA, sample_ratio
from gateway.experiments import Experiment
from gateway.hashing import NUM_BUCKETS, bucket_ranges
from storage import metrics as sql
from storage.models import Arm

BASELINE, CANDIDATE = Arm.BASELINE.value, Arm.CANDIDATE.value


def candidate_buckets(share: float) -> int:
    """How many of the 10,000 buckets the assignment gives the candidate at ``share``:
    those with bucket / 10,000 >= GrowthBook's float range start (gateway.assignment)."""
    start = bucket_ranges(2, 1.0, [1 - share, share])[1][0]
    first = min(NUM_BUCKETS, max(0, math.ceil(start * NUM_BUCKETS)))
    while first < NUM_BUCKETS and first / NUM_BUCKETS < start:
        first += 1
    while first > 0 and (first - 1) / NUM_BUCKETS >= start:
        first -= 1
    return NUM_BUCKETS - first


def candidate_bucket_share(share: float) -> float:
    return candidate_buckets(share) / NUM_BUCKETS


@dataclass(frozen=True)
class Cell:
    scope: str  # stage/segment
    baseline: int
    candidate: int
    expected_candidate_share: float
    p_value: float
    adjusted_p_value: float  # Holm over the cells
    mismatch: bool  # this cell's own (corrected) test fires


@dataclass(frozen=True)
class SplitCheck:
    cells: list[Cell]
    joint_statistic: float
    joint_df: int
    joint_p_value: float
    alpha: float

    @property
    def worst(self) -> Cell | None:
        return min(self.cells, key=lambda c: c.adjusted_p_value, default=None)

    @property
    def mismatch(self) -> bool:
        worst = self.worst
        half = self.alpha / 2
        return self.joint_p_value < half or (worst is not None and worst.adjusted_p_value < half)


def check_split(cells: dict[str, tuple[int, int, float]], alpha: float = SRM_ALPHA) -> SplitCheck:
    """``cells``: scope -> (baseline users, candidate users, expected candidate share)."""
    statistic, df, raw, scopes = 0.0, 0, [], []
    outright = False
    for scope, (b, c, share) in cells.items():
        result = sample_ratio(b, c, share)
        if result is None:
            continue
        scopes.append((scope, b, c, share))
        raw.append(result.p_value)
        if 0.0 < share < 1.0:
            total = b + c
            expected = (total * (1 - share), total * share)
            statistic += sum((o - e) ** 2 / e for o, e in zip((b, c), expected, strict=True))
            df += 1
        elif result.p_value == 0.0:
            outright = True  # users in an arm that was given no share at all
    joint = 0.0 if outright else (float(chi2.sf(statistic, df)) if df else 1.0)
    adjusted = holm(raw)
    found = [
        Cell(scope, b, c, share, p, q, q < alpha / 2)
        for (scope, b, c, share), p, q in zip(scopes, raw, adjusted, strict=True)
    ]
    return SplitCheck(found, statistic, df, joint, alpha)


def srm_section(engine: Engine, experiment: Experiment, alpha: float = SRM_ALPHA) -> dict[str, Any]:
    """Users by arm at first exposure against the bucket share their stage gave their
    segment: each cell, the pooled test, and the joint check the gate reads."""
    if experiment.rolled_back:
        return {
            "overall": None,
            "joint": None,
            "segments": {},
            "note": "rolled back: everyone gets the baseline",
        }
    allowlisted = set(experiment.allowlist)
    stages = {stage.name: stage for stage in experiment.stages}
    counts: dict[str, list[Any]] = {}
    for stage, segment, arm, n in sql.exposures(engine, experiment.name, exclude=allowlisted):
        if stage not in stages:
            continue
        cell = counts.setdefault(
            f"{stage}/{segment}", [0, 0, candidate_bucket_share(stages[stage].share(segment))]
        )
        cell[0 if arm == BASELINE else 1] += n
    cells = {scope: (b, c, share) for scope, (b, c, share) in sorted(counts.items())}
    split = check_split(cells, alpha)
    observed_b = sum(b for b, _, _ in cells.values())
    observed_c = sum(c for _, c, _ in cells.values())
    expected_c = sum((b + c) * share for b, c, share in cells.values())
    total = observed_b + observed_c
    pooled = sample_ratio(observed_b, observed_c, expected_c / total) if total else None
    worst = split.worst
    return {
        "overall": asdict(pooled) | {"mismatch": pooled.p_value < alpha} if pooled else None,
        "joint": {
            "statistic": split.joint_statistic,
            "df": split.joint_df,
            "p_value": split.joint_p_value,
            "min_adjusted_p_value": worst.adjusted_p_value if worst else 1.0,
            "worst": worst.scope if worst else None,
            "alpha": alpha,
            "mismatch": split.mismatch,
        }
        if split.cells
        else None,
        "segments": {cell.scope: asdict(cell) for cell in split.cells},
        "note": "users by stage at first exposure; allowlisted users left out; expected "
        "shares are the candidate's exact share of the hash buckets",
    }
