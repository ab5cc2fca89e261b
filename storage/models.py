"""Database tables (SQLModel). Times are UTC; durations are milliseconds."""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Column, DateTime, Index
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED)


class FailureKind(StrEnum):
    BLACK_IMAGE = "black_image"
    BLANK_IMAGE = "blank_image"
    NAN_OUTPUT = "nan_output"
    NSFW_FILTERED = "nsfw_filtered"
    OOM = "oom"
    TIMEOUT = "timeout"
    MODEL_LOAD = "model_load"
    STORAGE_ERROR = "storage_error"
    INVALID_JOB = "invalid_job"
    ENQUEUE_ERROR = "enqueue_error"
    WORKER_LOST = "worker_lost"
    ERROR = "error"


def _utc_column(*, nullable: bool = True, index: bool = False) -> Column[datetime]:
    return Column(DateTime(timezone=True), nullable=nullable, index=index)


class Job(SQLModel, table=True):
    """One render request and everything the worker learned while serving it."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_version_status", "model_version", "status"),
        # a key's jobs, and its queued and running ones for its limit (gateway/key_limits.py)
        Index("ix_jobs_api_key_status", "api_key_id", "status"),
    )

    id: str = Field(primary_key=True, max_length=36)
    idempotency_key: str | None = Field(default=None, unique=True, max_length=300)
    user_id: str | None = Field(default=None, index=True, max_length=200)
    source: str = Field(default="api", max_length=32)
    batch_id: str | None = Field(default=None, index=True, max_length=64)
    # a shadow job (source "shadow", gateway/shadow.py): the live job it copies
    shadow_of: str | None = Field(default=None, index=True, max_length=36)
    # its queue's class, highest first: interactive | bulk | background
    # (canary.contracts.PriorityClass); a re-send goes to the same class's queue
    priority_class: str = Field(
        default="bulk", max_length=16, sa_column_kwargs={"server_default": "bulk"}
    )

    # the assignment (experiment is None when the caller pinned the version)
    experiment: str | None = Field(default=None, max_length=100)
    arm: str | None = Field(default=None, max_length=16)
    segment: str | None = Field(default=None, max_length=32)
    api_key_id: str | None = Field(default=None, max_length=36)

    # the spec
    model_version: str = Field(max_length=64)
    prompt: str
    negative_prompt: str = ""
    seed: int = Field(sa_column=Column(BigInteger, nullable=False))
    steps: int
    guidance: float
    width: int
    height: int

    # lifecycle
    status: str = Field(default=JobStatus.QUEUED, max_length=16)
    attempts: int = 0
    misroutes: int = 0  # deliveries to a worker of another version (re-routed, not rendered)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_utc_column(index=True))
    enqueued_at: datetime | None = Field(default=None, sa_column=_utc_column())
    started_at: datetime | None = Field(default=None, sa_column=_utc_column())
    finished_at: datetime | None = Field(default=None, sa_column=_utc_column())

    # what served it
    worker_host: str | None = Field(default=None, max_length=255)
    worker_version: str | None = Field(default=None, max_length=64)
    device: str | None = Field(default=None, max_length=32)
    model_revision: str | None = Field(default=None, max_length=64)

    # outcome
    image_key: str | None = Field(default=None, max_length=512)
    failure_kind: str | None = Field(default=None, max_length=32, index=True)
    failure_message: str | None = None

    # timings (ms) and memory
    queue_wait_ms: float | None = None
    inference_ms: float | None = None
    upload_ms: float | None = None
    end_to_end_ms: float | None = None
    peak_vram_bytes: int | None = Field(default=None, sa_column=Column(BigInteger))


class JobAttempt(SQLModel, table=True):
    """An attempt of a job whose worker was lost, and how: so an operator can tell a poison
    job (the same death every time) from bad luck (unrelated crashes). Written by the
    worker's main process when it sees its pool process die, else by the recovery that
    re-sends the job (see tasks/outcome.py, tasks/recovery.py)."""

    __tablename__ = "job_attempts"

    job_id: str = Field(primary_key=True, max_length=36)
    attempt: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    node: str | None = Field(default=None, max_length=255)  # the worker it was lost on
    lost_at: datetime = Field(default_factory=utcnow, sa_column=_utc_column(nullable=False))
    # how the pool process died: "SIGKILL" (also what an OOM kill sends), "signal 11
    # (SIGSEGV)", "exit code 1", "hard time limit of job <id>", or what recovery found
    cause: str = Field(max_length=300)
    detected_by: str = Field(max_length=32)  # pool | restart | neighbour | sweep
    other_jobs: int = 0  # other jobs in the same pool process at the time


class Arm(StrEnum):
    BASELINE = "baseline"
    CANDIDATE = "candidate"


class Assignment(SQLModel, table=True):
    """A user's sticky assignment in an experiment; also its exposure record.

    One row per (experiment, user), written on first exposure. ``segment`` is the segment at
    that moment and stays the user's stratum. ``arm`` only ever moves baseline -> candidate
    (a ramp-up reaching the user's bucket); a rollback overrides it without rewriting it.
    """

    __tablename__ = "assignments"

    experiment: str = Field(primary_key=True, max_length=100)
    user_id: str = Field(primary_key=True, max_length=200)
    arm: str = Field(max_length=16)
    variant: str = Field(max_length=64)
    segment: str = Field(max_length=32)
    stage: str = Field(max_length=100)
    first_seen: datetime = Field(default_factory=utcnow, sa_column=_utc_column(index=True))
    last_seen: datetime = Field(default_factory=utcnow, sa_column=_utc_column())
    promoted_at: datetime | None = Field(default=None, sa_column=_utc_column())


class UserProfile(SQLModel, table=True):
    """What is known about a user beyond their jobs (first report of sign-up time wins)."""

    __tablename__ = "users"

    user_id: str = Field(primary_key=True, max_length=200)
    signed_up_at: datetime | None = Field(default=None, sa_column=_utc_column())


class ApiKeyRole(StrEnum):
    CLIENT = "client"  # submits and reads its own jobs
    OPERATOR = "operator"  # everything, including pinning versions
    GRADER = "grader"  # grades golden runs and reads their reports; submits nothing
    EVENTS = "events"  # write-only: client instrumentation posts events, reads nothing


class ApiKey(SQLModel, table=True):
    """An API key; only its SHA-256 is stored (keys are 256-bit random, so no salt/KDF)."""

    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(max_length=100)
    role: str = Field(max_length=16)
    key_hash: str = Field(unique=True, max_length=64)
    prefix: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_utc_column())
    revoked_at: datetime | None = Field(default=None, sa_column=_utc_column())
    # limits of a client key (gateway/key_limits.py); None: the settings' default, 0: none
    rate_per_s: float | None = None  # requests per second, over a moving window
    max_queued: int | None = None  # jobs QUEUED or RUNNING at once
    # its bulk jobs' share of the broker under fair share (tasks/release.py); None: 1
    share_weight: float | None = None


class ModelRevision(SQLModel, table=True):
    """A published revision of a version's weights (`canary hotfix`); the newest is current."""

    __tablename__ = "model_revisions"

    id: int | None = Field(default=None, primary_key=True)
    version: str = Field(max_length=64, index=True)
    revision: str = Field(max_length=64)
    source: str = Field(max_length=1000)
    published_at: datetime = Field(default_factory=utcnow, sa_column=_utc_column())


class WorkerRecord(SQLModel, table=True):
    """What each render worker last reported: which revision it serves, or why not."""

    __tablename__ = "workers"

    node: str = Field(primary_key=True, max_length=255)
    version: str = Field(max_length=64, index=True)
    device: str = Field(max_length=32)
    revision: str | None = Field(default=None, max_length=64)
    error: str | None = None
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_utc_column())


