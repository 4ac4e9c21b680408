"""Postpaid billing run: ``run_billing`` of a month for 200k households vs a hand-written
SQL bound that writes the same bills, bill lines, ledger entries, balances and billing
run row, same run (issue 17, "Performance").

Data: ``--households`` households (default 200,000), each with one meter and an open
``postpaid`` account on one month-cycle 3-tier tariff (tiers at 12 and 25 m³; water,
水资源费 and sewage; no minimum charge, no household-size rule, no sewage coefficient),
opened 1 November 2025. Readings go in through ``ingest_readings`` a month at a time
(100k-row batches, one committed transaction each), as a utility receives them: the
opening reading, then one reading per meter on the last or second-last day of each month
from November 2025 to November 2026 (13), growing by 4–51 m³ a month so every tier is
used. No meter has an alarm and every meter has a reading in each period's last 3 days,
so reading review holds nothing (checked).

The twelve periods 2025-11 … 2026-10 are billed first in the base database by the bound's
own SQL (one transaction a period; setup only, the foreign keys' triggers are skipped
there), so both sides start from the same 12 bills per account. The base is then
copied (``CREATE DATABASE … TEMPLATE``), and on one copy each, through the app's engine,
2026-11 is billed:

- **ours**: ``backend.billing.bills.run_billing(session, period=2026-11-01, now=…, by=…,
  tz=…)`` in one transaction, committed;
- **bound**: a hand-written script in one transaction, committed: the review's own
  statement (``review.prepare_review``: the hold rule is review's, and ours runs it
  too), a lock of the billable accounts in id order, then ``bound_billed`` (a temp table:
  per account the measured usage from its opening to the period end, with the one usage
  rule's text, ``backend.readings.usage.window_usage_ctes``; the volume of its earlier
  live bills; the previous bill's end readings; the period's end readings; the tariff
  version in force), ``bound_lines`` (per component and tier, each line rounded half-up
  to the fen), and one statement of data-modifying CTEs writing the billing run, the
  ledger entries, the bills, their lines and the balances. It skips what the bench's
  data does not need: tariff versions changing inside the period (proration), the
  minimum monthly charge, household sizes, the sewage coefficient, bimonthly areas and
  scopes, credit already on an account (ours' ``allocate_credit``), ``bill.issued``.

Then both copies are compared row by row on what must be equal, surrogate ids aside
(bills by account and period, with their lines; the run's ledger entries; every
account's balance; the run row; the review rows). Any difference fails the bench.
The pair runs ``--runs`` times (alternating, fresh copies each time); the ratio is of
the medians. Goal (issue 17): ours <= 1.5x the bound. The last line is the headline.

With ``--reference`` "ours" is the bound itself: the bench then proves the data, the
bound and the comparison (the ratio is the machine's noise). Where ours spends its time
(``run_billing``'s steps, wrapped by ``bench/_timing.py``) is printed after the medians.

    .venv/bin/python bench/billing.py [--households 200000] [--runs 3] [--reference] [--keep DIR]

Self-contained: embedded PostgreSQL in a temp dir. ``--keep DIR`` keeps the embedded
database in ``DIR`` instead and, when ``DIR`` already holds a base of the same
``--households`` (its ``households`` file), reuses it (migrated to head) rather than
loading it again: the 200k setup (~20 min) can be made once, on a busy machine, and the
timed runs made later on an idle one.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from _timing import spent, timed  # bench/ is the script directory: sys.path[0]
from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing import service as tariffs
from backend.billing.accounts import open_accounts
from backend.billing.models import BillingMode
from backend.billing.review import NOT_HELD_SQL, period_bounds, prepare_review
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

GOAL = 1.5
TZ_NAME = "Asia/Shanghai"
TZ = ZoneInfo(TZ_NAME)
OPENED = datetime(2025, 11, 1, tzinfo=TZ)
MONTHS = [date(2025, 11 + i, 1) if i < 2 else date(2026, i - 1, 1) for i in range(13)]  # 2025-11 … 2026-11
PERIOD = MONTHS[-1]  # the timed period; the twelve before it are billed in the base
BY = "基准出账"
BATCH = 100_000
BUILDING_HOUSEHOLDS = 1000
TARIFF = {
    "code": "BENCH-POST", "name": "基准后付费水价", "customer_type": "residential", "valid_from": date(2025, 1, 1),
    "cycle": "month", "tier_limits": [12, 25],
    "components": [
        {"code": "water", "name": "自来水费", "prices": ["2.9137", "3.8763", "5.7621"]},
        {"code": "resource", "name": "水资源费", "prices": ["0.5725", "0.5725", "1.1450"]},
        {"code": "sewage", "name": "污水处理费", "prices": ["1.3650", "1.3650", "1.3650"]},
    ],
}
SOURCE = "bench"


def _next_month(first: date) -> date:
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def issued_now(period: date) -> datetime:
    """When the period is billed: 09:00 on the next month's first day."""
    return datetime.combine(_next_month(period), datetime.min.time(), tzinfo=TZ).replace(hour=9)


