"""Prepaid settlement: ``settle_prepaid`` of a 100k-account batch vs a hand-written SQL
bound that writes the same ledger entries, balances and cycles, same run.

Data: 100,000 households, each with one meter and an open ``prepaid_station`` account on
one month-cycle tiered tariff (three components, tiers at 12 and 25 m³, four-place
prices), recharged ¥30–¥210 each through ``post_entries``. Readings, ingested through
``ingest_readings`` (so the rollup the usage walk seeds from is what ingest writes): one
at the opening (1 November 00:00) and one a day at 20:xx for 1–15 November; that first
half is settled through ``settle_prepaid`` (so every account has a cycle row and a
charge); then the new batch, a reading a day for 16–28 November. The database is then
copied twice (``CREATE DATABASE … TEMPLATE``), and on one copy each:

- **ours**: ``settle_prepaid(account_ids=all, as_of=29 November 00:00)`` in one
  transaction, committed;
- **bound**: one hand-written SQL script in one transaction, committed: lock the accounts
  in id order; the windows, usage (the one usage rule's text,
  ``backend.readings.usage.window_usage_ctes``, which is not billing's to re-invent),
  tier pricing from the tariff's JSON rules with each line rounded half-up, minus what the
  cycle was charged, into a temp table; insert the entries; update balances, alert states
  and ``settled_to``; upsert the cycles.

Then both copies are compared: the entries the run posted (account, kind, amount,
balance after, ref, key, cycle, volume), every account's balance, alert state and
``settled_to``, every cycle row. Any difference fails the bench. Both sides run through
the app's engine and sessions (same settings). The pair runs ``--runs`` times
(alternating, fresh copies each time); the ratio is of the medians. Goal (issue 15):
ours <= 2x the bound. The last line is the headline.

    .venv/bin/python bench/settlement.py [--accounts 100000] [--runs 3]

Self-contained: embedded PostgreSQL in a temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from _timing import spent, timed  # bench/ is the script directory: sys.path[0]
from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing import service as tariffs
from backend.billing import settlement
from backend.billing.accounts import open_accounts
from backend.billing.ledger import EntryIn, post_entries
from backend.billing.models import BillingMode, EntryKind
from backend.billing.settlement import settle_prepaid
from backend.db import (
    create_engine,
    migrate,
    raw_connection,
    run_admin,
    session_factory,
    start_embedded,
    stop_embedded,
    to_libpq_url,
    with_database,
)
from backend.readings.models import ReadingQuality
from backend.readings.service import ReadingIn, ingest_readings
from backend.readings.usage import window_usage_ctes

GOAL = 2.0
TZ_NAME = "Asia/Shanghai"
TZ = ZoneInfo(TZ_NAME)
OPENED = datetime(2026, 11, 1, tzinfo=TZ)
CYCLE_START, CYCLE_END = date(2026, 11, 1), date(2026, 12, 1)
FIRST_HALF_DAYS = range(1, 16)  # readings on 1..15 November
SECOND_HALF_DAYS = range(16, 29)  # the new batch: 16..28 November
FIRST_AS_OF = datetime(2026, 11, 16, tzinfo=TZ)
AS_OF = datetime(2026, 11, 29, tzinfo=TZ)
BATCH = 100_000
BUILDING_HOUSEHOLDS = 1000
TARIFF = {
    "code": "BENCH-RES", "name": "基准居民水价", "customer_type": "residential", "valid_from": date(2026, 1, 1),
    "cycle": "month", "tier_limits": [12, 25],
    "components": [
        {"code": "water", "name": "自来水费", "prices": ["2.9137", "3.8763", "5.7621"]},
        {"code": "resource", "name": "水资源费", "prices": ["0.5725", "0.5725", "1.1450"]},
        {"code": "sewage", "name": "污水处理费", "prices": ["1.3650", "1.3650", "1.3650"]},
    ],
}
SOURCE = "bench"


# --------------------------------------------------------------------------- data


def daily_use(meter: int, day: int) -> Decimal:
    """m³ used by meter ``meter`` on November ``day``: 0.10–1.18 a day by household, so a
    month's volume spans the three tiers, with a four-place wobble by day."""
    return Decimal(10 + (meter % 10) * 12 + (meter + day) % 5) / 100 + Decimal((meter * 7 + day) % 97) / 10000


