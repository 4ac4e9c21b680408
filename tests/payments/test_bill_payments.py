"""Bill payments at the counter (issue 17 item 4): a ``bills`` payment on a postpaid
account pays the oldest bill first, its late fee (posted as read that day) before its
principal, in the same transaction as the payment; named bills go first; a voided or
foreign bill named is refused with nothing written; a recharge pays bills too; a
reversal re-opens what the payment paid; closing an account settles its bills."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.checks import _DISAGREEING
from backend.billing.late_fees import late_fee_owed
from backend.billing.models import AccountStatus, EntryKind
from backend.errors import DomainError, ErrorCode
from backend.payments.counter import Operator, close_account, reverse_payment, take_payment
from backend.payments.models import Payment, PaymentChannel, PaymentPurpose
from tests.billing.bill_factory import allocations_of, bill_row, make_bill, postpaid_account, void
from tests.billing.factories import Served, at, balance, entries

NOW = at(2026, 11, 4, 10)  # 20 days after 15 October


async def cashier(session: AsyncSession) -> Operator:
    """Who takes the money does not matter here (test_counter.py pins the cashier's rules):
    no staff user, so no password to hash."""
    return Operator(None, "收费员", may_reverse_any=True)


async def pay(session: AsyncSession, served: Served, operator: Operator, fen: int, key: str,
              purpose: PaymentPurpose = PaymentPurpose.bills, **extra: Any) -> Payment:
    return await take_payment(session, account_id=served.account_id, channel=PaymentChannel.cash, purpose=purpose,
                              amount_fen=fen, confirm_amount_fen=fen, idempotency_key=key, operator=operator,
                              now=extra.pop("now", NOW), **extra)


async def two_bills(session: AsyncSession) -> tuple[Served, Any, Any]:
    """September's ¥100.00 due 15 October, October's ¥80.00 due 15 November."""
    served = await postpaid_account(session, opened_at=at(2026, 8, 1))
    september = await make_bill(session, served, period=date(2026, 9, 1), amount_fen=10000, due_date=date(2026, 10, 15))
    october = await make_bill(session, served, period=date(2026, 10, 1), amount_fen=8000, due_date=date(2026, 11, 15))
    return served, september, october


async def test_a_bill_payment_posts_the_fee_read_that_day_and_pays_the_oldest_bill_first(
        session: AsyncSession) -> None:
    served, september, october = await two_bills(session)
    # ¥100.00 × 0.5‰ × 20 days = ¥1.00, read before the payment.
    assert await late_fee_owed(session, bill_ids=[september.id], on=NOW.date()) == {september.id: 100}

    payment = await pay(session, served, await cashier(session), 15000, "bills-1")

    assert [(e.kind, e.amount_fen) for e in await entries(session, served.account_id)][-2:] == [
        (EntryKind.payment, 15000), (EntryKind.late_fee, -100)]
    assert await allocations_of(session, served.account_id) == [
        (september.id, payment.entry_id, 100, 10000, False), (october.id, payment.entry_id, 0, 4900, False)]
    assert (await bill_row(session, september.id)).status == "paid"
    assert (await bill_row(session, october.id)).principal_paid_fen == 4900
    assert await balance(session, served.account_id) == -3100
    event = (await session.execute(text(
        "SELECT payload FROM domain_events WHERE kind = 'payment.succeeded' ORDER BY id DESC LIMIT 1"))).scalar_one()
    # The event's balance is the one after it all, the fee the payment posted included.
    assert (event["payment_id"], event["amount_fen"], event["balance_after_fen"]) == (payment.id, 15000, -3100)


async def test_named_bills_are_paid_first_and_a_recharge_on_a_postpaid_account_pays_bills_too(
        session: AsyncSession) -> None:
    served, september, october = await two_bills(session)
    operator = await cashier(session)
    named = await pay(session, served, operator, 8000, "named", bill_ids=[october.id])
    recharge = await pay(session, served, operator, 3000, "recharge", purpose=PaymentPurpose.recharge)
    assert await allocations_of(session, served.account_id) == [
        (october.id, named.entry_id, 0, 8000, False), (september.id, recharge.entry_id, 100, 2900, False)]


async def test_naming_a_voided_bill_or_another_accounts_is_refused_and_writes_nothing(session: AsyncSession) -> None:
    served, september, _ = await two_bills(session)
    _, foreign, _ = await two_bills(session)
    await void(session, september)
    operator = await cashier(session)
    ledger = await entries(session, served.account_id)
    for bill_id, code in ((september.id, ErrorCode.BILL_VOIDED), (foreign.id, ErrorCode.NOT_FOUND),
                          (10**12, ErrorCode.NOT_FOUND)):
        with pytest.raises(DomainError) as refused:
            await pay(session, served, operator, 5000, f"refused-{bill_id}", bill_ids=[bill_id])
        assert (refused.value.code, refused.value.field) == (code, "billIds")
    count = (await session.execute(select(func.count()).select_from(Payment).where(
        Payment.account_id == served.account_id))).scalar_one()  # type: ignore[arg-type]
    assert count == 0 and await entries(session, served.account_id) == ledger
    assert await allocations_of(session, served.account_id) == []


async def test_reversing_a_bill_payment_reopens_the_bills_it_paid_and_keeps_the_posted_fee(
        session: AsyncSession) -> None:
    served, september, october = await two_bills(session)
    operator = await cashier(session)
    payment = await pay(session, served, operator, 15000, "to-reverse")
    assert payment.id is not None

    await reverse_payment(session, payment_id=payment.id, reason="收错户", operator=operator, now=NOW)

    assert [(fee, principal, undoes) for _, _, fee, principal, undoes in await allocations_of(
        session, served.account_id)] == [(100, 10000, False), (0, 4900, False), (0, -4900, True), (-100, -10000, True)]
    for bill in (september, october):
        row = await bill_row(session, bill.id)
        assert (row.status, row.principal_paid_fen, row.late_fee_paid_fen) == ("open", 0, 0)
    assert (await bill_row(session, september.id)).late_fee_posted_fen == 100
    assert await balance(session, served.account_id) == -18100
    assert (await session.execute(_DISAGREEING)).one().accounts == 0


async def test_closing_a_postpaid_account_posts_the_fees_owed_and_its_collection_pays_every_bill(
        session: AsyncSession) -> None:
    served, september, october = await two_bills(session)
    closed = await close_account(session, account_id=served.account_id, final_reading_at=NOW,
                                 operator=await cashier(session), now=NOW, idempotency_key="close-postpaid")
    assert closed.account.status is AccountStatus.closed
    assert closed.collection is not None and closed.collection.amount_fen == 10000 + 8000 + 100
    assert [(await bill_row(session, bill.id)).status for bill in (september, october)] == ["paid", "paid"]
    assert await balance(session, served.account_id) == 0
