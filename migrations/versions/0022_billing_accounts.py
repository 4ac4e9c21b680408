"""Billing's accounts, the append-only ledger and prepaid cycles (issue 15 items 2–4).

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("household_id", sa.BigInteger(), nullable=False),
        sa.Column("mode", _enum("billingmode", "prepaid_station", "prepaid_card", "prepaid_meter", "postpaid"),
                  nullable=False),
        sa.Column("tariff_code", sa.String(length=40), nullable=False),
        sa.Column("persons", sa.Integer(), nullable=True),
        sa.Column("balance_fen", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("alert_threshold_fen", sa.BigInteger(), nullable=False),
        sa.Column("close_threshold_fen", sa.BigInteger(), nullable=False),
        sa.Column("grace_fen", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("vulnerable", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("status", _enum("accountstatus", "open", "closed"), nullable=False),
        sa.Column("alert_state", _enum("alertstate", "normal", "alert", "close"), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("opened_by", sa.String(length=100), server_default="", nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_by", sa.String(length=100), nullable=True),
        sa.Column("settled_to", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tariff_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("close_threshold_fen <= alert_threshold_fen", name=op.f("ck_accounts_thresholds_ordered")),
        sa.CheckConstraint("grace_fen >= 0", name=op.f("ck_accounts_grace_not_negative")),
        sa.ForeignKeyConstraint(["household_id"], ["households.id"], name=op.f("fk_accounts_household_id_households")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
    )
    op.create_index(op.f("ix_accounts_household_id"), "accounts", ["household_id"], unique=False)
    op.create_index("uq_accounts_open_household", "accounts", ["household_id"], unique=True,
                    postgresql_where=sa.text("status = 'open'"))

    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", _enum("entrykind", "recharge", "charge", "bill", "payment", "late_fee", "adjustment",
                                "refund", "reversal", "write_off"), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("balance_after_fen", sa.BigInteger(), nullable=False),
        sa.Column("ref", sa.String(length=100), server_default="", nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("cycle_start", sa.Date(), nullable=True),
        sa.Column("volume_m3", sa.Numeric(16, 4), nullable=True),
        sa.Column("note", sa.String(length=200), server_default="", nullable=False),
        sa.Column("posted_by", sa.String(length=100), server_default="", nullable=False),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount_fen <> 0", name=op.f("ck_ledger_entries_amount_not_zero")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_ledger_entries_account_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_ledger_entries_idempotency_key")),
    )
    op.create_index("ix_ledger_entries_account_posted", "ledger_entries", ["account_id", "posted_at", "id"])
    # Nothing edits or deletes a ledger entry (DESIGN.md "Money"): the database says so too.
    op.execute("""
        CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'ledger entries are append-only: post a reversal or an adjustment instead'
                USING ERRCODE = 'restrict_violation';
        END $$
    """)
    op.execute("""
        CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
        FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only()
    """)

    op.create_table(
        "prepaid_cycles",
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("cycle_start", sa.Date(), nullable=False),
        sa.Column("cycle_end", sa.Date(), nullable=False),
        sa.Column("volume_m3", sa.Numeric(16, 4), nullable=False),
        sa.Column("charged_fen", sa.BigInteger(), nullable=False),
        sa.Column("settled_to", sa.DateTime(timezone=True), nullable=False),
        sa.Column("entries", sa.Integer(), server_default="0", nullable=False),
        sa.Column("base_fen", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("base_volume_m3", sa.Numeric(16, 4), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_prepaid_cycles_account_id_accounts")),
        sa.PrimaryKeyConstraint("account_id", "cycle_start", name=op.f("pk_prepaid_cycles")),
    )


def downgrade() -> None:
    op.drop_table("prepaid_cycles")
    op.execute("DROP TRIGGER ledger_entries_append_only ON ledger_entries")
    op.execute("DROP FUNCTION ledger_entries_append_only()")
    op.drop_index("ix_ledger_entries_account_posted", table_name="ledger_entries")
    op.drop_table("ledger_entries")
    op.drop_index("uq_accounts_open_household", table_name="accounts")
    op.drop_index(op.f("ix_accounts_household_id"), table_name="accounts")
    op.drop_table("accounts")
