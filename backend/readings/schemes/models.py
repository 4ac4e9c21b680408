"""The ``query_schemes`` table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, ForeignKey, String, UniqueConstraint, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from backend.db import enum_column, timestamptz
from backend.readings.screens import ScreenKind


class QueryScheme(SQLModel, table=True):
    """A named set of columns (keys, in display order) and filters for one screen."""

    __tablename__ = "query_schemes"
    __table_args__ = (UniqueConstraint("owner_user_id", "screen", "name"),)
    __mapper_args__ = {"eager_defaults": True}  # server defaults come back with RETURNING

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    owner_user_id: int = Field(sa_column=Column(BigInteger, ForeignKey("staff_users.id"), nullable=False, index=True))
    screen: ScreenKind = Field(sa_column=enum_column(ScreenKind, nullable=False))
    name: str = Field(sa_column=Column(String(100), nullable=False))
    columns: list[str] = Field(default_factory=list, sa_column=Column(JSONB, nullable=False))
    filters: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    is_default: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))
    shared: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))
    created_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=False, server_default=func.now()))
    updated_at: datetime | None = Field(
        default=None, sa_column=timestamptz(nullable=False, server_default=func.now(), onupdate=func.now())
    )
