"""Settlement and postings under concurrency (issue 15, "Bad input"): 200 concurrent
settlements and recharges on one account, each its own committed transaction over a pool
of connections, leave the balance equal to the sum of the ledger and the cycle charged
exactly one quote of its volume; settlements of overlapping account sets, postings and
threshold changes in opposite id orders never deadlock (every writer locks accounts in id
order: backend/billing/ledger.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.billing import service as tariffs
from backend.billing.accounts import AccountTerms, update_account
from backend.billing.ledger import EntryIn, lock_accounts, post_entries, post_entry
from backend.billing.models import EntryKind
from backend.billing.settlement import settle_prepaid
from backend.db import create_engine, session_factory
from backend.readings.usage import usage_between
from tests.billing.factories import Served, at, ingest, served_household, tariff

OPENED = at(2026, 11, 1)
HOURS = [OPENED + timedelta(hours=h) for h in range(0, 5 * 24 + 1)]  # 1–5 November, hourly
NOW = at(2026, 11, 6)
RAW = tariff(code="CONCURRENT", limits=[10, 20], prices=["3.4567", "4.1234", "5.0001"])


def register(hour: int) -> str:
    """The register after ``hour`` hours: about 0.2 m³ an hour, never falling, so five days
    cross both tiers (10 and 20 m³)."""
    return str(Decimal("0.2") * hour + Decimal("0.0137") * (hour % 3))


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Eight connections: enough for the transactions to overlap and wait on each other."""
    engine = create_engine(database_url, pool_size=8, max_overflow=0)
    yield session_factory(engine)
    await engine.dispose()


async def served_with_readings(sessions: async_sessionmaker[AsyncSession], count: int) -> list[Served]:
    served = []
    async with sessions() as session, session.begin():
        for _ in range(count):
            one = await served_household(session, raw_tariff=RAW, opened_at=OPENED, start_reading="0",
                                         terms=AccountTerms(tariff_code=RAW["code"]))
            assert one.meter.id is not None
            await ingest(session, one.meter.id, [(hour, register(h)) for h, hour in enumerate(HOURS)], now=NOW)
            served.append(one)
    return served


async def in_transaction(sessions: async_sessionmaker[AsyncSession],
                         work: Callable[[AsyncSession], Awaitable[Any]]) -> Any:
    async with sessions() as session, session.begin():
        return await work(session)


async def ledger_of(sessions: async_sessionmaker[AsyncSession], account_ids: list[int]) -> dict[int, tuple[int, int]]:
    """Per account: (balance, sum of its entries)."""
    async with sessions() as session:
        rows = (await session.execute(text(
            "SELECT a.id, a.balance_fen, (SELECT coalesce(sum(e.amount_fen), 0) FROM ledger_entries e "
            "WHERE e.account_id = a.id) FROM accounts a WHERE a.id = ANY(:ids)"), {"ids": account_ids})).all()
    return {row[0]: (int(row[1]), int(row[2])) for row in rows}


async def cycle_quote(session: AsyncSession, served: Served, until: datetime) -> tuple[Decimal, int]:
    """The cycle-to-date volume up to ``until`` and one quote of it (fen)."""
    assert served.household.id is not None
    volume = (await usage_between(session, household_ids=[served.household.id], start=OPENED, end=until))[
        served.household.id]
    quote = await tariffs.quote(session, code=RAW["code"], volume=volume, start=date(2026, 11, 1),
                                end=(until - timedelta(microseconds=1)).date())
    return volume, quote.total_fen


