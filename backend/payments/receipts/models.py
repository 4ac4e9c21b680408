"""Receipts' tables (票据): layouts, prints, and numbered pre-printed form stock.

- ``receipt_layouts``: a named layout (:mod:`backend.payments.receipts.layout`), its spec
  as validated JSON; one of them is the default (a partial unique index).
- ``receipt_prints``: one row per printed receipt (打印, or 补打 when ``reprint``), with
  the layout it was printed on, the form number it consumed on a numbered layout, who
  printed it and when. ``payments.receipts_printed`` counts them per payment.
- ``receipt_form_batches``: a range of numbered pre-printed forms issued to a cashier
  (票据领用): ``prefix`` + numbers ``first_no`` … ``last_no`` zero-padded to ``digits``.
- ``receipt_form_voids``: spoiled forms (作废), one row per number.

A form number is spent when a print or a void names it; the unique indexes on
``(form_batch_id, form_number)`` of both tables keep each number printed once and
voided once, however many cashiers print at the same moment.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from backend.db import timestamptz


class ReceiptLayout(SQLModel, table=True):
    __tablename__ = "receipt_layouts"
    __table_args__ = (
        Index("uq_receipt_layouts_default", "is_default", unique=True, postgresql_where=text("is_default")),
    )
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    name: str = Field(sa_column=Column(String(100), nullable=False, unique=True))
    spec: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    is_default: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=text("false")))
    updated_at: datetime = Field(sa_column=timestamptz(nullable=False, server_default=text("now()")))
    updated_by: str = Field(default="", sa_column=Column(String(100), nullable=False, server_default=""))


class ReceiptFormBatch(SQLModel, table=True):
    __tablename__ = "receipt_form_batches"
    __table_args__ = (
        CheckConstraint("first_no >= 0 AND last_no >= first_no", name="range_valid"),
        CheckConstraint("digits BETWEEN 1 AND 18", name="digits_valid"),
        Index("ix_receipt_form_batches_operator", "operator_id", "id"),
    )
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    prefix: str = Field(default="", sa_column=Column(String(20), nullable=False, server_default=""))
    first_no: int = Field(sa_column=Column(BigInteger, nullable=False))
    last_no: int = Field(sa_column=Column(BigInteger, nullable=False))
    digits: int = Field(sa_column=Column(Integer, nullable=False))
    # The cashier holding the forms (领用人).
    operator_id: int = Field(sa_column=Column(BigInteger, ForeignKey("staff_users.id"), nullable=False))
    issued_by: str = Field(sa_column=Column(String(100), nullable=False))
    issued_at: datetime = Field(sa_column=timestamptz(nullable=False))
    note: str = Field(default="", sa_column=Column(String(200), nullable=False, server_default=""))


class ReceiptPrint(SQLModel, table=True):
    __tablename__ = "receipt_prints"
    __table_args__ = (
        UniqueConstraint("form_batch_id", "form_number", name="uq_receipt_prints_form"),
        CheckConstraint("(form_batch_id IS NULL) = (form_number IS NULL) AND (form_batch_id IS NULL) = (form_no IS NULL)",
                        name="form_complete"),
        Index("ix_receipt_prints_payment", "payment_id", "id"),
    )
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    payment_id: int = Field(sa_column=Column(BigInteger, ForeignKey("payments.id"), nullable=False))
    layout_id: int = Field(sa_column=Column(BigInteger, ForeignKey("receipt_layouts.id"), nullable=False))
    # The numbered form it consumed (票号), on a numbered layout.
    form_batch_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("receipt_form_batches.id"),
                                                                     nullable=True))
    form_number: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    form_no: str | None = Field(default=None, sa_column=Column(String(40), nullable=True))
    reprint: bool = Field(sa_column=Column(Boolean, nullable=False))
    printed_by_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("staff_users.id"),
                                                                     nullable=True))
    printed_by: str = Field(sa_column=Column(String(100), nullable=False))
    printed_at: datetime = Field(sa_column=timestamptz(nullable=False))


class ReceiptFormVoid(SQLModel, table=True):
    __tablename__ = "receipt_form_voids"
    __table_args__ = (UniqueConstraint("form_batch_id", "form_number", name="uq_receipt_form_voids_form"),)
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    form_batch_id: int = Field(sa_column=Column(BigInteger, ForeignKey("receipt_form_batches.id"), nullable=False))
    form_number: int = Field(sa_column=Column(BigInteger, nullable=False))
    form_no: str = Field(sa_column=Column(String(40), nullable=False))
    reason: str = Field(sa_column=Column(String(200), nullable=False))
    voided_by: str = Field(sa_column=Column(String(100), nullable=False))
    voided_at: datetime = Field(sa_column=timestamptz(nullable=False))
