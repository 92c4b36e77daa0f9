"""studies: groups of jobs (arms x seeds) that answer "does syncbn help my workload?"

Revision ID: 0003_studies
Revises: 0002_user_code
Create Date: 2026-11-22

Adds the ``studies`` table and each job's ``study_id`` and ``arm``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_studies"
down_revision: str | Sequence[str] | None = "0002_user_code"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("base", sa.JSON(), nullable=False),
        sa.Column("seeds", sa.JSON(), nullable=False),
        sa.Column("arms", sa.JSON(), nullable=False),
        sa.Column("skipped", sa.JSON(), nullable=False),
        sa.Column("metric", sa.String(16), nullable=False),
        sa.Column("cancelled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_studies_created_at", "studies", ["created_at"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("study_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("arm", sa.String(16), nullable=True))
        batch.create_index("ix_jobs_study_id", ["study_id"])
        batch.create_foreign_key("fk_jobs_study_id", "studies", ["study_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_study_id", type_="foreignkey")
        batch.drop_index("ix_jobs_study_id")
        batch.drop_column("arm")
        batch.drop_column("study_id")
    op.drop_index("ix_studies_created_at", "studies")
    op.drop_table("studies")
