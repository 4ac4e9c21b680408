"""Readings ingest (DESIGN.md, "Contracts": ``ingest_readings``).

The write path is built so that duplicates cost only when they occur:

1. validate and de-duplicate the batch in one pass in Python (the rows are in memory
   anyway), and look up the batch's meters in one query;
2. **fast path**: COPY the batch straight into ``readings`` inside a savepoint. Almost
   every batch is new readings, and this is as fast as a raw COPY into the table;
3. only if that COPY hits the primary key (a re-sent or overlapping batch) is the
   savepoint rolled back and the batch COPYed into a temp table and merged with
   ``INSERT … ON CONFLICT DO UPDATE … WHERE <the new quality ranks better>``, which
   counts inserted / replaced / duplicates exactly;
4. ``latest_readings`` and the daily rollup (``backend.readings.rollup``) are updated
   set-based from what was actually written, a meter's estimates older than its new
   actual reading are superseded, the per-batch alarm rules run for the meters written,
   and ``readings.ingested`` is emitted when anything was.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from operator import itemgetter
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.db import raw_connection
from backend.events.service import EventKind, emit_event
from backend.readings.errors import REJECTION_MESSAGES, RejectionCode
from backend.readings.models import QUALITY_RANK, ReadingQuality, ValveState
from backend.readings.partitions import DEFAULT_TIMEZONE, as_zone, ensure_partitions
from backend.readings.rollup import (
    LocalDays,
    RolledUp,
    aggregate_days,
    append_days,
    cyclic_gc_paused,
    recompute_days,
    zone_name,
)

DEFAULT_SKEW = timedelta(minutes=5)
_REGISTER_PLACES = Decimal("0.0001")  # readings.total_m3 is numeric(16,4)
_READ_AT = itemgetter(1)  # of a COPY row

COLUMNS = (
    "meter_id", "read_at", "total_m3", "flow_rate", "pressure", "valve_state",
    "battery", "status_bits", "quality", "source", "received_at",
)
_COLUMN_LIST = ", ".join(COLUMNS)
_UPDATED = ", ".join(f"{name} = EXCLUDED.{name}" for name in COLUMNS[2:])
# The same order as QUALITY_RANK (lower is better).
_RANK = "CASE {0}.quality WHEN 'actual' THEN 0 WHEN 'manual' THEN 1 ELSE 2 END"


@dataclass(frozen=True, slots=True)
class ReadingIn:
    """A reading as a source delivers it. ``read_at`` must be timezone-aware."""

    meter_id: int
    read_at: datetime
    total_m3: Decimal
    quality: ReadingQuality = ReadingQuality.actual
    flow_rate: Decimal | None = None
    pressure: Decimal | None = None
    valve_state: ValveState | None = None
    battery: Decimal | None = None
    status_bits: int | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Reading ``index`` of the batch was not stored, and why."""

    index: int
    code: RejectionCode
    message: str
    message_en: str


@dataclass(frozen=True, slots=True)
class IngestResult:
    """``inserted + replaced + duplicates + len(rejected)`` is the batch size. A duplicate
    is a reading already stored (or repeated in the batch) with an equal or better quality."""

    batch_id: str
    inserted: int
    replaced: int
    duplicates: int
    rejected: list[Rejection] = field(default_factory=list)


def _rejection(index: int, code: RejectionCode) -> Rejection:
    message, message_en = REJECTION_MESSAGES[code]
    return Rejection(index, code, message, message_en)


# Locking the batch's meters (in id order, so two batches can't deadlock) serialises
# concurrent ingests of the same meter: the rollup continues each meter's chain from its
# stored state, which a concurrent writer would otherwise change underneath it. FOR NO
# KEY UPDATE leaves foreign-key checks and readers alone.
_METERS = "SELECT id, install_date FROM meters WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE"


async def _meter_install_starts(driver: Any, meter_ids: list[int], zone: tzinfo) -> dict[int, datetime | None]:
    """Known meters -> the first instant of their install day in the utility's zone."""
    rows = await driver.fetch(_METERS, meter_ids)
    day_starts: dict[date | None, datetime | None] = {None: None}  # meters share few install days
    starts: dict[int, datetime | None] = {}
    for meter_id, installed in rows:
        start = day_starts.get(installed)
        if start is None and installed is not None:
            start = day_starts[installed] = datetime.combine(installed, time(), tzinfo=zone)
        starts[meter_id] = start
    return starts


