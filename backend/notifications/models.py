"""The notifications domain's tables (docs/notifications.md).

- ``messages``: one row per inbox message (a resident's or a staff user's), unique on
  (dedupe key, recipient) so a replayed event never writes (nor sends) twice.
- ``sms_deliveries``: an SMS to a household's registered phone, unique on (household,
  dedupe key): queued in the business transaction, sent by the job after commit, then
  ``sent``, ``failed`` (with the vendor's reason) or ``capped`` (the household's daily cap).
- ``push_devices``: the app installations JPush knows (registration id, platform, app,
  the user); a registration id belongs to one user at a time.
- ``notification_preferences``: per user, the kinds that do not push and the quiet hours.
- ``push_deliveries``: one JPush call's worth: one message text to up to 1000
  registration ids, ``queued`` → ``sent`` / ``failed`` (with reason), retried with backoff.
"""

from __future__ import annotations

from datetime import datetime, time
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, String, Text, Time, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlmodel import Field, SQLModel

from backend.db import enum_column, timestamptz


class UserKind(StrEnum):
    """Whose inbox or device: a resident (residents.id) or a staff user (staff_users.id)."""

    resident = "resident"
    staff = "staff"


class DevicePlatform(StrEnum):
    android = "android"
    ios = "ios"


class SmsState(StrEnum):
    queued = "queued"
    sent = "sent"
    failed = "failed"
    capped = "capped"  # the household's daily cap was reached: not sent, not retried


class PushState(StrEnum):
    queued = "queued"
    sent = "sent"
    failed = "failed"


class Message(SQLModel, table=True):
    __tablename__ = "messages"
    __table_args__ = (
        # The dedupe key first: "has any message this key yet?" is one probe (a fan-out with a
        # new key then inserts without ON CONFLICT), and a fan-out's entries sit together.
        UniqueConstraint("dedupe_key", "recipient_kind", "recipient_id", name="uq_messages_dedupe_recipient"),
        # The inbox: a user's newest first, unread ones counted.
        Index("ix_messages_inbox", "recipient_kind", "recipient_id", "id"),
        Index("ix_messages_unread", "recipient_kind", "recipient_id", postgresql_where=text("read_at IS NULL")),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    recipient_kind: UserKind = Field(sa_column=enum_column(UserKind, nullable=False))
    recipient_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    # The household a household-addressed message reached the resident through (NULL otherwise;
    # shown, never searched by: no index).
    household_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    kind: str = Field(sa_column=Column(String(32), nullable=False))
    title: str = Field(sa_column=Column(String(200), nullable=False))
    body: str = Field(sa_column=Column(Text, nullable=False))
    # The deep link the apps open: {"screen": "bill", "id": 42}.
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False, server_default="{}"))
    dedupe_key: str = Field(sa_column=Column(String(200), nullable=False))
    created_at: datetime = Field(sa_column=timestamptz(nullable=False))
    read_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))


class SmsDelivery(SQLModel, table=True):
    __tablename__ = "sms_deliveries"
    __table_args__ = (
        UniqueConstraint("household_id", "dedupe_key", name="uq_sms_deliveries_household_dedupe"),
        Index("ix_sms_deliveries_due", "next_attempt_at", postgresql_where=text("state = 'queued'")),
        Index("ix_sms_deliveries_household_day", "household_id", "sent_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    household_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    kind: str = Field(sa_column=Column(String(32), nullable=False))
    text_body: str = Field(sa_column=Column("text", Text, nullable=False))
    dedupe_key: str = Field(sa_column=Column(String(200), nullable=False))
    state: SmsState = Field(default=SmsState.queued, sa_column=enum_column(SmsState, nullable=False))
    # The phone it went to (the household's registered phone when it was sent).
    phone: str | None = Field(default=None, sa_column=Column(String(20), nullable=True))
    reason: str | None = Field(default=None, sa_column=Column(String(300), nullable=True))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    next_attempt_at: datetime = Field(sa_column=timestamptz(nullable=False))
    created_at: datetime = Field(sa_column=timestamptz(nullable=False))
    sent_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))


class PushDevice(SQLModel, table=True):
    __tablename__ = "push_devices"
    __table_args__ = (Index("ix_push_devices_user", "user_kind", "user_id", postgresql_where=text("active")),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    registration_id: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    platform: DevicePlatform = Field(sa_column=enum_column(DevicePlatform, nullable=False))
    user_kind: UserKind = Field(sa_column=enum_column(UserKind, nullable=False))
    user_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    active: bool = Field(default=True, sa_column=Column(Boolean, nullable=False, server_default="true"))
    registered_at: datetime = Field(sa_column=timestamptz(nullable=False))


class NotificationPreference(SQLModel, table=True):
    __tablename__ = "notification_preferences"

    user_kind: UserKind = Field(sa_column=enum_column(UserKind, primary_key=True))
    user_id: int = Field(sa_column=Column(BigInteger, primary_key=True))
    # Message kinds that do not push (they still reach the inbox, and SMS where due).
    muted_kinds: list[str] = Field(default_factory=list, sa_column=Column(ARRAY(String(32)), nullable=False,
                                                                           server_default="{}"))
    # Quiet hours in the utility's time zone (both or neither; start > end spans midnight).
    quiet_start: time | None = Field(default=None, sa_column=Column(Time, nullable=True))
    quiet_end: time | None = Field(default=None, sa_column=Column(Time, nullable=True))
    updated_at: datetime = Field(sa_column=timestamptz(nullable=False))


class PushDelivery(SQLModel, table=True):
    __tablename__ = "push_deliveries"
    __table_args__ = (
        Index("ix_push_deliveries_due", "next_attempt_at", postgresql_where=text("state = 'queued'")),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    kind: str = Field(sa_column=Column(String(32), nullable=False))
    title: str = Field(sa_column=Column(String(200), nullable=False))
    body: str = Field(sa_column=Column(Text, nullable=False))
    extras: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False, server_default="{}"))
    # Both arrays are stored out of line uncompressed (STORAGE EXTERNAL, migration 0035).
    registration_ids: list[str] = Field(sa_column=Column(ARRAY(String(64)), nullable=False))
    message_ids: list[int] = Field(sa_column=Column(ARRAY(BigInteger), nullable=False))
    state: PushState = Field(default=PushState.queued, sa_column=enum_column(PushState, nullable=False))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    # Not before: the end of a recipient's quiet hours, or the next retry.
    next_attempt_at: datetime = Field(sa_column=timestamptz(nullable=False))
    reason: str | None = Field(default=None, sa_column=Column(String(300), nullable=True))
    msg_id: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    created_at: datetime = Field(sa_column=timestamptz(nullable=False))
    sent_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
