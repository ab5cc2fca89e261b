"""Crash safety with real worker processes: kills, broker restarts (with and without its
data), connection drops and warm shutdowns lose no job and duplicate none (one success
record, one image object per job), and never render one job twice at once.

Each scenario runs with one and with two workers of v1 on this host (``workers``) when
``CANARY_CRASH_MATRIX=full``; by default (``make test``) the mid-render SIGKILL runs with
both and every other scenario with the count where it tests most (two where a survivor
or a redelivery to another worker is the point, one where a single worker is), which
halves the suite's longest file. Each scenario
writes a one-line summary (jobs, lost, duplicated success rows, duplicate objects,
rendered twice) to stdout and, when ``CANARY_CRASH_SUMMARY`` names a file, appends it
there. "Rendered twice" counts jobs a worker claimed (the ``job ... claimed`` line
tasks/render.py logs when a render starts) while an earlier claimant was still alive.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlmodel import Session, func, select

from canary.contracts import RENDER_TASK
from scheduler.lost_messages import reconcile
from storage import jobs
from storage.models import TERMINAL_STATUSES, FailureKind, Job, JobStatus, utcnow
from storage.objects import open_store
from tasks.publish import render_spec
from tasks.queues import resent_counts
from tests.integration.conftest import Stack, local_stack

pytestmark = pytest.mark.integration

# short limits so a lost worker's message is redelivered within seconds
LIMITS = {
    "CANARY_TASK_SOFT_TIME_LIMIT_S": "20",
    "CANARY_TASK_TIME_LIMIT_S": "25",
    "CANARY_VISIBILITY_TIMEOUT_S": "30",
    "CANARY_FAULT_INJECTION": "true",
}
SUMMARY_ENV = "CANARY_CRASH_SUMMARY"  # a file each scenario appends its summary line to
FULL_MATRIX = os.environ.get("CANARY_CRASH_MATRIX") == "full"


def with_workers(*default: int) -> pytest.MarkDecorator:
    """Run with ``default`` worker counts, or with 1 and 2 under CANARY_CRASH_MATRIX=full."""
    counts = [1, 2] if FULL_MATRIX else list(default)
    return pytest.mark.parametrize(
        "workers", counts, ids=[f"{n}-worker{'s' if n > 1 else ''}" for n in counts]
    )


WORKERS = with_workers(1, 2)


def crash_stack(tmp_path: Path, redis_url: str, model_dir: Path, **extra: str) -> Stack:
    return local_stack(tmp_path, redis_url, model_dir, **{**LIMITS, **extra})


@pytest.fixture
def stack(tmp_path: Path, clean_redis: str, model_dir: Path) -> Iterator[Stack]:
    stack = crash_stack(tmp_path, clean_redis, model_dir)
    yield stack
    stack.stop_workers()


def submit(stack: Stack, n: int, marker: str, steps: int = 4) -> list[str]:
    gateway = stack.gateway()
    return [
        gateway.submit(
            {
                "prompt": f"scene {i} {marker}",
                "model_version": "v1",
                "seed": i,
                "steps": steps,
                "width": 64,
                "height": 64,
            }
        ).job_id
        for i in range(n)
    ]


def pool_children(worker: subprocess.Popen) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def wait_until(condition: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def running(stack: Stack, job_ids: list[str], since: datetime | None = None) -> list[str]:
    """Jobs being rendered now (an attempt started after ``since``, if given)."""
    rows = jobs.get_jobs(stack.engine, job_ids)
    return [
        r.id
        for r in rows
        if r.status == JobStatus.RUNNING and (since is None or _aware(r.started_at) > since)
    ]


def _aware(when: datetime | None) -> datetime:
    if when is None:
        return datetime.min.replace(tzinfo=UTC)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def start_workers(stack: Stack, n: int) -> list[subprocess.Popen]:
    return stack.start_workers("v1", n) if n > 1 else [stack.start_worker("v1")]


def holder_of(stack: Stack, job_id: str) -> subprocess.Popen:
    """The live worker process whose node holds ``job_id`` now."""
    node = jobs.get_job(stack.engine, job_id).worker_host  # type: ignore[union-attr]
    (worker,) = [w for w in stack.workers if stack.nodes.get(w.pid) == node and w.poll() is None]
    return worker


@dataclass
class Deaths:
    """The processes a test killed and when (``time.time()``): a render they held ended."""

    at: dict[int, float] = field(default_factory=dict)

    def kill_child(self, pid: int) -> None:
        self.at[pid] = time.time()
        os.kill(pid, signal.SIGKILL)

    def kill_worker(self, worker: subprocess.Popen) -> None:
        now = time.time()
        for pid in [worker.pid, *pool_children(worker)]:
            self.at[pid] = now
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


@dataclass(frozen=True)
class Claim:
    at: float  # epoch seconds (the worker log's local time, to the millisecond)
    attempt: int
    node: str
    pid: int


CLAIM_LINE = re.compile(
    r"^\[(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [^\]]*\] job (?P<job>\S+) claimed: "
    r"attempt (?P<attempt>\d+) by (?P<node>\S+) \(pid (?P<pid>\d+)\)",
    re.MULTILINE,
)


EXITED_LINE = re.compile(
    r"^\[(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [^\]]*\] Process '[^']*' "
    r"pid:(?P<pid>\d+) exited",
    re.MULTILINE,
)


def _log_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def logged_deaths(stack: Stack) -> dict[int, float]:
    """Pool processes whose worker logged their end (killed, or a hard time limit)."""
    return {
        int(m["pid"]): _log_time(m["at"])
        for path in stack.log_dir.glob("*.log")
        for m in EXITED_LINE.finditer(path.read_text(errors="replace"))
    }


def render_claims(stack: Stack) -> dict[str, list[Claim]]:
    """Every render start the workers logged, per job, in time order."""
    claims: dict[str, list[Claim]] = {}
    for path in stack.log_dir.glob("*.log"):
        for m in CLAIM_LINE.finditer(path.read_text(errors="replace")):
            claim = Claim(_log_time(m["at"]), int(m["attempt"]), m["node"], int(m["pid"]))
            claims.setdefault(m["job"], []).append(claim)
    return {job: sorted(found, key=lambda c: c.at) for job, found in claims.items()}


def rendered_twice(claims: dict[str, list[Claim]], deaths: Deaths) -> list[str]:
    """Jobs claimed by a process while one that claimed them earlier was still alive (a
    claim only succeeds on an unfinished job, so that earlier render was still going)."""
    twice = []
    for job, found in claims.items():
        for k, later in enumerate(found):
            if any(
                earlier.pid != later.pid and deaths.at.get(earlier.pid, float("inf")) > later.at
                for earlier in found[:k]
            ):
                twice.append(job)
                break
    return twice


def success_rows(stack: Stack, job_ids: list[str]) -> Counter[str]:
    with Session(stack.engine) as session:
        found = session.exec(
            select(Job.id, func.count())
            .where(Job.id.in_(job_ids), Job.status == JobStatus.SUCCEEDED)  # type: ignore[attr-defined]
            .group_by(Job.id)
        )
        return Counter({job_id: n for job_id, n in found})


def settle(stack: Stack, job_ids: list[str], timeout: float) -> dict[str, Job]:
    """The jobs' rows once all are finished, or as they are when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        rows = {row.id: row for row in jobs.get_jobs(stack.engine, job_ids)}
        done = all(row.status in TERMINAL_STATUSES for row in rows.values())
        if (done and len(rows) == len(set(job_ids))) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


