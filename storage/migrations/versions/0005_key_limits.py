"""Limits per API key: api_keys.rate_per_s and api_keys.max_queued (NULL: the settings'
default); jobs' index on api_key_id becomes (api_key_id, status), so a key's queued and
running jobs are counted from the index (it still serves lookups by key alone).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("rate_per_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("max_queued", sa.Integer(), nullable=True))
    op.create_index("ix_jobs_api_key_status", "jobs", ["api_key_id", "status"])
    op.drop_index("ix_jobs_api_key_id", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_api_key_id", "jobs", ["api_key_id"])
    op.drop_index("ix_jobs_api_key_status", table_name="jobs")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("max_queued")
        batch.drop_column("rate_per_s")
