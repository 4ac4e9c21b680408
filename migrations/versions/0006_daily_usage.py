"""Daily usage rollup (``daily_usage``), maintained by readings ingest, and the partial
index on estimated readings that lets an actual read supersede them cheaply.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "daily_usage",
        sa.Column("meter_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_total", sa.Numeric(16, 4), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_total", sa.Numeric(16, 4), nullable=False),
        sa.Column("effective_total", sa.Numeric(20, 4), nullable=False),
        sa.Column("opening_effective", sa.Numeric(20, 4), nullable=False),
        sa.Column("usage_m3", sa.Numeric(16, 4), nullable=False),
        sa.Column("reading_count", sa.Integer(), nullable=False),
        sa.Column("register_wraps", sa.Integer(), server_default="0", nullable=False),
        sa.Column("rollover", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("reverse_flow", sa.Boolean(), server_default="false", nullable=False),
        sa.PrimaryKeyConstraint("meter_id", "day", name=op.f("pk_daily_usage")),
        postgresql_with={"fillfactor": "70"},
    )
    # On the partitioned parent: every partition gets it (ATTACH adopts the copy that
    # ensure_partitions' CREATE TABLE … LIKE … INCLUDING INDEXES made).
    op.create_index("ix_readings_estimated", "readings", ["meter_id", "read_at"],
                    postgresql_where=sa.text("quality = 'estimated'"))
    op.create_index("ix_daily_usage_day", "daily_usage", ["day", "meter_id"])


def downgrade() -> None:
    op.drop_index("ix_daily_usage_day", table_name="daily_usage")
    op.drop_table("daily_usage")
    op.drop_index("ix_readings_estimated", table_name="readings")
