"""The daily dashboard: one self-contained HTML page per experiment and day.

Top down: the gate verdict and every check (coloured by status, with a legend; "not enough
data yet" is grey, never red), the sample-ratio check per segment (naming the segment that
is off), the promotion rule read literally and with intervals, what the sample can detect
(power), the lift over time of each promotion and guardrail metric with its always-valid
band, then per metric the daily trend per variant and the segment breakdown with raw and
Benjamini-Hochberg-adjusted p-values.
"""

from __future__ import annotations

from html import escape
from typing import Any

from analysis.dashboard_charts import latency_chart, lift_chart, trend_chart

VERDICT_COLOURS = {"advance": "#2e7d32", "hold": "#9a6b00", "rollback": "#c62828"}
# status -> (css class, legend text)
LEGEND = {
    "pass": ("ok", "pass"),
    "fail-rollback": ("bad", "fail: rolls back"),
    "fail-hold": ("warn", "fail: holds"),
    "insufficient": ("wait", "not enough data yet (holds, not a failure)"),
}


class Html(str):
    """A table cell that is already HTML (not escaped)."""


def _chip(kind: str, text: str) -> Html:
    return Html(f"<span class='chip {LEGEND[kind][0]}'>{escape(text)}</span>")


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}%"


def _ci(interval: dict[str, float] | None, percent: bool = False) -> str:
    if not interval:
        return "unbounded" if percent else "-"
    if percent:  # a relative interval past +1000% says only "far too few data"
        high = "> +1000%" if interval["high"] > 10 else _pct(interval["high"])
        return f"[{_pct(interval['low'])}, {high}]"
    return f"[{interval['low']:+.4g}, {interval['high']:+.4g}]"


def _table(headers: list[str], rows: list[list[str]], css: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{cell if isinstance(cell, Html) else escape(cell)}</td>" for cell in row)
        + "</tr>"
        for row in rows
    )
    return f"<table class='{css}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _legend() -> str:
    chips = " ".join(_chip(kind, text) for kind, (_, text) in LEGEND.items())
    return f"<p class='legend'>Status: {chips}</p>"


def _check_status(check: dict[str, Any]) -> Html:
    if check["status"] == "fail":
        kind = "fail-rollback" if check["breach"] == "rollback" else "fail-hold"
        return _chip(kind, "FAIL")
    if check["status"] == "insufficient":
        return _chip("insufficient", "not enough data")
    return _chip("pass", "pass")


# ---------------------------------------------------------------- metric blocks
def comparison_row(name: str, c: dict[str, Any] | None, higher_is_better: bool) -> list[str]:
    if c is None:
        return [name, "-", "-", "-", "-", "-", "-", "-", _chip("insufficient", "not enough data")]
    if c.get("sequential_q_value", 0.0) is None:
        result = _chip("insufficient", "too few users to test")
    elif c["significant"]:
        better = (c["lift"] > 0) == higher_is_better
        result = _chip("pass" if better else "fail-rollback", "better" if better else "worse")
    else:
        result = Html("<span class='meta'>no clear difference</span>")
    q = c.get("sequential_q_value")
    return [
        name,
        _fmt(c["baseline"]),
        _fmt(c["candidate"]),
        _pct(c["relative_lift"]),
        _ci(c["relative_ci"], percent=True),
        _ci(c["sequential_relative_ci"], percent=True),
        _fmt(c["sequential_p_value"], 3),
        _fmt(q, 3),
        Html(f"{result} <span class='meta'>n {c['n_baseline']}/{c['n_candidate']}</span>"),
    ]


COMPARISON_HEADERS = [
    "scope", "baseline", "candidate", "relative lift", "95% CI", "always-valid CI",
    "always-valid p (raw)", "q (BH-adjusted)", "result",
]  # fmt: skip


def metric_block(name: str, section: dict[str, Any]) -> str:
    better = section["higher_is_better"]
    rows = [comparison_row("all users", section["overall"], better)]
    if section.get("cuped"):
        rows.append(comparison_row("all users, CUPED", section["cuped"], better))
    rows += [comparison_row(seg, c, better) for seg, c in section["segments"].items()]
    strat = section.get("stratified")
    stratified = (
        f"<p class='meta'>Stratified over segments: lift {strat['lift']:+.4g} "
        f"(95% CI {_ci(strat['ci'])}, p {strat['p_value']:.3g})</p>"
        if strat
        else ""
    )
    direction = "higher is better" if better else "lower is better"
    chart = trend_chart(
        f"{section['label']} by day (95% intervals)", section["daily"], section.get("scale", "")
    ) or ("<p class='meta'>no daily data</p>")
    return (
        f"<section><h3>{escape(section['label'])} <span class='meta'>({escape(name)}, "
        f"{escape(section['layer'])}, {direction})</span></h3>{chart}"
        f"{_table(COMPARISON_HEADERS, rows)}{stratified}</section>"
    )


