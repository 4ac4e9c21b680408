"""The daily usage rollup, maintained by ingest: the ``daily_usage`` view.

One row per meter and day of the utility's calendar: the day's first and last reading,
how many readings it had, and the **effective register** at its last reading — the total
unwrapped past rollovers (each wrap adds 10^register_digits) and held at its high-water
mark, so water that flowed back is never counted twice. A day's usage is the growth of
the effective register since the previous day's last reading, times the meter's
multiplier; on a meter's first day, since its first reading.

Where the rows live: the day of a meter's newest reading (its **open day**) is on the
meter's ``latest_readings`` row, which every batch rewrites anyway; the days before it
are in ``daily_usage_closed``, written once when the meter's first reading of a later day
arrives. The ``daily_usage`` view is both (migration 0009); readers use only the view.

The register is walked **reading by reading** (usage.py's rule): a drop of more than half
the register's range between two consecutive readings is a wrap, any other drop is
reverse flow (flagged, no usage until the register climbs back past its high-water
mark). ``usage.usage_between`` walks the same readings from the same stored state, so a
sum of whole days equals it exactly.

Two ways in, the same result:

- **append** (a meter's new readings all come after its newest stored one: time-ordered
  ingest, nearly always): a :class:`MeterChain` goes on from the meter's open day through
  the new readings in Python; :func:`write_chains` writes the days it closed and the new
  open day with the newest reading, one row per meter;
- **recompute** (a late or replaced reading, a correction, superseded estimates): one
  statement (:data:`_RECOMPUTE`) walks the meter's stored readings from the first
  touched day on, from the state of the day before, and rewrites every later day
  (:func:`recompute_days` first moves the open day into ``daily_usage_closed`` and
  afterwards moves the newest day back).
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from backend.alarms.models import AlarmSubjectKind
from backend.alarms.service import live_alarms_from
from backend.readings.models import ReadingQuality, ValveState
from backend.readings.partitions import as_zone

_DAY_COLUMNS = (
    "meter_id, day, first_at, first_total, last_at, last_total, effective_total, opening_effective, usage_m3,"
    " reading_count, register_wraps, rollover, reverse_flow"
)
_CHANGING = [name.strip() for name in _DAY_COLUMNS.split(",")][2:]
# Rows that come out the same are left alone (a re-chain touches many unchanged days).
_UPSERT = (
    "ON CONFLICT (meter_id, day) DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in _CHANGING)
    + " WHERE (" + ", ".join(f"u.{c}" for c in _CHANGING) + ") IS DISTINCT FROM ("
    + ", ".join(f"EXCLUDED.{c}" for c in _CHANGING) + ")"
)

# $1/$2: per meter, the first day to rewrite; $3: the zone; $4: the earliest of those days'
# starts (a plain parameter, so the planner prunes the partitions before it).
_RECOMPUTE = f"""
WITH bounds AS (
    SELECT b.meter_id, b.from_day, (b.from_day::timestamp AT TIME ZONE $3) AS from_at,
           power(10::numeric, mm.register_digits) AS register_range, coalesce(mm.multiplier, 1) AS multiplier
    FROM unnest($1::bigint[], $2::date[]) AS b(meter_id, from_day)
    JOIN meters m ON m.id = b.meter_id
    LEFT JOIN meter_models mm ON mm.id = m.model_id
), seed AS (
    SELECT b.meter_id, p.last_at, p.last_total, p.effective_total, p.register_wraps
    FROM bounds b CROSS JOIN LATERAL (
        SELECT last_at, last_total, effective_total, register_wraps FROM daily_usage_closed p
        WHERE p.meter_id = b.meter_id AND p.day < b.from_day ORDER BY p.day DESC LIMIT 1
    ) p
), points AS (
    SELECT meter_id, last_at AS read_at, last_total AS raw, true AS is_seed FROM seed
    UNION ALL
    SELECT r.meter_id, r.read_at, r.total_m3, false
    FROM bounds b JOIN readings r ON r.meter_id = b.meter_id AND r.read_at > b.from_at
    WHERE r.read_at > $4
), flagged AS (
    SELECT p.*, b.register_range, b.multiplier, s.register_wraps AS seed_wraps, s.effective_total AS seed_effective,
           coalesce(p.raw - lag(p.raw) OVER w < -b.register_range / 2, false) AS wrapped,
           coalesce(p.raw - lag(p.raw) OVER w < 0, false)
               AND NOT coalesce(p.raw - lag(p.raw) OVER w < -b.register_range / 2, false) AS reversed
    FROM points p JOIN bounds b USING (meter_id) LEFT JOIN seed s USING (meter_id)
    WINDOW w AS (PARTITION BY p.meter_id ORDER BY p.read_at)
), unwrapped AS (
    SELECT *, raw + coalesce(register_range, 0) * (coalesce(seed_wraps, 0) + count(*) FILTER (WHERE wrapped)
               OVER (PARTITION BY meter_id ORDER BY read_at)) AS unwrapped,
           coalesce(seed_wraps, 0) + count(*) FILTER (WHERE wrapped) OVER (PARTITION BY meter_id ORDER BY read_at)
               AS wraps
    FROM flagged
), walked AS (
    SELECT *, greatest(seed_effective, max(unwrapped) OVER (PARTITION BY meter_id ORDER BY read_at)) AS effective,
           ((read_at - interval '1 microsecond') AT TIME ZONE $3)::date AS day
    FROM unwrapped
), per_day AS (
    SELECT meter_id, day, min(read_at) AS first_at, (array_agg(raw ORDER BY read_at))[1] AS first_total,
           max(read_at) AS last_at, (array_agg(raw ORDER BY read_at DESC))[1] AS last_total,
           max(effective) AS effective_total, max(wraps) AS register_wraps,
           (array_agg(unwrapped ORDER BY read_at))[1] AS first_unwrapped, count(*)::int AS reading_count,
           bool_or(wrapped) AS rollover, bool_or(reversed) AS reverse_flow,
           min(seed_effective) AS seed_effective, min(multiplier) AS multiplier
    FROM walked WHERE NOT is_seed GROUP BY meter_id, day
), chained AS (
    SELECT p.*, coalesce(lag(p.effective_total) OVER (PARTITION BY p.meter_id ORDER BY p.day), p.seed_effective,
                         p.first_unwrapped) AS opening
    FROM per_day p
), written AS (
    INSERT INTO daily_usage_closed AS u ({_DAY_COLUMNS})
    SELECT meter_id, day, first_at, first_total, last_at, last_total, effective_total, opening,
           round((effective_total - opening) * multiplier, 4), reading_count, register_wraps, rollover, reverse_flow
    FROM chained
    {_UPSERT}
)
DELETE FROM daily_usage_closed u USING bounds b
WHERE u.meter_id = b.meter_id AND u.day >= b.from_day
  AND NOT EXISTS (SELECT FROM per_day p WHERE p.meter_id = u.meter_id AND p.day = u.day)
