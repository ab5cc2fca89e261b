"""`canary report EXPERIMENT`: the A/B report as terminal tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
VERDICT_STYLE = {"advance": "bold green", "hold": "bold yellow", "rollback": "bold red"}


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}%"


def _interval(ci: dict[str, float] | None) -> str:
    return "-" if not ci else f"[{_pct(ci['low'])}, {_pct(ci['high'])}]"


def print_ab_report(report: dict[str, Any]) -> None:
    users = report["users"]
    console.print(
        f"[bold]{report['experiment']}[/]: baseline {report['baseline']} vs candidate "
        f"{report['candidate']}, stage {report['stage']}"
        f"{' (rolled back)' if report['rolled_back'] else ''}, days {report['window']['first']}"
        f" to {report['window']['last']}, users {users.get('baseline', 0)} / "
        f"{users.get('candidate', 0)}"
    )
    table = Table(title="Metrics (all users; always-valid intervals hold under daily looks)")
    for column in ("layer", "metric", "baseline", "candidate", "lift", "95% CI",
                   "always-valid CI", "p (always valid)", ""):  # fmt: skip
        table.add_column(column, justify="left" if column in {"layer", "metric", ""} else "right")
    for section in report["metrics"].values():
        c = section.get("cuped") or section["overall"]
        if c is None:
            table.add_row(section["layer"], section["label"], *["-"] * 6, "not enough data")
            continue
        arrow = "better" if (c["lift"] > 0) == section["higher_is_better"] else "worse"
        flag = f"significant, {arrow}" if c["significant"] else ""
        name = section["label"] + (" (CUPED)" if c.get("cuped") else "")
        table.add_row(
            section["layer"], name, _num(c["baseline"]), _num(c["candidate"]),
            _pct(c["relative_lift"]), _interval(c["relative_ci"]),
            _interval(c["sequential_relative_ci"]), f"{c['sequential_p_value']:.3g}", flag,
        )  # fmt: skip
    console.print(table)
    p95 = report["latency_p95"]["overall"]
    shown = ", ".join(
        f"{arm} {p95[arm]['value']:,.0f} ms (n {p95[arm]['n']})" for arm in p95 if p95[arm]
    )
    console.print(f"P95 latency of successful jobs: {shown or 'no data'}")
    srm, joint = report["srm"]["overall"], report["srm"].get("joint")
    if srm:
        bad = joint["mismatch"] if joint else srm["mismatch"]
        status = "[bold red]MISMATCH[/]" if bad else "ok"
        by_segment = (
            f"; per segment: joint p {joint['p_value']:.3g}, most off {joint['worst']}"
            if joint
            else ""
        )
        console.print(
            f"sample ratio: {srm['baseline']} / {srm['candidate']} users, expected candidate "
            f"share {srm['expected_candidate_share']:.1%}, pooled p {srm['p_value']:.3g}"
            f"{by_segment}: {status}"
        )
    gates = report["gates"]
    style = VERDICT_STYLE[gates["verdict"]]
    console.print(f"gate verdict: [{style}]{gates['verdict'].upper()}[/]")
    for reason in gates["reasons"]:
        console.print(f"  - {reason}")
