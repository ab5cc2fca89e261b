"""`canary retire`: stop routing to a version, drain or re-route its queue, stop its workers.

Job records stay as they are (read-only history), and a log export is written to the
object store (scheduler/retirement_export.py); the retention job in scheduler/ deletes the
version's images and logs once its retention period has passed. The retirement is
announced to the notification webhooks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from celery import Celery
from sqlalchemy.engine import Engine

from canary.contracts import CLASS_ORDER, queue_for, queues_for
from canary.settings import Settings
from scheduler.hotfix_rollout import online_workers
from scheduler.notify import Notice, Notifier
from scheduler.retirement_export import export_logs
from storage import jobs, versions
from storage.objects import ObjectStore, store_from_settings
from tasks.publish import publish
from tasks.queues import queue_depth
from tasks.release import releaser_for


class RetireError(RuntimeError):
    pass


@dataclass
class RetireOutcome:
    version: str
    rerouted: int = 0
    stopped: list[str] = field(default_factory=list)
    exported: list[str] = field(default_factory=list)  # object keys of the log export
    elapsed_s: float = 0.0


def reroute_queued(app: Celery, engine: Engine, settings: Settings, version: str, to: str) -> int:
    """Move every message waiting on ``version``'s queues to ``to``'s queue of the same
    priority class, re-tagged, and hand ``version``'s bulk jobs held for fair share to
    ``to`` (first, so no release of ``version`` sends one after the queues are drained)."""
    releaser = releaser_for(settings, engine, app)
    moved = releaser.reroute_held(version, to)
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for priority in CLASS_ORDER:
            source = queue_for(version, priority)
            while (message := channel.basic_get(queue=source, no_ack=False)) is not None:
                args, _kwargs, _embed = message.decode()
                job_id, spec = args
                jobs.reroute_queued(engine, job_id, to)
                publish(app, job_id, {**spec, "model_version": to}, priority=priority)
                message.ack()  # only after the copy is on its new queue: nothing is lost
                moved += 1
    if releaser.enabled:  # what ``to`` can take of the handed-over jobs, counting the moved
        releaser.release(to, wait_s=5.0)
    return moved


def wait_until_drained(
    app: Celery, queues: tuple[str, ...], nodes: list[str], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = app.control.inspect(destination=nodes, timeout=1.0).active() or {} if nodes else {}
        if not any(queue_depth(app, queue) for queue in queues) and not any(busy.values()):
            return
        time.sleep(0.5)
    raise RetireError(
        f"{', '.join(queues)} still have work after {timeout:.0f} s; retire again to continue"
    )


def retire(
    settings: Settings,
    app: Celery,
    engine: Engine,
    version: str,
    *,
    reroute_to: str | None = None,
    retention_days: float = 7.0,
    timeout: float = 3600.0,
    actor: str = "operator",
    store: ObjectStore | None = None,
    notifier: Notifier | None = None,
) -> RetireOutcome:
    if version not in settings.versions:
        raise RetireError(f"unknown version {version!r}")
    if reroute_to is not None and (reroute_to == version or reroute_to not in settings.versions):
        raise RetireError(f"cannot re-route {version} to {reroute_to!r}")
    started = time.monotonic()
    outcome = RetireOutcome(version)
    # First: no new jobs (gateways see this within seconds).
    versions.retire(engine, version, rerouted_to=reroute_to, retention_days=retention_days)
    queues = queues_for(version)
    nodes = online_workers(app, queue_for(version))
    if reroute_to is not None:
        outcome.rerouted = reroute_queued(app, engine, settings, version, reroute_to)
    wait_until_drained(app, queues, nodes, timeout)
    if nodes:
        app.control.shutdown(destination=nodes)  # warm: each finishes what it holds
        outcome.stopped = nodes
    store = store or store_from_settings(settings)
    outcome.exported = export_logs(settings, engine, store, version)
    outcome.elapsed_s = time.monotonic() - started
    (notifier or Notifier.from_settings(settings)).send(
        Notice(
            kind="retire", subject=version, actor=actor, to_stage=reroute_to,
            reason=f"queue {'re-routed' if reroute_to else 'drained'}, workers stopped: "
            f"{', '.join(nodes) or 'none online'}; images and logs kept {retention_days:g} days",
        )
    )  # fmt: skip
    return outcome
