"""Reading routes (抄表本): an ordered list of household meters a staff reader walks each
billing period, inside one area's subtree.

A meter is on at most one route (the unique ``meter_id``); ``position`` orders a route's
meters as the reader walks them. ``window_days`` is the reading window: the last that
many days of a period, up to its end, in the utility's zone.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, Column, ForeignKey, Integer, String, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from backend.db import timestamptz

DEFAULT_WINDOW_DAYS = 5


class ReadingRoute(SQLModel, table=True):
    __tablename__ = "reading_routes"
    __table_args__ = (CheckConstraint("window_days BETWEEN 1 AND 31", name="window_days_valid"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    code: str = Field(sa_column=Column(String(32), nullable=False, unique=True))
    name: str = Field(sa_column=Column(String(100), nullable=False))
    area_id: int = Field(sa_column=Column(BigInteger, ForeignKey("areas.id"), nullable=False, index=True))
    reader_user_id: int | None = Field(
        default=None, sa_column=Column(BigInteger, ForeignKey("staff_users.id"), nullable=True, index=True))
    window_days: int = Field(default=DEFAULT_WINDOW_DAYS,
                             sa_column=Column(Integer, nullable=False, server_default=str(DEFAULT_WINDOW_DAYS)))
    created_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=False, server_default=text("now()")))
    updated_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=False, server_default=text("now()")))


class ReadingRouteMeter(SQLModel, table=True):
    __tablename__ = "reading_route_meters"
    __table_args__ = (
        UniqueConstraint("route_id", "position", name="uq_reading_route_meters_route_position"),
        CheckConstraint("position >= 1", name="position_valid"),
    )

    # The key is the meter: a meter is on at most one route.
    meter_id: int = Field(sa_column=Column(BigInteger, ForeignKey("meters.id"), primary_key=True, autoincrement=False))
    route_id: int = Field(sa_column=Column(BigInteger, ForeignKey("reading_routes.id", ondelete="CASCADE"),
                                           nullable=False))
    position: int = Field(sa_column=Column(Integer, nullable=False))