# --------------------------------------------------------------------------- data


def monthly_use(meter: int, month: int) -> Decimal:
    """m³ meter ``meter`` uses in month ``month`` (0-based): 4–51 by household and month,
    so bills fall in each of the three tiers, with a four-place wobble."""
    whole = 4 + meter % 37 + (meter * 7 + month * 13) % 11
    return Decimal(whole) + Decimal((meter * 31 + month * 17) % 10000) / 10000


def start_total(meter: int) -> Decimal:
    return Decimal(100 + meter % 1000)


def month_reading_at(month: int, meter: int) -> datetime:
    """The month's reading: 20:mm on its last or second-last day (both within the review's
    last 3 days)."""
    last_day = _next_month(MONTHS[month]) - timedelta(days=1 + meter % 2)
    return datetime(last_day.year, last_day.month, last_day.day, 20, meter % 60, tzinfo=TZ)


def month_rows(meters: range, month: int | None) -> list[ReadingIn]:
    """The opening readings (``month`` None) or month ``month``'s readings of ``meters``."""
    if month is None:
        return [ReadingIn(meter_id=m, read_at=OPENED, total_m3=start_total(m), quality=ReadingQuality.manual)
                for m in meters]
    rows = []
    for meter in meters:
        total = start_total(meter) + sum((monthly_use(meter, k) for k in range(month + 1)), Decimal(0))
        rows.append(ReadingIn(meter_id=meter, read_at=month_reading_at(month, meter), total_m3=total))
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
                   ($1::bigint[])[1 + (g - 1) / {BUILDING_HOUSEHOLDS}], DATE '2025-10-01', 'installed', 100 + g % 1000
            FROM generate_series(1, $2) g
        """, building_ids, count)
        # Household n is served by meter n (both numbered from 1 in a fresh database).
        await connection.execute("""
            INSERT INTO meter_assignments (meter_id, household_id, valid_from, start_reading)
            SELECT m.id, h.id, $1, m.initial_reading
            FROM meters m JOIN households h ON h.account_no = 'B' || lpad(m.id::text, 8, '0')
        """, OPENED)
        # The alarm job's usage baselines, as a utility running for months has them (see
        # bench/README.md, settlement). A meter read once a month puts the month's use on
        # one day of the rollup: the baseline is that of such a meter, so no reading of
        # the bench is a high-use alarm and review holds nothing.
        await connection.execute(
            "INSERT INTO meter_usage_baselines (meter_id, day, average_m3) SELECT id, DATE '2025-10-31', 100 FROM meters")
        await connection.execute("ANALYZE")
        return int(company)
    finally:
        await connection.close()


async def ingest_month(sessions: Any, count: int, month: int | None) -> tuple[int, float]:
    """Ingest every meter's reading of ``month`` (None: the opening) in 100k-row batches,
    one committed transaction each, received the morning after the last reading."""
    now = OPENED + timedelta(hours=1) if month is None else datetime.combine(
        _next_month(MONTHS[month]), datetime.min.time(), tzinfo=TZ).replace(hour=6)
    inserted = 0
    started = time.perf_counter()
    for first in range(1, count + 1, BATCH):
        rows = month_rows(range(first, min(first + BATCH, count + 1)), month)
        async with sessions() as session, session.begin():
            result = await ingest_readings(session, readings=rows, source=SOURCE, now=now, tz=TZ)
        assert not result.rejected, result.rejected[:3]
        inserted += result.inserted
    return inserted, time.perf_counter() - started


async def load(url: str, count: int) -> None:
    started = time.perf_counter()
    company = await create_households(url, count)
    # Two connections: ours reads the next chunk's usage on a second one (bills.py's
    # _UsageReadAhead); the bound uses one.
    engine = create_engine(url, pool_size=2, max_overflow=0)
    sessions = session_factory(engine)
    try:
        async with sessions() as session, session.begin():
            await tariffs.save_tariff(session, raw=TARIFF)
            opened = await open_accounts(session, area_id=company, mode=BillingMode.postpaid,
                                         tariff_code=str(TARIFF["code"]), now=OPENED, by="基准")
        print(f"setup: {count:,} households, meters and postpaid accounts ({opened.opened:,} opened) "
              f"in {time.perf_counter() - started:.1f} s", flush=True)
        inserted, ingest_seconds = 0, 0.0
        for month in [None, *range(len(MONTHS))]:
            rows, elapsed = await ingest_month(sessions, count, month)
            inserted += rows
            ingest_seconds += elapsed
        print(f"setup: {inserted:,} readings ingested ({len(MONTHS)} months and the opening) in "
              f"{ingest_seconds:.1f} s ({inserted / ingest_seconds:,.0f} readings/s)", flush=True)
        # Nothing has analyzed the readings and rollup ingest just wrote: the usage walk's
        # plan would be a nested loop over them (minutes instead of seconds at 5k). VACUUM
        # too: without a visibility map each period's review walks the readings' heap
        # (18 minutes a period at 200k, measured; the timed runs start vacuumed anyway).
        vacuuming = await asyncpg.connect(to_libpq_url(url))
        try:
            await vacuuming.execute("VACUUM ANALYZE")
        finally:
            await vacuuming.close()
        started = time.perf_counter()
        seconds: list[float] = []
        for period in MONTHS[:-1]:
            async with sessions() as session, session.begin():
                driver = await raw_connection(session)
                # Setup only: the foreign keys' triggers (half of the writing statement's
                # time) are skipped; the rows satisfy them, as the timed runs check.
                await driver.execute("SET LOCAL session_replication_role = replica")
                await bound_run(session, period)
            seconds.append(time.perf_counter() - started - sum(seconds))
            # The bills' statistics and visibility as they grow (review's covered-period
            # check reads them: ANALYZE alone left the sixth period's review at 8+ minutes
            # at 200k, the heap walked without a visibility map).
            vacuuming = await asyncpg.connect(to_libpq_url(url))
            try:
                await vacuuming.execute("VACUUM ANALYZE bills, bill_lines, ledger_entries, accounts, reading_reviews")
            finally:
                await vacuuming.close()
        print(f"setup: {len(MONTHS) - 1} earlier periods billed by the bound's SQL in {sum(seconds):.1f} s "
              f"({' '.join(f'{t:.1f}' for t in seconds)})", flush=True)
    finally:
        await engine.dispose()
    connection = await asyncpg.connect(to_libpq_url(url))
    try:
        alarms = await connection.fetchval("SELECT count(*) FROM alarms")
        held = await connection.fetchval("SELECT count(*) FROM reading_reviews")
        estimated = await connection.fetchval("SELECT count(*) FROM readings WHERE quality = 'estimated'")
        if alarms or held or estimated:
            raise SystemExit(f"data: {alarms} alarms, {held} review rows, {estimated} estimates: the bench "
                             "expects none (nothing held for review)")
        started = time.perf_counter()
        await connection.execute("VACUUM ANALYZE")
        await connection.execute("CHECKPOINT")
        print(f"setup: VACUUM ANALYZE and CHECKPOINT in {time.perf_counter() - started:.1f} s", flush=True)
    finally:
        await connection.close()


# --------------------------------------------------------------------------- the bound

# Parameters: $1 the period (its first day); bound_billed: $2 the period end, $3 now, $4
# the utility's zone; the writing statement: $2 the period start, $3 its end, $4 now, $5
# issued by.
_HELD = NOT_HELD_SQL.replace(":period", "$1::date")
_BILLABLE = f"""
    a.status = 'open' AND a.mode = 'postpaid' AND {_HELD.replace("acc.id", "a.id")}
    AND NOT EXISTS (SELECT FROM bills b WHERE b.account_id = a.id AND b.period = $1::date AND b.status <> 'voided')
