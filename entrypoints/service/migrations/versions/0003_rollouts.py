"""alias changes (audit), rollouts and per-request records

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 03:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alias_changes",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("alias", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("from_version", sa.String(length=160), nullable=True),
        sa.Column("to_version", sa.String(length=160), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("alias_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alias_changes_alias"), ["alias"], unique=False)

    op.create_table(
        "rollouts",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("alias", sa.String(length=128), nullable=False),
        sa.Column("current", sa.String(length=160), nullable=False),
        sa.Column("candidate", sa.String(length=160), nullable=False),
        sa.Column("percent", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("gate", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("started_at", sa.Integer(), nullable=False),
        sa.Column("ended_at", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rollouts_alias"), ["alias"], unique=False)
        batch_op.create_index(batch_op.f("ix_rollouts_state"), ["state"], unique=False)

    op.create_table(
        "request_records",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("alias", sa.String(length=256), nullable=False),
        sa.Column("version", sa.String(length=256), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("error", sa.Boolean(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("request_records", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_request_records_alias"), ["alias"], unique=False)
        batch_op.create_index(batch_op.f("ix_request_records_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_request_records_rollout_id"), ["rollout_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("request_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_request_records_rollout_id"))
        batch_op.drop_index(batch_op.f("ix_request_records_created_at"))
        batch_op.drop_index(batch_op.f("ix_request_records_alias"))
    op.drop_table("request_records")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollouts_state"))
        batch_op.drop_index(batch_op.f("ix_rollouts_alias"))
    op.drop_table("rollouts")
    with op.batch_alter_table("alias_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alias_changes_alias"))
    op.drop_table("alias_changes")
