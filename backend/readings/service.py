"""Readings ingest (DESIGN.md, "Contracts": ``ingest_readings``).

The write path is built so that whatever is rare costs only when it occurs:

1. one statement locks the batch's meters (in id order) and reads what ingest needs of
   each: its install day, register, open day (``latest_readings``) and alarm facts;
2. **append path**: the batch is validated row by row *while* it streams into
   ``readings`` as a text COPY inside a savepoint, and each row carries its meter's
   rollup chain forward (:class:`~backend.readings.rollup.MeterChain`). The Python work
   overlaps PostgreSQL's, so a batch of new, time-ordered readings costs little more
   than the COPY. Then the days that closed are COPYed to ``daily_usage_closed``, and the
   open days to a temp table from which one UPDATE sets every meter's ``latest_readings``
   row (newest reading and open day together). A batch spanning two months is streamed
   again into the parent; a month without its partition gets one and the batch is
   streamed again;
3. anything else — a reading at or before its meter's newest one (a re-sent or late
   batch, or a duplicate in the batch) — makes the stream stop, the savepoint roll back,
   and the **general path** run: validate and
   de-duplicate the batch as a whole, COPY it, or if that hits the primary key merge it
   through a temp table with ``INSERT … ON CONFLICT DO UPDATE … WHERE <the new quality
   ranks better>`` (exact inserted / replaced / duplicate counts), continue the chains of
   the meters that were only appended to, and recompute the days of the rest;
4. a meter's estimates older than its new actual reading are superseded (looked for only
   on meters flagged ``latest_readings.estimated``), the per-batch alarm rules run for
   the meters where one could change, and ``readings.ingested`` is emitted when anything
   was written.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from operator import itemgetter
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.db import raw_connection
from backend.events.service import emit_event
from backend.readings.errors import REJECTION_MESSAGES, RejectionCode
from backend.readings.events import ReadingsIngested
from backend.readings.models import QUALITY_RANK, ReadingQuality, ValveState
from backend.readings.partitions import DEFAULT_TIMEZONE, PARENT, as_zone, ensure_partitions, month_of, partition_name
from backend.readings.rollup import (
    BATCH_STATE,
    PLAIN_TYPES,
    Decimals,
    LocalDays,
    MeterChain,
    RolledUp,
    comparable,
    copy_text,
    cyclic_gc_paused,
    demote_open_days,
    recompute_days,
    write_chains,
    zone_name,
)

DEFAULT_SKEW = timedelta(minutes=5)
_REGISTER_PLACES = Decimal("0.0001")  # readings.total_m3 is numeric(16,4)
_ZERO = Decimal(0)
# numeric(16,4) holds less than 10^12; this and above round to it at 4 places.
_TOTAL_LIMIT = Decimal("999999999999.99995")
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
    """A reading as a source delivers it. ``read_at`` must be timezone-aware.

    A flow meter (``flow_monitor``, and any household meter) sends its register as
    ``total_m3`` (and a flow monitor its ``flow_rate``, m³/h); a pressure gauge
    (``pressure_monitor``) has no register: it sends ``total_m3 = 0`` and its
    ``pressure`` (MPa), so its days use nothing and a station's volume is its flow
    meters' (tests/readings/test_stations.py pins what is stored)."""

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
# KEY UPDATE leaves foreign-key checks and readers alone. The state is read by the next
# statement: under READ COMMITTED its snapshot is taken after the locks were granted, so
# it sees what a batch that held them committed (one statement would not: a lock wait
# re-reads only the locked row, and the meter row itself is never changed by ingest).
_LOCK_METERS = """
SELECT count(*) FROM (SELECT FROM meters WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE) AS locked
"""

async def _lock_and_read_state(driver: Any, meter_ids: list[int]) -> list[Any]:
    await driver.fetchval(_LOCK_METERS, meter_ids)
    return list(await driver.fetch(BATCH_STATE, meter_ids))


class _InstallStarts(dict[date | None, datetime | None]):
    """Install day -> its first instant in the utility's zone (meters share few days)."""

    def __init__(self, zone: tzinfo) -> None:
        super().__init__({None: None})
        self.zone = zone

    def __missing__(self, installed: date) -> datetime:
        start = self[installed] = datetime.combine(installed, time(), tzinfo=self.zone)
        return start


