"""The operation log. Rows are appended, never updated; only the retention purge deletes them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, Index, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from backend.db import timestamptz


class AuditEntry(SQLModel, table=True):
    """One operation: 操作用户, 操作模块, 操作, IP地址, 时间, 日志内容 (+ the redacted input)."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_actor_at", "actor_kind", "actor_id", "at"),
        Index("ix_audit_log_module_at", "module", "at"),
        Index("ix_audit_log_area_at", "area_id", "at"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    at: datetime = Field(sa_column=timestamptz(nullable=False))
    # staff | resident | client | anonymous (a refused login has no principal yet).
    actor_kind: str = Field(sa_column=Column(String(16), nullable=False))
    actor_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    actor_name: str = Field(sa_column=Column(String(100), nullable=False))
    module: str = Field(sa_column=Column(String(32), nullable=False))
    action: str = Field(sa_column=Column(String(64), nullable=False))
    summary: str = Field(sa_column=Column(Text, nullable=False))
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    success: bool = Field(sa_column=Column(Boolean, nullable=False))
    ip: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    request_id: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    # The unit (区域) the entry belongs to: the subject's area, else the acting staff
    # user's unit. NULL (anonymous, resident and client actors without a subject area):
    # visible to whole-tree scope only. No foreign key: history must not block deleting
    # an area, and an entry whose area is gone falls back to whole-tree scope.
    area_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