@dataclass
class Audit:
    rows: dict[str, Job]
    lost: list[str]  # not finished as expected
    duplicated_success_rows: int
    duplicate_objects: int
    objects: list[str]
    claims: dict[str, list[Claim]]
    rendered_twice: list[str]

    @property
    def render_starts(self) -> int:
        return sum(len(found) for found in self.claims.values())


def audit(
    stack: Stack,
    job_ids: list[str],
    scenario: str | None = None,
    workers: int = 1,
    deaths: Deaths | None = None,
    expect: JobStatus = JobStatus.SUCCEEDED,
    timeout: float = 180,
) -> Audit:
    """Wait for the jobs, count what went wrong, and (given a scenario name) write the
    summary line; asserts nothing."""
    rows = settle(stack, job_ids, timeout)
    lost = [j for j in job_ids if j not in rows or rows[j].status != expect]
    objects = open_store(stack.settings.resolved_storage_url).list("renders/")
    per_job = Counter(key.rpartition("/")[2].removesuffix(".png") for key in objects)
    claims = render_claims(stack)
    claims = {j: claims[j] for j in job_ids if j in claims}
    result = Audit(
        rows=rows,
        lost=lost,
        duplicated_success_rows=sum(n - 1 for n in success_rows(stack, job_ids).values()),
        duplicate_objects=sum(max(0, per_job[j] - 1) for j in job_ids),
        objects=objects,
        claims=claims,
        # a death the worker logged may come a little after the kill: the test's time first
        rendered_twice=rendered_twice(
            claims, Deaths({**logged_deaths(stack), **(deaths.at if deaths else {})})
        ),
    )
    if scenario is not None:
        line = (
            f"crash-safety scenario={scenario} workers_per_version={workers} "
            f"jobs={len(job_ids)} lost={len(lost)} "
            f"duplicated_success_rows={result.duplicated_success_rows} "
            f"duplicate_objects={result.duplicate_objects} "
            f"rendered_twice={len(result.rendered_twice)} render_starts={result.render_starts} "
            f"kills={len(deaths.at) if deaths else 0}"
        )
        print(line)
        if target := os.environ.get(SUMMARY_ENV):
            with open(target, "a") as out:
                out.write(line + "\n")
    return result


