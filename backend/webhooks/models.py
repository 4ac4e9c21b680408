"""Webhook endpoints of API clients, their deliveries and every attempt of each."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, ForeignKey, Index, Integer, SmallInteger, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlmodel import Field, SQLModel

from backend.db import enum_column, timestamptz


class DeliveryStatus(StrEnum):
    pending = "pending"  # waiting for its next attempt (queued as a job)
    succeeded = "succeeded"  # a 2xx answer
    failed = "failed"  # max attempts spent, or refused (SSRF) at delivery


class WebhookEndpoint(SQLModel, table=True):
    """A URL an API client registered for some event types. ``secret_sealed`` is the
    signing secret encrypted under the station key (``KeyPurpose.webhook_secret``): it
    must be read to sign, so it cannot be a hash; the API shows it once."""

    __tablename__ = "webhook_endpoints"
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    api_client_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("api_clients.id", ondelete="CASCADE"), nullable=False, index=True))
    url: str = Field(sa_column=Column(String(2000), nullable=False))
    event_types: list[str] = Field(default_factory=list, sa_column=Column(ARRAY(Text), nullable=False))
    secret_sealed: str = Field(sa_column=Column(Text, nullable=False))
    is_active: bool = Field(default=True, sa_column=Column(Boolean, nullable=False, server_default="true"))
    created_at: datetime = Field(sa_column=timestamptz(nullable=False))
    secret_rotated_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))


class WebhookDelivery(SQLModel, table=True):
    """One event for one endpoint: the body is fixed when the delivery is made (in the
    event's handler transaction), so every attempt and replay sends the same bytes
    (a fresh timestamp and signature each time)."""

    __tablename__ = "webhook_deliveries"
    __mapper_args__ = {"eager_defaults": True}
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_deliveries_endpoint_event"),
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "id"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    endpoint_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False))
    # No foreign key: deliveries outlive the outbox's retention.
    event_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    event_type: str = Field(sa_column=Column(String(64), nullable=False))
    body: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    status: DeliveryStatus = Field(sa_column=enum_column(DeliveryStatus, nullable=False))
    # Attempts of the current series (a replay starts a new one); all are kept below.
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    next_attempt_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    created_at: datetime = Field(sa_column=timestamptz(nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    replays: int = Field(default=0, sa_column=Column(SmallInteger, nullable=False, server_default="0"))


class WebhookAttempt(SQLModel, table=True):
    """One POST of a delivery: its answer's status code (None: no answer), how long it
    took, the error and the first bytes of the answer."""

    __tablename__ = "webhook_attempts"
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    delivery_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), nullable=False, index=True))
    attempted_at: datetime = Field(sa_column=timestamptz(nullable=False))
    status_code: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    duration_ms: int = Field(sa_column=Column(Integer, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(String(500), nullable=True))
    response_excerpt: str | None = Field(default=None, sa_column=Column(String(1000), nullable=True))
