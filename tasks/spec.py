"""The render message: what a producer puts on a version queue and a worker consumes."""

from __future__ import annotations

from typing import TypedDict

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


def object_key(version: str, job_id: str) -> str:
    """Deterministic, so a redelivered job overwrites rather than duplicates its image."""
    return f"renders/{version}/{job_id}.png"