def start_total(meter: int) -> Decimal:
    return Decimal(100 + meter % 1000)


def reading_at(day: int, meter: int) -> datetime:
    return datetime(2026, 11, day, 20, meter % 60, tzinfo=TZ)


def meter_readings(meter: int, days: range, opening: bool) -> list[ReadingIn]:
    total = start_total(meter) + sum((daily_use(meter, d) for d in range(1, days.start)), Decimal(0))
    rows = [ReadingIn(meter_id=meter, read_at=OPENED, total_m3=total, quality=ReadingQuality.manual)] if opening else []
    for day in days:
        total += daily_use(meter, day)
        rows.append(ReadingIn(meter_id=meter, read_at=reading_at(day, meter), total_m3=total))
    return rows


async def create_households(url: str, count: int) -> int:
    """A company, buildings of 1,000 households, one meter per household assigned from the
    opening; returns the company's area id."""
    connection = await asyncpg.connect(to_libpq_url(url))
    try:
        company = await connection.fetchval(
            "INSERT INTO areas (name, kind, path) VALUES ('基准水司', 'company', 'c') RETURNING id")
        await connection.execute("UPDATE areas SET path = '/' || id || '/' WHERE id = $1", company)
        buildings = (count + BUILDING_HOUSEHOLDS - 1) // BUILDING_HOUSEHOLDS
        building_ids = [row["id"] for row in await connection.fetch(
            "INSERT INTO areas (parent_id, name, kind, path) SELECT $1, g || '栋', 'building', 'b' || g "
            "FROM generate_series(1, $2) g RETURNING id", company, buildings)]
        await connection.execute(
            "UPDATE areas SET path = (SELECT path FROM areas WHERE id = $1) || id || '/' WHERE parent_id = $1", company)
        await connection.execute(f"""
            INSERT INTO households (account_no, name, area_id)
            SELECT 'B' || lpad(g::text, 8, '0'), '住户' || g, ($1::bigint[])[1 + (g - 1) / {BUILDING_HOUSEHOLDS}]
            FROM generate_series(1, $2) g
        """, building_ids, count)
        await connection.execute(f"""
            INSERT INTO meters (name, code, address, meter_type, kind, area_id, install_date, status, initial_reading)
            SELECT '表' || g, 'M' || g, lpad(g::text, 14, '0'), 'cold_water', 'household',
                   ($1::bigint[])[1 + (g - 1) / {BUILDING_HOUSEHOLDS}], DATE '2026-10-01', 'installed', 100 + g % 1000
            FROM generate_series(1, $2) g
        """, building_ids, count)
        # Household n is served by meter n (both numbered from 1 in a fresh database).
        await connection.execute("""
            INSERT INTO meter_assignments (meter_id, household_id, valid_from, start_reading)
            SELECT m.id, h.id, $1, m.initial_reading
            FROM meters m JOIN households h ON h.account_no = 'B' || lpad(m.id::text, 8, '0')
        """, OPENED)
        # The periodic alarm job's usage baselines, as a utility running for months has
        # them (without one every meter of a batch is an alarm candidate: see README).
        await connection.execute(
            "INSERT INTO meter_usage_baselines (meter_id, day, average_m3) SELECT id, DATE '2026-10-31', 2 FROM meters")
        await connection.execute("ANALYZE")
        return int(company)
    finally:
        await connection.close()


