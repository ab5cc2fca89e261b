"""What the broker knows: messages waiting on a queue, workers consuming one."""

from __future__ import annotations

from collections.abc import Collection

from celery import Celery


def queue_depth(app: Celery, queue: str) -> int:
    """Messages waiting on ``queue`` (not counting the one each worker holds)."""
    with app.connection_for_read() as connection:
        try:
            declared = connection.default_channel.queue_declare(queue=queue, passive=True)
        except connection.channel_errors:  # Redis drops the key of an empty queue
            return 0
        return declared.message_count


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
