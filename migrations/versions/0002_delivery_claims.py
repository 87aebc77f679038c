"""delivery claims: one bot process posts each result

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 06:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("delivery_claimed_by", sa.String(length=200), nullable=True))
        batch.add_column(
            sa.Column("delivery_claimed_until", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("delivery_claimed_until")
        batch.drop_column("delivery_claimed_by")