class VersionState(SQLModel, table=True):
    """A version's lifecycle beyond the configuration: retirement and clean-up."""

    __tablename__ = "version_states"

    version: str = Field(primary_key=True, max_length=64)
    retired_at: datetime | None = Field(default=None, sa_column=_utc_column())
    rerouted_to: str | None = Field(default=None, max_length=64)
    retention_days: float = 7.0
    purged_at: datetime | None = Field(default=None, sa_column=_utc_column())


class GoldenRunStatus(StrEnum):
    SUBMITTING = "SUBMITTING"  # cases are being enqueued (resumable if the submitter died)
    RUNNING = "RUNNING"  # every case enqueued; images and checks pending
    COMPLETE = "COMPLETE"  # every image rendered or failed and checked


class GoldenRun(SQLModel, table=True):
    """One replay of the golden set through a baseline and a candidate version.

    The set's text is kept with the run (``set_text``), so a later edit of the file never
    changes what an old report or review page shows.
    """

    __tablename__ = "golden_runs"

    id: str = Field(primary_key=True, max_length=100)
    trigger: str = Field(max_length=16)  # nightly | manual
    set_name: str = Field(max_length=100)
    set_sha256: str = Field(max_length=64)
    set_text: str
    case_count: int
    baseline: str = Field(max_length=64)
    candidate: str = Field(max_length=64)
    status: str = Field(default=GoldenRunStatus.SUBMITTING, max_length=16)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_utc_column(index=True))
    submitted_at: datetime | None = Field(default=None, sa_column=_utc_column())
    completed_at: datetime | None = Field(default=None, sa_column=_utc_column())
    lease_owner: str | None = Field(default=None, max_length=200)
    lease_until: datetime | None = Field(default=None, sa_column=_utc_column())


