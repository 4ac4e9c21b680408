"""The daily usage rollup (``daily_usage``), maintained by ingest.

One row per meter and day of the utility's calendar: the day's first and last reading,
how many readings it had, and the **effective register** at its last reading — the total
unwrapped past rollovers (each wrap adds 10^register_digits) and held at its high-water
mark, so water that flowed back is never counted twice. A day's usage is the growth of
the effective register since the previous day's last reading, times the meter's
multiplier; on a meter's first day, since its first reading.

The chain is computed over each day's first and last readings (not every hourly reading):
a wrap is a drop of more than half the register's range between two such points, any
other drop is reverse flow (flagged, no usage). ``usage.usage_between`` applies the same
rule to every raw reading; the two agree except inside a day with reverse flow, where
the rollup does not see an intra-day peak (docs/readings.md, "Usage").

Two ways in, one statement (:data:`_CHAIN`):

- **append** (ingest's fast path: every row was new): the batch's per-day aggregates,
  computed in Python from rows already in memory, are merged into the stored days;
- **recompute** (a merge with replacements, a correction, superseded estimates): the
  touched days are aggregated again from ``readings``.

Either way every stored day after the first touched day of a meter is re-chained (a
late reading or a correction shifts the usage of the days after it), which for
time-ordered ingest is nothing at all.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from operator import itemgetter
from typing import Any
from zoneinfo import ZoneInfo

# The chain statement (the recompute way). $1..$7: whole-day aggregates of the touched
# days; $8/$9: per meter, the first day to re-chain from.
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

_CHAIN = f"""
WITH delta AS (
    SELECT * FROM unnest($1::bigint[], $2::date[], $3::timestamptz[], $4::numeric[], $5::timestamptz[],
                         $6::numeric[], $7::int[])
        AS d(meter_id, day, first_at, first_total, last_at, last_total, reading_count)
), bounds AS (
    SELECT b.meter_id, b.from_day, power(10::numeric, mm.register_digits) AS register_range,
           coalesce(mm.multiplier, 1) AS multiplier
    FROM unnest($8::bigint[], $9::date[]) AS b(meter_id, from_day)
    JOIN meters m ON m.id = b.meter_id
    LEFT JOIN meter_models mm ON mm.id = m.model_id
), touched AS (
    SELECT * FROM delta
), later AS (
    SELECT s.meter_id, s.day, s.first_at, s.first_total, s.last_at, s.last_total, s.reading_count
    FROM bounds b JOIN daily_usage s ON s.meter_id = b.meter_id AND s.day >= b.from_day
    WHERE NOT EXISTS (SELECT FROM delta d WHERE d.meter_id = s.meter_id AND d.day = s.day)
), days AS (
    SELECT * FROM touched UNION ALL SELECT * FROM later
), seed AS (
    SELECT b.meter_id, p.last_total, p.effective_total, p.register_wraps
    FROM bounds b CROSS JOIN LATERAL (
        SELECT last_total, effective_total, register_wraps FROM daily_usage p
        WHERE p.meter_id = b.meter_id AND p.day < b.from_day ORDER BY p.day DESC LIMIT 1
    ) p
), points AS (
    SELECT meter_id, NULL::date AS day, 0 AS ord, last_total AS raw FROM seed
    UNION ALL SELECT meter_id, day, 1, first_total FROM days
    UNION ALL SELECT meter_id, day, 2, last_total FROM days
), steps AS (
    SELECT p.meter_id, p.day, p.ord, p.raw, b.register_range,
           p.raw - lag(p.raw) OVER (PARTITION BY p.meter_id ORDER BY p.day NULLS FIRST, p.ord) AS step
    FROM points p JOIN bounds b USING (meter_id)
), flagged AS (
    SELECT *, coalesce(step < -register_range / 2, false) AS wrapped,
           coalesce(step < 0 AND NOT step < -register_range / 2, step < 0 AND register_range IS NULL, false) AS reversed
    FROM steps
), unwrapped AS (
    SELECT f.meter_id, f.day, f.ord, f.wrapped, f.reversed,
           coalesce(s.register_wraps, 0) + count(*) FILTER (WHERE f.wrapped)
               OVER (PARTITION BY f.meter_id ORDER BY f.day NULLS FIRST, f.ord) AS wraps,
           f.raw + coalesce(f.register_range, 0) * (coalesce(s.register_wraps, 0) + count(*) FILTER (WHERE f.wrapped)
               OVER (PARTITION BY f.meter_id ORDER BY f.day NULLS FIRST, f.ord)) AS unwrapped,
           s.effective_total AS seed_effective
    FROM flagged f LEFT JOIN seed s USING (meter_id)
), effective AS (
    SELECT *, greatest(seed_effective, max(unwrapped) OVER (PARTITION BY meter_id ORDER BY day NULLS FIRST, ord))
           AS effective
    FROM unwrapped
), per_day AS (
    SELECT meter_id, day,
           max(effective) FILTER (WHERE ord = 2) AS effective_total,
           max(wraps) FILTER (WHERE ord = 2) AS register_wraps,
           min(unwrapped) FILTER (WHERE ord = 1) AS first_unwrapped,
           bool_or(wrapped) AS rollover, bool_or(reversed) AS reverse_flow,
           min(seed_effective) AS seed_effective
    FROM effective WHERE day IS NOT NULL GROUP BY meter_id, day
), chained AS (
    SELECT p.*, coalesce(lag(p.effective_total) OVER (PARTITION BY p.meter_id ORDER BY p.day),
                         p.seed_effective, p.first_unwrapped) AS baseline
    FROM per_day p
)
INSERT INTO daily_usage AS u ({_DAY_COLUMNS})
SELECT d.meter_id, d.day, d.first_at, d.first_total, d.last_at, d.last_total, c.effective_total, c.baseline,
       round((c.effective_total - c.baseline) * b.multiplier, 4), d.reading_count, c.register_wraps,
       c.rollover, c.reverse_flow
