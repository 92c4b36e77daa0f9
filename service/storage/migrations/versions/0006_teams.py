"""a team shares it: users, their API tokens, owners, and the audit log

Revision ID: 0006_teams
Revises: 0005_allreduce_bytes
Create Date: 2026-12-06

Adds ``users`` (with the bootstrap ``admin``, the user of the service's own token),
``api_tokens`` (SHA-256 digests only) and ``audit``, and an ``owner`` column on jobs,
studies, datasets and code bundles: rows made before this revision belong to ``admin``.
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0006_teams"
down_revision: str | Sequence[str] | None = "0005_allreduce_bytes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNED = ("jobs", "studies", "datasets", "code_bundles")


def upgrade() -> None:
    users = op.create_table(
        "users",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("max_running_workers", sa.Integer(), nullable=True),
        sa.Column("max_queued_jobs", sa.Integer(), nullable=True),
        sa.Column("max_upload_bytes", sa.BigInteger(), nullable=True),
        sa.Column("max_model_bytes", sa.BigInteger(), nullable=True),
    )
    op.bulk_insert(users, [{"name": "admin", "role": "admin", "created_at": datetime.now(UTC)}])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("user", sa.String(64), sa.ForeignKey("users.name"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("user", "name"),
    )
    op.create_index("ix_api_tokens_user", "api_tokens", ["user"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(64), nullable=True),
        sa.Column("action", sa.String(48), nullable=False),
        sa.Column("object_kind", sa.String(16), nullable=True),
        sa.Column("object_id", sa.String(128), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("count", sa.Integer(), nullable=False),
    )
    for column in ("at", "actor", "action"):
        op.create_index(f"ix_audit_{column}", "audit", [column])
    for table in OWNED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("owner", sa.String(64), nullable=False, server_default="admin")
            )
    op.create_index("ix_jobs_owner_state", "jobs", ["owner", "state"])


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_state", "jobs")
    for table in OWNED:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("owner")
    op.drop_table("audit")
    op.drop_table("api_tokens")
    op.drop_table("users")