def _install_starts(states: Sequence[Any], zone: tzinfo) -> dict[int, datetime | None]:
    """Known meters -> the first instant of their install day in the utility's zone."""
    day_starts = _InstallStarts(zone)
    return {state["meter_id"]: day_starts[state["install_date"]] for state in states}


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
)
SELECT count(*) FILTER (WHERE e.meter_id IS NULL) AS inserted,
       count(*) FILTER (WHERE e.meter_id IS NOT NULL) AS replaced,
       coalesce(array_agg(c.meter_id), '{{}}') AS meter_ids,
       coalesce(array_agg(c.read_at), '{{}}') AS read_ats
FROM changed c LEFT JOIN existing e USING (meter_id, read_at)
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
    Emits ``readings.ingested`` (:class:`~backend.readings.events.ReadingsIngested`) when
    anything was written.
    """
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    zone = as_zone(tz)
    batch_id = uuid.uuid4().hex
    if not readings:
        return IngestResult(batch_id, 0, 0, 0, [])
    driver = await raw_connection(session)
    with cyclic_gc_paused():
        meter_ids = list({reading.meter_id for reading in readings})
    states = await _lock_and_read_state(driver, meter_ids)
    # Imported here: the alarms service imports archives.service, which imports this module.
    from backend.readings.alarms.batch import rule_bounds

    bounds = await rule_bounds(session)
    batch = await _append(session, driver, readings, states, zone, now, now + skew, source, bounds)
    if not batch.appendable:
        return await _ingest_general(session, driver, readings, states, zone, now, skew, source, bounds, batch_id,
                                     conflicts=batch.conflicts)

    rolled = RolledUp()
    await write_chains(driver, batch.chains.values(), rolled, source=source, received_at=now, stamps=batch.stamps)
    if batch.superseding:
        await _supersede(driver, batch.superseding, batch.days, zone, rolled)
    if batch.inserted:
        written_meters = {meter_id for meter_id, chain in batch.chains.items() if chain.newest is not None}
        await _evaluate_alarms(session, now=now, zone=zone,
                               states=[state for state in states if state[0] in written_meters], rolled=rolled,
                               suspicious=batch.suspicious, bounds=bounds)
        changed_meters = tuple(sorted(meter_id for meter_id, chain in batch.chains.items() if chain.newest is not None))
        # Every instant the COPY stored has its stamp (and only those: write_chains reads them).
        await emit_event(session, "readings.ingested", ReadingsIngested(
            batch_id, changed_meters, first_read_at=min(batch.stamps), last_read_at=max(batch.stamps)))
    return IngestResult(batch_id, batch.inserted, 0, 0, batch.rejected)


async def _append(
    session: AsyncSession, driver: Any, readings: Sequence[ReadingIn], states: Sequence[Any], zone: tzinfo,
    now: datetime, latest_allowed: datetime, source: str, bounds: Any,
) -> _Batch:
    """The append path's COPY; a batch left not ``appendable`` needs the general path.

    The COPY goes straight into the month's partition (that of the batch's first
    reading): a batch is almost always one month, and routing each row through the
    parent costs PostgreSQL a tenth of the COPY. A batch that spans months is refused by
    the partition's constraint and streamed again into the parent; a month without its
    partition yet (the daily job creates them ahead; a backfill may still need one) gets
    it and the batch is streamed again.
    """
    target = _first_month_partition(readings, zone)
    partitions_ensured = False
    while True:
        batch = _Batch(readings, states, zone, now, latest_allowed, source, bounds)
        try:
            async with driver.transaction():  # a SAVEPOINT inside the caller's transaction
                await driver.copy_to_table(target, source=batch.stream(), columns=COLUMNS, format="text")
        except (asyncpg.CheckViolationError, asyncpg.UndefinedTableError) as error:
            if not batch.appendable:
                return batch
            # A partition's bounds are no named constraint (a CHECK on quality or valve
            # state is): decided by the error's fields, not its (translatable) text.
            bounds_refused = isinstance(error, asyncpg.UndefinedTableError) or error.constraint_name is None
            if target != PARENT and bounds_refused:
                target = PARENT
                continue
            if target == PARENT and bounds_refused and not partitions_ensured:
                await _ensure_partitions_for(session, readings, batch, zone)
                partitions_ensured = True
                continue
            raise
        except asyncpg.UniqueViolationError:
            # A stored reading at an instant after the meter's newest one: only if
            # latest_readings lags readings, which ingest never lets happen.
            batch.appendable, batch.conflicts = False, True
        except asyncpg.PostgresError:
            # The stream gave up (a late or repeated reading): the general path sorts it
            # out. Anything else (a malformed value) is the caller's.
            if batch.appendable:
                raise
        return batch


def _first_month_partition(readings: Sequence[ReadingIn], zone: tzinfo) -> str:
    """The partition of the first reading with an aware ``read_at`` (else the parent)."""
    for reading in readings:
        if reading.read_at.utcoffset() is not None:
            return partition_name(*month_of(reading.read_at, zone))
    return PARENT


async def _ensure_partitions_for(session: AsyncSession, readings: Sequence[ReadingIn], batch: _Batch,
                                 zone: tzinfo) -> None:
    """The partitions the batch's valid readings need (a rejected one needs none: a read
    from 1970 must not create fifty years of months)."""
    starts = _install_starts(list(batch.states.values()), zone)
    instants = [reading.read_at for reading in readings
                if _invalid(reading, reading.meter_id in starts, starts, batch.latest_allowed) is None]
    if instants:
        await ensure_partitions(session, start=min(instants), end=max(instants), tz=zone)


class _Batch:
    """The append path's pass over a batch: validates each reading, carries its meter's
    chain forward and renders its COPY line, as the COPY consumes them.

    It stops (``appendable`` False, and a line PostgreSQL refuses, so the COPY fails on
    the server and the savepoint rolls it back) at the first reading that is not after
    its meter's newest one: only the general path can tell a duplicate from a late
    reading or a better quality.
    """

    _CHUNK = 2000  # lines per COPY data message (~180 kB)

    def __init__(self, readings: Sequence[ReadingIn], states: Sequence[Any], zone: tzinfo, now: datetime,
                 latest_allowed: datetime, source: str, bounds: Any) -> None:
        self.readings = readings
        self.days = LocalDays(zone)
        self.decimals = Decimals()
        # A meter's chain (and install start) is made when its first reading streams:
        # the stream has time to spare while PostgreSQL inserts, the start of a batch
        # has not.
        self.states = {state[0]: state for state in states}
        self.chains: dict[int, MeterChain] = {}
        self.install_starts: dict[int, datetime | None] = {}
        self.installs = _InstallStarts(zone)
        self.latest_allowed = latest_allowed
        self.bounds = bounds
        # source and received_at are the batch's: rendered once.
        self.tail = f"\t{copy_text(source)}\t{now.isoformat()}\n"
        self.inserted = 0
        self.rejected: list[Rejection] = []
        self.suspicious: set[int] = set()
        self.superseding: dict[int, datetime] = {}  # meter -> its newest actual/manual reading
        self.stamps: dict[datetime, str] = {}  # instants rendered for COPY (write_chains reuses them)
        self.appendable = True
        self.conflicts = False  # the general path should merge without trying a COPY

    def _chain(self, meter_id: int) -> MeterChain:
        state = self.states[meter_id]
        chain = self.chains[meter_id] = MeterChain(state, self.days, self.decimals)
        self.install_starts[meter_id] = self.installs[state["install_date"]]
        return chain

    def stream(self) -> AsyncIterator[bytes]:
        return _paused(self._chunks())

    def _chunks(self) -> Iterator[bytes]:
        """COPY data messages of ``_CHUNK`` text lines, one line per reading stored.

        This loop is the append path's cost per reading, so the usual reading takes the shortest way through it: one
        combined test for everything a rejection needs (``_invalid`` then names the
        reason) and the usual step of the register inline (``MeterChain.take`` does the
        rest). A reading's zone is asked for its offset only when it is neither the
        utility's nor UTC (those always have one): ``utcoffset()`` costs more than the
        rest of the test."""
        from backend.readings.alarms.batch import is_suspicious  # see ingest_readings

        chains, install_starts, days, states = self.chains, self.install_starts, self.days, self.states
        zone = days.zone
        latest_allowed = comparable(self.latest_allowed, zone)
        bounds, tail, rejected, suspicious, superseding = (
            self.bounds, self.tail, self.rejected, self.suspicious, self.superseding)
        stamps = self.stamps
        null = "\\N"
        estimated = ReadingQuality.estimated
        zero, total_limit, plain = _ZERO, _TOTAL_LIMIT, PLAIN_TYPES
        places, half_up = _REGISTER_PLACES, ROUND_HALF_UP
        inserted = 0
        lines: list[str] = []
        append, chunk = lines.append, self._CHUNK
        try:
            for index, reading in enumerate(self.readings):
                meter_id, read_at, total = reading.meter_id, reading.read_at, reading.total_m3
                chain = chains.get(meter_id)
                if chain is None and meter_id in states:
                    chain = self._chain(meter_id)
                    if chain.has_latest and chain.day is None:
                        # A newest reading without its rollup day (written around ingest,
                        # e.g. by hand): only the general path rebuilds the meter's days.
                        self.appendable = False
                        yield b"0\n"
                        return
                zone_of_reading = read_at.tzinfo
                if (chain is None or zone_of_reading is None
                        or (zone_of_reading is not zone and zone_of_reading is not UTC and read_at.utcoffset() is None)
                        or read_at > latest_allowed
                        or not isinstance(total, Decimal) or not total.is_finite() or total < zero
                        or total >= total_limit
                        or ((installed := install_starts[meter_id]) is not None and read_at < installed)):
                    code = _invalid(reading, chain is not None, install_starts, self.latest_allowed)
                    assert code is not None
                    rejected.append(_rejection(index, code))
                    continue
                if read_at.fold:
                    read_at = read_at.astimezone(UTC)  # see _validate
                last_at = chain.last_at
                if last_at is not None and read_at <= last_at:
                    self.appendable = False
                    # At or before a stored reading: very likely a re-sent one, so the
                    # general path merges at once instead of trying a COPY first.
                    stored_at = chain.stored_at
                    self.conflicts = stored_at is not None and read_at <= stored_at
                    yield b"0\n"  # one column where eleven are due: the COPY fails on the server
                    return
                total = total.quantize(places, half_up)
                day_end = chain.day_end
                register = chain.register
                last_raw = register.last_raw
                if day_end is not None and read_at <= day_end and last_raw is not None and total >= last_raw:
                    # The usual reading: the same day, the register not lower.
                    register.last_raw = total
                    wraps, register_range = register.wraps, register.range
                    unwrapped = total + register_range * wraps if wraps and register_range is not None else total
                    if register.effective is None or unwrapped > register.effective:
                        register.effective = unwrapped
                    chain.count += 1
                    chain.last_at, chain.last_total = read_at, total
                else:
                    chain.take(read_at, total, days)
                chain.newest = reading
                quality: Any = reading.quality
                valve: Any = reading.valve_state
                battery: Any = reading.battery
                bits = reading.status_bits
                if quality == estimated:
                    chain.estimated = True
                elif chain.estimated:
                    superseding[meter_id] = read_at
                if (bits or valve is not None or battery is not None) and is_suspicious(valve, battery, bits, bounds):
                    suspicious.add(meter_id)
                stamp = stamps.get(read_at)
                if stamp is None:
                    stamp = stamps[read_at] = read_at.isoformat()
                flow: Any = reading.flow_rate
                pressure: Any = reading.pressure
                inserted += 1
                # A value of another type than these columns take is escaped: its column
                # refuses it (the CHECK of an enum, a numeric's syntax), not the line.
                if quality.__class__ not in plain:
                    quality = copy_text(str(quality))
                if valve is not None and valve.__class__ not in plain:
                    valve = copy_text(str(valve))
                if flow is not None and flow.__class__ not in plain:
                    flow = copy_text(str(flow))
                if pressure is not None and pressure.__class__ not in plain:
                    pressure = copy_text(str(pressure))
                if battery is not None and battery.__class__ not in plain:
                    battery = copy_text(str(battery))
                # !s: str() of a Decimal or a StrEnum is a third of what format() costs.
                append(f"{meter_id}\t{stamp}\t{total!s}\t{null if flow is None else flow!s}\t"
                       f"{null if pressure is None else pressure!s}\t{null if valve is None else valve!s}\t"
                       f"{null if battery is None else battery!s}\t{null if bits is None else int(bits)}\t"
                       f"{quality!s}{tail}")
                if len(lines) == chunk:
                    yield "".join(lines).encode()
                    lines.clear()
            if lines:
                yield "".join(lines).encode()
        finally:
            self.inserted = inserted


async def _paused(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks`` as the COPY's async source, each rendered with the cyclic GC paused.
    Each ``yield`` hands a chunk to the connection, which sends it while the next one is
    rendered."""
    while True:
        with cyclic_gc_paused():
            chunk = next(chunks, None)
        if chunk is None:
            return
        yield chunk





