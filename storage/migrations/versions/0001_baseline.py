"""Baseline: the schema of the last release before Alembic (git d71d983).

A database made by that release's ``create_all`` is stamped with this revision.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_table(
        "assignments",
        sa.Column("experiment", sa.String(length=100), nullable=False),
        sa.Column("user_id", sa.String(length=200), nullable=False),
        sa.Column("arm", sa.String(length=16), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=False),
        sa.Column("segment", sa.String(length=32), nullable=False),
        sa.Column("stage", sa.String(length=100), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("experiment", "user_id"),
    )
    op.create_index(op.f("ix_assignments_first_seen"), "assignments", ["first_seen"], unique=False)
    op.create_table(
        "events",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=200), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dwell_ms", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("api_key_id", sa.String(length=36), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_events_job_id"), "events", ["job_id"], unique=False)
    op.create_index("ix_events_type_job", "events", ["type", "job_id", "dwell_ms"], unique=False)
    op.create_index("ix_events_type_time", "events", ["type", "occurred_at"], unique=False)
    op.create_index("ix_events_user_time", "events", ["user_id", "occurred_at"], unique=False)
    op.create_index(
        "ix_events_user_type_time", "events", ["user_id", "type", "occurred_at"], unique=False
    )
    op.create_table(
        "experiment_states",
        sa.Column("experiment", sa.String(length=100), nullable=False),
        sa.Column("stage", sa.String(length=100), nullable=False),
        sa.Column("rolled_back", sa.Boolean(), nullable=False),
        sa.Column("auto", sa.Boolean(), nullable=False),
        sa.Column("stage_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("experiment"),
    )
    op.create_table(
        "golden_grades",
        sa.Column("run_id", sa.String(length=100), nullable=False),
        sa.Column("case_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("grader", sa.String(length=100), nullable=False),
        sa.Column("level", sa.String(length=8), nullable=False),
        sa.Column("graded_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "case_id", "version", "grader"),
    )
    op.create_table(
        "golden_results",
        sa.Column("run_id", sa.String(length=100), nullable=False),
        sa.Column("case_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("auto_level", sa.String(length=8), nullable=True),
        sa.Column("auto_reason", sa.String(), nullable=True),
        sa.Column("element_scores", sa.String(), nullable=True),
        sa.Column("previous_run_id", sa.String(length=100), nullable=True),
        sa.Column("drift_rmse", sa.Float(), nullable=True),
        sa.Column("drift_phash_bits", sa.Integer(), nullable=True),
        sa.Column("drifted", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "case_id", "version"),
    )
    op.create_index(op.f("ix_golden_results_job_id"), "golden_results", ["job_id"], unique=False)
    op.create_table(
        "golden_runs",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("set_name", sa.String(length=100), nullable=False),
        sa.Column("set_sha256", sa.String(length=64), nullable=False),
        sa.Column("set_text", sa.String(), nullable=False),
        sa.Column("case_count", sa.Integer(), nullable=False),
        sa.Column("baseline", sa.String(length=64), nullable=False),
        sa.Column("candidate", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_golden_runs_created_at"), "golden_runs", ["created_at"], unique=False)
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("idempotency_key", sa.String(length=300), nullable=True),
        sa.Column("user_id", sa.String(length=200), nullable=True),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("batch_id", sa.String(length=64), nullable=True),
        sa.Column("experiment", sa.String(length=100), nullable=True),
        sa.Column("arm", sa.String(length=16), nullable=True),
        sa.Column("segment", sa.String(length=32), nullable=True),
        sa.Column("api_key_id", sa.String(length=36), nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("prompt", sa.String(), nullable=False),
        sa.Column("negative_prompt", sa.String(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("guidance", sa.Float(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("misroutes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker_host", sa.String(length=255), nullable=True),
        sa.Column("worker_version", sa.String(length=64), nullable=True),
        sa.Column("device", sa.String(length=32), nullable=True),
        sa.Column("model_revision", sa.String(length=64), nullable=True),
        sa.Column("image_key", sa.String(length=512), nullable=True),
        sa.Column("failure_kind", sa.String(length=32), nullable=True),
        sa.Column("failure_message", sa.String(), nullable=True),
        sa.Column("queue_wait_ms", sa.Float(), nullable=True),
        sa.Column("inference_ms", sa.Float(), nullable=True),
        sa.Column("upload_ms", sa.Float(), nullable=True),
        sa.Column("end_to_end_ms", sa.Float(), nullable=True),
        sa.Column("peak_vram_bytes", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    op.create_index(op.f("ix_jobs_api_key_id"), "jobs", ["api_key_id"], unique=False)
    op.create_index(op.f("ix_jobs_batch_id"), "jobs", ["batch_id"], unique=False)
    op.create_index(op.f("ix_jobs_created_at"), "jobs", ["created_at"], unique=False)
    op.create_index(op.f("ix_jobs_failure_kind"), "jobs", ["failure_kind"], unique=False)
    op.create_index(op.f("ix_jobs_user_id"), "jobs", ["user_id"], unique=False)
    op.create_index("ix_jobs_version_status", "jobs", ["model_version", "status"], unique=False)
    op.create_table(
        "model_revisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=1000), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_model_revisions_version"), "model_revisions", ["version"], unique=False
    )
    op.create_table(
        "rollout_audit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment", sa.String(length=100), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("from_stage", sa.String(length=100), nullable=True),
        sa.Column("to_stage", sa.String(length=100), nullable=True),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("evaluation", sa.String(), nullable=True),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_rollout_audit_at"), "rollout_audit", ["at"], unique=False)
    op.create_index(
        op.f("ix_rollout_audit_experiment"), "rollout_audit", ["experiment"], unique=False
    )
    op.create_table(
        "users",
        sa.Column("user_id", sa.String(length=200), nullable=False),
        sa.Column("signed_up_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.create_table(
        "version_states",
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rerouted_to", sa.String(length=64), nullable=True),
        sa.Column("retention_days", sa.Float(), nullable=False),
        sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("version"),
    )
    op.create_table(
        "workers",
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("device", sa.String(length=32), nullable=False),
        sa.Column("revision", sa.String(length=64), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("node"),
    )
    op.create_index(op.f("ix_workers_version"), "workers", ["version"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_workers_version"), table_name="workers")
    op.drop_table("workers")
    op.drop_table("version_states")
    op.drop_table("users")
    op.drop_index(op.f("ix_rollout_audit_experiment"), table_name="rollout_audit")
    op.drop_index(op.f("ix_rollout_audit_at"), table_name="rollout_audit")
    op.drop_table("rollout_audit")
    op.drop_index(op.f("ix_model_revisions_version"), table_name="model_revisions")
    op.drop_table("model_revisions")
    op.drop_index("ix_jobs_version_status", table_name="jobs")
    op.drop_index(op.f("ix_jobs_user_id"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_failure_kind"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_created_at"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_batch_id"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_api_key_id"), table_name="jobs")
    op.drop_table("jobs")
    op.drop_index(op.f("ix_golden_runs_created_at"), table_name="golden_runs")
    op.drop_table("golden_runs")
    op.drop_index(op.f("ix_golden_results_job_id"), table_name="golden_results")
    op.drop_table("golden_results")
    op.drop_table("golden_grades")
    op.drop_table("experiment_states")
    op.drop_index("ix_events_user_type_time", table_name="events")
    op.drop_index("ix_events_user_time", table_name="events")
    op.drop_index("ix_events_type_time", table_name="events")
    op.drop_index("ix_events_type_job", table_name="events")
    op.drop_index(op.f("ix_events_job_id"), table_name="events")
    op.drop_table("events")
    op.drop_index(op.f("ix_assignments_first_seen"), table_name="assignments")
    op.drop_table("assignments")
    op.drop_table("api_keys")
