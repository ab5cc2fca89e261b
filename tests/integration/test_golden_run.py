"""Golden runs with real Redis and real workers: idempotent, resumable, one run per night."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlmodel import Session, select

from analysis.golden.report import report_for_run
from analysis.golden.run_checks import check_open_runs
from canary.contracts import queues_for
from scheduler import golden_replay
from scheduler.golden_replay import GoldenReplay, nightly_run_id
from scheduler.golden_tasks import trigger_nightly
from storage import golden
from storage.models import GoldenRunStatus, Job, JobStatus
from storage.objects import store_from_settings
from tests.golden_fixtures import small_set, small_set_text
from tests.integration.conftest import PROJECT_ROOT, VERSIONS, Stack, local_stack
from tests.worker_processes import spawn_command_line

pytestmark = pytest.mark.integration


class Crash(Exception):
    pass


def queued_messages(stack: Stack) -> dict[str, int]:
    client = redis.Redis.from_url(stack.settings.broker_url)
    return {v: sum(client.llen(q) for q in queues_for(v)) for v in VERSIONS}


def golden_jobs(stack: Stack, run_id: str) -> list[Job]:
    with Session(stack.engine) as session:
        return list(session.exec(select(Job).where(Job.batch_id == run_id)))


def test_a_run_started_twice_crashed_and_resumed_enqueues_each_case_once(
    tmp_path: Path, clean_redis: str, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = local_stack(tmp_path, clean_redis, model_dir)
    # Long enough that the early resume below falls inside it on a loaded machine (1 s did not).
    lease_s = 5.0
    settings = stack.settings.model_copy(update={"golden_lease_s": lease_s})
    golden_set, text = small_set(settings, cases_per_category=2)  # 8 cases, 16 images
    monkeypatch.setattr(golden_replay, "CHUNK", 3)

    def crash_after_first_chunk(done: int, total: int) -> None:
        raise Crash(f"submitter died after {done} of {total}")

    first = GoldenReplay(settings, stack.gateway(), owner="first")
    with pytest.raises(Crash):
        first.start(
            "nightly-test", golden_set, text, trigger="nightly", baseline="v1", candidate="v2",
            progress=crash_after_first_chunk,
        )  # fmt: skip
    crashed_at = time.monotonic()  # the lease was last renewed before this
    run = golden.get_run(stack.engine, "nightly-test")
    assert run is not None and run.status == GoldenRunStatus.SUBMITTING
    assert len(golden_jobs(stack, run.id)) == 6  # one chunk: 3 cases x 2 versions

    # While the dead submitter's lease lasts, nobody else submits...
    second = GoldenReplay(settings, stack.gateway(), owner="second")
    early = second.resume(run.id)
    assert not early.submitted and early.new_jobs == 0
    # ...afterwards the run is resumed where it stopped.
    time.sleep(max(0.0, crashed_at + lease_s + 0.2 - time.monotonic()))
    resumed = second.resume(run.id)
    assert resumed.submitted and resumed.new_jobs == 10 and resumed.status == "RUNNING"

    # Starting the same run again (a second trigger, a retry) adds nothing.
    again = GoldenReplay(settings, stack.gateway(), owner="third").start(
        "nightly-test", golden_set, text, trigger="nightly", baseline="v1", candidate="v2"
    )
    assert not again.created and again.new_jobs == 0

    rows = golden_jobs(stack, run.id)
    assert len(rows) == 16
    assert {(r.prompt, r.seed, r.model_version) for r in rows} == {
        (case.prompt, case.seed, version) for case in golden_set.cases for version in VERSIONS
    }
    assert all(r.source == "golden" and r.experiment is None for r in rows)
    # Identical inputs for both versions: every case's two jobs differ only in the version.
    by_case: dict[str, set[tuple]] = {}
    for r in rows:
        spec = (r.prompt, r.negative_prompt, r.seed, r.steps, r.guidance, r.width, r.height)
        by_case.setdefault(r.prompt, set()).add(spec)
    assert all(len(specs) == 1 for specs in by_case.values())
    # Exactly one message per (case, version) on the broker: nothing was enqueued twice.
    assert queued_messages(stack) == {"v1": 8, "v2": 8}

    for version in VERSIONS:
        stack.start_worker(version)
    try:
        finished = stack.wait_finished([r.id for r in rows], timeout=180)
        assert all(job.status == JobStatus.SUCCEEDED for job in finished.values())
        assert all(job.attempts == 1 for job in finished.values())
        store = store_from_settings(settings)
        checked = check_open_runs(settings, stack.engine, store, scorer=None)
        assert checked == {run.id: 16}
        run = golden.get_run(stack.engine, run.id)
        assert run is not None and run.status == GoldenRunStatus.COMPLETE
        results = golden.results(stack.engine, run.id)
        assert len(results) == 16 and all(r.checked_at is not None for r in results)
        assert all(r.auto_level is None for r in results)  # rendered fine; humans decide
        assert all(r.drift_rmse is None for r in results)  # no earlier night to compare with

        # The next night: same cases, same seeds, same weights -> no drift.
        tomorrow = GoldenReplay(settings, stack.gateway()).start(
            "nightly-next", golden_set, text, trigger="nightly", baseline="v1", candidate="v2"
        )
        assert tomorrow.new_jobs == 16
        stack.wait_finished([r.id for r in golden_jobs(stack, "nightly-next")], timeout=180)
        check_open_runs(settings, stack.engine, store, scorer=None)
        night_two = golden.results(stack.engine, "nightly-next")
        assert all(r.previous_run_id == "nightly-test" for r in night_two)
        assert all(r.drift_rmse is not None and r.drift_rmse < 1e-6 for r in night_two)
        assert not any(r.drifted for r in night_two)
        report = report_for_run(stack.engine, "nightly-next")
        assert report is not None and report["versions"]["v1"]["overall"]["images"] == 8
    finally:
        stack.stop_workers()


def test_concurrent_triggers_of_one_night_create_one_run(
    tmp_path: Path, clean_redis: str, model_dir: Path
) -> None:
    stack = local_stack(tmp_path, clean_redis, model_dir)
    set_file = tmp_path / "golden.yaml"
    set_file.write_text(small_set_text(cases_per_category=3))
    settings = stack.settings.model_copy(update={"golden_set_file": set_file})
    night = datetime(2026, 11, 25, 1, 30, tzinfo=UTC)
    outcomes = []
    barrier = threading.Barrier(4)

    def trigger() -> None:
        barrier.wait()
        outcomes.append(trigger_nightly(settings, stack.gateway(), now=night))

    threads = [threading.Thread(target=trigger) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run_id = nightly_run_id(night, "UTC")
    assert {o.run_id for o in outcomes} == {run_id}
    assert sum(o.created for o in outcomes) == 1
    assert sum(o.new_jobs for o in outcomes) == 24
    assert len(golden.list_runs(stack.engine)) == 1
    assert queued_messages(stack) == {"v1": 12, "v2": 12}
    # The same night in another zone is another calendar day: the id follows the schedule.
    assert nightly_run_id(night, "America/Los_Angeles") == "nightly-2026-11-24"
    assert nightly_run_id(night + timedelta(hours=23), "UTC") == "nightly-2026-11-26"


def _start(stack: Stack, name: str, *args: str, env: dict[str, str]) -> subprocess.Popen:
    return spawn_command_line(list(args), env, PROJECT_ROOT, stack.log_dir / f"{name}.log")


def _wait_for(condition, timeout: float, message: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    pytest.fail(message)


def test_two_beats_one_trigger_and_failover(
    tmp_path: Path, clean_redis: str, model_dir: Path
) -> None:
    """Two `canary beat` processes: RedBeat's lock lets one send; the other takes over."""
    set_file = tmp_path / "golden.yaml"
    set_file.write_text(small_set_text())
    stack = local_stack(
        tmp_path, clean_redis, model_dir,
        CANARY_GOLDEN_SET_FILE=str(set_file), CANARY_GOLDEN_SCHEDULE="every 1",
        CANARY_GOLDEN_CHECK_EVERY_S="3600", CANARY_REPUBLISH_EVERY_S="3600",
    )  # fmt: skip
    beats = [_start(stack, f"beat-{i}", "beat", env=stack.env) for i in range(2)]
    scheduler = _start(stack, "scheduler", "scheduler-worker", env=stack.env)
    try:

        def sent(name: str) -> int:
            return stack.log(name).count("Sending due task golden-nightly-run")

        def holders() -> list[str]:
            return [f"beat-{i}" for i in range(2) if "Acquired lock" in stack.log(f"beat-{i}")]

        _wait_for(lambda: len(holders()) == 1, 60, "no beat acquired the lock")
        leader = holders()[0]
        follower = "beat-1" if leader == "beat-0" else "beat-0"
        _wait_for(lambda: sent(leader) >= 3, 60, f"{leader} sent nothing: {stack.log(leader)}")
        assert sent(follower) == 0, stack.log(follower)
        _wait_for(
            lambda: golden.latest_run(stack.engine, GoldenRunStatus.RUNNING) is not None,
            60,
            f"no run was started: {stack.log('scheduler')}",
        )

        # The leader stops (releasing its lock): the waiting beat takes over.
        leader_process = beats[int(leader[-1])]
        os.killpg(leader_process.pid, signal.SIGTERM)
        leader_process.wait(timeout=20)
        _wait_for(lambda: sent(follower) >= 2, 60, f"no failover: {stack.log(follower)}")

        # Many triggers from two schedulers, one run, each case once per version.
        runs = golden.list_runs(stack.engine)
        assert len(runs) == 1 and runs[0].trigger == "nightly"
        assert len(golden_jobs(stack, runs[0].id)) == 8
        assert queued_messages(stack) == {"v1": 4, "v2": 4}
    finally:
        for process in [*beats, scheduler]:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in [*beats, scheduler]:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