"""

DayKey = tuple[int, date]


class LocalDays:
    """Maps an instant to the utility's day it closes: a day is ``(00:00, 24:00]``, so a
    reading at exactly midnight is the previous day's last (a meter's daily frozen
    reading, CJ/T 188 日冻结, is taken at 00:00 for the day before), which is also how
    ``usage_between``'s ``(start, end]`` windows split.

    Cached per 15-minute slot ``(k·900 s, (k+1)·900 s]``: every zone offset (and every DST
    change) falls on a quarter hour, so one slot is one day."""

    __slots__ = ("_ends", "_slots", "_zone")

    def __init__(self, zone: tzinfo) -> None:
        self._zone = zone
        self._slots: dict[int, date] = {}
        self._ends: dict[date, datetime] = {}

    @property
    def zone(self) -> tzinfo:
        return self._zone

    def end(self, day: date) -> datetime:
        """The last instant of ``day`` (its closing midnight), as :func:`comparable`."""
        end = self._ends.get(day)
        if end is None:
            end = self._ends[day] = comparable(day_end(day, self._zone), self._zone)
        return end

    def __call__(self, instant: datetime) -> date:
        if instant.tzinfo is self._zone:  # already local (the acquisition worker's readings): no offset lookups
            if instant.hour or instant.minute or instant.second or instant.microsecond:
                return instant.date()
            return instant.date() - _ONE_DAY
        slot = -int(-instant.timestamp() // 900)
        day = self._slots.get(slot)
        if day is None:
            day = self._slots[slot] = (instant - _JUST_BEFORE).astimezone(self._zone).date()
        return day


def comparable(instant: datetime, zone: tzinfo) -> datetime:
    """``instant`` in ``zone`` when its wall time there is unambiguous, else in UTC.

    Python compares two datetimes of the same tzinfo by wall clock (fold ignored), which
    is much cheaper than converting both; the per-reading comparisons of ingest meet
    readings in the utility's zone. An unambiguous wall time orders correctly against
    any reading of the zone with fold 0 (ingest turns fold 1 into UTC); an ambiguous
    one (a DST night) stays in UTC, compared as the instant it is."""
    local = instant.astimezone(zone)
    if local.replace(fold=1 - local.fold).utcoffset() == local.utcoffset():
        return local
    return instant.astimezone(UTC)


_JUST_BEFORE = timedelta(microseconds=1)
_ONE_DAY = timedelta(days=1)


def _first_days(keys: Iterable[DayKey]) -> dict[int, date]:
    first: dict[int, date] = {}
    for meter_id, day in keys:
        current = first.get(meter_id)
        if current is None or day < current:
            first[meter_id] = day
    return first


_PLACES = Decimal("0.0001")


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the in-memory pass over a batch.

    The pass allocates ~2 acyclic tuples per reading; with a 100k batch (and the caller's
    own objects) alive, the collections those allocations trigger cost twice the pass
    itself (measured: 0.26 s -> 0.09 s per 100k). Nothing cyclic is created meanwhile,
    and the pass never awaits, so no other task runs while it is paused.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def is_rollover(previous: Decimal, total: Decimal, register_digits: int | None) -> bool:
    """The rule's test for one step, as :class:`_Register` applies it: a drop of more than
    half the register's range (10^register_digits) is the register wrapping."""
    return register_digits is not None and previous - total > Decimal(10) ** register_digits / 2


