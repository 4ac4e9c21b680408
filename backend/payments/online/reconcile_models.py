"""Reconciliation's tables (对账, issue 18): one row per run of a channel's day, and the
mismatches it found.

**A run** (``reconciliation_runs``) compares one business day (the utility's zone) of
one channel (``alipay`` | ``wechat``; the Bank channels issue adds ``bank``) with the
statements (对账单) of that channel's merchants: our side is the payments of the orders
paid that day and the refunds that succeeded that day, theirs the statements' lines.
It keeps the counts and sums of both sides and its outcome: ``matched`` (nothing
differs), ``mismatched`` (see its mismatches) or ``failed`` (a statement could not be
fetched: ``error`` says why; nothing was compared). A day may be run again (a late
statement, a fixed mismatch): every run is kept, the newest is the answer.

**A mismatch** (``reconciliation_mismatches``) is one line of one side without its
match: ``missing_ours`` (the gateway took or gave back money we have no record of),
``missing_theirs`` (we recorded money the gateway's statement does not hold),
``amount_differs`` (both have it, for different amounts). Payments are matched by
``out_trade_no``, refunds by ``out_refund_no``.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Column, Date, ForeignKey, Index, Integer, String
from sqlmodel import Field, SQLModel

from backend.db import enum_column, timestamptz
from backend.payments.models import PaymentChannel
from backend.payments.online.gateway import StatementKind


class ReconciliationOutcome(StrEnum):
    matched = "matched"
    mismatched = "mismatched"
    failed = "failed"  # a statement could not be fetched: nothing compared


class MismatchKind(StrEnum):
    missing_ours = "missing_ours"  # on the gateway's statement, not in our books
    missing_theirs = "missing_theirs"  # in our books, not on the gateway's statement
    amount_differs = "amount_differs"


class ReconciliationRun(SQLModel, table=True):
    __tablename__ = "reconciliation_runs"
    __table_args__ = (Index("ix_reconciliation_runs_channel_day", "channel", "day"),)
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    channel: PaymentChannel = Field(sa_column=enum_column(PaymentChannel, nullable=False))
    day: date = Field(sa_column=Column(Date, nullable=False))
    # The merchants whose statements were compared (names in the merchants file), comma-separated.
    merchants: str = Field(sa_column=Column(String(500), nullable=False))
    outcome: ReconciliationOutcome = Field(sa_column=enum_column(ReconciliationOutcome, nullable=False))
    our_count: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    our_fen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))  # payments minus refunds
    their_count: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    their_fen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))  # payments minus refunds
    mismatch_count: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(String(500), nullable=True))
    run_by: str = Field(sa_column=Column(String(100), nullable=False))  # a staff login, 系统 (the job), the CLI
    started_at: datetime = Field(sa_column=timestamptz(nullable=False))
    finished_at: datetime = Field(sa_column=timestamptz(nullable=False))


class ReconciliationMismatch(SQLModel, table=True):
    __tablename__ = "reconciliation_mismatches"
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    run_id: int = Field(sa_column=Column(BigInteger, ForeignKey("reconciliation_runs.id", ondelete="CASCADE"),
                                         nullable=False, index=True))
    kind: MismatchKind = Field(sa_column=enum_column(MismatchKind, nullable=False))
    line_kind: StatementKind = Field(sa_column=enum_column(StatementKind, nullable=False))
    merchant: str = Field(sa_column=Column(String(50), nullable=False))
    out_trade_no: str = Field(sa_column=Column(String(64), nullable=False))
    out_refund_no: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    trade_no: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))  # the gateway's id
    our_fen: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    their_fen: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    # What our books say of it, when they know it at all ('order closed', 'refund requested').
    detail: str = Field(default="", sa_column=Column(String(200), nullable=False, server_default=""))
