"""What Celery (and so Flower) reports for a render: the job's outcome, not the hand-over.

A job that ends FAILED in the database ends in Celery's FAILURE state, with the failure
kind at the start of the exception message (``JobFailed('nsfw_filtered: ...')``), so
Flower's counters and filters, ``celery events`` and the database agree.

- A failure found inside the task (invalid job, model load, OOM, timeout, lost worker)
  raises :class:`JobFailed` once the row is FAILED; with late acks and
  ``task_acks_on_failure_or_timeout`` the message is acknowledged, never re-queued.
- A rendered job returns ``RENDERED`` when its image is handed to the recorder
  (tasks/recorder.py): success or failure is known only once the recorder has checked,
  uploaded and recorded it. :class:`RenderRequest` keeps the worker's main process from
  announcing that hand-over (or a pass-on: re-routed, held by another worker, already
  finished) as a success, and :class:`OutcomeEvents` sends the real ``task-succeeded``
  or ``task-failed`` event from the recorder thread under the task's id (the job id).

A job whose recorder process dies before recording stays STARTED in Flower until the
recovery re-sends it under the same task id (tasks/recovery.py) and it finishes there.

A duplicate delivery of a finished job (:func:`skip_duplicate`) sends no outcome event, so
Flower keeps the job's real one (SUCCESS with its result, or FAILURE); the worker logs one
INFO line saying it skipped it. When a pool process dies (``WorkerLostError``: a signal,
SIGKILL also being the OOM killer's, or an exit code) or a hard time limit kills it, the
worker's main process records the lost attempt of every job the process held, with how
many other jobs it held (``job_attempts``, storage.jobs.record_process_loss): the
``worker_lost`` failure message and the operator's job view list them.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Celery
from celery.exceptions import TimeLimitExceeded
from celery.utils.saferepr import saferepr
from celery.worker.request import Request

from storage import jobs
from storage.models import FailureKind
from tasks.worker_state import context

log = logging.getLogger(__name__)

RENDERED = "RENDERED"  # handed to the recorder, which reports the outcome
REROUTED = "REROUTED"  # sent on to its version's queue under the same task id
HELD = "HELD"  # another worker (or a micro-batch here) holds the job and reports it
ALREADY_FINISHED = "ALREADY_FINISHED"  # a duplicate delivery; the outcome was reported
STEPPED_ASIDE = "STEPPED_ASIDE"  # given back for a job of a higher class, sent again
PASSED_ON = frozenset({RENDERED, REROUTED, HELD, ALREADY_FINISHED, STEPPED_ASIDE})
# The worker's main process gets the task's return value as its repr.
_PASSED_ON_REPRS = PASSED_ON | {repr(value) for value in PASSED_ON}


def skip_duplicate(job_id: str, status: str) -> str:
    """A delivery of a job that has finished (a broker redelivery, a recovery re-send):
    nothing is rendered, and nothing Celery or Flower shows changes. The task's outcome
    event is the one its finishing delivery sent (this one's is not sent, see
    :class:`RenderRequest`); the log says what happened."""
    log.info("job %s is %s already: skipped a duplicate delivery (not rendered again)",
             job_id, status)  # fmt: skip
    return ALREADY_FINISHED


class JobFailed(Exception):
    """The job is FAILED in the database; the message starts with the failure kind."""

    @classmethod
    def of(cls, kind: str, message: str) -> JobFailed:
        return cls(f"{kind}: {message}")


class RenderRequest(Request):  # type: ignore[misc]  # Celery ships no type hints
    """The render task's request in the worker's main process (``Task.Request``)."""

    _cause: BaseException | None = None
    _failure_sent = False
    _hard_timeout = False

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if not soft:
            self._cause = TimeLimitExceeded(timeout)
            self._hard_timeout = True
            # the job itself fails as timed out (tasks/render.py); what else its process
            # held (recorder, micro-batch) is lost with it
            self._record_loss(f"the hard time limit ({timeout:g} s) of job {self._job_id}",
                              job_itself=False)  # fmt: skip
        super().on_timeout(soft, timeout)

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        # billiard hands exceptions over wrapped (ExceptionWithTraceback), and Celery puts
        # the wrapper's empty repr in the task-failed event: keep the real one for it.
        exception = exc_info.exception
        self._cause = getattr(exception, "exc", exception)
        if isinstance(self._cause, WorkerLostError) and not self._hard_timeout:
            # before the message is requeued (task_reject_on_worker_lost), so the next
            # delivery's attempt finds this one's cause recorded
            self._record_loss(_death(self._cause))
        return super().on_failure(exc_info, send_failed_event, return_ok)

    @property
    def _job_id(self) -> str:
        args = self.args
        return str(args[0]) if args else str(self.id)  # the task id is the job id too

    def _record_loss(self, cause: str, *, job_itself: bool = True) -> None:
        """Record how the pool process running this job died, for every job it held."""
        try:
            ctx = context()
            lost = jobs.record_process_loss(
                ctx.engine, ctx.node, self._job_id, cause, job_itself=job_itself
            )
        except Exception:  # the recovery records what it can instead
            log.exception("could not record the loss of job %s (%s)", self._job_id, cause)
            return
        if lost:
            log.warning("pool process of %s lost job(s) %s: %s", ctx.node, ", ".join(lost), cause)

    def send_event(self, type: str, **fields: Any) -> None:
        if type == "task-succeeded" and fields.get("result") in _PASSED_ON_REPRS:
            return  # not an outcome: whoever finishes the job sends it
        if type == "task-failed":
            # A hard time limit reaches both on_timeout and on_failure, and Celery sends
            # task-failed from each: Flower would count the job's failure twice.
            if self._failure_sent:
                return
            self._failure_sent = True
            if self._cause is not None:
                fields["exception"] = _failure_repr(self._cause)
        super().send_event(type, **fields)


def _death(lost: WorkerLostError) -> str:
    """How a pool process died, from billiard's "Worker exited prematurely: signal 9
    (SIGKILL) Job: 3." (SIGKILL is also what the kernel's OOM killer sends)."""
    text = str(lost)
    if match := re.search(r"signal (\d+) \((\w+)\)", text):
        return match[2] if match[2] != "SIGKILL" else "SIGKILL (killed, e.g. by the OOM killer)"
    if match := re.search(r"exitcode (-?\d+)", text):
        return f"exit code {match[1]}"
    return text.removeprefix("Worker exited prematurely: ") or "died without an exit status"