# Every part of one statement sees the same snapshot, so ``existing`` is the stored rows
# from before the insert (xmax = 0 is not available on a partitioned table's RETURNING).
_MERGE = f"""
WITH existing AS (
    SELECT i.meter_id, i.read_at FROM readings_incoming i JOIN readings s USING (meter_id, read_at)
), changed AS (
    INSERT INTO readings AS r ({_COLUMN_LIST})
    SELECT {_COLUMN_LIST} FROM readings_incoming
    ON CONFLICT (meter_id, read_at) DO UPDATE SET {_UPDATED}
    WHERE {_RANK.format("EXCLUDED")} < {_RANK.format("r")}
    RETURNING r.*
), newest AS (
    SELECT DISTINCT ON (meter_id) {_COLUMN_LIST} FROM changed ORDER BY meter_id, read_at DESC
), latest AS (
    INSERT INTO latest_readings AS l ({_COLUMN_LIST})
    SELECT {_COLUMN_LIST} FROM newest
    ON CONFLICT (meter_id) DO UPDATE SET read_at = EXCLUDED.read_at, {_UPDATED}
    WHERE EXCLUDED.read_at >= l.read_at
)
SELECT count(*) FILTER (WHERE e.meter_id IS NULL) AS inserted,
       count(*) FILTER (WHERE e.meter_id IS NOT NULL) AS replaced,
       coalesce(array_agg(c.meter_id), '{{}}') AS meter_ids,
       coalesce(array_agg(c.read_at), '{{}}') AS read_ats
FROM changed c LEFT JOIN existing e USING (meter_id, read_at)
"""

# Newest reading per meter of a batch that was inserted whole (fast path). Only the keys
# travel: the rows were just written, and sending them again as arrays costs more than
# the update itself. ``>`` is enough here: a reading at the same instant would have
# conflicted. Updating first and inserting only the meters without a row is cheaper than
# ON CONFLICT for every row (in steady state every meter has one).
_LATEST_FROM_KEYS = f"""
WITH incoming AS (
    SELECT r.* FROM unnest($1::bigint[], $2::timestamptz[]) AS k(meter_id, read_at)
    JOIN readings r ON r.meter_id = k.meter_id AND r.read_at = k.read_at
), updated AS (
    UPDATE latest_readings l SET {", ".join(f"{name} = i.{name}" for name in COLUMNS[1:])}
    FROM incoming i WHERE l.meter_id = i.meter_id AND i.read_at > l.read_at
)
INSERT INTO latest_readings AS l ({_COLUMN_LIST})
SELECT {_COLUMN_LIST} FROM incoming i
WHERE NOT EXISTS (SELECT FROM latest_readings x WHERE x.meter_id = i.meter_id)
ON CONFLICT (meter_id) DO UPDATE SET read_at = EXCLUDED.read_at, {_UPDATED}
WHERE EXCLUDED.read_at > l.read_at
"""


async def ingest_readings(
    session: AsyncSession,
    *,
    readings: Sequence[ReadingIn],
    source: str,
    now: datetime,
    tz: str | tzinfo = DEFAULT_TIMEZONE,
    skew: timedelta = DEFAULT_SKEW,
) -> IngestResult:
    """Store a batch of readings idempotently; the caller commits.

    Rejected readings (unknown meter, ``read_at`` later than ``now + skew`` or before the
    meter's install day, a negative or non-finite total, a naive ``read_at``) are
    reported, not stored. Within the batch and against stored readings, a better quality
    replaces a worse one for the same (meter, read_at); anything else is a duplicate.
    Emits ``readings.ingested {batch_id, meter_ids}`` when anything was written.
    """
    zone = as_zone(tz)
    batch_id = uuid.uuid4().hex
    driver = await raw_connection(session)
    rejected: list[Rejection] = []

    with cyclic_gc_paused():
        meter_ids = list({reading.meter_id for reading in readings})
    install_starts = await _meter_install_starts(driver, meter_ids, zone) if meter_ids else {}

    with cyclic_gc_paused():
        kept, batch_duplicates = _validate(readings, install_starts, now + skew, source, now, rejected)

    if not kept:
        return IngestResult(batch_id, 0, 0, batch_duplicates, rejected)

    with cyclic_gc_paused():
        rows = list(kept.values())
        earliest = min(map(_READ_AT, rows))
        latest = max(map(_READ_AT, rows))
    await ensure_partitions(session, start=earliest, end=latest, tz=zone)

    days = LocalDays(zone)
    try:
        async with driver.transaction():  # a SAVEPOINT inside the caller's transaction
            await driver.copy_records_to_table("readings", records=rows, columns=COLUMNS)
    except asyncpg.UniqueViolationError:
        inserted, replaced, changed = await _merge(driver, rows)
        # What was written rolls up like a fast-path batch: appended days continue their
        # chain, and only the meters with a replaced or late reading are recomputed.
        keys = set(changed)
        written = [row for row in rows if (row[0], row[1]) in keys]
        with cyclic_gc_paused():
            aggregates = aggregate_days(written, days)
        rolled = await _append_days(driver, aggregates, zone_name(zone))
    else:
        inserted, replaced, written = len(rows), 0, rows
        with cyclic_gc_paused():
            aggregates = aggregate_days(rows, days)
        rolled = await _append_days(driver, aggregates, zone_name(zone))
        await _update_latest_from(driver, rows)

    if inserted or replaced:
        changed_meters = sorted({meter_id for meter_id, _ in aggregates})
        superseded = await _supersede_estimates(driver, rows)
        if superseded:
            await _recompute_days(driver, superseded, days, zone)
            rolled.flagged.update(meter_id for meter_id, _ in superseded)
        await _evaluate_alarms(session, now=now, tz=zone, meter_ids=changed_meters, written=written, rolled=rolled)
        await emit_event(session, EventKind.readings_ingested, {"batch_id": batch_id, "meter_ids": changed_meters})
    duplicates = batch_duplicates + len(rows) - inserted - replaced
    return IngestResult(batch_id, inserted, replaced, duplicates, rejected)


