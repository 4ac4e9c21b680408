"""Meters' life cycle (安装 / 拆回 / 故障 / 修复 / 报废): one row per change of status.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_STATUSES = ("in_stock", "installed", "faulty", "retired")


def upgrade() -> None:
    op.create_table(
        "meter_status_history",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("meter_id", sa.BigInteger(), nullable=False),
        sa.Column("from_status", sa.Enum(*_STATUSES, name="from_meterstatus", native_enum=False, create_constraint=True,
                                         length=32), nullable=False),
        sa.Column("status", sa.Enum(*_STATUSES, name="meterstatus", native_enum=False, create_constraint=True, length=32),
                  nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("location", sa.String(length=200), nullable=True),
        sa.Column("area_id", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.id"], name=op.f("fk_meter_status_history_meter_id_meters")),
        sa.ForeignKeyConstraint(["area_id"], ["areas.id"], name=op.f("fk_meter_status_history_area_id_areas")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_meter_status_history")),
    )
    op.create_index(op.f("ix_meter_status_history_meter_id"), "meter_status_history", ["meter_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_meter_status_history_meter_id"), table_name="meter_status_history")
    op.drop_table("meter_status_history")
