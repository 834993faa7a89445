"""review assignments: people shared out among reviewers

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "assignment",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("profile_id", sa.Integer(), sa.ForeignKey("profile.id"), nullable=False, unique=True),
        sa.Column("reviewer", sa.String(100), nullable=False),
        sa.Column("assigned_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_assignment_reviewer", "assignment", ["reviewer"])
    op.create_index("ix_review_verdict_profile", "review", ["verdict", "profile_id"])


def downgrade() -> None:
    op.drop_index("ix_review_verdict_profile", table_name="review")
    op.drop_table("assignment")
