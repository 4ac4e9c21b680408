"""Payments (收费): every payment of every channel in one table, and the cashier's day.

A **payment** is money in (``collect``: a recharge or a bill payment) or out (``refund``:
a closed account's balance given back) through one channel. Each has a unique 流水号
(``serial_no``), the caller's idempotency key (a double click never charges twice), the
operator, the account, the purpose, the amount in fen (always positive; ``kind`` gives the
direction), the channel's reference where it has one (POS 参考号, transfer serial, the
bank's transaction number) and for bank payments the partner and outlet. Its ledger
entry (``entry_id``) is posted through billing's ``post_entry`` in the same transaction.
A payment is never deleted: a reversal (冲正) posts the opposite entry and marks it
``reversed``.

A **cashier's day** (日结) is one operator's takings for one business day (the utility's
zone), handed over and locked: a locked day takes no more payments or reversals by that
operator on that day.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from backend.db import enum_column, timestamptz


class PaymentChannel(StrEnum):
    """How the money moved (DESIGN.md "Enums"; the brochure's 充值方式)."""

    cash = "cash"  # 现金
    transfer = "transfer"  # 转账 (serial required)
    card = "card"  # 刷卡 (POS 参考号 required)
    alipay = "alipay"  # 支付宝
    wechat = "wechat"  # 微信
    bank = "bank"  # 银行代收 / 代扣 (partner required)
    other = "other"  # 其它


class PaymentPurpose(StrEnum):
    recharge = "recharge"  # 充值: money onto a prepaid balance
    bills = "bills"  # 缴费: postpaid bills (oldest first once bills exist)


class PaymentKind(StrEnum):
    collect = "collect"  # money in
    refund = "refund"  # money out (退费)


class PaymentStatus(StrEnum):
    succeeded = "succeeded"
    reversed = "reversed"  # 已冲正


class Payment(SQLModel, table=True):
    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint("amount_fen > 0", name="amount_positive"),
        Index("ix_payments_business_day_operator", "business_day", "operator_id"),
        Index("ix_payments_account_paid", "account_id", "paid_at"),
    )
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    serial_no: str = Field(sa_column=Column(String(32), nullable=False, unique=True))
    idempotency_key: str = Field(sa_column=Column(String(100), nullable=False, unique=True))
    account_id: int = Field(sa_column=Column(BigInteger, ForeignKey("accounts.id"), nullable=False))
    household_id: int = Field(sa_column=Column(BigInteger, ForeignKey("households.id"), nullable=False, index=True))
    kind: PaymentKind = Field(sa_column=enum_column(PaymentKind, nullable=False))
    channel: PaymentChannel = Field(sa_column=enum_column(PaymentChannel, nullable=False))
    purpose: PaymentPurpose = Field(sa_column=enum_column(PaymentPurpose, nullable=False))
    amount_fen: int = Field(sa_column=Column(BigInteger, nullable=False))
    # POS 参考号, transfer serial, the bank's or the gateway's transaction number.
    reference: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    bank_partner: str | None = Field(default=None, sa_column=Column(String(50), nullable=True))
    bank_outlet: str | None = Field(default=None, sa_column=Column(String(50), nullable=True))
    # The staff user at the counter; None for money that came in by itself (online, bank).
    operator_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("staff_users.id"), nullable=True))
    operator_name: str = Field(sa_column=Column(String(100), nullable=False))
    status: PaymentStatus = Field(default=PaymentStatus.succeeded, sa_column=enum_column(PaymentStatus, nullable=False))
    entry_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("ledger_entries.id"),
                                                                nullable=True))
    reversal_entry_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("ledger_entries.id"),
                                                                         nullable=True))
    reversed_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    reversed_by: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))
    # Who reversed it and on which of their business days: the cash goes out of that till
    # (日结 counts a reversal on the reverser's day, not on the payment's).
    reversed_by_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("staff_users.id"),
                                                                      nullable=True))
    reversal_business_day: date | None = Field(default=None, sa_column=Column(Date, nullable=True))
    reversal_reason: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    note: str = Field(default="", sa_column=Column(String(200), nullable=False, server_default=""))
    # How many times its receipt was printed (0: never; above 1: reprinted, 补打).
    receipts_printed: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    paid_at: datetime = Field(sa_column=timestamptz(nullable=False))
    # The operator's business day in the utility's zone (日结 groups by it).
    business_day: date = Field(sa_column=Column(Date, nullable=False))
    created_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=False, server_default=text("now()")))


class CashierDay(SQLModel, table=True):
    """One operator's handed-over day (日结): the takings by channel, locked."""

    __tablename__ = "cashier_days"
    __table_args__ = (UniqueConstraint("operator_id", "business_day", name="uq_cashier_days_operator_day"),)
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    operator_id: int = Field(sa_column=Column(BigInteger, ForeignKey("staff_users.id"), nullable=False))
    business_day: date = Field(sa_column=Column(Date, nullable=False))
    # {channel: {"collected_fen", "refunded_fen", "reversed_fen", "net_fen", "count"}} as handed over.
    takings: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    net_fen: int = Field(sa_column=Column(BigInteger, nullable=False))
    handed_over_at: datetime = Field(sa_column=timestamptz(nullable=False))
    handed_over_by: str = Field(sa_column=Column(String(100), nullable=False))
    note: str = Field(default="", sa_column=Column(String(200), nullable=False, server_default=""))
