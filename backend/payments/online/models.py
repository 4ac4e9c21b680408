"""Online payments' tables (在线支付, issue 18): payment orders, the notifications the
gateways sent, refunds through the original channel, and pending card / meter writes.

**A payment order** (``payment_orders``) is one attempt to pay an account online: a unique
``out_trade_no`` (what the gateway knows it by), the channel (``alipay`` | ``wechat``), the
merchant it was made with (a name in the merchants file, ``merchants.py``), the scene
(``OrderScene``), the amount in fen and the purpose. Its state goes ``created`` → ``paid``
(a verified notification, an active query, or a barcode payment that succeeded) or
``closed`` (expired and closed at the gateway, cancelled by the payer or the cashier) or
``failed`` (the gateway refused it: a barcode payment declined). A notification for a
``closed`` order still credits it (the payer's money was taken) and opens an alarm: the
one transition out of ``closed``. ``paid`` is final; ``payment_id`` names the payment it
became (``payments``, channel alipay / wechat), written in the transaction that marks it
paid, exactly once.

**A notification** (``payment_notifications``) keeps what a gateway posted to a notify
route, raw (headers that sign it, the body), with its verdict: ``accepted`` (it paid an
order), ``rejected`` (failed verification: signature, app id / merchant id, unknown
order, amount, status; ``reason`` says which) — and nothing is stored for a repeat of a
notification for an order already paid (a replay writes nothing).

**A refund** (``payment_refunds``) gives money back through the channel a payment came
in by: requested (the gateway was asked), then ``succeeded`` (the gateway confirmed; the
refund payment and its ledger entry are written then) or ``failed``.

**A pending write** (``pending_writes``, 待写卡 / 待写表) is money credited to a
``prepaid_card`` or ``prepaid_meter`` account somewhere other than at the card or the
meter itself: the IC cards issue writes it to the card, the Acquisition issue sends it to
the meter; until then it shows on the account.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Column, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from backend.db import enum_column, timestamptz
from backend.payments.models import PaymentChannel, PaymentPurpose


class OrderScene(StrEnum):
    """Where and how the payer pays (支付场景). Alipay: ``app``, ``wap`` (H5), ``page``
    (desktop), ``qr`` (precreate: a QR the payer scans). WeChat: ``app``, ``h5`` (MWEB),
    ``jsapi`` (inside WeChat, needs the payer's openid), ``native`` (a QR). Both:
    ``barcode`` (付款码: the cashier scans the payer's code)."""

    app = "app"
    wap = "wap"
    page = "page"
    qr = "qr"
    h5 = "h5"
    jsapi = "jsapi"
    native = "native"
    barcode = "barcode"


# The scenes each channel offers.
CHANNEL_SCENES: dict[PaymentChannel, frozenset[OrderScene]] = {
    PaymentChannel.alipay: frozenset({OrderScene.app, OrderScene.wap, OrderScene.page, OrderScene.qr,
                                      OrderScene.barcode}),
    PaymentChannel.wechat: frozenset({OrderScene.app, OrderScene.h5, OrderScene.jsapi, OrderScene.native,
                                      OrderScene.barcode}),
}


class OrderOrigin(StrEnum):
    """Who started the order: a resident in the app or on the pay page, the counter (a
    cashier: barcode pay or a dynamic QR shown to the payer), or the static QR sticker."""

    resident = "resident"
    pay_page = "pay_page"  # paying for an account number, no login
    counter = "counter"
    static_qr = "static_qr"


class OrderState(StrEnum):
    created = "created"
    paid = "paid"
    closed = "closed"
    failed = "failed"


class GatewayApi(StrEnum):
    """Which protocol a merchant speaks."""

    alipay = "alipay"  # OpenAPI, RSA2
    wechat_v2 = "wechat_v2"  # XML, MD5 / HMAC-SHA256 with the API key
    wechat_v3 = "wechat_v3"  # JSON, RSA signatures, AES-GCM encrypted notify resources


class PaymentOrder(SQLModel, table=True):
    __tablename__ = "payment_orders"
    __table_args__ = (
        CheckConstraint("amount_fen > 0", name="amount_positive"),
        CheckConstraint("(state = 'paid') = (paid_at IS NOT NULL AND payment_id IS NOT NULL)", name="paid_complete"),
        CheckConstraint("channel IN ('alipay', 'wechat')", name="online_channel"),
        Index("ix_payment_orders_account_created", "account_id", "created_at"),
        # The query job's work list: orders still open, oldest first.
        Index("ix_payment_orders_open", "created_at", postgresql_where=text("state = 'created'")),
    )
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    # WeChat allows 32 characters, Alipay 64: 'SW' + yyyymmdd + the id, zero-padded to 10.
    out_trade_no: str = Field(sa_column=Column(String(32), nullable=False, unique=True))
    account_id: int = Field(sa_column=Column(BigInteger, ForeignKey("accounts.id"), nullable=False))
    household_id: int = Field(sa_column=Column(BigInteger, ForeignKey("households.id"), nullable=False, index=True))
    channel: PaymentChannel = Field(sa_column=enum_column(PaymentChannel, nullable=False))
    api: GatewayApi = Field(sa_column=enum_column(GatewayApi, nullable=False))
    merchant: str = Field(sa_column=Column(String(50), nullable=False))  # its name in the merchants file
    scene: OrderScene = Field(sa_column=enum_column(OrderScene, nullable=False))
    origin: OrderOrigin = Field(sa_column=enum_column(OrderOrigin, nullable=False))
    purpose: PaymentPurpose = Field(sa_column=enum_column(PaymentPurpose, nullable=False))
    amount_fen: int = Field(sa_column=Column(BigInteger, nullable=False))
    subject: str = Field(sa_column=Column(String(128), nullable=False))  # 商品描述: '水费充值 1001-0203'
    state: OrderState = Field(default=OrderState.created, sa_column=enum_column(OrderState, nullable=False))
    # The client's key: the same key twice is the same order (a double tap).
    idempotency_key: str | None = Field(default=None, sa_column=Column(String(100), nullable=True, unique=True))
    payer_openid: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))  # jsapi
    client_ip: str | None = Field(default=None, sa_column=Column(String(45), nullable=True))
    # Who made it: 'resident:<id>', a staff login, or 'anonymous' (the pay page, the sticker).
    created_by: str = Field(sa_column=Column(String(100), nullable=False))
    # The cashier of a counter order: its payment counts in their day (日结).
    operator_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("staff_users.id"),
                                                                    nullable=True))
    # What the client needs to pay (order string, pay URL, JSAPI parameters, code_url), as
    # the gateway returned it; null for barcode.
    client_payload: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))
    trade_no: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))  # the gateway's id
    payment_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("payments.id"),
                                                                   nullable=True, unique=True))
    failure: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    created_at: datetime = Field(sa_column=timestamptz(nullable=False))
    expires_at: datetime = Field(sa_column=timestamptz(nullable=False))
    paid_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    closed_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    # The active query's bookkeeping (the notification may never come).
    queried_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    queries: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))


