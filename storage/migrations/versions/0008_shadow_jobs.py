"""Shadow traffic: jobs.shadow_of, the live job a shadow job copies (NULL for every other
job, so every row recorded before it stays as it was), indexed: the paired comparison
joins each shadow job to its live job, and the gateway counts the candidate's queued ones.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("shadow_of", sa.String(length=36), nullable=True))
        batch.create_index("ix_jobs_shadow_of", ["shadow_of"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_shadow_of")
        batch.drop_column("shadow_of")