"""
_BOUND_LOCK = f"""
SELECT count(*) FROM (SELECT a.id FROM accounts a WHERE {_BILLABLE} ORDER BY a.id FOR UPDATE) locked
"""
# Per billable account, everything its bill needs but the lines. Each CTE is one step of
# the rule, named by what it does.
_BOUND_BILLED = f"""
CREATE TEMP TABLE bound_billed ON COMMIT DROP AS
WITH acc AS (  -- the billable accounts: open, postpaid, not held, not billed for the period
    SELECT a.id AS account_id, a.household_id, a.tariff_code, a.persons, a.balance_fen, a.opened_at,
           h.customer_type
    FROM accounts a JOIN households h ON h.id = a.household_id
    WHERE {_BILLABLE} AND a.opened_at < $2
), windows AS (  -- the household's meters, each within its assignment, from the opening to the period end
    SELECT row_number() OVER () AS ord, acc.account_id, ma.meter_id,
           greatest(ma.valid_from, acc.opened_at) AS start_at, least(coalesce(ma.valid_to, $2), $2) AS end_at
    FROM acc JOIN meter_assignments ma ON ma.household_id = acc.household_id
        AND ma.valid_from < $2 AND (ma.valid_to IS NULL OR ma.valid_to > acc.opened_at)
), {window_usage_ctes("windows")},
measured AS (  -- usage from the opening to the period end
    SELECT w.account_id, sum(u.usage_m3) AS measured_m3
    FROM windows w JOIN walk_usage u USING (ord) GROUP BY w.account_id
), tariff AS (  -- the version in force on the period's first day (no change inside the period)
    SELECT DISTINCT ON (code) code, valid_from, rules,
           CASE rules ->> 'cycle' WHEN 'year' THEN date_trunc('year', $1::date)::date ELSE $1::date END AS cycle_start
    FROM tariffs WHERE valid_from <= $1::date ORDER BY code, valid_from DESC
), earlier AS (  -- the account's earlier live bills: volume billed, this cycle's part, the latest's end readings
    SELECT acc.account_id, e.billed_m3, e.prior_cycle_m3, e.start_readings, coalesce(v.of_period, 0) AS of_period
    FROM acc JOIN tariff t ON t.code = acc.tariff_code
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(b.volume_m3), 0) AS billed_m3,
               coalesce(sum(b.cycle_volume_m3) FILTER (WHERE b.cycle_start = t.cycle_start), 0) AS prior_cycle_m3,
               coalesce((array_agg(b.end_readings ORDER BY b.period DESC))[1], '[]'::jsonb) AS start_readings
        FROM bills b WHERE b.account_id = acc.account_id AND b.status <> 'voided' AND b.period < $1
    ) e
    LEFT JOIN (  -- the period's voided bills: the entry key's number counts them
        SELECT b.account_id, count(*) AS of_period FROM bills b WHERE b.period = $1 GROUP BY b.account_id
    ) v ON v.account_id = acc.account_id
), ends AS (  -- each meter serving the household at the period end: its last reading up to it
    SELECT acc.account_id,
           jsonb_agg(jsonb_build_object('meter_id', ma.meter_id, 'read_at', r.read_at, 'total_m3', r.total_m3::text)
                     ORDER BY ma.meter_id) AS end_readings
    FROM acc JOIN meter_assignments ma ON ma.household_id = acc.household_id AND ma.valid_from < $2
        AND (ma.valid_to IS NULL OR ma.valid_to >= $2)
    CROSS JOIN LATERAL (SELECT r.read_at, r.total_m3 FROM readings r WHERE r.meter_id = ma.meter_id
                        AND r.read_at <= $2 ORDER BY r.read_at DESC LIMIT 1) r
    GROUP BY acc.account_id
), late_fee AS (  -- the customer type's late-fee rule, else the defaults
    SELECT acc.account_id,
           CASE WHEN r.customer_type IS NULL THEN 0.0005 WHEN r.enabled THEN r.daily_rate ELSE 0 END AS rate,
           coalesce(r.grace_days, 15) AS grace_days,
           CASE WHEN r.customer_type IS NULL OR r.enabled THEN coalesce(r.cap_percent, 100) ELSE 0 END AS cap_percent
    FROM acc LEFT JOIN late_fee_rules r ON r.customer_type = acc.customer_type
)
SELECT nextval('bills_id_seq') AS bill_id, nextval('ledger_entries_id_seq') AS entry_id,
       acc.account_id, acc.household_id, acc.tariff_code, acc.persons, acc.balance_fen,
       t.valid_from AS tariff_from, t.cycle_start,
       coalesce(m.measured_m3, 0) AS measured_m3, greatest(coalesce(m.measured_m3, 0) - e.billed_m3, 0) AS volume_m3,
       e.prior_cycle_m3, e.start_readings, e.of_period, coalesce(en.end_readings, '[]'::jsonb) AS end_readings,
       lf.rate AS late_fee_rate, lf.cap_percent,
       ($3::timestamptz AT TIME ZONE $4)::date + lf.grace_days AS due_date
