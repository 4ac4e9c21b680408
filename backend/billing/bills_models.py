"""Postpaid bills' tables (后付费账单, issue 17): billing runs, bills and their lines, the
allocations of payments to bills, the late-fee rules per customer type and the billing
period length per area.

**A bill** is one account's charge for one period (``period``: the first day of its first
month) over a span ``[period_start, period_end)`` that starts where the account's previous
live bill ended (or at its opening); ``months`` is the number of calendar months the span
touches (1 for a monthly bill, 2 for a bimonthly one, more for an account never billed). It is a ledger debit (``entry_id``, kind
``bill``) and stores the readings it was priced from: ``start_readings`` are the previous
bill's ``end_readings`` (or the account's opening), ``end_readings`` each current meter's
last reading up to the period end, so a late or corrected reading moves into the next
bill and never reopens a sent one. ``measured_m3`` is the account's usage from its
opening to the period end as known when the bill was made; the bill's ``volume_m3`` is
that minus the volume of the account's earlier live bills (less what they credited back,
``credited_m3``) and of its prepaid settlement cycles. A final bill credits volume earlier
bills over-billed (``credited_m3``, ``credit_fen``, an ``adjustment`` entry
``credit_entry_id``). ``cycle_start`` is the tier
cycle the volume counts in and ``prior_cycle_m3`` what earlier bills of that cycle had
used (annual tiers carry across monthly bills). A span crossing an annual tier cycle's
start is split at it: ``cycle_volume_m3`` is the part in ``cycle_start``'s cycle and
``earlier_cycles`` the earlier segments (NULL when not split); each line says its
``cycle_start``.

**One live bill per account and period**: a partial unique index over bills not voided.
A voided bill keeps its row (``status = 'voided'``) and is reversed by a credit entry
(``void_entry_id``); its re-issue is a new row (``reissue_of_id``).

**Late fees** (滞纳金) are computed on read, never stored per day: from the day after
``due_date``, ``late_fee_rate`` per day on the principal still owed, capped at
``late_fee_cap_fen``; both are copied from the customer type's rule when the bill is
issued, so a later rule change never rewrites a sent bill. ``late_fee_carried`` (fen,
exact) is what accrued up to ``late_fee_from`` while the owed principal was different;
a posting (at payment or month-end) writes a ``late_fee`` entry for what accrued and was
not posted yet (``late_fee_posted_fen``). A waiver (``late_fee_waived_at``) stops the
bill's fee where it stood: what was owed of it is ``late_fee_waived_fen`` (a posted part
is written off by a credit entry). ``backend.billing.late_fees`` is the arithmetic.

**Allocations** (``bill_allocations``): which credit paid which bill, the late fee before
the principal; a reversed payment's allocations are undone by negative rows.
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
    SmallInteger,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from backend.archives.models import CustomerType
from backend.db import enum_column, timestamptz

__all__ = [
    "DEFAULT_LATE_FEE_CAP_PERCENT", "DEFAULT_LATE_FEE_DAILY_RATE", "DEFAULT_LATE_FEE_GRACE_DAYS",
    "AreaBillingCycle", "Bill", "BillAllocation", "BillKind", "BillLine", "BillStatus", "BillingRun",
    "BillingRunStatus", "LateFeeRule",
]


# The late-fee rule of a customer type without a ``late_fee_rules`` row (issue 17).
DEFAULT_LATE_FEE_DAILY_RATE = Decimal("0.0005")
DEFAULT_LATE_FEE_GRACE_DAYS = 15
DEFAULT_LATE_FEE_CAP_PERCENT = 100


class BillKind(StrEnum):
    """A period's regular bill from a billing run, or the final bill of a closing account
    (its period is the one holding the closing instant)."""

    regular = "regular"
    final = "final"


class BillStatus(StrEnum):
    """``open`` while principal or late fee is owed, ``paid`` when both are covered,
    ``voided`` when reversed (it no longer counts as the period's bill)."""

    open = "open"
    paid = "paid"
    voided = "voided"


class BillingRunStatus(StrEnum):
    running = "running"
    finished = "finished"
    failed = "failed"


class BillingRun(SQLModel, table=True):
    """One run of ``shuiwu bill run`` / ``runBilling`` / the scheduled job: what it was
    asked (period, area subtree) and what it did."""

    __tablename__ = "billing_runs"
    __table_args__ = (CheckConstraint("extract(day FROM period) = 1", name="period_first_day"),)
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    period: date = Field(sa_column=Column(Date, nullable=False, index=True))
    area_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("areas.id"), nullable=True))
    status: BillingRunStatus = Field(default=BillingRunStatus.running,
                                     sa_column=enum_column(BillingRunStatus, nullable=False))
    started_by: str = Field(sa_column=Column(String(100), nullable=False))
    started_at: datetime = Field(sa_column=timestamptz(nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    # Accounts the run looked at; bills it issued; accounts held for review; accounts
    # already billed for the period (a re-run); accounts passed over (no tariff in force, …).
    accounts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    issued: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    held: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    already_billed: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    skipped: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    amount_fen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class Bill(SQLModel, table=True):
    __tablename__ = "bills"
    __table_args__ = (
        Index("uq_bills_live_account_period", "account_id", "period", unique=True,
              postgresql_where=text("status <> 'voided'")),
        Index("ix_bills_period_status", "period", "status"),
        Index("ix_bills_open_account", "account_id", "period", postgresql_where=text("status = 'open'")),
        CheckConstraint("extract(day FROM period) = 1", name="period_first_day"),
        CheckConstraint("months >= 1", name="months_valid"),
        CheckConstraint("amount_fen >= 0", name="amount_not_negative"),
        CheckConstraint("credit_fen >= 0", name="credit_not_negative"),
        CheckConstraint("principal_paid_fen BETWEEN 0 AND amount_fen", name="principal_paid_within_amount"),
        CheckConstraint("late_fee_paid_fen BETWEEN 0 AND late_fee_posted_fen", name="late_fee_paid_within_posted"),
        CheckConstraint("late_fee_paid_fen + late_fee_waived_fen <= late_fee_cap_fen", name="late_fee_within_cap"),
        CheckConstraint("(status = 'voided') = (voided_at IS NOT NULL)", name="voided_when_voided_at"),
        CheckConstraint("cycle_volume_m3 BETWEEN 0 AND volume_m3", name="cycle_volume_within_volume"),
        CheckConstraint("earlier_cycles IS NOT NULL OR cycle_volume_m3 = volume_m3", name="earlier_cycles_when_split"),
    )
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    account_id: int = Field(sa_column=Column(BigInteger, ForeignKey("accounts.id"), nullable=False))
    household_id: int = Field(sa_column=Column(BigInteger, ForeignKey("households.id"), nullable=False, index=True))
    period: date = Field(sa_column=Column(Date, nullable=False))
    months: int = Field(default=1, sa_column=Column(SmallInteger, nullable=False, server_default="1"))
    kind: BillKind = Field(default=BillKind.regular, sa_column=enum_column(BillKind, nullable=False))
    status: BillStatus = Field(default=BillStatus.open, sa_column=enum_column(BillStatus, nullable=False))
    run_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("billing_runs.id"), nullable=True,
                                                              index=True))
    # The instants the bill's readings were taken up to: [period_start, period_end).
    period_start: datetime = Field(sa_column=timestamptz(nullable=False))
    period_end: datetime = Field(sa_column=timestamptz(nullable=False))
    tariff_code: str = Field(sa_column=Column(String(40), nullable=False))
    persons: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    # [{"meter_id", "read_at", "total_m3"}] per meter; start = the previous bill's end.
    start_readings: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSONB, nullable=False))
    end_readings: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSONB, nullable=False))
    measured_m3: Decimal = Field(sa_column=Column(Numeric(16, 4), nullable=False))
    volume_m3: Decimal = Field(sa_column=Column(Numeric(16, 4), nullable=False))
    cycle_start: date = Field(sa_column=Column(Date, nullable=False))
    # The part of volume_m3 in the cycle_start cycle: all of it unless the span crossed an
    # annual tier cycle's start; then earlier_cycles lists the earlier segments
    # [{"cycle_start", "first_day", "last_day", "months", "volume_m3", "prior_m3"}]
    # (strings), oldest first, each priced on its own (bills' module docstring).
    cycle_volume_m3: Decimal = Field(sa_column=Column(Numeric(16, 4), nullable=False))
    earlier_cycles: list[dict[str, str]] | None = Field(default=None, sa_column=Column(JSONB(none_as_null=True),
                                                                                     nullable=True))
    prior_cycle_m3: Decimal = Field(default=Decimal(0), sa_column=Column(Numeric(16, 4), nullable=False,
                                                                         server_default="0"))
    amount_fen: int = Field(sa_column=Column(BigInteger, nullable=False))
    principal_paid_fen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    due_date: date = Field(sa_column=Column(Date, nullable=False))
    late_fee_rate: Decimal = Field(default=Decimal(0), sa_column=Column(Numeric(10, 8), nullable=False,
                                                                        server_default="0"))
    late_fee_cap_fen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    late_fee_carried: Decimal = Field(default=Decimal(0), sa_column=Column(Numeric(24, 8), nullable=False,
                                                                           server_default="0"))
    late_fee_from: date | None = Field(default=None, sa_column=Column(Date, nullable=True))
    late_fee_posted_fen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    late_fee_paid_fen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    late_fee_waived_fen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    late_fee_waived_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    late_fee_waived_by: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))
    late_fee_waiver_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    entry_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("ledger_entries.id"),
                                                                nullable=True))
    issued_at: datetime = Field(sa_column=timestamptz(nullable=False))
    issued_by: str = Field(sa_column=Column(String(100), nullable=False))
    paid_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    voided_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    voided_by: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))
    void_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    void_entry_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("ledger_entries.id"),
                                                                     nullable=True))
    reissue_of_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("bills.id"),
                                                                     nullable=True))
    # A final bill's credit for volume earlier bills over-billed (bills' module docstring):
    # the volume taken back, its price at the rates it was billed at, the crediting entry.
    credited_m3: Decimal = Field(default=Decimal(0), sa_column=Column(Numeric(16, 4), nullable=False,
                                                                      server_default="0"))
    credit_fen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    credit_entry_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("ledger_entries.id"),
                                                                       nullable=True))


