"""`canary submit` and `canary status`: the batch user's commands (jobs and batches)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from canary.cli.common import (
    console,
    database_errors,
    db_engine,
    err,
    fail,
    print_json,
    usage_error,
)
from canary.settings import Settings, get_settings

if TYPE_CHECKING:
    from storage.models import Job


def submit(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help=".jsonl or .csv")],
    model_version: Annotated[
        str | None, typer.Option("--model-version", help="For lines that name none")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until every job has finished")] = False,
    resubmit: Annotated[
        bool,
        typer.Option(help="Queue lines submitted before again, as new jobs (default: skip them)"),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the outcome (and with --wait the batch) as JSON")
    ] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: seconds to wait at most")] = 3600.0,
    chunk: Annotated[int, typer.Option(min=1, max=10_000)] = 500,
    interactive: Annotated[
        bool,
        typer.Option(
            "--interactive",
            help="Queue the jobs as interactive (ahead of bulk work: someone waits for them)",
        ),
    ] = False,
) -> None:
    """Submit every line of FILE as a job; bad lines are reported by line number and
    skipped, lines submitted before are skipped (see --resubmit). Exits 1 if a line was
    rejected or, with --wait, a job failed."""
    import json

    from canary.cli.batch import submit_file, wait_for_batch
    from canary.cli.batch_status import explain_skipped, show_batch
    from canary.cli.stack import broker_problem
    from canary.contracts import PriorityClass

    settings = get_settings()
    problem = broker_problem(settings)
    if problem:
        raise fail(f"nothing submitted: {problem}", 1)
    try:
        outcome = submit_file(
            file,
            settings,
            default_version=model_version,
            chunk=chunk,
            resubmit=resubmit,
            quiet=as_json,
            priority=PriorityClass.INTERACTIVE if interactive else PriorityClass.BULK,
        )
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    for error in outcome.errors:
        err.print(f"[red]{file}:{error.line}:[/] {error.message}", highlight=False, soft_wrap=True)
    skipped = explain_skipped(outcome, str(file))
    summary = (
        f"{outcome.created} jobs queued, {outcome.duplicates} already submitted, "
        f"{len(outcome.errors)} lines rejected (batch {outcome.batch_id})"
    )
    if outcome.held:
        from canary.cli.batch_status import describe_held

        summary += f"; {describe_held(outcome.held, settings.fair_share_queued)}"
    if outcome.unsent:
        summary += (
            f"; {outcome.unsent} not sent yet: the broker {settings.shown_broker_url} refused "
            "them, and they are sent when it is back (they stay QUEUED)"
        )
    (err if as_json else console).print(summary, highlight=False, soft_wrap=True)
    if skipped:
        (err if as_json else console).print(skipped, highlight=False, soft_wrap=True)
    if not wait:
        if as_json:
            print(json.dumps(outcome.as_json(), indent=2))
        raise typer.Exit(1 if outcome.errors else 0)
    wait_for_batch(settings, outcome.batch_id, timeout=timeout, quiet=as_json)
    code = show_batch(settings, outcome.batch_id, as_json=as_json, wait=True, timeout=0)
    raise typer.Exit(code or 0)


def status(
    job_id: Annotated[
        str | None,
        typer.Argument(help="A job id or a batch id; without one: the whole system"),
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Wait until the job (or every job of the batch) has finished")
    ] = False,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait at most")] = 600.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document (and nothing else)")
    ] = False,
) -> None:
    """One job (status, version, timings, failure, image), one batch (counts by status,
    rejected and failed lines, images), or the system overview: experiments and stages,
    queues and workers, the last golden run, the gate verdicts."""
    settings = get_settings()
    if job_id is None:
        _status_overview(settings, as_json)
        return
    from storage import jobs

    with database_errors(settings):
        job = jobs.get_job(db_engine(), job_id)
    if job is None:
        from canary.cli.batch_status import show_batch

        with database_errors(settings):
            code = show_batch(settings, job_id, as_json=as_json, wait=wait, timeout=timeout)
        if code is None:
            raise fail(f"no job or batch {job_id}")
        raise typer.Exit(code)
    _status_of_job(settings, job, wait, timeout, as_json)


def _status_overview(settings: Settings, as_json: bool) -> None:
    from canary.cli.overview import OverviewError, collect_overview, print_overview

    try:
        with database_errors(settings):
            overview = collect_overview(settings)
    except OverviewError as exc:
        raise fail(str(exc)) from None
    if as_json:
        print_json(overview)
    else:
        print_overview(settings, overview)


def _status_of_job(settings: Settings, job: Job, wait: bool, timeout: float, as_json: bool) -> None:
    """Print the job (after waiting for it if asked); exit 1 if it failed or is not done."""
    from canary.cli.report import job_document, print_job
    from storage import jobs
    from storage.models import JobStatus
    from storage.objects import store_from_settings

    done = True
    if wait:
        job, done = _wait_for_job(job, timeout)
    image_url = None
    if job.image_key:
        image_url = store_from_settings(settings).url(job.image_key, settings.presign_expiry_s)
    lost = jobs.lost_attempts(db_engine(), job.id)  # how each attempt's worker died
    if as_json:
        print_json(job_document(job, image_url, lost))
    else:
        print_job(job, image_url, lost)
    if not done:
        raise fail(f"job {job.id} still {job.status} after {timeout:g} s")
    if job.status == JobStatus.FAILED:
        raise fail(f"job {job.id} failed ({job.failure_kind})")


def _wait_for_job(job: Job, timeout: float) -> tuple[Job, bool]:
    """The job as it is once finished (True) or after ``timeout`` seconds (False)."""
    from storage import jobs
    from storage.models import TERMINAL_STATUSES

    deadline = time.monotonic() + timeout
    while job.status not in TERMINAL_STATUSES:
        if time.monotonic() > deadline:
            return job, False
        time.sleep(0.5)
        job = jobs.get_job(db_engine(), job.id) or job
    return job, True
