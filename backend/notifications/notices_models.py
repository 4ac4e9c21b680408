"""The notices tables (公告 / 物业通知): a notice staff write for an audience, the areas
or households it is addressed to, and residents' read receipts.

A notice is **draft** (being written: the only state in which it may be edited),
**scheduled** (published for ``publish_at``, not visible yet: the job
``publish_due_notices`` makes it visible), **published** (visible from ``published_at``
until ``expires_at``) or **withdrawn** (never visible again). ``body`` is plain text:
stored as written, never interpreted as markup by any reader (the apps show it as text,
the public page escapes it).

The audience is ``all`` (every resident; the only audience readable without login),
``areas`` (``notice_areas``: the residents whose bound households lie in one of the
areas' subtrees) or ``households`` (``notice_households``: those households' residents).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Column, ForeignKey, Index, String, Text, text
from sqlmodel import Field, SQLModel

from backend.db import enum_column, timestamptz


class NoticeState(StrEnum):
    draft = "draft"
    scheduled = "scheduled"
    published = "published"
    withdrawn = "withdrawn"


class NoticeAudience(StrEnum):
    all = "all"
    areas = "areas"
    households = "households"


class Notice(SQLModel, table=True):
    __tablename__ = "notices"
    __table_args__ = (
        # The residents' and the public list: published ones, newest first.
        Index("ix_notices_published", "published_at", postgresql_where=text("state = 'published'")),
        # The job's due scheduled ones.
        Index("ix_notices_scheduled", "publish_at", postgresql_where=text("state = 'scheduled'")),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    title: str = Field(sa_column=Column(String(100), nullable=False))
    body: str = Field(sa_column=Column(Text, nullable=False))
    # A photo in the file store (purpose "photos"), kept for as long as the notice is.
    image_key: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    audience: NoticeAudience = Field(sa_column=enum_column(NoticeAudience, nullable=False))
    state: NoticeState = Field(sa_column=enum_column(NoticeState, nullable=False))
    publish_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    published_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    expires_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    withdrawn_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    created_by: str = Field(sa_column=Column(String(100), nullable=False))
    published_by: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))
    withdrawn_by: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))
    created_at: datetime = Field(sa_column=timestamptz(nullable=False))
    updated_at: datetime = Field(sa_column=timestamptz(nullable=False))


class NoticeArea(SQLModel, table=True):
    __tablename__ = "notice_areas"

    notice_id: int = Field(sa_column=Column(BigInteger, ForeignKey("notices.id", ondelete="CASCADE"), primary_key=True))
    area_id: int = Field(sa_column=Column(BigInteger, ForeignKey("areas.id"), primary_key=True, index=True))


class NoticeHousehold(SQLModel, table=True):
    __tablename__ = "notice_households"

    notice_id: int = Field(sa_column=Column(BigInteger, ForeignKey("notices.id", ondelete="CASCADE"), primary_key=True))
    household_id: int = Field(sa_column=Column(BigInteger, ForeignKey("households.id"), primary_key=True, index=True))


class NoticeRead(SQLModel, table=True):
    """A read receipt: one per resident per notice, the first read's time."""

    __tablename__ = "notice_reads"

    notice_id: int = Field(sa_column=Column(BigInteger, ForeignKey("notices.id", ondelete="CASCADE"), primary_key=True))
    resident_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("residents.id", ondelete="CASCADE"), primary_key=True, index=True))
    read_at: datetime = Field(sa_column=timestamptz(nullable=False))

