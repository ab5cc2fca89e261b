"""The golden report as a self-contained HTML page with a chart (matplotlib, inline SVG)."""

from __future__ import annotations

import io
from html import escape
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LEVEL_COLOURS = {"pass": "#3a9d5d", "B": "#e0c341", "A": "#e08a3c", "S": "#c8423b"}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ci(block: dict[str, Any] | None, key: str = "ci") -> str:
    if not block or block.get(key) is None:
        return "-"
    low, high = block[key]
    return (
        f"[{100 * low:+.1f}, {100 * high:+.1f}] pp"
        if key == "ci"
        else f"[{_pct(low)}, {_pct(high)}]"
    )


def render_chart(report: dict[str, Any]) -> str:
    """Pass rate per category and version with 95% intervals, and level counts: SVG text."""
    versions = [report["run"]["baseline"], report["run"]["candidate"]]
    categories = list(report["versions"][versions[0]]["categories"])
    fig, (rates, levels) = plt.subplots(1, 2, figsize=(11, 3.8), width_ratios=[3, 2])
    width = 0.38
    for offset, version in enumerate(versions):
        blocks = [report["versions"][version]["categories"][c] for c in categories]
        values = [b["pass_rate"] or 0.0 for b in blocks]
        bounds = [b["pass_rate_ci"] or [v, v] for v, b in zip(values, blocks, strict=True)]
        # matplotlib refuses a negative error bar; rounding must never produce one
        errors = [
            [max(0.0, v - low) for v, (low, _) in zip(values, bounds, strict=True)],
            [max(0.0, high - v) for v, (_, high) in zip(values, bounds, strict=True)],
        ]
        xs = [i + (offset - 0.5) * width for i in range(len(categories))]
        bars = rates.bar(xs, values, width, yerr=errors, capsize=3, label=version)
        # a label on every bar, so a 0% bar is seen as 0% and not as missing
        rates.bar_label(
            bars, labels=[_pct(b["pass_rate"]) for b in blocks], label_type="center", fontsize=7
        )
    rates.set_xticks(range(len(categories)), [c.replace("_", "\n") for c in categories])
    rates.set_ylim(0, 1.05)
    rates.set_ylabel("pass rate (95% CI)")
    rates.legend(loc="lower left", bbox_to_anchor=(0, 1.08), ncols=2, fontsize=8, frameon=False)
    rates.set_title("Pass rate by category")
    bottoms = [0.0, 0.0]
    for level in ("pass", "B", "A", "S"):
        counts = [report["versions"][v]["overall"]["levels"][level] for v in versions]
        levels.bar(versions, counts, bottom=bottoms, color=LEVEL_COLOURS[level], label=level)
        bottoms = [b + c for b, c in zip(bottoms, counts, strict=True)]
    levels.set_title("Images by level")
    levels.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_report_html(report: dict[str, Any]) -> str:
    run = report["run"]
    versions = [run["baseline"], run["candidate"]]
    summary_rows = []
    for scope in ["overall", *report["versions"][versions[0]]["categories"]]:
        cells = [scope]
        for version in versions:
            data = report["versions"][version]
            block = data["overall"] if scope == "overall" else data["categories"][scope]
            cells += [_pct(block["pass_rate"]), f"{block['graded']}/{block['images']}"]
        diff = (
            report["difference"]["overall"]
            if scope == "overall"
            else report["difference"]["categories"][scope]
        )
        cells += [
            "-" if diff is None else f"{100 * diff['estimate']:+.1f} pp",
            _ci(diff),
            "-" if diff is None else f"{diff['p_value']:.3g}",
        ]
        summary_rows.append(cells)
    headers = ["scope"]
    for version in versions:
        headers += [f"{version} pass", f"{version} graded"]
    headers += ["candidate - baseline", "95% CI", "p (McNemar)"]
    changed = [
        [c["case_id"], c["category"], c["baseline"], c["candidate"], c["direction"]]
        for c in report["changed"]
    ]
    failures = [
        [f["case_id"], f["version"], f["category"], f["reason"] or ""]
        for f in report["hard_failures"]
    ]
    drift = [
        [d["case_id"], d["version"], f"{d['rmse']:.4f}", d["previous_run_id"] or ""]
        for d in report["drift"]
    ]
    graders = escape(", ".join(report["graders"]) or "none")
    meta = (
        f"{escape(run['trigger'])} run, {escape(run['status'])}; set {escape(run['set_name'])} "
        f"(sha256 {escape(run['set_sha256'][:12])}), {run['cases']} cases; "
        f"baseline <b>{escape(run['baseline'])}</b>, candidate <b>{escape(run['candidate'])}</b>; "
        f"graders: {graders}"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Golden run {escape(run["id"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin: .5rem 0 1.5rem; }}
th, td {{ border: 1px solid #ccc; padding: .25rem .6rem; text-align: left; }}
th {{ background: #f3f3f3; }}
.meta {{ color: #555; }}
</style></head><body>
<h1>Golden run {escape(run["id"])}</h1>
<p class="meta">{meta}</p>
{render_chart(report)}
<h2>Pass rates</h2>
{_table(headers, summary_rows)}
<h2>S-level images</h2>
<p>{", ".join(f"{escape(v)}: {n}" for v, n in report["s_level"].items())}</p>
<h2>Cases that changed level ({len(changed)})</h2>
{_table(["case", "category", "baseline", "candidate", "direction"], changed)}
<h2>Hard failures ({len(failures)})</h2>
{_table(["case", "version", "category", "reason"], failures)}
<h2>Drift against the previous night ({len(drift)})</h2>
{_table(["case", "version", "pixel RMSE", "previous run"], drift)}
</body></html>
"""
