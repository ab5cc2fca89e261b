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
from tasks.pipelines import LoadedModel, load_pipeline

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

    def ensure_model(self) -> LoadedModel:
        """The loaded model, loading it now if the process has none yet."""
        if self.model is None:
            if self.version is None:
                raise RuntimeError("this worker is not bound to a model version")
            try:
                self.model = load_pipeline(
                    self.settings.resolved_model_dir,
                    self.version,
                    self.device,
                    self.settings.torch_threads,
                )
                self.load_error = None
            except Exception as exc:
                self.load_error = f"{type(exc).__name__}: {exc}"
                raise
        return self.model


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