class BillLine(SQLModel, table=True):
    """A bill's line per component and tier (and the minimum-charge line, tier 0), as a
    quote prints them."""

    __tablename__ = "bill_lines"

    bill_id: int = Field(sa_column=Column(BigInteger, ForeignKey("bills.id", ondelete="CASCADE"), primary_key=True))
    line_no: int = Field(sa_column=Column(SmallInteger, primary_key=True, autoincrement=False))
    component: str = Field(sa_column=Column(String(40), nullable=False))
    tier: int = Field(sa_column=Column(SmallInteger, nullable=False))
    volume_m3: Decimal = Field(sa_column=Column(Numeric(16, 4), nullable=False))
    price: Decimal = Field(sa_column=Column(Numeric(12, 4), nullable=False))
    amount_fen: int = Field(sa_column=Column(BigInteger, nullable=False))
    valid_from: date = Field(sa_column=Column(Date, nullable=False))
    # The tier cycle the line is in: the bill's cycle_start, or an earlier segment's.
    cycle_start: date = Field(sa_column=Column(Date, nullable=False))


class BillAllocation(SQLModel, table=True):
    """Part of a credit that paid part of a bill: its late fee first, then its principal.
    ``entry_id`` is the crediting ledger entry (a payment, or a credit left on the
    account and taken by a later bill); an undone allocation (its payment reversed) is a
    row of the opposite sign pointing at it (``undoes_id``)."""

    __tablename__ = "bill_allocations"
    __table_args__ = (
        CheckConstraint("(late_fee_fen >= 0 AND principal_fen >= 0) OR (late_fee_fen <= 0 AND principal_fen <= 0)",
                        name="one_sign"),
        CheckConstraint("late_fee_fen <> 0 OR principal_fen <> 0", name="not_empty"),
        Index("ix_bill_allocations_entry", "entry_id"),
    )
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    bill_id: int = Field(sa_column=Column(BigInteger, ForeignKey("bills.id"), nullable=False, index=True))
    account_id: int = Field(sa_column=Column(BigInteger, ForeignKey("accounts.id"), nullable=False))
    entry_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("ledger_entries.id"),
                                                                nullable=True))
    late_fee_fen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    principal_fen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    undoes_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("bill_allocations.id"),
                                                                 nullable=True))
    allocated_at: datetime = Field(sa_column=timestamptz(nullable=False))


