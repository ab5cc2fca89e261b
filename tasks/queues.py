"""What the broker knows: messages waiting on a queue, workers consuming one."""

from __future__ import annotations

from celery import Celery


def queue_depth(app: Celery, queue: str) -> int:
    """Messages waiting on ``queue`` (not counting the one each worker holds)."""
    with app.connection_for_read() as connection:
        try:
            declared = connection.default_channel.queue_declare(queue=queue, passive=True)
        except connection.channel_errors:  # Redis drops the key of an empty queue
            return 0
        return declared.message_count


def consumers(app: Celery, timeout: float = 1.0) -> dict[str, list[str]]:
    """Online worker nodes and the queues each consumes."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return {node: [q["name"] for q in queues] for node, queues in replies.items()}
