"""Detect reuse of rotated-out refresh tokens.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("auth_sessions", sa.Column("previous_refresh_hash", sa.String(length=64), nullable=True))
    op.create_index("ix_auth_sessions_previous_refresh_hash", "auth_sessions", ["previous_refresh_hash"])


def downgrade() -> None:
    op.drop_index("ix_auth_sessions_previous_refresh_hash", table_name="auth_sessions")
    op.drop_column("auth_sessions", "previous_refresh_hash")
