"""The figure line every benchmark prints parses back for every value ``:.4g`` writes."""

from __future__ import annotations

import pytest

from benchmarks.harness import FIGURE_LINE, Figure


@pytest.mark.parametrize("value", [0.0123, 2.3e-05, 12.0, -1.5, 1.5e7, float("inf")])
def test_a_printed_figure_parses_back(value: float) -> None:
    line = Figure("busy_fraction_delta", value, "ratio", "details", "<=", 0.01).line()
    match = FIGURE_LINE.match(line)
    assert match is not None, line
    assert float(match["value"]) == pytest.approx(float(f"{value:.4g}"))
    assert (match["op"], match["target"], match["detail"]) == ("<=", "0.01", "details")
