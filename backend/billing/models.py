"""Tariffs (水价): one row per version, keyed by (code, valid_from).

A version is immutable once written: its rules (cycle, tier limits, components and their
prices, household-size rule, minimum monthly charge, sewage coefficient) are kept as one
canonical JSON document (``rules``, see :func:`backend.billing.service.canonical_rules`),
so "identical content" is an equality of documents and a change is a new version with a
later ``valid_from``. ``customer_type`` and ``name`` are columns so lists filter on them.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Column, Date, String, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
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