class GoldenResult(SQLModel, table=True):
    """One case rendered by one version in a run, and what the automatic checks found."""

    __tablename__ = "golden_results"

    run_id: str = Field(primary_key=True, max_length=100)
    case_id: str = Field(primary_key=True, max_length=64)
    version: str = Field(primary_key=True, max_length=64)
    job_id: str = Field(max_length=36, index=True)
    category: str = Field(max_length=32)
    checked_at: datetime | None = Field(default=None, sa_column=_utc_column())
    auto_level: str | None = Field(default=None, max_length=8)  # S (hard failure) or A
    auto_reason: str | None = None
    element_scores: str | None = None  # JSON {element: score} when a scorer is configured
    previous_run_id: str | None = Field(default=None, max_length=100)
    drift_rmse: float | None = None
    drift_phash_bits: int | None = None
    drifted: bool | None = None


class GoldenGrade(SQLModel, table=True):
    """A human grade of one image; the latest grade of a grader replaces the earlier one."""

    __tablename__ = "golden_grades"

    run_id: str = Field(primary_key=True, max_length=100)
    case_id: str = Field(primary_key=True, max_length=64)
    version: str = Field(primary_key=True, max_length=64)
    grader: str = Field(primary_key=True, max_length=100)
    level: str = Field(max_length=8)
    graded_at: datetime = Field(default_factory=utcnow, sa_column=_utc_column())


class EventType(StrEnum):
    IMAGE_VIEWED = "image_viewed"  # dwell_ms: from image loaded to leave/next
    DOWNLOAD_CLICKED = "download_clicked"
    FEEDBACK_REPORTED = "feedback_reported"  # reason: poor_quality | style_mismatch | other
    LOGIN = "login"
    TRIAL_STARTED = "trial_started"
    SUBSCRIPTION_PAID = "subscription_paid"


JOB_EVENTS = (EventType.IMAGE_VIEWED, EventType.DOWNLOAD_CLICKED, EventType.FEEDBACK_REPORTED)


