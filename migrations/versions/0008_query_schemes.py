"""Saved query schemes (模板/查询方案) of the readings screens.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SCREENS = ("realtime", "history", "statistics", "ledger", "comparison", "monitoring", "alarms")


def upgrade() -> None:
    op.create_table(
        "query_schemes",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("owner_user_id", sa.BigInteger(), nullable=False),
        sa.Column("screen", sa.Enum(*SCREENS, name="screenkind", native_enum=False, create_constraint=True, length=32),
                  nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("columns", postgresql.JSONB(), nullable=False),
        sa.Column("filters", postgresql.JSONB(), nullable=False),
        sa.Column("is_default", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("shared", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(["owner_user_id"], ["staff_users.id"],
                                name=op.f("fk_query_schemes_owner_user_id_staff_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_query_schemes")),
        sa.UniqueConstraint("owner_user_id", "screen", "name", name=op.f("uq_query_schemes_owner_user_id_screen_name")),
    )
    op.create_index(op.f("ix_query_schemes_owner_user_id"), "query_schemes", ["owner_user_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_query_schemes_owner_user_id"), table_name="query_schemes")
    op.drop_table("query_schemes")