def assert_exactly_once(
    stack: Stack,
    job_ids: list[str],
    scenario: str | None = None,
    workers: int = 1,
    deaths: Deaths | None = None,
) -> dict[str, Job]:
    """Every job succeeded once: one success row, one object (its row's image_key), and
    (for a named scenario, whose kills ``deaths`` lists) no render of it started while
    another was going on."""
    result = audit(stack, job_ids, scenario, workers, deaths)
    if any(j not in result.rows or result.rows[j].status not in TERMINAL_STATUSES for j in job_ids):
        stack.wait_finished(job_ids, timeout=0.1)  # fails with the worker logs
    rows = result.rows
    assert not result.lost, {
        r.id: (r.status, r.failure_kind, r.failure_message) for r in rows.values()
    }
    assert result.duplicated_success_rows == 0
    assert all((rows[j].image_key or "").endswith(f"/{j}.png") for j in job_ids)
    assert sorted(result.objects) == sorted(rows[j].image_key for j in job_ids)  # type: ignore[type-var]
    if scenario is not None:
        assert not result.rendered_twice, {j: result.claims[j] for j in result.rendered_twice}
        # every success was rendered after a logged claim: the check above saw every render
        assert set(result.claims) == set(job_ids), set(job_ids) - set(result.claims)
    return rows


def kill_children_mid_render(stack: Stack, job_ids: list[str], deaths: Deaths, times: int) -> None:
    """SIGKILL ``times`` times the pool child rendering one of ``job_ids``, each time one
    that started after the previous kill, inside its denoising loop."""
    since = None
    for _ in range(times):
        # a replaced pool child loads the model first: slow on a loaded machine
        wait_until(
            lambda s=since: running(stack, job_ids, s), timeout=180, what="a job being rendered"
        )
        holder = holder_of(stack, running(stack, job_ids, since)[0])
        time.sleep(0.4)  # inside the denoising loop
        (child,) = pool_children(holder)
        since = utcnow()
        deaths.kill_child(child)


@WORKERS
def test_sigkill_of_the_pool_child_mid_render_loses_and_duplicates_nothing(
    stack: Stack, workers: int
) -> None:
    started = start_workers(stack, workers)
    deaths = Deaths()
    job_ids = submit(stack, 6 * workers, "[[fault:slow=0.3]]")
    kill_children_mid_render(stack, job_ids, deaths, times=3)
    rows = assert_exactly_once(stack, job_ids, "sigkill-child-mid-render", workers, deaths)
    assert sum(r.attempts for r in rows.values()) >= len(job_ids) + 3
    assert all(w.poll() is None for w in started)  # each parent replaced its child


