"""Bulk submission and waiting, with progress bars: shared by `canary submit` and `demo`.

Every submission is recorded as a batch (storage/batches.py): which job serves each line,
which lines were refused and why, so `canary status BATCH_ID` can answer later.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from canary.contracts import PriorityClass
from canary.settings import Settings
from gateway.bulk import LineError, ParsedLine, read_requests
from gateway.job_requests import InvalidJob
from gateway.service import Gateway
from gateway.submit import PreparedJob
from storage import batches, jobs
from storage.db import get_engine
from storage.models import Batch, JobStatus


@dataclass
class Skipped:
    """A line whose job already existed: submitted earlier (by ``batch_id``)."""

    line: int
    job_id: str
    batch_id: str | None
    status: str


@dataclass
class BatchOutcome:
    batch_id: str
    created: int = 0
    duplicates: int = 0
    unsent: int = 0  # recorded, but the broker refused them: the outbox sends them later
    held: int = 0  # recorded, held for fair share: released as workers take jobs
    job_ids: list[str] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "batch_id": self.batch_id,
            "created": self.created,
            "duplicates": self.duplicates,
            "unsent": self.unsent,
            "held": self.held,
            "rejected": [{"line": e.line, "message": e.message} for e in self.errors],
            "skipped": [vars(s) for s in self.skipped],
            "job_ids": self.job_ids,
        }


def progress_bar(*, stderr: bool = False) -> Progress:
    from rich.console import Console

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
        console=Console(stderr=True) if stderr else None,
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


def submit_lines(
    gateway: Gateway,
    lines: list[tuple[int, PreparedJob]],
    batch: Batch,
    *,
    chunk: int,
    errors: list[LineError] | None = None,
    quiet: bool = False,
    priority: PriorityClass = PriorityClass.BULK,
) -> BatchOutcome:
    """Record the batch, then submit its prepared lines in chunks with a progress bar."""
    engine = gateway.producer.engine
    outcome = BatchOutcome(batch.id, errors=sorted(errors or [], key=lambda e: e.line))
    batch.rejected = json.dumps([{"line": e.line, "message": e.message} for e in outcome.errors])
    batches.record_batch(batch, [], engine)
    with progress_bar(stderr=quiet) as progress:
        task = progress.add_task("submitting", total=len(lines))
        for start in range(0, len(lines), chunk):
            part = lines[start : start + chunk]
            submitted = gateway.submit_many(
                [job for _, job in part], source=batch.source, batch_id=batch.id, priority=priority
            )
            batches.add_lines(
                engine, batch.id, [(n, s.job_id) for (n, _), s in zip(part, submitted, strict=True)]
            )
            earlier = {
                row.id: row
                for row in jobs.get_jobs(engine, [s.job_id for s in submitted if not s.created])
            }
            for (line, _), item in zip(part, submitted, strict=True):
                outcome.job_ids.append(item.job_id)
                outcome.unsent += not item.sent
                outcome.held += item.held and item.sent  # refused: counted in unsent
                if item.created:
                    outcome.created += 1
                else:
                    outcome.duplicates += 1
                    row = earlier.get(item.job_id)
                    outcome.skipped.append(
                        Skipped(line, item.job_id, row.batch_id if row else None,
                                row.status if row else "unknown")
                    )  # fmt: skip
            progress.advance(task, len(part))
    batch.created, batch.duplicates = outcome.created, outcome.duplicates
    batches.record_batch(batch, [], engine)
    return outcome


def submit_file(
    path: Path,
    settings: Settings,
    *,
    batch_id: str | None = None,
    default_version: str | None = None,
    chunk: int = 500,
    resubmit: bool = False,
    quiet: bool = False,
    priority: PriorityClass = PriorityClass.BULK,
) -> BatchOutcome:
    """Validate and assign the whole file first (errors by line), then submit in chunks.

    Lines without a model_version are assigned by the experiment, as over HTTP. With
    ``resubmit``, lines submitted before become new jobs instead of being skipped. The jobs
    go to their versions' ``priority`` queues (bulk unless told).
    """
    batch_id = batch_id or uuid.uuid4().hex
    gateway = make_gateway(settings)
    good: list[tuple[int, PreparedJob]] = []
    errors: list[LineError] = []
    parsed: list[ParsedLine] = []
    resubmission = batch_id if resubmit else None
    for item in read_requests(
        path, settings, default_version=default_version, resubmission=resubmission
    ):
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
                good.append((line.line, prepared))
    batch = Batch(id=batch_id, source="bulk", file=str(path.resolve()))
    return submit_lines(
        gateway, good, batch, chunk=chunk, errors=errors, quiet=quiet, priority=priority
    )


def wait_for_batch(
    settings: Settings, batch_id: str, *, timeout: float = 3600.0, quiet: bool = False
) -> dict[str, int]:
    """Poll the batch's jobs until all have finished (or ``timeout``); counts by status."""
    engine = get_engine(settings.resolved_database_url)
    deadline = time.monotonic() + timeout
    with progress_bar(stderr=quiet) as progress:
        task = progress.add_task("rendering", total=None)
        while True:
            counts = batches.count_by_status(engine, batch_id)
            total = sum(counts.values())
            done = counts.get(JobStatus.SUCCEEDED, 0) + counts.get(JobStatus.FAILED, 0)
            failed = counts.get(JobStatus.FAILED, 0)
            progress.update(
                task, total=total, completed=done, description=f"rendering ({failed} failed)"
            )
            if done >= total or time.monotonic() > deadline:
                return counts
            time.sleep(0.25)
