"""Each metric's true value per arm: the whole (large) population in one arm, then the other.

The same seed gives the same users both times, so the difference is the effect of the
candidate on this population's behaviour over the same days, measured with the metric's
own definition (``analysis.simulation.reduce``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from analysis.simulation.generate import Assign, Simulator
from analysis.simulation.model import BASELINE, CANDIDATE, SimulationSpec
from analysis.simulation.reduce import Reducer, totals
from analysis.stats import Estimate, ratio_estimate


@dataclass(frozen=True)
class TrueValue:
    baseline: float
    candidate: float
    lift_se: float  # Monte Carlo error of the lift (delta method over the simulated users)

    @property
    def lift(self) -> float:
        return self.candidate - self.baseline

    @property
    def relative_lift(self) -> float:
        return self.candidate / self.baseline - 1


def everyone_in(arm: int) -> Assign:
    def assign(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.full(len(users), arm), np.zeros(len(users), dtype=bool)

    return assign


def true_values(
    spec: SimulationSpec, metrics: list[str], *, users: int = 50_000, seed: int = 2**31 - 1
) -> dict[str, TrueValue]:
    """Ratio of sums over the whole window (the estimand of the overall comparison)."""
    big = replace(spec, users=users, broken_split=0.0, broken_segments={})
    estimates: dict[str, list[Estimate]] = {metric: [] for metric in metrics}
    for arm in (BASELINE, CANDIDATE):
        reducer = Reducer(Simulator(big, seed).run(assign=everyone_in(arm)))
        for metric in metrics:
            total = next(s for s in totals(reducer.sufficient(metric, by_day=False)) if s)
            found = ratio_estimate(total)
            assert found is not None, metric
            estimates[metric].append(found)
    return {
        metric: TrueValue(b.value, c.value, math.sqrt(b.variance + c.variance))
        for metric, (b, c) in estimates.items()
    }
