"""Online payments (issue 18): payment orders, their notifications, refunds through the
original channel, and pending card / meter writes (``backend.payments.online.models``
says what each column means).

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payment_orders",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("out_trade_no", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("household_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "channel",
            sa.Enum(
                "cash",
                "transfer",
                "card",
                "alipay",
                "wechat",
                "bank",
                "other",
                name="paymentchannel",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "api",
            sa.Enum("alipay", "wechat_v2", "wechat_v3", name="gatewayapi", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("merchant", sa.String(length=50), nullable=False),
        sa.Column(
            "scene",
            sa.Enum(
                "app",
                "wap",
                "page",
                "qr",
                "h5",
                "jsapi",
                "native",
                "barcode",
                name="orderscene",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "origin",
            sa.Enum(
                "resident", "pay_page", "counter", "static_qr", name="orderorigin", native_enum=False, create_constraint=True, length=32
            ),
            nullable=False,
        ),
        sa.Column(
            "purpose",
            sa.Enum("recharge", "bills", name="paymentpurpose", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column(
            "state",
            sa.Enum("created", "paid", "closed", "failed", name="orderstate", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("idempotency_key", sa.String(length=100), nullable=True),
        sa.Column("payer_openid", sa.String(length=128), nullable=True),
        sa.Column("client_ip", sa.String(length=45), nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("operator_id", sa.BigInteger(), nullable=True),
        sa.Column("client_payload", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("trade_no", sa.String(length=64), nullable=True),
        sa.Column("payment_id", sa.BigInteger(), nullable=True),
        sa.Column("failure", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("queried_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("queries", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint(
            "(state = 'paid') = (paid_at IS NOT NULL AND payment_id IS NOT NULL)", name=op.f("ck_payment_orders_paid_complete")
        ),
        sa.CheckConstraint("channel IN ('alipay', 'wechat')", name=op.f("ck_payment_orders_online_channel")),
        sa.CheckConstraint("amount_fen > 0", name=op.f("ck_payment_orders_amount_positive")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_payment_orders_account_id_accounts")),
        sa.ForeignKeyConstraint(["household_id"], ["households.id"], name=op.f("fk_payment_orders_household_id_households")),
        sa.ForeignKeyConstraint(["operator_id"], ["staff_users.id"], name=op.f("fk_payment_orders_operator_id_staff_users")),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"], name=op.f("fk_payment_orders_payment_id_payments")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_orders")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_payment_orders_idempotency_key")),
        sa.UniqueConstraint("out_trade_no", name=op.f("uq_payment_orders_out_trade_no")),
        sa.UniqueConstraint("payment_id", name=op.f("uq_payment_orders_payment_id")),
    )
    op.create_index("ix_payment_orders_account_created", "payment_orders", ["account_id", "created_at"], unique=False)
    op.create_index(op.f("ix_payment_orders_household_id"), "payment_orders", ["household_id"], unique=False)
    op.create_index("ix_payment_orders_open", "payment_orders", ["created_at"], unique=False, postgresql_where=sa.text("state = 'created'"))
    op.create_table(
        "pending_writes",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("household_id", sa.BigInteger(), nullable=False),
        sa.Column("payment_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "target",
            sa.Enum("card", "meter", name="pendingwritetarget", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column(
            "state",
            sa.Enum("pending", "written", "cancelled", name="pendingwritestate", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("settled_by", sa.String(length=100), nullable=True),
        sa.CheckConstraint("(state = 'pending') = (settled_at IS NULL)", name=op.f("ck_pending_writes_settled_when_done")),
        sa.CheckConstraint("amount_fen > 0", name=op.f("ck_pending_writes_amount_positive")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_pending_writes_account_id_accounts")),
        sa.ForeignKeyConstraint(["household_id"], ["households.id"], name=op.f("fk_pending_writes_household_id_households")),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"], name=op.f("fk_pending_writes_payment_id_payments")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_writes")),
        sa.UniqueConstraint("payment_id", name=op.f("uq_pending_writes_payment_id")),
    )
    op.create_index(
        "ix_pending_writes_account_pending", "pending_writes", ["account_id"], unique=False, postgresql_where=sa.text("state = 'pending'")
    )
    op.create_index(op.f("ix_pending_writes_household_id"), "pending_writes", ["household_id"], unique=False)
    op.create_table(
        "payment_notifications",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column(
            "api",
            sa.Enum("alipay", "wechat_v2", "wechat_v3", name="gatewayapi", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("order_id", sa.BigInteger(), nullable=True),
        sa.Column("out_trade_no", sa.String(length=64), nullable=True),
        sa.Column(
            "verdict",
            sa.Enum("accepted", "rejected", name="notificationverdict", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("headers", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["payment_orders.id"], name=op.f("fk_payment_notifications_order_id_payment_orders")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_notifications")),
    )
    op.create_index(op.f("ix_payment_notifications_order_id"), "payment_notifications", ["order_id"], unique=False)
    op.create_index("ix_payment_notifications_received", "payment_notifications", ["received_at"], unique=False)
    op.create_table(
        "payment_refunds",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("out_refund_no", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column(
            "state",
            sa.Enum("requested", "succeeded", "failed", name="refundstate", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("refund_payment_id", sa.BigInteger(), nullable=True),
        sa.Column("gateway_refund_id", sa.String(length=64), nullable=True),
        sa.Column("failure", sa.String(length=200), nullable=True),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(state = 'succeeded') = (refund_payment_id IS NOT NULL)", name=op.f("ck_payment_refunds_succeeded_has_payment")
        ),
        sa.CheckConstraint("amount_fen > 0", name=op.f("ck_payment_refunds_amount_positive")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_payment_refunds_account_id_accounts")),
        sa.ForeignKeyConstraint(["order_id"], ["payment_orders.id"], name=op.f("fk_payment_refunds_order_id_payment_orders")),
        sa.ForeignKeyConstraint(["refund_payment_id"], ["payments.id"], name=op.f("fk_payment_refunds_refund_payment_id_payments")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_refunds")),
        sa.UniqueConstraint("out_refund_no", name=op.f("uq_payment_refunds_out_refund_no")),
        sa.UniqueConstraint("refund_payment_id", name=op.f("uq_payment_refunds_refund_payment_id")),
    )
    op.create_index(op.f("ix_payment_refunds_account_id"), "payment_refunds", ["account_id"], unique=False)
    op.create_index(
        "ix_payment_refunds_open", "payment_refunds", ["requested_at"], unique=False, postgresql_where=sa.text("state = 'requested'")
    )
    op.create_index(op.f("ix_payment_refunds_order_id"), "payment_refunds", ["order_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_payment_refunds_order_id"), table_name="payment_refunds")
    op.drop_index("ix_payment_refunds_open", table_name="payment_refunds", postgresql_where=sa.text("state = 'requested'"))
    op.drop_index(op.f("ix_payment_refunds_account_id"), table_name="payment_refunds")
    op.drop_table("payment_refunds")
    op.drop_index("ix_payment_notifications_received", table_name="payment_notifications")
    op.drop_index(op.f("ix_payment_notifications_order_id"), table_name="payment_notifications")
    op.drop_table("payment_notifications")
    op.drop_index(op.f("ix_pending_writes_household_id"), table_name="pending_writes")
    op.drop_index("ix_pending_writes_account_pending", table_name="pending_writes", postgresql_where=sa.text("state = 'pending'"))
    op.drop_table("pending_writes")
    op.drop_index("ix_payment_orders_open", table_name="payment_orders", postgresql_where=sa.text("state = 'created'"))
    op.drop_index(op.f("ix_payment_orders_household_id"), table_name="payment_orders")
    op.drop_index("ix_payment_orders_account_created", table_name="payment_orders")
    op.drop_table("payment_orders")