def _invalid(reading: ReadingIn, known: bool, install_starts: dict[int, datetime | None],
             latest_allowed: datetime) -> RejectionCode | None:
    """Why ``reading`` can't be stored, or None."""
    read_at, total = reading.read_at, reading.total_m3
    if read_at.tzinfo is None or read_at.utcoffset() is None:
        return RejectionCode.NAIVE_DATETIME
    if not known:
        return RejectionCode.UNKNOWN_METER
    if read_at > latest_allowed:
        return RejectionCode.READ_AT_IN_FUTURE
    if not isinstance(total, Decimal) or not total.is_finite() or total < 0 or total >= _TOTAL_LIMIT:
        return RejectionCode.INVALID_TOTAL
    installed = install_starts[reading.meter_id]
    if installed is not None and read_at < installed:
        return RejectionCode.READ_BEFORE_INSTALL
    return None


async def _ingest_general(
    session: AsyncSession, driver: Any, readings: Sequence[ReadingIn], states: Sequence[Any], zone: tzinfo,
    now: datetime, skew: timedelta, source: str, bounds: Any, batch_id: str, *, conflicts: bool,
) -> IngestResult:
    """Any batch: validated and de-duplicated as a whole, COPYed or (when it hits stored
    readings, or ``conflicts`` says it would) merged."""
    rejected: list[Rejection] = []
    with cyclic_gc_paused():
        kept, batch_duplicates = _validate(readings, _install_starts(states, zone), now + skew, source, now, rejected)
    if not kept:
        return IngestResult(batch_id, 0, 0, batch_duplicates, rejected)
    with cyclic_gc_paused():
        rows = list(kept.values())
        earliest = min(map(_READ_AT, rows))
        latest = max(map(_READ_AT, rows))
    await ensure_partitions(session, start=earliest, end=latest, tz=zone)

    if not conflicts:
        try:
            async with driver.transaction():
                await driver.copy_records_to_table("readings", records=rows, columns=COLUMNS)
        except asyncpg.UniqueViolationError:
            conflicts = True
    if conflicts:
        inserted, replaced, changed = await _merge(driver, rows)
        keys = set(changed)
        written = [row for row in rows if (row[0], row[1]) in keys]
    else:
        inserted, replaced, written = len(rows), 0, rows
    if not (inserted or replaced):
        return IngestResult(batch_id, 0, 0, batch_duplicates + len(rows), rejected)

    days = LocalDays(zone)
    rolled = RolledUp()
    decimals = Decimals()
    chains = {state["meter_id"]: MeterChain(state, days, decimals) for state in states}
    late = await _roll_up_written(driver, written, chains, days, rolled, source=source, received_at=now)
    estimated = sorted({row[0] for row in written if row[8] == ReadingQuality.estimated})
    if estimated:
        await driver.execute(_MARK_ESTIMATED, estimated)
    unrolled = sorted({meter_id for meter_id, _ in late if chains[meter_id].day is None})
    if unrolled:
        # Their stored readings have no rollup days at all: rebuilt from the first one.
        late.extend(tuple(row) for row in await driver.fetch(_FIRST_READINGS, unrolled))
    if late:
        await _refresh_latest(driver, sorted({meter_id for meter_id, _ in late}))
        await _recompute_days(driver, late, days, zone)
        rolled.flagged.update(meter_id for meter_id, _ in late)
    superseding: dict[int, datetime] = {}  # every meter here: this path is the rare one
    for row in written:
        if row[8] != ReadingQuality.estimated:
            current = superseding.get(row[0])
            if current is None or row[1] > current:
                superseding[row[0]] = row[1]
    if superseding:
        await _supersede(driver, superseding, days, zone, rolled)
    from backend.readings.alarms.batch import suspicious_meters

    written_meters = {row[0] for row in written}
    await _evaluate_alarms(session, now=now, zone=zone,
                           states=[state for state in states if state[0] in written_meters], rolled=rolled,
                           suspicious=suspicious_meters(written, bounds), bounds=bounds)
    changed_meters = tuple(sorted({row[0] for row in written}))
    await emit_event(session, "readings.ingested", ReadingsIngested(
        batch_id, changed_meters, first_read_at=min(map(_READ_AT, written)), last_read_at=max(map(_READ_AT, written))))
    duplicates = batch_duplicates + len(rows) - inserted - replaced
    return IngestResult(batch_id, inserted, replaced, duplicates, rejected)


