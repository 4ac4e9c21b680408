"""Reading routes (抄表本) and their ordered meters (billing); the field reading's
idempotency key and dial photo (readings: ``reading_entries``). Issue 17, item 1.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reading_routes",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("area_id", sa.BigInteger(), nullable=False),
        sa.Column("reader_user_id", sa.BigInteger(), nullable=True),
        sa.Column("window_days", sa.Integer(), server_default="5", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("window_days BETWEEN 1 AND 31", name=op.f("ck_reading_routes_window_days_valid")),
        sa.ForeignKeyConstraint(["area_id"], ["areas.id"], name=op.f("fk_reading_routes_area_id_areas")),
        sa.ForeignKeyConstraint(["reader_user_id"], ["staff_users.id"],
                                name=op.f("fk_reading_routes_reader_user_id_staff_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reading_routes")),
        sa.UniqueConstraint("code", name=op.f("uq_reading_routes_code")),
    )
    op.create_index(op.f("ix_reading_routes_area_id"), "reading_routes", ["area_id"])
    op.create_index(op.f("ix_reading_routes_reader_user_id"), "reading_routes", ["reader_user_id"])
    op.create_table(
        "reading_route_meters",
        sa.Column("meter_id", sa.BigInteger(), nullable=False),
        sa.Column("route_id", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.CheckConstraint("position >= 1", name=op.f("ck_reading_route_meters_position_valid")),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.id"], name=op.f("fk_reading_route_meters_meter_id_meters")),
        sa.ForeignKeyConstraint(["route_id"], ["reading_routes.id"], ondelete="CASCADE",
                                name=op.f("fk_reading_route_meters_route_id_reading_routes")),
        sa.PrimaryKeyConstraint("meter_id", name=op.f("pk_reading_route_meters")),
        sa.UniqueConstraint("route_id", "position", name="uq_reading_route_meters_route_position"),
    )
    op.create_table(
        "reading_entries",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("idempotency_key", sa.String(length=64), nullable=True),
        sa.Column("meter_id", sa.BigInteger(), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("total_m3", sa.Numeric(16, 4), nullable=False),
        sa.Column("photo_key", sa.String(length=255), nullable=True),
        sa.Column("entered_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.id"], name=op.f("fk_reading_entries_meter_id_meters")),
        sa.ForeignKeyConstraint(["photo_key"], ["stored_files.key"], ondelete="SET NULL",
                                name=op.f("fk_reading_entries_photo_key_stored_files")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reading_entries")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_reading_entries_idempotency_key")),
    )
    op.create_index("ix_reading_entries_meter_id_read_at", "reading_entries", ["meter_id", "read_at"])


def downgrade() -> None:
    op.drop_table("reading_entries")
    op.drop_table("reading_route_meters")
    op.drop_table("reading_routes")
