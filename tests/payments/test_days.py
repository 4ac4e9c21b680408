"""The cashier's day (日结): takings by channel equal the sum of the day's payment entries
in the ledger (across channels, with a refund and a reversal); handing it over locks it
against payments and reversals; a second hand-over, or one of a future day, is refused."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.errors import DomainError, ErrorCode
from backend.payments.counter import close_account, reverse_payment
from backend.payments.days import cashier_day, cashier_days, hand_over_day
from backend.payments.models import CashierDay, PaymentChannel
from tests.billing.factories import at, ingest, served_household, tariff
from tests.payments.test_counter import NOW, cashier, pay

DAY = date(2026, 11, 20)


async def day_entries_fen(session: AsyncSession, operator_id: int, day: date) -> int:
    """The ledger's own sum of the payment entries posted on ``day`` (Shanghai) for the
    operator's payments: what the takings must equal."""
    return int((await session.execute(text(
        "SELECT coalesce(sum(le.amount_fen), 0) FROM ledger_entries le "
        "WHERE le.ref IN (SELECT 'payment:' || p.id FROM payments p WHERE p.operator_id = :o) "
        "AND (le.posted_at AT TIME ZONE 'Asia/Shanghai')::date = :d"), {"o": operator_id, "d": day})).scalar_one())


async def test_the_days_takings_equal_its_payment_entries_across_channels_with_a_refund_and_a_reversal(
        session: AsyncSession) -> None:
    raw = tariff(prices=["2.00"])
    first = await served_household(session, raw_tariff=raw, opened_at=at(2026, 11, 1))
    closing = await served_household(session, raw_tariff=raw, opened_at=at(2026, 11, 1))
    operator, other = await cashier(session), await cashier(session)
    assert operator.id is not None and other.id is not None
    await pay(session, first.account_id, operator, 12345)
    await pay(session, first.account_id, operator, 5000, channel=PaymentChannel.card, reference="POS-1",
              idempotency_key="card")
    wrong = await pay(session, first.account_id, operator, 2000, channel=PaymentChannel.transfer, reference="TR-1",
                      idempotency_key="transfer")
    assert wrong.id is not None
    await reverse_payment(session, payment_id=wrong.id, reason="收错", operator=operator, now=NOW)
    await pay(session, closing.account_id, operator, 10000, idempotency_key="closing")
    await ingest(session, closing.meter.id, [(at(2026, 11, 18), "6.5")], now=NOW)
    closed = await close_account(session, account_id=closing.account_id, final_reading_at=at(2026, 11, 18),
                                 operator=operator, now=NOW, idempotency_key="close")
    assert closed.refund is not None and closed.refund.amount_fen == 8700
    await pay(session, first.account_id, other, 777, idempotency_key="someone else's")

    figures = await cashier_day(session, operator_id=operator.id, day=DAY)

    by_channel = {c.channel: (c.collected_fen, c.refunded_fen, c.reversed_fen, c.net_fen, c.count)
                  for c in figures.channels}
    assert by_channel == {PaymentChannel.cash: (22345, 8700, 0, 13645, 3), PaymentChannel.transfer: (2000, 0, 2000, 0, 1),
                          PaymentChannel.card: (5000, 0, 0, 5000, 1)}
    assert [c.channel for c in figures.channels] == [PaymentChannel.cash, PaymentChannel.transfer, PaymentChannel.card]
    assert figures.net_fen == 18645 == figures.ledger_fen == await day_entries_fen(session, operator.id, DAY)
    assert figures.balanced and figures.handed_over is None and figures.totals.count == 5
    assert figures.operator_name == operator.name
    listed = await cashier_days(session, start=DAY - timedelta(days=1), end=DAY, operator_ids=[operator.id, other.id])
    assert [(f.operator_id, f.net_fen) for f in listed] == sorted([(operator.id, 18645), (other.id, 777)])
    quiet = await cashier_day(session, operator_id=operator.id, day=DAY - timedelta(days=1))
    assert (quiet.channels, quiet.net_fen, quiet.balanced) == ((), 0, True)


