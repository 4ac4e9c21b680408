"""Late fees (滞纳金, issue 17 item 5): the rules per customer type and what a bill copies
from them; the month-end posting writes exactly the fee read that day and nothing the
second time; a waiver stops the fee and writes off its posted part; and a month-end
posting racing payments on the same accounts never deadlocks and leaves every sum
right."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.archives.models import CustomerType
from backend.billing.allocations import allocate_credit
from backend.billing.checks import _DISAGREEING
from backend.billing.late_fees import (
    LateFeePosting,
    LateFeeRuleView,
    LateFeeState,
    late_fee_owed,
    late_fee_rules,
    late_fee_terms,
    month_end_before,
    owed_on,
    post_late_fees,
    post_month_end_late_fees,
    set_late_fee_rule,
    waive_late_fee,
)
from backend.billing.ledger import post_entry
from backend.billing.models import EntryKind
from backend.db import create_engine, session_factory
from backend.domain import system_principal
from backend.domains import installed
from backend.errors import DomainError, ErrorCode
from backend.runtime import Runtime
from backend.settings import Settings
from tests.billing.bill_factory import bill_row, make_bill, postpaid_account, void
from tests.billing.factories import Served, at, balance, entries
from tests.factories import make_area_tree

OPENED = at(2026, 8, 1)
SEPTEMBER, OCTOBER = date(2026, 9, 1), date(2026, 10, 1)


# --------------------------------------------------------------------------- rules


def test_a_bill_copies_the_rate_and_a_cap_of_its_amount_and_nothing_when_the_rule_is_off() -> None:
    rule = LateFeeRuleView(CustomerType.residential, True, Decimal("0.0005"), 15, 100)
    assert late_fee_terms(rule, 12345) == (Decimal("0.0005"), 12345)
    assert late_fee_terms(LateFeeRuleView(CustomerType.special, True, Decimal("0.001"), 0, 50), 12345) == (
        Decimal("0.001"), 6173)  # 6172.5 rounded half up
    off = LateFeeRuleView(CustomerType.residential, False, Decimal("0.0005"), 15, 100)
    assert late_fee_terms(off, 12345) == (Decimal(0), 0)


async def test_a_rule_set_for_one_type_applies_to_it_and_the_others_keep_the_defaults(session: AsyncSession) -> None:
    before = await late_fee_rules(session)
    assert before[CustomerType.residential] == LateFeeRuleView(CustomerType.residential, True, Decimal("0.0005"), 15,
                                                               100)
    await set_late_fee_rule(session, customer_type=CustomerType.non_residential, enabled=False,
                            daily_rate=Decimal("0.00123456"), grace_days=30, cap_percent=50, by="管理员",
                            now=at(2026, 12, 1))
    rules = await late_fee_rules(session)
    assert (rules[CustomerType.non_residential].enabled, rules[CustomerType.non_residential].daily_rate,
            rules[CustomerType.non_residential].grace_days, rules[CustomerType.non_residential].updated_by) == (
        False, Decimal("0.00123456"), 30, "管理员")
    assert rules[CustomerType.residential] == before[CustomerType.residential]


@pytest.mark.parametrize(("changes", "field"), [
    ({"daily_rate": Decimal("0.0101")}, "dailyRate"),
    ({"daily_rate": Decimal("-0.0001")}, "dailyRate"),
    ({"daily_rate": Decimal("0.000000001")}, "dailyRate"),  # 9 places
    ({"daily_rate": Decimal("NaN")}, "dailyRate"),
    ({"grace_days": 366}, "graceDays"),
    ({"grace_days": -1}, "graceDays"),
    ({"cap_percent": 1001}, "capPercent"),
])
async def test_a_rule_out_of_bounds_is_refused_and_nothing_is_stored(session: AsyncSession, changes: dict[str, Any],
                                                                     field: str) -> None:
    arguments: dict[str, Any] = {"customer_type": CustomerType.special, "enabled": True,
                                 "daily_rate": Decimal("0.0005"), "grace_days": 15, "cap_percent": 100, **changes}
    with pytest.raises(DomainError) as refused:
        await set_late_fee_rule(session, by="管理员", now=at(2026, 12, 1), **arguments)
    assert (refused.value.code, refused.value.field) == (ErrorCode.INVALID, field)
    assert (await late_fee_rules(session))[CustomerType.special].updated_at is None


# --------------------------------------------------------------------------- on read


def test_what_a_bill_owes_on_a_day_is_its_unpaid_principal_and_the_fee_still_owed() -> None:
    state = LateFeeState(amount_fen=10000, principal_paid_fen=4000, due_date=date(2026, 10, 15),
                         late_fee_rate=Decimal("0.0005"), late_fee_cap_fen=10000, late_fee_carried=Decimal(0),
                         late_fee_from=None, late_fee_posted_fen=0, late_fee_paid_fen=0, late_fee_waived_fen=0,
                         waived=False)
    # 10 days on ¥60.00 at 0.5‰: 30 fen.
    assert owed_on(state, date(2026, 10, 25)) == 6000 + 30
    assert owed_on(state, date(2026, 10, 15)) == 6000  # due that day: nothing late yet


# --------------------------------------------------------------------------- month-end posting


async def overdue_pair(session: AsyncSession) -> tuple[Served, Any, Any]:
    """¥100.00 due 15 October and ¥80.00 due 15 November on one postpaid account."""
    served = await postpaid_account(session, opened_at=OPENED)
    september = await make_bill(session, served, period=SEPTEMBER, amount_fen=10000, due_date=date(2026, 10, 15))
    october = await make_bill(session, served, period=OCTOBER, amount_fen=8000, due_date=date(2026, 11, 15))
    return served, september, october


async def test_month_end_posting_writes_the_fee_read_that_day_once_and_a_payment_later_posts_only_the_rest(
        session: AsyncSession) -> None:
    served, september, october = await overdue_pair(session)
    on = date(2026, 11, 30)
    # 30 November: September's 46 days on ¥100.00 = 230 fen; October's 15 days on ¥80.00 = 60 fen.
    assert await late_fee_owed(session, bill_ids=[september.id, october.id], on=on) == {
        september.id: 230, october.id: 60}

    first = await post_late_fees(session, on=on, account_ids=[served.account_id], now=at(2026, 12, 1, 8))
    again = await post_late_fees(session, on=on, account_ids=[served.account_id], now=at(2026, 12, 1, 9))

    assert first == LateFeePosting(bills=2, accounts=1, amount_fen=290)
    assert again == LateFeePosting(0, 0, 0)
    fees = [(e.amount_fen, e.ref) for e in await entries(session, served.account_id) if e.kind == EntryKind.late_fee]
    assert fees == [(-230, f"bill:{september.id}"), (-60, f"bill:{october.id}")]
    keys = (await session.execute(text(
        "SELECT idempotency_key FROM ledger_entries WHERE account_id = :a AND kind = 'late_fee' ORDER BY id"),
        {"a": served.account_id})).scalars().all()
    assert keys == [f"late-fee:{september.id}:230", f"late-fee:{october.id}:60"]
    assert (await bill_row(session, september.id)).late_fee_posted_fen == 230

    # A payment on 3 December posts only the three days since: 15 + 12 fen.
    entry = await post_entry(session, account_id=served.account_id, kind=EntryKind.payment, amount_fen=20000,
                             ref="payment:x", idempotency_key="payment:x")
    done = await allocate_credit(session, account_ids=[served.account_id], on=date(2026, 12, 3), now=at(2026, 12, 3),
                                 entry_id=entry.id)
    assert done.late_fee_posted_fen == 15 + 12
    assert set(done.paid_bill_ids) == {september.id, october.id}
    assert await balance(session, served.account_id) == 20000 - 18000 - 245 - 72
    assert (await session.execute(_DISAGREEING)).one().accounts == 0


async def test_month_end_posting_leaves_bills_waived_or_not_yet_late_alone(
        session: AsyncSession) -> None:
    served, september, _ = await overdue_pair(session)
    await waive_late_fee(session, bill_id=september.id, reason="困难户", by="主管", now=at(2026, 11, 1, 10))
    posted = await post_late_fees(session, on=date(2026, 11, 15), account_ids=[served.account_id])
    assert posted == LateFeePosting(0, 0, 0)  # September waived; October due that very day
    assert [e.kind for e in await entries(session, served.account_id)] == [EntryKind.bill, EntryKind.bill]


def test_the_job_posts_as_of_the_last_day_of_the_month_just_ended_in_the_utilitys_zone() -> None:
    # 00:05 UTC on 1 December is 08:05 in Shanghai: November has ended there.
    assert month_end_before(datetime(2026, 12, 1, 0, 5, tzinfo=UTC), "Asia/Shanghai") == date(2026, 11, 30)
    assert month_end_before(datetime(2027, 1, 1, 0, 5, tzinfo=UTC), "Asia/Shanghai") == date(2026, 12, 31)


# --------------------------------------------------------------------------- waivers


async def test_a_waiver_stops_the_fee_writes_off_its_posted_part_and_the_principal_then_settles_the_bill(
        session: AsyncSession) -> None:
    served, september, _ = await overdue_pair(session)
    await post_late_fees(session, on=date(2026, 10, 31), account_ids=[served.account_id])  # 16 days: 80 fen

    # 10 November: 26 days, 130 fen owed, 80 of them posted.
    waiver = await waive_late_fee(session, bill_id=september.id, reason="困难户减免", by="主管", now=at(2026, 11, 10, 10))

    assert (waiver.waived_fen, waiver.written_off_fen, waiver.paid) == (130, 80, False)
    row = await bill_row(session, september.id)
    assert (row.late_fee_waived_fen, row.late_fee_waived_by, row.late_fee_waiver_reason) == (130, "主管", "困难户减免")
    assert [(e.kind, e.amount_fen) for e in await entries(session, served.account_id)][-2:] == [
        (EntryKind.late_fee, -80), (EntryKind.write_off, 80)]
    assert await late_fee_owed(session, bill_ids=[september.id], on=date(2027, 3, 1)) == {september.id: 0}
    # Paying the principal later settles the bill with no fee.
    entry = await post_entry(session, account_id=served.account_id, kind=EntryKind.payment, amount_fen=10000,
                             ref="payment:w", idempotency_key="payment:w")
    done = await allocate_credit(session, account_ids=[served.account_id], on=date(2026, 12, 20),
                                 now=at(2026, 12, 20), entry_id=entry.id)
    assert done.late_fee_posted_fen == 0 and done.paid_bill_ids == (september.id,)
    assert (await session.execute(_DISAGREEING)).one().accounts == 0

    with pytest.raises(DomainError) as twice:
        await waive_late_fee(session, bill_id=september.id, reason="再减", by="主管", now=at(2026, 12, 21))
    assert (twice.value.code, twice.value.field) == (ErrorCode.LATE_FEE_NOTHING_TO_WAIVE, "billId")


async def test_a_waiver_is_refused_for_a_voided_bill_one_not_late_one_out_of_scope_and_without_a_reason(
        session: AsyncSession) -> None:
    served, september, october = await overdue_pair(session)
    await void(session, september)
    ledger_before = await entries(session, served.account_id)
    tree = await make_area_tree(session)
    elsewhere = [f"{tree.west.path}%"]
    cases = [
        ({"bill_id": september.id}, ErrorCode.BILL_VOIDED),
        ({"bill_id": october.id}, ErrorCode.LATE_FEE_NOTHING_TO_WAIVE),  # not overdue on 10 November
        ({"bill_id": october.id, "reason": "  "}, ErrorCode.REQUIRED),
        ({"bill_id": october.id, "scope_patterns": elsewhere}, ErrorCode.NOT_FOUND),
        ({"bill_id": 10**12}, ErrorCode.NOT_FOUND),
    ]
    for changes, code in cases:
        arguments: dict[str, Any] = {"reason": "减免", "by": "主管", "now": at(2026, 11, 10, 10), **changes}
        with pytest.raises(DomainError) as refused:
            await waive_late_fee(session, **arguments)
        assert refused.value.code is code, changes
    assert await entries(session, served.account_id) == ledger_before
    assert (await bill_row(session, october.id)).late_fee_waived_at is None


# --------------------------------------------------------------------------- concurrency (committed)


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url, pool_size=8, max_overflow=0)
    yield session_factory(engine)
    await engine.dispose()


async def test_month_end_posting_and_payments_on_the_same_accounts_never_deadlock_and_post_each_fee_once(
        committed_sessions: async_sessionmaker[AsyncSession], pool: async_sessionmaker[AsyncSession]) -> None:
    async with committed_sessions() as session, session.begin():
        accounts = [await postpaid_account(session, opened_at=OPENED) for _ in range(6)]
        bills = {}
        for n, served in enumerate(accounts):
            for period, due in ((SEPTEMBER, date(2026, 10, 15)), (OCTOBER, date(2026, 11, 15))):
                bills[served.account_id, period] = await make_bill(session, served, period=period,
                                                                   amount_fen=5000 + 100 * n, due_date=due)
    ids = [served.account_id for served in accounts]
    on, now = date(2026, 11, 30), at(2026, 12, 1, 8)
    shuffle = random.Random(17)

    def posting(account_ids: list[int] | None) -> Callable[[AsyncSession], Awaitable[Any]]:
        return lambda s: post_late_fees(s, on=on, account_ids=account_ids, now=now)

    def payment(account_id: int, n: int) -> Callable[[AsyncSession], Awaitable[Any]]:
        async def work(session: AsyncSession) -> Any:
            entry = await post_entry(session, account_id=account_id, kind=EntryKind.payment, amount_fen=1500 + n,
                                     ref=f"payment:race:{n}", idempotency_key=f"race:{account_id}:{n}")
            return await allocate_credit(session, account_ids=[account_id], on=on, now=now, entry_id=entry.id)
        return work

    operations = [posting(ids), posting(ids[::-1]), posting(ids[2:5]), posting(None)]
    operations += [payment(account_id, n) for n in range(4) for account_id in ids[::-1]]
    shuffle.shuffle(operations)

    async def run(work: Callable[[AsyncSession], Awaitable[Any]]) -> Any:
        async with pool() as session, session.begin():
            return await work(session)

    await asyncio.wait_for(asyncio.gather(*(run(op) for op in operations)), timeout=60)

    # The job then finds nothing left to post for 30 November.
    runtime = Runtime(settings=Settings(), sessions=committed_sessions, actor=system_principal(installed()),
                      clock=lambda: datetime(2026, 12, 1, 0, 5, tzinfo=UTC))
    assert await post_month_end_late_fees(runtime, {}) == LateFeePosting(0, 0, 0)

    async with committed_sessions() as session:
        assert (await session.execute(_DISAGREEING)).one().accounts == 0
        for bill in bills.values():
            assert bill.id is not None
            row = await bill_row(session, bill.id)
            posted = -int((await session.execute(text(
                "SELECT coalesce(sum(amount_fen), 0) FROM ledger_entries WHERE kind = 'late_fee' AND ref = :r"),
                {"r": f"bill:{bill.id}"})).scalar_one())
            allocated = (await session.execute(text(
                "SELECT coalesce(sum(late_fee_fen), 0), coalesce(sum(principal_fen), 0) FROM bill_allocations "
                "WHERE bill_id = :b"), {"b": bill.id})).one()
            # Each fee posted once, to the fee read on 30 November, whoever posted it.
            assert posted == row.late_fee_posted_fen == (await late_fee_owed(
                session, bill_ids=[bill.id], on=on))[bill.id] + row.late_fee_paid_fen
            assert tuple(allocated) == (row.late_fee_paid_fen, row.principal_paid_fen)
