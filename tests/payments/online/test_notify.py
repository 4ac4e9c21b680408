"""Notifications at the service, with real commits: a genuine one credits exactly once
(ten at once too), a repeat writes nothing, every bad one is stored rejected, alarmed and
credits nothing; a closed order is credited with an alarm; a prepaid_card account gets
its pending card write. Each case checks the balance against the ledger afterwards."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.billing.models import BillingMode
from backend.db import transaction
from backend.payments.models import PaymentChannel, PaymentPurpose
from backend.payments.online.models import GatewayApi, OrderOrigin, OrderScene, OrderState, PaymentOrder
from backend.payments.online.notify import receive_notification
from backend.payments.online.orders import OrderAsk, open_order
from backend.payments.online.registry import OnlinePayments
from tests.billing.factories import at, balance, ledger_sum, served_household, tariff
from tests.payments.online.stand_in import OTHER_APP_ID, StandIn, stand_in_payments

NOW = at(2026, 12, 7, 10)


@pytest.fixture(scope="module")
def online() -> tuple[OnlinePayments, StandIn, StandIn]:
    return stand_in_payments()


async def _household(sessions: async_sessionmaker[AsyncSession], mode: BillingMode = BillingMode.prepaid_station
                     ) -> tuple[int, int]:
    async with transaction(sessions) as session:
        served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1), mode=mode)
        assert served.household.id is not None
        return served.household.id, served.account_id


async def _order(sessions: async_sessionmaker[AsyncSession], online: OnlinePayments, household_id: int,
                 amount_fen: int = 12345) -> PaymentOrder:
    async with transaction(sessions) as session:
        order, _ = await open_order(session, online=online, now=NOW, ask=OrderAsk(
            amount_fen=amount_fen, purpose=PaymentPurpose.recharge, channel=PaymentChannel.alipay,
            scene=OrderScene.wap, origin=OrderOrigin.resident, created_by="resident:1", household_id=household_id))
    return order


async def _notify(sessions: async_sessionmaker[AsyncSession], online: OnlinePayments, body: bytes) -> Any:
    return await receive_notification(sessions, online=online, api=GatewayApi.alipay, headers={}, body=body,
                                      now=NOW + timedelta(minutes=1))


async def _facts(sessions: async_sessionmaker[AsyncSession], account_id: int) -> dict[str, Any]:
    async with sessions() as session:
        return {
            "balance": await balance(session, account_id), "ledger": await ledger_sum(session, account_id),
            "payments": (await session.execute(text(
                "SELECT count(*) FROM payments WHERE account_id = :a"), {"a": account_id})).scalar_one(),
        }


async def _notifications(sessions: async_sessionmaker[AsyncSession], out_trade_no: str) -> list[tuple[str, str]]:
    async with sessions() as session:
        rows = await session.execute(text("SELECT verdict, coalesce(reason, '') FROM payment_notifications "
                                          "WHERE out_trade_no = :o ORDER BY id"), {"o": out_trade_no})
        return [(r[0], r[1]) for r in rows]


async def _books(sessions: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    """The whole database's money: every balance, every ledger entry, every payment, and
    how many accounts' ledger sum is not their balance (always 0)."""
    async with sessions() as session:
        row = (await session.execute(text(
            "SELECT (SELECT coalesce(sum(balance_fen), 0) FROM accounts), "
            "(SELECT coalesce(sum(amount_fen), 0) FROM ledger_entries), (SELECT count(*) FROM payments), "
            "(SELECT count(*) FROM accounts a WHERE a.balance_fen <> (SELECT coalesce(sum(amount_fen), 0) "
            "FROM ledger_entries e WHERE e.account_id = a.id))"))).one()
    return {"balances": int(row[0]), "ledger": int(row[1]), "payments": int(row[2]), "unbalanced": int(row[3])}


async def _alarm(sessions: async_sessionmaker[AsyncSession], subject_id: int) -> str | None:
    async with sessions() as session:
        return (await session.execute(text(
            "SELECT detail FROM alarms WHERE subject_kind = 'payment' AND kind = 'verification_failed' "
            "AND subject_id = :s AND status <> 'closed'"), {"s": subject_id})).scalar_one_or_none()


