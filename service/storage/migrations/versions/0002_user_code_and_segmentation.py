"""user code and segmentation: code bundles, dataset task and class names, mIoU

Revision ID: 0002_user_code
Revises: 0001_initial
Create Date: 2026-11-22

Adds the ``code_bundles`` table (uploaded model code), the ``task`` (classification or
segmentation) and ``class_names`` of datasets, and the test mIoU of jobs and evaluations.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_user_code"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "code_bundles",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("modules", sa.JSON(), nullable=False),
        sa.Column("requirements", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(
            sa.Column("task", sa.String(16), nullable=False, server_default="classification")
        )
        batch.add_column(sa.Column("class_names", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("test_miou", sa.Float(), nullable=True))
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("test_miou", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("test_miou")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("test_miou")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("class_names")
        batch.drop_column("task")
    op.drop_table("code_bundles")
