"""cascades: every attempt of a job kept (job_attempts), the plan's remaining cascade steps, the
model an escalation must run, whether a job may cascade, and which attempt's answer was accepted

Jobs that succeeded before this migration get their one attempt written from their row (its
answer, cost and label), so the learner keeps learning from them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-20
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The one attempt of each job that succeeded before cascades existed (attempts counts its runs;
# the last one answered).
BACKFILL_ATTEMPTS = (
    "INSERT INTO job_attempts (job_id, attempt, model, worker, answer, finish_reason, input_tokens, output_tokens,"
    " cost_usd, latency_s, ex_ante_p, decision, reason, score, score_source, scored_at, created_at, reviewed_at)"
    " SELECT id, CASE WHEN attempts < 1 THEN 1 ELSE attempts END, assigned_model, worker, result_text,"
    " finish_reason, input_tokens, output_tokens, cost_usd, latency_s, predicted_quality, 'accepted',"
    " 'accepted: no cascade step planned (answered before cascades existed)', score, score_source, scored_at,"
    " COALESCE(finished_at, updated_at), NULL"
    " FROM jobs WHERE status = 'succeeded' AND assigned_model IS NOT NULL")


def upgrade() -> None:
    op.create_table(
        "job_attempts",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("attempt", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("finish_reason", sa.String(length=16), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("latency_s", sa.Float(), nullable=True),
        sa.Column("ex_ante_p", sa.Float(), nullable=True),
        sa.Column("p_post", sa.Float(), nullable=True),
        sa.Column("judge", sa.String(length=64), nullable=True),
        sa.Column("decision", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("score_source", sa.String(length=16), nullable=True),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "attempt"),
    )
    with op.batch_alter_table("job_attempts", schema=None) as batch_op:
        batch_op.create_index("ix_job_attempts_scored_at", ["scored_at"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cascade_allowed", sa.Boolean(), server_default=sa.true(), nullable=False))
        batch_op.add_column(sa.Column("cascade", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("escalate_to", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("attempts_before_step", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("accepted_attempt", sa.Integer(), nullable=True))
    op.execute(BACKFILL_ATTEMPTS)
    op.execute("UPDATE jobs SET accepted_attempt = CASE WHEN attempts < 1 THEN 1 ELSE attempts END"
               " WHERE status = 'succeeded' AND assigned_model IS NOT NULL")


def downgrade() -> None:
    # Older code knows no 'reviewing' status: such a job ends with its answers unreviewed.
    op.execute("UPDATE jobs SET status = 'failed', error = 'awaiting the review of its answer when Switchyard"
               " was downgraded' WHERE status = 'reviewing'")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("accepted_attempt")
        batch_op.drop_column("attempts_before_step")
        batch_op.drop_column("escalate_to")
        batch_op.drop_column("cascade")
        batch_op.drop_column("cascade_allowed")
    with op.batch_alter_table("job_attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_job_attempts_scored_at")
    op.drop_table("job_attempts")
