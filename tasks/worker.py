"""A render worker's wiring: the one place that hands the worker context what it needs.

:mod:`tasks.worker_state` sits below the modules that render, record and report
outcomes; this module, imported by every worker process through the app's ``include``
(tasks/app.py) before the pool forks, gives it the Celery app, the recorder's record
function, the storage guard and the outcome events, and connects the pool-process hooks:

- ``worker_process_init``: the pool child loads the model and re-sends what its
  predecessor left (:func:`tasks.worker_state.start_process`); the parent process never
  loads the model, so it never initialises CUDA;
- ``worker_process_shutdown``: a warm shutdown drains the recorder
  (:func:`tasks.worker_state.stop_process`).

The worker process is an entry point: its settings are read here, once (tasks.app has
read and cached them already), and handed down. Importing this module builds nothing
else: the context is made on first use.
"""

from __future__ import annotations

from celery.signals import worker_process_init, worker_process_shutdown

from canary.settings import get_settings
from tasks import worker_state
from tasks.app import app
from tasks.outcome import OutcomeEvents
from tasks.render import record
from tasks.spool import StorageGuard

worker_state.install(
    worker_state.Wiring(
        settings=get_settings(),  # the worker process is an entry point: read once, here
        app=app,
        record=record,
        storage_guard=StorageGuard,
        outcome_events=OutcomeEvents,
    )
)


@worker_process_init.connect  # type: ignore[untyped-decorator]  # Celery ships no type hints
def _start_pool_process(**_: object) -> None:
    worker_state.start_process()


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]  # Celery ships no type hints
def _stop_pool_process(**_: object) -> None:
    worker_state.stop_process()
