"""What the periodic jobs of one scheduler worker process share.

A periodic job's task body, run by the scheduler worker (`canary scheduler-worker`), is an
entry point: the settings are read here, once per process, and the database engine, the
object store and the golden runs' gateway are built once, on first use, and shared by
every periodic job the process runs. The functions the task bodies call take these as
parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

from sqlalchemy.engine import Engine

from canary.settings import Settings, get_settings
from gateway.service import Gateway
from storage.db import get_engine
from storage.objects import ObjectStore, store_from_settings
from tasks.app import app


@dataclass
class SchedulerContext:
    settings: Settings

    @cached_property
    def engine(self) -> Engine:
        return get_engine(self.settings.resolved_database_url)

    @cached_property
    def store(self) -> ObjectStore:
        return store_from_settings(self.settings)

    @cached_property
    def gateway(self) -> Gateway:
        """The gateway the golden runs submit through (on the process-wide app)."""
        return Gateway(self.settings, self.engine, app)


@lru_cache(maxsize=1)
def context() -> SchedulerContext:
    """This process's context, made on first use."""
    return SchedulerContext(get_settings())