FROM days d JOIN chained c USING (meter_id, day) JOIN bounds b USING (meter_id)
{_UPSERT}
"""

# Whole-day aggregates of stored readings for (meter, day) pairs: the recompute way in.
_AGGREGATE_DAYS = """
SELECT r.meter_id, k.day, min(r.read_at) AS first_at, (array_agg(r.total_m3 ORDER BY r.read_at))[1] AS first_total,
       max(r.read_at) AS last_at, (array_agg(r.total_m3 ORDER BY r.read_at DESC))[1] AS last_total,
       count(*)::int AS reading_count
FROM unnest($1::bigint[], $2::date[]) AS k(meter_id, day)
JOIN readings r ON r.meter_id = k.meter_id
    AND r.read_at > (k.day::timestamp AT TIME ZONE $3) AND r.read_at <= ((k.day + 1)::timestamp AT TIME ZONE $3)
-- The overall bounds as plain parameters let the planner prune the partitions.
WHERE r.read_at > $4 AND r.read_at <= $5
GROUP BY r.meter_id, k.day
"""

_DELETE_EMPTY_DAYS = """
DELETE FROM daily_usage u USING unnest($1::bigint[], $2::date[]) AS k(meter_id, day)
WHERE u.meter_id = k.meter_id AND u.day = k.day
"""

DayKey = tuple[int, date]
# first_at, first_total, last_at, last_total, reading_count
DayAggregate = list[Any]


class LocalDays:
    """Maps an instant to the utility's day it closes: a day is ``(00:00, 24:00]``, so a
    reading at exactly midnight is the previous day's last (a meter's daily frozen
    reading, CJ/T 188 日冻结, is taken at 00:00 for the day before), which is also how
    ``usage_between``'s ``(start, end]`` windows split.

    Cached per 15-minute slot ``(k·900 s, (k+1)·900 s]``: every zone offset (and every DST
    change) falls on a quarter hour, so one slot is one day."""

    __slots__ = ("_slots", "_zone")

    def __init__(self, zone: tzinfo) -> None:
        self._zone = zone
        self._slots: dict[int, date] = {}

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


_JUST_BEFORE = timedelta(microseconds=1)
_ONE_DAY = timedelta(days=1)


def aggregate_days(rows: Iterable[Sequence[Any]], days: LocalDays) -> dict[DayKey, DayAggregate]:
    """Per (meter, local day): first/last reading and count, from ``(meter_id, read_at,
    total_m3, …)`` rows (the COPY rows ingest just wrote)."""
    aggregates: dict[DayKey, DayAggregate] = {}
    get = aggregates.get
    for row in rows:
        meter_id, read_at, total = row[0], row[1], row[2]
        key = (meter_id, days(read_at))
        aggregate = get(key)
        if aggregate is None:
            aggregates[key] = [read_at, total, read_at, total, 1]
            continue
        if read_at < aggregate[0]:
            aggregate[0], aggregate[1] = read_at, total
        elif read_at > aggregate[2]:
            aggregate[2], aggregate[3] = read_at, total
        aggregate[4] += 1
    return aggregates


def _first_days(keys: Iterable[DayKey]) -> dict[int, date]:
    first: dict[int, date] = {}
    for meter_id, day in keys:
        current = first.get(meter_id)
        if current is None or day < current:
            first[meter_id] = day
    return first


async def _chain(driver: Any, aggregates: dict[DayKey, DayAggregate], first_days: dict[int, date]) -> None:
    if not first_days:
        return
    keys = list(aggregates)
    values = list(aggregates.values())
    await driver.execute(
        _CHAIN,
        [k[0] for k in keys], [k[1] for k in keys],
        [v[0] for v in values], [v[1] for v in values], [v[2] for v in values], [v[3] for v in values],
        [v[4] for v in values],
        list(first_days), list(first_days.values()),
    )


# Per meter of an appended batch: its register and multiplier, and its newest stored day.
_APPEND_STATE = """
SELECT b.meter_id, power(10::numeric, mm.register_digits) AS register_range, coalesce(mm.multiplier, 1) AS multiplier,
       p.day, p.first_at, p.first_total, p.last_at, p.last_total, p.effective_total, p.opening_effective,
       p.reading_count, p.register_wraps, p.rollover, p.reverse_flow
