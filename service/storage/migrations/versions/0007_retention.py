"""retention: a job may be pinned, and records when its files were removed

Revision ID: 0007_retention
Revises: 0006_teams
Create Date: 2026-12-08

Adds ``jobs.pinned`` (false for every job made before: the retention, off until
``SYNCBN_RETENTION_DAYS`` is set, may then remove their files) and ``jobs.files_removed_at``
(when the retention removed the job's checkpoints, model files and log; null: kept).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_retention"
down_revision: str | Sequence[str] | None = "0006_teams"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("files_removed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("files_removed_at")
        batch.drop_column("pinned")
