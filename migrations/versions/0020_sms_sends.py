"""The daily SMS spend cap's counter: sms_sends, one row per day (issue 14 item 2).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sms_sends",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("claimed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_sms_sends")),
    )


def downgrade() -> None:
    op.drop_table("sms_sends")
