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
  computes the page's rows and the area totals; printed, not the headline).

Both sides run through the same engine and sessions (same settings: JIT off). Each figure
is the best of 3 runs after one warm-up. Goal: statistics within 1.5x the bare
aggregate. The last line is the headline.

    .venv/bin/python bench/stats.py [--meters 100000] [--days 30] [--ledger-meters 10000]

Self-contained: embedded PostgreSQL in a temp dir. About 1-2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text

from backend.db import create_engine, migrate, session_factory, start_embedded, stop_embedded, to_libpq_url
from backend.readings import analytics
from backend.readings.analytics import Granularity, Scope, ScopeKind

GOAL = 1.5
TZ = "Asia/Shanghai"
STATS_START = date(2026, 10, 1)
LEDGER_START = date(2025, 10, 1)
LEDGER_END = date(2026, 10, 31)  # 13 months
BUILDING_METERS = 1000


async def _company(connection: Any, name: str, buildings: int) -> tuple[int, list[int]]:
    company = await connection.fetchval(
        "INSERT INTO areas (name, kind, path) VALUES ($1, 'company', $1) RETURNING id", name)
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
_BARE_LEDGER = """
WITH per_meter AS (
    SELECT d.meter_id, date_trunc('month', d.day) AS month, sum(d.usage_m3) AS usage_m3
    FROM daily_usage d JOIN meters m ON m.id = d.meter_id
    WHERE m.area_id = ANY(:areas) AND d.day BETWEEN :start AND :end
    GROUP BY 1, 2
)
SELECT m.area_id, count(*), sum(p.usage_m3) FROM per_meter p JOIN meters m ON m.id = p.meter_id GROUP BY 1
"""


async def run(url: str, meters: int, days: int, ledger_meters: int) -> float:
    connection = await asyncpg.connect(to_libpq_url(url))
    started = time.perf_counter()
    stats_company, stats_buildings = await _company(connection, "统计公司", max(1, meters // BUILDING_METERS))
    ledger_company, ledger_buildings = await _company(connection, "台账公司", max(1, ledger_meters // BUILDING_METERS))
    await _meters(connection, "S", stats_buildings, 0)
    await _meters(connection, "L", ledger_buildings, 10**12)
    await _rollup(connection, stats_buildings, STATS_START, days)
    await _rollup(connection, ledger_buildings, LEDGER_START, (LEDGER_END - LEDGER_START).days + 1)
    await _open_days(connection)
    await connection.execute("VACUUM ANALYZE daily_usage_closed")
    await connection.execute("VACUUM ANALYZE latest_readings")
    await connection.execute("VACUUM ANALYZE meters")
    await connection.execute("VACUUM ANALYZE areas")
    rollup_rows = await connection.fetchval("SELECT count(*) FROM daily_usage")
    print(f"setup: {len(stats_buildings) * BUILDING_METERS:,} + {len(ledger_buildings) * BUILDING_METERS:,} meters, "
          f"{rollup_rows:,} rollup rows in {time.perf_counter() - started:.1f} s")

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

    print(f"daily statistics, {len(stats_buildings) * BUILDING_METERS:,} meters x {days} days "
          f"({len(stats_buildings)} child areas):")
    service_stats = await _best("analytics.usage_statistics (page 20 + count + summary)", statistics)
    bare_stats = await _best("bare SQL GROUP BY area, day (path prefix) + summary", bare_statistics)
    print(f"monthly ledger, {len(ledger_buildings) * BUILDING_METERS:,} meters x 13 months:")
    service_ledger = await _best("analytics.usage_ledger (totals + count + page 20)", ledger)
    bare_ledger_time = await _best("bare SQL GROUP BY meter, month + area totals", bare_ledger)
    await connection.close()
    await engine.dispose()
    ledger_ratio = service_ledger / bare_ledger_time
    print(f"ledger: service/bare = {ledger_ratio:.2f}")
    ratio = service_stats / bare_stats
    print(f"statistics: service/bare = {ratio:.2f} (goal <= {GOAL:.2f})")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--ledger-meters", type=int, default=10_000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="shuiwu-bench-stats-"))
    try:
        url = start_embedded(workdir / "pgdata")
        try:
            migrate(url)
            ratio = asyncio.run(run(url, args.meters, args.days, args.ledger_meters))
        finally:
            stop_embedded()
        print(f"headline: daily area statistics vs bare SQL aggregate ratio={ratio:.2f} goal=<={GOAL:.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
