"""Object-store outages: rendered images wait on local disk, and the worker stops taking jobs.

When an upload has used up its retries (``CANARY_UPLOAD_ATTEMPTS``), the recorder does not
fail the job: it writes the PNG and what the job's success record needs to the spool
(``CANARY_SPOOL_DIR``, default ``CANARY_HOME/spool``, one folder per version) and leaves the
job RUNNING under this worker's node name. The worker's breaker opens: it cancels its
queue consumer (Celery's ``cancel_consumer``), so it takes no new job while storage is
down (the one or two messages it has already reserved still render, and go straight to the
spool), and every later image skips the upload retries. A background thread
(``canary-spool``) tries the oldest spooled image every ``CANARY_SPOOL_RETRY_S``; once one
is stored it uploads the rest, records each job SUCCEEDED with its original timings
(``upload_ms`` counts from the first upload attempt to the stored object, so it includes
the outage; ``end_to_end_ms`` too) and, with the spool empty, closes the breaker and
consumes its queue again. The state is published in the broker for `canary status` and
``/metrics`` (tasks/storage_health.py).

Files: ``<job>.png`` then ``<job>.json`` (the commit marker), each written to a temporary
name, fsynced and renamed, so an entry is either complete or absent; a PNG without its JSON
(a crash in between) is removed (its job is not spooled and recovery re-sends it).

Crash safety (see tasks/recovery.py):

- a spooled job is RUNNING under this node; the pool process that replaces a dead one
  (same node name) keeps the spooled jobs out of the jobs it re-sends (``recover_node``'s
  ``keep``) and drains them itself; a restarted worker (a new node name) on the same host
  takes over the entries of a dead predecessor of its version (tasks/node_locks.py) before
  it re-sends that predecessor's other jobs;
- while jobs wait in the spool the thread refreshes their ``started_at`` (every minute or
  so), so neither the sweep (RUNNING longer than the visibility timeout) nor another
  worker's claim guard (RUNNING longer than the hard time limit) takes them as lost; the
  success record puts the original ``started_at`` back;
- if the spool is lost with its host, the job is no longer refreshed: the sweep re-sends it
  after the visibility timeout and it renders again (same seed, same object key, one
  success record). Any conflict ends the same way: ``storage.jobs.finish`` records a job
  once, and the object key is the job's.
- the spool is bounded (``CANARY_SPOOL_MAX_IMAGES`` per version and host); an image that
  does not fit (or cannot be written) is dropped and its job goes back to the queue to be
  rendered again later. ``CANARY_SPOOL_MAX_IMAGES=0`` turns the spool off: the job then
  fails as ``storage_error``, as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from canary.contracts import queues_for
from storage import jobs
from storage.models import JobStatus, utcnow
from tasks import node_locks, storage_health
from tasks.outcome import OutcomeEvents
from tasks.queues import node_online, set_consuming
from tasks.recovery import resend

if TYPE_CHECKING:
    from tasks.render import Rendered
    from tasks.worker_state import WorkerContext

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,150}$")
TEMP_SUFFIX = ".spool-tmp"
STALE_TEMP_S = 3600.0  # a temporary file this old was left by a dead process
HEARTBEAT_MAX_S = 60.0
HOLDER_MARK = "+spool"
CONTROL_TIMEOUT_S = 2.0


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:  # SQLite hands back naive UTC datetimes
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def _parse(text: str | None) -> datetime | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _ms_between(later: datetime, earlier: datetime | None) -> float | None:
    if earlier is None:
        return None
    if earlier.tzinfo is None:
        earlier = earlier.replace(tzinfo=UTC)
    if later.tzinfo is None:
        later = later.replace(tzinfo=UTC)
    return (later - earlier).total_seconds() * 1000


@dataclass
class SpooledJob:
    """What finishing a spooled job needs besides its PNG (the ``.json`` of an entry)."""

    job_id: str
    key: str  # the object key the image goes to
    version: str
    node: str  # the worker that drains it (the job's holder)
    task_id: str  # whose Celery outcome the drain reports
    fields: dict[str, Any]  # storage.jobs.finish keyword arguments known at render time
    created_at: str
    started_at: str  # the claim's time, put back by the success record
    upload_started_at: str  # the first upload attempt (upload_ms counts from it)
    spooled_at: str = field(default_factory=lambda: _iso(utcnow()))
    rendered_by: str | None = None  # the node that rendered it (the success record says so)

    @property
    def name(self) -> str:
        return entry_name(self.job_id)


def spool_holder(node: str) -> str:
    """The ``worker_host`` of a job waiting in ``node``'s spool: ``name+spool@host``.
    Recovery re-sends the jobs of a node name (its own after a pool process restart, a
    dead neighbour's); under this name a spooled job is not among them, and a stray
    delivery of its message finds it held (storage.jobs.claim_job)."""
    name, at, host = node.rpartition("@")
    return f"{name}{HOLDER_MARK}@{host}" if at else f"{node}{HOLDER_MARK}"


def holder_node(holder: str) -> str:
    """The node name behind a spool holder (``name+spool@host`` -> ``name@host``)."""
    name, at, host = holder.rpartition("@")
    if at and name.endswith(HOLDER_MARK):
        return f"{name.removesuffix(HOLDER_MARK)}@{host}"
    return holder.removesuffix(HOLDER_MARK)


def entry_name(job_id: str) -> str:
    """The file name stem of a job's entry: the id itself when it is a plain file name."""
    if _SAFE_NAME.match(job_id):
        return job_id
    return "job-" + hashlib.sha256(job_id.encode()).hexdigest()


class Spool:
    """A directory of entries (``<name>.png`` + ``<name>.json``), at most ``max_images``."""

    def __init__(self, root: Path, max_images: int) -> None:
        self.root = root
        self.max_images = max_images

    @property
    def enabled(self) -> bool:
        return self.max_images > 0

    def put(self, entry: SpooledJob, png: bytes) -> bool:
        """Write an entry atomically; False when the spool is off or full (nothing kept).
        Raises OSError when the disk refuses (the caller treats it as full)."""
        if not self.enabled:
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.holds(entry.job_id) and self.count() >= self.max_images:
            return False
        png_path, json_path = self._paths(entry.name)
        try:
            _write_atomic(png_path, png)
            _write_atomic(json_path, json.dumps(asdict(entry), sort_keys=True).encode())
        except BaseException:
            if not json_path.exists():
                png_path.unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)
        return True

    def rewrite(self, entry: SpooledJob) -> None:
        """Replace an entry's description (a new holder), atomically."""
        _write_atomic(
            self._paths(entry.name)[1], json.dumps(asdict(entry), sort_keys=True).encode()
        )

    def entries(self) -> list[SpooledJob]:
        """Complete entries, oldest first; cleans up halves and stale temporary files."""
        if not self.root.is_dir():
            return []
        found = []
        now = time.time()
        for path in self.root.iterdir():
            name = path.name
            if name.endswith(TEMP_SUFFIX):
                if _age_s(path, now) > STALE_TEMP_S:
                    path.unlink(missing_ok=True)
                continue
            if name.endswith(".png") and not path.with_suffix(".json").exists():
                if _age_s(path, now) > 60:  # a PNG whose JSON is being written is young
                    log.warning("removing %s: its job was never spooled completely", path)
                    path.unlink(missing_ok=True)
                continue
            if not name.endswith(".json"):
                continue
            try:
                entry = SpooledJob(**json.loads(path.read_bytes()))
            except (OSError, ValueError, TypeError):
                log.exception("unreadable spool entry %s; leaving it for an operator", path)
                continue
            if not path.with_suffix(".png").exists():
                log.error("spool entry %s has no image; removing it", path)
                path.unlink(missing_ok=True)
                continue
            found.append(entry)
        return sorted(found, key=lambda e: (e.spooled_at, e.job_id))

    def read_png(self, entry: SpooledJob) -> bytes:
        return self._paths(entry.name)[0].read_bytes()

    def remove(self, entry: SpooledJob) -> None:
        png_path, json_path = self._paths(entry.name)
        json_path.unlink(missing_ok=True)  # the marker first: never a JSON without its PNG
        png_path.unlink(missing_ok=True)

    def holds(self, job_id: str) -> bool:
        return self._paths(entry_name(job_id))[1].exists()

    def count(self) -> int:
        if not self.root.is_dir():
            return 0
        return sum(1 for path in self.root.glob("*.json"))

    def _paths(self, name: str) -> tuple[Path, Path]:
        return self.root / f"{name}.png", self.root / f"{name}.json"


