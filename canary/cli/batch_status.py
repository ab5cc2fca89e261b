"""`canary status BATCH_ID` and the end of `canary submit`: a batch, line by line."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console
from rich.markup import escape

from canary.cli.batch import BatchOutcome
from canary.settings import Settings
from gateway.batch_report import batch_report
from storage import batches, fair_share
from storage.db import get_engine
from storage.objects import store_from_settings

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
IMAGES_SHOWN = 10  # the text view lists this many images; --json lists all


def load_report(settings: Settings, batch_id: str) -> dict[str, Any] | None:
    """The batch's report with images reachable from this machine, or None if unknown."""
    engine = get_engine(settings.resolved_database_url)
    batch = batches.get_batch(engine, batch_id)
    if batch is None:
        return None
    store = store_from_settings(settings)
    report = batch_report(
        engine,
        batch,
        lambda _job_id, key: store.url(key, settings.presign_expiry_s),
        show_versions=True,
    )
    # QUEUED jobs not in the broker yet: held for fair share (or refused by the broker)
    report["held"] = fair_share.held_in_batch(engine, batch_id)
    return report


def wait_for_report(settings: Settings, batch_id: str, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while True:
        report = load_report(settings, batch_id)
        if report is None or report["done"] or time.monotonic() > deadline:
            return report
        time.sleep(0.5)


def describe_held(held: int, per_tenant: int) -> str:
    """Why QUEUED jobs are not in the broker yet, and when they will be."""
    if per_tenant > 0:
        return (
            f"{held} held for fair share: released as workers take jobs "
            f"(CANARY_FAIR_SHARE_QUEUED={per_tenant} per tenant)"
        )
    return f"{held} not sent to the broker yet: sent when it takes them (they stay QUEUED)"


def print_report(report: dict[str, Any], per_tenant: int = 0) -> None:
    unit = report["unit"]
    origin = f"file {report['file']}" if report["file"] else f"{report['source']} batch"
    submitted = report["created_at"]
    console.print(f"[bold]batch {report['batch_id']}[/] ({origin}, submitted {submitted})")
    console.print(
        f"  {report['lines']} {unit}s: {report['created']} new jobs, "
        f"{report['duplicates']} submitted earlier, {len(report['rejected'])} rejected"
    )
    counts = report["counts"]
    console.print("  " + "  ".join(f"{status} {n}" for status, n in counts.items()))
    if report.get("held"):
        console.print(f"  {describe_held(report['held'], per_tenant)}", highlight=False)
    if report["rejected"]:
        console.print(f"[red]rejected {unit}s[/] (not submitted):")
        for item in report["rejected"]:
            console.print(f"  {unit} {item['line']}: {escape(item['message'])}")
    if report["failed"]:
        console.print(f"[red]failed {unit}s[/]:")
        for item in report["failed"]:
            console.print(
                f"  {unit} {item[unit]}: job {item['job_id']} ({item['model_version']}) "
                f"{item['failure_kind']}: {escape(item['failure_message'] or '')}"
            )
    images = report["images"]
    if images:
        console.print(f"images ({report['images_total']}):")
        for item in images[:IMAGES_SHOWN]:
            console.print(f"  {unit} {item[unit]}: {item['url']}")
        if len(images) > IMAGES_SHOWN:
            console.print(f"  ... {len(images) - IMAGES_SHOWN} more (--json lists every one)")
    if not report["done"]:
        console.print("still rendering: add --wait to wait for the rest")


def show_batch(
    settings: Settings, batch_id: str, *, as_json: bool, wait: bool, timeout: float
) -> int | None:
    """Print the batch; its exit code (1 if a line was rejected or failed, or the wait timed
    out), or None if there is no such batch."""
    report = wait_for_report(settings, batch_id, timeout if wait else 0)
    if report is None:
        return None
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, settings.fair_share_queued)
    if wait and not report["done"]:
        err.print(f"[bold red]error:[/] batch {batch_id} not finished after {timeout:.0f} s")
        return 1
    return 1 if report["failed"] or report["rejected"] else 0


def ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def explain_skipped(outcome: BatchOutcome, file: str) -> str | None:
    """Why lines were not queued again, and how to queue them on purpose."""
    if not outcome.skipped:
        return None
    by_batch: dict[str, list[int]] = {}
    for skipped in outcome.skipped:
        by_batch.setdefault(skipped.batch_id or "an API request", []).append(skipped.line)
    where = "; ".join(f"lines {ranges(lines)} by batch {b}" for b, lines in by_batch.items())
    return (
        f"already submitted, not queued again: {where}. To render them again as new jobs: "
        f"canary submit {file} --resubmit"
    )
