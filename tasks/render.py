"""The render task: one job in, one PNG in object storage and one finished job row out."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import torch
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from storage import jobs
from storage.models import FailureKind, JobStatus, utcnow
from tasks.app import app
from tasks.checks import classify_output
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


def render_image(model: LoadedModel, spec: RenderSpec) -> RenderResult:
    """Run the pipeline with the job's own seeded generator and check what comes out."""
    generator = torch.Generator(device=model.device).manual_seed(int(spec["seed"]))
    on_cuda = model.device.startswith("cuda")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(model.device)
    started = time.perf_counter()
    try:
        output = model.pipeline(  # type: ignore[operator]
            prompt=spec["prompt"],
            negative_prompt=spec["negative_prompt"] or None,
            num_inference_steps=int(spec["steps"]),
            guidance_scale=float(spec["guidance"]),
            width=int(spec["width"]),
            height=int(spec["height"]),
            generator=generator,
            output_type="np",
        )
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        raise RenderFailure(FailureKind.OOM, str(exc).splitlines()[0]) from exc
    inference_ms = (time.perf_counter() - started) * 1000
    peak = int(torch.cuda.max_memory_allocated(model.device)) if on_cuda else None
    image = np.asarray(output.images[0])
    problem = classify_output(image)
    if problem is not None:
        raise RenderFailure(*problem)
    return RenderResult(encode_png(image), inference_ms, peak)


def encode_png(image: np.ndarray) -> bytes:
    pixels = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
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
        # Never render another version's job: put it back on the queue it belongs to.
        log.error("job %s tagged %r reached the %r worker; re-routing", job_id, tag, ctx.version)
        self.app.send_task(RENDER_TASK, args=(job_id, spec), queue=f"render.{tag}")
        return "REROUTED"
    job = jobs.get_job(ctx.engine, job_id)
    if job is None:
        log.error("job %s has no record; dropping the message", job_id)
        return "UNKNOWN"
    model_revision = ctx.model.revision if ctx.model else None
    started_at = utcnow()
    if not jobs.claim(
        ctx.engine,
        job_id,
        started_at=started_at,
        worker_host=ctx.hostname,
        worker_version=ctx.version,
        device=ctx.device,
        model_revision=model_revision,
    ):
        return job.status  # already finished: a redelivery must not render again
    try:
        checked = _check_spec(spec)
        try:
            model = ctx.ensure_model()
        except Exception as exc:
            raise RenderFailure(FailureKind.MODEL_LOAD, f"{type(exc).__name__}: {exc}") from exc
        result = render_image(model, checked)
        key = object_key(model.version, job_id)
        upload_started = time.perf_counter()
        try:
            ctx.store.put(key, result.png, content_type="image/png")
        except Exception as exc:
            raise RenderFailure(FailureKind.STORAGE_ERROR, f"{type(exc).__name__}: {exc}") from exc
        upload_ms = (time.perf_counter() - upload_started) * 1000
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
