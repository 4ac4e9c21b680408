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
the rollup does not see an intra-day peak (documented in README, "Usage").

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

from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

# The chain statement. $1..$7: per-day aggregates; $8: merge them into stored days (append)
# instead of replacing them; $9/$10: per meter, the first day to re-chain from.
_CHAIN = """
WITH delta AS (
    SELECT * FROM unnest($1::bigint[], $2::date[], $3::timestamptz[], $4::numeric[], $5::timestamptz[],
                         $6::numeric[], $7::int[])
        AS d(meter_id, day, first_at, first_total, last_at, last_total, reading_count)
), bounds AS (
    SELECT b.meter_id, b.from_day, power(10::numeric, mm.register_digits) AS register_range,
           coalesce(mm.multiplier, 1) AS multiplier
    FROM unnest($9::bigint[], $10::date[]) AS b(meter_id, from_day)
    JOIN meters m ON m.id = b.meter_id
    LEFT JOIN meter_models mm ON mm.id = m.model_id
), touched AS (
    SELECT d.meter_id, d.day,
           CASE WHEN $8 AND s.first_at < d.first_at THEN s.first_at ELSE d.first_at END AS first_at,
           CASE WHEN $8 AND s.first_at < d.first_at THEN s.first_total ELSE d.first_total END AS first_total,
           CASE WHEN $8 AND s.last_at > d.last_at THEN s.last_at ELSE d.last_at END AS last_at,
           CASE WHEN $8 AND s.last_at > d.last_at THEN s.last_total ELSE d.last_total END AS last_total,
           d.reading_count + CASE WHEN $8 THEN coalesce(s.reading_count, 0) ELSE 0 END AS reading_count
    FROM delta d LEFT JOIN daily_usage s ON s.meter_id = d.meter_id AND s.day = d.day
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
INSERT INTO daily_usage AS u (meter_id, day, first_at, first_total, last_at, last_total, effective_total, usage_m3,
                              reading_count, register_wraps, rollover, reverse_flow)
SELECT d.meter_id, d.day, d.first_at, d.first_total, d.last_at, d.last_total, c.effective_total,
       round((c.effective_total - c.baseline) * b.multiplier, 4), d.reading_count, c.register_wraps,
       c.rollover, c.reverse_flow
FROM days d JOIN chained c USING (meter_id, day) JOIN bounds b USING (meter_id)
ON CONFLICT (meter_id, day) DO UPDATE SET
    first_at = EXCLUDED.first_at, first_total = EXCLUDED.first_total, last_at = EXCLUDED.last_at,
    last_total = EXCLUDED.last_total, effective_total = EXCLUDED.effective_total, usage_m3 = EXCLUDED.usage_m3,
    reading_count = EXCLUDED.reading_count, register_wraps = EXCLUDED.register_wraps,
    rollover = EXCLUDED.rollover, reverse_flow = EXCLUDED.reverse_flow
WHERE (u.first_at, u.first_total, u.last_at, u.last_total, u.effective_total, u.usage_m3, u.reading_count,
       u.register_wraps, u.rollover, u.reverse_flow)
   IS DISTINCT FROM
      (EXCLUDED.first_at, EXCLUDED.first_total, EXCLUDED.last_at, EXCLUDED.last_total, EXCLUDED.effective_total,
       EXCLUDED.usage_m3, EXCLUDED.reading_count, EXCLUDED.register_wraps, EXCLUDED.rollover, EXCLUDED.reverse_flow)
"""

# Whole-day aggregates of stored readings for (meter, day) pairs: the recompute way in.
_AGGREGATE_DAYS = """
SELECT r.meter_id, k.day, min(r.read_at) AS first_at, (array_agg(r.total_m3 ORDER BY r.read_at))[1] AS first_total,
       max(r.read_at) AS last_at, (array_agg(r.total_m3 ORDER BY r.read_at DESC))[1] AS last_total,
       count(*)::int AS reading_count
FROM unnest($1::bigint[], $2::date[]) AS k(meter_id, day)
JOIN readings r ON r.meter_id = k.meter_id
    AND r.read_at > (k.day::timestamp AT TIME ZONE $3) AND r.read_at <= ((k.day + 1)::timestamp AT TIME ZONE $3)
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
        slot = -int(-instant.timestamp() // 900)
        day = self._slots.get(slot)
        if day is None:
            day = self._slots[slot] = (instant - _JUST_BEFORE).astimezone(self._zone).date()
        return day


_JUST_BEFORE = timedelta(microseconds=1)


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


async def _chain(driver: Any, aggregates: dict[DayKey, DayAggregate], first_days: dict[int, date], *, merge: bool) -> None:
    if not first_days:
        return
    keys = list(aggregates)
    values = list(aggregates.values())
    await driver.execute(
        _CHAIN,
        [k[0] for k in keys], [k[1] for k in keys],
        [v[0] for v in values], [v[1] for v in values], [v[2] for v in values], [v[3] for v in values],
        [v[4] for v in values],
        merge, list(first_days), list(first_days.values()),
    )


async def append_days(driver: Any, aggregates: dict[DayKey, DayAggregate]) -> None:
    """Merge the per-day aggregates of readings that were all newly inserted."""
    await _chain(driver, aggregates, _first_days(aggregates), merge=True)


async def recompute_days(driver: Any, keys: Iterable[DayKey], tz_name: str) -> None:
    """Aggregate the given (meter, day) pairs again from ``readings`` and re-chain every
    later day of those meters; days left without readings lose their row."""
    wanted = sorted(set(keys))
    if not wanted:
        return
    meter_ids = [k[0] for k in wanted]
    day_list = [k[1] for k in wanted]
    rows = await driver.fetch(_AGGREGATE_DAYS, meter_ids, day_list, tz_name)
    aggregates: dict[DayKey, DayAggregate] = {
        (r["meter_id"], r["day"]): [r["first_at"], r["first_total"], r["last_at"], r["last_total"], r["reading_count"]]
        for r in rows
    }
    empty = [k for k in wanted if k not in aggregates]
    if empty:
        await driver.execute(_DELETE_EMPTY_DAYS, [k[0] for k in empty], [k[1] for k in empty])
    await _chain(driver, aggregates, _first_days(wanted), merge=False)


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