async def ingest_days(sessions: Any, count: int, days: range, *, opening: bool, now: datetime) -> tuple[int, float]:
    """Ingest every meter's readings of ``days`` in 100k-row batches grouped by meter (as
    NB-IoT meters upload a day's frozen values), one committed transaction each."""
    per_meter = len(days) + opening
    step = max(1, BATCH // per_meter)
    inserted = 0
    started = time.perf_counter()
    for first in range(1, count + 1, step):
        rows = [r for meter in range(first, min(first + step, count + 1)) for r in meter_readings(meter, days, opening)]
        async with sessions() as session, session.begin():
            result = await ingest_readings(session, readings=rows, source=SOURCE, now=now, tz=TZ)
        assert not result.rejected, result.rejected[:3]
        inserted += result.inserted
    return inserted, time.perf_counter() - started


async def load(url: str, count: int) -> None:
    started = time.perf_counter()
    company = await create_households(url, count)
    engine = create_engine(url, pool_size=1, max_overflow=0)
    sessions = session_factory(engine)
    try:
        async with sessions() as session, session.begin():
            await tariffs.save_tariff(session, raw=TARIFF)
            opened = await open_accounts(session, area_id=company, mode=BillingMode.prepaid_station,
                                         tariff_code=str(TARIFF["code"]), now=OPENED, by="基准")
            driver = await raw_connection(session)
            ids = [row["id"] for row in await driver.fetch("SELECT id FROM accounts ORDER BY id")]
            await post_entries(session, [
                EntryIn(account_id=i, kind=EntryKind.recharge, amount_fen=3000 * (1 + i % 7),
                        idempotency_key=f"bench-recharge:{i}") for i in ids], posted_by="基准", posted_at=OPENED)
        print(f"setup: {count:,} households, meters and accounts ({opened.opened:,} opened, recharged) "
              f"in {time.perf_counter() - started:.1f} s", flush=True)
        inserted, elapsed = await ingest_days(sessions, count, FIRST_HALF_DAYS, opening=True,
                                              now=FIRST_AS_OF)
        print(f"setup: first half, {inserted:,} readings ingested in {elapsed:.1f} s", flush=True)
        started = time.perf_counter()
        async with sessions() as session, session.begin():
            first = await settle_prepaid(session, account_ids=ids, as_of=FIRST_AS_OF, tz=TZ)
        print(f"setup: first half settled (settle_prepaid, as_of {FIRST_AS_OF:%m-%d}): {first.charged:,} charged, "
              f"¥{first.charged_fen / 100:,.2f}, in {time.perf_counter() - started:.1f} s", flush=True)
        inserted, elapsed = await ingest_days(sessions, count, SECOND_HALF_DAYS, opening=False,
                                              now=AS_OF)
        print(f"setup: new batch, {inserted:,} readings ingested in {elapsed:.1f} s", flush=True)
    finally:
        await engine.dispose()
    connection = await asyncpg.connect(to_libpq_url(url))
    try:
        await connection.execute("VACUUM ANALYZE")
        await connection.execute("CHECKPOINT")
    finally:
        await connection.close()


# --------------------------------------------------------------------------- the two sides



def instrument() -> None:
    settlement.usage_between = timed("usage (usage_between)", settlement.usage_between)  # type: ignore[attr-defined,assignment]
    settlement.post_entries = timed("ledger (post_entries)", settlement.post_entries)  # type: ignore[attr-defined,assignment]



async def _timed_transaction(url: str, work: Callable[[AsyncSession, list[int]], Awaitable[int]]) -> tuple[float, int]:
    """Time ``work(session, account_ids)`` in one committed transaction on ``url``, the
    account ids read first (untimed); returns the seconds and what ``work`` counted."""
    engine = create_engine(url, pool_size=1, max_overflow=0)
    sessions = session_factory(engine)
    try:
        async with sessions() as session:
            ids = [row[0] for row in await (await raw_connection(session)).fetch("SELECT id FROM accounts ORDER BY id")]
        gc.collect()
        started = time.perf_counter()
        async with sessions() as session, session.begin():
            counted = await work(session, ids)
        elapsed = time.perf_counter() - started
    finally:
        await engine.dispose()
    return elapsed, counted


async def run_ours(url: str) -> tuple[float, int]:
    async def ours(session: AsyncSession, ids: list[int]) -> int:
        return (await settle_prepaid(session, account_ids=ids, as_of=AS_OF, tz=TZ)).charged

    return await _timed_transaction(url, ours)


# $1 account ids, $2 as_of, $3 cycle start, $4 cycle end (exclusive), $5 zone
_BOUND_LOCK = """
SELECT count(*) FROM (
    SELECT id FROM accounts WHERE id = ANY($1::bigint[]) AND status = 'open' AND mode = 'prepaid_station'
    ORDER BY id FOR UPDATE
) locked
"""
_BOUND_PRICE = f"""
CREATE TEMP TABLE bound_settle ON COMMIT DROP AS
WITH acc AS (
    SELECT a.id AS account_id, a.household_id, a.tariff_code, a.balance_fen, a.alert_threshold_fen,
           a.close_threshold_fen, a.grace_fen,
           greatest($3::date::timestamp AT TIME ZONE $5, a.opened_at) AS start_at,
           least($4::date::timestamp AT TIME ZONE $5, $2::timestamptz) AS end_at,
           $4::date::timestamp AT TIME ZONE $5 <= $2::timestamptz AS ended
    FROM accounts a
    WHERE a.id = ANY($1::bigint[]) AND a.status = 'open' AND a.mode = 'prepaid_station'
), windows AS (
    SELECT row_number() OVER () AS ord, acc.account_id, ma.meter_id,
           greatest(ma.valid_from, acc.start_at) AS start_at, least(coalesce(ma.valid_to, acc.end_at), acc.end_at) AS end_at
    FROM acc JOIN meter_assignments ma ON ma.household_id = acc.household_id
        AND ma.valid_from < acc.end_at AND (ma.valid_to IS NULL OR ma.valid_to > acc.start_at)
), {window_usage_ctes("windows")},
volumes AS (
    SELECT w.account_id, sum(u.usage_m3) AS volume
    FROM windows w JOIN walk_usage u USING (ord)
    GROUP BY w.account_id
), tariff AS (
    SELECT DISTINCT ON (code) code, rules FROM tariffs WHERE valid_from <= $3::date ORDER BY code, valid_from DESC
), tiers AS (
    SELECT t.code, l.tier, coalesce(l.lower_m3, 0) AS lower_m3, l.upper_m3
    FROM tariff t CROSS JOIN LATERAL (
        SELECT k.tier, lag(k.upper_m3) OVER (ORDER BY k.tier) AS lower_m3, k.upper_m3
        FROM (SELECT x.tier, x.upper::numeric AS upper_m3
              FROM jsonb_array_elements_text(t.rules -> 'tier_limits') WITH ORDINALITY AS x(upper, tier)
              UNION ALL SELECT jsonb_array_length(t.rules -> 'tier_limits') + 1, NULL) k
    ) l
), prices AS (
    SELECT t.code, p.tier, p.price::numeric AS price
    FROM tariff t CROSS JOIN jsonb_array_elements(t.rules -> 'components') c
    CROSS JOIN jsonb_array_elements_text(c -> 'prices') WITH ORDINALITY AS p(price, tier)
), settled AS (
    SELECT acc.*, coalesce(v.volume, 0) AS volume
    FROM acc LEFT JOIN volumes v USING (account_id)
), priced AS (
    SELECT s.account_id, sum(round(part.m3 * p.price * 100))::bigint AS total_fen
    FROM settled s
    JOIN tiers ti ON ti.code = s.tariff_code
    CROSS JOIN LATERAL (SELECT least(s.volume, coalesce(ti.upper_m3, s.volume)) - ti.lower_m3 AS m3) part
    JOIN prices p ON p.code = s.tariff_code AND p.tier = ti.tier
    WHERE part.m3 > 0
    GROUP BY s.account_id
)
SELECT s.*, coalesce(pr.total_fen, 0) AS total_fen, coalesce(c.charged_fen, 0) AS charged_fen,
       coalesce(c.entries, 0) AS entries
FROM settled s LEFT JOIN priced pr USING (account_id)
LEFT JOIN prepaid_cycles c ON c.account_id = s.account_id AND c.cycle_start = $3::date
"""
_BOUND_ENTRIES = """
INSERT INTO ledger_entries (account_id, kind, amount_fen, balance_after_fen, ref, idempotency_key, cycle_start,
                            volume_m3, note, posted_by, posted_at)
SELECT account_id,
       CASE WHEN total_fen > charged_fen AND NOT (ended AND entries > 0) THEN 'charge' ELSE 'adjustment' END,
       charged_fen - total_fen, balance_fen + charged_fen - total_fen, 'cycle:' || $1::date,
       'prepaid:' || account_id || ':' || $1::date || ':' || (entries + 1), $1::date, volume, '', '系统结算', now()
FROM bound_settle WHERE total_fen <> charged_fen
ORDER BY account_id
"""
_BOUND_ACCOUNTS = """
UPDATE accounts a
SET balance_fen = s.balance_fen + s.charged_fen - s.total_fen,
    alert_state = CASE WHEN s.total_fen = s.charged_fen THEN a.alert_state
                       WHEN s.balance_fen + s.charged_fen - s.total_fen <= s.close_threshold_fen - s.grace_fen THEN 'close'
                       WHEN s.balance_fen + s.charged_fen - s.total_fen <= s.alert_threshold_fen THEN 'alert'
                       ELSE 'normal' END,
    settled_to = greatest(coalesce(a.settled_to, $1), $1)
FROM bound_settle s WHERE a.id = s.account_id
"""
_BOUND_CYCLES = """
INSERT INTO prepaid_cycles (account_id, cycle_start, cycle_end, volume_m3, charged_fen, settled_to, entries)
SELECT account_id, $1::date, $2::date, volume, total_fen, end_at, entries + (total_fen <> charged_fen)::int
FROM bound_settle
ON CONFLICT (account_id, cycle_start) DO UPDATE
SET volume_m3 = excluded.volume_m3, charged_fen = excluded.charged_fen, settled_to = excluded.settled_to,
    entries = excluded.entries
"""


async def run_bound(url: str) -> tuple[float, int]:
    async def bound(session: AsyncSession, ids: list[int]) -> int:
        driver = await raw_connection(session)
        await driver.fetchval(_BOUND_LOCK, ids)
        await driver.execute(_BOUND_PRICE, ids, AS_OF, CYCLE_START, CYCLE_END, TZ_NAME)
        status = await driver.execute(_BOUND_ENTRIES, CYCLE_START)
        await driver.execute(_BOUND_ACCOUNTS, AS_OF)
        await driver.execute(_BOUND_CYCLES, CYCLE_START, CYCLE_END)
        return int(status.split()[-1])

    return await _timed_transaction(url, bound)


# --------------------------------------------------------------------------- verification

_COMPARED = {
    "entries of the run": """
        SELECT account_id, kind, amount_fen, balance_after_fen, ref, idempotency_key, cycle_start, volume_m3, posted_by
        FROM ledger_entries WHERE id > $1 ORDER BY account_id, id""",
    "accounts": "SELECT id, balance_fen, alert_state, settled_to FROM accounts ORDER BY id",
    "cycles": """SELECT account_id, cycle_start, cycle_end, volume_m3, charged_fen, settled_to, entries
                 FROM prepaid_cycles ORDER BY account_id, cycle_start""",
}


async def fetch_all(url: str, last_entry: int) -> dict[str, list[tuple[Any, ...]]]:
    connection = await asyncpg.connect(to_libpq_url(url))
    try:
        return {name: [tuple(row) for row in await connection.fetch(query, *([last_entry] if "$1" in query else []))]
                for name, query in _COMPARED.items()}
    finally:
        await connection.close()


async def verify(ours_url: str, bound_url: str, last_entry: int) -> int:
    ours, bound = await fetch_all(ours_url, last_entry), await fetch_all(bound_url, last_entry)
    for name in _COMPARED:
        if ours[name] != bound[name]:
            pairs = [(a, b) for a, b in zip(ours[name], bound[name], strict=False) if a != b]
            raise SystemExit(f"MISMATCH in {name}: ours {len(ours[name]):,} rows, bound {len(bound[name]):,}; "
                             f"first differences: {pairs[:3]}")
    return len(ours["entries of the run"])


async def base_facts(url: str) -> tuple[int, int, int]:
    connection = await asyncpg.connect(to_libpq_url(url))
    try:
        row = await connection.fetchrow(
            "SELECT (SELECT coalesce(max(id), 0) FROM ledger_entries) AS last_entry, "
            "(SELECT count(*) FROM readings) AS readings, "
            "(SELECT count(*) FROM accounts) AS accounts")
        return row["last_entry"], row["readings"], row["accounts"]
    finally:
        await connection.close()


def copy_database(server: str, base: str, name: str) -> str:
    run_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
              f'CREATE DATABASE "{name}" TEMPLATE "{base}" STRATEGY FILE_COPY')
    return with_database(server, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3, help="ours/bound pairs, alternating, on fresh copies")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="shuiwu-bench-settlement-"))
    try:
        server = start_embedded(workdir / "pgdata")
        try:
            run_admin(server, 'CREATE DATABASE "settle_base"')
            base = with_database(server, "settle_base")
            migrate(base)
            asyncio.run(load(base, args.accounts))
            last_entry, readings, accounts = asyncio.run(base_facts(base))
            print(f"data: {accounts:,} prepaid_station accounts, {readings:,} readings; "
                  f"settling 1–28 November on top of 1–15 settled", flush=True)
            instrument()
            ours_times: list[float] = []
            bound_times: list[float] = []
            for run in range(args.runs):
                started = time.perf_counter()
                ours_url = copy_database(server, "settle_base", "settle_ours")
                bound_url = copy_database(server, "settle_base", "settle_bound")
                copied = time.perf_counter() - started
                elapsed, charged = asyncio.run(run_ours(ours_url))
                ours_times.append(elapsed)
                bound_elapsed, bound_entries = asyncio.run(run_bound(bound_url))
                bound_times.append(bound_elapsed)
                entries = asyncio.run(verify(ours_url, bound_url, last_entry))
                print(f"run {run + 1}: ours {elapsed:6.2f} s ({charged:,} charged), bound {bound_elapsed:6.2f} s "
                      f"({bound_entries:,} entries); identical: {entries:,} entries, balances, alert states, "
                      f"cycles (copies made in {copied:.1f} s)", flush=True)
            ours_time, bound_time = statistics.median(ours_times), statistics.median(bound_times)
            ratio = ours_time / bound_time
            print(f"settle_prepaid, {accounts:,} accounts, one transaction   {ours_time:6.2f} s "
                  f"({accounts / ours_time:,.0f} accounts/s), median of {args.runs}")
            print(f"hand-written SQL bound, same entries                {bound_time:6.2f} s "
                  f"({accounts / bound_time:,.0f} accounts/s), median of {args.runs}")
            total = sum(ours_times)
            parts = ", ".join(f"{name} {seconds / total:.0%}" for name, seconds in spent.items())
            print(f"    where ours went: {parts}, the rest (lock, windows, pricing, cycles, settled_to, commit) "
                  f"{(total - sum(spent.values())) / total:.0%}")
            print(f"ours / bound = {ratio:.2f} (goal <= {GOAL:.2f})")
        finally:
            stop_embedded()
        size = f"{args.accounts // 1000}k" if args.accounts % 1000 == 0 else f"{args.accounts:,}"
        print(f"headline: prepaid settlement of {size} accounts vs hand-written SQL "
              f"ratio={ratio:.2f} goal=<={GOAL:.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