class LateFeeRule(SQLModel, table=True):
    """The late-fee rule of a customer type (滞纳金规则); a type without a row uses the
    defaults below (on, 0.5‰ a day after 15 days, capped at the bill's amount)."""

    __tablename__ = "late_fee_rules"
    __table_args__ = (
        CheckConstraint("daily_rate >= 0 AND daily_rate <= 0.01", name="daily_rate_valid"),
        CheckConstraint("grace_days BETWEEN 0 AND 365", name="grace_days_valid"),
        CheckConstraint("cap_percent BETWEEN 0 AND 1000", name="cap_percent_valid"),
    )

    customer_type: CustomerType = Field(sa_column=enum_column(CustomerType, primary_key=True))
    enabled: bool = Field(default=True, sa_column=Column(Boolean, nullable=False, server_default=text("true")))
    daily_rate: Decimal = Field(sa_column=Column(Numeric(10, 8), nullable=False))
    grace_days: int = Field(sa_column=Column(Integer, nullable=False))
    # The cap as a percentage of the bill's amount (100: the fee never exceeds the bill).
    cap_percent: int = Field(sa_column=Column(Integer, nullable=False))
    updated_by: str = Field(sa_column=Column(String(100), nullable=False))
    updated_at: datetime = Field(sa_column=timestamptz(nullable=False))


class AreaBillingCycle(SQLModel, table=True):
    """An area's billing period length (抄表周期), inherited by its subtree down to the
    next area with its own row; without any, periods are monthly. A bimonthly area's
    periods start in odd months (``first_month`` 1: Jan–Feb, Mar–Apr, …) or even ones (2)."""

    __tablename__ = "area_billing_cycles"
    __table_args__ = (
        CheckConstraint("months IN (1, 2)", name="months_valid"),
        CheckConstraint("first_month IN (1, 2)", name="first_month_valid"),
    )

    area_id: int = Field(sa_column=Column(BigInteger, ForeignKey("areas.id", ondelete="CASCADE"), primary_key=True,
                                          autoincrement=False))
    months: int = Field(sa_column=Column(SmallInteger, nullable=False))
    first_month: int = Field(default=1, sa_column=Column(SmallInteger, nullable=False, server_default="1"))
    updated_by: str = Field(sa_column=Column(String(100), nullable=False))
    updated_at: datetime = Field(sa_column=timestamptz(nullable=False))
