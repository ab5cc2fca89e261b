"""The limits per API key without services: the rate's window, the limits in force, the
moving window on in-memory storage (as on Redis), failing open, and the queued-jobs rule
on a SQLite file."""

from __future__ import annotations

import logging
import socket
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from limits.storage import MemoryStorage

from canary.settings import Settings
from gateway.key_limits import (
    QUEUED,
    RATE,
    KeyLimits,
    LimitExceeded,
    RequestRateLimiter,
    check_limit_values,
    check_queued,
    describe_rate,
    effective_limits,
    rate_window,
)
from gateway.submit import job_id_for
from storage import jobs
from storage.db import get_engine, init_db
from storage.models import ApiKeyRole, Job, JobStatus

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("rate", "window", "expected"),
    [
        (2, 10, (20, 10)),
        (50, 10, (500, 10)),
        (1, 1, (1, 1)),
        (2.5, 1, (2, 1)),  # floor(rate x window): never more than the rate
        (0.5, 1, (1, 2)),  # under one per window: one request in a longer window
        (0.1, 10, (1, 10)),
        (0.05, 10, (1, 20)),
        (0.3, 10, (3, 10)),
    ],
)
def test_a_rate_is_a_moving_window_of_whole_requests_and_seconds(
    rate: float, window: int, expected: tuple[int, int]
) -> None:
    assert rate_window(rate, window) == expected


def test_a_rate_is_described_as_its_window() -> None:
    assert describe_rate(2, 10) == "20 requests in any 10 s"
    assert describe_rate(0.05, 10) == "1 request in any 20 s"
    with pytest.raises(ValueError):
        rate_window(0, 10)


def test_only_client_keys_are_limited_with_their_own_values_or_the_defaults() -> None:
    settings = Settings(key_rate_per_s=50, key_max_queued=1000)
    assert effective_limits("client", None, None, settings) == KeyLimits(50, 1000)
    assert effective_limits("client", 2, 5, settings) == KeyLimits(2, 5)
    assert effective_limits("client", 0, 0, settings) == KeyLimits(None, None)  # 0: none
    unlimited = Settings(key_rate_per_s=0, key_max_queued=0)
    assert effective_limits("client", None, None, unlimited) == KeyLimits(None, None)
    assert effective_limits("client", 3, None, unlimited) == KeyLimits(3, None)
    for role in ("operator", "grader", "events"):
        assert effective_limits(role, 2, 5, settings) == KeyLimits(None, None)


def test_limits_can_be_given_to_client_keys_only() -> None:
    check_limit_values(ApiKeyRole.CLIENT, 2, 5)
    check_limit_values(ApiKeyRole.OPERATOR, None, None)
    with pytest.raises(ValueError, match="client keys only, not to operator keys"):
        check_limit_values(ApiKeyRole.OPERATOR, 2, None)
    with pytest.raises(ValueError, match="0 \\(unlimited\\) or more"):
        check_limit_values(ApiKeyRole.CLIENT, -1, None)


# ---------------------------------------------------------------- the rate


def memory_limiter(window_s: int = 10) -> RequestRateLimiter:
    return RequestRateLimiter("memory://", window_s, storage=MemoryStorage())


def test_the_window_refuses_with_the_seconds_until_a_request_leaves_it() -> None:
    limiter = memory_limiter(window_s=10)
    with time_machine.travel(T0, tick=False) as clock:
        for _ in range(4):  # 0.4/s: 4 requests in any 10 s
            limiter.check("key-a", 0.4)
            clock.shift(timedelta(seconds=1))
        # t = 4 s: the window is full until the first request (t = 0) leaves it at 10 s
        with pytest.raises(LimitExceeded) as refused:
            limiter.check("key-a", 0.4)
        assert refused.value.reason == RATE
        assert refused.value.retry_after_s == 6
        assert refused.value.message == (
            "rate limit exceeded: this key may make 4 requests in any 10 s; retry in 6 s"
        )
        limiter.check("key-b", 0.4)  # another key has its own window
        clock.shift(timedelta(seconds=5.5))
        with pytest.raises(LimitExceeded) as again:  # refused requests took nothing
            limiter.check("key-a", 0.4)
        assert again.value.retry_after_s == 1  # 0.5 s, rounded up: never 0
        clock.shift(timedelta(seconds=0.6))
        limiter.check("key-a", 0.4)  # the first request has left the window


def test_retry_after_is_at_least_one_second() -> None:
    assert LimitExceeded(RATE, "m", 0).retry_after_s == 1
    assert LimitExceeded(QUEUED, "m", -3).retry_after_s == 1


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nobody listens there once closed


