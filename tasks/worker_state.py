"""Per-process worker state: the bound version/device, its loaded model, storage, DB, the
background recorder and the storage guard (spool and breaker, tasks/spool.py).

The model is loaded in the pool child (``worker_process_init``), never in the parent,
so the parent process never initialises CUDA. The same hook re-sends what a previous
pool process of this node left unfinished, and ``worker_process_shutdown`` (warm
shutdown) drains the recorder before the process exits.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from celery.signals import worker_process_init, worker_process_shutdown
from sqlalchemy.engine import Engine

from canary.settings import Settings, get_settings
from storage.db import get_engine
from storage.objects import ObjectStore, store_from_settings
from tasks import recovery, revisions
from tasks.outcome import OutcomeEvents
from tasks.pipelines import LoadedModel, load_pipeline_from
from tasks.recorder import Recorder
from tasks.registry import require_version_dir

if TYPE_CHECKING:
    from tasks.render import Rendered
    from tasks.spool import StorageGuard

log = logging.getLogger(__name__)
# How long a warm shutdown waits for the recorder; what is left is re-sent on restart.
DRAIN_TIMEOUT_S = 120.0


@dataclass
class WorkerContext:
    settings: Settings
    model: LoadedModel | None = None
    load_error: str | None = None

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
    def recorder(self) -> Recorder[Rendered]:
        from tasks.render import record

        assert self.version is not None
        version = self.version
        return Recorder(
            lambda item: record(self, item),
            capacity=self.settings.record_queue_size * self.settings.micro_batch,
            periodic=lambda: recovery.sweep(self.app, self.settings, self.engine, version),
            period_s=self.settings.recovery_sweep_every_s,
        )

    @cached_property
    def storage_guard(self) -> StorageGuard:
        """The spool of images waiting for the object store, and the breaker."""
        from tasks.spool import StorageGuard

        return StorageGuard(self)

    @cached_property
    def outcomes(self) -> OutcomeEvents:
        """Task events for outcomes the recorder decides (used on its thread only)."""
        return OutcomeEvents(self.app, self.node)

    @property
    def app(self):  # type: ignore[no-untyped-def]
        """The process-wide Celery app (imported late: tasks.app imports this module)."""
        from tasks.app import app

        return app

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
                    folder = revisions.fetch(published.source, self.settings, self.version)
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


_context: WorkerContext | None = None


def context() -> WorkerContext:
    global _context
    if _context is None:
        _context = WorkerContext(get_settings())
    return _context


@worker_process_init.connect
def _load_model_in_child(**_: object) -> None:
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
    ctx.recorder  # noqa: B018  (start the thread before the first job)
    ctx.storage_guard.start()  # drains the spool; the breaker (tasks/spool.py)


@worker_process_shutdown.connect
def _drain_recorder(**_: object) -> None:
    ctx = _context
    if ctx is None or "recorder" not in ctx.__dict__:
        return
    if not ctx.recorder.close(DRAIN_TIMEOUT_S):
        log.error("%d job(s) not recorded before shutdown; they are re-sent on restart",
                  ctx.recorder.pending)  # fmt: skip
    if "storage_guard" in ctx.__dict__:  # spooled images stay for this host's next worker
        ctx.storage_guard.stop()
