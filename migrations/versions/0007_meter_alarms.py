"""Abnormal-meter rules and alarms (alarm_rules, meter_alarms, meter_link_status,
meter_usage_baselines).

Seeds one global rule per alarm kind with the default thresholds.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_KINDS = ("silent", "communication_failure", "reverse_flow", "zero_use", "high_use", "battery_low",
          "valve_abnormal", "rollover")
_SEVERITIES = ("info", "warning", "critical")

# kind, threshold, severity (the same as backend.readings.alarms.models.DEFAULT_RULES;
# copied, as a migration must not change when the code does).
_DEFAULTS = (
    ("silent", "48", "warning"),
    ("communication_failure", "3", "warning"),
    ("reverse_flow", "2", "warning"),
    ("zero_use", "7", "info"),
    ("high_use", "3", "warning"),
    ("battery_low", "3.3", "warning"),
    ("valve_abnormal", "0", "critical"),
    ("rollover", "2", "info"),
)


def _kind() -> sa.Enum:
    return sa.Enum(*_KINDS, name="alarmkind", native_enum=False, create_constraint=True, length=32)


def _severity() -> sa.Enum:
    return sa.Enum(*_SEVERITIES, name="alarmseverity", native_enum=False, create_constraint=True, length=32)


def upgrade() -> None:
    op.create_table(
        "alarm_rules",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("kind", _kind(), nullable=False),
        sa.Column("area_id", sa.BigInteger(), nullable=True),
        sa.Column("meter_model_id", sa.BigInteger(), nullable=True),
        sa.Column("enabled", sa.Boolean(), server_default="true", nullable=False),
        sa.Column("threshold", sa.Numeric(12, 4), nullable=False),
        sa.Column("severity", _severity(), server_default="warning", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_by", sa.String(100), server_default="system", nullable=False),
        sa.ForeignKeyConstraint(["area_id"], ["areas.id"], name=op.f("fk_alarm_rules_area_id_areas")),
        sa.ForeignKeyConstraint(["meter_model_id"], ["meter_models.id"],
                                name=op.f("fk_alarm_rules_meter_model_id_meter_models")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alarm_rules")),
    )
    op.create_index("uq_alarm_rules_target", "alarm_rules", ["kind", "area_id", "meter_model_id"], unique=True,
                    postgresql_nulls_not_distinct=True)
    op.create_table(
        "meter_alarms",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("meter_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", _kind(), nullable=False),
        sa.Column("status", sa.Enum("open", "acknowledged", "closed", name="alarmstatus", native_enum=False,
                                    create_constraint=True, length=32), server_default="open", nullable=False),
        sa.Column("severity", _severity(), server_default="warning", nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value", sa.Numeric(16, 4), nullable=True),
        sa.Column("threshold", sa.Numeric(16, 4), nullable=True),
        sa.Column("detail", sa.Text(), server_default="", nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.String(100), nullable=True),
        sa.Column("acknowledge_note", sa.Text(), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_by", sa.String(100), nullable=True),
        sa.Column("close_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.id"], name=op.f("fk_meter_alarms_meter_id_meters")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_meter_alarms")),
    )
    op.create_index(op.f("ix_meter_alarms_meter_id"), "meter_alarms", ["meter_id"], unique=False)
    op.create_index("ix_meter_alarms_opened_at", "meter_alarms", ["opened_at"], unique=False)
    op.create_index("uq_meter_alarms_live", "meter_alarms", ["meter_id", "kind"], unique=True,
                    postgresql_where=sa.text("status <> 'closed'"))
    op.create_table(
        "meter_link_status",
        sa.Column("meter_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_failure_reason", sa.Text(), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("meter_id", name=op.f("pk_meter_link_status")),
    )
    op.create_table(
        "meter_usage_baselines",
        sa.Column("meter_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("average_m3", sa.Numeric(16, 4), nullable=True),
        sa.PrimaryKeyConstraint("meter_id", name=op.f("pk_meter_usage_baselines")),
    )
    values = ", ".join(f"('{kind}', {threshold}, '{severity}')" for kind, threshold, severity in _DEFAULTS)
    op.execute(f"INSERT INTO alarm_rules (kind, threshold, severity) VALUES {values}")


def downgrade() -> None:
    op.drop_table("meter_usage_baselines")
    op.drop_table("meter_link_status")
    op.drop_index("uq_meter_alarms_live", table_name="meter_alarms", postgresql_where=sa.text("status <> 'closed'"))
    op.drop_index("ix_meter_alarms_opened_at", table_name="meter_alarms")
    op.drop_index(op.f("ix_meter_alarms_meter_id"), table_name="meter_alarms")
    op.drop_table("meter_alarms")
    op.drop_index("uq_alarm_rules_target", table_name="alarm_rules")
    op.drop_table("alarm_rules")
