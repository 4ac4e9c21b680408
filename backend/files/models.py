"""What is known about each stored file: the bytes live in the storage (backend.files.storage)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, String
from sqlmodel import Field, SQLModel

from backend.db import timestamptz


class StoredFile(SQLModel, table=True):
    """One object in the storage, under ``key``.

    The row is written (committed) *before* the bytes, with an ``expires_at``, so a
    process that dies mid-write or mid-download leaves a row the purge job finds and
    deletes, bytes included. ``expires_at`` is NULL for a file kept until something
    deletes it (a work order's photo, once the order references it: ``keep``).
    ``size_bytes`` is NULL while the bytes are being written.
    """

    __tablename__ = "stored_files"
    __table_args__ = (Index("ix_stored_files_expires_at", "expires_at"),)

    key: str = Field(sa_column=Column(String(255), primary_key=True))
    # What the file is for: "exports", "photos", "receipts" (also the key's first segment).
    purpose: str = Field(sa_column=Column(String(32), nullable=False))
    filename: str = Field(sa_column=Column(String(255), nullable=False))
    content_type: str = Field(sa_column=Column(String(127), nullable=False))
    size_bytes: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    # Who stored it (a principal's kind and id); NULL for the system.
    owner_kind: str | None = Field(default=None, sa_column=Column(String(16), nullable=True))
    owner_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    created_at: datetime = Field(sa_column=timestamptz(nullable=False))
    expires_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
