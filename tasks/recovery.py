"""Re-sending jobs a worker acknowledged but never recorded (see :mod:`tasks.recorder`).

Two triggers, both in render workers, both taking the jobs with one conditional UPDATE so
that no job is re-sent twice by two callers at once:

- a pool process starting re-sends the jobs still RUNNING under its own node name (its
  predecessor was killed with them in its record queue, or mid-render), and those of dead
  workers of its version on its host (node names are unique per worker, so a restarted
  worker's predecessor had another name; tasks/node_locks.py tells it is gone);
- every ``CANARY_RECOVERY_SWEEP_EVERY_S`` a worker re-sends its version's jobs RUNNING for
  longer than the visibility timeout (their worker's host is gone).

A re-sent job is QUEUED again (no holder, ``enqueued_at`` = the new message's sending time,
so every surface shows it waiting at the back of the queue), so whichever worker receives
its message claims it again (its attempts kept, so ``CANARY_MAX_ATTEMPTS`` still ends a job
that kills every worker) and renders it again with its own seed. Each attempt taken is
recorded as lost (``job_attempts``) with what recovery knows, unless the worker's main
process already recorded how its pool process died (tasks/outcome.py).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery
from sqlalchemy.engine import Engine

from canary.settings import Settings
from storage import jobs
from storage.models import Job, utcnow
from tasks import node_locks
from tasks.publish import publish_jobs

log = logging.getLogger(__name__)


def resend(app: Celery, settings: Settings, rows: list[Job]) -> None:
    """Send the jobs' render messages again (over one producer connection)."""
    if not rows:
        return
    publish_jobs(app, rows)


def recover_node(app: Celery, settings: Settings, engine: Engine, version: str, node: str) -> int:
    """Re-send what this node's previous pool process left RUNNING; returns the count."""
    rows = jobs.take_stranded(
        engine, model_version=version, worker_host=node, detected_by="restart",
        cause="its pool process ended before finishing it (seen when the next one started)",
    )  # fmt: skip
    if rows:
        log.warning("re-sending %d job(s) left unfinished by %s's previous process", len(rows),
                    node)  # fmt: skip
    resend(app, settings, rows)
    return len(rows)


def recover_dead_neighbours(
    app: Celery, settings: Settings, engine: Engine, version: str, node: str
) -> int:
    """Re-send what dead workers of this version on this host left RUNNING (a restarted
    worker's predecessor: node names are unique per worker, see tasks/node_locks.py)."""
    host = node.rpartition("@")[2]
    count = 0
    for holder in jobs.running_holders(engine, version) - {node}:
        if holder.rpartition("@")[2] != host or not node_locks.is_dead(holder):
            continue
        rows = jobs.take_stranded(
            engine, model_version=version, worker_host=holder, detected_by="neighbour",
            cause="its whole worker stopped (seen by a worker started after it on its host)",
        )  # fmt: skip
        if rows:
            log.warning("re-sending %d job(s) left unfinished by %s, a worker gone from "
                        "this host", len(rows), holder)  # fmt: skip
        resend(app, settings, rows)
        node_locks.forget(holder)
        count += len(rows)
    return count


def sweep(app: Celery, settings: Settings, engine: Engine, version: str) -> int:
    """Re-send the version's jobs RUNNING for longer than the visibility timeout."""
    # a job claimed ahead may carry a start stamped a little early (tasks/claim_ahead.py)
    cutoff = utcnow() - timedelta(seconds=settings.visibility_timeout_s) - jobs.STARTED_EARLY_SLACK
    rows = jobs.take_stranded(
        engine, model_version=version, started_before=cutoff, detected_by="sweep",
        cause="its worker went silent (running for longer than the visibility timeout)",
    )  # fmt: skip
    if rows:
        log.warning("re-sending %d stranded job(s) of %s", len(rows), version)
    resend(app, settings, rows)
    return len(rows)
