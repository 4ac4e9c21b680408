"""Refunds and reconciliation (issue 18): reconciliation runs and their mismatches
(``backend.payments.online.reconcile_models``), and the alarm kind ``refund_failed`` (a
gateway refused a refund through the original channel: an alarm on the payment).

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None

# Copied from backend.alarms.models, as a migration must not change when the code does.
_KINDS = ("silent", "communication_failure", "reverse_flow", "zero_use", "high_use", "battery_low", "valve_abnormal",
          "rollover", "offline", "verification_failed", "delivery_failing", "loss_high")
_CHANNELS = ("cash", "transfer", "card", "alipay", "wechat", "bank", "other")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def upgrade() -> None:
    op.drop_constraint(op.f("ck_alarms_alarmkind"), "alarms", type_="check")
    op.create_check_constraint(op.f("ck_alarms_alarmkind"), "alarms", _one_of("kind", (*_KINDS, "refund_failed")))
    op.create_table(
        "reconciliation_runs",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("channel", _enum("paymentchannel", *_CHANNELS), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("merchants", sa.String(length=500), nullable=False),
        sa.Column("outcome", _enum("reconciliationoutcome", "matched", "mismatched", "failed"), nullable=False),
        sa.Column("our_count", sa.Integer(), nullable=False),
        sa.Column("our_fen", sa.BigInteger(), nullable=False),
        sa.Column("their_count", sa.Integer(), nullable=False),
        sa.Column("their_fen", sa.BigInteger(), nullable=False),
        sa.Column("mismatch_count", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("run_by", sa.String(length=100), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_runs")),
    )
    op.create_index("ix_reconciliation_runs_channel_day", "reconciliation_runs", ["channel", "day"], unique=False)
    op.create_table(
        "reconciliation_mismatches",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", _enum("mismatchkind", "missing_ours", "missing_theirs", "amount_differs"), nullable=False),
        sa.Column("line_kind", _enum("statementkind", "payment", "refund"), nullable=False),
        sa.Column("merchant", sa.String(length=50), nullable=False),
        sa.Column("out_trade_no", sa.String(length=64), nullable=False),
        sa.Column("out_refund_no", sa.String(length=64), nullable=True),
        sa.Column("trade_no", sa.String(length=64), nullable=True),
        sa.Column("our_fen", sa.BigInteger(), nullable=True),
        sa.Column("their_fen", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.String(length=200), server_default="", nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["reconciliation_runs.id"],
                                name=op.f("fk_reconciliation_mismatches_run_id_reconciliation_runs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_mismatches")),
    )
    op.create_index(op.f("ix_reconciliation_mismatches_run_id"), "reconciliation_mismatches", ["run_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_reconciliation_mismatches_run_id"), table_name="reconciliation_mismatches")
    op.drop_table("reconciliation_mismatches")
    op.drop_index("ix_reconciliation_runs_channel_day", table_name="reconciliation_runs")
    op.drop_table("reconciliation_runs")
    op.execute("DELETE FROM alarms WHERE kind = 'refund_failed'")
    op.drop_constraint(op.f("ck_alarms_alarmkind"), "alarms", type_="check")
    op.create_check_constraint(op.f("ck_alarms_alarmkind"), "alarms", _one_of("kind", _KINDS))
