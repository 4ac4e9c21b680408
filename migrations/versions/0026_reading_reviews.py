"""Reading review (抄表审核): one row per postpaid account and period held for review
(issue 17, item 2).

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reading_reviews",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("state", sa.Enum("pending", "approved", "adjusted", "estimated", name="reviewstate",
                                   native_enum=False, create_constraint=True, length=32), nullable=False),
        sa.Column("alarm_kinds", postgresql.ARRAY(sa.String(length=32)), server_default="{}", nullable=False),
        sa.Column("missing_reading", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(length=100), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision_reason", sa.Text(), nullable=True),
        sa.Column("readings", postgresql.JSONB(astext_type=sa.Text()), server_default="[]", nullable=False),
        sa.CheckConstraint("extract(day FROM period) = 1", name=op.f("ck_reading_reviews_period_first_day")),
        sa.CheckConstraint("(state = 'pending') = (decided_at IS NULL)",
                           name=op.f("ck_reading_reviews_decided_when_not_pending")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_reading_reviews_account_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reading_reviews")),
        sa.UniqueConstraint("account_id", "period", name="uq_reading_reviews_account_period"),
    )
    op.create_index("ix_reading_reviews_period_state", "reading_reviews", ["period", "state"])


def downgrade() -> None:
    op.drop_index("ix_reading_reviews_period_state", table_name="reading_reviews")
    op.drop_table("reading_reviews")
