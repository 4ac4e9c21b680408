"""Patrol runs' interruptions and resumption (issue 20, scale-out): ``patrol_runs``
gains ``interruptions`` (how often a worker died under the run), ``interrupted_at`` and
``resumed_at`` (``backend.remote.patrols``: interrupted → running at the next claim).

Revision ID: 0042
Revises: 0039
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0042"
down_revision = "0039"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("patrol_runs", sa.Column("interruptions", sa.Integer(), server_default="0", nullable=False))
    op.add_column("patrol_runs", sa.Column("interrupted_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("patrol_runs", sa.Column("resumed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("patrol_runs", "resumed_at")
    op.drop_column("patrol_runs", "interrupted_at")
    op.drop_column("patrol_runs", "interruptions")