class Event(SQLModel, table=True):
    """A user-behaviour event from client instrumentation, deduplicated by its client id."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_type_time", "type", "occurred_at"),
        Index("ix_events_user_time", "user_id", "occurred_at"),
        # the report's per-image metrics read one event type's (job_id, dwell_ms) from this
        # index alone, in job order (no table access, no sort)
        Index("ix_events_type_job", "type", "job_id", "dwell_ms"),
        # "did this user log in / pay after t": one index probe per user, no table access
        Index("ix_events_user_type_time", "user_id", "type", "occurred_at"),
        # late events: those received after the roll-up of a day they count toward
        # (analysis.rollups) are found from the last check on, one index range
        Index("ix_events_received", "received_at"),
    )

    id: str = Field(primary_key=True, max_length=100)
    type: str = Field(max_length=32)
    user_id: str = Field(max_length=200)
    job_id: str | None = Field(default=None, max_length=36, index=True)
    occurred_at: datetime = Field(sa_column=_utc_column(nullable=False))
    received_at: datetime = Field(default_factory=utcnow, sa_column=_utc_column())
    dwell_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    reason: str | None = Field(default=None, max_length=32)
    api_key_id: str | None = Field(default=None, max_length=36)


class ExperimentState(SQLModel, table=True):
    """The live stage of an experiment; overrides the file's ``stage``/``rolled_back``.

    Written by `canary rollout` and the automatic mode; every gateway re-reads it within a
    few seconds, so a ramp or a rollback needs no file edit and no restart.
    """

    __tablename__ = "experiment_states"

    experiment: str = Field(primary_key=True, max_length=100)
    stage: str = Field(max_length=100)
    rolled_back: bool = False
    auto: bool = False  # the daily job may advance or roll back by itself
    stage_since: datetime = Field(default_factory=utcnow, sa_column=_utc_column())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_utc_column())
    updated_by: str = Field(default="", max_length=200)


class RolloutEvent(SQLModel, table=True):
    """The audit log: every rollout action with who, when, from, to, why and the evidence."""

    __tablename__ = "rollout_audit"

    id: int | None = Field(default=None, primary_key=True)
    experiment: str = Field(max_length=100, index=True)
    at: datetime = Field(default_factory=utcnow, sa_column=_utc_column(index=True))
    actor: str = Field(max_length=200)
    action: str = Field(max_length=32)  # advance | hold | rollback | set-stage | auto-on ...
    from_stage: str | None = Field(default=None, max_length=100)
    to_stage: str | None = Field(default=None, max_length=100)
    reason: str = ""
    evaluation: str | None = None  # JSON of the gate evaluation that justified it
    dry_run: bool = False


class Batch(SQLModel, table=True):
    """One bulk submission (a file, an API batch, the demo's jobs): what came in and what
    was refused, so `canary status BATCH_ID` can say what happened to every line."""

    __tablename__ = "batches"

    id: str = Field(primary_key=True, max_length=64)
    source: str = Field(max_length=32)  # bulk (a file), api, demo: as the jobs' source
    file: str | None = Field(default=None, max_length=1000)  # absolute path of a file batch
    api_key_id: str | None = Field(default=None, max_length=36)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_utc_column(nullable=False))
    created: int = 0  # new jobs
    duplicates: int = 0  # lines whose job existed (an earlier submission of the same line)
    rejected: str = "[]"  # JSON list of {"line": n, "message": "..."}


class BatchLine(SQLModel, table=True):
    """Which job serves each line (file batches) or item (API batches) of a batch; a
    resubmitted line points at the job it was first submitted as."""

    __tablename__ = "batch_lines"

    batch_id: str = Field(primary_key=True, max_length=64)
    line: int = Field(primary_key=True)
    job_id: str = Field(index=True, max_length=36)


class MetricUnitRow(SQLModel, table=True):
    """A completed day's per-user metric row, as the report's per-user query gives it: the
    daily metrics' (job day, user) partial sums, the value metrics' one row per user of an
    exposure cohort day. The incremental report reduces these with the new day's rows
    exactly as the full report reduces its own (analysis.rollups)."""

    __tablename__ = "metric_unit_rows"

    # the key's order is the report's: a metric's rows come out of the index already in
    # (arm, segment, user, day) order, as the per-user sums and running totals read them
    experiment: str = Field(primary_key=True, max_length=100)
    metric: str = Field(primary_key=True, max_length=64)
    arm: str = Field(primary_key=True, max_length=16)
    segment: str = Field(primary_key=True, max_length=32)
    unit: str = Field(primary_key=True, max_length=200)
    day: date = Field(primary_key=True)  # job day, or exposure (cohort) day
    num: float | None = None
    den: float | None = None
    z: float | None = None  # the CUPED covariate of the value metrics


class MetricRollup(SQLModel, table=True):
    """One rolled-up day of an experiment: when its rows were computed, up to when every
    event received is reflected in them (``checked_at``), and what came late."""

    __tablename__ = "metric_rollups"

    experiment: str = Field(primary_key=True, max_length=100)
    day: date = Field(primary_key=True)
    rolled_up_at: datetime = Field(sa_column=_utc_column(nullable=False))
    checked_at: datetime = Field(sa_column=_utc_column(nullable=False))
    late_events: int = 0  # events received after a roll-up of this day, folded in by a re-roll
    late_outcomes: int = 0  # jobs of this day that finished after a roll-up
    rerolls: int = 0


class MetricRollupPending(SQLModel, table=True):
    """Jobs of a rolled-up day that had not finished at the roll-up: when one finishes, the
    day's rows are stale (its success, VRAM and generation counts change)."""

    __tablename__ = "metric_rollup_pending"

    experiment: str = Field(primary_key=True, max_length=100)
    day: date = Field(primary_key=True)
    job_id: str = Field(primary_key=True, max_length=36)