class NotificationVerdict(StrEnum):
    accepted = "accepted"
    rejected = "rejected"


class PaymentNotification(SQLModel, table=True):
    __tablename__ = "payment_notifications"
    __table_args__ = (Index("ix_payment_notifications_received", "received_at"),)
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    api: GatewayApi = Field(sa_column=enum_column(GatewayApi, nullable=False))
    # Null when it names no known order (or could not be read far enough to tell).
    order_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("payment_orders.id"),
                                                                 nullable=True, index=True))
    out_trade_no: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    verdict: NotificationVerdict = Field(sa_column=enum_column(NotificationVerdict, nullable=False))
    reason: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    # The headers that sign it (WeChat v3's Wechatpay-*), and the body as received (cut at 64 KiB).
    headers: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False,
                                                                           server_default=text("'{}'::jsonb")))
    body: str = Field(sa_column=Column(Text, nullable=False))
    received_at: datetime = Field(sa_column=timestamptz(nullable=False))


class RefundState(StrEnum):
    requested = "requested"
    succeeded = "succeeded"
    failed = "failed"


class PaymentRefund(SQLModel, table=True):
    __tablename__ = "payment_refunds"
    __table_args__ = (
        CheckConstraint("amount_fen > 0", name="amount_positive"),
        CheckConstraint("(state = 'succeeded') = (refund_payment_id IS NOT NULL)", name="succeeded_has_payment"),
        Index("ix_payment_refunds_open", "requested_at", postgresql_where=text("state = 'requested'")),
    )
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    out_refund_no: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    order_id: int = Field(sa_column=Column(BigInteger, ForeignKey("payment_orders.id"), nullable=False, index=True))
    account_id: int = Field(sa_column=Column(BigInteger, ForeignKey("accounts.id"), nullable=False, index=True))
    amount_fen: int = Field(sa_column=Column(BigInteger, nullable=False))
    state: RefundState = Field(default=RefundState.requested, sa_column=enum_column(RefundState, nullable=False))
    reason: str = Field(sa_column=Column(String(200), nullable=False))
    # The refund payment (kind refund, the order's channel), written when the gateway confirms.
    refund_payment_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("payments.id"),
                                                                          nullable=True, unique=True))
    gateway_refund_id: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    failure: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    requested_by: str = Field(sa_column=Column(String(100), nullable=False))
    requested_at: datetime = Field(sa_column=timestamptz(nullable=False))
    settled_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))