class _Register:
    """Walks one meter's register through readings in time order: unwrapping rollovers,
    holding the high-water mark, flagging reverse flow (the rule of the module docstring)."""

    __slots__ = ("effective", "half_range", "last_raw", "range", "reversed", "wrapped", "wraps")

    def __init__(self, register_range: Decimal | None, last_raw: Decimal | None, wraps: int,
                 effective: Decimal | None) -> None:
        self.range = register_range
        self.half_range = register_range / 2 if register_range is not None else None
        self.last_raw = last_raw
        self.wraps = wraps
        self.effective = effective
        self.wrapped = self.reversed = False

    def step(self, raw: Decimal) -> Decimal:
        """Take the next reading; returns its unwrapped value."""
        if self.last_raw is not None:
            change = raw - self.last_raw
            if change < 0:
                if self.half_range is not None and change < -self.half_range:
                    self.wraps += 1
                    self.wrapped = True
                else:
                    self.reversed = True
        self.last_raw = raw
        unwrapped = raw + self.range * self.wraps if self.range is not None and self.wraps else raw
        if self.effective is None or unwrapped > self.effective:
            self.effective = unwrapped
        return unwrapped


@dataclass(slots=True)
class RolledUp:
    """What a roll-up saw, for the per-batch alarm pre-filter: the meters whose days were
    recomputed or flagged (rollover, reverse flow), each other meter's largest usage
    among the days it touched, and the meters whose newest day is at zero so far."""

    flagged: set[int] = field(default_factory=set)
    day_usage: dict[int, Decimal] = field(default_factory=dict)
    idle: set[int] = field(default_factory=set)


class Decimals(dict[str, Decimal]):
    """``Decimal`` of a text value, cached: a batch's meters share a few models, so their
    register ranges and multipliers are a few distinct values."""

    def __missing__(self, key: str) -> Decimal:
        value = self[key] = Decimal(key)
        return value