async def test_200_concurrent_settlements_and_recharges_on_one_account_keep_the_ledger_and_the_cycle_exact(
    committed_sessions: async_sessionmaker[AsyncSession], pool: async_sessionmaker[AsyncSession],
) -> None:
    (served,) = await served_with_readings(committed_sessions, 1)
    account = served.account_id
    shuffle = random.Random(15)
    # 120 settlements, as_of stepping through the ingested hours (in no particular order
    # of commit), and 80 recharges of 1–50 yuan.
    steps = [HOURS[1 + i] for i in range(120)]
    recharges = [100 * shuffle.randint(1, 50) for _ in range(80)]

    def settle(as_of: datetime) -> Callable[[AsyncSession], Awaitable[Any]]:
        return lambda s: settle_prepaid(s, account_ids=[account], as_of=as_of)

    def recharge(i: int, amount: int) -> Callable[[AsyncSession], Awaitable[Any]]:
        return lambda s: post_entry(s, account_id=account, kind=EntryKind.recharge, amount_fen=amount,
                                    ref=f"payment:{i}", idempotency_key=f"concurrent-recharge:{i}")

    operations = [settle(as_of) for as_of in steps] + [recharge(i, amount) for i, amount in enumerate(recharges)]
    shuffle.shuffle(operations)

    await asyncio.gather(*(in_transaction(pool, operation) for operation in operations))

    (balance, total), = (await ledger_of(committed_sessions, [account])).values()
    assert balance == total
    async with committed_sessions() as session:
        cycle = (await session.execute(text(
            "SELECT volume_m3, charged_fen, settled_to, entries FROM prepaid_cycles WHERE account_id = :a"),
            {"a": account})).one()
        charged = -int((await session.execute(text(
            "SELECT coalesce(sum(amount_fen), 0) FROM ledger_entries WHERE account_id = :a AND cycle_start = :c"),
            {"a": account, "c": date(2026, 11, 1)})).scalar_one())
        count = (await session.execute(text(
            "SELECT count(*) FROM ledger_entries WHERE account_id = :a AND cycle_start IS NOT NULL"),
            {"a": account})).scalar_one()
        # Whichever settlement committed last set the cycle: it charged one quote of the
        # volume to its as_of, whatever the others charged before it.
        volume, quote = await cycle_quote(session, served, cycle.settled_to)
    assert (cycle.volume_m3, cycle.charged_fen, cycle.entries) == (volume, charged, count)
    assert charged == quote
    assert balance == sum(recharges) - charged

    # One more settlement to the newest reading: the cycle is then one quote of it all.
    await in_transaction(pool, lambda s: settle_prepaid(s, account_ids=[account], as_of=HOURS[-1]))
    async with committed_sessions() as session:
        charged = -int((await session.execute(text(
            "SELECT sum(amount_fen) FROM ledger_entries WHERE account_id = :a AND cycle_start IS NOT NULL"),
            {"a": account})).scalar_one())
        volume, quote = await cycle_quote(session, served, HOURS[-1])
    assert volume == Decimal(register(len(HOURS) - 1))
    assert charged == quote
    (balance, total), = (await ledger_of(committed_sessions, [account])).values()
    assert balance == total == sum(recharges) - quote


async def test_overlapping_settlements_postings_and_threshold_changes_in_opposite_orders_never_deadlock(
    committed_sessions: async_sessionmaker[AsyncSession], pool: async_sessionmaker[AsyncSession],
) -> None:
    served = await served_with_readings(committed_sessions, 8)
    ids = [one.account_id for one in served]
    await in_transaction(pool, lambda s: post_entries(s, [
        EntryIn(account_id=i, kind=EntryKind.recharge, amount_fen=6000, idempotency_key=f"deadlock-opening:{i}")
        for i in ids]))
    first, second = ids[:5], ids[3:][::-1]  # overlapping in 3 accounts; the second named high to low
    shuffle = random.Random(16)

    def settle(accounts: list[int], as_of: datetime) -> Callable[[AsyncSession], Awaitable[Any]]:
        return lambda s: settle_prepaid(s, account_ids=accounts, as_of=as_of)

    def change_thresholds(accounts: list[int], alert: int) -> Callable[[AsyncSession], Awaitable[Any]]:
        async def work(session: AsyncSession) -> None:
            # Several accounts in one change: lock them all first (in id order, whatever
            # order they are named in), then change each, high id to low.
            await lock_accounts(session, accounts)
            for account_id in sorted(accounts, reverse=True):
                await update_account(session, account_id=account_id,
                                     terms=AccountTerms(alert_threshold_fen=alert, close_threshold_fen=0))
        return work

    def recharge(accounts: list[int], n: int) -> Callable[[AsyncSession], Awaitable[Any]]:
        return lambda s: post_entries(s, [EntryIn(account_id=i, kind=EntryKind.recharge, amount_fen=50,
                                                  idempotency_key=f"deadlock:{n}:{i}") for i in accounts])

    operations: list[Callable[[AsyncSession], Awaitable[Any]]] = []
    for n, as_of in enumerate(HOURS[6::6]):
        operations.append(settle(first if n % 2 else second, as_of))
        operations.append(change_thresholds(ids[::-1] if n % 2 else ids[2:6], 2000 + 1000 * (n % 4)))
        operations.append(recharge(ids[::-1] if n % 2 else ids, n))
    shuffle.shuffle(operations)

    # asyncpg's DeadlockDetectedError (after deadlock_timeout) would fail the gather.
    results = await asyncio.wait_for(asyncio.gather(*(in_transaction(pool, op) for op in operations)), timeout=60)

    assert len(results) == len(operations)
    ledgers = await ledger_of(committed_sessions, ids)
    assert all(balance == total for balance, total in ledgers.values())
    async with committed_sessions() as session:
        states = (await session.execute(text(
            "SELECT count(*) FROM accounts WHERE id = ANY(:ids) AND alert_state <> CASE "
            "WHEN balance_fen <= close_threshold_fen - grace_fen THEN 'close' "
            "WHEN balance_fen <= alert_threshold_fen THEN 'alert' ELSE 'normal' END"), {"ids": ids})).scalar_one()
    assert states == 0  # every account's alert state is the one its balance and thresholds give
