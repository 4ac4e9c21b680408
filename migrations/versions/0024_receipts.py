"""Receipts: layouts, prints and numbered pre-printed form stock (issue 16).

The default layout is created on first use (backend.payments.receipts.service), so its
definition lives in one place.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "receipt_layouts",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("spec", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("is_default", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_by", sa.String(length=100), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_receipt_layouts")),
        sa.UniqueConstraint("name", name=op.f("uq_receipt_layouts_name")),
    )
    op.create_index("uq_receipt_layouts_default", "receipt_layouts", ["is_default"], unique=True,
                    postgresql_where=sa.text("is_default"))
    op.create_table(
        "receipt_form_batches",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("prefix", sa.String(length=20), server_default="", nullable=False),
        sa.Column("first_no", sa.BigInteger(), nullable=False),
        sa.Column("last_no", sa.BigInteger(), nullable=False),
        sa.Column("digits", sa.Integer(), nullable=False),
        sa.Column("operator_id", sa.BigInteger(), nullable=False),
        sa.Column("issued_by", sa.String(length=100), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.String(length=200), server_default="", nullable=False),
        sa.CheckConstraint("first_no >= 0 AND last_no >= first_no", name=op.f("ck_receipt_form_batches_range_valid")),
        sa.CheckConstraint("digits BETWEEN 1 AND 18", name=op.f("ck_receipt_form_batches_digits_valid")),
        sa.ForeignKeyConstraint(["operator_id"], ["staff_users.id"],
                                name=op.f("fk_receipt_form_batches_operator_id_staff_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_receipt_form_batches")),
    )
    op.create_index("ix_receipt_form_batches_operator", "receipt_form_batches", ["operator_id", "id"])
    op.create_table(
        "receipt_prints",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("payment_id", sa.BigInteger(), nullable=False),
        sa.Column("layout_id", sa.BigInteger(), nullable=False),
        sa.Column("form_batch_id", sa.BigInteger(), nullable=True),
        sa.Column("form_number", sa.BigInteger(), nullable=True),
        sa.Column("form_no", sa.String(length=40), nullable=True),
        sa.Column("reprint", sa.Boolean(), nullable=False),
        sa.Column("printed_by_id", sa.BigInteger(), nullable=True),
        sa.Column("printed_by", sa.String(length=100), nullable=False),
        sa.Column("printed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(form_batch_id IS NULL) = (form_number IS NULL) AND (form_batch_id IS NULL) = (form_no IS NULL)",
            name=op.f("ck_receipt_prints_form_complete")),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"], name=op.f("fk_receipt_prints_payment_id_payments")),
        sa.ForeignKeyConstraint(["layout_id"], ["receipt_layouts.id"],
                                name=op.f("fk_receipt_prints_layout_id_receipt_layouts")),
        sa.ForeignKeyConstraint(["form_batch_id"], ["receipt_form_batches.id"],
                                name=op.f("fk_receipt_prints_form_batch_id_receipt_form_batches")),
        sa.ForeignKeyConstraint(["printed_by_id"], ["staff_users.id"],
                                name=op.f("fk_receipt_prints_printed_by_id_staff_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_receipt_prints")),
        sa.UniqueConstraint("form_batch_id", "form_number", name="uq_receipt_prints_form"),
    )
    op.create_index("ix_receipt_prints_payment", "receipt_prints", ["payment_id", "id"])
    op.create_table(
        "receipt_form_voids",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("form_batch_id", sa.BigInteger(), nullable=False),
        sa.Column("form_number", sa.BigInteger(), nullable=False),
        sa.Column("form_no", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("voided_by", sa.String(length=100), nullable=False),
        sa.Column("voided_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["form_batch_id"], ["receipt_form_batches.id"],
                                name=op.f("fk_receipt_form_voids_form_batch_id_receipt_form_batches")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_receipt_form_voids")),
        sa.UniqueConstraint("form_batch_id", "form_number", name="uq_receipt_form_voids_form"),
    )


def downgrade() -> None:
    op.drop_table("receipt_form_voids")
    op.drop_index("ix_receipt_prints_payment", table_name="receipt_prints")
    op.drop_table("receipt_prints")
    op.drop_index("ix_receipt_form_batches_operator", table_name="receipt_form_batches")
    op.drop_table("receipt_form_batches")
    op.drop_index("uq_receipt_layouts_default", table_name="receipt_layouts")
    op.drop_table("receipt_layouts")