def _stamp(value: datetime | str, stamps: dict[datetime, str]) -> str:
    """A timestamp for a text line: state read back as text passes through as it came,
    and an instant the batch's COPY already rendered is looked up (``isoformat()`` of an
    aware datetime costs more than the rest of a line)."""
    if isinstance(value, str):
        return value
    stamp = stamps.get(value)
    return value.isoformat() if stamp is None else stamp


_NO_STAMPS: dict[datetime, str] = {}

# Ingest's state of each meter of a batch (service.ingest_readings runs it once the
# meters are locked): its register and multiplier, its open day from latest_readings
# (NULLs when it has no reading), then install day and the alarm pre-filter's facts
# (alarms/batch.py). MeterChain takes the first sixteen columns by position (reading
# 20k records by name costs four times as much). Numerics come as text: decoding 20k rows
# of seven numerics into Decimals would cost more than the statement; MeterChain makes
# Decimals of the three it computes with. first_at only passes through to a COPY line, as
# ISO text in UTC (to_char: ``::text`` would follow the session's DateStyle, whose zone
# abbreviations COPY may read back as another zone).
BATCH_STATE = f"""
SELECT m.id AS meter_id, power(10::numeric, mm.register_digits)::text AS register_range,
       coalesce(mm.multiplier, 1)::text AS multiplier, l.meter_id IS NOT NULL AS has_latest, l.read_at,
       l.total_m3::text, l.day, to_char(l.first_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       l.first_total::text, l.effective_total::text,
       l.opening_effective::text, l.reading_count, l.register_wraps, l.rollover, l.reverse_flow, l.estimated,
       m.install_date, b.day AS baseline_day, b.average_m3::text AS baseline_m3,
       EXISTS (SELECT FROM {live_alarms_from(AlarmSubjectKind.meter)} AND a.subject_id = m.id) AS alarm_live
FROM meters m
LEFT JOIN meter_models mm ON mm.id = m.model_id
LEFT JOIN latest_readings l ON l.meter_id = m.id
LEFT JOIN meter_usage_baselines b ON b.meter_id = m.id
WHERE m.id = ANY($1::bigint[])
"""


