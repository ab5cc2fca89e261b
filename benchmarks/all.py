"""All performance figures in one run: ``python -m benchmarks.all [--quick] [--only NAME...]``.

Runs end_to_end, overhead, busy, bulk_submit, micro_batch and memory one after the other
(each prints its figure lines as it goes) and writes ``latest.json`` and ``latest.md`` to
``--output`` (``benchmarks/results``; ``--quick`` writes ``quick.json``/``quick.md`` so a
smoke run never overwrites measured numbers). With ``--only`` the other figures are kept
from the previous file (each report records when it was measured). docs/performance.md
explains each figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks import bulk_submit, busy, end_to_end, memory, micro_batch, overhead
from benchmarks.harness import Report, describe_machine, machine, unwind_on_sigterm, write_json

MODULES: dict[str, ModuleType] = {
    "end_to_end": end_to_end,
    "overhead": overhead,
    "busy": busy,
    "bulk_submit": bulk_submit,
    "micro_batch": micro_batch,
    "memory": memory,
}
RESULTS = Path(__file__).resolve().parent / "results"


def run_module(module: ModuleType, quick: bool) -> Report:
    args = module.parser().parse_args(["--quick"] if quick else [])
    if quick:
        vars(args).update(module.QUICK)
    report: Report = module.run(args)
    return report


def markdown(data: dict[str, Any]) -> str:
    lines = [
        f"# canary-render benchmarks ({'quick smoke run' if data['quick'] else 'full run'})",
        "",
        f"Measured on {data['machine_text']}; run finished {data['finished']}.",
        "",
        "| figure | value | target | met | details | measured |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for report in data["reports"]:
        for figure in report["figures"]:
            target = f"{figure['op']} {figure['target']:g}" if figure["target"] is not None else ""
            met = {True: "yes", False: "**no**", None: ""}[figure["met"]]
            lines.append(
                f"| {figure['key']} | {figure['value']:.4g} {figure['unit']} | {target} | "
                f"{met} | {figure['detail']} | {report.get('finished', '')} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run of every benchmark")
    parser.add_argument("--only", nargs="+", choices=sorted(MODULES), help="a subset")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write results")
    args = parser.parse_args(argv)
    unwind_on_sigterm()
    info = machine()
    print(f"canary-render benchmarks on {describe_machine(info)}", flush=True)
    started = time.perf_counter()
    reports = []
    for name in args.only or list(MODULES):
        print(f"== {name}", flush=True)
        module_started = time.perf_counter()
        report = run_module(MODULES[name], args.quick).as_dict()
        report["seconds"] = round(time.perf_counter() - module_started, 1)
        report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        print(f"   ({report['seconds']:.0f} s)", flush=True)
        reports.append(report)
    data = {
        "quick": args.quick,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - started,
        "machine": info,
        "machine_text": describe_machine(info),
        "reports": reports,
    }
    stem = "quick" if args.quick else "latest"
    previous = args.output / f"{stem}.json"
    if args.only and previous.exists():  # keep the figures this run did not re-measure
        kept = [
            r for r in json.loads(previous.read_text())["reports"] if r["name"] not in args.only
        ]
        reports = sorted(kept + reports, key=lambda r: list(MODULES).index(r["name"]))
        data["reports"] = reports
    write_json(args.output / f"{stem}.json", data)
    (args.output / f"{stem}.md").write_text(markdown(data))
    missed = [
        f["key"] for r in reports for f in r["figures"] if f["met"] is False and not args.quick
    ]
    print(
        f"wrote {args.output / stem}.json and .md" + (f"; targets missed: {missed}" * bool(missed))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
