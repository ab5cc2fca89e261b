"""Guardrail metrics that must not get significantly worse, tested as one family.

Each metric's always-valid p-value (safe under the gate's daily looks) is Holm-adjusted
across the family; a metric breaches when it moved in its worse direction and its adjusted
p is below the family's alpha. So in an experiment where nothing changed, the gate rolls
back for "a guardrail got worse" in at most alpha of experiments, however many guardrails
there are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from analysis.multiple_testing import holm


@dataclass(frozen=True)
class Worsening:
    metric: str
    lift: float
    p_value: float  # always valid, two-sided, raw
    adjusted_p_value: float  # Holm over the family
    worse: bool  # moved in the metric's worse direction

    def breach(self, alpha: float) -> bool:
        return self.worse and self.adjusted_p_value < alpha


def worsening(
    comparisons: Mapping[str, Mapping[str, Any] | None], higher_is_better: Mapping[str, bool]
) -> tuple[list[Worsening], list[str]]:
    """(the family's tested members, the metrics without a comparison yet)."""
    present = [(name, c) for name, c in comparisons.items() if c is not None]
    missing = [name for name, c in comparisons.items() if c is None]
    adjusted = holm([c["sequential_p_value"] for _, c in present])
    members = [
        Worsening(
            name,
            c["lift"],
            c["sequential_p_value"],
            q,
            (c["lift"] < 0) if higher_is_better[name] else (c["lift"] > 0),
        )
        for (name, c), q in zip(present, adjusted, strict=True)
    ]
    return members, missing
