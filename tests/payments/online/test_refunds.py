"""Refunds through the original channel at the service: the split over the account's
online payments newest first with the remainder at the counter, posted only when the
gateway confirms, processing settled by the job, a refused refund failed with an alarm
and nothing posted, a mistaken payment's refund, and closing an account through them.
The gateways here are stand-ins (refund_helpers); the real ones are driven over HTTP
against the fakes in test_refunds_live.py."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.billing.models import AccountStatus, EntryKind
from backend.db import transaction
from backend.errors import DomainError, ErrorCode
from backend.payments.counter import Operator, close_account, take_payment
from backend.payments.models import Payment, PaymentChannel, PaymentKind, PaymentPurpose
from backend.payments.online.models import RefundState
from backend.payments.online.refunds import (
    Refundable,
    query_open_refunds,
    refund_online,
    request_online_refunds,
    split_refund,
)
from tests.billing.factories import Served, at, balance, entries, ledger_sum, served_household, tariff
from tests.payments.online.refund_helpers import StandInGateway, paid_order, services_of

NOW = at(2026, 12, 10, 10)
ALIPAY, WECHAT = PaymentChannel.alipay, PaymentChannel.wechat


def clock(instant: datetime = NOW) -> datetime:
    return instant


def refundable(payment_id: int, fen: int) -> Refundable:
    return Refundable(payment_id=payment_id, order_id=payment_id, out_trade_no=f"SW{payment_id}", channel=ALIPAY,
                      merchant="demo", purpose=PaymentPurpose.recharge, total_fen=fen, refundable_fen=fen, paid_at=NOW,
                      refund_failed=False)


def test_a_split_takes_each_payment_in_order_up_to_what_it_has_left_and_returns_the_rest() -> None:
    newest, older = refundable(2, 2000), refundable(1, 5000)
    assert split_refund(1500, [newest, older]) == ([(newest, 1500)], 0)
    assert split_refund(6000, [newest, older]) == ([(newest, 2000), (older, 4000)], 0)
    assert split_refund(9000, [newest, older]) == ([(newest, 2000), (older, 5000)], 2000)
    assert split_refund(100, []) == ([], 100)


async def cash(session: AsyncSession, served: Served, fen: int, when: datetime) -> Payment:
    return await take_payment(session, account_id=served.account_id, channel=PaymentChannel.cash,
                              purpose=PaymentPurpose.recharge, amount_fen=fen, confirm_amount_fen=fen,
                              idempotency_key=f"cash:{served.account_id}:{fen}", operator=Operator(None, "收费员"),
                              now=when)


async def household_with_payments(session: AsyncSession) -> tuple[Served, list[Payment]]:
    """Paid in this order: alipay 30.00, wechat 50.00, cash 100.00, alipay 20.00 (balance 200.00)."""
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
    assert served.household.id is not None
    payments = []
    for channel, fen, day in ((ALIPAY, 3000, 2), (WECHAT, 5000, 3), (None, 10000, 4), (ALIPAY, 2000, 5)):
        when = at(2026, 12, day, 9)
        if channel is None:
            payments.append(await cash(session, served, fen, when))
        else:
            payments.append((await paid_order(session, account_id=served.account_id, household_id=served.household.id,
                                              channel=channel, fen=fen, at=when))[1])
    return served, payments


async def test_a_refund_is_split_over_the_online_payments_newest_first_and_the_rest_is_the_counters(
        session: AsyncSession) -> None:
    served, (alipay_old, wechat, _, alipay_new) = await household_with_payments(session)
    plan = await request_online_refunds(session, account_id=served.account_id, amount_fen=15000, reason="销户退费",
                                        by="收费员", now=NOW)
    parts = [(r.order_id, r.amount_fen, r.state) for r in plan.refunds]
    orders: dict[int | None, int] = dict((await session.execute(text(
        "SELECT payment_id, id FROM payment_orders WHERE account_id = :a"),
                                         {"a": served.account_id})).all())
    assert parts == [(orders[alipay_new.id], 2000, RefundState.requested),
                     (orders[wechat.id], 5000, RefundState.requested),
                     (orders[alipay_old.id], 3000, RefundState.requested)]
    assert plan.remainder_fen == 5000
    assert all(r.out_refund_no == f"RF20261210{r.id:010d}" for r in plan.refunds)
    # Requested is not refunded: nothing is posted until a gateway confirms.
    assert await balance(session, served.account_id) == 20000
    # What is in flight is spoken for: the same again finds only the counter's money, and the
    # balance less what is in flight (100.00) caps a refund.
    again = await request_online_refunds(session, account_id=served.account_id, amount_fen=5000, reason="错缴",
                                         by="收费员", now=NOW)
    assert again.refunds == () and again.remainder_fen == 5000
    with pytest.raises(DomainError) as refused:
        await request_online_refunds(session, account_id=served.account_id, amount_fen=10001, reason="错缴", by="x",
                                     now=NOW)
    assert (refused.value.code, refused.value.field) == (ErrorCode.REFUND_ABOVE_REFUNDABLE, "amount")


async def test_a_mistaken_payment_goes_back_only_through_its_own_channel(session: AsyncSession) -> None:
    served, (_, wechat, cash_payment, _) = await household_with_payments(session)
    plan = await request_online_refunds(session, account_id=served.account_id, amount_fen=4000, reason="错缴",
                                        by="收费员", now=NOW, payment_id=wechat.id)
    assert [r.amount_fen for r in plan.refunds] == [4000] and plan.remainder_fen == 0
    for payment_id, fen, code in ((wechat.id, 1001, ErrorCode.REFUND_ABOVE_REFUNDABLE),
                                  (cash_payment.id, 100, ErrorCode.REFUND_NOT_POSSIBLE),
                                  (10**12, 100, ErrorCode.REFUND_NOT_POSSIBLE)):
        with pytest.raises(DomainError) as refused:
            await request_online_refunds(session, account_id=served.account_id, amount_fen=fen, reason="错缴",
                                         by="收费员", now=NOW, payment_id=payment_id)
        assert refused.value.code is code
    # Older than a year: the platforms refuse it, so it is not offered.
    with pytest.raises(DomainError) as refused:
        await request_online_refunds(session, account_id=served.account_id, amount_fen=100, reason="错缴",
                                     by="收费员", now=NOW + timedelta(days=400), payment_id=wechat.id)
    assert refused.value.code is ErrorCode.REFUND_NOT_POSSIBLE


# --------------------------------------------------------------------------- committed: the gateway outside


@pytest.fixture
async def served_committed(committed_sessions: async_sessionmaker[AsyncSession]) -> tuple[Served, list[Payment]]:
    async with transaction(committed_sessions) as session:
        return await household_with_payments(session)


async def refunds_of(sessions: async_sessionmaker[AsyncSession], account_id: int) -> list[tuple[str, int, str]]:
    async with sessions() as session:
        rows = await session.execute(text(
            "SELECT o.channel, r.amount_fen, r.state FROM payment_refunds r JOIN payment_orders o ON o.id = r.order_id "
            "WHERE r.account_id = :a ORDER BY r.id"), {"a": account_id})
        return [tuple(row) for row in rows.all()]  # type: ignore[misc]


async def test_posted_when_confirmed_processing_settled_by_the_job(
        committed_sessions: async_sessionmaker[AsyncSession], served_committed: tuple[Served, list[Payment]]) -> None:
    served, _ = served_committed
    alipay = StandInGateway(ALIPAY)
    wechat = StandInGateway(WECHAT, refund_states=["processing"], query_states=["processing", "succeeded"])
    services = services_of(alipay, wechat)
    done = await refund_online(committed_sessions, services, account_id=served.account_id, amount_fen=6000,
                               reason="错缴", by="收费员", now=clock)
    assert [(r.amount_fen, r.state) for r in done.refunds] == [(2000, RefundState.succeeded),
                                                               (4000, RefundState.requested)]
    assert (done.succeeded_fen, done.pending_fen, done.remainder_fen) == (2000, 4000, 0)
    async with committed_sessions() as session:
        assert await balance(session, served.account_id) == 18000
        refund_payment = await session.get(Payment, done.refunds[0].refund_payment_id)
        assert refund_payment is not None
        assert (refund_payment.kind, refund_payment.channel, refund_payment.amount_fen, refund_payment.operator_id) == (
            PaymentKind.refund, ALIPAY, 2000, None)
    later = at(2026, 12, 10, 10) + timedelta(minutes=1)
    # First query: still processing (nothing posted); the next run finds it succeeded.
    await query_open_refunds(committed_sessions, services, now=lambda: later)
    assert await refunds_of(committed_sessions, served.account_id) == [("alipay", 2000, "succeeded"),
                                                                       ("wechat", 4000, "requested")]
    await query_open_refunds(committed_sessions, services, now=lambda: later)
    assert await refunds_of(committed_sessions, served.account_id) == [("alipay", 2000, "succeeded"),
                                                                       ("wechat", 4000, "succeeded")]
    assert [op for op, *_ in wechat.asked] == ["refund", "query", "query"]
    # A third run has nothing left to ask; the ledger adds up.
    assert await query_open_refunds(committed_sessions, services, now=lambda: later) == []
    async with committed_sessions() as session:
        assert await balance(session, served.account_id) == 14000 == await ledger_sum(session, served.account_id)
        refunds = [e for e in await entries(session, served.account_id) if e.kind == EntryKind.refund]
        assert [e.amount_fen for e in refunds] == [-2000, -4000]


async def test_a_refused_refund_fails_posts_nothing_and_opens_an_alarm_and_an_unknown_one_waits(
        committed_sessions: async_sessionmaker[AsyncSession], served_committed: tuple[Served, list[Payment]]) -> None:
    served, _ = served_committed
    alipay = StandInGateway(ALIPAY, refund_states=["reject"])
    wechat = StandInGateway(WECHAT, refund_states=["timeout", "succeeded"])
    done = await refund_online(committed_sessions, services_of(alipay, wechat), account_id=served.account_id,
                               amount_fen=3000, reason="错缴", by="收费员", now=clock)
    assert [(r.amount_fen, r.state) for r in done.refunds] == [(2000, RefundState.failed),
                                                               (1000, RefundState.requested)]
    assert "商户余额不足" in (done.refunds[0].failure or "")
    async with committed_sessions() as session:
        assert await balance(session, served.account_id) == 20000 == await ledger_sum(session, served.account_id)
        alarms = (await session.execute(text(
            "SELECT subject_id, kind, status FROM alarms WHERE subject_kind = 'payment' AND subject_id = :o"),
            {"o": done.refunds[0].order_id})).all()
        assert [(a.kind, a.status) for a in alarms] == [("refund_failed", "open")]
    # The timed-out one was never answered: the job asks again under the same out_refund_no
    # (both platforms refund a number once), and this time it is confirmed.
    await query_open_refunds(committed_sessions, services_of(alipay, wechat), now=lambda: NOW + timedelta(minutes=2))
    async with committed_sessions() as session:
        assert await balance(session, served.account_id) == 19000 == await ledger_sum(session, served.account_id)


async def test_closing_goes_back_through_the_channels_first_then_pays_the_rest_in_cash(
        committed_sessions: async_sessionmaker[AsyncSession], served_committed: tuple[Served, list[Payment]]) -> None:
    served, _ = served_committed
    operator = Operator(None, "收费员")
    async with transaction(committed_sessions) as session:
        first = await close_account(session, account_id=served.account_id, final_reading_at=NOW, operator=operator,
                                    now=NOW, idempotency_key=f"close:{served.account_id}")
    # 200.00: 100.00 came in online (alipay 20 + 30, wechat 50), requested; the account waits for them.
    assert first.account.status is AccountStatus.open and first.refund is None
    assert sorted(r.amount_fen for r in first.online_refunds) == [2000, 3000, 5000]
    async with transaction(committed_sessions) as session:
        with pytest.raises(DomainError) as refused:
            await close_account(session, account_id=served.account_id, final_reading_at=NOW, operator=operator,
                                now=NOW, idempotency_key=f"close:{served.account_id}:again")
    assert (refused.value.code, refused.value.field) == (ErrorCode.REFUND_NOT_POSSIBLE, "id")
    # The job sends them (no request sent them): alipay confirms, wechat refuses.
    services = services_of(StandInGateway(ALIPAY), StandInGateway(WECHAT, refund_states=["reject"]))
    await query_open_refunds(committed_sessions, services, now=lambda: NOW + timedelta(minutes=1))
    assert sorted(await refunds_of(committed_sessions, served.account_id)) == [
        ("alipay", 2000, "succeeded"), ("alipay", 3000, "succeeded"), ("wechat", 5000, "failed")]
    async with transaction(committed_sessions) as session:
        closed = await close_account(session, account_id=served.account_id, final_reading_at=NOW, operator=operator,
                                     now=NOW + timedelta(minutes=2), idempotency_key=f"close:{served.account_id}:2")
    # The counter pays the rest: the cash and the failed wechat refund.
    assert closed.account.status is AccountStatus.closed and closed.online_refunds == ()
    assert closed.refund is not None and (closed.refund.channel, closed.refund.amount_fen) == (PaymentChannel.cash,
                                                                                               15000)
    async with committed_sessions() as session:
        assert await balance(session, served.account_id) == 0 == await ledger_sum(session, served.account_id)
