"""initial catalog: data roots, profiles, images, eval images, label events, reviews

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_root",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("path", sa.String(4000), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "profile",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("root_id", sa.Integer(), sa.ForeignKey("data_root.id"), nullable=False),
        sa.Column("person_id", sa.String(64), nullable=False),
        sa.Column("folder", sa.String(500), nullable=False),
        sa.Column("gender", sa.String(16), nullable=False),
        sa.Column("race", sa.String(64), nullable=False),
        sa.Column("age", sa.Integer(), nullable=False),
        sa.Column("orig_gender", sa.String(16), nullable=False),
        sa.Column("orig_race", sa.String(64), nullable=False),
        sa.Column("orig_age", sa.Integer(), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("parent_id", sa.Integer(), sa.ForeignKey("profile.id"), nullable=True),
        sa.Column("csv_row", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("root_id", "folder", name="uq_profile_root_folder"),
    )
    op.create_index("ix_profile_root_id", "profile", ["root_id"])
    op.create_index("ix_profile_person_id", "profile", ["person_id"])
    op.create_index("ix_profile_origin", "profile", ["origin"])
    op.create_index("ix_profile_parent_id", "profile", ["parent_id"])
    op.create_table(
        "image",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("profile_id", sa.Integer(), sa.ForeignKey("profile.id"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("mask", sa.Integer(), nullable=False),
        sa.Column("orig_mask", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(1000), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("sha1", sa.String(40), nullable=False),
        sa.Column("damaged", sa.Boolean(), nullable=False),
        sa.Column("damage_reason", sa.String(500), nullable=True),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("generator", sa.JSON(), nullable=True),
        sa.Column("parent_image_id", sa.Integer(), sa.ForeignKey("image.id"), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("profile_id", "kind", name="uq_image_profile_kind"),
    )
    op.create_index("ix_image_profile_id", "image", ["profile_id"])
    op.create_index("ix_image_sha1", "image", ["sha1"])
    op.create_index("ix_image_damaged", "image", ["damaged"])
    op.create_table(
        "eval_image",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("root_id", sa.Integer(), sa.ForeignKey("data_root.id"), nullable=False),
        sa.Column("image_name", sa.String(200), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(1000), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("sha1", sa.String(40), nullable=False),
        sa.Column("damaged", sa.Boolean(), nullable=False),
        sa.Column("damage_reason", sa.String(500), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("root_id", "image_name", name="uq_eval_root_name"),
    )
    op.create_index("ix_eval_image_root_id", "eval_image", ["root_id"])
    op.create_table(
        "label_event",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("profile_id", sa.Integer(), sa.ForeignKey("profile.id"), nullable=False),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("image.id"), nullable=True),
        sa.Column("field", sa.String(32), nullable=False),
        sa.Column("old_value", sa.String(64), nullable=False),
        sa.Column("new_value", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(2000), nullable=True),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("undoes_id", sa.Integer(), sa.ForeignKey("label_event.id"), nullable=True),
        sa.Column("undone_by_id", sa.Integer(), sa.ForeignKey("label_event.id"), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_label_event_profile_field", "label_event", ["profile_id", "field"])
    op.create_index("ix_label_event_image_id", "label_event", ["image_id"])
    op.create_index("ix_label_event_created_at", "label_event", ["created_at"])
    op.create_table(
        "review",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("profile_id", sa.Integer(), sa.ForeignKey("profile.id"), nullable=False),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("image.id"), nullable=True),
        sa.Column("reviewer", sa.String(100), nullable=False),
        sa.Column("verdict", sa.String(32), nullable=False),
        sa.Column("note", sa.String(4000), nullable=True),
        sa.Column("event_id", sa.Integer(), sa.ForeignKey("label_event.id"), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_review_reviewer", "review", ["reviewer"])
    op.create_index("ix_review_profile_reviewer", "review", ["profile_id", "reviewer"])


def downgrade() -> None:
    for table in ("review", "label_event", "eval_image", "image", "profile", "data_root"):
        op.drop_table(table)
