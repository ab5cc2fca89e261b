"""Building render messages from recorded jobs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from canary.contracts import RenderSpec

if TYPE_CHECKING:
    from storage.models import Job


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
