"""Each render worker's object-store circuit breaker, as the broker holds it for readers.

A worker (tasks/spool.py) writes its state every few seconds to the key
``canary:storage-breaker:<node>`` with a time to live, so a dead worker's entry expires on
its own; `canary status` and ``/metrics`` read every such key. Kept in the broker, not the
database: it is live state that changes during a storage outage, and the readers already
ask the broker about the workers. Light on purpose: `canary status` imports it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from celery import Celery

KEY_PREFIX = "canary:storage-breaker:"
SCAN_COUNT = 500


@dataclass(frozen=True)
class BreakerState:
    node: str
    version: str
    open: bool  # the worker has stopped taking jobs: storage does not answer
    open_since: str | None  # ISO 8601, UTC
    spooled: int  # this worker's images waiting in the spool
    spool_dir: str
    spooled_total: int  # images spooled since the worker process started
    uploads_total: int  # spooled images uploaded (and their jobs recorded) since then
    requeued_total: int  # jobs sent back to the queue (spool full or unwritable)
    last_error: str | None = None


def publish(app: Celery, state: BreakerState, ttl_s: float) -> None:
    with app.connection_for_write() as connection:
        client = connection.default_channel.client
        client.set(KEY_PREFIX + state.node, json.dumps(asdict(state)), ex=max(1, round(ttl_s)))


def withdraw(app: Celery, node: str) -> None:
    with app.connection_for_write() as connection:
        connection.default_channel.client.delete(KEY_PREFIX + node)


def read_all(app: Celery) -> dict[str, BreakerState]:
    """Every live worker's breaker state by node name (a dead worker's expires)."""
    with app.connection_for_read() as connection:
        client = connection.default_channel.client
        keys = sorted(client.scan_iter(match=f"{KEY_PREFIX}*", count=SCAN_COUNT))
        values = client.mget(keys) if keys else []
    states = {}
    for raw in values:
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            data: dict[str, Any] = json.loads(raw)
            state = BreakerState(**data)
        except (ValueError, TypeError):
            continue
        states[state.node] = state
    return states
