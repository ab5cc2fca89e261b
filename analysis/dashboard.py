"""The daily dashboard: one self-contained HTML page per experiment and day.

Per metric: the daily trend per variant with 95% intervals, the cumulative lift with its
always-valid interval, the segment breakdown with the stratified estimate; then the
P95 latency trend, failures, SRM status and the gate verdict with every reason.
"""

from __future__ import annotations

import io
from html import escape
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ARM_COLOURS = {"baseline": "#4c72b0", "candidate": "#dd8452"}
VERDICT_COLOURS = {"advance": "#2e7d32", "hold": "#9a6b00", "rollback": "#c62828"}


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def trend_chart(title: str, daily: list[dict[str, Any]]) -> str | None:
    """Daily estimate per arm with its 95% interval; None without daily data."""
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
    axis.set_title(title, fontsize=10)
    axis.tick_params(axis="x", labelrotation=45, labelsize=8)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
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
    axis.set_title("P95 end-to-end latency of successful jobs (ms)", fontsize=10)
    axis.tick_params(axis="x", labelrotation=45, labelsize=8)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return _svg(fig)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}%"


def _ci(interval: dict[str, float] | None, percent: bool = False) -> str:
    if not interval:
        return "-"
    if percent:
        return f"[{_pct(interval['low'])}, {_pct(interval['high'])}]"
    return f"[{interval['low']:+.4g}, {interval['high']:+.4g}]"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def comparison_row(name: str, c: dict[str, Any] | None) -> list[str]:
    if c is None:
        return [name, "-", "-", "-", "-", "-", "-", "not enough data"]
    verdict = "significant" if c["significant"] else "not significant"
    return [
        name,
        _fmt(c["baseline"]),
        _fmt(c["candidate"]),
        _pct(c["relative_lift"]),
        _ci(c["relative_ci"], percent=True),
        _ci(c["sequential_relative_ci"], percent=True),
        _fmt(c["sequential_p_value"], 3),
        f"{verdict} (n {c['n_baseline']}/{c['n_candidate']})",
    ]


COMPARISON_HEADERS = [
    "scope", "baseline", "candidate", "relative lift", "95% CI", "always-valid CI",
    "always-valid p", "result",
]  # fmt: skip


def metric_block(name: str, section: dict[str, Any]) -> str:
    rows = [comparison_row("all users", section["overall"])]
    if section.get("cuped"):
        rows.append(comparison_row("all users, CUPED", section["cuped"]))
    rows += [comparison_row(seg, c) for seg, c in section["segments"].items()]
    strat = section.get("stratified")
    stratified = (
        f"<p>Stratified over segments: lift {strat['lift']:+.4g} "
        f"(95% CI {_ci(strat['ci'])}, p {strat['p_value']:.3g})</p>"
        if strat
        else ""
    )
    better = "higher is better" if section["higher_is_better"] else "lower is better"
    chart = trend_chart(f"{section['label']} by day", section["daily"]) or (
        "<p class='meta'>no daily data</p>"
    )
    return (
        f"<section><h3>{escape(section['label'])} <span class='meta'>({escape(name)}, "
        f"{escape(section['layer'])}, {better})</span></h3>{chart}"
        f"{_table(COMPARISON_HEADERS, rows)}{stratified}</section>"
    )


def render_dashboard(report: dict[str, Any], p95_limit_ms: float | None = None) -> str:
    gates = report["gates"]
    verdict = gates["verdict"]
    checks = [[c["name"], c["status"], c["detail"]] for c in gates["checks"]]
    srm = report["srm"]
    srm_rows = [
        [scope, str(v["baseline"]), str(v["candidate"]), f"{v['expected_candidate_share']:.1%}",
         f"{v['p_value']:.3g}", "MISMATCH" if v["mismatch"] else "ok"]
        for scope, v in ([("overall", srm["overall"])] if srm["overall"] else [])
        + [(k, v) for k, v in srm["segments"].items() if v]
    ]  # fmt: skip
    failures = [
        [arm, kind, str(n)]
        for arm, kinds in report["failures"].items()
        for kind, n in kinds.items()
    ]
    correlation = [
        [arm, f"{c['r']:+.3f}", _ci(c["ci"]), str(c["n"])]
        for arm, c in report["dwell_retention_correlation"].items()
        if c
    ]
    layers = {"health": [], "interaction": [], "value": []}
    for name, section in report["metrics"].items():
        layers[section["layer"]].append(metric_block(name, section))
    latency = latency_chart(report["latency_p95"]["daily"], p95_limit_ms) or ""
    title = f"{report['experiment']}: {report['baseline']} vs {report['candidate']}"
    users = report["users"]
    meta = (
        f"stage {report['stage']}{' (rolled back)' if report['rolled_back'] else ''}; "
        f"window {report['window']['first']} to {report['window']['last']} (UTC days); "
        f"users: baseline {users.get('baseline', 0)}, candidate {users.get('candidate', 0)}"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem 2rem; color: #222; }}
table {{ border-collapse: collapse; margin: .4rem 0 1rem; font-size: .9rem; }}
th, td {{ border: 1px solid #ccc; padding: .2rem .5rem; text-align: left; }}
th {{ background: #f3f3f3; }}
.meta {{ color: #666; font-weight: normal; font-size: .9rem; }}
.verdict {{ display: inline-block; padding: .3rem .8rem; border-radius: 4px; color: white;
  background: {VERDICT_COLOURS[verdict]}; font-weight: bold; text-transform: uppercase; }}
section {{ margin-bottom: 1.5rem; }}
</style></head><body>
<h1>{escape(title)}</h1>
<p class="meta">{escape(meta)}</p>
<h2>Gate verdict: <span class="verdict">{escape(verdict)}</span></h2>
{_table(["check", "status", "detail"], checks)}
<h2>Sample ratio</h2>
<p class="meta">{escape(srm.get("note", ""))}</p>
{_table(["scope", "baseline", "candidate", "expected candidate share", "p", "status"], srm_rows)}
<h2>Health</h2>
{latency}
{"".join(layers["health"])}
{_table(["arm", "failure kind", "jobs"], failures) if failures else "<p>No failed jobs.</p>"}
<h2>Interaction</h2>
{"".join(layers["interaction"])}
<h2>Value</h2>
{"".join(layers["value"])}
<h3>Dwell and retention</h3>
<p class="meta">Correlation of a user's mean dwell in the first week with 7-day retention.</p>
{_table(["arm", "r", "95% CI", "users"], correlation)}
</body></html>
"""
