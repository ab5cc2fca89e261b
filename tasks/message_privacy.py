"""Prompts stay out of what Flower shows: every render message is published with its
prompt and negative prompt masked in the argument text (``argsrepr``/``kwargsrepr``).

Flower (and ``celery inspect``, and the worker's task events) show a task's arguments
from the text the publisher puts in the message's headers, not from the arguments
themselves, so the worker still gets the real prompt while monitors see
``'prompt': '<hidden>'`` next to the job id, version, seed and sizes.

It is done once for every publisher (the gateway, outbox re-sends, recovery, re-routes,
retirement) in the Celery app's AMQP class, where the message is built: the headers
*and* the ``task-sent`` event (``task_send_sent_event`` is on, so Flower sees a task
while it waits in the queue) carry the same text. A ``before_task_publish`` handler
could edit only the headers; the task-sent event, built at the same time, would still
carry the prompt to Flower. On by default (``CANARY_FLOWER_HIDE_PROMPTS``): prompts are
user data, and anyone who can open Flower is not necessarily meant to read them.
"""

from __future__ import annotations

from typing import Any

from celery.app.amqp import AMQP

HIDE_SETTING = "canary_hide_prompts"  # the app's configuration key (set by make_app)
PROMPT_FIELDS = frozenset({"prompt", "negative_prompt"})
HIDDEN = "<hidden>"


def mask(value: Any, depth: int = 0) -> tuple[Any, bool]:
    """``value`` with every prompt field replaced, and whether anything was replaced."""
    if depth > 3:
        return value, False
    if isinstance(value, dict):
        changed = False
        masked = {}
        for key, item in value.items():
            if key in PROMPT_FIELDS and item:
                masked[key], changed = HIDDEN, True
            else:
                masked[key], inner = mask(item, depth + 1)
                changed = changed or inner
        return (masked, True) if changed else (value, False)
    if isinstance(value, list | tuple):
        items = [mask(item, depth + 1) for item in value]
        if not any(changed for _, changed in items):
            return value, False
        return type(value)(item for item, _ in items), True
    return value, False


def _shown(value: Any, limit: int) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PrivateAMQP(AMQP):  # type: ignore[misc]  # Celery ships no type hints
    """Celery's AMQP class, with prompts masked in the argument text of every message."""

    def as_task_v2(
        self,
        task_id: str,
        name: str,
        args: Any = None,
        kwargs: Any = None,
        *rest: Any,
        **options: Any,
    ) -> Any:
        message = super().as_task_v2(task_id, name, args, kwargs, *rest, **options)
        if self.app.conf.get(HIDE_SETTING, True):
            hide_prompts(message.headers, message.sent_event, args, kwargs, self.argsrepr_maxsize)
        return message


def hide_prompts(
    headers: dict[str, Any],
    sent_event: dict[str, Any] | None,
    args: Any,
    kwargs: Any,
    limit: int = 1024,
) -> None:
    """Rewrite ``argsrepr``/``kwargsrepr`` (and the task-sent event's copies) in place
    when the arguments hold a prompt; other messages are left as they are."""
    for value, header, event_field in (
        (args, "argsrepr", "args"),
        (kwargs, "kwargsrepr", "kwargs"),
    ):
        masked, changed = mask(value)
        if changed:
            headers[header] = _shown(masked, limit)
            if sent_event is not None:
                sent_event[event_field] = headers[header]
