"""Per-process worker state: the bound version/device, its loaded model, storage, DB, the
background recorder and the storage guard (spool and breaker, tasks/spool.py).

This module sits low in tasks/: it imports nothing that renders, records or publishes
outcomes. What it needs from above (the Celery app, the recorder's record function, the
storage guard and the outcome events) it is handed by the worker's wiring,
:mod:`tasks.worker`, through :func:`install` (a :class:`Wiring`).

The model is loaded in the pool child (:func:`start_process`, on ``worker_process_init``),
never in the parent, so the parent process never initialises CUDA. The same hook re-sends
what a previous pool process of this node left unfinished, and :func:`stop_process`
(``worker_process_shutdown``, warm shutdown) drains the recorder before the process exits.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.engine import Engine

from canary.settings import Settings
from storage import revisions
from storage.db import get_engine
from storage.objects import ObjectStore, store_from_settings
from tasks import recovery
from tasks.pipelines import LoadedModel, load_pipeline_from
from tasks.recorder import Recorder
from tasks.registry import require_version_dir
from tasks.release import Releaser, releaser_for
from tasks.revisions import fetch

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)
# How long a warm shutdown waits for the recorder; what is left is re-sent on restart.
DRAIN_TIMEOUT_S = 120.0


class StorageGuardLike(Protocol):
    """What the context and the render task use of a storage guard (tasks/spool.py)."""

    @property
    def is_open(self) -> bool: ...

    def keep(
        self, item: Any, key: str, png: bytes, fields: dict[str, Any], upload_ms: float
    ) -> bool: ...

    def adopt(self, *, starting: bool = False) -> set[str]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class OutcomeReporter(Protocol):
    """What the recorder uses to report a job's outcome (tasks/outcome.py)."""

    def succeeded(self, task_id: str, result: str, runtime_s: float) -> None: ...

    def failed(self, task_id: str, kind: str, message: str) -> None: ...


@dataclass(frozen=True)
class Wiring:
    """What a worker process's context is handed by the modules above this one (built in
    one place, tasks/worker.py)."""

    settings: Settings  # read once, at the worker process's start (tasks/worker.py)
    app: Celery  # the process-wide Celery app (tasks.app)
    record: Callable[[WorkerContext, Any], None]  # the recorder's work (tasks.render.record)
    storage_guard: Callable[[WorkerContext], StorageGuardLike]  # tasks.spool.StorageGuard
    outcome_events: Callable[[Celery, str], OutcomeReporter]  # tasks.outcome.OutcomeEvents


