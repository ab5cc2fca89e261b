"""A worker's background writer: uploads and records rendered jobs while the next renders.

The render task returns (and its message is acknowledged) as soon as the pipeline call is
done; checking, post-processing, PNG encoding, the upload and the database record of that
job happen here, on one thread, overlapping the next render.

Why no result is lost although the message is acknowledged before the record exists:

- The database row is the journal. A job handed to the recorder is RUNNING with
  ``worker_host`` = this worker's node name until the recorder finishes it
  (SUCCEEDED/FAILED, a conditional update that cannot happen twice).
- Warm shutdown (SIGTERM to the worker) drains the queue before the pool process exits
  (``worker_process_shutdown``).
- If the process dies with jobs still queued here (SIGKILL, OOM killer, hard time limit),
  the next pool process of the same node re-sends every job still RUNNING under its node
  name before taking work (:mod:`tasks.recovery`); if the whole host is gone, any worker
  of the version re-sends jobs RUNNING for longer than the visibility timeout. A re-sent
  job renders again with its own seed, so it ends with the same image under the same
  key and one success record.
- The queue is bounded (``CANARY_RECORD_QUEUE_SIZE`` images, times the micro-batch size):
  a slow object store makes the renderer wait instead of filling memory.
- An object store that stays down beyond the upload retries does not fail the job: the
  image waits on local disk and the worker stops taking jobs until storage answers
  (:mod:`tasks.spool`, which also says why recovery does not render those jobs again).

The recorder starts on an image once the next render has begun (or after ``hold_s``, 20 ms,
if none comes), so its CPU work never competes with the hand-over between two jobs, which is
the only time the accelerator is idle.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar, cast

log = logging.getLogger(__name__)


class HasJobId(Protocol):
    @property
    def job_id(self) -> str: ...


Item = TypeVar("Item", bound=HasJobId)
_STOP = object()
RECENT_IDS = 4096


class Recorder(Generic[Item]):
    """One daemon thread applying ``record`` to items in order, at most ``capacity`` queued.

    ``periodic`` (if given) also runs on that thread every ``period_s`` seconds. Call
    :meth:`render_started` when a render begins: an item waits for the render after it
    (at most ``hold_s``).
    """

    def __init__(
        self,
        record: Callable[[Item], None],
        capacity: int,
        *,
        periodic: Callable[[], object] | None = None,
        period_s: float = 60.0,
        hold_s: float = 0.02,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be positive, not {capacity}")
        self._record = record
        self._hold_s = hold_s
        self._renders = 0
        self._closing = False
        self._queue: queue.Queue[object] = queue.Queue(maxsize=capacity)
        self._periodic = periodic
        self._period_s = period_s
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._idle = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._run, name="canary-recorder", daemon=True)
        self._thread.start()

    def submit(self, item: Item) -> None:
        """Queue an item; blocks while the queue is full (bounded memory)."""
        with self._lock:
            self._pending.add(item.job_id)
            renders = self._renders
        self._queue.put((item, renders))

    def render_started(self) -> None:
        with self._idle:
            self._renders += 1
            self._idle.notify_all()

    def holds(self, job_id: str) -> bool:
        """Whether this process is recording, or has recently recorded, ``job_id``."""
        with self._lock:
            return job_id in self._pending or job_id in self._recent

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def drain(self, timeout: float) -> bool:
        """Wait until everything submitted so far is recorded; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float) -> bool:
        """Record what is queued, then stop the thread; False if time ran out first."""
        with self._idle:
            self._closing = True
            self._idle.notify_all()
        done = self.drain(timeout)
        if done:
            self._queue.put(_STOP)
            self._thread.join(timeout=5)
        return done

    def _run(self) -> None:
        next_periodic = time.monotonic() + self._period_s
        while True:
            # Without a periodic job there is nothing to wake up for: block until an item
            # comes (a timeout that reached zero would make this loop spin).
            timeout = None
            if self._periodic is not None:
                timeout = max(0.0, next_periodic - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is not None:
                entry, renders = cast("tuple[Item, int]", item)  # what submit() queues

                def next_render_began(r: int = renders) -> bool:
                    return self._renders > r or self._closing

                with self._idle:  # let the next render start first
                    self._idle.wait_for(next_render_began, self._hold_s)
                self._apply(entry)
            if self._periodic is not None and time.monotonic() >= next_periodic:
                try:
                    self._periodic()
                except Exception:
                    log.exception("periodic recorder job failed")
                next_periodic = time.monotonic() + self._period_s

    def _apply(self, item: Item) -> None:
        recorded = False
        try:
            self._record(item)
            recorded = True
        except Exception:
            # The job stays RUNNING; tasks.recovery re-sends it (see the module docstring).
            log.exception("recording job %s failed; recovery will re-send it", item.job_id)
        finally:
            with self._idle:
                self._pending.discard(item.job_id)
                if recorded:
                    self._recent[item.job_id] = None
                    if len(self._recent) > RECENT_IDS:
                        self._recent.popitem(last=False)
                self._idle.notify_all()