async def _roll_up_written(driver: Any, written: list[tuple[Any, ...]], chains: dict[int, MeterChain],
                           days: LocalDays, rolled: RolledUp, *, source: str,
                           received_at: datetime) -> list[tuple[int, datetime]]:
    """Carry each meter's chain through its written rows when they all come after its
    newest stored reading (and write it); the others are returned, to be recomputed."""
    by_meter: dict[int, list[tuple[Any, ...]]] = {}
    with cyclic_gc_paused():
        for row in written:
            by_meter.setdefault(row[0], []).append(row)
        late: list[tuple[int, datetime]] = []
        appended: list[MeterChain] = []
        for meter_id, rows in by_meter.items():
            rows.sort(key=_READ_AT)
            chain = chains[meter_id]
            if chain.last_at is not None and (rows[0][1] <= chain.last_at or chain.day is None):
                late.extend((meter_id, row[1]) for row in rows)
                continue
            for row in rows:
                chain.take(row[1], row[2], days)
            newest = rows[-1]
            chain.newest = ReadingIn(meter_id, newest[1], newest[2], newest[8], newest[3], newest[4], newest[5],
                                     newest[6], newest[7])
            appended.append(chain)
    await write_chains(driver, appended, rolled, source=source, received_at=received_at)
    return late