# ---------------------------------------------------------------- decision panels
def srm_panel(srm: dict[str, Any]) -> str:
    joint = srm.get("joint")
    rows: list[list[str]] = []
    banner = ""
    if joint:
        status = _chip("fail-hold", "MISMATCH") if joint["mismatch"] else _chip("pass", "ok")
        rows.append(
            [Html("<b>joint (segment x arm)</b>"), "-", "-", "-",
             f"{joint['p_value']:.3g} (df {joint['df']})",
             f"min {joint['min_adjusted_p_value']:.3g}", status]
        )  # fmt: skip
        if joint["mismatch"]:
            banner = (
                f"<p class='banner bad'>The split is off: most clearly in "
                f"<b>{escape(str(joint['worst']))}</b>. Results may be biased; find the cause "
                f"before reading them.</p>"
            )
    overall = srm.get("overall")
    if overall:
        rows.append(
            ["pooled (all users)", str(overall["baseline"]), str(overall["candidate"]),
             f"{overall['expected_candidate_share']:.2%}", f"{overall['p_value']:.3g}", "-",
             Html("<span class='meta'>shown only: misses a single broken segment</span>")]
        )  # fmt: skip
    worst = joint["worst"] if joint else None
    for scope, cell in srm["segments"].items():
        if not cell:
            continue
        if cell["mismatch"]:
            status = _chip("fail-hold", "OFF")
        elif scope == worst and joint and joint["mismatch"]:
            status = _chip("fail-hold", "most off")
        else:
            status = _chip("pass", "ok")
        rows.append(
            [scope, str(cell["baseline"]), str(cell["candidate"]),
             f"{cell['expected_candidate_share']:.2%}", f"{cell['p_value']:.3g}",
             f"{cell['adjusted_p_value']:.3g}", status]
        )  # fmt: skip
    headers = ["scope", "baseline", "candidate", "expected candidate share", "p",
               "Holm-adjusted p", "status"]  # fmt: skip
    return (
        f"<h2>Sample ratio</h2>{banner}<p class='meta'>{escape(srm.get('note', ''))}</p>"
        f"{_table(headers, rows)}"
    )


def _pass_chip(ok: bool) -> Html:
    return _chip("pass", "clears") if ok else _chip("fail-hold", "does not clear")


def promotion_panel(promotion: dict[str, Any] | None) -> str:
    if not promotion:
        return ""
    threshold = promotion["threshold"]
    rows = [
        [d["day"], _pct(d["relative_lift"]), _ci(d["relative_ci"], percent=True),
         _pass_chip(d["point_pass"]), _pass_chip(d["interval_pass"])]
        for d in promotion["days"]
    ]  # fmt: skip
    pooled = promotion["pooled"]
    rows.append(
        [Html(f"<b>{pooled['first']} to {pooled['last']} pooled</b>"),
         _pct(pooled["relative_lift"]), _ci(pooled["sequential_relative_ci"], percent=True)
         + " (always valid)", "-", _pass_chip(pooled["pass"])]
    )  # fmt: skip
    table = _table(
        ["day", "relative lift", "interval", "point estimate > threshold",
         "interval above threshold"], rows,
    )  # fmt: skip
    decrease = promotion["must_decrease"]
    falling = ""
    if decrease:
        falling = (
            f"<p>{escape(decrease['metric'])} must fall: lift {_pct(decrease['relative_lift'])}, "
            f"always-valid {_ci(decrease['sequential_relative_ci'], percent=True)} "
            f"{_pass_chip(decrease['interval_pass'])}</p>"
        )
    names = {
        "point": "literal (daily point estimates)",
        "daily_interval": "each day's 95% interval",
        "pooled_always_valid": "pooled always-valid interval",
    }
    readings = " ".join(
        _chip("pass" if ok else "fail-hold", f"{names[name]}: {'pass' if ok else 'fail'}")
        + (" <b>(used by the gate)</b>" if name == promotion["evidence"] else "")
        for name, ok in promotion["readings"].items()
    )
    noise = (
        "<p class='banner warn'>The literal rule passes, but no interval clears the "
        f"{_pct(threshold)} threshold: this pass rests on day-to-day noise.</p>"
        if promotion["rests_on_noise"]
        else ""
    )
    return (
        f"<h2>Promotion rule</h2><p class='meta'>{escape(promotion['metric'])} relative lift "
        f"above {_pct(threshold)} on each of the last {promotion['days_required']} days</p>"
        f"{noise}<p>{readings}</p>{table}{falling}"
    )