@with_workers(2)
def test_sigkill_mid_upload_loses_and_duplicates_nothing(stack: Stack, workers: int) -> None:
    start_workers(stack, workers)
    deaths = Deaths()
    (job_id,) = submit(stack, 1, "[[fault:upload-slow=3]]", steps=2)
    wait_until(lambda: running(stack, [job_id]), what="the job to start")
    holder = holder_of(stack, job_id)
    time.sleep(1.5)  # rendering takes well under a second: now it is uploading
    (child,) = pool_children(holder)
    deaths.kill_child(child)
    rows = assert_exactly_once(stack, [job_id], "sigkill-child-mid-upload", workers, deaths)
    assert rows[job_id].attempts == 2


@with_workers(2)
def test_killing_the_whole_worker_redelivers_to_the_next_one(
    tmp_path: Path, clean_redis: str, model_dir: Path, workers: int
) -> None:
    # the message of a dead worker comes back after the visibility timeout: keep it short
    stack = crash_stack(
        tmp_path,
        clean_redis,
        model_dir,
        CANARY_TASK_SOFT_TIME_LIMIT_S="4",
        CANARY_TASK_TIME_LIMIT_S="6",
        CANARY_VISIBILITY_TIMEOUT_S="8",
    )
    try:
        start_workers(stack, workers)
        deaths = Deaths()
        (job_id,) = submit(stack, 1, "[[fault:slow=0.5]]")
        wait_until(lambda: running(stack, [job_id]), what="the job to start")
        deaths.kill_worker(holder_of(stack, job_id))
        stack.start_worker("v1")  # with two, the survivor or the replacement takes it
        rows = assert_exactly_once(stack, [job_id], "sigkill-whole-worker", workers, deaths)
        assert rows[job_id].attempts == 2
    finally:
        stack.stop_workers()


@with_workers(1)
def test_warm_shutdown_finishes_the_current_job(stack: Stack, workers: int) -> None:
    start_workers(stack, workers)
    job_ids = submit(stack, 3 * workers, "[[fault:slow=0.4]]")
    wait_until(lambda: running(stack, job_ids), what="a running job")
    in_flight = running(stack, job_ids)[0]
    worker = holder_of(stack, in_flight)
    worker.send_signal(signal.SIGTERM)  # warm shutdown: finish what you hold, take no more
    assert worker.wait(timeout=60) == 0
    row = jobs.get_job(stack.engine, in_flight)
    assert row is not None and row.status == JobStatus.SUCCEEDED
    if workers == 1:
        stack.start_worker("v1")  # the rest were never taken: the next worker does them
    # with two, the other worker does them (and the messages the stopped one had prefetched)
    assert_exactly_once(stack, job_ids, "warm-shutdown", workers)


@with_workers(1)
def test_redelivery_of_a_finished_job_does_not_render_it_again(stack: Stack, workers: int) -> None:
    start_workers(stack, workers)
    (job_id,) = submit(stack, 1, "")
    before = assert_exactly_once(stack, [job_id])[job_id]
    store = open_store(stack.settings.resolved_storage_url)
    key = before.image_key or ""
    image = store.get(key)
    spec = render_spec(before)
    stack.app.send_task(RENDER_TASK, args=(job_id, spec), queue="render.v1", task_id=job_id)

    def handled_twice() -> bool:
        logs = "".join(p.read_text(errors="replace") for p in stack.log_dir.glob("*.log"))
        return logs.count(f"canary.render[{job_id}] succeeded") == 2

    wait_until(handled_twice, what="the redelivered message to be handled")
    after = jobs.get_job(stack.engine, job_id)
    assert after is not None
    assert (after.attempts, after.finished_at, after.inference_ms) == (
        before.attempts,
        before.finished_at,
        before.inference_ms,
    )
    assert store.get(key) == image
    assert_exactly_once(stack, [job_id], "redelivery-of-finished-job", workers)


