"""A postpaid account and bills on it, as the billing run writes them: a ``bills`` row and
its ``bill`` ledger debit (``post_entry``, kind ``bill``, −amount, ref and key
``bill:<id>``), with the period, amount, due date and late-fee terms a test names."""

from __future__ import annotations

import calendar
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import Area
from backend.billing.bills_models import Bill, BillStatus
from backend.billing.ledger import post_entry
from backend.billing.models import BillingMode, EntryKind
from tests.billing.factories import SHANGHAI, Served, served_household, tariff


async def postpaid_account(session: AsyncSession, *, opened_at: datetime, area: Area | None = None) -> Served:
    """A household with a meter and a postpaid account opened at ``opened_at`` (in ``area``)."""
    return await served_household(session, raw_tariff=tariff(), opened_at=opened_at, mode=BillingMode.postpaid,
                                  area=area)


async def make_bill(
    session: AsyncSession,
    served: Served,
    *,
    period: date,
    amount_fen: int,
    due_date: date,
    late_fee_rate: Decimal | str = "0.0005",
    cap_fen: int | None = None,
    issued_at: datetime | None = None,
) -> Bill:
    """Issue a bill of ``amount_fen`` for ``period`` (a month) on ``served``'s account:
    the row and its ledger debit; cap defaults to the bill's amount."""
    start = datetime.combine(period, time(), SHANGHAI)
    last = calendar.monthrange(period.year, period.month)[1]
    end = start + timedelta(days=last)
    issued_at = issued_at or end + timedelta(hours=9)
    assert served.household.id is not None
    bill = Bill(
        account_id=served.account_id, household_id=served.household.id, period=period, months=1,
        status=BillStatus.open, period_start=start, period_end=end, tariff_code=served.account.tariff_code or "T",
        start_readings=[], end_readings=[], measured_m3=Decimal(0), volume_m3=Decimal(0), cycle_start=period,
        cycle_volume_m3=Decimal(0),
        amount_fen=amount_fen, due_date=due_date, late_fee_rate=Decimal(late_fee_rate),
        late_fee_cap_fen=amount_fen if cap_fen is None else cap_fen, issued_at=issued_at, issued_by="测试",
    )
    session.add(bill)
    await session.flush()
    assert bill.id is not None
    if amount_fen:  # a zero bill has no entry (the ledger refuses zero)
        entry = await post_entry(session, account_id=served.account_id, kind=EntryKind.bill, amount_fen=-amount_fen,
                                 ref=f"bill:{bill.id}", idempotency_key=f"bill:{bill.id}", posted_at=issued_at)
        bill.entry_id = entry.id
        await session.flush()
    return bill


async def bill_row(session: AsyncSession, bill_id: int | None) -> Any:
    """The bill's row as stored now (allocations write it with raw SQL)."""
    return (await session.execute(text("SELECT * FROM bills WHERE id = :id"), {"id": bill_id})).one()


async def allocations_of(session: AsyncSession, account_id: int) -> list[tuple[int, int | None, int, int, bool]]:
    """``(bill_id, entry_id, late_fee_fen, principal_fen, undoes something)`` in order."""
    rows = await session.execute(text(
        "SELECT bill_id, entry_id, late_fee_fen, principal_fen, undoes_id IS NOT NULL FROM bill_allocations "
        "WHERE account_id = :a ORDER BY id"), {"a": account_id})
    return [tuple(row) for row in rows]  # type: ignore[misc]


async def void(session: AsyncSession, bill: Bill) -> None:
    """Void ``bill`` as the billing run's void does: a reversing credit and the status."""
    assert bill.id is not None
    entry = await post_entry(session, account_id=bill.account_id, kind=EntryKind.reversal, amount_fen=bill.amount_fen,
                             ref=f"bill:{bill.id}", idempotency_key=f"void:{bill.id}")
    await session.execute(text("UPDATE bills SET status = 'voided', voided_at = now(), voided_by = '测试', "
                               "void_reason = '读数错误', void_entry_id = :e WHERE id = :id"),
                          {"e": entry.id, "id": bill.id})