async def test_a_genuine_notification_credits_once_and_a_replay_writes_nothing(
        committed_sessions: async_sessionmaker[AsyncSession], online: Any) -> None:
    payments, demo, _ = online
    household_id, account_id = await _household(committed_sessions)
    order = await _order(committed_sessions, payments, household_id)
    body = demo.notification(order.out_trade_no, 12345)

    first = await _notify(committed_sessions, payments, body)
    again = await _notify(committed_sessions, payments, body)

    assert (first.verdict, first.answer.body, again.verdict, again.answer.body) == (
        "accepted", b"success", "repeat", b"success")
    assert await _facts(committed_sessions, account_id) == {"balance": 12345, "ledger": 12345, "payments": 1}
    assert await _notifications(committed_sessions, order.out_trade_no) == [("accepted", "")]
    async with committed_sessions() as session:
        paid = await session.get(PaymentOrder, order.id)
        assert paid is not None and paid.state is OrderState.paid and paid.trade_no == f"T{order.out_trade_no}"
        payment = (await session.execute(text("SELECT channel, kind, purpose, reference, operator_id, operator_name "
                                              "FROM payments WHERE id = :p"), {"p": paid.payment_id})).one()
        events = (await session.execute(text(
            "SELECT payload->>'state' FROM domain_events WHERE kind = 'payment_order.changed' "
            "AND (payload->>'order_id')::bigint = :o ORDER BY id"), {"o": order.id})).scalars().all()
    assert tuple(payment) == ("alipay", "collect", "recharge", f"T{order.out_trade_no}", None, "online")
    assert events == ["created", "paid"]


async def test_ten_concurrent_replays_of_a_genuine_notification_credit_once(
        committed_sessions: async_sessionmaker[AsyncSession], online: Any) -> None:
    payments, demo, _ = online
    household_id, account_id = await _household(committed_sessions)
    order = await _order(committed_sessions, payments, household_id, 500)
    body = demo.notification(order.out_trade_no, 500)

    outcomes = await asyncio.gather(*(_notify(committed_sessions, payments, body) for _ in range(10)))

    assert sorted(o.verdict for o in outcomes) == ["accepted"] + ["repeat"] * 9
    assert all(o.answer.body == b"success" for o in outcomes)
    assert await _facts(committed_sessions, account_id) == {"balance": 500, "ledger": 500, "payments": 1}
    assert await _notifications(committed_sessions, order.out_trade_no) == [("accepted", "")]


@pytest.mark.parametrize(("case", "reason"), [
    ("forged_signature", "bad signature"),
    ("tampered_amount", "bad signature"),
    ("signed_other_amount", "amount 12346 fen differs from the order's 12345 fen"),
    ("other_merchant", "was made with alipay merchant 'demo', not 'other'"),
    ("unknown_app_id", "app id 2021999999999999 is not one of our Alipay apps"),
    ("three_decimals", "total_amount is not an amount"),
])
async def test_a_bad_notification_is_rejected_alarmed_and_credits_nothing(
        committed_sessions: async_sessionmaker[AsyncSession], online: Any, case: str, reason: str) -> None:
    payments, demo, other = online
    household_id, account_id = await _household(committed_sessions)
    order = await _order(committed_sessions, payments, household_id)
    genuine = demo.notification(order.out_trade_no, 12345).decode()
    body = {
        "forged_signature": genuine[:-4] + "0000",
        "tampered_amount": genuine.replace("total_amount=123.45", "total_amount=1.00"),
        "signed_other_amount": demo.notification(order.out_trade_no, 12346).decode(),
        "other_merchant": other.notification(order.out_trade_no, 12345).decode(),
        "unknown_app_id": genuine.replace(f"app_id={demo.merchant.app_id}", "app_id=2021999999999999"),
        "three_decimals": demo.notification(order.out_trade_no, 12345, amount="123.450").decode(),
    }[case].encode()
    assert other.merchant.app_id == OTHER_APP_ID

    outcome = await _notify(committed_sessions, payments, body)

    assert (outcome.verdict, outcome.answer.body) == ("rejected", b"fail") and reason in (outcome.reason or "")
    assert await _facts(committed_sessions, account_id) == {"balance": 0, "ledger": 0, "payments": 0}
    assert [v for v, _ in await _notifications(committed_sessions, order.out_trade_no)] == ["rejected"]
    assert order.id is not None and reason in (await _alarm(committed_sessions, order.id) or "")
    async with committed_sessions() as session:
        assert (await session.get(PaymentOrder, order.id)).state is OrderState.created  # type: ignore[union-attr]


