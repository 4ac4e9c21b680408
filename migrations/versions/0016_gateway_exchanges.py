"""The exchanges of the gateways where money moves (docs/gateways.md).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_exchanges",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("operation", sa.String(length=128), nullable=False),
        sa.Column("reference", sa.String(length=128), nullable=True),
        sa.Column("request", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("response", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gateway_exchanges")),
    )
    op.create_index("ix_gateway_exchanges_gateway_started_at", "gateway_exchanges", ["gateway", "started_at"])
    op.create_index("ix_gateway_exchanges_reference", "gateway_exchanges", ["reference"])


def downgrade() -> None:
    op.drop_index("ix_gateway_exchanges_reference", table_name="gateway_exchanges")
    op.drop_index("ix_gateway_exchanges_gateway_started_at", table_name="gateway_exchanges")
    op.drop_table("gateway_exchanges")
