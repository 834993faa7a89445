"""training runs

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("view_id", sa.Integer(), sa.ForeignKey("view.id"), nullable=True),
        sa.Column("view_hash", sa.String(64), nullable=True),
        sa.Column("split_id", sa.Integer(), sa.ForeignKey("split.id"), nullable=True),
        sa.Column("fold", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("folder", sa.String(1000), nullable=False),
        sa.Column("epochs_done", sa.Integer(), nullable=False),
        sa.Column("best_epoch", sa.Integer(), nullable=True),
        sa.Column("best_metric", sa.Float(), nullable=True),
        sa.Column("metric_name", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("run")
