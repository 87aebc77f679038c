"""claim queues: the queues the worker holding a request's current stage takes; indexes on
the stage end times (the reaper asks whether a stage finished within its window)

Revision ID: 0004_claim_queues
Revises: 0003_outbox
Create Date: 2026-12-07 03:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_claim_queues"
down_revision = "0003_outbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("worker_queues", sa.String(100), nullable=True))
    op.create_index("ix_requests_rendering_at", "requests", ["rendering_at"])
    op.create_index("ix_requests_finished_at", "requests", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_requests_finished_at", table_name="requests")
    op.drop_index("ix_requests_rendering_at", table_name="requests")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("worker_queues")
