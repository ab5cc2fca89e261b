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

Selected through Celery's ``worker_pool`` setting (celeryconfig), which ``--pool prefork``
honours.
"""

from __future__ import annotations

from typing import Any

from celery.concurrency.prefork import TaskPool


class RenderPool(TaskPool):
    # Read by the worker's Pool component: without it, messages go to the pool only as
    # slots of the semaphore free up (celery.worker.components.Pool.create).
    uses_semaphore = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["sched_strategy"] = "fcfs"
        super().__init__(*args, **kwargs)
