"""The render message: what a producer puts on a version queue and a worker consumes."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from storage.images import image_key

if TYPE_CHECKING:
    from storage.models import Job

RENDER_TASK = "canary.render"


class RenderSpec(TypedDict):
    job_id: str
    model_version: str  # the variant tag; a worker only renders its own version
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int


SPEC_FIELDS = tuple(RenderSpec.__annotations__)


def object_key(job_id: str) -> str:
    """Deterministic, so a redelivered job overwrites rather than duplicates its image;
    names no version, since clients get URLs of it (storage/images.py)."""
    return image_key(job_id)


def render_spec(job: Job) -> RenderSpec:
    """The message spec of a recorded job (what a producer or a recovery sends)."""
    return RenderSpec(
        job_id=job.id,
        model_version=job.model_version,
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        seed=job.seed,
        steps=job.steps,
        guidance=job.guidance,
        width=job.width,
        height=job.height,
    )
