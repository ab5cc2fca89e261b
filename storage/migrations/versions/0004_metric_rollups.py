"""Metric roll-ups: completed days' per-user metric rows, the roll-up log, and the jobs
still unfinished at a roll-up; an index on events.received_at to find late events.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "metric_unit_rows",
        sa.Column("experiment", sa.String(length=100), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("arm", sa.String(length=16), nullable=False),
        sa.Column("segment", sa.String(length=32), nullable=False),
        sa.Column("unit", sa.String(length=200), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("num", sa.Float(), nullable=True),
        sa.Column("den", sa.Float(), nullable=True),
        sa.Column("z", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("experiment", "metric", "arm", "segment", "unit", "day"),
    )
    op.create_table(
        "metric_rollups",
        sa.Column("experiment", sa.String(length=100), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("rolled_up_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("late_events", sa.Integer(), nullable=False),
        sa.Column("late_outcomes", sa.Integer(), nullable=False),
        sa.Column("rerolls", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("experiment", "day"),
    )
    op.create_table(
        "metric_rollup_pending",
        sa.Column("experiment", sa.String(length=100), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.PrimaryKeyConstraint("experiment", "day", "job_id"),
    )
    op.create_index("ix_events_received", "events", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_events_received", table_name="events")
    op.drop_table("metric_rollup_pending")
    op.drop_table("metric_rollups")
    op.drop_table("metric_unit_rows")