class MeterChain:
    """One meter's rollup going forward through new readings in time order: the open day
    continues until a reading of a later day closes it (the rule of the module docstring,
    as :class:`_Register` walks it).

    ``newest`` is the newest reading taken, set by the caller (anything with the
    attributes of ``service.ReadingIn``: its flow, pressure, valve, battery, status bits
    and quality go on ``latest_readings``), ``closed`` the days it closed on the way, as
    COPY lines for ``daily_usage_closed``.
    """

    __slots__ = (
        "closed", "count", "day", "day_end", "estimated", "first_at", "first_total", "has_latest", "last_at",
        "last_total", "max_usage", "meter_id", "multiplier", "newest", "opening", "register", "stored_at", "unusual",
        "usage",
    )

    def __init__(self, state: Any, days: LocalDays, decimals: Decimals) -> None:
        """``state``: the meter's :data:`BATCH_STATE` row."""
        (meter_id, range_text, multiplier_text, has_latest, read_at, total_text, day, first_at, first_total,
         effective_text, opening_text, count, wraps, rollover, reverse_flow, estimated) = state[:16]
        self.meter_id: int = meter_id
        self.multiplier: Decimal = decimals[multiplier_text]
        self.has_latest: bool = has_latest
        self.estimated: bool = bool(estimated)
        self.newest: Any = None
        self.closed: list[str] = []
        self.max_usage: Decimal | None = None  # the largest usage among the days written
        self.usage: Decimal | None = None  # the usage of the day written last
        self.unusual = False  # a day written with a rollover or reverse flow
        self.day: date | None = day
        self.last_at: datetime | None = read_at
        self.stored_at = read_at  # the meter's newest stored reading
        register_range = None if range_text is None else decimals[range_text]
        self.first_at: datetime | str | None = None
        self.first_total: Decimal | str | None = None
        self.opening: Decimal | None = None
        self.last_total: Decimal | None = None
        self.count = 0
        if day is None:
            self.day_end: datetime | None = None
            self.register = _Register(register_range, None, 0, None)
        else:
            self.day_end = days.end(day)
            last_total = self.last_total = Decimal(total_text)
            self.register = _Register(register_range, last_total, wraps, Decimal(effective_text))
            self.register.wrapped, self.register.reversed = rollover, reverse_flow
            self.first_at, self.first_total = first_at, first_total
            self.opening = Decimal(opening_text)
            self.count = count

    def take(self, read_at: datetime, total: Decimal, days: LocalDays) -> None:
        """The next reading (strictly after the last one taken)."""
        day_end = self.day_end
        if day_end is None or read_at > day_end:
            if self.day is not None:
                self.closed.append(f"{self.line(_NO_STAMPS)}\n")
            day = days(read_at)
            self.day, self.day_end = day, days.end(day)
            register = self.register
            register.wrapped = register.reversed = False
            previous = register.effective
            unwrapped = register.step(total)
            self.opening = previous if previous is not None else unwrapped
            self.first_at, self.first_total = read_at, total
            self.count = 1
        else:
            self.register.step(total)
            self.count += 1
        self.last_at, self.last_total = read_at, total

    def line(self, stamps: dict[datetime, str]) -> str:
        """The day so far as one tab-separated line of the ``daily_usage`` columns
        (``meter_id, day, first_at, first_total, last_at, last_total, effective_total,
        opening_effective, usage_m3, reading_count, register_wraps, rollover,
        reverse_flow``), noting its usage and flags for the alarm pre-filter."""
        register = self.register
        effective, opening, last_at, first_at = register.effective, self.opening, self.last_at, self.first_at
        assert effective is not None and opening is not None and last_at is not None and first_at is not None
        usage = self.usage = ((effective - opening) * self.multiplier).quantize(_PLACES, ROUND_HALF_UP)
        if self.max_usage is None or usage > self.max_usage:
            self.max_usage = usage
        if register.wrapped or register.reversed:
            self.unusual = True
        return (f"{self.meter_id}\t{self.day!s}\t{_stamp(first_at, stamps)}\t{self.first_total!s}\t"
                f"{_stamp(last_at, stamps)}\t{self.last_total!s}\t{effective!s}\t{opening!s}\t{usage!s}\t"
                f"{self.count}\t{register.wraps}\t{register.wrapped!s}\t{register.reversed!s}")


# What a batch writes per meter travels as COPY text lines (tab-separated, ``\N`` for
# NULL), parsed by PostgreSQL in C: the closed days straight into daily_usage_closed, the
# open days into a temp table that one UPDATE (a hash join) applies to latest_readings.
# Typed parameter arrays of 20k elements cost several times more to encode and unnest.
_OPEN_DAY_FIELDS = (
    "meter_id, day, first_at, first_total, read_at, total_m3, effective_total, opening_effective, usage_m3,"
    " reading_count, register_wraps, rollover, reverse_flow, flow_rate, pressure, valve_state, battery, status_bits,"
    " quality, estimated"
)
_OPEN_DAYS_TABLE = """
CREATE TEMP TABLE IF NOT EXISTS ingest_open_days (
    meter_id bigint, day date, first_at timestamptz, first_total numeric, read_at timestamptz, total_m3 numeric,
    effective_total numeric, opening_effective numeric, usage_m3 numeric, reading_count int, register_wraps int,
    rollover bool, reverse_flow bool, flow_rate numeric, pressure numeric, valve_state text, battery numeric,
    status_bits int, quality text, estimated bool
) ON COMMIT DELETE ROWS
"""
_LATEST_COLUMNS = (
    "read_at, total_m3, flow_rate, pressure, valve_state, battery, status_bits, quality, day, first_at, first_total,"
    " effective_total, opening_effective, usage_m3, reading_count, register_wraps, rollover, reverse_flow, estimated"
)
_LATEST_SET = ", ".join(f"{name.strip()} = o.{name.strip()}" for name in _LATEST_COLUMNS.split(","))
# A plain UPDATE where the row exists (cheaper than ON CONFLICT, and HOT: see models).
_UPDATE_OPEN_DAYS = f"""
UPDATE latest_readings l SET {_LATEST_SET}, source = $1, received_at = $2
FROM ingest_open_days o WHERE l.meter_id = o.meter_id
"""
_INSERT_OPEN_DAYS = f"""
INSERT INTO latest_readings AS l (meter_id, {_LATEST_COLUMNS}, source, received_at)
SELECT meter_id, {_LATEST_COLUMNS}, $1, $2 FROM ingest_open_days o
WHERE NOT EXISTS (SELECT FROM latest_readings x WHERE x.meter_id = o.meter_id)
"""


