"""The render task: one job in, one PNG in object storage and one finished job row out."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import torch
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import task_failure
from PIL import Image
from tenacity import retry, stop_after_attempt, wait_exponential

from storage import jobs
from storage.models import FailureKind, JobStatus, utcnow
from tasks.app import app
from tasks.checks import classify_output
from tasks.faults import NO_FAULTS, Faults
from tasks.pipelines import LoadedModel
from tasks.spec import RENDER_TASK, SPEC_FIELDS, RenderSpec, object_key
from tasks.worker_state import WorkerContext, context

log = logging.getLogger(__name__)


class RenderFailure(Exception):
    """A job that cannot succeed, with the kind it is counted under."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class RenderResult:
    png: bytes
    inference_ms: float
    peak_vram_bytes: int | None


def render_image(model: LoadedModel, spec: RenderSpec, faults: Faults = NO_FAULTS) -> RenderResult:
    """Run the pipeline with the job's own seeded generator and check what comes out.

    On CUDA out-of-memory the cache is freed and the job is tried once more with attention
    and VAE slicing (less memory, same image up to float noise); a second OOM fails it.
    """
    on_cuda = model.device.startswith("cuda")
    width, height = model.config.render_size or (int(spec["width"]), int(spec["height"]))
    for attempt in range(2):
        generator = torch.Generator(device=model.device).manual_seed(int(spec["seed"]))
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(model.device)
        started = time.perf_counter()
        try:
            with _low_memory(model.pipeline, enabled=attempt > 0):
                output = model.pipeline(  # type: ignore[operator]
                    prompt=spec["prompt"],
                    negative_prompt=spec["negative_prompt"] or None,
                    num_inference_steps=int(spec["steps"]),
                    guidance_scale=float(spec["guidance"]),
                    width=width,
                    height=height,
                    generator=generator,
                    output_type="np",
                    callback_on_step_end=faults.step_callback(attempt),
                )
            break
        except torch.cuda.OutOfMemoryError as exc:
            if on_cuda:
                torch.cuda.empty_cache()
            if attempt == 1:
                raise RenderFailure(FailureKind.OOM, str(exc).splitlines()[0]) from exc
            log.warning("out of memory; retrying once with attention/VAE slicing")
    inference_ms = (time.perf_counter() - started) * 1000
    peak = int(torch.cuda.max_memory_allocated(model.device)) if on_cuda else None
    flagged = getattr(output, "nsfw_content_detected", None)
    if model.config.safety_filter and (faults.nsfw or (flagged and any(flagged))):
        raise RenderFailure(FailureKind.NSFW_FILTERED, "the safety checker flagged the image")
    image = np.asarray(output.images[0])
    problem = classify_output(image)
    if problem is not None:
        raise RenderFailure(*problem)
    final = model.postprocess(image, int(spec["width"]), int(spec["height"]))
    return RenderResult(encode_png(final), inference_ms, peak)