async def after_readings_changed(
    session: AsyncSession,
    *,
    changes: Sequence[tuple[int, datetime]],
    now: datetime,
    tz: str | tzinfo = DEFAULT_TIMEZONE,
) -> list[int]:
    """Bring everything derived from ``readings`` up to date after stored readings were
    changed outside ingest (``correctReading``): the daily rollup of the touched days and
    every later day, the latest reading, the alarms of those meters; emits
    ``readings.ingested`` again so prepaid settlement re-prices. Returns the meter ids."""
    if not changes:
        return []
    zone = as_zone(tz)
    driver = await raw_connection(session)
    await _recompute_days(driver, changes, LocalDays(zone), zone)
    meter_ids = sorted({meter_id for meter_id, _ in changes})
    await driver.execute(_LATEST_REFRESH, meter_ids)
    from backend.readings.alarms.service import evaluate_alarms

    await evaluate_alarms(session, now=now, tz=zone, meter_ids=meter_ids)
    await emit_event(session, EventKind.readings_ingested, {"batch_id": uuid.uuid4().hex, "meter_ids": meter_ids})
    return meter_ids


async def _recompute_days(driver: Any, changed: Iterable[tuple[int, datetime]], days: LocalDays, zone: tzinfo) -> None:
    await recompute_days(driver, {(meter_id, days(read_at)) for meter_id, read_at in changed}, zone_name(zone))


async def _append_days(driver: Any, aggregates: dict[Any, Any], tz_name: str) -> RolledUp:
    return await append_days(driver, aggregates, tz_name)


# "An actual read later replaces the estimate": a meter's estimated readings at or before
# its newest actual or manual reading of the batch are gone (the partial index on
# estimated readings keeps this to a probe per meter).
_SUPERSEDE = """
DELETE FROM readings r USING unnest($1::bigint[], $2::timestamptz[]) AS k(meter_id, read_at)
WHERE r.quality = 'estimated' AND r.meter_id = k.meter_id AND r.read_at < k.read_at
RETURNING r.meter_id, r.read_at
"""


async def _supersede_estimates(driver: Any, rows: list[tuple[Any, ...]]) -> list[tuple[int, datetime]]:
    newest: dict[int, datetime] = {}
    with cyclic_gc_paused():
        for row in rows:
            if row[8] is ReadingQuality.estimated or row[8] == "estimated":
                continue
            current = newest.get(row[0])
            if current is None or row[1] > current:
                newest[row[0]] = row[1]
    if not newest:
        return []
    deleted = await driver.fetch(_SUPERSEDE, list(newest), list(newest.values()))
    return [(row["meter_id"], row["read_at"]) for row in deleted]


# The newest stored reading of each meter, or no row when it has none left.
_LATEST_REFRESH = f"""
WITH newest AS (
    SELECT r.* FROM unnest($1::bigint[]) AS m(id)
    CROSS JOIN LATERAL (SELECT * FROM readings r WHERE r.meter_id = m.id ORDER BY r.read_at DESC LIMIT 1) r
), gone AS (
    DELETE FROM latest_readings l WHERE l.meter_id = ANY($1::bigint[])
      AND NOT EXISTS (SELECT FROM newest n WHERE n.meter_id = l.meter_id)
)
INSERT INTO latest_readings AS l ({_COLUMN_LIST})
SELECT {_COLUMN_LIST} FROM newest
ON CONFLICT (meter_id) DO UPDATE SET read_at = EXCLUDED.read_at, {_UPDATED}
"""