# Values a COPY line takes as they are (their text has no tab, newline or backslash);
# anything else is escaped, so its column refuses it rather than the line breaking.
PLAIN_TYPES = frozenset([Decimal, int, float, ValveState, ReadingQuality])


def copy_text(value: str) -> str:
    """``value`` as a field of COPY's text format."""
    if "\x00" in value:
        raise ValueError("a COPY text field cannot contain NUL")
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _field(value: Any) -> Any:
    if value is None:
        return "\\N"
    return value if value.__class__ in PLAIN_TYPES else copy_text(str(value))


def _bits(value: Any) -> Any:
    return "\\N" if value is None else int(value)  # a bool is a number here


async def write_chains(driver: Any, chains: Iterable[MeterChain], rolled: RolledUp, *, source: str,
                       received_at: datetime, stamps: dict[datetime, str] | None = None) -> None:
    """Write what the chains went through: the days they closed, and each meter's open
    day with its newest reading (``chain.newest``) on ``latest_readings``. ``stamps``:
    instants already rendered for a COPY line, by instant."""
    taken = [chain for chain in chains if chain.newest is not None]
    if not taken:
        return
    closed = [line for chain in taken for line in chain.closed]
    if closed:
        await driver.copy_to_table("daily_usage_closed", source=_copy_source(closed), format="text",
                                   columns=[name.strip() for name in _DAY_COLUMNS.split(",")])
    # Emptied at commit; an earlier batch of this transaction may have left rows.
    await driver.execute(f"{_OPEN_DAYS_TABLE}; DELETE FROM ingest_open_days")
    await driver.copy_to_table("ingest_open_days", source=_open_day_lines(taken, rolled, stamps or _NO_STAMPS),
                               format="text")
    await driver.execute(_UPDATE_OPEN_DAYS, source, received_at)
    if not all(chain.has_latest for chain in taken):
        await driver.execute(_INSERT_OPEN_DAYS, source, received_at)


async def _open_day_lines(chains: list[MeterChain], rolled: RolledUp,
                          stamps: dict[datetime, str]) -> AsyncIterator[bytes]:
    """Each chain's open day and newest reading as COPY data for ``ingest_open_days``,
    rendered a chunk at a time while the connection sends the one before; notes each
    meter's usage, flags and an open day at zero for the alarm pre-filter on the way."""
    day_usage, flagged, idle = rolled.day_usage, rolled.flagged, rolled.idle
    for start in range(0, len(chains), 2000):
        lines: list[str] = []
        with cyclic_gc_paused():  # a few small objects per meter, none cyclic
            for chain in chains[start:start + 2000]:
                reading = chain.newest
                lines.append(
                    f"{chain.line(stamps)}\t{_field(reading.flow_rate)!s}\t{_field(reading.pressure)!s}\t"
                    f"{_field(reading.valve_state)!s}\t{_field(reading.battery)!s}\t{_bits(reading.status_bits)}\t"
                    f"{_field(reading.quality)!s}\t{chain.estimated!s}\n"
                )
                assert chain.max_usage is not None
                day_usage[chain.meter_id] = chain.max_usage
                if not chain.usage:  # the open day, just rendered
                    idle.add(chain.meter_id)
                if chain.unusual:
                    flagged.add(chain.meter_id)
            chunk = "".join(lines).encode()
        yield chunk


