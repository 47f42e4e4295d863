"""bounded ticks and a fenced leader: job expiry and notes, pending-job indexes, leadership, ticks

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING_ONLY = sa.text("status = 'pending'")
# Jobs submitted before this migration get the default max_pending (24 h) from their creation.
DEFAULT_MAX_PENDING_H = 24


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("notes", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"UPDATE jobs SET expires_at = strftime('%Y-%m-%d %H:%M:%f', created_at, "
                   f"'+{DEFAULT_MAX_PENDING_H} hours')")
    else:
        op.execute(f"UPDATE jobs SET expires_at = created_at + interval '{DEFAULT_MAX_PENDING_H} hours'")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_pending_deadline_at", ["deadline_at"], unique=False,
                              postgresql_where=PENDING_ONLY, sqlite_where=PENDING_ONLY)
        batch_op.create_index("ix_jobs_pending_expires_at", ["expires_at"], unique=False,
                              postgresql_where=PENDING_ONLY, sqlite_where=PENDING_ONLY)
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.create_index("ix_decisions_created_at", ["created_at"], unique=False)
    op.create_table(
        "leadership",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_tick_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "ticks",
        sa.Column("tick_id", sa.String(length=36), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_jobs", sa.Integer(), nullable=False),
        sa.Column("assigned", sa.Integer(), nullable=False),
        sa.Column("deferred", sa.Integer(), nullable=False),
        sa.Column("expired", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tick_id"),
    )
    with op.batch_alter_table("ticks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ticks_started_at"), ["started_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ticks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ticks_started_at"))
    op.drop_table("ticks")
    op.drop_table("leadership")
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_index("ix_decisions_created_at")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_pending_expires_at")
        batch_op.drop_index("ix_jobs_pending_deadline_at")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("notes")
