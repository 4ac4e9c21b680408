"""Counter payments under concurrency (issue 16, "Bad input"): 200 concurrent counter
payments (double clicks among them), reversals (some of the same payment twice) and
settlements on one account, each its own committed transaction over a pool of
connections, leave the balance equal to the sum of the ledger, every payment with its
entry, a double click one payment and no payment reversed twice."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.billing.settlement import settle_prepaid
from backend.db import create_engine, session_factory
from backend.payments.counter import Operator, reverse_payment, take_payment
from backend.payments.errors import PaymentAlreadyReversed
from backend.payments.models import Payment, PaymentChannel, PaymentPurpose
from tests.billing.factories import at
from tests.billing.test_concurrency import HOURS, in_transaction, ledger_of, served_with_readings
from tests.factories import make_staff

NOW = at(2026, 11, 6, 10)  # one business day for every payment and reversal

Work = Callable[[AsyncSession], Awaitable[Any]]


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Eight connections: enough for the transactions to overlap and wait on each other."""
    engine = create_engine(database_url, pool_size=8, max_overflow=0)
    yield session_factory(engine)
    await engine.dispose()


async def _cashier(sessions: async_sessionmaker[AsyncSession]) -> Operator:
    async with sessions() as session, session.begin():
        staff = await make_staff(session, permissions={"counter:collect"})
    assert staff.user.id is not None
    return Operator(staff.user.id, staff.user.full_name)


def pay(account_id: int, operator: Operator, key: str, fen: int, *, card: bool = False) -> Work:
    return lambda s: take_payment(
        s, account_id=account_id, channel=PaymentChannel.card if card else PaymentChannel.cash,
        purpose=PaymentPurpose.recharge, amount_fen=fen, confirm_amount_fen=fen, idempotency_key=key,
        operator=operator, now=NOW, reference=f"POS{key[-12:]}" if card else None)


def reverse(payment_id: int, operator: Operator) -> Work:
    return lambda s: reverse_payment(s, payment_id=payment_id, reason="收错金额", operator=operator, now=NOW)


def settle(account_id: int, as_of: datetime) -> Work:
    return lambda s: settle_prepaid(s, account_ids=[account_id], as_of=as_of)


async def test_200_concurrent_payments_reversals_and_settlements_on_one_account_keep_the_ledger_exact(
    committed_sessions: async_sessionmaker[AsyncSession], pool: async_sessionmaker[AsyncSession],
) -> None:
    (served,) = await served_with_readings(committed_sessions, 1)
    account = served.account_id
    cashier = await _cashier(committed_sessions)
    shuffle = random.Random(16)
    # Earlier payments, committed first: 30 of them are reversed below, 10 of those twice at once.
    earlier: list[Payment] = [await in_transaction(pool, pay(account, cashier, f"earlier:{i}", 100 * (i + 1)))
                              for i in range(30)]
    # 70 payments of distinct keys (every fifth by card), 15 double clicks (one key, two
    # calls), 30 reversals plus a second try at 10 of them, and 60 settlements stepping
    # through the ingested hours: 200 transactions.
    amounts = [100 * shuffle.randint(1, 500) for _ in range(70)]
    clicks = [100 * shuffle.randint(1, 500) for _ in range(15)]
    # A double click and a second reversal come right after the first (so they overlap on
    # the pool); everything else in no particular order.
    units: list[list[Work]] = [[pay(account, cashier, f"single:{i}", fen, card=i % 5 == 0)]
                               for i, fen in enumerate(amounts)]
    units += [[pay(account, cashier, f"double:{i}", fen)] * 2 for i, fen in enumerate(clicks)]
    units += [[reverse(p.id, cashier)] * (2 if n < 10 else 1) for n, p in enumerate(earlier) if p.id is not None]
    units += [[settle(account, HOURS[1 + 2 * i])] for i in range(60)]
    shuffle.shuffle(units)
    operations = [operation for unit in units for operation in unit]
    assert len(operations) == 200

    results = await asyncio.wait_for(asyncio.gather(
        *(in_transaction(pool, operation) for operation in operations), return_exceptions=True), timeout=120)

    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 10 and all(isinstance(r, PaymentAlreadyReversed) for r in refused), refused[:3]
    (balance, total), = (await ledger_of(committed_sessions, [account])).values()
    assert balance == total
    async with committed_sessions() as session:
        [(payments, without_entry, doubles, reversed_, reversal_entries, reversed_twice, charged)] = (
            await session.execute(text("""
            SELECT (SELECT count(*) FROM payments WHERE account_id = :a),
                   (SELECT count(*) FROM payments p LEFT JOIN ledger_entries e ON e.id = p.entry_id
                    WHERE p.account_id = :a AND (e.id IS NULL OR e.amount_fen <> p.amount_fen
                                                 OR e.account_id <> p.account_id OR e.kind <> 'recharge')),
                   (SELECT count(*) FROM payments WHERE account_id = :a AND idempotency_key LIKE 'double:%'),
                   (SELECT count(*) FROM payments p JOIN ledger_entries r ON r.id = p.reversal_entry_id
                    WHERE p.account_id = :a AND p.status = 'reversed' AND r.amount_fen = -p.amount_fen),
                   (SELECT count(*) FROM ledger_entries WHERE account_id = :a AND kind = 'reversal'),
                   (SELECT count(*) FROM (SELECT ref FROM ledger_entries WHERE account_id = :a AND kind = 'reversal'
                                          GROUP BY ref HAVING count(*) > 1) AS twice),
                   (SELECT -coalesce(sum(amount_fen), 0) FROM ledger_entries
                    WHERE account_id = :a AND kind IN ('charge', 'adjustment'))"""), {"a": account})).all()
    assert (payments, without_entry, doubles) == (30 + 70 + 15, 0, 15)
    assert reversed_ == reversal_entries == 30 and reversed_twice == 0
    assert balance == sum(amounts) + sum(clicks) - charged  # the earlier ones all reversed
