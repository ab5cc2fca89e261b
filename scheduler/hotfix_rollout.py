"""`canary hotfix`: publish a new weights revision and wait until every online worker of
that version serves it (or reports why not)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from celery import Celery

from canary.contracts import queue_for
from canary.settings import Settings
from storage import revisions
from storage.db import get_engine
from tasks.hotfix import RELOAD_COMMAND
from tasks.revisions import publish


@dataclass
class HotfixOutcome:
    version: str
    revision: str
    workers: list[str]
    updated: dict[str, float] = field(default_factory=dict)  # node -> seconds to switch
    errors: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def complete(self) -> bool:
        return set(self.updated) == set(self.workers) and not self.errors


def online_workers(app: Celery, queue: str, timeout: float = 2.0) -> list[str]:
    """Nodes currently consuming ``queue``."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return sorted(
        node for node, queues in replies.items() if any(q["name"] == queue for q in queues)
    )


def hotfix(
    settings: Settings, app: Celery, version: str, source: str, timeout: float = 900.0
) -> HotfixOutcome:
    engine = get_engine(settings.resolved_database_url)
    published = publish(engine, settings, version, source)
    started = time.monotonic()
    workers = online_workers(app, queue_for(version))
    outcome = HotfixOutcome(version, published.revision, workers)
    if workers:
        app.control.broadcast(
            RELOAD_COMMAND,
            arguments={"version": version, "source": source, "revision": published.revision},
            destination=workers,
        )
    while time.monotonic() - started < timeout:
        records = revisions.worker_records(engine, version)
        for node in workers:
            record = records.get(node)
            if record is None or node in outcome.updated or node in outcome.errors:
                continue
            if record.revision == published.revision and not record.error:
                outcome.updated[node] = time.monotonic() - started
            elif record.error and published.revision in record.error:
                outcome.errors[node] = record.error
        if len(outcome.updated) + len(outcome.errors) == len(workers):
            break
        time.sleep(0.2)
    outcome.elapsed_s = time.monotonic() - started
    return outcome
