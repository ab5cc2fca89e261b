"""Limits per API key: a request rate shared by every API process, and a cap on the jobs a
key may have queued or running at once. Both are answered with 429 and ``Retry-After``.

Only client keys are limited (``effective_limits``): operator keys are few, trusted and
needed most when something is wrong (a rollback, Prometheus scraping ``/metrics``), grader
keys are paced by a person, and events keys keep their own limit (events per batch,
``CANARY_API_MAX_EVENTS``, and the body size). A key's own ``rate_per_s`` / ``max_queued``
(``canary keys limits``) override the defaults from the settings; 0 is unlimited.

**Rate** (:class:`RequestRateLimiter`): a moving window kept in Redis (the broker) with
the ``limits`` package, so every ``canary api --workers N`` process and every API host
counts into one window per key: at most ``floor(rate x W)`` requests in any ``W`` seconds
(``CANARY_KEY_RATE_WINDOW_S``; longer for rates under one request per ``W``). A refused
request takes nothing from the window. When Redis does not answer, requests are let
through (fail open): a broken limiter must never stop the API. The outage is logged once
and Redis is not asked again for a few seconds, so it costs no latency either.

**Queued** (:func:`check_queued`): the key's QUEUED and RUNNING jobs are counted in the
database (one query on the ``(api_key_id, status)`` index, reading at most as many rows
as the limit) before anything of the request is done, so a refused request or batch
leaves no job, no exposure and no message. Idempotent replays of jobs already accepted
add no job and are never refused. The count and the insert are not one transaction:
requests of one key that arrive at the same moment can each see room for themselves, so
the limit can be overshot by the requests in flight at once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import redis
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.engine import Engine

from canary.settings import Settings
from gateway.job_requests import JobRequest
from gateway.submit import job_id_for
from storage import api_keys
from storage.api_keys import UNCHANGED
from storage.models import ApiKey, ApiKeyRole

log = logging.getLogger(__name__)

RATE = "rate"
QUEUED = "queued"
REASONS = (RATE, QUEUED)
# Redis hash of refused requests by reason, kept in the broker so that every API process
# adds to one count; /metrics exports it (canary_requests_refused_total).
REFUSALS_KEY = "canary:limit-refusals"
RATE_KEY_PREFIX = "canary:rate"
# A full queue has no known end: the client is asked to come back after about one render.
QUEUED_RETRY_AFTER_S = 5
REDIS_TIMEOUT_S = 0.5  # connect and read: a silent Redis must not hold a request
PAUSE_AFTER_FAILURE_S = 5.0  # Redis is not asked again this long after it failed


@dataclass(frozen=True)
class KeyLimits:
    """The limits in force for a key; None is unlimited."""

    rate_per_s: float | None
    max_queued: int | None


def is_limited(role: str) -> bool:
    """Whether keys of ``role`` are limited at all (client keys only; see the module)."""
    return role == ApiKeyRole.CLIENT


def effective_limits(
    role: str, rate_per_s: float | None, max_queued: int | None, settings: Settings
) -> KeyLimits:
    """A key's limits: its own values, else the settings' defaults; 0 is unlimited."""
    if not is_limited(role):
        return KeyLimits(None, None)
    rate = settings.key_rate_per_s if rate_per_s is None else rate_per_s
    queued = settings.key_max_queued if max_queued is None else max_queued
    return KeyLimits(rate or None, queued or None)


class LimitExceeded(Exception):
    """A request refused by a limit: 429 with ``message`` and ``Retry-After``."""

    def __init__(self, reason: str, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after_s = max(1, retry_after_s)


# ---------------------------------------------------------------- request rate


def rate_window(rate_per_s: float, window_s: int) -> tuple[int, int]:
    """(requests, seconds) of the moving window for a rate: ``floor(rate x window)``
    requests in any ``window`` seconds, the window widened to one request for rates under
    one per window (0.1/s with a 10 s window: 1 in any 10 s; 0.05/s: 1 in any 20 s)."""
    if rate_per_s <= 0:
        raise ValueError("a rate limit must be positive")
    seconds = max(window_s, math.ceil(1 / rate_per_s - 1e-9))
    return max(1, math.floor(rate_per_s * seconds + 1e-9)), seconds


def describe_rate(rate_per_s: float, window_s: int) -> str:
    """``'20 requests in any 10 s'`` for 2/s with a 10 s window."""
    amount, seconds = rate_window(rate_per_s, window_s)
    return f"{amount} request{'s' if amount != 1 else ''} in any {seconds} s"


class RequestRateLimiter:
    """Per-key request rate in a moving window kept in Redis (``limits``' Lua scripts, one
    round trip per request). Fails open: while Redis does not answer, every request is let
    through, the outage is logged once, and Redis is left alone for ``pause_s``."""

    def __init__(
        self,
        redis_url: str,
        window_s: int,
        *,
        shown_url: str | None = None,
        timeout_s: float = REDIS_TIMEOUT_S,
        pause_s: float = PAUSE_AFTER_FAILURE_S,
        storage: Storage | None = None,
    ) -> None:
        self.window_s = window_s
        self.shown_url = shown_url or redis_url
        self.pause_s = pause_s
        # lazy: nothing connects before the first request (``storage``: tests only)
        self.storage = storage or RedisStorage(
            redis_url,
            key_prefix=RATE_KEY_PREFIX,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        self.strategy = MovingWindowRateLimiter(self.storage)
        self._lock = threading.Lock()
        self._paused_until = 0.0
        self._failing = False

    def check(self, key_id: str, rate_per_s: float) -> None:
        """Count one request of the key; LimitExceeded (nothing counted) when its window is
        full. Never raises because of Redis."""
        if time.monotonic() < self._paused_until:
            return
        amount, seconds = rate_window(rate_per_s, self.window_s)
        item = RateLimitItemPerSecond(amount, seconds)
        try:
            allowed = self.strategy.hit(item, key_id)
            retry_after = 0 if allowed else self._retry_after(item, key_id)
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            return
        self._answered()
        if allowed:
            return
        raise LimitExceeded(
            RATE,
            f"rate limit exceeded: this key may make {describe_rate(rate_per_s, self.window_s)}"
            f"; retry in {retry_after} s",
            retry_after,
        )

    def _retry_after(self, item: RateLimitItem, key_id: str) -> int:
        """Whole seconds until the oldest request in the window leaves it (>= 1)."""
        reset_at = self.strategy.get_window_stats(item, key_id).reset_time
        return max(1, math.ceil(reset_at - time.time()))

    def count_refusal(self, reason: str) -> None:
        """Add one refused request to the count /metrics exports (lost if Redis is down)."""
        if time.monotonic() < self._paused_until or not isinstance(self.storage, RedisStorage):
            return
        try:
            client = cast(redis.Redis, self.storage.get_connection())
            client.hincrby(REFUSALS_KEY, reason, 1)
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)

    def reset(self, key_id: str, rate_per_s: float) -> None:
        """Forget a key's window (tests, or an operator lifting a block at once)."""
        amount, seconds = rate_window(rate_per_s, self.window_s)
        self.strategy.clear(RateLimitItemPerSecond(amount, seconds), key_id)

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._paused_until = time.monotonic() + self.pause_s
            first = not self._failing
            self._failing = True
        if first:
            log.warning(
                "the request-rate limiter cannot reach Redis at %s (%s: %s); requests are "
                "not rate-limited until it answers",
                self.shown_url,
                type(exc).__name__,
                exc,
            )

    def _answered(self) -> None:
        if not self._failing:  # the common case: no lock
            return
        with self._lock:
            was_failing, self._failing = self._failing, False
        if was_failing:
            log.warning("the request-rate limiter reaches Redis again at %s", self.shown_url)


