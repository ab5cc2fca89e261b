"""The render task: one job in, one PNG in object storage and one finished job row out.

Per message: claim the job (one conditional UPDATE), optionally claim compatible queued
jobs for the same pipeline call (``CANARY_MICRO_BATCH``), render, hand each image to the
worker's recorder and return, so the message is acknowledged and the next job renders
while the recorder checks, encodes, uploads (with retries) and records this one. Crash
safety with that overlap is argued in tasks/recorder.py and tasks/recovery.py; what Celery
and Flower are told about each job's outcome, in tasks/outcome.py.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import numpy as np
import torch
from celery import Celery, Task
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import task_failure
from PIL import Image
from tenacity import retry, stop_after_attempt, wait_exponential

from canary.contracts import (
    RENDER_TASK,
    SPEC_FIELDS,
    PriorityClass,
    RenderSpec,
    class_of_queue,
)
from storage import jobs
from storage.models import FailureKind, JobStatus, utcnow
from storage.shadow import image_key_for
from tasks.app import app
from tasks.checks import classify_output
from tasks.claim_ahead import take_in_child
from tasks.faults import NO_FAULTS, Faults, batch_step_callback
from tasks.outcome import (
    ALREADY_FINISHED,
    HELD,
    RENDERED,
    REROUTED,
    STEPPED_ASIDE,
    JobFailed,
    skip_duplicate,
)
from tasks.pipelines import LoadedModel, Pipeline
from tasks.publish import publish, render_spec
from tasks.recovery import resend
from tasks.step_aside import StepAside, StepAsideCheck, step_aside_check, with_step_aside
from tasks.worker_state import WorkerContext, context

log = logging.getLogger(__name__)


class RenderFailure(Exception):
    """A job that cannot succeed, with the kind it is counted under."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class RenderOutput:
    """One image of a pipeline call, before checks and post-processing."""

    image: np.ndarray  # H x W x 3, floats in [0, 1] unless the pipeline misbehaved
    nsfw_flagged: bool
    inference_ms: float  # this image's share of the call
    peak_vram_bytes: int | None


@dataclass
class RenderResult:
    png: bytes
    inference_ms: float
    peak_vram_bytes: int | None


def render_batch(
    model: LoadedModel,
    specs: Sequence[RenderSpec],
    faults: Sequence[Faults],
    step_aside: Callable[[], bool] | None = None,
) -> list[RenderOutput]:
    """One pipeline call for jobs of the same size, steps and guidance, each with its own
    seeded generator (so each image depends on its own seed only, up to float noise).
    With ``step_aside``, the call stops (:class:`StepAside`) after the first step at which
    it is true (a job of a higher class waits behind it, tasks/step_aside.py).

    On CUDA out-of-memory the cache is freed and the call is tried once more with attention
    and VAE slicing (less memory, same images up to float noise); a second OOM fails it.
    """
    on_cuda = model.device.startswith("cuda")
    first = specs[0]
    single = len(specs) == 1
    width, height = model.config.render_size or (int(first["width"]), int(first["height"]))
    for attempt in range(2):
        generators = [
            torch.Generator(device=model.device).manual_seed(int(spec["seed"])) for spec in specs
        ]
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(model.device)
        started = time.perf_counter()
        try:
            with _low_memory(model.pipeline, enabled=attempt > 0):
                output = model.pipeline(
                    prompt=first["prompt"] if single else [s["prompt"] for s in specs],
                    negative_prompt=(first["negative_prompt"] or None)
                    if single
                    else [s["negative_prompt"] for s in specs],
                    num_inference_steps=int(first["steps"]),
                    guidance_scale=float(first["guidance"]),
                    width=width,
                    height=height,
                    generator=generators[0] if single else generators,
                    output_type="np",
                    callback_on_step_end=with_step_aside(
                        batch_step_callback(list(faults), attempt), step_aside
                    ),
                )
            break
        except torch.cuda.OutOfMemoryError as exc:
            if on_cuda:
                torch.cuda.empty_cache()
            if attempt == 1:
                raise RenderFailure(FailureKind.OOM, str(exc).splitlines()[0]) from exc
            log.warning("out of memory; retrying once with attention/VAE slicing")
    share_ms = (time.perf_counter() - started) * 1000 / len(specs)
    peak = int(torch.cuda.max_memory_allocated(model.device)) if on_cuda else None
    flagged = getattr(output, "nsfw_content_detected", None) or [False] * len(specs)
    return [
        RenderOutput(np.asarray(output.images[i]), bool(flagged[i]), share_ms, peak)
        for i in range(len(specs))
    ]