class PendingWriteTarget(StrEnum):
    card = "card"  # 待写卡: the IC cards issue writes it at the next card visit
    meter = "meter"  # 待写表: the Acquisition issue sends it to the meter


class PendingWriteState(StrEnum):
    pending = "pending"
    written = "written"
    cancelled = "cancelled"  # its payment was reversed or refunded before it was written


class PendingWrite(SQLModel, table=True):
    __tablename__ = "pending_writes"
    __table_args__ = (
        CheckConstraint("amount_fen > 0", name="amount_positive"),
        CheckConstraint("(state = 'pending') = (settled_at IS NULL)", name="settled_when_done"),
        Index("ix_pending_writes_account_pending", "account_id", postgresql_where=text("state = 'pending'")),
        CheckConstraint("(purchase_count IS NULL) = (meter_id IS NULL)", name="count_with_meter"),
        # What the meter-write job scans: the pending writes, oldest first.
        Index("ix_pending_writes_meter_pending", "target", "id", postgresql_where=text("state = 'pending'")),
    )
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    account_id: int = Field(sa_column=Column(BigInteger, ForeignKey("accounts.id"), nullable=False))
    household_id: int = Field(sa_column=Column(BigInteger, ForeignKey("households.id"), nullable=False, index=True))
    payment_id: int = Field(sa_column=Column(BigInteger, ForeignKey("payments.id"), nullable=False, unique=True))
    target: PendingWriteTarget = Field(sa_column=enum_column(PendingWriteTarget, nullable=False))
    amount_fen: int = Field(sa_column=Column(BigInteger, nullable=False))
    state: PendingWriteState = Field(default=PendingWriteState.pending,
                                     sa_column=enum_column(PendingWriteState, nullable=False))
    created_at: datetime = Field(sa_column=timestamptz(nullable=False))
    settled_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    settled_by: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))
    # A meter write (待写表, carried out by the remote domain: ``backend.remote.purchases``):
    # the meter that keeps the balance and the purchase count the write carries, set when
    # its first ``write_purchase`` command is queued and kept from then on; the newest
    # command carrying it; when a command carrying it was first claimed for the wire (from
    # then on the money may be on the meter: it cannot be taken back); and why it waits
    # for staff (an unexplained purchase count on the meter) instead of being retried.
    meter_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("meters.id"), nullable=True))
    purchase_count: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    # remote_commands.id: a later domain's table, so no foreign key from payments' model.
    command_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True, index=True))
    sent_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    held_reason: str | None = Field(default=None, sa_column=Column(String(500), nullable=True))