async def _copy_source(lines: list[str]) -> AsyncIterator[bytes]:
    """``lines`` (each ending in a newline) as COPY data, ~1 MB per message."""
    for start in range(0, len(lines), 5000):
        yield "".join(lines[start:start + 5000]).encode()


# recompute_days works on daily_usage_closed alone: the meters' open days go there first
# and the newest day of each comes back afterwards.
_DEMOTE_OPEN_DAYS = f"""
WITH moved AS (
    INSERT INTO daily_usage_closed AS u ({_DAY_COLUMNS})
    SELECT meter_id, day, first_at, first_total, read_at, total_m3, effective_total, opening_effective, usage_m3,
           reading_count, register_wraps, rollover, reverse_flow
    FROM latest_readings WHERE meter_id = ANY($1::bigint[]) AND day IS NOT NULL
    {_UPSERT}
)
UPDATE latest_readings SET day = NULL, first_at = NULL, first_total = NULL, effective_total = NULL,
    opening_effective = NULL, usage_m3 = NULL, reading_count = NULL, register_wraps = 0, rollover = false,
    reverse_flow = false
WHERE meter_id = ANY($1::bigint[]) AND day IS NOT NULL
"""

_PROMOTE_NEWEST_DAYS = """
WITH newest AS (
    DELETE FROM daily_usage_closed c
    USING (
        SELECT c.meter_id, max(c.day) AS day FROM daily_usage_closed c
        WHERE c.meter_id = ANY($1::bigint[])
          AND EXISTS (SELECT FROM latest_readings l WHERE l.meter_id = c.meter_id)
        GROUP BY c.meter_id
    ) n
    WHERE c.meter_id = n.meter_id AND c.day = n.day
    RETURNING c.*
)
UPDATE latest_readings l SET day = n.day, first_at = n.first_at, first_total = n.first_total,
    effective_total = n.effective_total, opening_effective = n.opening_effective, usage_m3 = n.usage_m3,
    reading_count = n.reading_count, register_wraps = n.register_wraps, rollover = n.rollover,
    reverse_flow = n.reverse_flow
FROM newest n WHERE l.meter_id = n.meter_id
"""


async def demote_open_days(driver: Any, meter_ids: list[int]) -> None:
    """Move the meters' open days into ``daily_usage_closed`` (a no-op for a meter whose
    open day is there already)."""
    await driver.execute(_DEMOTE_OPEN_DAYS, meter_ids)


async def recompute_days(driver: Any, keys: Iterable[DayKey], tz_name: str) -> None:
    """Walk the stored readings of each meter again from the first of its given days on,
    rewriting that day and every later one; days left without readings lose their row.
    Each meter's ``latest_readings`` row must already name its newest reading (or be gone
    when it has none): its open day is the newest day this leaves."""
    first_days = _first_days(keys)
    if not first_days:
        return
    meter_ids = list(first_days)
    earliest = day_start(min(first_days.values()), tz_name)
    await demote_open_days(driver, meter_ids)
    await driver.execute(_RECOMPUTE, meter_ids, list(first_days.values()), tz_name, earliest)
    await driver.execute(_PROMOTE_NEWEST_DAYS, meter_ids)


def zone_name(zone: tzinfo) -> str:
    """The IANA name PostgreSQL's ``AT TIME ZONE`` needs."""
    key = getattr(zone, "key", None)
    if not key:
        raise ValueError(f"time zone {zone!r} has no IANA name")
    return str(key)


def day_start(day: date, zone: str | tzinfo) -> datetime:
    """The first instant of ``day`` in the utility's zone."""
    return datetime(day.year, day.month, day.day, tzinfo=as_zone(zone))


def day_end(day: date, zone: str | tzinfo) -> datetime:
    return day_start(day + timedelta(days=1), zone)


__all__ = [
    "BATCH_STATE",
    "PLAIN_TYPES",
    "Decimals",
    "LocalDays",
    "MeterChain",
    "RolledUp",
    "comparable",
    "copy_text",
    "day_end",
    "day_start",
    "demote_open_days",
    "recompute_days",
    "write_chains",
    "zone_name",
]