def refusal_counts(redis_url: str, timeout_s: float) -> dict[str, int]:
    """Requests refused so far, by reason (every reason present; raises if Redis does not
    answer in time)."""
    client = redis.Redis.from_url(
        redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
    try:
        raw = client.hgetall(REFUSALS_KEY)
    finally:
        client.close()
    counts = {_text(name): int(value) for name, value in raw.items()}
    return {reason: counts.get(reason, 0) for reason in REASONS}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# ---------------------------------------------------------------- queued jobs


def check_queued(
    engine: Engine,
    key_id: str,
    max_queued: int,
    requests: Sequence[JobRequest],
    *,
    batch: bool = False,
) -> None:
    """Refuse (LimitExceeded) requests whose new jobs would take the key's QUEUED and
    RUNNING jobs over ``max_queued``; all of them or none.

    The common case is one query reading at most ``max_queued`` index entries. Only near
    the limit are the requests' idempotency keys looked up (replays of accepted jobs add
    nothing) and the key's jobs counted exactly, for the message.
    """
    wanted = len(requests)
    room = max_queued - wanted  # jobs the key may have now for all of these to fit
    if room >= 0 and api_keys.count_unfinished_of_key(engine, key_id, at_most=room + 1) <= room:
        return
    new = _new_jobs(engine, requests)
    if new == 0:
        return
    unfinished = api_keys.count_unfinished_of_key(engine, key_id)
    if unfinished + new <= max_queued:
        return
    if not batch:
        message = (
            f"too many unfinished jobs: this key has {_jobs(unfinished)} queued or running "
            f"and may have at most {max_queued}; retry when one has finished"
        )
    else:
        message = (
            f"batch refused, nothing was queued: its {_jobs(new, 'new job')} and the "
            f"{unfinished} this key has queued or running would make {unfinished + new}, "
            f"over the key's limit of {max_queued} unfinished jobs"
        )
    raise LimitExceeded(QUEUED, message, QUEUED_RETRY_AFTER_S)


def _jobs(n: int, noun: str = "job") -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _new_jobs(engine: Engine, requests: Sequence[JobRequest]) -> int:
    """How many jobs the requests would add: each without an idempotency key, and each
    distinct key that names no job yet."""
    keyed = {job_id_for(r) for r in requests if r.idempotency_key}
    unkeyed = sum(1 for r in requests if not r.idempotency_key)
    existing = api_keys.existing_job_ids(engine, list(keyed)) if keyed else set()
    return unkeyed + len(keyed - existing)


# ---------------------------------------------------------------- keys and their limits


@dataclass(frozen=True)
class KeyUsage:
    """A key, the limits in force for it, and its jobs queued or running now."""

    key: ApiKey
    limits: KeyLimits
    unfinished: int

    @property
    def limited(self) -> bool:
        return is_limited(self.key.role)


def keys_with_usage(engine: Engine, settings: Settings) -> list[KeyUsage]:
    """Every key (oldest first) with its limits and unfinished jobs (two queries)."""
    unfinished = api_keys.unfinished_by_key(engine)
    return [
        KeyUsage(
            key,
            effective_limits(key.role, key.rate_per_s, key.max_queued, settings),
            unfinished.get(key.id, 0),
        )
        for key in api_keys.list_keys(engine)
    ]


def check_limit_values(role: str, rate_per_s: float | None, max_queued: int | None) -> None:
    """ValueError for limits a key of ``role`` cannot have, or negative ones."""
    if (rate_per_s is not None or max_queued is not None) and not is_limited(role):
        raise ValueError(f"limits apply to client keys only, not to {role} keys")
    if rate_per_s is not None and rate_per_s < 0:
        raise ValueError("the rate must be 0 (unlimited) or more")
    if max_queued is not None and max_queued < 0:
        raise ValueError("the number of queued jobs must be 0 (unlimited) or more")


# Roles whose keys submit jobs, so that a fair-share weight means something for them.
SUBMITTING_ROLES = (ApiKeyRole.CLIENT, ApiKeyRole.OPERATOR)


def check_share_weight(role: str, share_weight: float | None) -> None:
    """ValueError for a fair-share weight a key of ``role`` cannot have: not above 0, not
    finite, or on a key that submits no jobs (None, the default weight 1, always fits)."""
    if share_weight is None:
        return
    if role not in SUBMITTING_ROLES:
        raise ValueError(f"a share weight applies to keys that submit jobs, not to {role} keys")
    if not math.isfinite(share_weight) or share_weight <= 0:
        raise ValueError(f"the share weight must be a number above 0, got {share_weight:g}")


def set_key_limits(
    engine: Engine,
    key_id: str,
    *,
    rate_per_s: float | None = UNCHANGED,
    max_queued: int | None = UNCHANGED,
    share_weight: float | None = UNCHANGED,
) -> ApiKey:
    """Change a key's limits and fair-share weight (None: back to the default; left out:
    unchanged); limits are in force from its next request, a weight from the next release
    of held bulk jobs. LookupError for an unknown key, ValueError for a key that is not
    limited or a negative value, or a weight that is not above 0."""
    key = api_keys.get_key(engine, key_id)
    if key is None:
        raise LookupError(f"no key {key_id}")
    check_limit_values(
        key.role,
        None if rate_per_s is UNCHANGED else rate_per_s,
        None if max_queued is UNCHANGED else max_queued,
    )
    check_share_weight(key.role, None if share_weight is UNCHANGED else share_weight)
    api_keys.set_limits(
        engine, key_id, rate_per_s=rate_per_s, max_queued=max_queued, share_weight=share_weight
    )
    changed = api_keys.get_key(engine, key_id)
    assert changed is not None
    return changed
