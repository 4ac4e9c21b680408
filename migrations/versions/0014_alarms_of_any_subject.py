"""Alarms of any subject: ``meter_alarms`` becomes ``alarms`` (rows and ids kept), its
meter the subject (``subject_kind`` 'meter', ``subject_id``), with ``area_id`` and
``subject_name`` for subjects that are not meters, and the alarm kinds of the new
subjects. A view ``meter_alarms`` keeps the old table's columns over the meter rows for
reports and SQL written against it (inserts through it make meter alarms).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_METER_KINDS = ("silent", "communication_failure", "reverse_flow", "zero_use", "high_use", "battery_low",
                "valve_abnormal", "rollover")
# Copied from backend.alarms.models, as a migration must not change when the code does.
_KINDS = (*_METER_KINDS, "offline", "verification_failed", "delivery_failing", "loss_high")
_SUBJECT_KINDS = ("meter", "concentrator", "terminal", "payment", "gateway", "zone")

_OLD_COLUMNS = ("id", "meter_id", "kind", "status", "severity", "opened_at", "last_seen_at", "value", "threshold",
                "detail", "acknowledged_at", "acknowledged_by", "acknowledge_note", "closed_at", "closed_by",
                "close_reason")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


def _view() -> str:
    columns = ", ".join("subject_id AS meter_id" if name == "meter_id" else name for name in _OLD_COLUMNS)
    return (f"CREATE VIEW meter_alarms AS SELECT {columns}, subject_kind FROM alarms "
            "WHERE subject_kind = 'meter' WITH CASCADED CHECK OPTION")


def upgrade() -> None:
    op.drop_index("uq_meter_alarms_live", table_name="meter_alarms", postgresql_where=sa.text("status <> 'closed'"))
    op.drop_index("ix_meter_alarms_meter_id", table_name="meter_alarms")
    op.drop_constraint("fk_meter_alarms_meter_id_meters", "meter_alarms", type_="foreignkey")
    op.rename_table("meter_alarms", "alarms")
    op.alter_column("alarms", "meter_id", new_column_name="subject_id")
    op.execute("ALTER TABLE alarms RENAME CONSTRAINT pk_meter_alarms TO pk_alarms")
    op.execute("ALTER SEQUENCE meter_alarms_id_seq RENAME TO alarms_id_seq")
    op.execute("ALTER INDEX ix_meter_alarms_opened_at RENAME TO ix_alarms_opened_at")
    for name in ("alarmstatus", "alarmseverity"):
        op.execute(f"ALTER TABLE alarms RENAME CONSTRAINT ck_meter_alarms_{name} TO ck_alarms_{name}")

    # Every existing row is a meter alarm; new rows name their subject kind.
    op.add_column("alarms", sa.Column("subject_kind", sa.String(32), server_default="meter", nullable=False))
    op.alter_column("alarms", "subject_kind", server_default=None)
    op.create_check_constraint(op.f("ck_alarms_alarmsubjectkind"), "alarms", _one_of("subject_kind", _SUBJECT_KINDS))
    op.add_column("alarms", sa.Column("area_id", sa.BigInteger(), nullable=True))
    op.add_column("alarms", sa.Column("subject_name", sa.String(200), server_default="", nullable=False))

    op.drop_constraint(op.f("ck_meter_alarms_alarmkind"), "alarms", type_="check")
    op.create_check_constraint(op.f("ck_alarms_alarmkind"), "alarms", _one_of("kind", _KINDS))
    # alarm_rules keeps its check: rules hold meter kinds only (readings' AlarmKind).

    op.create_index("uq_alarms_live", "alarms", ["subject_kind", "subject_id", "kind"], unique=True,
                    postgresql_where=sa.text("status <> 'closed'"))
    op.create_index("ix_alarms_subject", "alarms", ["subject_kind", "subject_id"], unique=False)

    op.execute(_view())
    op.execute("ALTER VIEW meter_alarms ALTER COLUMN subject_kind SET DEFAULT 'meter'")


def downgrade() -> None:
    # Only meter alarms fit the old table: the others are dropped.
    op.execute("DROP VIEW meter_alarms")
    op.execute("DELETE FROM alarms WHERE subject_kind <> 'meter'")
    op.drop_index("ix_alarms_subject", table_name="alarms")
    op.drop_index("uq_alarms_live", table_name="alarms", postgresql_where=sa.text("status <> 'closed'"))
    op.drop_constraint(op.f("ck_alarms_alarmkind"), "alarms", type_="check")
    op.create_check_constraint(op.f("ck_meter_alarms_alarmkind"), "alarms", _one_of("kind", _METER_KINDS))
    op.drop_column("alarms", "subject_name")
    op.drop_column("alarms", "area_id")
    op.drop_constraint(op.f("ck_alarms_alarmsubjectkind"), "alarms", type_="check")
    op.drop_column("alarms", "subject_kind")
    for name in ("alarmstatus", "alarmseverity"):
        op.execute(f"ALTER TABLE alarms RENAME CONSTRAINT ck_alarms_{name} TO ck_meter_alarms_{name}")
    op.execute("ALTER INDEX ix_alarms_opened_at RENAME TO ix_meter_alarms_opened_at")
    op.execute("ALTER SEQUENCE alarms_id_seq RENAME TO meter_alarms_id_seq")
    op.execute("ALTER TABLE alarms RENAME CONSTRAINT pk_alarms TO pk_meter_alarms")
    op.alter_column("alarms", "subject_id", new_column_name="meter_id")
    op.rename_table("alarms", "meter_alarms")
    op.create_foreign_key("fk_meter_alarms_meter_id_meters", "meter_alarms", "meters", ["meter_id"], ["id"])
    op.create_index("ix_meter_alarms_meter_id", "meter_alarms", ["meter_id"], unique=False)
    op.create_index("uq_meter_alarms_live", "meter_alarms", ["meter_id", "kind"], unique=True,
                    postgresql_where=sa.text("status <> 'closed'"))