FROM acc JOIN tariff t ON t.code = acc.tariff_code
JOIN earlier e USING (account_id) JOIN late_fee lf USING (account_id)
LEFT JOIN measured m USING (account_id) LEFT JOIN ends en USING (account_id)
"""
# The lines: per component (in the tariff's order) and tier (ascending), the part of the
# volume after the cycle's prior volume that falls in the tier, each line rounded half-up.
_BOUND_LINES = """
CREATE TEMP TABLE bound_lines ON COMMIT DROP AS
WITH tiers AS (
    SELECT t.code, k.tier, coalesce(lag(k.upper_m3) OVER (PARTITION BY t.code ORDER BY k.tier), 0) AS lower_m3,
           k.upper_m3
    FROM (SELECT DISTINCT ON (code) code, rules FROM tariffs WHERE valid_from <= $1::date
          ORDER BY code, valid_from DESC) t
    CROSS JOIN LATERAL (
        SELECT x.tier, x.upper::numeric AS upper_m3
        FROM jsonb_array_elements_text(t.rules -> 'tier_limits') WITH ORDINALITY AS x(upper, tier)
        UNION ALL SELECT jsonb_array_length(t.rules -> 'tier_limits') + 1, NULL
    ) k
), prices AS (
    SELECT t.code, c.component_no, c.value ->> 'code' AS component, p.tier, p.price::numeric AS price
    FROM (SELECT DISTINCT ON (code) code, rules FROM tariffs WHERE valid_from <= $1::date
          ORDER BY code, valid_from DESC) t
    CROSS JOIN jsonb_array_elements(t.rules -> 'components') WITH ORDINALITY AS c(value, component_no)
    CROSS JOIN jsonb_array_elements_text(c.value -> 'prices') WITH ORDINALITY AS p(price, tier)
), parts AS (
    SELECT b.bill_id, b.account_id, b.tariff_from, b.cycle_start, ti.code, ti.tier,
           least(b.prior_cycle_m3 + b.volume_m3, coalesce(ti.upper_m3, b.prior_cycle_m3 + b.volume_m3))
               - greatest(b.prior_cycle_m3, ti.lower_m3) AS m3
    FROM bound_billed b JOIN tiers ti ON ti.code = b.tariff_code
)
SELECT pa.bill_id, pa.account_id, pa.cycle_start,
       row_number() OVER (PARTITION BY pa.bill_id ORDER BY pr.component_no, pa.tier) AS line_no,
       pr.component, pa.tier, pa.m3 AS volume_m3, pr.price, round(pa.m3 * pr.price * 100)::bigint AS amount_fen,
       pa.tariff_from AS valid_from