@with_workers(1)
def test_a_job_that_kills_its_worker_every_time_ends_as_worker_lost(
    tmp_path: Path, clean_redis: str, model_dir: Path, workers: int
) -> None:
    stack = crash_stack(tmp_path, clean_redis, model_dir, CANARY_MAX_ATTEMPTS="2")
    try:
        start_workers(stack, workers)
        deaths = Deaths()
        (job_id,) = submit(stack, 1, "[[fault:slow=0.5]]")
        for attempt in (1, 2):

            def on_attempt(n: int = attempt) -> bool:
                row = jobs.get_job(stack.engine, job_id)
                return row is not None and row.attempts == n and row.status == "RUNNING"

            wait_until(on_attempt, what=f"attempt {attempt}")
            (child,) = pool_children(holder_of(stack, job_id))
            deaths.kill_child(child)
        result = audit(
            stack, [job_id], "poison-job", workers, deaths, expect=JobStatus.FAILED, timeout=120
        )
        row = result.rows[job_id]
        assert (row.status, row.failure_kind) == (JobStatus.FAILED, FailureKind.WORKER_LOST)
        assert row.attempts == 3 and "2 attempts" in (row.failure_message or "")
        assert result.objects == [] and not result.rendered_twice
        assert [c.attempt for c in result.claims[job_id]] == [1, 2]  # the 3rd gives up
    finally:
        stack.stop_workers()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(port: int, data_dir: Path) -> subprocess.Popen:
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (scripts/services.sh installs it)")
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
         "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    wait_until(lambda: _pings(client), timeout=20, what="redis to start")
    return process


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@with_workers(2)
def test_broker_restart_mid_batch_loses_and_duplicates_nothing(
    tmp_path: Path, model_dir: Path, workers: int
) -> None:
    port = free_port()
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    broker = start_redis(port, data_dir)
    stack = crash_stack(tmp_path, f"redis://127.0.0.1:{port}/0", model_dir)
    try:
        start_workers(stack, workers)
        job_ids = submit(stack, 8 * workers, "[[fault:slow=0.2]]")
        wait_until(
            lambda: sum(r.status == "SUCCEEDED" for r in jobs.get_jobs(stack.engine, job_ids)) >= 2,
            what="two finished jobs",
        )
        broker.kill()  # SIGKILL: no goodbye; the append-only file holds every write
        broker.wait()
        time.sleep(1)
        broker = start_redis(port, data_dir)
        assert_exactly_once(stack, job_ids, "broker-restart-with-data", workers)
    finally:
        stack.stop_workers()
        broker.terminate()
        broker.wait()


@with_workers(1)
def test_jobs_whose_messages_a_restarted_broker_lost_are_sent_again_and_render_once(
    tmp_path: Path, model_dir: Path, workers: int
) -> None:
    """The broker comes back without its data: the outbox (never-sent jobs) and the sweep
    (RUNNING jobs) see nothing to do, the reconciler finds the QUEUED jobs whose message
    is gone and sends them again; re-sends of messages that only looked gone (a job in
    flight while it runs every second) are stopped by the claim guard."""
    port = free_port()
    first_dir, second_dir = tmp_path / "redis-1", tmp_path / "redis-2"
    first_dir.mkdir()
    second_dir.mkdir()
    broker = start_redis(port, first_dir)
    stack = crash_stack(tmp_path, f"redis://127.0.0.1:{port}/0", model_dir)
    try:
        start_workers(stack, workers)
        job_ids = submit(stack, 12, "[[fault:slow=0.15]]")
        wait_until(
            lambda: sum(r.status == "SUCCEEDED" for r in jobs.get_jobs(stack.engine, job_ids)) >= 2,
            what="two finished jobs",
        )
        broker.kill()
        broker.wait()
        broker = start_redis(port, second_dir)  # same port, no data: every message is gone
        time.sleep(8)  # the worker reconnects; nothing arrives for the jobs left QUEUED
        queued = [r.id for r in jobs.get_jobs(stack.engine, job_ids) if r.status == "QUEUED"]
        assert queued, "every job finished before the broker lost its data"
        resent: dict[str, int] = {}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            rows = jobs.get_jobs(stack.engine, job_ids)
            if all(r.status in ("SUCCEEDED", "FAILED") for r in rows):
                break
            # as beat runs it, but every second and with no age threshold: a job whose
            # message is on its way to the worker may look lost, and is then sent twice
            for version, n in reconcile(
                stack.app, stack.settings, stack.engine, timedelta(0)
            ).items():
                resent[version] = resent.get(version, 0) + n
            time.sleep(1)
        rows = assert_exactly_once(stack, job_ids, "broker-restart-without-data", workers)
        assert resent.get("v1", 0) >= len(queued)
        assert all(rows[i].attempts == 1 for i in queued), {i: rows[i].attempts for i in queued}
        assert resent_counts(stack.app) == {"v1": resent["v1"]}  # what /metrics exports
        assert reconcile(stack.app, stack.settings, stack.engine, timedelta(0)) == {
            "v1": 0,
            "v2": 0,
        }
    finally:
        stack.stop_workers()
        broker.terminate()
        broker.wait()


