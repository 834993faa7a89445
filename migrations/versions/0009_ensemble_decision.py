"""ensembles keep their decision rule: per-class logit biases tuned for macro F1 on out-of-fold probabilities

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ensemble") as batch:
        batch.add_column(sa.Column("decision", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ensemble") as batch:
        batch.drop_column("decision")