async def test_an_unknown_order_and_a_body_that_is_no_form_are_rejected_with_the_company_alarm(
        committed_sessions: async_sessionmaker[AsyncSession], online: Any) -> None:
    payments, demo, _ = online
    household_id, account_id = await _household(committed_sessions)
    order = await _order(committed_sessions, payments, household_id, 100)
    before = await _books(committed_sessions)

    unknown = await _notify(committed_sessions, payments, demo.notification("SW202612079999999999", 100))
    garbage = await _notify(committed_sessions, payments, b"\xff\xfe<not a form>")

    assert (unknown.verdict, unknown.reason) == ("rejected", "unknown out_trade_no 'SW202612079999999999'")
    assert (garbage.verdict, garbage.reason, garbage.answer.body) == ("rejected", "not a form body", b"fail")
    assert await _notifications(committed_sessions, "SW202612079999999999") == [
        ("rejected", "unknown out_trade_no 'SW202612079999999999'")]
    assert "not a form body" in (await _alarm(committed_sessions, 0) or "")
    # Nothing was credited anywhere: not the household with an open order of that amount,
    # not any account; every ledger sum is still its balance.
    assert await _facts(committed_sessions, account_id) == {"balance": 0, "ledger": 0, "payments": 0}
    assert await _books(committed_sessions) == before and before["unbalanced"] == 0
    assert await _notifications(committed_sessions, order.out_trade_no) == []


async def test_a_not_paid_status_is_kept_and_answered_success_without_credit(
        committed_sessions: async_sessionmaker[AsyncSession], online: Any) -> None:
    payments, demo, _ = online
    household_id, account_id = await _household(committed_sessions)
    order = await _order(committed_sessions, payments, household_id)

    outcome = await _notify(committed_sessions, payments,
                            demo.notification(order.out_trade_no, 12345, status="TRADE_CLOSED"))

    assert (outcome.verdict, outcome.answer.body) == ("not_paid", b"success")
    assert await _facts(committed_sessions, account_id) == {"balance": 0, "ledger": 0, "payments": 0}
    assert await _notifications(committed_sessions, order.out_trade_no) == [
        ("rejected", "trade status TRADE_CLOSED: not paid")]


async def test_a_closed_order_paid_after_all_is_credited_and_alarmed(
        committed_sessions: async_sessionmaker[AsyncSession], online: Any) -> None:
    payments, demo, _ = online
    household_id, account_id = await _household(committed_sessions)
    order = await _order(committed_sessions, payments, household_id, 2000)
    async with transaction(committed_sessions) as session:
        await session.execute(text("UPDATE payment_orders SET state = 'closed', closed_at = now() WHERE id = :o"),
                              {"o": order.id})

    outcome = await _notify(committed_sessions, payments, demo.notification(order.out_trade_no, 2000))

    assert outcome.verdict == "accepted"
    assert await _facts(committed_sessions, account_id) == {"balance": 2000, "ledger": 2000, "payments": 1}
    assert order.id is not None and "paid after it was closed" in (await _alarm(committed_sessions, order.id) or "")


async def test_a_prepaid_card_account_gets_its_pending_card_write(
        committed_sessions: async_sessionmaker[AsyncSession], online: Any) -> None:
    payments, demo, _ = online
    household_id, account_id = await _household(committed_sessions, BillingMode.prepaid_card)
    order = await _order(committed_sessions, payments, household_id, 3000)

    await _notify(committed_sessions, payments, demo.notification(order.out_trade_no, 3000))

    async with committed_sessions() as session:
        writes = (await session.execute(text(
            "SELECT w.target, w.amount_fen, w.state, w.payment_id = o.payment_id FROM pending_writes w "
            "JOIN payment_orders o ON o.account_id = w.account_id WHERE w.account_id = :a"),
            {"a": account_id})).all()
    assert [tuple(w) for w in writes] == [("card", 3000, "pending", True)]
    assert await _facts(committed_sessions, account_id) == {"balance": 3000, "ledger": 3000, "payments": 1}
