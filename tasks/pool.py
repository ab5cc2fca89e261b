"""The render workers' pool: Celery's prefork pool, handing jobs over first come first served.

Celery's default ("fair") scheduling writes a job to a pool process only once it is idle,
so between two jobs the process waits for a round trip through the main process (result,
acknowledgement, task events, next message). With first-come-first-served scheduling and a
prefetch of 2 (``CANARY_PREFETCH_MULTIPLIER``), the next job already waits in the pool
process's pipe and starts the moment the current one returns; the main process's
bookkeeping overlaps the next render instead of delaying it. With one pool process per
worker (one per device) there is no other process a job could have gone to instead.

Selected through Celery's ``worker_pool`` setting (celeryconfig), which ``--pool prefork``
honours.
"""

from __future__ import annotations

from typing import Any

from celery.concurrency.prefork import TaskPool


class RenderPool(TaskPool):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["sched_strategy"] = "fcfs"
        super().__init__(*args, **kwargs)
