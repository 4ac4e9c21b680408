"""Payments of every channel and the cashier's day (issue 16).

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def upgrade() -> None:
    op.create_table(
        "payments",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("serial_no", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=100), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("household_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", _enum("paymentkind", "collect", "refund"), nullable=False),
        sa.Column("channel", _enum("paymentchannel", "cash", "transfer", "card", "alipay", "wechat", "bank", "other"),
                  nullable=False),
        sa.Column("purpose", _enum("paymentpurpose", "recharge", "bills"), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("reference", sa.String(length=64), nullable=True),
        sa.Column("bank_partner", sa.String(length=50), nullable=True),
        sa.Column("bank_outlet", sa.String(length=50), nullable=True),
        sa.Column("operator_id", sa.BigInteger(), nullable=True),
        sa.Column("operator_name", sa.String(length=100), nullable=False),
        sa.Column("status", _enum("paymentstatus", "succeeded", "reversed"), nullable=False),
        sa.Column("entry_id", sa.BigInteger(), nullable=True),
        sa.Column("reversal_entry_id", sa.BigInteger(), nullable=True),
        sa.Column("reversed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reversed_by", sa.String(length=100), nullable=True),
        sa.Column("reversed_by_id", sa.BigInteger(), nullable=True),
        sa.Column("reversal_business_day", sa.Date(), nullable=True),
        sa.Column("reversal_reason", sa.String(length=200), nullable=True),
        sa.Column("note", sa.String(length=200), server_default="", nullable=False),
        sa.Column("receipts_printed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("business_day", sa.Date(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("amount_fen > 0", name=op.f("ck_payments_amount_positive")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_payments_account_id_accounts")),
        sa.ForeignKeyConstraint(["household_id"], ["households.id"], name=op.f("fk_payments_household_id_households")),
        sa.ForeignKeyConstraint(["operator_id"], ["staff_users.id"], name=op.f("fk_payments_operator_id_staff_users")),
        sa.ForeignKeyConstraint(["entry_id"], ["ledger_entries.id"], name=op.f("fk_payments_entry_id_ledger_entries")),
        sa.ForeignKeyConstraint(["reversed_by_id"], ["staff_users.id"],
                                name=op.f("fk_payments_reversed_by_id_staff_users")),
        sa.ForeignKeyConstraint(["reversal_entry_id"], ["ledger_entries.id"],
                                name=op.f("fk_payments_reversal_entry_id_ledger_entries")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
        sa.UniqueConstraint("serial_no", name=op.f("uq_payments_serial_no")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_payments_idempotency_key")),
    )
    op.create_index(op.f("ix_payments_household_id"), "payments", ["household_id"], unique=False)
    op.create_index("ix_payments_business_day_operator", "payments", ["business_day", "operator_id"])
    op.create_index("ix_payments_account_paid", "payments", ["account_id", "paid_at"])
    op.create_table(
        "cashier_days",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("operator_id", sa.BigInteger(), nullable=False),
        sa.Column("business_day", sa.Date(), nullable=False),
        sa.Column("takings", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("net_fen", sa.BigInteger(), nullable=False),
        sa.Column("handed_over_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("handed_over_by", sa.String(length=100), nullable=False),
        sa.Column("note", sa.String(length=200), server_default="", nullable=False),
        sa.ForeignKeyConstraint(["operator_id"], ["staff_users.id"],
                                name=op.f("fk_cashier_days_operator_id_staff_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cashier_days")),
        sa.UniqueConstraint("operator_id", "business_day", name="uq_cashier_days_operator_day"),
    )


def downgrade() -> None:
    op.drop_table("cashier_days")
    op.drop_index("ix_payments_account_paid", table_name="payments")
    op.drop_index("ix_payments_business_day_operator", table_name="payments")
    op.drop_index(op.f("ix_payments_household_id"), table_name="payments")
    op.drop_table("payments")