@dataclass
class WorkerContext:
    wiring: Wiring
    model: LoadedModel | None = None
    load_error: str | None = None
    # time.monotonic() once this pool process has taken over what its node held (claims
    # made ahead before then are not trusted: tasks/claim_ahead.py); None in the parent
    ready_at: float | None = None

    @property
    def settings(self) -> Settings:
        """This worker process's settings (read once, at its start: tasks/worker.py)."""
        return self.wiring.settings

    @property
    def version(self) -> str | None:
        return self.settings.worker_model_version

    @property
    def device(self) -> str:
        return self.settings.worker_device

    @cached_property
    def engine(self) -> Engine:
        return get_engine(self.settings.resolved_database_url)

    @cached_property
    def releaser(self) -> Releaser:
        """Fair share's release of this version's held bulk jobs (tasks/release.py)."""
        return releaser_for(self.settings, self.engine, self.wiring.app)

    @cached_property
    def store(self) -> ObjectStore:
        return store_from_settings(self.settings)

    @cached_property
    def hostname(self) -> str:
        return socket.gethostname()

    @property
    def node(self) -> str:
        """This worker's Celery node name, unique per worker (tasks/nodes.py); job rows
        record it as ``worker_host``. `canary worker` sets it for the pool processes, so a
        replacement pool process has its predecessor's name and re-sends what it held."""
        return self.settings.worker_node or f"render-{self.version}@{self.hostname}"

    def worker_fields(self) -> dict[str, Any]:
        """What a claim records about who serves the job."""
        return {
            "worker_host": self.node,
            "worker_version": self.version,
            "device": self.device,
            "model_revision": self.model.revision if self.model else None,
        }

    @cached_property
    def recorder(self) -> Recorder[Any]:
        assert self.version is not None
        version = self.version
        record = self.wiring.record
        return Recorder(
            lambda item: record(self, item),
            capacity=self.settings.record_queue_size * self.settings.micro_batch,
            periodic=lambda: recovery.sweep(self.app, self.settings, self.engine, version),
            period_s=self.settings.recovery_sweep_every_s,
        )

    @cached_property
    def storage_guard(self) -> StorageGuardLike:
        """The spool of images waiting for the object store, and the breaker."""
        return self.wiring.storage_guard(self)

    @cached_property
    def outcomes(self) -> OutcomeReporter:
        """Task events for outcomes the recorder decides (used on its thread only)."""
        return self.wiring.outcome_events(self.app, self.node)

    @property
    def app(self) -> Celery:
        """The process-wide Celery app."""
        return self.wiring.app

    def ensure_model(self) -> LoadedModel:
        """The loaded model, loading it now if the process has none yet.

        The version's newest published revision (`canary hotfix`) wins over the registry
        folder, so a worker started after a hot fix serves the fixed weights.
        """
        if self.model is None:
            if self.version is None:
                raise RuntimeError("this worker is not bound to a model version")
            try:
                published = revisions.current(self.engine, self.version)
                if published is None:
                    folder = require_version_dir(self.settings.resolved_model_dir, self.version)
                else:
                    folder = fetch(published.source, self.settings, self.version)
                self.model = load_pipeline_from(
                    folder,
                    self.version,
                    self.device,
                    self.settings.torch_threads,
                    allow_stub=self.settings.benchmark_stubs,
                )
                self.load_error = None
            except Exception as exc:
                self.load_error = f"{type(exc).__name__}: {exc}"
                self.report(error=self.load_error)
                raise
            self.report()
        return self.model

    def swap(self, model: LoadedModel) -> None:
        """Serve ``model`` from the next job on (called between jobs)."""
        self.model = model
        self.report()

    def report(self, error: str | None = None) -> None:
        assert self.version is not None
        revision = self.model.revision if self.model else None
        revisions.report(self.engine, self.node, self.version, self.device, revision, error)


_wiring: Wiring | None = None
_context: WorkerContext | None = None


def install(wiring: Wiring) -> None:
    """Hand this process's context what it needs from above (tasks/worker.py, imported by
    every worker through the app's ``include``). Nothing is built yet: the context is made
    on first use, the model in the pool child."""
    global _wiring
    _wiring = wiring


def context() -> WorkerContext:
    global _context
    if _context is None:
        if _wiring is None:
            raise RuntimeError("this process has no worker wiring (tasks.worker installs it)")
        _context = WorkerContext(_wiring)
    return _context


def start_process() -> None:
    """In a new pool child (``worker_process_init``): load the model, take over what a
    previous process of this node left, start the recorder and the storage guard."""
    ctx = context()
    if ctx.version is None:
        return
    try:
        ctx.ensure_model()
    except Exception:
        log.exception("model %s failed to load on %s", ctx.version, ctx.device)
    try:
        # images a predecessor spooled are uploaded, not rendered again: take them first
        ctx.storage_guard.adopt(starting=True)
        recovery.recover_node(ctx.app, ctx.settings, ctx.engine, ctx.version, ctx.node)
        recovery.recover_dead_neighbours(ctx.app, ctx.settings, ctx.engine, ctx.version, ctx.node)
    except Exception:  # the periodic sweep catches up later
        log.exception("could not re-send the jobs left by %s's previous process", ctx.node)
    ctx.ready_at = time.monotonic()
    ctx.recorder  # noqa: B018  (start the thread before the first job)
    ctx.storage_guard.start()  # drains the spool; the breaker (tasks/spool.py)


def stop_process() -> None:
    """A pool child's warm shutdown (``worker_process_shutdown``): drain the recorder."""
    ctx = _context
    if ctx is None or "recorder" not in ctx.__dict__:
        return
    if not ctx.recorder.close(DRAIN_TIMEOUT_S):
        log.error("%d job(s) not recorded before shutdown; they are re-sent on restart",
                  ctx.recorder.pending)  # fmt: skip
    if "storage_guard" in ctx.__dict__:  # spooled images stay for this host's next worker
        ctx.storage_guard.stop()
