"""synthetic people's generator records and tags; dataset views with snapshots; profile-level splits

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("profile") as batch:
        batch.add_column(sa.Column("generator", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("tags", sa.JSON(), nullable=True))
    op.create_table(
        "view",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("people", sa.Integer(), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("materialized_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "view_member",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("view_id", sa.Integer(), sa.ForeignKey("view.id"), nullable=False),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("image.id"), nullable=False),
        sa.Column("profile_id", sa.Integer(), sa.ForeignKey("profile.id"), nullable=False),
        sa.Column("root_id", sa.Integer(), sa.ForeignKey("data_root.id"), nullable=False),
        sa.Column("path", sa.String(1000), nullable=False),
        sa.Column("mask", sa.Integer(), nullable=False),
        sa.Column("gender", sa.Integer(), nullable=False),
        sa.Column("age", sa.Integer(), nullable=False),
        sa.Column("age_band", sa.Integer(), nullable=False),
        sa.Column("label", sa.Integer(), nullable=False),
        sa.UniqueConstraint("view_id", "image_id", name="uq_view_member_image"),
    )
    op.create_index("ix_view_member_view_id", "view_member", ["view_id"])
    op.create_index("ix_view_member_image_id", "view_member", ["image_id"])
    op.create_index("ix_view_member_profile_id", "view_member", ["profile_id"])
    op.create_table(
        "split",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("view_id", sa.Integer(), sa.ForeignKey("view.id"), nullable=True),
        sa.Column("view_hash", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("folds", sa.Integer(), nullable=False),
        sa.Column("val_fraction", sa.Float(), nullable=True),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("stratify", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "split_member",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("split_id", sa.Integer(), sa.ForeignKey("split.id"), nullable=False),
        sa.Column("profile_id", sa.Integer(), sa.ForeignKey("profile.id"), nullable=False),
        sa.Column("fold", sa.Integer(), nullable=False),
        sa.UniqueConstraint("split_id", "profile_id", name="uq_split_member_profile"),
    )
    op.create_index("ix_split_member_split_id", "split_member", ["split_id"])
    op.create_index("ix_split_member_profile_id", "split_member", ["profile_id"])


def downgrade() -> None:
    op.drop_table("split_member")
    op.drop_table("split")
    op.drop_table("view_member")
    op.drop_table("view")
    with op.batch_alter_table("profile") as batch:
        batch.drop_column("tags")
        batch.drop_column("generator")