def _age_s(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return 0.0


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{TEMP_SUFFIX}")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class StorageGuard:
    """A worker process's spool, breaker and drain thread (one per pool process)."""

    def __init__(self, ctx: WorkerContext) -> None:
        assert ctx.version is not None
        self.ctx = ctx
        self.version = ctx.version
        self.node = ctx.node
        self.holder = spool_holder(self.node)
        self.spool = Spool(
            ctx.settings.resolved_spool_dir / self.version, ctx.settings.spool_max_images
        )
        self.retry_s = ctx.settings.spool_retry_s
        self.heartbeat_s = min(
            HEARTBEAT_MAX_S,
            ctx.settings.task_time_limit_s / 4,
            ctx.settings.visibility_timeout_s / 4,
        )
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._open_since: datetime | None = None
        self._last_error: str | None = None
        self._consuming: bool | None = None  # unknown until the first change is confirmed
        self._spooled_total = 0
        self._uploads_total = 0
        self._requeued_total = 0
        self._next_heartbeat = 0.0
        self._thread: threading.Thread | None = None
        self._outcomes: OutcomeEvents | None = None

    # --- the recorder's side ---------------------------------------------------------

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._open_since is not None

    def holds(self, job_id: str) -> bool:
        """Whether the job waits in the spool (its image is rendered: not again)."""
        return self.spool.enabled and self.spool.holds(job_id)

    def keep(
        self, item: Rendered, key: str, png: bytes, fields: dict[str, Any], upload_ms: float
    ) -> bool:
        """Spool a job whose upload failed and open the breaker; True when the job is taken
        care of (spooled, or sent back to the queue when the spool is full), False when the
        spool is off (the caller fails the job as before)."""
        if not self.spool.enabled:
            return False
        started = utcnow()
        entry = SpooledJob(
            job_id=item.job_id,
            key=key,
            version=self.version,
            node=self.node,
            task_id=item.pending.task_id,
            rendered_by=self.node,
            fields=fields,
            created_at=_iso(item.pending.claimed.created_at),
            started_at=_iso(item.started_at),
            upload_started_at=_iso(
                datetime.fromtimestamp(started.timestamp() - upload_ms / 1000, tz=UTC)
            ),
        )
        try:
            kept = self.spool.put(entry, png)
        except OSError as exc:
            log.error("cannot spool job %s (%s)", item.job_id, exc)
            kept = False
        if kept:  # from now on recovery leaves it to this spool (see spool_holder)
            jobs.hold_running(self.ctx.engine, [item.job_id], self.holder, take_from=[self.node])
        with self._lock:
            self._open_since = self._open_since or started
            if kept:
                self._spooled_total += 1
        self.start()
        self._wake.set()
        if kept:
            log.warning("object store unavailable: job %s spooled at %s (%d waiting)", item.job_id,
                        self.spool.root, self.spool.count())  # fmt: skip
            return True
        # full or unwritable: the image is lost, the job is not: it renders again later
        log.error("spool %s full (%d images) or unwritable: job %s goes back to the queue",
                  self.spool.root, self.spool.max_images, item.job_id)  # fmt: skip
        resend(self.ctx.app, self.ctx.settings, jobs.release(self.ctx.engine, [item.job_id]))
        with self._lock:
            self._requeued_total += 1
        return True

    # --- start-up ---------------------------------------------------------------------

    def adopt(self, *, starting: bool = False) -> set[str]:
        """Take over the spooled jobs this worker can finish: its own, those of a dead
        predecessor of its version on this host (and those re-sent by recovery meanwhile);
        returns the ids of the spooled jobs it now holds (recovery must not re-send them).
        Removes entries whose job is no longer RUNNING."""
        if not self.spool.enabled:
            return set()
        mine: set[str] = set()
        gone: dict[str, bool] = {}  # holder -> dead (one look per holder: a ping may wait)
        for entry in self.spool.entries():
            row = jobs.get_job(self.ctx.engine, entry.job_id)
            if row is None or row.status != JobStatus.RUNNING:
                # finished, or back in the queue to be rendered again: the image is not needed
                self.spool.remove(entry)
                continue
            holder = row.worker_host
            if holder == self.holder:
                mine.add(entry.job_id)
            elif holder in (None, self.node) or self._gone(holder, gone):
                taken = jobs.hold_running(
                    self.ctx.engine, [entry.job_id], self.holder, take_from=[holder]
                )
                if taken:
                    if holder != self.node:
                        log.warning("taking over spooled job %s from %s", entry.job_id, holder)
                    mine.add(entry.job_id)
            else:
                continue  # a live worker's (another worker of this version on this host)
            if entry.job_id in mine and entry.node != self.node:
                entry.node = self.node
                self.spool.rewrite(entry)
        if mine and starting:
            log.warning("%d job(s) wait in the spool %s; uploading them when storage answers",
                        len(mine), self.spool.root)  # fmt: skip
        return mine

    def _gone(self, holder: str, known: dict[str, bool]) -> bool:
        if holder not in known:
            known[holder] = self._dead_here(holder_node(holder))
        return known[holder]

    def _dead_here(self, node: str) -> bool:
        """A worker of this host whose process is gone: its lock is free
        (tasks/node_locks.py), or gone with a warm shutdown and nobody answers to its name."""
        if node.rpartition("@")[2] != self.node.rpartition("@")[2]:
            return False  # another host's spool is not here
        if (node_locks.LOCK_DIR / node).exists():
            return node_locks.is_dead(node)
        return not node_online(self.ctx.app, node, CONTROL_TIMEOUT_S)

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or not self.spool.enabled:
                return
            self._thread = threading.Thread(target=self._run, name="canary-spool", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(Exception):  # the key expires anyway
            storage_health.withdraw(self.ctx.app, self.node)

    # --- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        next_drain = 0.0  # at once: a predecessor may have left images
        while not self._stop.is_set():
            if time.monotonic() >= next_drain:
                try:
                    self.drain_once()
                except Exception:
                    log.exception("draining the spool failed; trying again in %.0f s", self.retry_s)
                next_drain = time.monotonic() + self.retry_s
            self._sync_consumer()
            self._publish()
            self._wake.wait(max(0.05, min(self.retry_s, next_drain - time.monotonic())))
            self._wake.clear()

    def drain_once(self) -> int:
        """Upload and record spooled jobs until one upload fails; returns how many."""
        mine = self.adopt()
        entries = [e for e in self.spool.entries() if e.job_id in mine]
        self._heartbeat([e.job_id for e in entries])
        done = 0
        for entry in entries:
            started = time.perf_counter()
            try:
                self.ctx.store.put(entry.key, self.spool.read_png(entry), content_type="image/png")
            except Exception as exc:
                with self._lock:
                    self._open_since = self._open_since or utcnow()
                    self._last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("object store still unavailable (%s); %d image(s) spooled",
                            self._last_error, len(entries) - done)  # fmt: skip
                return done
            self._record(entry, (time.perf_counter() - started) * 1000)
            done += 1
        left = [e for e in self.spool.entries() if e.node == self.node]  # spooled meanwhile?
        with self._lock:
            if self._open_since is not None and not left:
                log.warning("object store answers again: breaker closed after %s (%d image(s) "
                            "uploaded)", utcnow() - self._open_since, done)  # fmt: skip
                self._open_since = None
                self._last_error = None
        return done

    def _record(self, entry: SpooledJob, put_ms: float) -> None:
        finished_at = utcnow()
        upload_started = _parse(entry.upload_started_at)
        started_at = _parse(entry.started_at)
        recorded = jobs.finish(
            self.ctx.engine,
            entry.job_id,
            JobStatus.SUCCEEDED,
            finished_at=finished_at,
            started_at=started_at,  # the heartbeat moved it; the record keeps the claim's
            worker_host=entry.rendered_by or self.node,  # not the spool holder name
            upload_ms=_ms_between(finished_at, upload_started) or put_ms,
            end_to_end_ms=_ms_between(finished_at, _parse(entry.created_at)),
            **entry.fields,
        )
        with self._lock:
            self._uploads_total += 1
        if recorded:
            if self._outcomes is None:  # its own connection: not the recorder thread's
                self._outcomes = OutcomeEvents(self.ctx.app, self.node)
            runtime_s = (_ms_between(finished_at, started_at) or 0.0) / 1000
            self._outcomes.succeeded(
                entry.task_id, f"{JobStatus.SUCCEEDED.value} {entry.key}", runtime_s
            )
            log.info("spooled job %s uploaded and recorded", entry.job_id)
        self.spool.remove(entry)

    def _heartbeat(self, job_ids: list[str]) -> None:
        if not job_ids or time.monotonic() < self._next_heartbeat:
            return
        jobs.hold_running(self.ctx.engine, job_ids, self.holder)
        self._next_heartbeat = time.monotonic() + self.heartbeat_s

    def _sync_consumer(self) -> None:
        """Stop consuming the version's queues while the breaker is open, resume after
        (re-added highest class first: the order of consumption is the priority)."""
        want = not self.is_open
        if self._consuming is want:
            return
        queues = queues_for(self.version)
        try:
            answered = set_consuming(self.ctx.app, self.node, queues, want, CONTROL_TIMEOUT_S)
        except Exception as exc:
            doing = "consume" if want else "stop consuming"
            log.warning("could not tell %s to %s %s: %s", self.node, doing, queues, exc)
            return
        if answered:
            was, self._consuming = self._consuming, want
            if want:
                if was is False:
                    log.warning("breaker closed: consuming %s again", ", ".join(queues))
            else:
                log.warning(
                    "breaker open: stopped consuming %s until storage answers", ", ".join(queues)
                )

    def state(self) -> storage_health.BreakerState:
        own = sum(1 for entry in self.spool.entries() if entry.node == self.node)
        with self._lock:
            return storage_health.BreakerState(
                node=self.node,
                version=self.version,
                open=self._open_since is not None,
                open_since=_iso(self._open_since) if self._open_since else None,
                spooled=own,
                spool_dir=str(self.spool.root),
                spooled_total=self._spooled_total,
                uploads_total=self._uploads_total,
                requeued_total=self._requeued_total,
                last_error=self._last_error,
            )

    def _publish(self) -> None:
        try:
            storage_health.publish(self.ctx.app, self.state(), ttl_s=max(15.0, 3 * self.retry_s))
        except Exception as exc:  # the broker may be away too; the next cycle tries again
            log.debug("could not publish the breaker state: %s", exc)
