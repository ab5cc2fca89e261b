"""The broker's side of ``/metrics`` (queue depths, online workers), read with a deadline.

A scrape must answer within Prometheus's timeout whatever the broker does: kombu retries a
refused connection for seconds, and a broker that accepts connections but does not answer
would hold a read forever. Readings run on one background thread; a scrape waits at most
``deadline_s`` and otherwise reports the broker as down. A reading still in flight is
awaited again by the next scrape instead of starting another, so a hung broker never
piles up threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from celery import Celery

from canary.settings import Settings
from tasks import storage_health
from tasks.queues import broker_answers, class_depths, consumers, resent_counts
from tasks.storage_health import BreakerState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerReading:
    depths: dict[str, int]  # version -> messages waiting on its queues
    consumers: dict[str, list[str]]  # online node -> queues it consumes
    # version -> lost messages re-sent by the reconciler (scheduler/lost_messages.py)
    resent: dict[str, int] = field(default_factory=dict)
    # node -> its object-store breaker and spool (tasks/spool.py, tasks/storage_health.py)
    breakers: dict[str, BreakerState] = field(default_factory=dict)
    # version -> priority class -> messages waiting on that class's queue
    by_class: dict[str, dict[str, int]] = field(default_factory=dict)


class BrokerProbe:
    def __init__(self, read: Callable[[], BrokerReading], deadline_s: float) -> None:
        self._read = read
        self._deadline_s = deadline_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-probe")
        self._lock = threading.Lock()
        self._in_flight: Future[BrokerReading] | None = None

    def read(self) -> BrokerReading | None:
        """The broker's state now, or None if it did not answer in time."""
        with self._lock:
            if self._in_flight is None or self._in_flight.done():
                self._in_flight = self._executor.submit(self._read)
            future = self._in_flight
        try:
            return future.result(timeout=self._deadline_s)
        except FutureTimeout:
            log.warning("the broker did not answer within %.1f s", self._deadline_s)
        except Exception as exc:
            log.warning("the broker cannot be read: %s: %s", type(exc).__name__, exc)
        return None


def broker_reader(
    settings: Settings, app: Celery, nodes: Callable[[], Collection[str]], timeout_s: float
) -> Callable[[], BrokerReading]:
    """Reads every version's queue depth and which of ``nodes()`` (the workers recorded in
    the database) are online; raises ConnectionError when the broker does not answer."""

    def read() -> BrokerReading:
        if not broker_answers(settings.broker_url, timeout_s):
            raise ConnectionError(f"no answer from {settings.shown_broker_url}")
        by_class = {v: class_depths(app, v) for v in settings.versions}
        depths = {v: sum(counts.values()) for v, counts in by_class.items()}
        online = consumers(app, timeout=timeout_s, nodes=nodes())
        return BrokerReading(
            depths, online, resent_counts(app), storage_health.read_all(app), by_class
        )

    return read
