"""Monthly partitions of ``readings``: ``readings_pYYYYMM``, bounded by the utility's month.

A partition is created as a plain table and then attached, because ``CREATE TABLE …
PARTITION OF`` takes an ACCESS EXCLUSIVE lock on the parent and would stall every
reader and writer of the hot table behind it; ``ATTACH PARTITION`` takes SHARE UPDATE
EXCLUSIVE on the parent only. The attach runs under ``lock_timeout = '5s'`` so a long
query on the parent makes it fail fast instead of queueing everyone else behind it.

Partitions are created ahead by ``shuiwu partitions ensure`` (and the scheduled job),
and on demand by ingest for any month a batch touches.

Retention: old months leave with
``ALTER TABLE readings DETACH PARTITION readings_pYYYYMM CONCURRENTLY`` (outside a
transaction), then ``pg_dump -t readings_pYYYYMM`` to archive and ``DROP TABLE``. Usage
statistics read the daily rollup, so dropping raw months does not change them.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

PARENT = "readings"
DEFAULT_TIMEZONE = "Asia/Shanghai"
ATTACH_LOCK_TIMEOUT = "5s"
# Serialises concurrent creators of the same month (two ingest batches, the job).
_ADVISORY_KEY = "shuiwu:readings:partitions"


def as_zone(tz: str | tzinfo) -> tzinfo:
    return ZoneInfo(tz) if isinstance(tz, str) else tz


def month_of(instant: datetime, tz: tzinfo) -> tuple[int, int]:
    local = instant.astimezone(tz)
    return local.year, local.month


def months_between(start: datetime, end: datetime, tz: str | tzinfo) -> list[tuple[int, int]]:
    """Every (year, month) of the utility's calendar from ``start``'s month to ``end``'s."""
    zone = as_zone(tz)
    year, month = month_of(start, zone)
    last = month_of(end, zone)
    months: list[tuple[int, int]] = []
    while (year, month) <= last:
        months.append((year, month))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def partition_name(year: int, month: int) -> str:
    return f"{PARENT}_p{year:04d}{month:02d}"


def month_bounds(year: int, month: int, tz: str | tzinfo) -> tuple[datetime, datetime]:
    """The first instant of the month in ``tz`` and the first of the next one."""
    zone = as_zone(tz)
    following = (year + 1, 1) if month == 12 else (year, month + 1)
    return datetime(year, month, 1, tzinfo=zone), datetime(*following, 1, tzinfo=zone)


# pg_class read as a table (the statement's snapshot), not through to_regclass: that
# looks names up in the backend's catalog cache, which keeps a "no such table" from
# before the advisory lock until the backend next processes invalidations — and an
# advisory lock does not make it — so a second creator of the same month would miss the
# first one's committed table and fail on CREATE TABLE ("already exists").
_STATE = text(
    """
    SELECT name, c.oid IS NOT NULL AS present, coalesce(c.relispartition, false) AS attached
    FROM unnest(CAST(:names AS text[])) AS name
    LEFT JOIN pg_class c ON c.relname = name AND c.relnamespace = CAST(current_schema() AS regnamespace)
    """
)


async def ensure_partitions(
    session: AsyncSession, *, start: datetime, end: datetime, tz: str | tzinfo = DEFAULT_TIMEZONE
) -> list[str]:
    """Make sure a partition exists for every month from ``start`` to ``end`` (inclusive)
    in the utility's zone; returns the names of the partitions this call attached.

    Runs in the caller's transaction (the caller commits). Cheap when nothing is
    missing: one catalog query, no lock.
    """
    months = months_between(start, end, tz)
    names = [partition_name(year, month) for year, month in months]
    state = {row.name: row for row in (await session.execute(_STATE, {"names": names})).all()}
    if all(state[name].attached for name in names):
        return []
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": _ADVISORY_KEY})
    state = {row.name: row for row in (await session.execute(_STATE, {"names": names})).all()}
    previous_timeout = (await session.execute(text("SELECT current_setting('lock_timeout')"))).scalar_one()
    await session.execute(text("SELECT set_config('lock_timeout', :value, true)"), {"value": ATTACH_LOCK_TIMEOUT})
    attached: list[str] = []
    for (year, month), name in zip(months, names, strict=True):
        if state[name].attached:
            continue
        low, high = month_bounds(year, month, tz)
        bounds = f"FROM ('{low.isoformat()}') TO ('{high.isoformat()}')"
        if not state[name].present:
            # The CHECK matching the bounds lets ATTACH skip its validation scan; the
            # LIKE copies the columns, CHECKs and the primary key's index, which
            # ATTACH adopts as the parent index's partition.
            await session.execute(text(
                f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES,"
                f" CONSTRAINT {name}_bounds CHECK (read_at >= '{low.isoformat()}' AND read_at < '{high.isoformat()}'))"
            ))
        await session.execute(text(f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES {bounds}"))
        # Redundant once attached (the partition constraint says the same).
        await session.execute(text(f"ALTER TABLE {name} DROP CONSTRAINT IF EXISTS {name}_bounds"))
        attached.append(name)
    # Restored (on error the caller's transaction is aborted anyway): SET LOCAL would
    # otherwise last for the rest of the caller's transaction.
    await session.execute(text("SELECT set_config('lock_timeout', :value, true)"), {"value": previous_timeout})
    return attached


DEFAULT_MONTHS_AHEAD = 3


async def ensure_partitions_ahead(
    session: AsyncSession, *, now: datetime, tz: str | tzinfo = DEFAULT_TIMEZONE, months_ahead: int = DEFAULT_MONTHS_AHEAD
) -> list[str]:
    """The current month's partition and the next ``months_ahead`` (what ``shuiwu
    partitions ensure`` and the daily scheduled job run), so ingest normally finds its
    partition already attached."""
    year, month = month_of(now, as_zone(tz))
    for _ in range(months_ahead):
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return await ensure_partitions(session, start=now, end=month_bounds(year, month, tz)[0], tz=tz)