_FIRST_READINGS = "SELECT meter_id, min(read_at) FROM readings WHERE meter_id = ANY($1::bigint[]) GROUP BY meter_id"

_MARK_ESTIMATED = "UPDATE latest_readings SET estimated = true WHERE meter_id = ANY($1::bigint[]) AND NOT estimated"

# After superseding, a meter keeps the flag only if it still has an estimate (one after
# its newest actual reading survives).
_REFRESH_ESTIMATED = """
UPDATE latest_readings l SET estimated = EXISTS (
    SELECT FROM readings r WHERE r.meter_id = l.meter_id AND r.quality = 'estimated')
WHERE l.meter_id = ANY($1::bigint[])
"""


async def _supersede(driver: Any, newest: dict[int, datetime], days: LocalDays, zone: tzinfo,
                     rolled: RolledUp) -> None:
    """Delete each meter's estimates older than its newest actual/manual reading
    (``newest``) and recompute the days they were in."""
    deleted = await driver.fetch(_SUPERSEDE, list(newest), list(newest.values()))
    await driver.execute(_REFRESH_ESTIMATED, list(newest))
    if deleted:
        superseded = [(row["meter_id"], row["read_at"]) for row in deleted]
        await _recompute_days(driver, superseded, days, zone)
        rolled.flagged.update(meter_id for meter_id, _ in superseded)


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
    meter_ids = sorted({meter_id for meter_id, _ in changes})
    await driver.fetchval(_LOCK_METERS, meter_ids)  # as ingest does: one writer per meter's chain
    await _refresh_latest(driver, meter_ids)
    await _recompute_days(driver, changes, LocalDays(zone), zone)
    from backend.readings.alarms.service import evaluate_rules

    await evaluate_rules(session, now=now, tz=zone, meter_ids=meter_ids)
    await emit_event(session, "readings.ingested", ReadingsIngested(
        uuid.uuid4().hex, tuple(meter_ids), first_read_at=min(read_at for _, read_at in changes),
        last_read_at=max(read_at for _, read_at in changes)))
    return meter_ids


