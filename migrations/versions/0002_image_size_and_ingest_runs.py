"""image dimensions and a record of every ingest

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Existing rows keep their data; width/height stay empty until the next `maskkit ingest`,
which fills them (it re-reads images whose dimensions are unknown).
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("image", "eval_image"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("width", sa.Integer(), nullable=True))
            batch.add_column(sa.Column("height", sa.Integer(), nullable=True))
    op.create_table(
        "ingest_run",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("root_id", sa.Integer(), sa.ForeignKey("data_root.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
    )
    op.create_index("ix_ingest_run_root_id", "ingest_run", ["root_id"])


def downgrade() -> None:
    op.drop_table("ingest_run")
    for table in ("eval_image", "image"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("height")
            batch.drop_column("width")
