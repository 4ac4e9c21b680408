"""Archive tables.

The Foundation needs only the area tree (data scope is a path-prefix match on it) and the
household's account number and registered name (residents bind by them); the Archives
issue completes both.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Column, ForeignKey, Index, String, func
from sqlmodel import Field, SQLModel

from backend.db import enum_column, timestamptz


class AreaKind(StrEnum):
    company = "company"
    district = "district"
    community = "community"
    building = "building"
    unit = "unit"


class Area(SQLModel, table=True):
    """A node of the administrative tree (公司 / 片区 / 小区 / 楼 / 单元).

    ``path`` is the materialized path of ids, ``/1/4/17/``: a subtree is every area whose
    path starts with the root's path, which is how data scope is applied in SQL.
    """

    __tablename__ = "areas"
    __mapper_args__ = {"eager_defaults": True}  # server defaults come back with RETURNING
    __table_args__ = (Index("ix_areas_path_prefix", "path", postgresql_ops={"path": "text_pattern_ops"}),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    parent_id: int | None = Field(
        default=None, sa_column=Column(BigInteger, ForeignKey("areas.id"), index=True, nullable=True)
    )
    name: str = Field(sa_column=Column(String(100), nullable=False))
    kind: AreaKind = Field(sa_column=enum_column(AreaKind, nullable=False))
    path: str = Field(sa_column=Column(String(400), nullable=False, unique=True))
    created_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=False, server_default=func.now()))


class Household(SQLModel, table=True):
    """A billed customer at one address (住户), known to residents by ``account_no`` (缴费号)."""

    __tablename__ = "households"
    __mapper_args__ = {"eager_defaults": True}  # server defaults come back with RETURNING

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    account_no: str = Field(sa_column=Column(String(32), nullable=False, unique=True))
    name: str = Field(sa_column=Column(String(100), nullable=False))
    area_id: int = Field(sa_column=Column(BigInteger, ForeignKey("areas.id"), nullable=False, index=True))
    created_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=False, server_default=func.now()))
