"""``gateway_exchanges``: what a money gateway told the outside world and what it heard."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from backend.db import timestamptz


class GatewayExchange(SQLModel, table=True):
    """One call of a gateway declared ``keeps_exchanges=True``, written in a transaction
    of its own as the call ends, so the business transaction rolling back does not
    erase what the remote was told. Secrets are redacted before the row is written.

    ``status`` is ``ok`` or the failure's word (``timeout``, ``busy``, ``unavailable``,
    ``rejected``, ``bad_answer``, ``error`` for a bug on our side); ``reference`` is the
    business key the caller names (an ``out_trade_no``), for finding a payment's calls.
    """

    __tablename__ = "gateway_exchanges"
    __table_args__ = (
        Index("ix_gateway_exchanges_gateway_started_at", "gateway", "started_at"),
        Index("ix_gateway_exchanges_reference", "reference"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    gateway: str = Field(sa_column=Column(String(64), nullable=False))
    operation: str = Field(sa_column=Column(String(128), nullable=False))
    reference: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    request: Any = Field(default=None, sa_column=Column(JSONB, nullable=True))
    response: Any = Field(default=None, sa_column=Column(JSONB, nullable=True))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    started_at: datetime = Field(sa_column=timestamptz(nullable=False))
    duration_ms: int = Field(sa_column=Column(Integer, nullable=False))