def power_panel(plans: list[dict[str, Any]], tuning_per_arm: int | None) -> str:
    rows = []
    for p in plans:
        if "note" in p:
            rows.append([p["metric"], _pct(p["target"]), "-", "-", "-", "-", p["note"]])
            continue
        days = p["days_needed"]
        wait = "now" if days == 0 else (f"{days} more days" if days else "over a year")
        rows.append(
            [p["metric"], _pct(p["target"]), f"{p['users']:,} ({p['users_per_day']:,.0f}/day)",
             _pct(p["mde"]), _pct(p["fixed_horizon_mde"]), f"{p['power_at_target']:.0%}", wait]
        )  # fmt: skip
    headers = ["metric", "effect the rule asks for", "users (both arms)",
               "detectable today (always valid, 80% power)", "detectable with one look",
               "power today", "to detect the rule's effect"]  # fmt: skip
    tuning = (
        f"The always-valid test is tuned to {tuning_per_arm:,} users per arm (gate policy)."
        if tuning_per_arm
        else ""
    )
    return (
        f"<h2>What this sample can detect</h2><p class='meta'>{tuning} Forecasts assume "
        f"today's traffic and per-user variance.</p>{_table(headers, rows)}"
    )


def trajectory_panel(report: dict[str, Any]) -> str:
    promotion = report["gates"].get("promotion") or {}
    stats = report.get("statistics", {})
    charts = []
    leading = [promotion.get("metric"), (promotion.get("must_decrease") or {}).get("metric")]
    order = sorted(report["metrics"], key=lambda n: leading.index(n) if n in leading else 2)
    for name in order:
        section = report["metrics"][name]
        if "cumulative" not in section:
            continue
        if name == promotion.get("metric"):
            threshold, label = promotion["threshold"], "promotion threshold"
        else:
            threshold, label = None, ""
        role = (
            "promotion"
            if name
            in (promotion.get("metric"), (promotion.get("must_decrease") or {}).get("metric"))
            else "guardrail"
        )
        chart = lift_chart(
            f"{section['label']}: relative lift so far ({role})",
            section["cumulative"],
            threshold,
            label,
        )
        if chart:
            charts.append(f"<div class='chart'>{chart}</div>")
    if not charts:
        return ""
    family = ", ".join(stats.get("guardrail_family", []))
    return (
        "<h2>Lift over time</h2><p class='meta'>Cumulative relative lift after each day. The "
        "shaded always-valid band may be read every day; the dotted 95% interval only once. "
        f"Guardrails ({escape(family)}) are Holm-adjusted as one family in the gate.</p>"
        f"<div class='charts'>{''.join(charts)}</div>"
    )


def _wait(cell: dict[str, Any] | None, key: str) -> str:
    return "-" if not cell else f"{cell[key]:,.0f} ms"


def queue_wait_panel(report: dict[str, Any]) -> str:
    """Queue wait P50/P95 per priority class and arm, and which classes the health metrics
    count: a backlog shows here as queue wait, not as model latency."""
    scope = report.get("health_scope")
    note = f"<p class='meta'>{escape(scope['note'])}.</p>" if scope else ""
    rows: list[list[str]] = []
    for row in report.get("queue_wait") or []:
        counted = (
            _chip("pass", "counted")
            if row["in_health_metrics"]
            else _chip("insufficient", "excluded from health metrics")
        )
        for arm in ("baseline", "candidate"):
            cell = row.get(arm)
            rows.append(
                [row["class"], arm, str(cell["n"]) if cell else "0",
                 _wait(cell, "p50"), _wait(cell, "p95"), counted]
            )  # fmt: skip
    if not rows:
        return note
    headers = ["priority class", "arm", "jobs", "queue wait P50", "queue wait P95",
               "health metrics"]  # fmt: skip
    return (
        f"{note}<h3>Queue wait by priority class</h3><p class='meta'>Time from submission to "
        "a worker, per class: a backlog of bulk or background work shows here, not in the "
        f"model's latency.</p>{_table(headers, rows)}"
    )


SHADOW_CHIPS = {"pass": "pass", "fail": "fail-hold", "insufficient": "insufficient"}


