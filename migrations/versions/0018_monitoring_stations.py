"""Monitoring stations (监测站): a place on the network and its flow and pressure instruments.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_KINDS = ("plant_outlet", "trunk_main", "pump_station", "reservoir", "district_inlet")


def upgrade() -> None:
    op.create_table(
        "monitoring_stations",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.Enum(*_KINDS, name="stationkind", native_enum=False, create_constraint=True, length=32),
                  nullable=False),
        sa.Column("area_id", sa.BigInteger(), nullable=False),
        sa.Column("location", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["area_id"], ["areas.id"], name=op.f("fk_monitoring_stations_area_id_areas")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitoring_stations")),
        sa.UniqueConstraint("code", name=op.f("uq_monitoring_stations_code")),
    )
    op.create_index(op.f("ix_monitoring_stations_area_id"), "monitoring_stations", ["area_id"], unique=False)
    op.add_column("meters", sa.Column("station_id", sa.BigInteger(), nullable=True))
    op.create_foreign_key(op.f("fk_meters_station_id_monitoring_stations"), "meters", "monitoring_stations",
                          ["station_id"], ["id"])
    op.create_index(op.f("ix_meters_station_id"), "meters", ["station_id"], unique=False)
    # Only a monitoring point that measures flow or pressure belongs to a station.
    op.create_check_constraint(
        op.f("ck_meters_station_instrument"), "meters",
        "station_id IS NULL OR (kind = 'monitoring' AND meter_type IN ('flow_monitor', 'pressure_monitor'))",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_meters_station_instrument"), "meters", type_="check")
    op.drop_index(op.f("ix_meters_station_id"), table_name="meters")
    op.drop_constraint(op.f("fk_meters_station_id_monitoring_stations"), "meters", type_="foreignkey")
    op.drop_column("meters", "station_id")
    op.drop_index(op.f("ix_monitoring_stations_area_id"), table_name="monitoring_stations")
    op.drop_table("monitoring_stations")