async def _refresh_latest(driver: Any, meter_ids: list[int]) -> None:
    """Point each meter's ``latest_readings`` row at its newest stored reading, its open
    day first set aside for ``recompute_days`` (which brings the newest day back)."""
    await demote_open_days(driver, meter_ids)
    await driver.execute(_LATEST_REFRESH, meter_ids)


async def _recompute_days(driver: Any, changed: Iterable[tuple[int, datetime]], days: LocalDays, zone: tzinfo) -> None:
    await recompute_days(driver, {(meter_id, days(read_at)) for meter_id, read_at in changed}, zone_name(zone))


# "An actual read later replaces the estimate": a meter's estimated readings at or before
# its newest actual or manual reading of the batch are gone (the partial index on
# estimated readings keeps this to a probe per meter).
_SUPERSEDE = """
DELETE FROM readings r USING unnest($1::bigint[], $2::timestamptz[]) AS k(meter_id, read_at)
WHERE r.quality = 'estimated' AND r.meter_id = k.meter_id AND r.read_at < k.read_at
RETURNING r.meter_id, r.read_at
"""


# The newest stored reading of each meter, or no row when it has none left.
_LATEST_REFRESH = f"""
WITH newest AS (
    SELECT r.* FROM unnest($1::bigint[]) AS m(id)
    CROSS JOIN LATERAL (SELECT * FROM readings r WHERE r.meter_id = m.id ORDER BY r.read_at DESC LIMIT 1) r
), gone AS (
    DELETE FROM latest_readings l WHERE l.meter_id = ANY($1::bigint[])
      AND NOT EXISTS (SELECT FROM newest n WHERE n.meter_id = l.meter_id)
)
INSERT INTO latest_readings AS l ({_COLUMN_LIST}, estimated)
SELECT {_COLUMN_LIST}, EXISTS (SELECT FROM readings e WHERE e.meter_id = newest.meter_id AND e.quality = 'estimated')
FROM newest
ON CONFLICT (meter_id) DO UPDATE SET read_at = EXCLUDED.read_at, {_UPDATED}, estimated = EXCLUDED.estimated
"""


