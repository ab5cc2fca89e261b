"""The dashboard's charts as inline SVG (matplotlib, no browser-side code)."""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import PercentFormatter

ARM_COLOURS = {"baseline": "#4c72b0", "candidate": "#dd8452"}
LIFT_COLOUR = "#6a3d9a"
THRESHOLD_COLOUR = "#2e7d32"


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _style(axis: Any, title: str) -> None:
    axis.set_title(title, fontsize=10)
    axis.tick_params(axis="x", labelrotation=45, labelsize=8)
    axis.tick_params(axis="y", labelsize=8)
    axis.legend(fontsize=7, loc="best")
    axis.grid(alpha=0.3)


def trend_chart(title: str, daily: list[dict[str, Any]], scale: str) -> str | None:
    """Daily estimate per arm with its 95% interval (inside the metric's range); None
    without daily data."""
    points = [d for d in daily if d["comparison"]]
    if not points:
        return None
    fig, axis = plt.subplots(figsize=(6.2, 2.6))
    days = [d["day"][5:] for d in points]
    for arm in ("baseline", "candidate"):
        values = [d["comparison"][arm] for d in points]
        low = [d["comparison"][f"{arm}_ci"]["low"] for d in points]
        high = [d["comparison"][f"{arm}_ci"]["high"] for d in points]
        axis.plot(days, values, marker="o", label=arm, color=ARM_COLOURS[arm])
        axis.fill_between(days, low, high, alpha=0.18, color=ARM_COLOURS[arm])
    bottom, top = axis.get_ylim()
    if scale == "rate":
        axis.set_ylim(max(0.0, bottom), min(1.0, top))
        axis.yaxis.set_major_formatter(PercentFormatter(1.0))
    else:
        axis.set_ylim(max(0.0, bottom), top)
    _style(axis, title)
    return _svg(fig)


def lift_chart(
    title: str,
    cumulative: list[dict[str, Any]],
    threshold: float | None,
    threshold_label: str,
) -> str | None:
    """The cumulative relative lift after each day, with its always-valid band (safe to
    read every day) and the 95% fixed-horizon band, against the rule's threshold."""
    points = [
        d for d in cumulative if d["comparison"] and d["comparison"]["relative_lift"] is not None
    ]
    if not points:
        return None
    fig, axis = plt.subplots(figsize=(6.2, 2.8))
    days = [d["day"][5:] for d in points]
    lift = [d["comparison"]["relative_lift"] for d in points]

    def band(key: str, side: str) -> list[float]:
        return [d["comparison"][key][side] if d["comparison"][key] else math.nan for d in points]

    axis.fill_between(
        days, band("sequential_relative_ci", "low"), band("sequential_relative_ci", "high"),
        color=LIFT_COLOUR, alpha=0.15, label="always-valid 95% band",
    )  # fmt: skip
    axis.plot(days, band("relative_ci", "low"), color=LIFT_COLOUR, linestyle=":", linewidth=1)
    axis.plot(
        days, band("relative_ci", "high"), color=LIFT_COLOUR, linestyle=":", linewidth=1,
        label="95% interval (one look)",
    )  # fmt: skip
    axis.plot(days, lift, marker="o", color=LIFT_COLOUR, label="relative lift so far")
    axis.axhline(0, color="#555", linewidth=0.8)
    if threshold is not None and threshold != 0:
        axis.axhline(
            threshold, color=THRESHOLD_COLOUR, linestyle="--", linewidth=1.2, label=threshold_label
        )
    bottom, top = axis.get_ylim()
    axis.set_ylim(max(-1.0, bottom), top)  # a relative lift is never below -100%
    axis.yaxis.set_major_formatter(PercentFormatter(1.0))
    _style(axis, title)
    return _svg(fig)


def latency_chart(daily: list[dict[str, Any]], limit_ms: float | None) -> str | None:
    if not daily:
        return None
    fig, axis = plt.subplots(figsize=(6.2, 2.6))
    days = [d["day"][5:] for d in daily]
    for arm in ("baseline", "candidate"):
        values = [d[arm]["value"] if d.get(arm) else float("nan") for d in daily]
        axis.plot(days, values, marker="o", label=arm, color=ARM_COLOURS[arm])
    if limit_ms:
        axis.axhline(limit_ms, color="#c62828", linestyle="--", linewidth=1, label="guardrail")
    _style(axis, "P95 end-to-end latency of successful jobs (ms)")
    return _svg(fig)
