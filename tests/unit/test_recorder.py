"""The background recorder: order, bounded queue, what it holds, draining on close."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import pytest

from tasks import recorder as recorder_module
from tasks.recorder import Recorder


@dataclass
class Item:
    job_id: str


def test_items_are_recorded_in_order_and_held_until_then() -> None:
    release = threading.Event()
    seen: list[str] = []

    def record(item: Item) -> None:
        release.wait(5)
        seen.append(item.job_id)

    recorder = Recorder(record, capacity=4, hold_s=0)
    for name in ("a", "b", "c"):
        recorder.submit(Item(name))
    assert recorder.holds("a") and recorder.holds("c") and not recorder.holds("d")
    release.set()
    assert recorder.drain(timeout=5)
    assert seen == ["a", "b", "c"]
    assert recorder.holds("b")  # recently recorded here: a duplicate message is skipped
    assert recorder.close(timeout=5)


def test_a_full_queue_makes_the_submitter_wait() -> None:
    release = threading.Event()
    recorder = Recorder(lambda item: release.wait(5), capacity=1, hold_s=0)
    recorder.submit(Item("being-recorded"))
    time.sleep(0.1)  # the thread has taken it and is blocked in record()
    recorder.submit(Item("queued"))  # fills the queue
    blocked = threading.Thread(target=recorder.submit, args=(Item("third"),))
    blocked.start()
    blocked.join(timeout=0.3)
    assert blocked.is_alive()  # bounded: the renderer waits instead of piling up images
    release.set()
    blocked.join(timeout=5)
    assert not blocked.is_alive()
    assert recorder.close(timeout=5)


def test_a_failed_record_is_not_remembered_as_recorded() -> None:
    def record(item: Item) -> None:
        raise ConnectionError("database down")

    recorder = Recorder(record, capacity=2, hold_s=0)
    recorder.submit(Item("x"))
    assert recorder.drain(timeout=5)
    # the job stays RUNNING in the database; a re-sent message must render it again here
    assert not recorder.holds("x")
    assert recorder.close(timeout=5)


def test_recording_waits_for_the_next_render_to_start_at_most_hold_s() -> None:
    recorded = threading.Event()
    recorder = Recorder(lambda item: recorded.set(), capacity=2, hold_s=30)
    recorder.submit(Item("a"))
    assert not recorded.wait(0.2)  # the next render has not started: keep out of its way
    recorder.render_started()
    assert recorded.wait(5)
    recorder.submit(Item("b"))
    started = time.monotonic()
    assert recorder.close(timeout=10)  # closing does not wait for a render that never comes
    assert time.monotonic() - started < 5


def test_close_reports_what_it_could_not_record_in_time() -> None:
    release = threading.Event()
    recorder = Recorder(lambda item: release.wait(5), capacity=2, hold_s=0)
    recorder.submit(Item("slow"))
    assert recorder.close(timeout=0.2) is False
    assert recorder.pending == 1
    release.set()
    assert recorder.close(timeout=5)  # a later close still records it and stops the thread
    assert recorder.pending == 0


def test_without_a_periodic_job_the_thread_sleeps_until_an_item_comes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once ``period_s`` had passed, a recorder without a periodic job used to poll its
    queue with a zero timeout: a thread spinning at a full core (found as a leaked test
    thread that slowed every later test of its process)."""
    waits: list[float | None] = []

    class CountingQueue(queue.Queue[object]):
        def get(self, block: bool = True, timeout: float | None = None) -> object:
            waits.append(timeout)
            return super().get(block, timeout)

    monkeypatch.setattr(recorder_module.queue, "Queue", CountingQueue)
    recorded = threading.Event()
    recorder = Recorder(lambda item: recorded.set(), capacity=1, period_s=0.01, hold_s=0)
    time.sleep(0.3)
    assert len(waits) <= 2, f"the idle thread polled its queue {len(waits)} times"
    recorder.submit(Item("a"))
    assert recorded.wait(5)
    assert recorder.close(timeout=5)


def test_periodic_job_runs_on_the_recorder_thread() -> None:
    ran = threading.Event()
    threads: list[str] = []

    def periodic() -> None:
        threads.append(threading.current_thread().name)
        ran.set()

    recorder = Recorder(lambda item: None, capacity=1, periodic=periodic, period_s=0.05)
    assert ran.wait(5)
    assert threads[0] == "canary-recorder"
    assert recorder.close(timeout=5)


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_must_be_positive(capacity: int) -> None:
    with pytest.raises(ValueError):
        Recorder(lambda item: None, capacity=capacity)
