"""The render workers' pool: Celery's prefork pool, with the next job waiting in the pipe.

Two stock behaviours leave the accelerator idle between two jobs, each for a round trip
through the main process (result read, message acknowledged, task events sent, next
message written to the pool process):

- "fair" scheduling writes a job to a pool process only once that process is idle;
- the worker's put-lock, a semaphore with one slot per pool process, holds every reserved
  message in the main process until the running job has returned, whatever the prefetch.

This pool schedules first come first served and takes no put-lock, so with a prefetch of 2
(``CANARY_PREFETCH_MULTIPLIER``) the next job is written to the pool process's pipe while
the current one renders, and starts the moment it returns: the main process's bookkeeping
overlaps the next render instead of delaying it (measured: the wait for the next request
in the pool process fell from 3.6 ms to 0.08 ms per job, docs/performance.md). With one
pool process per worker (one per device) there is no other process a job could have gone
to instead. A job written to a pool process that dies before taking it is handed to the
replacement process (Celery's asynpool puts unaccepted jobs back); its message is
acknowledged only after it ran (late acks). Time limits start when the process takes the
job, not while it waits in the pipe.

A job written to the pipe is committed to that pool process: nothing can take it back, the
process runs it once the current one returns. Celery's ``AsynPool.flush`` (run by the
consumer when it closes: warm shutdown, lost broker connection) drops every job not yet
accepted from the pool's cache, "since they will be redelivered by the broker", which is
right only for jobs still waiting in the main process. Dropped, the job in the pipe still
ran but its result was never read: on warm shutdown the pool's join reads results only
while its cache is non-empty, so the pool process waited the 30 s billiard gives the main
process to read its last result (``Worker._ensure_messages_consumed``) before exiting,
the message was never acknowledged and came back ("Restoring 1 unacknowledged message")
for a second, useless delivery. :class:`RenderAsynPool` keeps such a job in the cache: it
is treated as the running job is (its acceptance, time limits, result and late ack are
processed while the pool drains), and warm shutdown waits for it, as it would have to
anyway. Jobs not written yet are still given back to the broker.

The job of each render message is claimed as the message is written to the pipe
(:mod:`tasks.claim_ahead`), so the next render starts without a database round trip; and
counted by class, so that a render with a job of a higher class behind it in the pipe
steps aside (:mod:`tasks.step_aside`).

Selected through Celery's ``worker_pool`` setting (celeryconfig), which ``--pool prefork``
honours.
"""

from __future__ import annotations

import inspect
from typing import Any

from celery.concurrency.asynpool import AsynPool
from celery.concurrency.prefork import TaskPool

from canary.contracts import RENDER_TASK
from tasks.claim_ahead import claim_in_parent
from tasks.step_aside import mark_in_parent
from tasks.worker_state import context


class RenderAsynPool(AsynPool):  # type: ignore[misc]  # Celery ships no type hints
    def processes_ready(self) -> bool:
        """Every pool process has reported up (loaded its model and re-sent what its node
        held, tasks/worker_state.py); jobs are written only to processes that have."""
        return bool(self._all_inqueues) and not self._waiting_to_start

    def flush(self) -> None:
        """Celery's flush, except that jobs written to a live pool process's pipe stay."""
        in_pipe = [
            job for job in self._cache.values() if not job._accepted and job._write_to is not None
        ]
        for job in in_pipe:
            # Finish writing what was started: its first bytes are in the pipe already (the
            # stock flush skips this once the pool is closing, as on warm shutdown).
            writer = _writer_of(job)
            live = job._write_to._is_alive()
            if writer is not None and writer in self._active_writers and live:
                self._flush_writer(job._write_to, writer)
        super().flush()
        for job in in_pipe:
            writer = _writer_of(job)
            written = writer is None or inspect.getgeneratorstate(writer) == "GEN_CLOSED"
            if written and job._write_to._is_alive() and not job.ready():
                self._cache.setdefault(job._job, job)


def _writer_of(job: Any) -> Any:
    """The generator writing ``job`` to its pool process (None once it is gone)."""
    ref = getattr(job, "_writer", None)
    return ref() if ref is not None else None


class RenderPool(TaskPool):  # type: ignore[misc]  # Celery ships no type hints
    Pool = RenderAsynPool

    # Read by the worker's Pool component: without it, messages go to the pool only as
    # slots of the semaphore free up (celery.worker.components.Pool.create).
    uses_semaphore = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["sched_strategy"] = "fcfs"
        super().__init__(*args, **kwargs)

    def apply_async(self, target: Any, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Send a task to the pool process, its job claimed on the way (tasks/claim_ahead.py):
        ``args`` is Celery's (task name, task id, request dict, body, content type, encoding)."""
        if args and len(args) == 6 and args[0] == RENDER_TASK:
            mark_in_parent(context().version, args[2])  # tasks/step_aside.py
        # Not while a pool process is starting: its recovery would take the claim back
        # as "left by the previous process" (tasks/recovery.py).
        if args and len(args) == 6 and self._pool is not None and self._pool.processes_ready():
            name, _task_id, request, body, content_type, content_encoding = args
            claim_in_parent(name, request, body, content_type, content_encoding)
        return super().apply_async(target, args, kwargs, **options)