async def _evaluate_alarms(
    session: AsyncSession, *, now: datetime, zone: tzinfo, states: Sequence[Any], rolled: RolledUp,
    suspicious: set[int], bounds: Any,
) -> None:
    """The per-batch alarm rules (reverse flow, high use, zero use, battery, valve …) for
    the meters of this batch where one could change; silent meters are found by the
    periodic job."""
    from backend.readings.alarms.batch import candidates_from_facts, evaluate_after_batch, zero_use_candidates

    today = now.astimezone(zone).date()
    with cyclic_gc_paused():
        candidates = candidates_from_facts(states, today=today, day_usage=rolled.day_usage, bounds=bounds)
    candidates |= rolled.flagged | suspicious
    candidates |= await zero_use_candidates(session, idle=rolled.idle, today=today, bounds=bounds,
                                            already=candidates)
    await evaluate_after_batch(session, now=now, tz=zone, candidates=candidates)


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
        code = _invalid(reading, reading.meter_id in install_starts, install_starts, latest_allowed)
        if code is not None:
            rejected.append(_rejection(index, code))
            continue
        # In UTC: Python compares times of one zone by wall clock, fold ignored (the two
        # 02:30s of a DST autumn night would collide as keys), and never finds a local
        # time of that hour equal to the same instant in another zone (the merge's keys
        # come back in UTC). In UTC every instant is itself.
        read_at = reading.read_at.astimezone(UTC)
        # Stored to the register's 4 places here, so the rollup walks what is stored.
        total = reading.total_m3.quantize(_REGISTER_PLACES, ROUND_HALF_UP)
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


_LATEST = text(f"SELECT {_COLUMN_LIST} FROM latest_readings WHERE meter_id = ANY(:meter_ids) ORDER BY meter_id")


async def latest_readings(session: AsyncSession, *, meter_ids: Sequence[int]) -> dict[int, Any]:
    """The newest stored reading of each of ``meter_ids`` that has one (rows by meter id)."""
    result = await session.execute(_LATEST, {"meter_ids": list(meter_ids)})
    return {row.meter_id: row for row in result.all()}
