"""tenants and API keys, files, the OpenAI Batches API's fields, fair-share reads, the exploring flag

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING_ONLY = sa.text("status = 'pending'")
BATCH_TIMES = ("expires_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
               "cancelling_at", "cancelled_at")


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("max_spend_usd", sa.Float(), nullable=True),
        sa.Column("max_pending_jobs", sa.Integer(), nullable=True),
        sa.Column("requests_per_minute", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant"], ["tenants.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_tenant"), ["tenant"], unique=False)
    op.create_table(
        "files",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.create_index("ix_files_owner_created_at", ["owner", "created_at"], unique=False)
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status", sa.String(length=16), server_default="in_progress", nullable=False))
        batch_op.add_column(sa.Column("endpoint", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("completion_window", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("input_file_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("output_file_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("error_file_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("errors", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("metadata", sa.JSON(), nullable=True))
        for column in BATCH_TIMES:
            batch_op.add_column(sa.Column(column, sa.DateTime(timezone=True), nullable=True))
    # Batches whose jobs had all ended before this migration are completed, not in progress: the
    # scheduler's batch lifecycle would otherwise write output files for every old batch.
    op.execute("UPDATE batches SET status = 'completed', completed_at = CURRENT_TIMESTAMP WHERE NOT EXISTS "
               "(SELECT 1 FROM jobs WHERE jobs.batch_id = batches.id AND jobs.status IN ('pending', 'queued', 'running'))")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("custom_id", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("exploring", sa.Boolean(), nullable=True))
        batch_op.create_index("ix_jobs_pending_owner_created_at", ["owner", "created_at"], unique=False,
                              postgresql_where=PENDING_ONLY, sqlite_where=PENDING_ONLY)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_pending_owner_created_at")
        batch_op.drop_column("exploring")
        batch_op.drop_column("custom_id")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        for column in (*reversed(BATCH_TIMES), "metadata", "errors", "error_file_id", "output_file_id",
                       "input_file_id", "completion_window", "endpoint", "status"):
            batch_op.drop_column(column)
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_index("ix_files_owner_created_at")
    op.drop_table("files")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_tenant"))
    op.drop_table("api_keys")
    op.drop_table("tenants")