FROM unnest($1::bigint[]) AS b(meter_id)
JOIN meters m ON m.id = b.meter_id
LEFT JOIN meter_models mm ON mm.id = m.model_id
LEFT JOIN LATERAL (
    SELECT * FROM daily_usage p WHERE p.meter_id = b.meter_id ORDER BY p.day DESC LIMIT 1
) p ON true
"""

_NEW_DAYS = f"""
INSERT INTO daily_usage ({_DAY_COLUMNS})
SELECT * FROM unnest($1::bigint[], $2::date[], $3::timestamptz[], $4::numeric[], $5::timestamptz[], $6::numeric[],
                     $7::numeric[], $8::numeric[], $9::numeric[], $10::int[], $11::int[], $12::bool[], $13::bool[])
"""

# A plain UPDATE of the continued days (cheaper than ON CONFLICT, and HOT: see models).
_CONTINUED_DAYS = """
UPDATE daily_usage u SET last_at = c.last_at, last_total = c.last_total, effective_total = c.effective_total,
    usage_m3 = c.usage_m3, reading_count = c.reading_count, register_wraps = c.register_wraps,
    rollover = c.rollover, reverse_flow = c.reverse_flow
FROM unnest($1::bigint[], $2::date[], $3::timestamptz[], $4::numeric[], $5::numeric[], $6::numeric[], $7::int[],
            $8::int[], $9::bool[], $10::bool[])
    AS c(meter_id, day, last_at, last_total, effective_total, usage_m3, reading_count, register_wraps, rollover,
         reverse_flow)
WHERE u.meter_id = c.meter_id AND u.day = c.day
"""

_PLACES = Decimal("0.0001")
_ZERO = Decimal(0)
_DAY = itemgetter(0)


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
    recomputed or flagged (rollover, reverse flow), and each other meter's largest usage
    among the days it touched."""

    flagged: set[int] = field(default_factory=set)
    day_usage: dict[int, Decimal] = field(default_factory=dict)