def finish_image(model: LoadedModel, spec: RenderSpec, out: RenderOutput, faults: Faults) -> bytes:
    """Check what the pipeline returned, post-process it, encode it: the PNG to store."""
    if model.config.safety_filter and (faults.nsfw or out.nsfw_flagged):
        raise RenderFailure(FailureKind.NSFW_FILTERED, "the safety checker flagged the image")
    problem = classify_output(out.image)
    if problem is not None:
        raise RenderFailure(*problem)
    return encode_png(model.postprocess(out.image, int(spec["width"]), int(spec["height"])))


def render_image(model: LoadedModel, spec: RenderSpec, faults: Faults = NO_FAULTS) -> RenderResult:
    """Render, check and encode one job in the calling thread."""
    out = render_batch(model, [spec], [faults])[0]
    png = finish_image(model, spec, out, faults)
    return RenderResult(png, out.inference_ms, out.peak_vram_bytes)


@contextmanager
def _low_memory(pipeline: Pipeline, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    vae = getattr(pipeline, "vae", None)
    pipeline.enable_attention_slicing()
    if vae is not None:
        vae.enable_slicing()
    try:
        yield
    finally:
        pipeline.disable_attention_slicing()
        if vae is not None:
            vae.disable_slicing()


class StorageUnavailable(RenderFailure):
    """The upload's retries ran out, or the breaker is open: the image can be spooled."""

    def __init__(self, message: str, elapsed_ms: float) -> None:
        super().__init__(FailureKind.STORAGE_ERROR, message)
        self.elapsed_ms = elapsed_ms


def upload(ctx: WorkerContext, key: str, png: bytes, faults: Faults = NO_FAULTS) -> float:
    """Put the image, retrying with exponential backoff; returns the time taken in ms.
    Raises StorageUnavailable at once while the storage breaker is open (tasks/spool.py)."""
    started = time.perf_counter()
    if ctx.storage_guard.is_open:
        raise StorageUnavailable("object store unavailable (breaker open)", 0.0)
    if faults.upload_slow_s:
        time.sleep(faults.upload_slow_s)
    failures_left = [faults.upload_errors]

    @retry(
        stop=stop_after_attempt(ctx.settings.upload_attempts),
        wait=wait_exponential(multiplier=ctx.settings.upload_backoff_s, max=10),
        reraise=True,
    )
    def put() -> None:
        if failures_left[0] > 0:
            failures_left[0] -= 1
            raise ConnectionError("object store unreachable (injected)")
        ctx.store.put(key, png, content_type="image/png")

    try:
        put()
    except Exception as exc:
        elapsed_ms = (time.perf_counter() - started) * 1000
        raise StorageUnavailable(f"{type(exc).__name__}: {exc}", elapsed_ms) from exc
    return (time.perf_counter() - started) * 1000


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _ms_between(later: datetime, earlier: datetime | None) -> float | None:
    if earlier is None:
        return None
    if earlier.tzinfo is None:  # SQLite hands back naive UTC datetimes
        later = later.replace(tzinfo=None)
    return (later - earlier).total_seconds() * 1000


def _check_spec(spec: dict[str, Any]) -> RenderSpec:
    missing = [name for name in SPEC_FIELDS if name not in spec]
    if missing:
        raise RenderFailure(FailureKind.INVALID_JOB, f"job spec lacks {', '.join(missing)}")
    return cast(RenderSpec, spec)  # every field is present (checked above)


def _fail(ctx: WorkerContext, job_id: str, kind: FailureKind, message: str) -> bool:
    """Record the failure; False if another delivery finished the job first."""
    log.warning("job %s failed: %s: %s", job_id, kind, message)
    return jobs.finish(
        ctx.engine, job_id, JobStatus.FAILED, failure_kind=kind, failure_message=message
    )


def _fail_task(ctx: WorkerContext, job_id: str, kind: FailureKind, message: str) -> str:
    """Inside the task: record the failure and end the task in Celery's FAILURE state."""
    if not _fail(ctx, job_id, kind, message):
        return ALREADY_FINISHED
    raise JobFailed.of(kind, message)


@dataclass
class Pending:
    """A claimed job on its way through the pipeline call."""

    claimed: jobs.Claimed
    spec: RenderSpec
    faults: Faults
    task_id: str  # the Celery task whose outcome the recorder reports (the job id)

    @property
    def job_id(self) -> str:
        return self.claimed.id


@dataclass
class Rendered:
    """What the recorder needs to finish a rendered job."""

    pending: Pending
    model: LoadedModel
    output: RenderOutput
    started_at: datetime

    @property
    def job_id(self) -> str:
        return self.pending.job_id


def record(ctx: WorkerContext, item: Rendered) -> None:
    """On the recorder thread: check, encode, upload and record one rendered job, then
    release held bulk jobs of this version if it is time (fair share: tasks/release.py).

    A database error propagates (the job stays RUNNING and tasks.recovery re-sends it).
    Once the row is final, the job's task event says the same (tasks/outcome.py).
    """
    try:
        _record(ctx, item)
    finally:
        if ctx.version is not None:
            ctx.releaser.maybe_release(ctx.version)


def _record(ctx: WorkerContext, item: Rendered) -> None:
    job_id, claimed = item.job_id, item.pending.claimed
    task_id = item.pending.task_id
    key = image_key_for(ctx.engine, job_id)  # a shadow job's goes under shadow/
    try:
        png = finish_image(item.model, item.pending.spec, item.output, item.pending.faults)
        upload_ms = upload(ctx, key, png, item.pending.faults)
    except Exception as exc:
        if isinstance(exc, StorageUnavailable) and ctx.storage_guard.keep(
            item, key, png, _stored_fields(item, key), exc.elapsed_ms
        ):
            return  # spooled: tasks/spool.py uploads and records it when storage answers
        if isinstance(exc, RenderFailure):
            kind, message = exc.kind, str(exc)
        else:
            log.exception("job %s raised while being finished", job_id)
            kind, message = FailureKind.ERROR, f"{type(exc).__name__}: {exc}"
        if _fail(ctx, job_id, kind, message):
            ctx.outcomes.failed(task_id, kind, message)
        return
    finished_at = utcnow()
    recorded = jobs.finish(
        ctx.engine,
        job_id,
        JobStatus.SUCCEEDED,
        finished_at=finished_at,
        started_at=item.started_at,  # the render's real start (tasks/claim_ahead.py)
        upload_ms=upload_ms,
        end_to_end_ms=_ms_between(finished_at, claimed.created_at),
        **_stored_fields(item, key),
    )
    if recorded:
        runtime_s = (_ms_between(finished_at, item.started_at) or 0.0) / 1000
        ctx.outcomes.succeeded(task_id, f"{JobStatus.SUCCEEDED.value} {key}", runtime_s)


def _stored_fields(item: Rendered, key: str) -> dict[str, Any]:
    """The success record's fields known once the image is rendered (a spooled job's too)."""
    claimed = item.pending.claimed
    return {
        "image_key": key,
        "model_revision": item.model.revision,
        "inference_ms": item.output.inference_ms,
        "peak_vram_bytes": item.output.peak_vram_bytes,
        "queue_wait_ms": _ms_between(item.started_at, claimed.enqueued_at or claimed.created_at),
    }


def _claim_batch_mates(
    ctx: WorkerContext, model: LoadedModel, spec: RenderSpec, started_at: datetime
) -> list[Pending]:
    """Micro-batching: up to N-1 more queued jobs that can share this job's pipeline call."""
    if ctx.settings.micro_batch <= 1:
        return []
    rows = jobs.claim_compatible(
        ctx.engine,
        model.version,
        width=int(spec["width"]),
        height=int(spec["height"]),
        steps=int(spec["steps"]),
        guidance=float(spec["guidance"]),
        limit=ctx.settings.micro_batch - 1,
        started_at=started_at,
        **ctx.worker_fields(),
    )
    return [
        Pending(
            jobs.Claimed(row.id, row.attempts, row.created_at, row.enqueued_at),
            render_spec(row),
            Faults.parse(row.prompt, ctx.settings.fault_injection),
            row.id,  # a mate's own message has its job id as task id (gateway, recovery)
        )
        for row in rows
    ]


def _render_pending(
    ctx: WorkerContext,
    model: LoadedModel,
    batch: list[Pending],
    claimed_at: datetime,
    step_aside: StepAsideCheck | None = None,
) -> None:
    """Render ``batch`` in one call and hand the images to the recorder. A failed
    micro-batch releases the mates (and sends their messages again) and tries the
    first job alone. A bulk or background job alone may step aside for a job of a higher
    class (tasks/step_aside.py)."""
    step_aside = step_aside if len(batch) == 1 else None  # mates may be of any class
    if step_aside is not None and step_aside.at_start():
        raise StepAside()
    between_steps = step_aside.between_steps if step_aside is not None else None
    ctx.recorder.render_started()
    try:
        outputs = render_batch(
            model, [p.spec for p in batch], [p.faults for p in batch], between_steps
        )
    except BaseException as exc:
        if len(batch) == 1:
            raise
        # Other workers may have dropped the mates' messages while the claim held them.
        resend(ctx.app, ctx.settings, jobs.release(ctx.engine, [p.job_id for p in batch[1:]]))
        if isinstance(exc, SoftTimeLimitExceeded | KeyboardInterrupt | SystemExit):
            raise
        log.warning("micro-batch of %d failed (%s); rendering job %s alone", len(batch), exc,
                    batch[0].job_id)  # fmt: skip
        batch = batch[:1]
        outputs = render_batch(model, [batch[0].spec], [batch[0].faults])
    for pending, output in zip(batch, outputs, strict=True):
        ctx.recorder.submit(Rendered(pending, model, output, claimed_at))


@app.task(name=RENDER_TASK, bind=True, Request="tasks.outcome:RenderRequest", throws=(JobFailed,))  # type: ignore[untyped-decorator]  # Celery ships no type hints
def render(self: Task, job_id: str, spec: dict[str, Any]) -> str:
    """Render a job on this worker's version; returns RENDERED once its image is handed to
    the recorder (see tasks/recorder.py), another pass-on marker when the job is not this
    delivery's to finish, and raises JobFailed when it failed (tasks/outcome.py)."""
    ctx = context()
    tag = spec.get("model_version")
    if tag != ctx.version:
        return _misrouted(self.app, ctx, job_id, spec, tag, self.request)
    if ctx.recorder.holds(job_id):
        # rendered here already (a micro-batch mate's own message): HELD while the recorder
        # still has it, a duplicate delivery once it is recorded
        held = jobs.get_job(ctx.engine, job_id)
        if held is None or held.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            return HELD
        return skip_duplicate(job_id, held.status)
    started_at = utcnow()
    time_limit = timedelta(seconds=ctx.settings.task_time_limit_s)
    claimed = take_in_child(ctx, self.request, job_id, started_at) or jobs.claim_job(
        ctx.engine,
        job_id,
        started_at=started_at,
        # no render outlasts the hard time limit: a job held longer has lost its worker
        # (a claim made ahead may have stamped its start a little early)
        stale_before=started_at - time_limit - jobs.STARTED_EARLY_SLACK,
        **ctx.worker_fields(),
    )
    if claimed is None:
        job = jobs.get_job(ctx.engine, job_id)
        if job is None:
            log.error("job %s has no record; dropping the message", job_id)
            raise Reject(f"job {job_id} has no record", requeue=False)
        if job.status == JobStatus.RUNNING:
            log.info("job %s is held by %s; leaving it there", job_id, job.worker_host)
            return HELD  # another worker's (a micro-batch mate): it reports the outcome
        return skip_duplicate(job_id, job.status)  # finished: not again, not reported twice
    if claimed.attempt > ctx.settings.max_attempts:
        # Earlier deliveries never finished: their worker died (a poison job kills it, or
        # unrelated crashes: the recorded causes tell which, storage.jobs.record_process_loss).
        tried = claimed.attempt - 1
        causes = jobs.describe_lost_attempts(jobs.lost_attempts(ctx.engine, job_id), tried)
        return _fail_task(
            ctx,
            job_id,
            FailureKind.WORKER_LOST,
            f"gave up after {tried} attempts whose worker was lost: {causes}",
        )
    # one line per render start: the crash-safety tests count them per job and process
    log.info("job %s claimed: attempt %d by %s (pid %d)", job_id, claimed.attempt, ctx.node,
             os.getpid())  # fmt: skip
    try:
        checked = _check_spec(spec)
        faults = Faults.parse(checked["prompt"], ctx.settings.fault_injection)
        try:
            model = ctx.ensure_model()
        except Exception as exc:
            raise RenderFailure(FailureKind.MODEL_LOAD, f"{type(exc).__name__}: {exc}") from exc
        batch = [Pending(claimed, checked, faults, self.request.id or job_id)]
        batch += _claim_batch_mates(ctx, model, checked, started_at)
        step_aside = step_aside_check(self.request, model.version, ctx.settings.broker_url)
        _render_pending(ctx, model, batch, started_at, step_aside)
        return RENDERED
    except StepAside:
        return _step_aside(ctx, job_id)
    except RenderFailure as failure:
        kind, message = failure.kind, str(failure)
    except SoftTimeLimitExceeded:
        kind, message = FailureKind.TIMEOUT, "soft time limit exceeded"
    except Exception as exc:
        log.exception("job %s raised", job_id)
        kind, message = FailureKind.ERROR, f"{type(exc).__name__}: {exc}"
    return _fail_task(ctx, job_id, kind, message)


def _step_aside(ctx: WorkerContext, job_id: str) -> str:
    """Give a job back for one of a higher class waiting behind it: QUEUED again, its
    attempt not counted, its message sent again (tasks/step_aside.py). A crash before the
    send leaves the job QUEUED with this message unacknowledged: Celery delivers it again."""
    resend(ctx.app, ctx.settings, jobs.release(ctx.engine, [job_id]))
    log.info("job %s stepped aside for a job of a higher class; sent again", job_id)
    return STEPPED_ASIDE


def _misrouted(
    app: Celery,
    ctx: WorkerContext,
    job_id: str,
    spec: dict[str, Any],
    tag: object,
    request: Any,
) -> str:
    """Never render another version's job: send it to its own version's queue of the same
    priority class (same task id, so Flower follows it there), or fail it loudly."""
    if not isinstance(tag, str) or tag not in ctx.settings.versions:
        log.error("job %s has unknown version tag %r; failing it", job_id, tag)
        jobs.claim(ctx.engine, job_id, started_at=utcnow(), worker_host=ctx.node)
        return _fail_task(ctx, job_id, FailureKind.INVALID_JOB, f"unknown model version {tag!r}")
    log.error("job %s tagged %r reached the %r worker; re-routing", job_id, tag, ctx.version)
    jobs.count_misroute(ctx.engine, job_id)
    arrived_on = str((request.delivery_info or {}).get("routing_key") or "")
    own = class_of_queue(ctx.version, arrived_on) if ctx.version else None
    priority = own or PriorityClass.BULK
    publish(app, job_id, spec, priority=priority, task_id=request.id)  # on render.<tag>...
    return REROUTED


@task_failure.connect(sender=render)  # type: ignore[untyped-decorator]  # Celery ships no type hints
def _record_hard_timeout(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Any = None,
    **_: Any,
) -> None:
    """The hard time limit kills the pool child; the parent records the job as timed out."""
    if isinstance(exception, TimeLimitExceeded) and args:
        _fail(context(), args[0], FailureKind.TIMEOUT, f"hard time limit exceeded ({exception})")
