"""Reading tables: ``readings`` (range-partitioned by the utility's month on ``read_at``)
and ``latest_readings`` (one row per meter, the newest reading, for real-time screens).

Neither table has a foreign key to ``meters``: a foreign key makes every COPY row pay an
index lookup into ``meters`` (and locks the meter row KEY SHARE), which is most of the
difference between our ingest and a raw COPY. ``ingest_readings`` validates the batch's
meters itself, set-based, once per batch; meters are retired, never deleted.

The primary key ``(meter_id, read_at)`` is the reading's identity (re-ingest is a no-op)
and carries the partition key, as PostgreSQL requires, and the distribution key
``meter_id`` for Citus (DESIGN.md, "Scale").
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import BigInteger, Boolean, Column, Date, ForeignKey, Index, Integer, Numeric, String, Text, text
from sqlmodel import Field, SQLModel

from backend.db import enum_column, timestamptz


class ReadingQuality(StrEnum):
    """How a reading was obtained, best first: a better one replaces a worse one for the
    same meter and time; an equal or worse one is a duplicate (DESIGN.md, "Enums")."""

    actual = "actual"
    manual = "manual"
    estimated = "estimated"


# Lower is better; the SQL in service.py spells out the same order.
QUALITY_RANK: dict[str, int] = {ReadingQuality.actual: 0, ReadingQuality.manual: 1, ReadingQuality.estimated: 2}


class ValveState(StrEnum):
    open = "open"
    closed = "closed"
    unknown = "unknown"


class Reading(SQLModel, table=True):
    """One reading of one meter at one instant. Partitions are ``readings_pYYYYMM``
    (backend.readings.partitions), created ahead and on demand by ingest."""

    __tablename__ = "readings"
    __table_args__ = (
        # Estimates are rare and short-lived (an actual read supersedes them): a tiny
        # partial index lets ingest find a meter's estimates without touching its history.
        Index("ix_readings_estimated", "meter_id", "read_at", postgresql_where=text("quality = 'estimated'")),
        {"postgresql_partition_by": "RANGE (read_at)"},
    )

    meter_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    read_at: datetime = Field(sa_column=timestamptz(primary_key=True))
    total_m3: Decimal = Field(sa_column=Column(Numeric(16, 4), nullable=False))
    flow_rate: Decimal | None = Field(default=None, sa_column=Column(Numeric(12, 4), nullable=True))
    pressure: Decimal | None = Field(default=None, sa_column=Column(Numeric(8, 4), nullable=True))
    valve_state: ValveState | None = Field(default=None, sa_column=enum_column(ValveState, nullable=True))
    battery: Decimal | None = Field(default=None, sa_column=Column(Numeric(5, 2), nullable=True))
    status_bits: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    quality: ReadingQuality = Field(sa_column=enum_column(ReadingQuality, nullable=False))
    source: str = Field(sa_column=Column(Text, nullable=False))
    received_at: datetime = Field(sa_column=timestamptz(nullable=False))


class LatestReading(SQLModel, table=True):
    """The newest reading of each meter (by ``read_at``), kept current by ingest, and the
    meter's **open day**: the rollup of the day that newest reading closes on.

    The open day lives here rather than in ``daily_usage_closed`` because ingest rewrites
    it with every batch (an hourly meter's day gets readings from many batches) and this
    row is rewritten by every batch anyway: one row update per meter and batch instead of
    two. Its ``last_at`` / ``last_total`` are ``read_at`` / ``total_m3``. A day moves to
    ``daily_usage_closed`` when the meter's first reading of a later day arrives. The
    ``daily_usage`` view is both (migration 0009); every reader uses the view.

    Ingest leaves the open-day columns NULL only inside its transaction (between a
    meter's first reading and its rollup, and while ``recompute_days`` has set the day
    aside). A row written some other way without them (by hand, a test) makes ingest
    rebuild the meter's days from its first reading.
    """

    __tablename__ = "latest_readings"
    # Every ingest batch rewrites most rows; free space on each page lets those be HOT
    # updates (no new index entry, pruned in place) instead of bloating the table and index.
    __table_args__ = {"postgresql_with": {"fillfactor": "50"}}

    meter_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    read_at: datetime = Field(sa_column=timestamptz(nullable=False))
    total_m3: Decimal = Field(sa_column=Column(Numeric(16, 4), nullable=False))
    flow_rate: Decimal | None = Field(default=None, sa_column=Column(Numeric(12, 4), nullable=True))
    pressure: Decimal | None = Field(default=None, sa_column=Column(Numeric(8, 4), nullable=True))
    valve_state: ValveState | None = Field(default=None, sa_column=enum_column(ValveState, nullable=True))
    battery: Decimal | None = Field(default=None, sa_column=Column(Numeric(5, 2), nullable=True))
    status_bits: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    quality: ReadingQuality = Field(sa_column=enum_column(ReadingQuality, nullable=False))
    source: str = Field(sa_column=Column(Text, nullable=False))
    received_at: datetime = Field(sa_column=timestamptz(nullable=False))
    # The open day (see DailyUsage for what each column means).
    day: date | None = Field(default=None, sa_column=Column(Date, nullable=True))
    first_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    first_total: Decimal | None = Field(default=None, sa_column=Column(Numeric(16, 4), nullable=True))
    effective_total: Decimal | None = Field(default=None, sa_column=Column(Numeric(20, 4), nullable=True))
    opening_effective: Decimal | None = Field(default=None, sa_column=Column(Numeric(20, 4), nullable=True))
    usage_m3: Decimal | None = Field(default=None, sa_column=Column(Numeric(16, 4), nullable=True))
    reading_count: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    register_wraps: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    rollover: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))
    reverse_flow: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))
    # The meter may have estimated readings (set when one is written, cleared once an
    # actual or manual reading superseded them all): ingest looks for estimates to
    # supersede only where this is set.
    estimated: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))


class DailyUsage(SQLModel, table=True):
    """The daily usage rollup (日用量, the brochure's 保存到数据库): one row per meter and
    day of the utility's calendar that has a reading, maintained by ingest.

    This table holds the **closed** days, every day before the day of the meter's newest
    reading; that open day is kept on the meter's ``latest_readings`` row. Read the
    ``daily_usage`` view, which is both.

    ``effective_total`` is the register unwrapped past rollovers (each wrap adds
    10^register_digits) and held at its high-water mark, so reverse flow never counts as
    negative usage; ``usage_m3`` is ``(effective_total − opening_effective) × multiplier``,
    where ``opening_effective`` is the previous day's ``effective_total`` (on a meter's
    first day, its first reading). A day is ``(00:00, 24:00]`` in the utility's zone. Summing
    ``usage_m3`` over whole days therefore equals ``usage.usage_between`` over the same
    instants, which is what every statistics screen relies on.
    """

    __tablename__ = "daily_usage_closed"
    __table_args__ = (
        # Area statistics scan a day range for many meters. A closed day is written once
        # and rewritten only by a recompute (a late reading, a correction), which the
        # free space of a lower fillfactor keeps HOT.
        Index("ix_daily_usage_closed_day", "day", "meter_id"),
        {"postgresql_with": {"fillfactor": "70"}},
    )

    meter_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    day: date = Field(sa_column=Column(Date, primary_key=True))
    first_at: datetime = Field(sa_column=timestamptz(nullable=False))
    first_total: Decimal = Field(sa_column=Column(Numeric(16, 4), nullable=False))
    last_at: datetime = Field(sa_column=timestamptz(nullable=False))
    last_total: Decimal = Field(sa_column=Column(Numeric(16, 4), nullable=False))
    effective_total: Decimal = Field(sa_column=Column(Numeric(20, 4), nullable=False))
    # The effective register the day starts from: the previous day's effective_total,
    # or on the meter's first day its first reading.
    opening_effective: Decimal = Field(sa_column=Column(Numeric(20, 4), nullable=False))
    usage_m3: Decimal = Field(sa_column=Column(Numeric(16, 4), nullable=False))
    reading_count: int = Field(sa_column=Column(Integer, nullable=False))
    # How many times the register has wrapped up to this day's last reading; with
    # last_total it gives the unwrapped register the next day's chain starts from.
    register_wraps: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    rollover: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))
    reverse_flow: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))


class ReadingEntry(SQLModel, table=True):
    """What a field reading brought beside its value (抄表录入 from the staff app): the
    client's ``idempotency_key`` (a reading entered offline and synced twice is stored
    once: the replay finds this row and returns the stored reading) and the dial's photo
    (a ``stored_files`` key, kept once referenced here). Written only for entries that
    carry one of them; the reading itself is ``readings`` (meter_id, read_at)."""

    __tablename__ = "reading_entries"
    __table_args__ = (Index("ix_reading_entries_meter_id_read_at", "meter_id", "read_at"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    # A client-made key (a UUID): global, so a replay from any session finds it.
    idempotency_key: str | None = Field(default=None, sa_column=Column(String(64), nullable=True, unique=True))
    meter_id: int = Field(sa_column=Column(BigInteger, ForeignKey("meters.id"), nullable=False))
    read_at: datetime = Field(sa_column=timestamptz(nullable=False))
    total_m3: Decimal = Field(sa_column=Column(Numeric(16, 4), nullable=False))
    photo_key: str | None = Field(
        default=None, sa_column=Column(String(255), ForeignKey("stored_files.key", ondelete="SET NULL"), nullable=True))
    entered_by: str = Field(sa_column=Column(String(100), nullable=False))
    created_at: datetime = Field(sa_column=timestamptz(nullable=False))
