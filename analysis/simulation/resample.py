"""Many experiments at any size, fast: users drawn from one large simulated population.

``Population.of`` runs the simulator once per arm over the same users (everyone in the
baseline, then everyone in the candidate, as ``truth`` does) and keeps each user's num and
den of a metric over the whole window. ``draw`` then builds experiments of ``n`` users per
arm by drawing users with replacement: each arm is an i.i.d. sample of the population's
users, so the population's own ratio of sums is the *exact* true value of each arm, and
the coverage of an interval is measured without Monte Carlo error in the truth.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from analysis.metrics import Sufficient
from analysis.simulation.generate import Simulator
from analysis.simulation.model import BASELINE, CANDIDATE, SimulationSpec
from analysis.simulation.reduce import Reducer
from analysis.simulation.truth import everyone_in


@dataclass(frozen=True)
class Arm:
    """Each user's num and den of one metric over the whole window."""

    num: np.ndarray
    den: np.ndarray

    @property
    def value(self) -> float:
        return float(self.num.sum() / self.den.sum())

    def draw(self, n: int, reps: int, rng: np.random.Generator) -> list[Sufficient]:
        """``reps`` samples of ``n`` users, as sufficient statistics."""
        found: list[Sufficient] = []
        chunk = max(1, 4_000_000 // n)
        for start in range(0, reps, chunk):
            index = rng.integers(0, len(self.num), (min(chunk, reps - start), n))
            x, y = self.num[index], self.den[index]
            sums = [w.sum(axis=1) for w in (x, y, x * x, y * y, x * y)]
            found += [Sufficient(n, *(float(s[i]) for s in sums)) for i in range(len(x))]
        return found


@dataclass(frozen=True)
class Population:
    baseline: Arm
    candidate: Arm

    @property
    def relative_lift(self) -> float:
        return self.candidate.value / self.baseline.value - 1

    @classmethod
    def of(
        cls, spec: SimulationSpec, metrics: list[str], *, users: int, seed: int = 2**31 - 3
    ) -> dict[str, Population]:
        """Each metric's population (two simulator runs of ``users`` users in all)."""
        big = replace(spec, users=users, broken_split=0.0, broken_segments={})
        arms: dict[str, list[Arm]] = {metric: [] for metric in metrics}
        for arm in (BASELINE, CANDIDATE):
            reducer = Reducer(Simulator(big, seed).run(assign=everyone_in(arm)))
            for metric in metrics:
                units = getattr(reducer, metric)()
                num = np.bincount(units.user, weights=units.num, minlength=users)
                den = np.bincount(units.user, weights=units.den, minlength=users)
                seen = np.unique(units.user)  # every user the metric's query yields, as in SQL
                arms[metric].append(Arm(num[seen], den[seen]))
        return {metric: cls(*pair) for metric, pair in arms.items()}
