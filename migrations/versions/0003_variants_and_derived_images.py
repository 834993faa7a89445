"""image variants (face crop, background removal) and derived images

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "variant",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("params_hash", sa.String(64), nullable=False),
        sa.Column("root_id", sa.Integer(), sa.ForeignKey("data_root.id"), nullable=False),
        sa.Column("folder", sa.String(500), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("kind", "params_hash", name="uq_variant_kind_params"),
    )
    op.create_table(
        "derived",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("variant_id", sa.Integer(), sa.ForeignKey("variant.id"), nullable=False),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("image.id"), nullable=True),
        sa.Column("eval_image_id", sa.Integer(), sa.ForeignKey("eval_image.id"), nullable=True),
        sa.Column("path", sa.String(1000), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("box", sa.JSON(), nullable=True),
        sa.Column("landmarks", sa.JSON(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("faces", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(500), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("variant_id", "image_id", name="uq_derived_variant_image"),
        sa.UniqueConstraint("variant_id", "eval_image_id", name="uq_derived_variant_eval"),
    )
    op.create_index("ix_derived_variant_id", "derived", ["variant_id"])
    op.create_index("ix_derived_image_id", "derived", ["image_id"])
    op.create_index("ix_derived_eval_image_id", "derived", ["eval_image_id"])


def downgrade() -> None:
    op.drop_table("derived")
    op.drop_table("variant")