@contextmanager
def _low_memory(pipeline: object, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    vae = getattr(pipeline, "vae", None)
    pipeline.enable_attention_slicing()  # type: ignore[attr-defined]
    if vae is not None:
        vae.enable_slicing()
    try:
        yield
    finally:
        pipeline.disable_attention_slicing()  # type: ignore[attr-defined]
        if vae is not None:
            vae.disable_slicing()


def upload(ctx: WorkerContext, key: str, png: bytes, faults: Faults = NO_FAULTS) -> float:
    """Put the image, retrying with exponential backoff; returns the time taken in ms."""
    started = time.perf_counter()
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
        raise RenderFailure(FailureKind.STORAGE_ERROR, f"{type(exc).__name__}: {exc}") from exc
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


def _check_spec(spec: dict) -> RenderSpec:
    missing = [name for name in SPEC_FIELDS if name not in spec]
    if missing:
        raise RenderFailure(FailureKind.INVALID_JOB, f"job spec lacks {', '.join(missing)}")
    return spec  # type: ignore[return-value]


def _fail(ctx: WorkerContext, job_id: str, kind: FailureKind, message: str) -> None:
    log.warning("job %s failed: %s: %s", job_id, kind, message)
    jobs.finish(ctx.engine, job_id, JobStatus.FAILED, failure_kind=kind, failure_message=message)


@app.task(name=RENDER_TASK, bind=True)
def render(self, job_id: str, spec: dict) -> str:  # type: ignore[no-untyped-def]
    """Render one job on this worker's version; returns the final status."""
    ctx = context()
    tag = spec.get("model_version")
    if tag != ctx.version:
        return _misrouted(self.app, ctx, job_id, spec, tag)
    job = jobs.get_job(ctx.engine, job_id)
    if job is None:
        log.error("job %s has no record; dropping the message", job_id)
        return "UNKNOWN"
    started_at = utcnow()
    attempt = jobs.claim(
        ctx.engine,
        job_id,
        started_at=started_at,
        worker_host=ctx.hostname,
        worker_version=ctx.version,
        device=ctx.device,
        model_revision=ctx.model.revision if ctx.model else None,
    )
    if attempt is None:
        return job.status  # already finished: a redelivery must not render again
    if attempt > ctx.settings.max_attempts:
        # Earlier deliveries never finished: their worker died (a poison job kills it).
        _fail(
            ctx,
            job_id,
            FailureKind.WORKER_LOST,
            f"gave up after {attempt - 1} attempts whose worker was lost",
        )
        return JobStatus.FAILED
    try:
        checked = _check_spec(spec)
        faults = Faults.parse(checked["prompt"], ctx.settings.fault_injection)
        try:
            model = ctx.ensure_model()
        except Exception as exc:
            raise RenderFailure(FailureKind.MODEL_LOAD, f"{type(exc).__name__}: {exc}") from exc
        result = render_image(model, checked, faults)
        key = object_key(model.version, job_id)
        upload_ms = upload(ctx, key, result.png, faults)
        finished_at = utcnow()
        jobs.finish(
            ctx.engine,
            job_id,
            JobStatus.SUCCEEDED,
            finished_at=finished_at,
            image_key=key,
            model_revision=model.revision,
            inference_ms=result.inference_ms,
            upload_ms=upload_ms,
            peak_vram_bytes=result.peak_vram_bytes,
            queue_wait_ms=_ms_between(started_at, job.enqueued_at or job.created_at),
            end_to_end_ms=_ms_between(finished_at, job.created_at),
        )
        return JobStatus.SUCCEEDED
    except RenderFailure as failure:
        _fail(ctx, job_id, failure.kind, str(failure))
    except SoftTimeLimitExceeded:
        _fail(ctx, job_id, FailureKind.TIMEOUT, "soft time limit exceeded")
    except Exception as exc:
        log.exception("job %s raised", job_id)
        _fail(ctx, job_id, FailureKind.ERROR, f"{type(exc).__name__}: {exc}")
    return JobStatus.FAILED


def _misrouted(app: Celery, ctx: WorkerContext, job_id: str, spec: dict, tag: object) -> str:
    """Never render another version's job: send it to its own queue, or fail it loudly."""
    if not isinstance(tag, str) or tag not in ctx.settings.versions:
        log.error("job %s has unknown version tag %r; failing it", job_id, tag)
        jobs.claim(ctx.engine, job_id, started_at=utcnow(), worker_host=ctx.hostname)
        _fail(ctx, job_id, FailureKind.INVALID_JOB, f"unknown model version {tag!r}")
        return JobStatus.FAILED
    log.error("job %s tagged %r reached the %r worker; re-routing", job_id, tag, ctx.version)
    jobs.count_misroute(ctx.engine, job_id)
    app.send_task(RENDER_TASK, args=(job_id, spec), queue=ctx.settings.queue_for(tag))
    return "REROUTED"


@task_failure.connect(sender=render)
def _record_hard_timeout(sender=None, task_id=None, exception=None, args=None, **_):  # type: ignore[no-untyped-def]
    """The hard time limit kills the pool child; the parent records the job as timed out."""
    if isinstance(exception, TimeLimitExceeded) and args:
        _fail(context(), args[0], FailureKind.TIMEOUT, f"hard time limit exceeded ({exception})")
