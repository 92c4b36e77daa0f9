"""per-job ingest tokens: the service keeps each job's token digest (no shared signing key)

Revision ID: 0004_ingest_tokens
Revises: 0003_studies
Create Date: 2026-11-30

Adds ``jobs.ingest_token_sha256``. Jobs started before this revision have none: their
reports reach the service from their ``stats.jsonl`` when they end (backfill).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_ingest_tokens"
down_revision: str | Sequence[str] | None = "0003_studies"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("ingest_token_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("ingest_token_sha256")
