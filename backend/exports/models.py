"""Download links already used: a signed link works once (until it expires)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Index, String
from sqlmodel import Field, SQLModel

from backend.db import timestamptz


class UsedDownloadLink(SQLModel, table=True):
    """The nonce of a redeemed download link, kept until the link would have expired
    (then purged with the other expired auth rows)."""

    __tablename__ = "used_download_links"
    __table_args__ = (Index("ix_used_download_links_expires_at", "expires_at"),)

    nonce: str = Field(sa_column=Column(String(32), primary_key=True))
    expires_at: datetime = Field(sa_column=timestamptz(nullable=False))
