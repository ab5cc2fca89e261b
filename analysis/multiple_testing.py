"""Corrections for testing many things at once.

- Holm (family-wise error): the gate's guardrails and the per-segment split tests. A
  rollback on "some guardrail got significantly worse" should happen in at most alpha of
  experiments where none did.
- Benjamini-Hochberg (false-discovery rate): the exploratory rows, every metric x scope.
  Of the rows it flags, at most alpha are expected to be false; in an A/A test, where
  every row is null, that is the chance of flagging anything at all.

BH is scipy's ``false_discovery_control``. Holm is the few lines below: statsmodels'
``multipletests`` computes the same values (tests/unit/test_decision_statistics.py checks
it) but runs a full ``gc.collect()`` on every call, 0.1 s in a large process, and the
report and the simulator call it thousands of times.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import false_discovery_control


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values: reject where adjusted < alpha, family-wise error <= alpha."""
    if not p_values:
        return []
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    scaled = (len(p) - np.arange(len(p))) * p[order]  # m * p(1), (m - 1) * p(2), ...
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return [float(x) for x in adjusted]


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """BH q-values: flag where q < alpha, false-discovery rate <= alpha."""
    if not p_values:
        return []
    return [float(q) for q in false_discovery_control(np.asarray(p_values, dtype=float))]
