"""The ``domain_events`` outbox (DESIGN.md, "Events")."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, ForeignKey, Index, String, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from backend.db import timestamptz


class DomainEvent(SQLModel, table=True):
    """An event written in the business transaction that caused it.

    ``relayed_at`` is set by the relay once the event's jobs are enqueued; the partial
    index keeps finding unrelayed events cheap however large the table grows.
    """

    __tablename__ = "domain_events"
    __mapper_args__ = {"eager_defaults": True}  # server defaults come back with RETURNING
    __table_args__ = (
        Index("ix_domain_events_unrelayed", "id", postgresql_where=text("relayed_at IS NULL")),
        Index("ix_domain_events_kind_key", "kind", "key"),
        # The retention purge and replays by date walk events by age.
        Index("ix_domain_events_created_at", "created_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    kind: str = Field(sa_column=Column(String(64), nullable=False))
    key: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    created_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=False, server_default=func.now()))
    relayed_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))


class HandledEvent(SQLModel, table=True):
    """Handler ``handler`` (its stable name; the event's kind completes it) has run for
    event ``event_id``: written in the handler's own transaction, so the record exists
    exactly when the effect committed, and a relayed job and a replayed one never both
    act. Purged with the event."""

    __tablename__ = "handled_events"

    event_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("domain_events.id", ondelete="CASCADE"), primary_key=True)
    )
    handler: str = Field(sa_column=Column(String(128), primary_key=True))
    handled_at: datetime = Field(sa_column=timestamptz(nullable=False))
