"""per-worker BatchNorm traffic: worker_stats.allreduce_bytes_per_step

Revision ID: 0005_allreduce_bytes
Revises: 0004_ingest_tokens
Create Date: 2026-11-30

What a rank all-reduces for BatchNorm per optimizer step, kept in a column (like the step
and sync times) so that a study prices its arms with one query. Reports stored before this
revision have none.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_allreduce_bytes"
down_revision: str | Sequence[str] | None = "0004_ingest_tokens"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("worker_stats") as batch:
        batch.add_column(sa.Column("allreduce_bytes_per_step", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("worker_stats") as batch:
        batch.drop_column("allreduce_bytes_per_step")
