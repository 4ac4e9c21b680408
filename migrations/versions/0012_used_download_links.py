"""Download links work once: the nonces of redeemed links, until they expire.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "used_download_links",
        sa.Column("nonce", sa.String(length=32), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_used_download_links_expires_at", "used_download_links", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_used_download_links_expires_at", table_name="used_download_links")
    op.drop_table("used_download_links")
