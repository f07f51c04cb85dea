"""captured traffic: per-alias capture settings, captured responses (redacted), feedback

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 03:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "capture_settings",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("alias", sa.String(length=128), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("changed_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("capture_settings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_capture_settings_alias"), ["alias"], unique=True)

    op.create_table(
        "captured_responses",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("response_id", sa.String(length=128), nullable=False),
        sa.Column("alias", sa.String(length=256), nullable=False),
        sa.Column("version", sa.String(length=256), nullable=False),
        sa.Column("user", sa.String(length=256), nullable=True),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("finish_reason", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("captured_responses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_captured_responses_alias"), ["alias"], unique=False)
        batch_op.create_index(batch_op.f("ix_captured_responses_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_captured_responses_response_id"), ["response_id"], unique=True)

    op.create_table(
        "feedback",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("response_id", sa.String(length=128), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=True),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["response_id"], ["captured_responses.response_id"]),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_response_id"), ["response_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_response_id"))
    op.drop_table("feedback")
    with op.batch_alter_table("captured_responses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_captured_responses_response_id"))
        batch_op.drop_index(batch_op.f("ix_captured_responses_created_at"))
        batch_op.drop_index(batch_op.f("ix_captured_responses_alias"))
    op.drop_table("captured_responses")
    with op.batch_alter_table("capture_settings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_capture_settings_alias"))
    op.drop_table("capture_settings")
