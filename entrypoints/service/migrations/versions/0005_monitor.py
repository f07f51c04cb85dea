"""scheduled canary evaluations: monitor points (a time series per alias and version) and alerts

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 04:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "monitor_points",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("alias", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=160), nullable=False),
        sa.Column("model", sa.String(length=160), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("ci_low", sa.Float(), nullable=True),
        sa.Column("ci_high", sa.Float(), nullable=True),
        sa.Column("latency_p50_ms", sa.Float(), nullable=True),
        sa.Column("latency_p95_ms", sa.Float(), nullable=True),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("monitor_points", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_monitor_points_alias"), ["alias"], unique=False)
        batch_op.create_index(batch_op.f("ix_monitor_points_created_at"), ["created_at"], unique=False)

    op.create_table(
        "monitor_alerts",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("point_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=160), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("webhook", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["point_id"], ["monitor_points.seq"]),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("monitor_alerts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_monitor_alerts_alias"), ["alias"], unique=False)
        batch_op.create_index(batch_op.f("ix_monitor_alerts_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_monitor_alerts_point_id"), ["point_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("monitor_alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_monitor_alerts_point_id"))
        batch_op.drop_index(batch_op.f("ix_monitor_alerts_created_at"))
        batch_op.drop_index(batch_op.f("ix_monitor_alerts_alias"))
    op.drop_table("monitor_alerts")
    with op.batch_alter_table("monitor_points", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_monitor_points_created_at"))
        batch_op.drop_index(batch_op.f("ix_monitor_points_alias"))
    op.drop_table("monitor_points")
