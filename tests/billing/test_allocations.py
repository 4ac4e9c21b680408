"""Payments against bills (issue 17 item 4, acceptance "Late fees on read equal the posted
fee at payment; allocations cover the oldest bill first"): money pays the oldest open bill
first, its late fee (posted as it reads that day) before its principal, the rest the next
bill; a partial payment leaves the fee accruing exactly on what is still owed; undoing a
payment's allocations re-opens its bills; and the ledger, the bills and their
allocations add up after all of it."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.allocations import Allocations, allocate_credit, undo_allocations
from backend.billing.checks import _BILLS_DISAGREEING, _DISAGREEING
from backend.billing.late_fees import late_fee_owed, waive_late_fee
from backend.billing.ledger import post_entry
from backend.billing.models import EntryKind
from tests.billing.bill_factory import allocations_of, bill_row, make_bill, postpaid_account
from tests.billing.factories import Served, at, balance, entries

OPENED = at(2026, 8, 1)


async def pay(session: AsyncSession, served: Served, fen: int, on: date, key: str, bill_ids: list[int] | None = None
              ) -> tuple[int, Allocations]:
    """A payment credit of ``fen`` on ``on`` and its allocation, as the counter does it."""
    entry = await post_entry(session, account_id=served.account_id, kind=EntryKind.payment, amount_fen=fen,
                             ref=f"payment:{key}", idempotency_key=f"payment:{key}", posted_at=at(on.year, on.month,
                                                                                                    on.day, 10))
    done = await allocate_credit(session, account_ids=[served.account_id], on=on, now=at(on.year, on.month, on.day, 10),
                                 entry_id=entry.id, bill_ids=bill_ids or [])
    return entry.id, done


async def assert_everything_adds_up(session: AsyncSession, served: Served) -> None:
    """The ledger check's sums, and each bill's paid and posted figures against its
    allocations and late-fee entries."""
    assert (await session.execute(_DISAGREEING)).one().accounts == 0
    assert (await session.execute(_BILLS_DISAGREEING)).one().wrong == 0  # the billing.bills check line
    rows = (await session.execute(text("""
        SELECT b.id, b.principal_paid_fen, b.late_fee_paid_fen, b.late_fee_posted_fen,
               (SELECT coalesce(sum(principal_fen), 0) FROM bill_allocations a WHERE a.bill_id = b.id) AS principal,
               (SELECT coalesce(sum(late_fee_fen), 0) FROM bill_allocations a WHERE a.bill_id = b.id) AS fee,
               (SELECT coalesce(-sum(amount_fen), 0) FROM ledger_entries e
                WHERE e.account_id = b.account_id AND e.kind = 'late_fee' AND e.ref = 'bill:' || b.id) AS posted
        FROM bills b WHERE b.account_id = :a"""), {"a": served.account_id})).all()
    for row in rows:
        assert (row.principal_paid_fen, row.late_fee_paid_fen, row.late_fee_posted_fen) == (
            row.principal, row.fee, row.posted), row


def figures(row: Any) -> tuple[str, int, int, int]:
    return row.status, row.principal_paid_fen, row.late_fee_posted_fen, row.late_fee_paid_fen


async def test_late_fees_on_read_equal_the_posted_fee_and_the_oldest_bill_is_paid_first(session: AsyncSession) -> None:
    # Given September's ¥100.00 bill due 15 October and October's ¥80.00 due 15 November.
    served = await postpaid_account(session, opened_at=OPENED)
    september = await make_bill(session, served, period=date(2026, 9, 1), amount_fen=10000, due_date=date(2026, 10, 15))
    october = await make_bill(session, served, period=date(2026, 10, 1), amount_fen=8000, due_date=date(2026, 11, 15))
    assert september.id and october.id
    # On 4 November September's bill is 20 days overdue: ¥100.00 × 0.5‰ × 20 days = ¥1.00.
    on = date(2026, 11, 4)
    assert await late_fee_owed(session, bill_ids=[september.id, october.id], on=on) == {september.id: 100,
                                                                                         october.id: 0}

    # When ¥150.00 is paid that day,
    entry_id, done = await pay(session, served, 15000, on, "p1")

    # then exactly the ¥1.00 read is posted, and paid before September's principal; the
    # remaining ¥49.00 goes to October's bill.
    assert done.late_fee_posted_fen == 100 and done.paid_bill_ids == (september.id,)
    assert await allocations_of(session, served.account_id) == [
        (september.id, entry_id, 100, 10000, False), (october.id, entry_id, 0, 4900, False)]
    assert figures(await bill_row(session, september.id)) == ("paid", 10000, 100, 100)
    assert figures(await bill_row(session, october.id)) == ("open", 4900, 0, 0)
    assert (await bill_row(session, september.id)).paid_at == at(2026, 11, 4, 10)
    assert [(e.kind, e.amount_fen, e.ref) for e in await entries(session, served.account_id)][-2:] == [
        (EntryKind.payment, 15000, "payment:p1"), (EntryKind.late_fee, -100, f"bill:{september.id}")]
    assert await balance(session, served.account_id) == -10000 - 8000 - 100 + 15000
    assert await late_fee_owed(session, bill_ids=[september.id], on=date(2026, 12, 31)) == {september.id: 0}
    await assert_everything_adds_up(session, served)


async def test_after_a_partial_payment_the_fee_accrues_exactly_on_the_principal_still_owed(
        session: AsyncSession) -> None:
    # ¥123.45 due 15 October.
    served = await postpaid_account(session, opened_at=OPENED)
    bill = await make_bill(session, served, period=date(2026, 9, 1), amount_fen=12345, due_date=date(2026, 10, 15))
    assert bill.id
    # 17 October, 2 days late: 12345 × 0.0005 × 2 = 12.345 fen → ¥0.12. ¥50.12 pays it and ¥50.00.
    assert await late_fee_owed(session, bill_ids=[bill.id], on=date(2026, 10, 17)) == {bill.id: 12}
    await pay(session, served, 5012, date(2026, 10, 17), "first")
    assert figures(await bill_row(session, bill.id)) == ("open", 5000, 12, 12)
    # 6 November, 20 days later, on the ¥73.45 still owed: 7345 × 0.0005 × 20 = 73.45 fen.
    # The fee is rounded once on the exact sum: 12.345 + 73.45 = 85.795 → 86 fen, so 74
    # more are owed (rounding each part would have said 12 + 73 = 85).
    on = date(2026, 11, 6)
    assert await late_fee_owed(session, bill_ids=[bill.id], on=on) == {bill.id: 74}
    _, done = await pay(session, served, 7345 + 74, on, "second")
    assert done.late_fee_posted_fen == 74 and done.paid_bill_ids == (bill.id,)
    assert figures(await bill_row(session, bill.id)) == ("paid", 12345, 86, 86)
    assert await balance(session, served.account_id) == 0
    await assert_everything_adds_up(session, served)


async def test_the_fee_stops_at_its_cap_and_a_bill_without_a_rate_accrues_nothing(session: AsyncSession) -> None:
    served = await postpaid_account(session, opened_at=OPENED)
    # ¥100.00 capped at ¥3.00: by 31 December (77 days late) it would be 385 fen.
    capped = await make_bill(session, served, period=date(2026, 9, 1), amount_fen=10000, due_date=date(2026, 10, 15),
                             cap_fen=300)
    # Issued while the rule was off: rate 0, cap 0 (late_fees.late_fee_terms).
    free = await make_bill(session, served, period=date(2026, 10, 1), amount_fen=5000, due_date=date(2026, 11, 15),
                           late_fee_rate="0", cap_fen=0)
    assert capped.id and free.id
    on = date(2026, 12, 31)
    assert await late_fee_owed(session, bill_ids=[capped.id, free.id], on=on) == {capped.id: 300, free.id: 0}
    _, done = await pay(session, served, 10300 + 5000, on, "all")
    assert done.late_fee_posted_fen == 300 and set(done.paid_bill_ids) == {capped.id, free.id}
    assert await balance(session, served.account_id) == 0
    await assert_everything_adds_up(session, served)


async def test_named_bills_are_paid_first_and_credit_already_on_the_account_pays_a_new_bill(
        session: AsyncSession) -> None:
    served = await postpaid_account(session, opened_at=OPENED)
    older = await make_bill(session, served, period=date(2026, 9, 1), amount_fen=3000, due_date=date(2026, 12, 15))
    newer = await make_bill(session, served, period=date(2026, 10, 1), amount_fen=2000, due_date=date(2026, 12, 15))
    assert older.id and newer.id
    entry_id, _ = await pay(session, served, 2500, date(2026, 11, 20), "named", bill_ids=[newer.id])
    assert await allocations_of(session, served.account_id) == [
        (newer.id, entry_id, 0, 2000, False), (older.id, entry_id, 0, 500, False)]
    # ¥30.00 more leaves ¥5.00 of credit; November's bill takes it when allocated (no entry).
    await pay(session, served, 3000, date(2026, 11, 21), "more")
    november = await make_bill(session, served, period=date(2026, 11, 1), amount_fen=800, due_date=date(2027, 1, 15))
    done = await allocate_credit(session, account_ids=[served.account_id], on=date(2026, 12, 9), now=at(2026, 12, 9))
    assert [(line.bill_id, line.entry_id, line.principal_fen) for line in done.lines] == [(november.id, None, 500)]
    assert figures(await bill_row(session, november.id)) == ("open", 500, 0, 0)
    await assert_everything_adds_up(session, served)


async def reverse(session: AsyncSession, served: Served, entry_id: int, fen: int, key: str, on: date) -> Allocations:
    """The payment's reversal entry and the undoing of its allocations, as the counter does it."""
    reversal = await post_entry(session, account_id=served.account_id, kind=EntryKind.reversal, amount_fen=-fen,
                                ref=f"payment:{key}", idempotency_key=f"reversal:{key}")
    return await undo_allocations(session, account_id=served.account_id, entry_id=entry_id,
                                  reversal_entry_id=reversal.id, on=on, now=at(on.year, on.month, on.day, 11))