def test_a_restarted_worker_resends_what_its_predecessor_left_and_spares_live_neighbours(
    tmp_path: Path, clean_redis: str, model_dir: Path
) -> None:
    """Node names are unique per worker, so a worker started after one was killed has
    another name; it re-sends the dead one's jobs at once (nothing else would before the
    5-minute visibility timeout), and never a live neighbour's."""
    stack = crash_stack(tmp_path, clean_redis, model_dir, CANARY_VISIBILITY_TIMEOUT_S="300")
    try:
        first = stack.start_worker("v1")
        (kept,) = submit(stack, 1, "kept [[fault:slow=0.4]]", steps=12)
        wait_until(lambda: running(stack, [kept]), what="the first job to start")
        stack.start_worker("v1")  # while the first worker renders: it must leave that job
        row = stack.wait_finished([kept])[kept]
        assert (row.status, row.attempts, row.worker_host) == (
            JobStatus.SUCCEEDED, 1, stack.nodes[first.pid],
        )  # fmt: skip
        (lost,) = submit(stack, 1, "lost [[fault:slow=0.4]]", steps=12)
        wait_until(lambda: running(stack, [lost]), what="the second job to start")
        holder = jobs.get_job(stack.engine, lost).worker_host  # type: ignore[union-attr]
        deaths = Deaths()
        deaths.kill_worker(holder_of(stack, lost))
        stack.start_worker("v1")
        row = stack.wait_finished([lost], timeout=90)[lost]
        assert (row.status, row.attempts) == (JobStatus.SUCCEEDED, 2)
        assert row.worker_host != holder
        assert_exactly_once(stack, [kept, lost], "restarted-worker-next-to-a-live-one", 2, deaths)
    finally:
        stack.stop_workers()


@with_workers(2)
def test_a_broker_connection_drop_renders_nothing_twice(
    tmp_path: Path, model_dir: Path, workers: int
) -> None:
    """The broker drops every client connection while each worker renders a job: the
    running jobs' messages are restored to the queue and delivered again (with two
    workers, to either) while their first render is still going; that delivery leaves the
    job to its holder. One job per worker, so each still waits on the broker for its
    next message when the connection drops: that is when a worker notices."""
    port = free_port()
    (tmp_path / "redis").mkdir()
    broker = start_redis(port, tmp_path / "redis")
    stack = crash_stack(tmp_path, f"redis://127.0.0.1:{port}/0", model_dir)
    try:
        start_workers(stack, workers)
        job_ids = submit(stack, workers, "[[fault:slow=0.5]]", steps=10)
        wait_until(lambda: len(running(stack, job_ids)) == workers, what="every worker busy")
        holders = {j: jobs.get_job(stack.engine, j).worker_host for j in job_ids}  # type: ignore[union-attr]
        redis.Redis(port=port).client_kill_filter(_type="normal", skipme=True)
        rows = assert_exactly_once(stack, job_ids, "broker-connection-drop", workers)
        assert {j: (rows[j].attempts, rows[j].worker_host) for j in holders} == {
            j: (1, node) for j, node in holders.items()
        }
        logs = "".join(p.read_text(errors="replace") for p in stack.log_dir.glob("*.log"))
        deliveries = sum(logs.count(f"canary.render[{j}] received") for j in job_ids)
        assert deliveries > len(job_ids), "no message came back after the drop: nothing tested"
    finally:
        stack.stop_workers()
        broker.terminate()
        broker.wait()
