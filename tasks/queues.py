"""What the broker knows: messages waiting on a queue, workers consuming one."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator
from typing import Any

from celery import Celery

from canary.contracts import CLASS_ORDER, queue_for

# Redis hash of re-sent lost messages by version (tasks.queues.count_resent), kept in the
# broker so every reconciler process adds to one count; /metrics exports it.
RESENT_KEY = "canary:jobs-resent"
SCAN_CHUNK = 1000


def queue_depth(app: Celery, queue: str) -> int:
    """Messages waiting on ``queue`` (not counting the one each worker holds)."""
    with app.connection_for_read() as connection:
        return _depth(connection, queue)


def class_depths(app: Celery, version: str) -> dict[str, int]:
    """Messages waiting on each of ``version``'s queues, by priority class (highest first),
    read over one connection."""
    with app.connection_for_read() as connection:
        return {p.value: _depth(connection, queue_for(version, p)) for p in CLASS_ORDER}


def _depth(connection: Any, queue: str) -> int:
    try:
        declared = connection.default_channel.queue_declare(queue=queue, passive=True)
    except connection.channel_errors:  # Redis drops the key of an empty queue
        return 0
    count: int = declared.message_count
    return count


def consumers(
    app: Celery, timeout: float = 1.0, nodes: Collection[str] | None = None
) -> dict[str, list[str]]:
    """Online worker nodes and the queues each consumes.

    A broadcast to every node always waits the whole ``timeout``: nobody knows how many
    will answer. Given the ``nodes`` expected (e.g. the workers recorded in the database),
    only those are asked and the answer comes as soon as all of them replied; the timeout
    then only runs out when one of them is offline.
    """
    if nodes is not None and not nodes:
        return {}
    inspector = app.control.inspect(
        timeout=timeout,
        destination=None if nodes is None else list(nodes),
        limit=None if nodes is None else len(nodes),
    )
    replies = inspector.active_queues() or {}
    return {node: [q["name"] for q in queues] for node, queues in replies.items()}


def broker_answers(url: str, timeout_s: float) -> bool:
    """Whether the Redis/Valkey broker at ``url`` answers a PING within ``timeout_s``
    (connecting and reading both bounded: a host that accepts and stays silent is down)."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False
    finally:
        client.close()


def node_online(app: Celery, node: str, timeout: float) -> bool:
    """Whether a live worker answers to the node name ``node`` (``name@host``)."""
    replies = app.control.ping(destination=[node], timeout=timeout, limit=1) or []
    return any(node in reply for reply in replies)


def set_consuming(
    app: Celery, node: str, queues: Iterable[str], consume: bool, timeout: float
) -> bool:
    """Tell ``node`` to start (``consume``) or stop consuming each of ``queues``, in their
    order (the order of consumption is the priority); whether it answered every time."""
    control = app.control
    command = control.add_consumer if consume else control.cancel_consumer
    answered = True
    for queue in queues:
        replies = command(queue, destination=[node], reply=True, timeout=timeout)
        answered = answered and any(node in reply for reply in replies or [])
    return answered


def job_ids_in_broker(app: Celery, queues: Iterable[str]) -> set[str]:
    """Task ids (= job ids) of every message the Redis broker still holds for ``queues``:
    waiting on them (every priority sub-list) or delivered and not yet acknowledged (any
    queue: a worker's reserved and running messages, restored if it dies)."""
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        client = channel.client
        found: set[str] = set()
        for queue in queues:
            for step in channel.priority_steps:
                key = channel._q_for_pri(queue, step)  # kombu's name for a priority sub-list
                for start in range(0, client.llen(key), SCAN_CHUNK):
                    raw = client.lrange(key, start, start + SCAN_CHUNK - 1)
                    found.update(_task_ids(raw))
        unacked = (entry for _, entry in client.hscan_iter(channel.unacked_key))
        found.update(_task_ids(json.loads(entry)[0] for entry in unacked))
        return found


def _task_ids(messages: Iterable[bytes | str | dict[str, Any]]) -> Iterator[str]:
    for message in messages:
        envelope = json.loads(message) if isinstance(message, bytes | str) else message
        task_id = (envelope.get("headers") or {}).get("id")
        if task_id:
            yield task_id


def count_resent(app: Celery, counts: dict[str, int]) -> None:
    """Add re-sent lost messages, per version, to the broker-held count."""
    with app.connection_for_write() as connection:
        client = connection.default_channel.client
        for version, n in counts.items():
            if n:
                client.hincrby(RESENT_KEY, version, n)


def resent_counts(app: Celery) -> dict[str, int]:
    """Lost messages re-sent so far, per version (since the broker's data began)."""
    with app.connection_for_read() as connection:
        raw = connection.default_channel.client.hgetall(RESENT_KEY)
    return {_text(k): int(v) for k, v in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