async def test_undoing_a_payment_reopens_its_bills_and_credit_from_another_payment_pays_them_again(
        session: AsyncSession) -> None:
    served = await postpaid_account(session, opened_at=OPENED)
    september = await make_bill(session, served, period=date(2026, 9, 1), amount_fen=10000, due_date=date(2026, 10, 15))
    october = await make_bill(session, served, period=date(2026, 10, 1), amount_fen=8000, due_date=date(2026, 11, 15))
    assert september.id and october.id
    first, _ = await pay(session, served, 15000, date(2026, 11, 4), "p1")  # September with its ¥1.00 fee, ¥49 October
    await pay(session, served, 3600, date(2026, 11, 5), "p2")  # the rest of October, ¥5.00 left on the account

    # The first payment is reversed on 10 November.
    done = await reverse(session, served, first, 15000, "p1", date(2026, 11, 10))

    # Its two allocations are undone (newest first) and both bills re-open; the ¥5.00 of
    # the second payment then pays the oldest bill again: its fee first, then principal.
    assert [(line.bill_id, line.late_fee_fen, line.principal_fen, line.undoes_id is not None) for line in done.lines] == [
        (october.id, 0, -4900, True), (september.id, -100, -10000, True), (september.id, 100, 400, False)]
    # The ¥1.00 posted at the payment stays posted (it was owed). The fee was folded on
    # the reversal's day, so it accrues again from there on the re-opened ¥96.00.
    assert done.late_fee_posted_fen == 0
    assert figures(await bill_row(session, september.id)) == ("open", 400, 100, 100)
    assert figures(await bill_row(session, october.id)) == ("open", 3100, 0, 0)
    assert await late_fee_owed(session, bill_ids=[september.id], on=date(2026, 11, 20)) == {
        september.id: 9600 * 5 * 10 // 10000}  # 10 days × 0.5‰ × ¥96.00 = ¥0.48
    assert await balance(session, served.account_id) == 15000 + 3600 - 10000 - 8000 - 100 - 15000
    await assert_everything_adds_up(session, served)


async def test_undoing_a_payment_releases_what_a_later_bill_took_of_its_leftover_credit(
        session: AsyncSession) -> None:
    served = await postpaid_account(session, opened_at=OPENED)
    september = await make_bill(session, served, period=date(2026, 9, 1), amount_fen=10000, due_date=date(2026, 10, 15))
    october = await make_bill(session, served, period=date(2026, 10, 1), amount_fen=8000, due_date=date(2026, 11, 15))
    # ¥200.00 pays both (and September's ¥1.00 fee) and leaves ¥19.00 on the account,
    first, _ = await pay(session, served, 20000, date(2026, 11, 4), "big")
    # which November's ¥15.00 bill takes when it is issued (an allocation of no entry).
    november = await make_bill(session, served, period=date(2026, 11, 1), amount_fen=1500, due_date=date(2027, 1, 15))
    await allocate_credit(session, account_ids=[served.account_id], on=date(2026, 12, 9), now=at(2026, 12, 9))
    assert figures(await bill_row(session, november.id)) == ("paid", 1500, 0, 0)

    done = await reverse(session, served, first, 20000, "big", date(2026, 12, 10))

    # The money November's bill took came from the reversed payment: it is released too.
    assert [(line.bill_id, line.late_fee_fen, line.principal_fen) for line in done.lines] == [
        (october.id, 0, -8000), (september.id, -100, -10000), (november.id, 0, -1500)]
    assert set(done.reopened_bill_ids) == {september.id, october.id, november.id}
    for bill in (september, october, november):
        row = await bill_row(session, bill.id)
        assert (row.status, row.principal_paid_fen, row.late_fee_paid_fen, row.paid_at) == ("open", 0, 0, None)
    assert await balance(session, served.account_id) == -10000 - 8000 - 100 - 1500
    await assert_everything_adds_up(session, served)


async def test_undoing_a_payment_of_a_waived_bills_fee_writes_that_part_off_too(session: AsyncSession) -> None:
    served = await postpaid_account(session, opened_at=OPENED)
    bill = await make_bill(session, served, period=date(2026, 9, 1), amount_fen=10000, due_date=date(2026, 10, 15))
    assert bill.id
    # ¥0.60 on 4 November pays part of the ¥1.00 fee (posted then); the rest is waived the
    # next day: 105 − 60 = 45 fen waived, of which the 40 posted are written off.
    entry_id, _ = await pay(session, served, 60, date(2026, 11, 4), "fee-part")
    waiver = await waive_late_fee(session, bill_id=bill.id, reason="减免", by="主管", now=at(2026, 11, 5, 10))
    assert (waiver.waived_fen, waiver.written_off_fen) == (45, 40)

    await reverse(session, served, entry_id, 60, "fee-part", date(2026, 11, 6))

    row = await bill_row(session, bill.id)
    assert (row.late_fee_paid_fen, row.late_fee_waived_fen, row.late_fee_posted_fen) == (0, 105, 100)
    assert [(e.kind, e.amount_fen) for e in await entries(session, served.account_id)][-2:] == [
        (EntryKind.reversal, -60), (EntryKind.write_off, 60)]
    assert await balance(session, served.account_id) == -10000
    await assert_everything_adds_up(session, served)


async def test_an_account_without_credit_is_left_alone_but_a_zero_bill_is_settled(session: AsyncSession) -> None:
    served = await postpaid_account(session, opened_at=OPENED)
    owing = await make_bill(session, served, period=date(2026, 9, 1), amount_fen=2000, due_date=date(2026, 10, 15))
    zero = await make_bill(session, served, period=date(2026, 10, 1), amount_fen=0, due_date=date(2026, 11, 15))
    done = await allocate_credit(session, account_ids=[served.account_id], on=date(2026, 12, 1), now=at(2026, 12, 1))
    assert done.lines == () and done.late_fee_posted_fen == 0 and done.paid_bill_ids == (zero.id,)
    assert figures(await bill_row(session, owing.id)) == ("open", 0, 0, 0)  # nothing posted without money


async def test_the_bills_check_finds_a_bill_whose_paid_figure_is_not_its_allocations(session: AsyncSession) -> None:
    served = await postpaid_account(session, opened_at=OPENED)
    bill = await make_bill(session, served, period=date(2026, 9, 1), amount_fen=10000, due_date=date(2026, 10, 15))
    await pay(session, served, 4000, date(2026, 10, 1), "partial")
    assert (await session.execute(_BILLS_DISAGREEING)).one().wrong == 0

    await session.execute(text("UPDATE bills SET principal_paid_fen = principal_paid_fen + 1 WHERE id = :id"),
                          {"id": bill.id})

    assert (await session.execute(_BILLS_DISAGREEING)).one().wrong == 1