async def _evaluate_alarms(
    session: AsyncSession, *, now: datetime, tz: tzinfo, meter_ids: list[int], written: list[tuple[Any, ...]],
    rolled: RolledUp,
) -> None:
    """The per-batch alarm rules (reverse flow, high use, battery, valve …) for the meters
    of this batch where one could change; silent meters are found by the periodic job."""
    # Imported here: the alarms service imports archives.service, which imports this module.
    from backend.readings.alarms.batch import evaluate_after_batch

    await evaluate_after_batch(session, now=now, tz=tz, rows=written, meter_ids=meter_ids,
                               flagged=rolled.flagged, day_usage=rolled.day_usage)


def _validate(
    readings: Sequence[ReadingIn],
    install_starts: dict[int, datetime | None],
    latest_allowed: datetime,
    source: str,
    now: datetime,
    rejected: list[Rejection],
) -> tuple[dict[tuple[int, datetime], tuple[Any, ...]], int]:
    """Validate (appending to ``rejected``), keep the best reading per (meter, read_at)
    and build its COPY row; returns the kept rows and how many in-batch duplicates fell."""
    kept: dict[tuple[int, datetime], tuple[Any, ...]] = {}
    batch_duplicates = 0
    for index, reading in enumerate(readings):
        read_at = reading.read_at
        total = reading.total_m3
        code: RejectionCode | None = None
        if read_at.tzinfo is None or read_at.utcoffset() is None:
            code = RejectionCode.NAIVE_DATETIME
        elif reading.meter_id not in install_starts:
            code = RejectionCode.UNKNOWN_METER
        elif read_at > latest_allowed:
            code = RejectionCode.READ_AT_IN_FUTURE
        elif not isinstance(total, Decimal) or not total.is_finite() or total < 0:
            code = RejectionCode.INVALID_TOTAL
        else:
            installed = install_starts[reading.meter_id]
            if installed is not None and read_at < installed:
                code = RejectionCode.READ_BEFORE_INSTALL
        if code is not None:
            rejected.append(_rejection(index, code))
            continue
        if read_at.fold:
            # The second of two equal local times (a DST autumn night). Python compares
            # times of one zone by wall clock, fold ignored, so as a key or in a sort it
            # would collide with the first: in UTC it compares as the instant it is.
            read_at = read_at.astimezone(UTC)
        # Stored to the register's 4 places here, so the rollup walks what is stored.
        total = total.quantize(_REGISTER_PLACES, ROUND_HALF_UP)
        key = (reading.meter_id, read_at)
        previous = kept.get(key)
        if previous is not None:
            batch_duplicates += 1
            if QUALITY_RANK[reading.quality] >= QUALITY_RANK[previous[8]]:
                continue
        kept[key] = (reading.meter_id, read_at, total, reading.flow_rate, reading.pressure, reading.valve_state,
                     reading.battery, reading.status_bits, reading.quality, source, now)
    return kept, batch_duplicates


async def _merge(driver: Any, rows: list[tuple[Any, ...]]) -> tuple[int, int, list[tuple[int, datetime]]]:
    """The slow path: merge through a temp table with exact counts."""
    await driver.execute(
        "CREATE TEMP TABLE IF NOT EXISTS readings_incoming (LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    await driver.execute("TRUNCATE readings_incoming")
    await driver.copy_records_to_table("readings_incoming", records=rows, columns=COLUMNS)
    merged = await driver.fetchrow(_MERGE)
    await driver.execute("TRUNCATE readings_incoming")
    return int(merged["inserted"]), int(merged["replaced"]), list(zip(merged["meter_ids"], merged["read_ats"], strict=True))


async def _update_latest_from(driver: Any, rows: list[tuple[Any, ...]]) -> None:
    newest: dict[int, datetime] = {}
    with cyclic_gc_paused():
        for meter_id, read_at, *_ in rows:
            current = newest.get(meter_id)
            if current is None or read_at > current:
                newest[meter_id] = read_at
    await driver.execute(_LATEST_FROM_KEYS, list(newest), list(newest.values()))


_LATEST = text(f"SELECT {_COLUMN_LIST} FROM latest_readings WHERE meter_id = ANY(:meter_ids) ORDER BY meter_id")


async def latest_readings(session: AsyncSession, *, meter_ids: Sequence[int]) -> dict[int, Any]:
    """The newest stored reading of each of ``meter_ids`` that has one (rows by meter id)."""
    result = await session.execute(_LATEST, {"meter_ids": list(meter_ids)})
    return {row.meter_id: row for row in result.all()}
