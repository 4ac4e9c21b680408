"""Meter-side prepaid (智能水表直接预付费, issue 20 item 7): each pending meter write learns
the meter, purchase count and command that carry it (``pending_writes.meter_id``,
``purchase_count``, ``command_id``, ``sent_at``, ``held_reason``); each meter that keeps
its own balance has its purchase count (``meter_purchase_counts``, remote); a command
can be ``cancelled`` (a purchase whose payment went back before it was sent); and the
alarm kind ``purchase_mismatch`` (a meter's purchase count nobody can explain).

Revision ID: 0039
Revises: 0040
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0039"
down_revision = "0040"
branch_labels = None
depends_on = None

# Copied from the models, as a migration must not change when the code does.
_ALARM_KINDS = ("silent", "communication_failure", "reverse_flow", "zero_use", "high_use", "battery_low",
                "valve_abnormal", "rollover", "offline", "verification_failed", "delivery_failing", "loss_high",
                "refund_failed")
_COMMAND_STATES = ("queued", "pending_delivery", "sent", "succeeded", "failed", "timed_out")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


def _tz() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "meter_purchase_counts",
        sa.Column("meter_id", sa.BigInteger(), nullable=False),
        sa.Column("confirmed_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("heard_at", _tz(), nullable=True),
        sa.Column("updated_at", _tz(), nullable=False),
        sa.CheckConstraint("confirmed_count >= 0", name=op.f("ck_meter_purchase_counts_count_not_negative")),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.id"], name=op.f("fk_meter_purchase_counts_meter_id_meters")),
        sa.PrimaryKeyConstraint("meter_id", name=op.f("pk_meter_purchase_counts")),
    )
    op.add_column("pending_writes", sa.Column("meter_id", sa.BigInteger(), nullable=True))
    op.add_column("pending_writes", sa.Column("purchase_count", sa.Integer(), nullable=True))
    op.add_column("pending_writes", sa.Column("command_id", sa.BigInteger(), nullable=True))
    op.add_column("pending_writes", sa.Column("sent_at", _tz(), nullable=True))
    op.add_column("pending_writes", sa.Column("held_reason", sa.String(length=500), nullable=True))
    op.create_foreign_key(op.f("fk_pending_writes_meter_id_meters"), "pending_writes", "meters", ["meter_id"], ["id"])
    op.create_check_constraint(op.f("ck_pending_writes_count_with_meter"), "pending_writes",
                               "(purchase_count IS NULL) = (meter_id IS NULL)")
    op.create_index("ix_pending_writes_meter_pending", "pending_writes", ["target", "id"], unique=False,
                    postgresql_where=sa.text("state = 'pending'"))
    op.create_index("ix_pending_writes_command_id", "pending_writes", ["command_id"], unique=False)
    op.drop_constraint(op.f("ck_remote_commands_commandstate"), "remote_commands", type_="check")
    op.create_check_constraint(op.f("ck_remote_commands_commandstate"), "remote_commands",
                               _one_of("state", (*_COMMAND_STATES, "cancelled")))
    op.drop_constraint(op.f("ck_alarms_alarmkind"), "alarms", type_="check")
    op.create_check_constraint(op.f("ck_alarms_alarmkind"), "alarms", _one_of("kind", (*_ALARM_KINDS, "purchase_mismatch")))


def downgrade() -> None:
    op.execute("DELETE FROM alarms WHERE kind = 'purchase_mismatch'")
    op.drop_constraint(op.f("ck_alarms_alarmkind"), "alarms", type_="check")
    op.create_check_constraint(op.f("ck_alarms_alarmkind"), "alarms", _one_of("kind", _ALARM_KINDS))
    op.execute("UPDATE remote_commands SET state = 'failed' WHERE state = 'cancelled'")
    op.drop_constraint(op.f("ck_remote_commands_commandstate"), "remote_commands", type_="check")
    op.create_check_constraint(op.f("ck_remote_commands_commandstate"), "remote_commands",
                               _one_of("state", _COMMAND_STATES))
    op.drop_index("ix_pending_writes_command_id", table_name="pending_writes")
    op.drop_index("ix_pending_writes_meter_pending", table_name="pending_writes")
    op.drop_constraint(op.f("ck_pending_writes_count_with_meter"), "pending_writes", type_="check")
    op.drop_constraint(op.f("fk_pending_writes_meter_id_meters"), "pending_writes", type_="foreignkey")
    for column in ("held_reason", "sent_at", "command_id", "purchase_count", "meter_id"):
        op.drop_column("pending_writes", column)
    op.drop_table("meter_purchase_counts")
