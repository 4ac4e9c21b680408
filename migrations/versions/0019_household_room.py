"""Households' room (房间号), from which the room label 1-1-0101 of 实时数据 is derived.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("households", sa.Column("room", sa.String(length=16), nullable=True))


def downgrade() -> None:
    op.drop_column("households", "room")
