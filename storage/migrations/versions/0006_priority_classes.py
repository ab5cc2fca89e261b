"""Priority classes: jobs.priority_class (interactive | bulk | background), so a re-sent
job returns to its own class's queue. Jobs recorded before it were all on the one queue
per version, which is bulk's (``render.<version>``), so they are bulk.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("priority_class", sa.String(length=16), nullable=False, server_default="bulk")
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("priority_class")