async def test_a_handed_over_day_refuses_payments_and_reversals_and_a_second_hand_over(session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
    operator = await cashier(session)
    supervisor = await cashier(session, reverse_any=True)
    assert operator.id is not None
    payment = await pay(session, served.account_id, operator, 3000)
    assert payment.id is not None

    handed = await hand_over_day(session, operator_id=operator.id, day=DAY, by=operator.name, now=NOW)

    assert handed.handed_over is not None and handed.handed_over.net_fen == 3000
    assert handed.handed_over.takings == {"cash": {"collected_fen": 3000, "refunded_fen": 0, "reversed_fen": 0,
                                                   "net_fen": 3000, "count": 1}}
    with pytest.raises(DomainError) as refused:
        await reverse_payment(session, payment_id=payment.id, reason="", operator=operator, now=NOW)
    assert refused.value.code is ErrorCode.CASHIER_DAY_LOCKED
    with pytest.raises(DomainError) as refused:
        await pay(session, served.account_id, operator, 100, idempotency_key="after")
    assert refused.value.code is ErrorCode.CASHIER_DAY_LOCKED
    # A supervisor may still correct it: the money goes out of their till, on their day,
    # and the handed-over day stays exactly as it was handed over.
    await reverse_payment(session, payment_id=payment.id, reason="错收", operator=supervisor, now=NOW)
    assert (await cashier_day(session, operator_id=operator.id, day=DAY)).net_fen == 3000
    with pytest.raises(DomainError) as refused:
        await hand_over_day(session, operator_id=operator.id, day=DAY, by=operator.name, now=NOW)
    assert refused.value.code is ErrorCode.CASHIER_DAY_HANDED_OVER
    with pytest.raises(DomainError) as refused:
        await hand_over_day(session, operator_id=operator.id, day=DAY + timedelta(days=1), by=operator.name, now=NOW)
    assert refused.value.code is ErrorCode.BAD_USER_INPUT
    count = (await session.execute(select(func.count()).select_from(CashierDay).where(
        CashierDay.operator_id == operator.id))).scalar_one()  # type: ignore[arg-type]
    assert count == 1
    assert (await cashier_day(session, operator_id=operator.id, day=DAY)).handed_over is not None


async def test_a_supervisors_reversal_on_a_later_day_counts_in_their_own_till_that_day(
        session: AsyncSession) -> None:
    from backend.payments.counter import Operator, business_day, take_payment
    from backend.payments.models import PaymentPurpose
    from tests.factories import make_staff

    taken_at = at(2026, 11, 20, 10)
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
    staff = [await make_staff(session, permissions={"counter:collect"}) for _ in range(2)]
    cashier = Operator(staff[0].user.id, staff[0].user.full_name)
    supervisor = Operator(staff[1].user.id, staff[1].user.full_name, may_reverse_any=True)
    payment = await take_payment(session, account_id=served.account_id, channel=PaymentChannel.cash,
                                 purpose=PaymentPurpose.recharge, amount_fen=5000, confirm_amount_fen=5000,
                                 idempotency_key="later-day-reversal", operator=cashier, now=taken_at)
    day, next_day = business_day(taken_at, "Asia/Shanghai"), business_day(taken_at + timedelta(days=1), "Asia/Shanghai")
    await hand_over_day(session, operator_id=cashier.id, day=day, by="收费员", now=taken_at + timedelta(hours=8))
    assert payment.id is not None and cashier.id is not None and supervisor.id is not None

    await reverse_payment(session, payment_id=payment.id, reason="错收", operator=supervisor,
                          now=taken_at + timedelta(days=1))

    handed = await cashier_day(session, operator_id=cashier.id, day=day)
    paid_out = await cashier_day(session, operator_id=supervisor.id, day=next_day)
    assert (handed.net_fen, handed.balanced) == (5000, True)  # the handed-over day stays as it was
    assert (paid_out.net_fen, paid_out.ledger_fen, paid_out.balanced) == (-5000, -5000, True)


async def test_a_supervisor_reaches_the_days_of_the_cashiers_of_their_areas_only(session: AsyncSession) -> None:
    from backend.payments.days import cashiers_in_scope
    from tests.factories import make_area_tree, make_staff

    tree = await make_area_tree(session)
    east = await make_staff(session, permissions={"counter:collect"}, areas=[tree.east_community])
    west = await make_staff(session, permissions={"counter:collect"}, areas=[tree.west_community])
    reach = await cashiers_in_scope(session, [tree.east.path + "%"])
    assert reach is not None and east.user.id in reach and west.user.id not in reach
    assert await cashiers_in_scope(session, None) is None  # an unrestricted caller reaches every cashier
