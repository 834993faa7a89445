"""remember each person folder's mtime and odd files, so re-ingests skip unchanged folders' listings

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("profile") as batch:
        batch.add_column(sa.Column("dir_mtime_ns", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("scan_notes", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("profile") as batch:
        batch.drop_column("scan_notes")
        batch.drop_column("dir_mtime_ns")
