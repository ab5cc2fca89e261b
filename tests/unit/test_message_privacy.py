"""Render messages are published with their prompts masked in what monitors show."""

from __future__ import annotations

from canary.settings import Settings
from tasks.app import make_app
from tasks.message_privacy import mask

SPEC = {"job_id": "j-1", "model_version": "v1", "prompt": "a kite", "negative_prompt": "fog"}


def message(hide: bool):  # type: ignore[no-untyped-def]
    app = make_app(Settings(flower_hide_prompts=hide))
    args = ("j-1", SPEC)
    return app.amqp.create_task_message(
        "j-1", "canary.render", args, {}, argsrepr=repr(args), create_sent_event=True
    )


def test_hidden_in_the_headers_and_the_task_sent_event_but_not_in_the_body() -> None:
    sent = message(hide=True)
    shown = "('j-1', {'job_id': 'j-1', 'model_version': 'v1', 'prompt': '<hidden>', "
    assert sent.headers["argsrepr"].startswith(shown)
    assert sent.sent_event["args"] == sent.headers["argsrepr"]
    assert "kite" not in sent.headers["argsrepr"] + sent.sent_event["args"]
    assert sent.body[0][1]["prompt"] == "a kite"  # the worker renders the real one


def test_shown_when_the_setting_is_off_and_other_messages_untouched() -> None:
    assert "a kite" in message(hide=False).headers["argsrepr"]
    assert mask(("run-1", {"seed": 3})) == (("run-1", {"seed": 3}), False)
    assert mask({"prompt": ""}) == ({"prompt": ""}, False)
