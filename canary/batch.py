"""Bulk submission and waiting, with progress bars: shared by `canary submit` and `demo`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from canary.settings import Settings
from gateway.bulk import LineError, ParsedLine, read_requests
from gateway.service import Gateway
from gateway.specs import InvalidJob
from gateway.submit import PreparedJob
from storage import jobs
from storage.db import get_engine
from storage.models import JobStatus


@dataclass
class BatchOutcome:
    created: int = 0
    duplicates: int = 0
    job_ids: list[str] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    )


def make_gateway(settings: Settings) -> Gateway:
    """A gateway on the broker these settings name (not the process-wide app's)."""
    from tasks.app import make_app

    app = make_app(settings)
    # No task-sent event per bulk job: it would double the broker writes of a submission,
    # and Flower shows these jobs from the worker's task-received event on (with their
    # arguments). Single submissions over the API keep them.
    app.conf.task_send_sent_event = False
    return Gateway(settings, get_engine(settings.resolved_database_url), app)


def submit_prepared(
    gateway: Gateway, jobs_in: list[PreparedJob], *, batch_id: str, source: str, chunk: int
) -> BatchOutcome:
    outcome = BatchOutcome()
    with _progress() as progress:
        task = progress.add_task("submitting", total=len(jobs_in))
        for start in range(0, len(jobs_in), chunk):
            part = jobs_in[start : start + chunk]
            for submitted in gateway.submit_many(part, source=source, batch_id=batch_id):
                outcome.job_ids.append(submitted.job_id)
                if submitted.created:
                    outcome.created += 1
                else:
                    outcome.duplicates += 1
            progress.advance(task, len(part))
    return outcome


def submit_file(
    path: Path,
    settings: Settings,
    *,
    batch_id: str,
    default_version: str | None = None,
    chunk: int = 500,
) -> BatchOutcome:
    """Validate and assign the whole file first (errors by line), then submit in chunks.

    Lines without a model_version are assigned by the experiment, as over HTTP.
    """
    gateway = make_gateway(settings)
    good: list[PreparedJob] = []
    errors: list[LineError] = []
    parsed: list[ParsedLine] = []
    for item in read_requests(path, settings, default_version=default_version):
        if isinstance(item, LineError):
            errors.append(item)
        else:
            parsed.append(item)
    for start in range(0, len(parsed), chunk):
        lines = parsed[start : start + chunk]
        for line, prepared in zip(
            lines, gateway.prepare_many([p.request for p in lines]), strict=True
        ):
            if isinstance(prepared, InvalidJob):
                errors.append(LineError(line.line, str(prepared)))
            else:
                good.append(prepared)
    errors.sort(key=lambda error: error.line)
    outcome = submit_prepared(gateway, good, batch_id=batch_id, source="bulk", chunk=chunk)
    outcome.errors = errors
    return outcome


def wait_for_batch(
    settings: Settings, batch_id: str, total: int, *, timeout: float = 3600.0
) -> dict[str, int]:
    """Poll the batch's job rows until all have finished; returns counts by status."""
    engine = get_engine(settings.resolved_database_url)
    deadline = time.monotonic() + timeout
    with _progress() as progress:
        task = progress.add_task("rendering", total=total)
        while True:
            counts = jobs.count_batch_by_status(engine, batch_id)
            done = counts.get(JobStatus.SUCCEEDED, 0) + counts.get(JobStatus.FAILED, 0)
            progress.update(
                task,
                completed=done,
                description=f"rendering ({counts.get(JobStatus.FAILED, 0)} failed)",
            )
            if done >= total or time.monotonic() > deadline:
                return counts
            time.sleep(0.25)
