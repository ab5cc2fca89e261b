"""Rollout notifications: every stage change and verdict change, posted to webhooks.

Like Flagger's and Argo Rollouts' notifications: each advance, hold, rollback, set-stage
and retirement, and each change of the daily gate verdict, is posted as JSON to the
webhooks in ``CANARY_NOTIFY_WEBHOOKS``. Two formats: ``slack`` (an incoming-webhook
message: ``text`` plus a coloured attachment; Mattermost and Rocket.Chat accept it too) and
``json`` (the notice's fields, plus the same ``text``). Delivery is retried with
exponential backoff on connection errors, 429 and 5xx, within a deadline; it runs after
the change is committed and never raises, so a dead receiver cannot hold up a rollout.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import httpx
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from canary.settings import Settings, Webhook, mask_url
from storage.models import utcnow

log = logging.getLogger(__name__)
Kind = Literal["advance", "hold", "rollback", "set-stage", "retire", "verdict"]
COLOURS = {"advance": "good", "set-stage": "#439fe0", "hold": "warning", "verdict": "warning"}


@dataclass(frozen=True)
class Notice:
    """What happened to an experiment (or, for ``retire``, to a model version)."""

    kind: Kind
    subject: str  # the experiment's name, or the retired version
    actor: str
    reason: str
    from_stage: str | None = None
    to_stage: str | None = None
    verdict: str | None = None  # the gate verdict behind the action, when evaluated
    previous_verdict: str | None = None  # for ``verdict``: what it was the day before
    forced: bool = False  # the gates were overridden with --force
    at: datetime = field(default_factory=utcnow)

    @property
    def text(self) -> str:
        moved = f" (queued jobs re-routed to {self.to_stage})" if self.to_stage else ""
        what = {
            "advance": f"advanced {self.from_stage} -> {self.to_stage}",
            "set-stage": f"stage set {self.from_stage} -> {self.to_stage}",
            "hold": f"holding at {self.from_stage}",
            "rollback": f"ROLLED BACK at {self.from_stage}: new traffic goes to the baseline",
            "retire": f"retired{moved}",
            "verdict": f"gate verdict changed {self.previous_verdict or 'none'} -> {self.verdict}",
        }[self.kind]
        gates = f" [gates: {self.verdict}]" if self.verdict and self.kind != "verdict" else ""
        forced = " FORCED over the gates" if self.forced else ""
        return f"canary {self.subject}: {what}{forced}{gates} by {self.actor}: {self.reason}"

    def document(self) -> dict[str, Any]:
        return {**asdict(self), "at": self.at.isoformat(), "text": self.text}


def payload(notice: Notice, fmt: Literal["slack", "json"]) -> dict[str, Any]:
    if fmt == "json":
        return notice.document()
    colour = "danger" if notice.kind in {"rollback", "retire"} or notice.forced else None
    fields = [
        {"title": title, "value": value, "short": True}
        for title, value in (
            ("from", notice.from_stage),
            ("to", notice.to_stage),
            ("gates", notice.verdict),
            ("by", notice.actor),
        )
        if value
    ]
    return {
        "text": notice.text,
        "attachments": [
            {
                "color": colour or COLOURS.get(notice.kind, "#888888"),
                "title": f"{notice.subject}: {notice.kind}",
                "text": notice.reason,
                "fields": fields,
                "ts": int(notice.at.timestamp()),
            }
        ],
    }


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


class Notifier:
    """Posts notices to every configured webhook; never raises."""

    def __init__(
        self,
        webhooks: list[Webhook],
        *,
        attempts: int = 4,
        backoff_s: float = 0.5,
        timeout_s: float = 5.0,
        deadline_s: float = 15.0,
    ) -> None:
        self.webhooks = webhooks
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.failures: list[str] = []  # "kind to URL: error", for a CLI to show

    @classmethod
    def from_settings(cls, settings: Settings) -> Notifier:
        return cls(
            settings.notify_targets,
            attempts=settings.notify_attempts,
            backoff_s=settings.notify_backoff_s,
            timeout_s=settings.notify_timeout_s,
            deadline_s=settings.notify_deadline_s,
        )

    def send(self, notice: Notice) -> dict[str, str | None]:
        """Deliver to each webhook; returns masked URL -> error (None when delivered)."""
        outcome: dict[str, str | None] = {}
        if not self.webhooks:
            return outcome
        with httpx.Client(timeout=self.timeout_s) as client:
            for hook in self.webhooks:
                shown = mask_url(hook.url.split("?")[0])
                try:
                    self._post(client, hook, payload(notice, hook.format))
                    outcome[shown] = None
                except Exception as exc:  # a notification never stops a rollout
                    cause = exc.last_attempt.exception() if isinstance(exc, RetryError) else exc
                    outcome[shown] = f"{type(cause).__name__}: {cause}"
                    self.failures.append(f"{notice.kind} to {shown}: {outcome[shown]}")
                    log.warning("notification %s to %s failed: %s", notice.kind, shown, cause)
        return outcome

    def _post(self, client: httpx.Client, hook: Webhook, body: dict[str, Any]) -> None:
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.deadline_s),
            wait=wait_exponential(multiplier=self.backoff_s, max=8),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                client.post(hook.url, json=body).raise_for_status()
