"""What producers and workers agree on: the render message, task and queue names, object keys.

Plain data and pure functions (L0): importing this runs no Celery or database code, so a
producer can build a message without loading the worker.
"""

from __future__ import annotations

from typing import TypedDict

RENDER_TASK = "canary.render"
IMAGES_PREFIX = "renders/"


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


def queue_for(version: str) -> str:
    """The broker queue of a model version's render jobs."""
    return f"render.{version}"


def image_key(job_id: str) -> str:
    """The object key of a job's image: ``renders/<job id>.png``. Deterministic, so a
    redelivered job overwrites rather than duplicates its image; names no version, since
    clients get URLs of it (storage/images.py keeps the legacy per-version layout)."""
    return f"{IMAGES_PREFIX}{job_id}.png"
