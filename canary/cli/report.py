"""Terminal output of jobs and per-version summaries (the JSON of `--json` options is
canary.cli.common.print_json)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from analysis.summary import VersionSummary
from storage.jobs import describe_lost_attempts
from storage.models import Job, JobAttempt

console = Console()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def job_document(
    job: Job, image_url: str | None = None, lost_attempts: Sequence[JobAttempt] = ()
) -> dict[str, Any]:
    """Every column of the job (times in ISO 8601, durations in ms), its image URL and its
    attempts whose worker was lost (how each died: storage.models.JobAttempt)."""
    return {
        **job.model_dump(mode="json"),
        "image_url": image_url,
        "lost_attempts": [
            attempt.model_dump(mode="json", exclude={"job_id"}) for attempt in lost_attempts
        ],
    }


def print_job(
    job: Job, image_url: str | None = None, lost_attempts: Sequence[JobAttempt] = ()
) -> None:
    table = Table(show_header=False, box=None)
    rows = {
        "job": job.id,
        "status": job.status,
        "version": f"{job.model_version} (revision {job.model_revision or '-'})",
        "worker": f"{job.worker_host or '-'} {job.device or ''}".strip(),
        "attempts": str(job.attempts),
        "queue wait": _ms(job.queue_wait_ms),
        "render": _ms(job.inference_ms),
        "upload": _ms(job.upload_ms),
        "end to end": _ms(job.end_to_end_ms),
    }
    if job.peak_vram_bytes is not None:
        rows["peak VRAM"] = f"{job.peak_vram_bytes / 2**30:.2f} GiB"
    if job.failure_kind:
        rows["failure"] = f"{job.failure_kind}: {job.failure_message}"
    if lost_attempts:
        rows["lost attempts"] = describe_lost_attempts(lost_attempts).replace("; ", "\n")
    if image_url:
        rows["image"] = image_url
    for name, value in rows.items():
        table.add_row(f"[bold]{name}", value)
    console.print(table)


def print_summary(summaries: list[VersionSummary], image_location: str) -> None:
    table = Table(title="Per-version summary")
    for column in ("version", "jobs", "success", "queue wait P50", "render P50 / P95",
                   "end-to-end P50 / P95", "failures"):  # fmt: skip
        table.add_column(column, justify="left" if column in {"version", "failures"} else "right")
    for s in summaries:
        rate = "-" if s.success_rate is None else f"{s.success_rate:.1%}"
        failures = ", ".join(f"{k}: {v}" for k, v in sorted(s.failures.items())) or "none"
        if s.pending:
            failures += f" ({s.pending} unfinished)"
        table.add_row(
            s.version,
            str(s.jobs),
            rate,
            _ms(s.p50_queue_wait_ms),
            f"{_ms(s.p50_render_ms)} / {_ms(s.p95_render_ms)}",
            f"{_ms(s.p50_end_to_end_ms)} / {_ms(s.p95_end_to_end_ms)}",
            failures,
        )
    console.print(table)
    console.print(
        "end-to-end = queue wait + render + upload, from submission to the stored image; "
        "jobs submitted together wait for those ahead of them in the queue",
        soft_wrap=True,
    )
    console.print(
        f"images: {image_location}/renders/<job id>.png "
        "(a version's: canary images list --model-version V)"
    )
