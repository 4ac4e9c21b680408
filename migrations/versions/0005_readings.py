"""Readings store: the month-partitioned ``readings`` parent and ``latest_readings``.

No partitions are created here: ``ensure_partitions`` (ingest, ``shuiwu partitions
ensure``, the scheduled job) creates them in the utility's time zone, which a migration
does not know.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("total_m3", sa.Numeric(16, 4), nullable=False),
        sa.Column("flow_rate", sa.Numeric(12, 4), nullable=True),
        sa.Column("pressure", sa.Numeric(8, 4), nullable=True),
        sa.Column("valve_state", sa.Enum("open", "closed", "unknown", name="valvestate", native_enum=False,
                                         create_constraint=True, length=32), nullable=True),
        sa.Column("battery", sa.Numeric(5, 2), nullable=True),
        sa.Column("status_bits", sa.Integer(), nullable=True),
        sa.Column("quality", sa.Enum("actual", "manual", "estimated", name="readingquality", native_enum=False,
                                     create_constraint=True, length=32), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "readings",
        sa.Column("meter_id", sa.BigInteger(), autoincrement=False, nullable=False),
        *_columns(),
        sa.PrimaryKeyConstraint("meter_id", "read_at", name=op.f("pk_readings")),
        postgresql_partition_by="RANGE (read_at)",
    )
    op.create_table(
        "latest_readings",
        sa.Column("meter_id", sa.BigInteger(), autoincrement=False, nullable=False),
        *_columns(),
        sa.PrimaryKeyConstraint("meter_id", name=op.f("pk_latest_readings")),
        postgresql_with={"fillfactor": "50"},
    )


def downgrade() -> None:
    op.drop_table("latest_readings")
    # Dropping a partitioned parent drops its partitions too.
    op.drop_table("readings")
