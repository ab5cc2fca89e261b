"""Database tables (SQLModel). Times are UTC; durations are milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import Column, DateTime, Index
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
    OOM = "oom"
    TIMEOUT = "timeout"
    MODEL_LOAD = "model_load"
    STORAGE_ERROR = "storage_error"
    INVALID_JOB = "invalid_job"
    ENQUEUE_ERROR = "enqueue_error"
    ERROR = "error"


def _utc_column(*, nullable: bool = True, index: bool = False) -> Column:
    return Column(DateTime(timezone=True), nullable=nullable, index=index)


class Job(SQLModel, table=True):
    """One render request and everything the worker learned while serving it."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_version_status", "model_version", "status"),)

    id: str = Field(primary_key=True, max_length=36)
    idempotency_key: str | None = Field(default=None, unique=True, max_length=200)
    user_id: str | None = Field(default=None, index=True, max_length=200)
    source: str = Field(default="api", max_length=32)
    batch_id: str | None = Field(default=None, index=True, max_length=64)

    # the spec
    model_version: str = Field(max_length=64)
    prompt: str
    negative_prompt: str = ""
    seed: int
    steps: int
    guidance: float
    width: int
    height: int

    # lifecycle
    status: str = Field(default=JobStatus.QUEUED, max_length=16)
    attempts: int = 0
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
    peak_vram_bytes: int | None = None
