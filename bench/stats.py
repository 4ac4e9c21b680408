"""Usage statistics and ledgers: the service functions vs the bare SQL aggregate over the
same daily-rollup rows, same run.

Data, written straight into the rollup with ``generate_series`` (statistics never read raw
readings, so none are needed):

- statistics: a company with 100 buildings of 1,000 meters (100k meters) and 30 days of
  ``daily_usage`` (3M rows). Timed: ``analytics.usage_statistics`` for the company, daily,
  over the 30 days (first page of 20, the total count and the summary over all 3,000
  unit-day rows), against the bare ``GROUP BY area, day`` over the same rows (subtree by
  path prefix, the best hand-written form) plus the same summary;
- ledger: another company with 10 buildings of 1,000 meters (10k meters) and 13 months of
  days (~4M rows). Timed: ``analytics.usage_ledger`` by month over the 13 months (area
  totals, total count, the first page with its start/end readings) against the bare
  ``GROUP BY meter, month`` sum over the same rows (every row's figure, where the service
  computes the page's rows and the area totals; printed, not the headline);
- hourly: a community of 5 buildings of 1,000 meters (5k meters) with raw readings over
  33 days (the 31 of August and the two before, ~3.6M readings; nine meters in ten read
  every hour at their own minute, one in ten once a day at 23:40) and their rollup, the
  way ingest leaves it. Timed: ``analytics.usage_statistics`` of the community, hourly,
  over August (page of 20, total count and summary over the 5 x 744 building-hour rows,
  each with its coverage) against the bare SQL of the same aggregation (each meter's
  readings walked from its rollup state by the usage rule, the register at each hour's
  end, ``lag`` over the hours, covered hours summed per building and hour, the meters
  counted, the summary; printed beside the others, not the headline: goal <= 1.5x too).

Both sides run through the same engine and sessions (same settings: JIT off). Each figure
is the best of 3 runs after one warm-up. Goal: statistics within 1.5x the bare
aggregate. The last line is the headline.

    .venv/bin/python bench/stats.py [--meters 100000] [--days 30] [--ledger-meters 10000] [--hourly-meters 5000]

Self-contained: embedded PostgreSQL in a temp dir. About 2-4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from sqlalchemy import text

from backend.db import create_engine, migrate, session_factory, start_embedded, stop_embedded, to_libpq_url
from backend.readings import analytics
from backend.readings.analytics import Granularity, Scope, ScopeKind
from backend.readings.partitions import ensure_partitions

GOAL = 1.5
TZ = "Asia/Shanghai"
STATS_START = date(2026, 10, 1)
LEDGER_START = date(2025, 10, 1)
LEDGER_END = date(2026, 10, 31)  # 13 months
BUILDING_METERS = 1000
HOURLY_START = date(2026, 8, 1)
HOURLY_END = date(2026, 8, 31)  # 31 days, the hourly cap
HOURLY_READ_FROM = HOURLY_START - timedelta(days=2)  # the rollup state the walk starts from


async def _company(connection: Any, name: str, buildings: int, kind: str = "company") -> tuple[int, list[int]]:
    company = await connection.fetchval(
        "INSERT INTO areas (name, kind, path) VALUES ($1, $2, $1) RETURNING id", name, kind)
    await connection.execute("UPDATE areas SET path = '/' || id || '/' WHERE id = $1", company)
    children = await connection.fetch(
        "INSERT INTO areas (parent_id, name, kind, path) "
        "SELECT $1, $2 || g || '栋', 'building', $2 || '/' || g FROM generate_series(1, $3) g RETURNING id",
        company, name, buildings)
    await connection.execute(
        "UPDATE areas SET path = (SELECT path FROM areas WHERE id = $1) || id || '/' WHERE parent_id = $1", company)
    return company, [row["id"] for row in children]


async def _meters(connection: Any, prefix: str, building_ids: list[int], first_address: int) -> None:
    await connection.execute(f"""
        INSERT INTO meters (name, code, protocol, address, meter_type, kind, area_id, status, initial_reading,
                            install_date)
        SELECT '表' || g, '{prefix}' || g, 'cjt188', lpad((g + {first_address})::text, 14, '0'), 'cold_water', 'household',
               (CAST($1 AS bigint[]))[1 + (g - 1) / {BUILDING_METERS}], 'installed', 0, DATE '2025-01-01'
        FROM generate_series(1, {len(building_ids) * BUILDING_METERS}) g
    """, building_ids)


async def _extra_columns(connection: Any) -> tuple[str, str]:
    """Any NOT NULL rollup columns beyond the ones set here (the rollup may grow), as zeros."""
    rows = await connection.fetch("""
        SELECT column_name, data_type FROM information_schema.columns
        WHERE table_name = 'daily_usage_closed' AND is_nullable = 'NO' AND column_default IS NULL
    """)
    known = {"meter_id", "day", "first_at", "first_total", "last_at", "last_total", "effective_total", "usage_m3",
             "reading_count"}
    extra = [(row["column_name"], row["data_type"]) for row in rows if row["column_name"] not in known]
    names = "".join(f", {name}" for name, _ in extra)
    values = "".join(", false" if kind == "boolean" else ", 0" for _, kind in extra)
    return names, values


async def _rollup(connection: Any, building_ids: list[int], start: date, days: int) -> None:
    """One rollup row per meter and day: a steady register with a varying daily use."""
    names, values = await _extra_columns(connection)
    await connection.execute(f"""
        INSERT INTO daily_usage_closed (meter_id, day, first_at, first_total, last_at, last_total, effective_total, usage_m3,
                                 reading_count{names})
        SELECT m.id, d::date, d + interval '30 minutes', n * 0.5, d + interval '23 hours 30 minutes', n * 0.5 + 0.4,
               n * 0.5 + 0.4, ((m.id + n) % 7) * 0.1 + 0.05, 24{values}
        FROM meters m
        CROSS JOIN generate_series(CAST($2 AS date)::timestamp, CAST($2 AS date) + CAST($3 AS int) - 1, interval '1 day') d
        CROSS JOIN LATERAL (SELECT (d::date - DATE '2025-01-01') AS n) k
        WHERE m.area_id = ANY(CAST($1 AS bigint[]))
    """, building_ids, start, days)


async def _hourly_readings(connection: Any, url: str, building_ids: list[int]) -> int:
    """Raw readings of the hourly community from 00:00 two days before August to 1 September
    00:00 (the last one closes 31 August), then their rollup, as ingest leaves it: meter
    ``n`` reads at minute ``n % 60`` of every hour, or (every tenth meter) daily at 23:40;
    its register grows 0.00, 0.03 or 0.03 m³ an hour by turns, from 100."""
    engine = create_engine(url, pool_size=1, max_overflow=0)
    async with session_factory(engine)() as session, session.begin():
        await ensure_partitions(session, start=_local(HOURLY_READ_FROM), end=_local(HOURLY_END + timedelta(days=1)),
                                tz=TZ)
    await engine.dispose()
    start, end = _local(HOURLY_READ_FROM), _local(HOURLY_END + timedelta(days=1))
    await connection.execute("""
        INSERT INTO readings (meter_id, read_at, total_m3, quality, source, received_at)
        SELECT m.id, x.read_at, 100 + 0.02 * x.hours + 0.01 * ((m.id + x.hours) % 3), 'actual', 'bench', x.read_at
        FROM meters m
        CROSS JOIN LATERAL (
            SELECT h AS read_at, floor(extract(epoch FROM h - CAST($2 AS timestamptz)) / 3600)::int AS hours
            FROM generate_series(CAST($2 AS timestamptz) + make_interval(
                                     mins => CASE WHEN m.id % 10 = 0 THEN 23 * 60 + 40 ELSE (m.id % 60)::int END),
                                 CAST($3 AS timestamptz),
                                 CASE WHEN m.id % 10 = 0 THEN interval '1 day' ELSE interval '1 hour' END) h
        ) x
        WHERE m.area_id = ANY(CAST($1 AS bigint[]))
    """, building_ids, start, end)
    names, values = await _extra_columns(connection)
    await connection.execute(f"""
        INSERT INTO daily_usage_closed (meter_id, day, first_at, first_total, last_at, last_total, effective_total,
                                        usage_m3, reading_count{names})
        SELECT meter_id, day, first_at, first_total, last_at, last_total, last_total,
               last_total - coalesce(lag(last_total) OVER (PARTITION BY meter_id ORDER BY day), first_total),
               reading_count{values}
        FROM (
            SELECT r.meter_id, ((r.read_at - interval '1 microsecond') AT TIME ZONE $2)::date AS day,
                   min(r.read_at) AS first_at, min(r.total_m3) AS first_total, max(r.read_at) AS last_at,
                   max(r.total_m3) AS last_total, count(*)::int AS reading_count
            FROM readings r JOIN meters m ON m.id = r.meter_id
            WHERE m.area_id = ANY(CAST($1 AS bigint[]))
            GROUP BY 1, 2
        ) d
    """, building_ids, TZ)
    return int(await connection.fetchval(
        "SELECT count(*) FROM readings r JOIN meters m ON m.id = r.meter_id WHERE m.area_id = ANY(CAST($1 AS bigint[]))",
        building_ids))


def _local(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), tzinfo=ZoneInfo(TZ))


async def _open_days(connection: Any) -> None:
    """As ingest leaves the rollup: each meter's newest day on its ``latest_readings`` row
    (the ``daily_usage`` view reads both halves)."""
    await connection.execute("""
        WITH newest AS (
            DELETE FROM daily_usage_closed c
            USING (SELECT meter_id, max(day) AS day FROM daily_usage_closed GROUP BY meter_id) n
            WHERE c.meter_id = n.meter_id AND c.day = n.day
            RETURNING c.*
        )
        INSERT INTO latest_readings (meter_id, read_at, total_m3, quality, source, received_at, day, first_at,
                                     first_total, effective_total, opening_effective, usage_m3, reading_count,
                                     register_wraps, rollover, reverse_flow)
        SELECT meter_id, last_at, last_total, 'actual', 'bench', last_at, day, first_at, first_total, effective_total,
               opening_effective, usage_m3, reading_count, register_wraps, rollover, reverse_flow
        FROM newest
    """)


async def _best(label: str, function: Callable[[], Awaitable[Any]], runs: int = 3) -> float:
    await function()  # warm-up: plans, caches
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        await function()
        best = min(best, time.perf_counter() - started)
    print(f"  {label:<58} {best * 1000:9.1f} ms")
    return best


# The best hand-written form: the subtree by its path prefix, grouped by area and day.
_BARE_STATISTICS = """
WITH per_unit AS (
    SELECT s.id, d.day, sum(d.usage_m3) AS usage_m3
    FROM areas s JOIN meters m ON m.area_id = s.id JOIN daily_usage d ON d.meter_id = m.id
    WHERE s.path LIKE :prefix AND d.day BETWEEN :start AND :end
    GROUP BY 1, 2
)
SELECT count(*), sum(usage_m3), avg(usage_m3), max(usage_m3), min(usage_m3) FROM per_unit
"""
# The same hourly aggregation written by hand for one community of buildings, with the
# service's algorithm: each meter's readings after its rollup state, the register at the
# end of each hour (the usage rule's walk for meters whose register ever fell, the raw
# register for the others), the hour before by lag, covered hours summed per building
# and hour, the meters reporting per building, and the summary over every building-hour.
_BARE_HOUR = "date_bin('1 hour', {instant} - interval '1 microsecond', CAST(:start_at AS timestamptz))"


def _bare_closing(source: str, effective: str, seed_effective: str, first_effective: str) -> str:
    return f"""
    SELECT meter_id, area_id, hour,
           (effective - coalesce(lag(effective) OVER w, seed_effective, first_effective)) * multiplier AS usage_m3,
           CASE WHEN lag(hour) OVER w IS NOT NULL THEN lag(hour) OVER w = hour - interval '1 hour'
                WHEN seed_hour IS NOT NULL THEN seed_hour = hour - interval '1 hour' ELSE true END AS covered
    FROM (
        SELECT meter_id, area_id, read_at, hour, multiplier, seed_hour, {seed_effective} AS seed_effective,
               {effective} AS effective, lead(hour) OVER w IS DISTINCT FROM hour AS closes_hour,
               first_value({first_effective}) OVER w AS first_effective
        FROM {source}
        WINDOW w AS (PARTITION BY meter_id ORDER BY read_at ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
    ) x
    WHERE closes_hour
    WINDOW w AS (PARTITION BY meter_id ORDER BY read_at)"""


_BARE_HOURLY = f"""
WITH meter_list AS (
    SELECT m.id AS meter_id, m.area_id, power(10::numeric, mm.register_digits) AS register_range,
           coalesce(mm.multiplier, 1) AS multiplier, s.last_at AS seed_at, s.last_total AS seed_total,
           s.effective_total AS seed_effective, coalesce(s.register_wraps, 0) AS seed_wraps,
           {_BARE_HOUR.format(instant="s.last_at")} AS seed_hour,
           (s.day IS NULL OR s.effective_total = s.last_total
                + coalesce(power(10::numeric, mm.register_digits), 0) * s.register_wraps)
           AND NOT EXISTS (SELECT FROM daily_usage d WHERE d.meter_id = m.id AND d.day > coalesce(s.day, '-infinity')
                           AND d.day <= CAST(:end_day AS date) AND (d.rollover OR d.reverse_flow)) AS growing
    FROM areas a JOIN meters m ON m.area_id = a.id AND m.kind = 'household'
    LEFT JOIN meter_models mm ON mm.id = m.model_id
    LEFT JOIN LATERAL (
        SELECT d.day, d.last_at, d.last_total, d.effective_total, d.register_wraps FROM daily_usage d
        WHERE d.meter_id = m.id AND d.day < CAST(:start_day AS date) AND d.last_at <= CAST(:seed_before AS timestamptz)
        ORDER BY d.day DESC LIMIT 1
    ) s ON true
    WHERE a.path LIKE :prefix
      AND EXISTS (SELECT FROM daily_usage d WHERE d.meter_id = m.id
                  AND d.day BETWEEN CAST(:start_day AS date) AND CAST(:end_day AS date))
), points AS NOT MATERIALIZED (
    SELECT l.meter_id, l.area_id, l.growing, l.multiplier, l.seed_hour, l.seed_total, r.read_at, r.total_m3,
           {_BARE_HOUR.format(instant="r.read_at")} AS hour
    FROM (SELECT * FROM meter_list ORDER BY meter_id) l JOIN readings r ON r.meter_id = l.meter_id
    WHERE r.read_at > CAST(:walk_from AS timestamptz) AND r.read_at <= CAST(:end_at AS timestamptz)
      AND r.read_at > coalesce(l.seed_at, '-infinity')
), walked AS (
    SELECT *, total_m3 + coalesce(register_range, 0) * (seed_wraps + count(*) FILTER (WHERE wrapped) OVER w)
              AS unwrapped
    FROM (
        SELECT p.*, l.register_range, l.seed_effective, l.seed_wraps,
               coalesce(p.total_m3 - coalesce(lag(p.total_m3) OVER w, l.seed_total) < -l.register_range / 2, false)
                   AS wrapped
        FROM points p JOIN meter_list l ON l.meter_id = p.meter_id
        WHERE NOT p.growing
        WINDOW w AS (PARTITION BY p.meter_id ORDER BY p.read_at)
    ) x
    WINDOW w AS (PARTITION BY meter_id ORDER BY read_at ROWS UNBOUNDED PRECEDING)
), meter_hours AS (
    {_bare_closing("points WHERE growing", "total_m3", "seed_total", "total_m3")}
    UNION ALL
    {_bare_closing("walked", "greatest(seed_effective, max(unwrapped) OVER w)", "seed_effective", "unwrapped")}
), per_area AS (
    SELECT area_id, hour, round(sum(usage_m3), 4) AS usage_m3, count(*) AS covered_meters
    FROM meter_hours WHERE covered AND hour >= CAST(:start_at AS timestamptz)
    GROUP BY 1, 2
), area_meters AS (SELECT area_id, count(*) AS meters FROM meter_list GROUP BY 1)
SELECT count(*), count(p.usage_m3), sum(p.usage_m3), round(avg(p.usage_m3), 4), max(p.usage_m3), min(p.usage_m3),
       round(100.0 * sum(p.covered_meters) / sum(a.meters), 2)
FROM per_area p JOIN area_meters a USING (area_id)
"""
_BARE_LEDGER = """
WITH per_meter AS (
    SELECT d.meter_id, date_trunc('month', d.day) AS month, sum(d.usage_m3) AS usage_m3
    FROM daily_usage d JOIN meters m ON m.id = d.meter_id
    WHERE m.area_id = ANY(:areas) AND d.day BETWEEN :start AND :end
    GROUP BY 1, 2
)
SELECT m.area_id, count(*), sum(p.usage_m3) FROM per_meter p JOIN meters m ON m.id = p.meter_id GROUP BY 1
"""


async def run(url: str, meters: int, days: int, ledger_meters: int, hourly_meters: int) -> float:
    connection = await asyncpg.connect(to_libpq_url(url))
    started = time.perf_counter()
    stats_company, stats_buildings = await _company(connection, "统计公司", max(1, meters // BUILDING_METERS))
    ledger_company, ledger_buildings = await _company(connection, "台账公司", max(1, ledger_meters // BUILDING_METERS))
    await _meters(connection, "S", stats_buildings, 0)
    await _meters(connection, "L", ledger_buildings, 10**12)
    await _rollup(connection, stats_buildings, STATS_START, days)
    await _rollup(connection, ledger_buildings, LEDGER_START, (LEDGER_END - LEDGER_START).days + 1)
    hourly_started = time.perf_counter()
    hourly_community, hourly_buildings = await _company(
        connection, "小时小区", max(1, hourly_meters // BUILDING_METERS), kind="community")
    await _meters(connection, "H", hourly_buildings, 2 * 10**12)
    raw_readings = await _hourly_readings(connection, url, hourly_buildings)
    hourly_setup = time.perf_counter() - hourly_started
    await _open_days(connection)
    await connection.execute("VACUUM ANALYZE daily_usage_closed")
    await connection.execute("VACUUM ANALYZE latest_readings")
    await connection.execute("VACUUM ANALYZE meters")
    await connection.execute("VACUUM ANALYZE areas")
    await connection.execute("VACUUM ANALYZE readings")
    rollup_rows = await connection.fetchval("SELECT count(*) FROM daily_usage")
    print(f"setup: {len(stats_buildings) * BUILDING_METERS:,} + {len(ledger_buildings) * BUILDING_METERS:,} + "
          f"{len(hourly_buildings) * BUILDING_METERS:,} meters, {rollup_rows:,} rollup rows, {raw_readings:,} raw "
          f"readings in {time.perf_counter() - started:.1f} s (the readings {hourly_setup:.1f} s)")

    engine = create_engine(url, pool_size=2, max_overflow=0)
    sessions = session_factory(engine)
    stats_end = STATS_START + timedelta(days=days - 1)

    async def statistics() -> None:
        async with sessions() as session:
            page = await analytics.usage_statistics(
                session, scope=Scope(ScopeKind.area, stats_company), granularity=Granularity.day,
                start_day=STATS_START, end_day=stats_end, scope_patterns=None, tz=TZ, offset=0, limit=20)
        assert page.total_count == len(stats_buildings) * days and len(page.rows) == 20

    async def bare_statistics() -> None:
        async with sessions() as session:
            row = (await session.execute(text(_BARE_STATISTICS), {
                "prefix": f"/{stats_company}/%", "start": STATS_START, "end": stats_end})).one()
        assert row[0] == len(stats_buildings) * days

    async def ledger() -> None:
        async with sessions() as session:
            page = await analytics.usage_ledger(
                session, scope=Scope(ScopeKind.area, ledger_company), granularity=Granularity.month,
                start_day=LEDGER_START, end_day=LEDGER_END, scope_patterns=None, tz=TZ, offset=0, limit=20)
        assert page.total_count == len(ledger_buildings) * BUILDING_METERS * 13 and len(page.rows) == 20

    async def bare_ledger() -> None:
        async with sessions() as session:
            rows = (await session.execute(text(_BARE_LEDGER), {
                "areas": ledger_buildings, "start": LEDGER_START, "end": LEDGER_END})).all()
        assert len(rows) == len(ledger_buildings)

    hourly_rows = len(hourly_buildings) * ((HOURLY_END - HOURLY_START).days + 1) * 24

    async def hourly_statistics() -> None:
        async with sessions() as session:
            page = await analytics.usage_statistics(
                session, scope=Scope(ScopeKind.area, hourly_community), granularity=Granularity.hour,
                start_day=HOURLY_START, end_day=HOURLY_END, scope_patterns=None, tz=TZ, offset=0, limit=20)
        assert page.total_count == hourly_rows and len(page.rows) == 20
        assert page.rows[0].meters == BUILDING_METERS and page.rows[0].coverage_percent == 90

    async def bare_hourly() -> None:
        start_at = _local(HOURLY_START)
        async with sessions() as session:
            row = (await session.execute(text(_BARE_HOURLY), {
                "prefix": f"/{hourly_community}/%", "start_day": HOURLY_START, "end_day": HOURLY_END,
                "start_at": start_at, "end_at": _local(HOURLY_END + timedelta(days=1)),
                "seed_before": start_at - timedelta(hours=1), "walk_from": _local(HOURLY_START - timedelta(days=1)),
            })).one()
        assert row[0] == hourly_rows and row[6] == 90

    print(f"daily statistics, {len(stats_buildings) * BUILDING_METERS:,} meters x {days} days "
          f"({len(stats_buildings)} child areas):")
    service_stats = await _best("analytics.usage_statistics (page 20 + count + summary)", statistics)
    bare_stats = await _best("bare SQL GROUP BY area, day (path prefix) + summary", bare_statistics)
    print(f"monthly ledger, {len(ledger_buildings) * BUILDING_METERS:,} meters x 13 months:")
    service_ledger = await _best("analytics.usage_ledger (totals + count + page 20)", ledger)
    bare_ledger_time = await _best("bare SQL GROUP BY meter, month + area totals", bare_ledger)
    print(f"hourly statistics, {len(hourly_buildings) * BUILDING_METERS:,} meters x "
          f"{(HOURLY_END - HOURLY_START).days + 1} days of raw readings ({len(hourly_buildings)} child areas):")
    service_hourly = await _best("analytics.usage_statistics HOUR (page 20 + count + summary)", hourly_statistics)
    bare_hourly_time = await _best("bare SQL lag over hourly buckets, sum per area, hour", bare_hourly)
    await connection.close()
    await engine.dispose()
    ledger_ratio = service_ledger / bare_ledger_time
    print(f"ledger: service/bare = {ledger_ratio:.2f}")
    print(f"hourly: service/bare = {service_hourly / bare_hourly_time:.2f} (goal <= {GOAL:.2f})")
    ratio = service_stats / bare_stats
    print(f"statistics: service/bare = {ratio:.2f} (goal <= {GOAL:.2f})")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--ledger-meters", type=int, default=10_000)
    parser.add_argument("--hourly-meters", type=int, default=5_000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="shuiwu-bench-stats-"))
    try:
        url = start_embedded(workdir / "pgdata")
        try:
            migrate(url)
            ratio = asyncio.run(run(url, args.meters, args.days, args.ledger_meters, args.hourly_meters))
        finally:
            stop_embedded()
        print(f"headline: daily area statistics vs bare SQL aggregate ratio={ratio:.2f} goal=<={GOAL:.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