FROM parts pa JOIN prices pr ON pr.code = pa.code AND pr.tier = pa.tier
WHERE pa.m3 > 0
"""
# Everything the run writes, in one statement: the run row, the entries, the bills, their
# lines and the balances (ids drawn in bound_billed, so the entry's ref and the bill's
# entry_id need no round trip).
_BOUND_WRITE = """
WITH amounts AS (
    SELECT b.*, coalesce(l.amount_fen, 0) AS amount_fen
    FROM bound_billed b LEFT JOIN (SELECT bill_id, sum(amount_fen) AS amount_fen FROM bound_lines GROUP BY bill_id) l
        USING (bill_id)
), looked_at AS (
    SELECT count(*) AS accounts,
           count(*) FILTER (WHERE NOT ({held})) AS held,
           count(*) FILTER (WHERE EXISTS (SELECT FROM bills b WHERE b.account_id = acc.id AND b.period = $1::date
                                           AND b.status <> 'voided')) AS already_billed
    FROM accounts acc WHERE acc.status = 'open' AND acc.mode = 'postpaid'
), run AS (
    INSERT INTO billing_runs (period, area_id, status, started_by, started_at, finished_at, accounts, issued, held,
                              already_billed, skipped, amount_fen)
    SELECT $1::date, NULL, 'finished', $5, $4, $4, l.accounts, (SELECT count(*) FROM amounts), l.held,
           l.already_billed, l.accounts - l.held - l.already_billed - (SELECT count(*) FROM amounts),
           (SELECT coalesce(sum(amount_fen), 0) FROM amounts)
    FROM looked_at l
    RETURNING id
), entries AS (
    INSERT INTO ledger_entries (id, account_id, kind, amount_fen, balance_after_fen, ref, idempotency_key,
                                cycle_start, volume_m3, note, posted_by, posted_at)
    SELECT entry_id, account_id, 'bill', -amount_fen, balance_fen - amount_fen, 'bill:' || bill_id,
           'bill:' || account_id || ':' || $1::date || ':' || (of_period + 1), NULL, NULL, '', $5, $4
    FROM amounts WHERE amount_fen > 0 ORDER BY account_id  -- a bill of ¥0 has no entry (and is paid)
), bills AS (
    INSERT INTO bills (id, account_id, household_id, period, months, kind, status, run_id, period_start, period_end,
                       tariff_code, persons, start_readings, end_readings, measured_m3, volume_m3, cycle_start,
                       prior_cycle_m3, amount_fen, due_date, late_fee_rate, late_fee_cap_fen, entry_id, issued_at,
                       issued_by, paid_at, cycle_volume_m3)
    SELECT bill_id, account_id, household_id, $1::date, 1, 'regular', CASE WHEN amount_fen = 0 THEN 'paid' ELSE 'open' END,
           (SELECT id FROM run), $2, $3,
           tariff_code, persons, start_readings, end_readings, measured_m3, volume_m3, cycle_start, prior_cycle_m3,
           amount_fen, due_date, late_fee_rate, round(amount_fen * cap_percent / 100.0),
           CASE WHEN amount_fen > 0 THEN entry_id END, $4, $5, CASE WHEN amount_fen = 0 THEN $4 END, volume_m3
    FROM amounts ORDER BY account_id
), lines AS (
    INSERT INTO bill_lines (bill_id, line_no, component, tier, volume_m3, price, amount_fen, valid_from, cycle_start)
    SELECT bill_id, line_no, component, tier, volume_m3, price, amount_fen, valid_from, cycle_start FROM bound_lines
), balances AS (
    UPDATE accounts a SET balance_fen = s.balance_fen - s.amount_fen
    FROM amounts s WHERE a.id = s.account_id AND s.amount_fen > 0
)
SELECT count(*) FROM amounts
""".replace("{held}", _HELD)


async def bound_run(session: AsyncSession, period: date) -> int:
    """The bound's script for ``period`` in the caller's transaction; returns the bills
    written."""
    start, end = period_bounds(period, TZ)
    now = issued_now(period)
    await prepare_review(session, period=period, now=now, tz=TZ)
    driver = await raw_connection(session)
    # The readings' instants in the bills' JSON in the utility's zone, as ours writes them.
    await driver.execute(f"SET LOCAL TimeZone = '{TZ_NAME}'")
    await driver.fetchval(_BOUND_LOCK, period)
    await driver.execute(_BOUND_BILLED, period, end, now, TZ_NAME)
    await driver.execute(_BOUND_LINES, period)
    return int(await driver.fetchval(_BOUND_WRITE, period, start, end, now, BY))


# --------------------------------------------------------------------------- the two sides


async def _timed_transaction(url: str, work: Callable[[AsyncSession], Awaitable[int]]) -> tuple[float, int]:
    """Time ``work(session)`` in one committed transaction on ``url``; returns the seconds
    and what ``work`` counted."""
    # Two connections: ours reads the next chunk's usage on a second one (bills.py's
    # _UsageReadAhead); the bound uses one.
    engine = create_engine(url, pool_size=2, max_overflow=0)
    sessions = session_factory(engine)
    try:
        async with sessions() as session:  # connect before the clock starts
            await (await raw_connection(session)).fetchval("SELECT 1")
        gc.collect()
        started = time.perf_counter()
        async with sessions() as session, session.begin():
            counted = await work(session)
        elapsed = time.perf_counter() - started
    finally:
        await engine.dispose()
    return elapsed, counted


def ours_function() -> Callable[..., Awaitable[Any]]:
    """``backend.billing.bills.run_billing``, its steps instrumented (``_timing``): where
    ours spends its time is printed beside the figures. The bound's own call of
    ``prepare_review`` is bound at import, so it is not counted."""
    from backend.billing import bills, review

    for module, name, label in (
        (review, "prepare_review", "review (prepare, held, billable)"),
        (review, "held_accounts", "review (prepare, held, billable)"),
        (review, "billable_accounts", "review (prepare, held, billable)"),
        (bills, "_lock", "lock"),
        (bills, "_drafts", "drafts"),
        (bills, "household_usage_of_windows", "  of which usage"),
        (bills, "_write", "write"),
        (bills, "post_entries", "  of which ledger (post_entries)"),
        (bills, "allocate_credit", "  of which allocate_credit"),
        (bills, "_emit", "events (bill.issued)"),
    ):
        setattr(module, name, timed(label, getattr(module, name)))
    return bills.run_billing


async def run_ours(url: str, run_billing: Callable[..., Awaitable[Any]] | None) -> tuple[float, int]:
    async def ours(session: AsyncSession) -> int:
        if run_billing is None:
            return await bound_run(session, PERIOD)
        result = await run_billing(session, period=PERIOD, now=issued_now(PERIOD), by=BY, tz=TZ_NAME)
        return int(result.issued)

    return await _timed_transaction(url, ours)


async def run_bound(url: str) -> tuple[float, int]:
    async def bound(session: AsyncSession) -> int:
        return await bound_run(session, PERIOD)

    return await _timed_transaction(url, bound)


# --------------------------------------------------------------------------- verification

# What must be equal, surrogate ids replaced by what they point at. Arguments: the period;
# the entries: it and the last ledger entry before the run; the runs: the last run before.
_COMPARED = {
    "bills of the period": """
        SELECT b.account_id, b.household_id, b.period, b.months, b.kind, b.status, r.period AS run_period,
               b.period_start, b.period_end, b.tariff_code, b.persons, b.start_readings, b.end_readings,
               b.measured_m3, b.volume_m3, b.cycle_start, b.cycle_volume_m3, b.earlier_cycles, b.prior_cycle_m3,
               b.amount_fen, b.principal_paid_fen,
               b.due_date, b.late_fee_rate, b.late_fee_cap_fen, b.late_fee_carried, b.late_fee_posted_fen,
               e.ref = 'bill:' || b.id AS entry_refers_to_bill, e.amount_fen = -b.amount_fen AS entry_is_amount,
               b.issued_at, b.issued_by, b.voided_at, b.reissue_of_id
        FROM bills b LEFT JOIN billing_runs r ON r.id = b.run_id LEFT JOIN ledger_entries e ON e.id = b.entry_id
        WHERE b.period = $1 ORDER BY b.account_id, b.id""",
    "bill lines of the period": """
        SELECT b.account_id, l.line_no, l.component, l.tier, l.volume_m3, l.price, l.amount_fen, l.valid_from,
               l.cycle_start
        FROM bill_lines l JOIN bills b ON b.id = l.bill_id
        WHERE b.period = $1 ORDER BY b.account_id, l.line_no""",
    "ledger entries of the run": """
        SELECT e.account_id, e.kind, e.amount_fen, e.balance_after_fen, e.ref = 'bill:' || b.id AS ref_is_the_bill,
               e.idempotency_key, e.cycle_start, e.volume_m3, e.note, e.posted_by
        FROM ledger_entries e
        LEFT JOIN bills b ON b.account_id = e.account_id AND b.period = $1 AND b.status <> 'voided'
        WHERE e.id > $2 ORDER BY e.account_id, e.id""",
    "accounts": "SELECT id, balance_fen, alert_state, status FROM accounts ORDER BY id",
    "billing runs": """
        SELECT period, area_id, status, started_by, accounts, issued, held, already_billed, skipped, amount_fen, error
        FROM billing_runs WHERE id > $1 ORDER BY id""",
    "reading reviews": "SELECT account_id, period, state, alarm_kinds, missing_reading FROM reading_reviews "
                       "ORDER BY account_id, period",
}


def _readings(value: Any) -> list[tuple[int, datetime, Decimal]]:
    """A bill's readings JSON as parsed values: the same instant and figure compare equal
    whatever the text (zone offset, number or string)."""
    items = json.loads(value) if isinstance(value, str) else value
    return [(int(item["meter_id"]), datetime.fromisoformat(str(item["read_at"])), Decimal(str(item["total_m3"])))
            for item in items]


def _normalized(name: str, row: asyncpg.Record) -> tuple[Any, ...]:
    if name != "bills of the period":
        return tuple(row)
    values = dict(row)
    values["start_readings"] = _readings(values["start_readings"])
    values["end_readings"] = _readings(values["end_readings"])
    return tuple(values.values())


async def fetch_all(url: str, marks: tuple[int, int]) -> dict[str, list[tuple[Any, ...]]]:
    connection = await asyncpg.connect(to_libpq_url(url))
    try:
        await connection.execute("ANALYZE")  # the run's rows, for the queries' plans (after the clock)
        compared: dict[str, list[tuple[Any, ...]]] = {}
        for name, query in _COMPARED.items():
            by_name: dict[str, list[Any]] = {"ledger entries of the run": [PERIOD, marks[0]],
                                             "billing runs": [marks[1]], "accounts": [], "reading reviews": []}
            arguments = by_name.get(name, [PERIOD])
            compared[name] = [_normalized(name, row) for row in await connection.fetch(query, *arguments)]
        return compared
    finally:
        await connection.close()


async def verify(ours_url: str, bound_url: str, marks: tuple[int, int]) -> tuple[int, int]:
    ours, bound = await fetch_all(ours_url, marks), await fetch_all(bound_url, marks)
    for name in _COMPARED:
        if ours[name] != bound[name]:
            pairs = [(a, b) for a, b in zip(ours[name], bound[name], strict=False) if a != b]
            raise SystemExit(f"MISMATCH in {name}: ours {len(ours[name]):,} rows, bound {len(bound[name]):,}; "
                             f"first differences (ours, bound): {pairs[:3]}")
    return len(ours["bills of the period"]), len(ours["bill lines of the period"])


async def base_facts(url: str) -> dict[str, Any]:
    connection = await asyncpg.connect(to_libpq_url(url))
    try:
        row = await connection.fetchrow(
            "SELECT (SELECT coalesce(max(id), 0) FROM ledger_entries) AS last_entry, "
            "(SELECT coalesce(max(id), 0) FROM billing_runs) AS last_run, "
            "(SELECT count(*) FROM readings) AS readings, (SELECT count(*) FROM bills) AS bills, "
            "(SELECT count(*) FROM accounts) AS accounts")
        tiers = await connection.fetch(
            "SELECT tier, count(DISTINCT bill_id) AS bills FROM bill_lines GROUP BY tier ORDER BY tier")
        return {**dict(row), "tiers": {r["tier"]: r["bills"] for r in tiers}}
    finally:
        await connection.close()


def copy_database(server: str, base: str, name: str) -> str:
    run_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
              f'CREATE DATABASE "{name}" TEMPLATE "{base}" STRATEGY FILE_COPY')
    return with_database(server, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--households", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3,
                        help="ours/bound pairs, alternating, on fresh copies (0: build the base only, with --keep)")
    parser.add_argument("--reference", action="store_true",
                        help="run the bound on both sides (proves the data, the bound and the comparison)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep the embedded database in DIR and reuse a base of the same size found there")
    args = parser.parse_args()
    run_billing = None if args.reference else ours_function()
    ours_name = "run_billing" if run_billing is not None else "bound as ours (reference)"
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="shuiwu-bench-billing-"))
    marker = workdir / "households"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        reuse = args.keep is not None and marker.exists() and marker.read_text().strip() == str(args.households)
        server = start_embedded(workdir / "pgdata")
        try:
            base = with_database(server, "bill_base")
            started = time.perf_counter()
            if reuse:
                migrate(base)
                print(f"reusing the base of {args.households:,} households kept in {workdir}", flush=True)
            else:
                marker.unlink(missing_ok=True)
                run_admin(server, 'DROP DATABASE IF EXISTS "bill_base" WITH (FORCE)', 'CREATE DATABASE "bill_base"')
                migrate(base)
                asyncio.run(load(base, args.households))
                if args.keep is not None:
                    marker.write_text(f"{args.households}\n")
            facts = asyncio.run(base_facts(base))
            print(f"data: {facts['accounts']:,} postpaid accounts, {facts['readings']:,} readings, "
                  f"{facts['bills']:,} earlier bills (bills with a line in tier 1/2/3: "
                  f"{', '.join(f'{n:,}' for n in facts['tiers'].values())}); setup {time.perf_counter() - started:.1f} s; "
                  f"billing {PERIOD:%Y-%m}", flush=True)
            if args.runs == 0:
                print("--runs 0: the base is built; no runs, no headline")
                return
            marks = (facts["last_entry"], facts["last_run"])
            ours_times: list[float] = []
            bound_times: list[float] = []
            for run in range(args.runs):
                started = time.perf_counter()
                ours_url = copy_database(server, "bill_base", "bill_ours")
                bound_url = copy_database(server, "bill_base", "bill_bound")
                copied = time.perf_counter() - started
                elapsed, issued = asyncio.run(run_ours(ours_url, run_billing))
                ours_times.append(elapsed)
                bound_elapsed, bound_bills = asyncio.run(run_bound(bound_url))
                bound_times.append(bound_elapsed)
                bills, lines = asyncio.run(verify(ours_url, bound_url, marks))
                print(f"run {run + 1}: ours {elapsed:6.2f} s ({issued:,} bills), bound {bound_elapsed:6.2f} s "
                      f"({bound_bills:,} bills); identical: {bills:,} bills, {lines:,} lines, entries, balances, "
                      f"run row (copies made in {copied:.1f} s; load average {os.getloadavg()[0]:.1f})", flush=True)
            ours_time, bound_time = statistics.median(ours_times), statistics.median(bound_times)
            ratio = ours_time / bound_time
            rate = facts["accounts"] / ours_time
            print(f"{ours_name}, {facts['accounts']:,} bills, one transaction   {ours_time:6.2f} s "
                  f"({rate:,.0f} bills/s), median of {args.runs}")
            print(f"hand-written SQL bound, same rows               {bound_time:6.2f} s "
                  f"({facts['accounts'] / bound_time:,.0f} bills/s), median of {args.runs}")
            print(f"1M households at ours' rate (linear extrapolation from the measured bills/s): "
                  f"{1_000_000 / rate:,.0f} s")
            if spent:
                total = sum(ours_times)
                parts = ", ".join(f"{name.strip()} {seconds / total:.0%}" for name, seconds in spent.items())
                top = sum(seconds for name, seconds in spent.items() if not name.startswith(" "))
                print(f"    where ours went: {parts}; the rest (candidates, run row, commit) "
                      f"{(total - top) / total:.0%}")
            print(f"ours / bound = {ratio:.2f} (goal <= {GOAL:.2f})")
        finally:
            stop_embedded()
        size = f"{args.households // 1000}k" if args.households % 1000 == 0 else f"{args.households:,}"
        print(f"headline: billing run {size} ours/bound ratio={ratio:.2f} goal=<={GOAL:.2f}")
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
