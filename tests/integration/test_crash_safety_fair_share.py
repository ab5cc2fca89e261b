"""Crash safety on fair share's release path: two tenants' bulk batches held and released
a few at a time while render pool children are SIGKILLed mid-render (a release runs on
the recorder thread of the process that dies) lose no job and render none twice."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from scheduler.lost_messages import reconcile
from tests.integration.conftest import Stack
from tests.integration.test_crash_safety import (
    Deaths,
    assert_exactly_once,
    crash_stack,
    kill_children_mid_render,
    start_workers,
    with_workers,
)

pytestmark = pytest.mark.integration

SHARE = 2


@pytest.fixture
def stack(tmp_path: Path, clean_redis: str, model_dir: Path) -> Iterator[Stack]:
    stack = crash_stack(tmp_path, clean_redis, model_dir, CANARY_FAIR_SHARE_QUEUED=str(SHARE))
    yield stack
    stack.stop_workers()


def submit_batches(stack: Stack, sizes: dict[str, int], marker: str) -> list[str]:
    gateway = stack.gateway()
    job_ids = []
    for tenant, n in sizes.items():
        prepared = [
            gateway.prepare(
                {"prompt": f"{tenant} {i} {marker}", "model_version": "v1", "seed": i, "steps": 4}
            )
            for i in range(n)
        ]
        submitted = gateway.submit_many(prepared, api_key_id=tenant)
        assert sum(s.held for s in submitted) == n - SHARE
        job_ids += [s.job_id for s in submitted]
    return job_ids


class Beat(threading.Thread):
    """What beat does every few seconds: release held jobs, re-send claimed but lost ones
    (a releaser that died between its claim and its send)."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.stopping = threading.Event()

    def run(self) -> None:
        releaser = self.stack.gateway().producer.releaser
        while not self.stopping.wait(2.0):
            releaser.release_all(wait_s=1.0)
            reconcile(self.stack.app, self.stack.settings, self.stack.engine, timedelta(seconds=10))


@with_workers(2)  # both worker counts under CANARY_CRASH_MATRIX=full
def test_sigkill_mid_render_under_fair_share_loses_and_duplicates_nothing(
    stack: Stack, workers: int
) -> None:
    start_workers(stack, workers)
    beat = Beat(stack)
    beat.start()
    try:
        deaths = Deaths()
        job_ids = submit_batches(stack, {"key-a": 6 * workers, "key-b": 3}, "[[fault:slow=0.3]]")
        kill_children_mid_render(stack, job_ids, deaths, times=2)
        assert_exactly_once(stack, job_ids, "sigkill-child-under-fair-share", workers, deaths)
    finally:
        beat.stopping.set()
        beat.join(timeout=30)
