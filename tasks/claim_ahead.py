"""Claim ahead: the next job is claimed while the current one renders.

With a prefetch of 2 the worker's main process writes the next render message to the pool
process's pipe while the current job renders (tasks/pool.py). Claiming that job was the
largest part of the hand-over between two renders: one conditional UPDATE and its commit
in the pool process before the pipeline call. Now the main process claims it as it writes
it to the pipe (``claim_in_parent``), off the critical path, and hands the claim over in
the message's request; the render task takes it (``take_in_child``) without a round trip.

The guarantees of the render task's own claim hold (tasks/render.py falls back to it
whenever this module returns None):

- Only a QUEUED job of this worker's version is claimed ahead. A RUNNING one (held by this
  node's recorder or micro-batch, or by another worker that may be lost) is left to the
  render task's claim, which knows what its process holds.
- A job in the pipe is committed to that pool process. If the process dies first, the
  replacement's recovery re-queues what this node held (tasks/recovery.py) and Celery
  hands the job to the replacement: so a claim made before the pool process finished its
  recovery is not trusted (the clock read before the claim's UPDATE is compared with the
  process's ready time, both CLOCK_MONOTONIC, one clock for all processes of the host).
- The claim stamps ``started_at`` when the job enters the pipe. A job that waited there
  longer than ``CONFIRM_AFTER_S`` is confirmed at its real start (one conditional UPDATE:
  still RUNNING, held by this node, in this attempt), which also makes ``started_at`` the
  real start again; a job that waited less starts with a ``started_at`` at most that much
  early, which the staleness rules allow for (``storage.jobs.STARTED_EARLY_SLACK``). The
  success record stores the real start either way (tasks/render.py).

A job claimed ahead whose pool process dies before taking it counts that attempt, as the
job the process was rendering does: the process held it.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from kombu.serialization import loads

from canary.contracts import RENDER_TASK
from storage import jobs
from storage.models import utcnow
from tasks.worker_state import WorkerContext, context

log = logging.getLogger(__name__)

REQUEST_KEY = "canary_claimed_ahead"  # in the request dict the pool process receives
# a job that waited longer in the pipe is confirmed as it starts (storage.jobs' slack)
CONFIRM_AFTER_S = jobs.STARTED_EARLY_SLACK.total_seconds()


def claim_in_parent(task_name: str, request: dict[str, Any], body: bytes, content_type: str,
                    content_encoding: str) -> None:  # fmt: skip
    """In the worker's main process, as a render message goes to the pool process: claim
    its job and put the claim in ``request``. Leaves ``request`` alone when the job is not
    a QUEUED job of this worker's version, or the database cannot be reached (the render
    task then claims it itself, as without this module)."""
    if task_name != RENDER_TASK:
        return
    ctx = context()
    if not ctx.settings.claim_ahead or ctx.version is None:
        return
    try:
        # kombu ships no type hints
        args, _kwargs, _embed = loads(body, content_type, content_encoding, accept={content_type})  # type: ignore[no-untyped-call]
        job_id, spec = args[0], args[1]
        if not isinstance(spec, dict) or spec.get("model_version") != ctx.version:
            return  # misrouted or malformed: the render task deals with it
        before = time.monotonic()  # read before the UPDATE: see the module docstring
        claimed = jobs.claim_job(
            ctx.engine, str(job_id), utcnow(), queued_only=True, **_fields(ctx)
        )
    except Exception as exc:  # never lose the message over an optimisation
        log.warning("could not claim a job ahead (%s: %s); its render claims it",
                    type(exc).__name__, exc)  # fmt: skip
        return
    if claimed is not None:
        request[REQUEST_KEY] = (
            before, claimed.id, claimed.attempt, claimed.created_at, claimed.enqueued_at
        )  # fmt: skip


def _fields(ctx: WorkerContext) -> dict[str, Any]:
    """The claim's worker fields, except the model revision, which only the pool process
    knows (the success record stores it)."""
    fields = ctx.worker_fields()
    fields.pop("model_revision", None)
    return fields


def take_in_child(
    ctx: WorkerContext, request: Any, job_id: str, started_at: datetime
) -> jobs.Claimed | None:
    """In the pool process, as the render starts: the claim made ahead for ``job_id`` if
    it can be trusted (see the module docstring), else None."""
    ahead = getattr(request, REQUEST_KEY, None)
    if not ahead or ctx.ready_at is None:
        return None
    claimed_at, claimed_id, attempt, created_at, enqueued_at = ahead
    if claimed_id != job_id or claimed_at <= ctx.ready_at:
        return None  # claimed before this process took over what its node held
    if time.monotonic() - claimed_at > CONFIRM_AFTER_S and not jobs.confirm_claim(
        ctx.engine, job_id, attempt, ctx.node, started_at
    ):
        return None
    return jobs.Claimed(job_id, attempt, created_at, enqueued_at)