def test_without_redis_every_request_passes_and_the_outage_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = RequestRateLimiter(f"redis://127.0.0.1:{closed_port()}/0", 10, pause_s=60)
    calls = 0
    hit = limiter.strategy.hit

    def counting_hit(*args: object, **kwargs: object) -> bool:
        nonlocal calls
        calls += 1
        return hit(*args, **kwargs)  # type: ignore[arg-type]

    limiter.strategy.hit = counting_hit  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="gateway.key_limits"):
        for _ in range(20):
            limiter.check("key-a", 0.1)  # one per 10 s, if Redis answered
        limiter.count_refusal(RATE)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "cannot reach Redis" in warnings[0] and "not rate-limited" in warnings[0]
    assert calls == 1  # then left alone for pause_s: an outage costs no latency


def test_the_limiter_asks_redis_again_after_the_pause() -> None:
    limiter = RequestRateLimiter(f"redis://127.0.0.1:{closed_port()}/0", 10, pause_s=0.0)
    limiter.check("key-a", 1)
    limiter.storage = MemoryStorage()  # Redis is back
    limiter.strategy.storage = limiter.storage
    for _ in range(10):
        limiter.check("key-a", 1)
    with pytest.raises(LimitExceeded):
        limiter.check("key-a", 1)


# ---------------------------------------------------------------- queued jobs


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = get_engine(f"sqlite:///{tmp_path / 'canary.db'}")
    init_db(engine)
    return engine


def add_jobs(engine, key_id: str, statuses: list[JobStatus], keys: list[str] | None = None) -> None:  # type: ignore[no-untyped-def]
    """Jobs of the key in these statuses, with these (scoped) idempotency keys if given."""
    keys = keys or [None] * len(statuses)  # type: ignore[list-item]
    rows = [
        Job(
            id=job_id_for(request(key)) if key else str(uuid.uuid4()),
            idempotency_key=key,
            api_key_id=key_id,
            model_version="v1",
            prompt="p",
            seed=1,
            steps=1,
            guidance=1.0,
            width=64,
            height=64,
            status=status,
        )
        for status, key in zip(statuses, keys, strict=True)
    ]
    jobs.insert_new_jobs(engine, rows)


def request(idempotency_key: str | None = None):  # type: ignore[no-untyped-def]
    from gateway.job_requests import JobRequest

    return JobRequest(prompt="p", user_id="u", idempotency_key=idempotency_key)


def test_queued_and_running_jobs_count_against_the_limit_finished_ones_do_not(engine) -> None:  # type: ignore[no-untyped-def]
    add_jobs(engine, "key-a", [JobStatus.QUEUED, JobStatus.RUNNING])
    add_jobs(engine, "key-a", [JobStatus.SUCCEEDED, JobStatus.FAILED] * 3)
    add_jobs(engine, "key-b", [JobStatus.QUEUED] * 5)  # another key's jobs
    check_queued(engine, "key-a", 3, [request()])
    with pytest.raises(LimitExceeded) as refused:
        check_queued(engine, "key-a", 2, [request()])
    assert refused.value.reason == QUEUED and refused.value.retry_after_s >= 1
    assert refused.value.message == (
        "too many unfinished jobs: this key has 2 jobs queued or running and may have at "
        "most 2; retry when one has finished"
    )


def test_a_batch_fits_whole_or_is_refused_whole_naming_the_counts(engine) -> None:  # type: ignore[no-untyped-def]
    add_jobs(engine, "key-a", [JobStatus.QUEUED])
    check_queued(engine, "key-a", 4, [request(), request(), request()], batch=True)
    with pytest.raises(LimitExceeded) as refused:
        check_queued(engine, "key-a", 3, [request(), request(), request()], batch=True)
    assert refused.value.message == (
        "batch refused, nothing was queued: its 3 new jobs and the 1 this key has queued "
        "or running would make 4, over the key's limit of 3 unfinished jobs"
    )
    with pytest.raises(LimitExceeded):  # larger than the limit itself
        check_queued(engine, "key-b", 2, [request()] * 3, batch=True)


def test_replays_of_accepted_jobs_add_nothing_and_are_never_refused(engine) -> None:  # type: ignore[no-untyped-def]
    add_jobs(engine, "key-a", [JobStatus.QUEUED, JobStatus.QUEUED], keys=["k:1", "k:2"])
    check_queued(engine, "key-a", 2, [request("k:1")])
    check_queued(engine, "key-a", 2, [request("k:1"), request("k:2")], batch=True)
    # the same new key twice in a batch is one job
    check_queued(engine, "key-a", 3, [request("k:3"), request("k:3")], batch=True)
    with pytest.raises(LimitExceeded, match="its 1 new job and the 2"):
        check_queued(engine, "key-a", 2, [request("k:1"), request("k:3")], batch=True)
