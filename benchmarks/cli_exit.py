"""A command's exit: ``python -m benchmarks.cli_exit [--quick]``.

The command line (canary/cli/main.py) freezes the garbage collector at exit, so the
interpreter's last collections skip the objects its imports made. Measured here side by
side, interleaved run by run: the product's entry point (``python -m canary.cli ARGS``)
against the same Typer app called without that exit handler, for a command that imports
little (``--help``), one that opens the database (``db init`` on a SQLite file) and the
worker's import set (``tasks.worker``: torch, Celery, SQLAlchemy), wall time from start to
exit, interpreter start included. Writes ``benchmarks/results/cli_exit.json``
(``--quick``: ``cli_exit.quick.json``, its figures mean nothing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import PROJECT_ROOT, Figure, Report, standalone_main

RESULTS = Path(__file__).resolve().parent / "results"
QUICK: dict[str, Any] = {"runs": 1}
TARGET_RATIO = 0.9  # the exit handler saves at least a tenth of a short command
# The same app without the exit handler: what `canary ARGS` ran before it.
WITHOUT_HANDLER = "import sys; from canary.cli.main import app; sys.argv[0] = 'canary'; app()"
WORKER_IMPORTS = "import tasks.worker"
COMMANDS = {
    "help": ["--help"],
    "db_init": ["db", "init"],
}


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, cwd=PROJECT_ROOT, capture_output=True, check=True)
    return time.perf_counter() - started


def side_by_side(
    with_handler: list[str], without: list[str], env: dict[str, str], runs: int
) -> tuple[float, float]:
    """Median wall seconds of each, alternating which goes first."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for run in range(runs):
        for handler in (True, False) if run % 2 == 0 else (False, True):
            times[handler].append(timed(with_handler if handler else without, env))
    return statistics.median(times[True]), statistics.median(times[False])


def run(args: argparse.Namespace) -> Report:
    report = Report("cli_exit", "A command's exit", quick=args.quick)
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp:
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{Path(tmp) / 'canary.db'}"}
        python = sys.executable
        for name, argv in COMMANDS.items():
            product = [python, "-m", "canary.cli", *argv]
            without = [python, "-c", WITHOUT_HANDLER, *argv]
            with_s, without_s = side_by_side(product, without, env, args.runs)
            label = f"`canary {' '.join(argv)}`"
            report.add(Figure(f"cli_{name}_s", with_s, "s", f"{label}, median of {args.runs}"))
            report.add(
                Figure(
                    f"cli_{name}_vs_without_exit_handler",
                    with_s / without_s,
                    "ratio",
                    f"{label} {with_s:.2f} s vs {without_s:.2f} s without the exit handler",
                    "<=",
                    TARGET_RATIO,
                )
            )
        freeze = f"import atexit, gc; atexit.register(gc.freeze); {WORKER_IMPORTS}"
        with_s, without_s = side_by_side(
            [python, "-c", freeze], [python, "-c", WORKER_IMPORTS], env, args.runs
        )
        report.add(
            Figure(
                "worker_imports_exit_vs_without_exit_handler",
                with_s / without_s,
                "ratio",
                f"a process with a render worker's imports: {with_s:.2f} s vs {without_s:.2f} s",
            )
        )
    report.extra = {"runs": args.runs}
    return report


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each, interleaved")
    parser.add_argument("--quick", action="store_true", help="a smoke run (not meaningful)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write results")
    return parser


def main(argv: list[str] | None = None) -> int:
    return standalone_main("cli_exit", "command exit", parser(), run, QUICK, argv)


if __name__ == "__main__":
    sys.exit(main())