def _failure_repr(cause: BaseException) -> str:
    if isinstance(cause, TimeLimitExceeded):
        # the hard limit killed the pool process; the job row says `timeout` (render.py)
        hard = f"hard time limit exceeded ({cause.args[0] if cause.args else '?'} s)"
        return repr(JobFailed.of(FailureKind.TIMEOUT.value, hard))
    shown: str = saferepr(cause)
    return shown


class OutcomeEvents:
    """Sends a job's final task event from a worker's pool process.

    Used from the recorder thread only (one connection, not shared); an event that
    cannot be sent is logged and dropped, never allowed to fail the record.
    """

    def __init__(self, app: Celery, hostname: str) -> None:
        self._app = app
        self._hostname = hostname
        self._enabled = bool(app.conf.worker_send_task_events)
        self._connection: Any = None
        self._dispatcher: Any = None

    def succeeded(self, task_id: str, result: str, runtime_s: float) -> None:
        self._send("task-succeeded", uuid=task_id, result=repr(result), runtime=runtime_s)

    def failed(self, task_id: str, kind: str, message: str) -> None:
        exception = repr(JobFailed.of(kind, message))
        self._send("task-failed", uuid=task_id, exception=exception, traceback=None)

    def _send(self, type_: str, **fields: Any) -> None:
        if not self._enabled:
            return
        try:
            if self._dispatcher is None:
                self._connection = self._app.connection_for_write()
                self._dispatcher = self._app.events.Dispatcher(
                    self._connection, hostname=self._hostname, enabled=True
                )
            self._dispatcher.send(type_, **fields)
        except Exception as exc:  # the broker may be away; the job row is what counts
            log.warning("could not send %s for %s: %s", type_, fields.get("uuid"), exc)
            self.close()

    def close(self) -> None:
        for closable in (self._dispatcher, self._connection):
            try:
                if closable is not None:
                    closable.close()
            except Exception:
                pass  # closing a broken connection
        self._dispatcher = self._connection = None
