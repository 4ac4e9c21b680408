"""Billing's tables: tariffs, accounts, the ledger and prepaid cycles (below), and the
postpaid groundwork (reading reviews; reading routes are in ``routes_models``).

**Tariffs** (水价): one row per version, keyed by (code, valid_from). A version is
immutable once written: its rules (cycle, tier limits, components and their prices,
household-size rule, minimum monthly charge, sewage coefficient) are kept as one
canonical JSON document (``rules``, see :func:`backend.billing.service.canonical_rules`),
so "identical content" is an equality of documents and a change is a new version with a
later ``valid_from``. ``customer_type`` and ``name`` are columns so lists filter on them.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlmodel import Field, SQLModel

from backend.archives.models import CustomerType
from backend.db import enum_column, timestamptz


class TariffCycle(StrEnum):
    """The cycle the tier limits count over (阶梯周期): a month, or a calendar year whose
    year-to-date volume a monthly bill or a prepaid deduction carries as its prior volume."""

    month = "month"
    year = "year"


class Tariff(SQLModel, table=True):
    __tablename__ = "tariffs"
    __table_args__ = (UniqueConstraint("code", "valid_from", name="uq_tariffs_code_valid_from"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    code: str = Field(sa_column=Column(String(40), nullable=False))
    name: str = Field(sa_column=Column(String(100), nullable=False))
    customer_type: CustomerType = Field(sa_column=enum_column(CustomerType, nullable=False))
    valid_from: date = Field(sa_column=Column(Date, nullable=False))
    rules: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    created_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=False, server_default=text("now()")))


# --------------------------------------------------------------------------- accounts and the ledger


class BillingMode(StrEnum):
    """How a household pays for water (DESIGN.md "Enums"): 主站预付费 (the system deducts as
    readings arrive), IC卡预付费 and 表端预付费 (the money lives on the card or the meter;
    readings feed statistics only), 后付费 (a bill per period)."""

    prepaid_station = "prepaid_station"
    prepaid_card = "prepaid_card"
    prepaid_meter = "prepaid_meter"
    postpaid = "postpaid"


class AccountStatus(StrEnum):
    open = "open"
    closed = "closed"


class AlertState(StrEnum):
    """Where a master-station prepaid balance stands against its thresholds: above the
    alert threshold, at or below it, or at or below the close threshold minus the grace
    amount (the valve may be closed). Other modes stay ``normal``."""

    normal = "normal"
    alert = "alert"
    close = "close"


class EntryKind(StrEnum):
    """What a ledger entry is (DESIGN.md "Money"). The sign of ``amount_fen`` is the change
    of the balance: credits (recharge, payment, write_off) are positive, debits (charge,
    bill, late_fee, refund) negative; adjustments and reversals go either way."""

    recharge = "recharge"  # 充值 (prepaid money in)
    charge = "charge"  # 扣费: a consumption charge (prepaid settlement, final charge)
    bill = "bill"  # 账单 (postpaid)
    payment = "payment"  # 缴费 (postpaid money in)
    late_fee = "late_fee"  # 滞纳金
    adjustment = "adjustment"  # 调整: a closed cycle re-priced, or a correction by hand
    refund = "refund"  # 退费 (money back to the customer)
    reversal = "reversal"  # 冲正 (an entry undone by its opposite)
    write_off = "write_off"  # 核销 (a debt forgiven)


class Account(SQLModel, table=True):
    """A household's account (账户): one open account per household at a time; a closed
    one stays as history and the household can be opened again as a new account."""

    __tablename__ = "accounts"
    __table_args__ = (
        Index("uq_accounts_open_household", "household_id", unique=True, postgresql_where=text("status = 'open'")),
        CheckConstraint("close_threshold_fen <= alert_threshold_fen", name="thresholds_ordered"),
        CheckConstraint("grace_fen >= 0", name="grace_not_negative"),
    )
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    household_id: int = Field(sa_column=Column(BigInteger, ForeignKey("households.id"), nullable=False, index=True))
    mode: BillingMode = Field(sa_column=enum_column(BillingMode, nullable=False))
    tariff_code: str = Field(sa_column=Column(String(40), nullable=False))
    # 户籍人数 for the tariff's household-size rule; None applies no extension.
    persons: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    balance_fen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    alert_threshold_fen: int = Field(sa_column=Column(BigInteger, nullable=False))
    close_threshold_fen: int = Field(sa_column=Column(BigInteger, nullable=False))
    grace_fen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    vulnerable: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))
    status: AccountStatus = Field(default=AccountStatus.open, sa_column=enum_column(AccountStatus, nullable=False))
    alert_state: AlertState = Field(default=AlertState.normal, sa_column=enum_column(AlertState, nullable=False))
    opened_at: datetime = Field(sa_column=timestamptz(nullable=False))
    opened_by: str = Field(default="", sa_column=Column(String(100), nullable=False, server_default=""))
    closed_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    closed_by: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))
    # The instant usage is priced up to (prepaid settlement, final charge); None: never settled.
    settled_to: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    # When the current tariff started pricing (a change by updateAccount); None: since opening.
    tariff_since: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    created_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=False, server_default=text("now()")))


class LedgerEntry(SQLModel, table=True):
    """One change of an account's balance, with the balance after it. Append-only: a
    trigger refuses UPDATE and DELETE (migration 0022); a mistake is undone by a reversal."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("amount_fen <> 0", name="amount_not_zero"),
        Index("ix_ledger_entries_account_posted", "account_id", "posted_at", "id"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    account_id: int = Field(sa_column=Column(BigInteger, ForeignKey("accounts.id"), nullable=False))
    kind: EntryKind = Field(sa_column=enum_column(EntryKind, nullable=False))
    amount_fen: int = Field(sa_column=Column(BigInteger, nullable=False))
    balance_after_fen: int = Field(sa_column=Column(BigInteger, nullable=False))
    # What the entry is for: "cycle:2026-11-01" (a settlement), "payment:42", "bill:7", …
    ref: str = Field(default="", sa_column=Column(String(100), nullable=False, server_default=""))
    idempotency_key: str = Field(sa_column=Column(String(200), nullable=False, unique=True))
    # For a settlement's charge or adjustment: the tier cycle and its volume to date after it.
    cycle_start: date | None = Field(default=None, sa_column=Column(Date, nullable=True))
    volume_m3: Decimal | None = Field(default=None, sa_column=Column(Numeric(16, 4), nullable=True))
    note: str = Field(default="", sa_column=Column(String(200), nullable=False, server_default=""))
    posted_by: str = Field(default="", sa_column=Column(String(100), nullable=False, server_default=""))
    posted_at: datetime = Field(sa_column=timestamptz(nullable=False))


class PrepaidCycle(SQLModel, table=True):
    """What settlement has charged an account for one tier cycle: the cycle-to-date volume
    priced, the fen charged for it (the sum of the cycle's charge and adjustment entries,
    kept beside them so a settlement reads one row, not the cycle's entries) and the instant
    the cycle was priced up to (``settled_to``: never moved back)."""

    __tablename__ = "prepaid_cycles"

    account_id: int = Field(sa_column=Column(BigInteger, ForeignKey("accounts.id"), primary_key=True))
    cycle_start: date = Field(sa_column=Column(Date, primary_key=True))
    cycle_end: date = Field(sa_column=Column(Date, nullable=False))  # exclusive
    volume_m3: Decimal = Field(sa_column=Column(Numeric(16, 4), nullable=False))
    charged_fen: int = Field(sa_column=Column(BigInteger, nullable=False))
    settled_to: datetime = Field(sa_column=timestamptz(nullable=False))
    entries: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    # A tariff changed inside the cycle: what the cycle had been charged, and had used, under
    # the tariffs before (frozen); the current tariff prices only the volume after it.
    base_fen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    base_volume_m3: Decimal = Field(default=Decimal(0), sa_column=Column(Numeric(16, 4), nullable=False,
                                                                         server_default="0"))


# --------------------------------------------------------------------------- reading review (抄表审核)


class ReviewState(StrEnum):
    """Where a held account's period stands (抄表审核): waiting for a reviewer, or decided by
    approving the readings as they are, adjusting the period-end reading by hand, or
    estimating it from the meter's average. Any decided state is billable."""

    pending = "pending"
    approved = "approved"
    adjusted = "adjusted"
    estimated = "estimated"


class ReadingReview(SQLModel, table=True):
    """One postpaid account's period held for review (``backend.billing.review``): why it
    was held (the meter alarm kinds open in the period, and/or no reading within 3 days
    of the period end), and once decided who decided, when, why, and the readings the
    decision wrote. An account and period without a row was clean when it was prepared."""

    __tablename__ = "reading_reviews"
    __mapper_args__ = {"eager_defaults": True}
    __table_args__ = (
        UniqueConstraint("account_id", "period", name="uq_reading_reviews_account_period"),
        CheckConstraint("extract(day FROM period) = 1", name="period_first_day"),
        CheckConstraint("(state = 'pending') = (decided_at IS NULL)", name="decided_when_not_pending"),
        Index("ix_reading_reviews_period_state", "period", "state"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    account_id: int = Field(sa_column=Column(BigInteger, ForeignKey("accounts.id"), nullable=False))
    # The billing period 'YYYY-MM' as its first day.
    period: date = Field(sa_column=Column(Date, nullable=False))
    state: ReviewState = Field(default=ReviewState.pending, sa_column=enum_column(ReviewState, nullable=False))
    # Held because: these alarm kinds were open in the period (sorted; empty: none) ...
    alarm_kinds: list[str] = Field(default_factory=list, sa_column=Column(ARRAY(String(32)), nullable=False,
                                                                          server_default="{}"))
    # ... and/or a current meter had no reading (actual or manual) in the period's last 3 days.
    missing_reading: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))
    created_at: datetime = Field(sa_column=timestamptz(nullable=False))
    decided_by: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))
    decided_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    decision_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # What an adjust or estimate wrote: [{"meter_id", "read_at", "total_m3", "quality"}].
    readings: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSONB, nullable=False,
                                                                                  server_default="[]"))