def _walk(states: Sequence[Any], by_meter: dict[int, list[tuple[date, DayAggregate]]], aggregates: dict[DayKey, DayAggregate],
          rolled: RolledUp, new_days: list[tuple[Any, ...]], continued: list[tuple[Any, ...]], late: list[DayKey]) -> None:
    """Continue each meter's chain from its stored state over the batch's days."""
    for state in states:
        meter_id = state["meter_id"]
        days = sorted(by_meter[meter_id], key=_DAY)
        stored_day = state["day"]
        if stored_day is not None and (days[0][0] < stored_day or days[0][1][0] <= state["last_at"]):
            late.extend((meter_id, day) for day, _ in days)
            rolled.flagged.add(meter_id)
            continue
        multiplier = state["multiplier"]
        register = _Register(state["register_range"], state["last_total"], state["register_wraps"] or 0,
                             state["effective_total"])
        for day, (first_at, first_total, last_at, last_total, count) in days:
            if day == stored_day:  # the newest stored day goes on from its last reading
                opening = state["opening_effective"]
                first_at, first_total = state["first_at"], state["first_total"]
                count += state["reading_count"]
                register.wrapped, register.reversed = state["rollover"], state["reverse_flow"]
                register.step(aggregates[meter_id, day][1])
            else:
                register.wrapped = register.reversed = False
                previous_effective = register.effective
                first_unwrapped = register.step(first_total)
                opening = previous_effective if previous_effective is not None else first_unwrapped
            register.step(last_total)
            effective = register.effective
            assert effective is not None and opening is not None
            usage = ((effective - opening) * multiplier).quantize(_PLACES, ROUND_HALF_UP)
            if register.wrapped or register.reversed:
                rolled.flagged.add(meter_id)
            if usage > rolled.day_usage.get(meter_id, _ZERO):
                rolled.day_usage[meter_id] = usage
            if day == stored_day:
                continued.append((meter_id, day, last_at, last_total, effective, usage, count, register.wraps,
                                  register.wrapped, register.reversed))
            else:
                new_days.append((meter_id, day, first_at, first_total, last_at, last_total, effective, opening, usage,
                                 count, register.wraps, register.wrapped, register.reversed))


async def append_days(driver: Any, aggregates: dict[DayKey, DayAggregate], tz_name: str) -> RolledUp:
    """Roll up readings that were all newly inserted (ingest's fast path).

    For a meter whose new readings all come after its newest stored day's last reading
    (time-ordered ingest: nearly always), the chain is continued here from that stored
    state and only the touched days are written, in one statement. Any other meter (a
    late or interleaved reading) is recomputed from ``readings`` by :func:`recompute_days`.
    """
    rolled = RolledUp()
    by_meter: dict[int, list[tuple[date, DayAggregate]]] = {}
    for (meter_id, day), aggregate in aggregates.items():
        by_meter.setdefault(meter_id, []).append((day, aggregate))
    states = await driver.fetch(_APPEND_STATE, list(by_meter))
    new_days: list[tuple[Any, ...]] = []
    continued: list[tuple[Any, ...]] = []
    late: list[DayKey] = []
    # ~10 small objects per meter, none cyclic: the collections they would trigger cost
    # more than the loop. The loop never awaits, so nothing else runs meanwhile.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        _walk(states, by_meter, aggregates, rolled, new_days, continued, late)
    finally:
        if gc_was_enabled:
            gc.enable()
    if continued:
        await driver.execute(_CONTINUED_DAYS, *map(list, zip(*continued, strict=True)))
    if new_days:
        await driver.execute(_NEW_DAYS, *map(list, zip(*new_days, strict=True)))
    if late:
        await recompute_days(driver, late, tz_name)
    return rolled


async def recompute_days(driver: Any, keys: Iterable[DayKey], tz_name: str) -> None:
    """Aggregate the given (meter, day) pairs again from ``readings`` and re-chain every
    later day of those meters; days left without readings lose their row."""
    wanted = sorted(set(keys))
    if not wanted:
        return
    meter_ids = [k[0] for k in wanted]
    day_list = [k[1] for k in wanted]
    zone = ZoneInfo(tz_name)
    rows = await driver.fetch(_AGGREGATE_DAYS, meter_ids, day_list, tz_name,
                              day_start(min(day_list), zone), day_end(max(day_list), zone))
    aggregates: dict[DayKey, DayAggregate] = {
        (r["meter_id"], r["day"]): [r["first_at"], r["first_total"], r["last_at"], r["last_total"], r["reading_count"]]
        for r in rows
    }
    empty = [k for k in wanted if k not in aggregates]
    if empty:
        await driver.execute(_DELETE_EMPTY_DAYS, [k[0] for k in empty], [k[1] for k in empty])
    await _chain(driver, aggregates, _first_days(wanted))


def zone_name(zone: tzinfo) -> str:
    """The IANA name PostgreSQL's ``AT TIME ZONE`` needs."""
    key = getattr(zone, "key", None)
    if not key:
        raise ValueError(f"time zone {zone!r} has no IANA name")
    return str(key)


def day_start(day: date, zone: tzinfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone)


def day_end(day: date, zone: tzinfo) -> datetime:
    return day_start(day + timedelta(days=1), zone)


__all__ = ["LocalDays", "aggregate_days", "append_days", "day_end", "day_start", "recompute_days", "zone_name"]