def shadow_panel(shadow: dict[str, Any] | None) -> str:
    """The shadow-health verdict on live jobs copied to the candidate (a gate input when
    leaving internal): pairs, failure-rate increase and P95 ratio with their intervals."""
    if shadow is None:
        return ""
    verdict = shadow["health"]
    segments = ", ".join(shadow["segments"]) if shadow["segments"] else "every segment"
    gate = (
        "the gate needs a pass to leave this stage"
        if shadow["required"]
        else "shown for information at this stage"
    )
    rows = [["pairs compared", str(verdict["pairs"]), f"at least {verdict['min_pairs']}"]]
    increase = verdict.get("failure_rate_increase")
    if increase:
        rows.append(
            ["failure-rate increase", f"{increase['estimate']:+.2%}",
             f"95% CI [{increase['low']:+.2%}, {increase['high']:+.2%}]; margin "
             f"{increase['margin']:.2%}"]
        )  # fmt: skip
    ratio = verdict.get("p95_ratio")
    if ratio:
        rows.append(
            ["P95 render time ratio", f"{ratio['estimate']:.2f}x",
             f"95% CI [{ratio['low']:.2f}, {ratio['high']:.2f}]; margin {ratio['margin']:.2f}x"]
        )  # fmt: skip
    kinds = verdict["new_failure_kinds"]
    rows.append(["new failure kinds", ", ".join(kinds) if kinds else "none", ""])
    reasons = "".join(f"<li>{escape(r)}</li>" for r in verdict["reasons"])
    return (
        f"<h3>Shadow traffic: {_chip(SHADOW_CHIPS[verdict['verdict']], verdict['verdict'])}</h3>"
        f"<p class='meta'>{shadow['share']:.0%} of the baseline's live jobs ({escape(segments)}) "
        f"copied to the candidate with the same seed and compared pair by pair; "
        f"{escape(gate)}. <code>canary shadow status</code> shows the pairs.</p>"
        f"{_table(['measure', 'value', 'interval and margin'], rows)}"
        + (f"<ul>{reasons}</ul>" if reasons else "")
    )


# ---------------------------------------------------------------- the page
def render_dashboard(report: dict[str, Any], p95_limit_ms: float | None = None) -> str:
    gates = report["gates"]
    verdict = gates["verdict"]
    checks = [[c["name"], _check_status(c), c["detail"]] for c in gates["checks"]]
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
    layers: dict[str, list[str]] = {"health": [], "interaction": [], "value": []}
    for name, section in report["metrics"].items():
        layers[section["layer"]].append(metric_block(name, section))
    latency = latency_chart(report["latency_p95"]["daily"], p95_limit_ms) or ""
    title = f"{report['experiment']}: {report['baseline']} vs {report['candidate']}"
    users = report["users"]
    stats = report.get("statistics", {})
    meta = (
        f"stage {report['stage']}{' (rolled back)' if report['rolled_back'] else ''}; "
        f"window {report['window']['first']} to {report['window']['last']} (UTC days); "
        f"users: baseline {users.get('baseline', 0)}, candidate {users.get('candidate', 0)}"
    )
    family = stats.get("exploratory_family")
    exploratory = (
        f"<p class='meta'>{family} metric x segment rows (those with at least 30 users per "
        "arm) are tested together; a row is called better or worse only when its "
        "Benjamini-Hochberg q (false-discovery rate over all tested rows) is below 0.05.</p>"
        if family
        else ""
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
.chip {{ display: inline-block; padding: 0 .45rem; border-radius: 3px; font-size: .85rem;
  font-weight: 600; white-space: nowrap; }}
.chip.ok {{ background: #e3f1e4; color: #1b5e20; border: 1px solid #2e7d32; }}
.chip.bad {{ background: #c62828; color: white; border: 1px solid #c62828; }}
.chip.warn {{ background: #fff3cd; color: #7a5200; border: 1px solid #b7791f; }}
.chip.wait {{ background: #eceff1; color: #455a64; border: 1px dashed #78909c;
  font-style: italic; }}
.banner {{ padding: .5rem .8rem; border-radius: 4px; max-width: 60rem; }}
.banner.bad {{ background: #fdecea; border-left: 5px solid #c62828; }}
.banner.warn {{ background: #fff8e1; border-left: 5px solid #b7791f; }}
.legend {{ font-size: .9rem; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 1rem; }}
.chart svg {{ max-width: 100%; height: auto; }}
section {{ margin-bottom: 1.5rem; }}
</style></head><body>
<h1>{escape(title)}</h1>
<p class="meta">{escape(meta)}</p>
<h2>Gate verdict: <span class="verdict">{escape(verdict)}</span></h2>
{_legend()}
{_table(["check", "status", "detail"], checks)}
{srm_panel(report["srm"])}
{promotion_panel(gates.get("promotion"))}
{power_panel(report.get("power", []), stats.get("tuning_users_per_arm"))}
{trajectory_panel(report)}
{shadow_panel(report.get("shadow"))}
<h2>Health</h2>
{queue_wait_panel(report)}
{latency}
{exploratory}
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
