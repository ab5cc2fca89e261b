"""Step aside: a job gives way to one of a higher priority class waiting behind it.

Workers consume their queues in strict class order (interactive, bulk, background), but
only as they take a message; with a prefetch of 2 the next message is written to the pool
process's pipe while the current job renders (tasks/pool.py). So a job could still wait a
whole lower-class render: a bulk job already in the pipe when an interactive one arrived
(the worker fetches the interactive message only as a slot frees up, and writes it behind
the bulk job), or a background one (a shadow copy, a golden replay) taken while the worker
was idle.

So as a bulk or background job starts, and a background one again after every denoising
step, the pool process looks for a job of a higher class waiting for this worker. A bulk
job that has begun to render is never interrupted (an interactive job waits for at most the
rest of one render, as issue 19 allows); a background job (a shadow copy, a golden replay)
is, since nobody waits for it and live work must not wait for it. Two signals:

- **The broker's queues**: a message waiting in a higher class's queue of this version
  (one LLEN per class, only as the job starts; a broker that does not answer within
  0.2 s counts as none).
- **The pipe**: the main process counts, per class, the render messages it writes to
  the pool process, in counters shared with the pool processes (a
  :func:`multiprocessing.RawArray` made at import, before the pool forks, so every pool
  process, replacements included, inherits it), and stamps each lower-class message with
  the count of higher-class messages written so far. A higher-class message written later
  sits behind that job in the pipe: once the count has moved, the job steps aside.

A job that steps aside (:class:`StepAside`) is given back by the render task: QUEUED
again, its attempt not counted, its message sent again to the back of its queue; the
higher-class job starts at once. Wasted work is at most one denoising step of a
background render per arriving job. Only the main process writes the counters (its event
loop is single-threaded); pool processes only read them. A job rendered in a micro-batch
never steps aside: its batch may hold jobs of any class.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from canary.contracts import CLASS_ORDER, PriorityClass, class_of_queue, queue_for
from tasks.faults import StepCallback

log = logging.getLogger(__name__)

REQUEST_KEY = "canary_step_aside"  # in a lower-class message's request: (rank, count)
BROKER_TIMEOUT_S = 0.2
# render messages written to the pool's pipe, per class (CLASS_ORDER's order)
_WRITTEN = multiprocessing.RawArray("Q", len(CLASS_ORDER))
_brokers: dict[str, redis.Redis] = {}  # one client per broker URL, per process


class StepAside(Exception):
    """A render stopped for a job of a higher class waiting behind it."""


def mark_in_parent(version: str | None, request: dict[str, Any]) -> None:
    """In the worker's main process, as a render message goes to the pool process: stamp a
    lower-class message with the count of higher-class ones written so far, and count it."""
    if version is None:
        return
    routing_key = str((request.get("delivery_info") or {}).get("routing_key") or "")
    priority = class_of_queue(version, routing_key)
    if priority is None:  # another version's (misrouted): its render re-routes it
        return
    rank = CLASS_ORDER.index(priority)
    if rank:
        request[REQUEST_KEY] = (rank, _higher_than(rank))
    _WRITTEN[rank] += 1


@dataclass(frozen=True)
class StepAsideCheck:
    """A bulk or background job's checks: ``at_start`` as it starts (the pipe's counts and
    the broker), ``between_steps`` after each denoising step (the pipe's counts; None for a
    bulk job, which is not interrupted once it renders)."""

    at_start: Callable[[], bool]
    between_steps: Callable[[], bool] | None


def step_aside_check(request: Any, version: str, broker_url: str) -> StepAsideCheck | None:
    """In the pool process, as a render starts: the checks of a bulk or background job;
    None for an interactive job (or one written to the pipe before this module)."""
    stamp = getattr(request, REQUEST_KEY, None)
    if not stamp:
        return None
    rank, written = int(stamp[0]), int(stamp[1])
    higher = [queue_for(version, c) for c in CLASS_ORDER[:rank]]

    def behind_in_pipe() -> bool:
        return _higher_than(rank) != written

    def at_start() -> bool:
        return behind_in_pipe() or _waiting_in_broker(broker_url, higher)

    background = CLASS_ORDER[rank] == PriorityClass.BACKGROUND
    return StepAsideCheck(at_start, behind_in_pipe if background else None)


def with_step_aside(
    callback: StepCallback | None, step_aside: Callable[[], bool] | None
) -> StepCallback | None:
    """A pipeline's ``callback_on_step_end`` that raises :class:`StepAside` once
    ``step_aside`` is true, then runs ``callback`` (the fault injection's, if any)."""
    if step_aside is None:
        return callback

    def check(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if step_aside():
            raise StepAside()
        return callback(pipeline, step, timestep, kwargs) if callback else kwargs

    return check


def _higher_than(rank: int) -> int:
    return sum(_WRITTEN[:rank])


def _waiting_in_broker(broker_url: str, queues: list[str]) -> bool:
    """Whether any of ``queues`` holds a message; False when the broker does not answer
    in time (stepping aside is an optimisation: it never fails a render)."""
    client = _brokers.get(broker_url)
    if client is None:
        client = _brokers[broker_url] = redis.Redis.from_url(
            broker_url, socket_timeout=BROKER_TIMEOUT_S, socket_connect_timeout=BROKER_TIMEOUT_S
        )
    try:
        with client.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.llen(queue)
            return any(int(n) for n in pipe.execute())
    except (redis.RedisError, OSError) as exc:
        log.debug("could not read the queues (%s); not stepping aside", exc)
        return False
