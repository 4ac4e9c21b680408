"""Postpaid bills (issue 17, items 3-5): billing runs, bills and their lines, bill
allocations, late-fee rules per customer type, and bimonthly areas
(``backend.billing.bills_models`` says what each column means).

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "late_fee_rules",
        sa.Column(
            "customer_type",
            sa.Enum("residential", "non_residential", "special", name="customertype", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("daily_rate", sa.Numeric(precision=10, scale=8), nullable=False),
        sa.Column("grace_days", sa.Integer(), nullable=False),
        sa.Column("cap_percent", sa.Integer(), nullable=False),
        sa.Column("updated_by", sa.String(length=100), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("cap_percent BETWEEN 0 AND 1000", name=op.f("ck_late_fee_rules_cap_percent_valid")),
        sa.CheckConstraint("daily_rate >= 0 AND daily_rate <= 0.01", name=op.f("ck_late_fee_rules_daily_rate_valid")),
        sa.CheckConstraint("grace_days BETWEEN 0 AND 365", name=op.f("ck_late_fee_rules_grace_days_valid")),
        sa.PrimaryKeyConstraint("customer_type", name=op.f("pk_late_fee_rules")),
    )
    op.create_table(
        "area_billing_cycles",
        sa.Column("area_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("months", sa.SmallInteger(), nullable=False),
        sa.Column("first_month", sa.SmallInteger(), server_default="1", nullable=False),
        sa.Column("updated_by", sa.String(length=100), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("first_month IN (1, 2)", name=op.f("ck_area_billing_cycles_first_month_valid")),
        sa.CheckConstraint("months IN (1, 2)", name=op.f("ck_area_billing_cycles_months_valid")),
        sa.ForeignKeyConstraint(["area_id"], ["areas.id"], name=op.f("fk_area_billing_cycles_area_id_areas"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("area_id", name=op.f("pk_area_billing_cycles")),
    )
    op.create_table(
        "billing_runs",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("area_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "status",
            sa.Enum("running", "finished", "failed", name="billingrunstatus", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("started_by", sa.String(length=100), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("accounts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("issued", sa.Integer(), server_default="0", nullable=False),
        sa.Column("held", sa.Integer(), server_default="0", nullable=False),
        sa.Column("already_billed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("skipped", sa.Integer(), server_default="0", nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint("extract(day FROM period) = 1", name=op.f("ck_billing_runs_period_first_day")),
        sa.ForeignKeyConstraint(["area_id"], ["areas.id"], name=op.f("fk_billing_runs_area_id_areas")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_runs")),
    )
    op.create_index(op.f("ix_billing_runs_period"), "billing_runs", ["period"], unique=False)
    op.create_table(
        "bills",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("household_id", sa.BigInteger(), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("months", sa.SmallInteger(), server_default="1", nullable=False),
        sa.Column(
            "kind", sa.Enum("regular", "final", name="billkind", native_enum=False, create_constraint=True, length=32), nullable=False
        ),
        sa.Column(
            "status",
            sa.Enum("open", "paid", "voided", name="billstatus", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tariff_code", sa.String(length=40), nullable=False),
        sa.Column("persons", sa.Integer(), nullable=True),
        sa.Column("start_readings", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("end_readings", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("measured_m3", sa.Numeric(precision=16, scale=4), nullable=False),
        sa.Column("volume_m3", sa.Numeric(precision=16, scale=4), nullable=False),
        sa.Column("cycle_start", sa.Date(), nullable=False),
        sa.Column("prior_cycle_m3", sa.Numeric(precision=16, scale=4), server_default="0", nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("principal_paid_fen", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("due_date", sa.Date(), nullable=False),
        sa.Column("late_fee_rate", sa.Numeric(precision=10, scale=8), server_default="0", nullable=False),
        sa.Column("late_fee_cap_fen", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("late_fee_carried", sa.Numeric(precision=24, scale=8), server_default="0", nullable=False),
        sa.Column("late_fee_from", sa.Date(), nullable=True),
        sa.Column("late_fee_posted_fen", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("late_fee_paid_fen", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("late_fee_waived_fen", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("late_fee_waived_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("late_fee_waived_by", sa.String(length=100), nullable=True),
        sa.Column("late_fee_waiver_reason", sa.Text(), nullable=True),
        sa.Column("entry_id", sa.BigInteger(), nullable=True),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issued_by", sa.String(length=100), nullable=False),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("voided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("voided_by", sa.String(length=100), nullable=True),
        sa.Column("void_reason", sa.Text(), nullable=True),
        sa.Column("void_entry_id", sa.BigInteger(), nullable=True),
        sa.Column("reissue_of_id", sa.BigInteger(), nullable=True),
        sa.Column("credited_m3", sa.Numeric(precision=16, scale=4), server_default="0", nullable=False),
        sa.Column("credit_fen", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("credit_entry_id", sa.BigInteger(), nullable=True),
        sa.CheckConstraint("(status = 'voided') = (voided_at IS NOT NULL)", name=op.f("ck_bills_voided_when_voided_at")),
        sa.CheckConstraint("amount_fen >= 0", name=op.f("ck_bills_amount_not_negative")),
        sa.CheckConstraint("extract(day FROM period) = 1", name=op.f("ck_bills_period_first_day")),
        sa.CheckConstraint("late_fee_paid_fen BETWEEN 0 AND late_fee_posted_fen", name=op.f("ck_bills_late_fee_paid_within_posted")),
        sa.CheckConstraint("late_fee_paid_fen + late_fee_waived_fen <= late_fee_cap_fen", name=op.f("ck_bills_late_fee_within_cap")),
        sa.CheckConstraint("months >= 1", name=op.f("ck_bills_months_valid")),
        sa.CheckConstraint("credit_fen >= 0", name=op.f("ck_bills_credit_not_negative")),
        sa.CheckConstraint("principal_paid_fen BETWEEN 0 AND amount_fen", name=op.f("ck_bills_principal_paid_within_amount")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_bills_account_id_accounts")),
        sa.ForeignKeyConstraint(["entry_id"], ["ledger_entries.id"], name=op.f("fk_bills_entry_id_ledger_entries")),
        sa.ForeignKeyConstraint(["credit_entry_id"], ["ledger_entries.id"], name=op.f("fk_bills_credit_entry_id_ledger_entries")),
        sa.ForeignKeyConstraint(["household_id"], ["households.id"], name=op.f("fk_bills_household_id_households")),
        sa.ForeignKeyConstraint(["reissue_of_id"], ["bills.id"], name=op.f("fk_bills_reissue_of_id_bills")),
        sa.ForeignKeyConstraint(["run_id"], ["billing_runs.id"], name=op.f("fk_bills_run_id_billing_runs")),
        sa.ForeignKeyConstraint(["void_entry_id"], ["ledger_entries.id"], name=op.f("fk_bills_void_entry_id_ledger_entries")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bills")),
    )
    op.create_index(op.f("ix_bills_household_id"), "bills", ["household_id"], unique=False)
    op.create_index("ix_bills_open_account", "bills", ["account_id", "period"], unique=False, postgresql_where=sa.text("status = 'open'"))
    op.create_index("ix_bills_period_status", "bills", ["period", "status"], unique=False)
    op.create_index(op.f("ix_bills_run_id"), "bills", ["run_id"], unique=False)
    op.create_index(
        "uq_bills_live_account_period", "bills", ["account_id", "period"], unique=True, postgresql_where=sa.text("status <> 'voided'")
    )
    op.create_table(
        "bill_allocations",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("bill_id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("entry_id", sa.BigInteger(), nullable=True),
        sa.Column("late_fee_fen", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("principal_fen", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("undoes_id", sa.BigInteger(), nullable=True),
        sa.Column("allocated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(late_fee_fen >= 0 AND principal_fen >= 0) OR (late_fee_fen <= 0 AND principal_fen <= 0)",
            name=op.f("ck_bill_allocations_one_sign"),
        ),
        sa.CheckConstraint("late_fee_fen <> 0 OR principal_fen <> 0", name=op.f("ck_bill_allocations_not_empty")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_bill_allocations_account_id_accounts")),
        sa.ForeignKeyConstraint(["bill_id"], ["bills.id"], name=op.f("fk_bill_allocations_bill_id_bills")),
        sa.ForeignKeyConstraint(["entry_id"], ["ledger_entries.id"], name=op.f("fk_bill_allocations_entry_id_ledger_entries")),
        sa.ForeignKeyConstraint(["undoes_id"], ["bill_allocations.id"], name=op.f("fk_bill_allocations_undoes_id_bill_allocations")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bill_allocations")),
    )
    op.create_index(op.f("ix_bill_allocations_bill_id"), "bill_allocations", ["bill_id"], unique=False)
    op.create_index("ix_bill_allocations_entry", "bill_allocations", ["entry_id"], unique=False)
    op.create_table(
        "bill_lines",
        sa.Column("bill_id", sa.BigInteger(), nullable=False),
        sa.Column("line_no", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("component", sa.String(length=40), nullable=False),
        sa.Column("tier", sa.SmallInteger(), nullable=False),
        sa.Column("volume_m3", sa.Numeric(precision=16, scale=4), nullable=False),
        sa.Column("price", sa.Numeric(precision=12, scale=4), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("valid_from", sa.Date(), nullable=False),
        sa.ForeignKeyConstraint(["bill_id"], ["bills.id"], name=op.f("fk_bill_lines_bill_id_bills"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("bill_id", "line_no", name=op.f("pk_bill_lines")),
    )


def downgrade() -> None:
    op.drop_table("bill_lines")
    op.drop_index("ix_bill_allocations_entry", table_name="bill_allocations")
    op.drop_index(op.f("ix_bill_allocations_bill_id"), table_name="bill_allocations")
    op.drop_table("bill_allocations")
    op.drop_index("uq_bills_live_account_period", table_name="bills", postgresql_where=sa.text("status <> 'voided'"))
    op.drop_index(op.f("ix_bills_run_id"), table_name="bills")
    op.drop_index("ix_bills_period_status", table_name="bills")
    op.drop_index("ix_bills_open_account", table_name="bills", postgresql_where=sa.text("status = 'open'"))
    op.drop_index(op.f("ix_bills_household_id"), table_name="bills")
    op.drop_table("bills")
    op.drop_index(op.f("ix_billing_runs_period"), table_name="billing_runs")
    op.drop_table("billing_runs")
    op.drop_table("area_billing_cycles")
    op.drop_table("late_fee_rules")
