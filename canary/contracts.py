"""What producers and workers agree on: the render message, task and queue names, object keys.

Plain data and pure functions (L0): importing this runs no Celery or database code, so a
producer can build a message without loading the worker.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypedDict

RENDER_TASK = "canary.render"
IMAGES_PREFIX = "renders/"
SHADOW_IMAGES_PREFIX = "shadow/"  # shadow jobs' images (gateway/shadow.py): never a user's


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


class PriorityClass(StrEnum):
    """Who waits for a job, highest first: a worker takes the highest class with work.

    interactive: single jobs from the HTTP API or `canary submit --interactive` (a person
    waits for the answer); bulk: files and ``jobs:batch``; background: golden replays and
    other work nobody waits for.
    """

    INTERACTIVE = "interactive"
    BULK = "bulk"
    BACKGROUND = "background"


# The order a worker consumes its version's queues in (docs/operators-guide.md).
CLASS_ORDER = (PriorityClass.INTERACTIVE, PriorityClass.BULK, PriorityClass.BACKGROUND)


def queue_for(version: str, priority: PriorityClass | str = PriorityClass.BULK) -> str:
    """The broker queue of a model version's render jobs of one priority class.

    Bulk keeps the name every class shared before classes existed, ``render.<version>``:
    messages queued before an upgrade are still served, and a producer or worker of the
    previous release still meets the new ones there during a rolling upgrade.
    """
    if priority == PriorityClass.BULK:
        return f"render.{version}"
    return f"render.{version}.{PriorityClass(priority).value}"


def queues_for(version: str) -> tuple[str, ...]:
    """A version's render queues, highest class first (the order its workers consume)."""
    return tuple(queue_for(version, priority) for priority in CLASS_ORDER)


def class_of_queue(version: str, queue: str) -> PriorityClass | None:
    """The priority class of one of ``version``'s render queues; None if it is not one."""
    for priority in CLASS_ORDER:
        if queue == queue_for(version, priority):
            return priority
    return None


def image_key(job_id: str) -> str:
    """The object key of a job's image: ``renders/<job id>.png``. Deterministic, so a
    redelivered job overwrites rather than duplicates its image; names no version, since
    clients get URLs of it (storage/images.py keeps the legacy per-version layout)."""
    return f"{IMAGES_PREFIX}{job_id}.png"


def shadow_image_key(job_id: str) -> str:
    """The object key of a shadow job's image: ``shadow/<job id>.png``, apart from every
    image a user may be shown (a bucket policy or a retention rule can tell them apart)."""
    return f"{SHADOW_IMAGES_PREFIX}{job_id}.png"
