"""Bills written as rows, for the tests of what reads them (queries, exports, notices):
a bill with its lines and its ``bill`` ledger debit, and a payment allocated to it, as
the billing run and settlement would leave them, without running either."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.bills_models import Bill, BillAllocation, BillLine, BillStatus
from backend.billing.late_fees import LateFeeState, carry_to
from backend.billing.ledger import post_entry
from backend.billing.models import EntryKind
from backend.billing.review import period_bounds
from tests.billing.factories import SHANGHAI
from tests.factories import unique


async def make_bill(
    session: AsyncSession,
    *,
    account_id: int,
    household_id: int,
    period: date,
    meter_id: int,
    start_m3: str,
    end_m3: str,
    lines: list[tuple[str, int, str, str]],
    due_date: date | None = None,
    issued_at: datetime | None = None,
    tariff_code: str = "T-RES",
    late_fee_rate: str = "0.0005",
) -> Bill:
    """A live open bill of ``period`` priced at ``lines`` (component, tier, volume m³,
    price yuan/m³; each line's amount rounded half up), read from ``start_m3`` to
    ``end_m3`` on ``meter_id``, due on the 15th of the next month by default, debited
    from the account's ledger (kind ``bill``, ref ``bill:<id>``)."""
    start, end = period_bounds(period, SHANGHAI)
    priced = [(component, tier, Decimal(volume), Decimal(price),
               int((Decimal(volume) * Decimal(price) * 100).quantize(Decimal(1), rounding="ROUND_HALF_UP")))
              for component, tier, volume, price in lines]
    amount = sum(line[4] for line in priced)
    volume = Decimal(end_m3) - Decimal(start_m3)
    issued = issued_at or end + timedelta(days=1)
    bill = Bill(
        account_id=account_id, household_id=household_id, period=period, months=1, period_start=start, period_end=end,
        tariff_code=tariff_code, start_readings=[_reading(meter_id, start, start_m3)],
        end_readings=[_reading(meter_id, end - timedelta(hours=1), end_m3)], measured_m3=volume, volume_m3=volume,
        cycle_start=period, amount_fen=amount, due_date=due_date or (end.date() + timedelta(days=14)),
        late_fee_rate=Decimal(late_fee_rate), late_fee_cap_fen=amount, issued_at=issued, issued_by="测试",
    )
    session.add(bill)
    await session.flush()
    assert bill.id is not None
    session.add_all([BillLine(bill_id=bill.id, line_no=number, component=component, tier=tier, volume_m3=volume,
                              price=price, amount_fen=line_amount, valid_from=date(2024, 1, 1))
                     for number, (component, tier, volume, price, line_amount) in enumerate(priced, start=1)])
    entry = await post_entry(session, account_id=account_id, kind=EntryKind.bill, amount_fen=-amount,
                             ref=f"bill:{bill.id}", idempotency_key=unique("bill"), posted_at=issued)
    bill.entry_id = entry.id
    await session.flush()
    return bill


def _reading(meter_id: int, read_at: datetime, total_m3: str) -> dict[str, Any]:
    return {"meter_id": meter_id, "read_at": read_at.isoformat(), "total_m3": total_m3}


async def pay_bill(session: AsyncSession, bill: Bill, *, principal_fen: int, late_fee_fen: int = 0,
                   at: datetime) -> BillAllocation:
    """A payment credited to the account and allocated to ``bill``: its late fee, then
    principal; the bill is paid when both are covered (the fee posted as it is paid)."""
    assert bill.id is not None
    amount = principal_fen + late_fee_fen
    # The fee accrued so far is carried before the owed principal changes (late_fees.carry_to).
    bill.late_fee_carried, bill.late_fee_from = carry_to(LateFeeState.of(bill), at.astimezone(SHANGHAI).date())
    if late_fee_fen:
        await post_entry(session, account_id=bill.account_id, kind=EntryKind.late_fee, amount_fen=-late_fee_fen,
                         ref=f"bill:{bill.id}", idempotency_key=unique("fee"), posted_at=at)
    payment = await post_entry(session, account_id=bill.account_id, kind=EntryKind.payment, amount_fen=amount,
                               ref=unique("payment:"), idempotency_key=unique("pay"), posted_at=at)
    allocation = BillAllocation(bill_id=bill.id, account_id=bill.account_id, entry_id=payment.id,
                                late_fee_fen=late_fee_fen, principal_fen=principal_fen, allocated_at=at)
    session.add(allocation)
    bill.principal_paid_fen += principal_fen
    bill.late_fee_posted_fen += late_fee_fen
    bill.late_fee_paid_fen += late_fee_fen
    if bill.principal_paid_fen == bill.amount_fen:
        bill.status = BillStatus.paid
        bill.paid_at = at
    await session.flush()
    return allocation


async def void_bill(session: AsyncSession, bill: Bill, *, at: datetime, reason: str = "读数错误") -> None:
    """``bill`` voided and reversed by a credit entry (kind reversal)."""
    reversal = await post_entry(session, account_id=bill.account_id, kind=EntryKind.reversal,
                                amount_fen=bill.amount_fen, ref=f"bill:{bill.id}", idempotency_key=unique("void"),
                                posted_at=at)
    bill.status = BillStatus.voided
    bill.voided_at, bill.voided_by, bill.void_reason, bill.void_entry_id = at, "测试", reason, reversal.id
    await session.flush()
