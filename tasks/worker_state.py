"""Per-process worker state: the bound version/device, its loaded model, storage and DB.

The model is loaded in the pool child (``worker_process_init``), never in the parent,
so the parent process never initialises CUDA.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from functools import cached_property

from celery.signals import worker_process_init
from sqlalchemy.engine import Engine

from canary.settings import Settings, get_settings
from storage.db import get_engine
from storage.objects import ObjectStore, store_from_settings
from tasks import revisions
from tasks.pipelines import LoadedModel, load_pipeline_from
from tasks.registry import require_version_dir

log = logging.getLogger(__name__)


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
        return self.settings.worker_node or f"render-{self.version}@{self.hostname}"

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
                    folder, self.version, self.device, self.settings.torch_threads
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
