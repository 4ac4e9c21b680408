"""The review's proofs of the online money path (issue 18), kept passing: garbage
notification bodies are rejected (never an exception, never a 500 at the route); a
barcode order paid while the loop waits is never cancelled; refunds and reversals cancel
the pending card write and exclude each other; a counter order paid after its cashier's
day was handed over leaves that day alone."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.billing.models import BillingMode
from backend.db import transaction
from backend.errors import DomainError, ErrorCode
from backend.gateways.errors import GatewayBadAnswer
from backend.payments.counter import Operator, business_day, reverse_payment, take_payment
from backend.payments.days import cashier_day, hand_over_day
from backend.payments.models import PaymentChannel, PaymentPurpose
from backend.payments.online.alipay import yuan_to_fen as alipay_yuan_to_fen
from backend.payments.online.counter_online import counter_barcode_pay, open_barcode_order, open_qr_order
from backend.payments.online.credit import CANCELLED_AT_GATEWAY, ONLINE_OPERATOR
from backend.payments.online.gateway import GatewayRefundState, RefundResult, TradeState, TradeStatus
from backend.payments.online.jobs import follow_order
from backend.payments.online.merchants import load_merchants
from backend.payments.online.models import GatewayApi, OrderState, RefundState
from backend.payments.online.notify import receive_notification
from backend.payments.online.refunds import record_refund_outcome, refund_online, request_online_refunds
from backend.payments.online.registry import OnlinePayments
from backend.payments.online.testkeys import write_test_merchants
from backend.payments.online.wechat import fen_of
from backend.payments.online.wechat import yuan_to_fen as wechat_yuan_to_fen
from tests.billing.factories import at, balance, ledger_sum, served_household, tariff
from tests.factories import make_staff
from tests.payments.online.keys import seeded
from tests.payments.online.refund_helpers import paid_order
from tests.payments.online.scripted_gateway import StandInGateway, services_of
from tests.payments.online.stand_in import StandIn, stand_in_payments
from tests.payments.online.test_orders_http import World, world  # noqa: F401  (module fixture)
from tests.payments.online.test_refunds import household_with_payments

NOW = at(2026, 12, 7, 10)


@pytest.fixture(scope="module")
def real_online(tmp_path_factory: pytest.TempPathFactory) -> OnlinePayments:
    written = write_test_merchants(seeded(Path(tmp_path_factory.mktemp("m"))), public_base_url="http://127.0.0.1:9")
    return OnlinePayments(load_merchants(written.merchants_file))


def _ids(online: OnlinePayments) -> tuple[str, str, str]:
    v2 = next(m for m in online.merchants.wechat if m.api is GatewayApi.wechat_v2)
    return online.merchants.alipay[0].app_id, v2.app_id, v2.mch_id  # type: ignore[attr-defined]


CASES = {
    GatewayApi.alipay: [
        b"app_id={A}&sign=x&sign_type=RSA2&out_trade_no=SW1&total_amount=1e1",
        b"app_id={A}&sign=%ZZ&sign_type=RSA2",
        b"app_id={A}&sign=\xc3\xa9&sign_type=RSA2&x=1",
        b"app_id={A}&sign=AAAA&sign_type=RSA2",
        b"app_id={A}&sign=!!!!&sign_type=RSA2",
        b"app_id={A}&sign=" + b"A" * 5000 + b"&sign_type=RSA2",
        b"app_id={A}&app_id={A}",
        b"app_id={A}&Bad=1",
        b"app_id={A}&sign=a%00b&sign_type=RSA2",
    ],
    GatewayApi.wechat_v2: [
        b"<xml><appid>{W}</appid><mch_id>{M}</mch_id><a><b>1</b></a><sign>x</sign></xml>",
        b"<xml><appid>{W}</appid><appid>{W}</appid><mch_id>{M}</mch_id><sign>x</sign></xml>",
        b"<xml><appid>{W}</appid><mch_id>{M}</mch_id><sign><x>1</x></sign></xml>",
        b"<xml><appid>{W}</appid><mch_id>{M}</mch_id><sign_type>HMAC-SHA256</sign_type><a><b>1</b></a></xml>",
        b"<xml><appid>{W}</appid><mch_id>{M}</mch_id><sign_type>HMAC-SHA256</sign_type>"
        b"<sign>x</sign><sign>y</sign></xml>",
        b"<xml a='1'><appid>{W}</appid><mch_id>{M}</mch_id><sign>x</sign></xml>",
        b"<xml><appid>{W}</appid><mch_id>{M}</mch_id><sign>x</sign></xml><!-- -->",
        b"<?xml version='1.0' encoding='gbk'?><xml><appid>{W}</appid><mch_id>{M}</mch_id></xml>",
        b"<xml><appid>{W}</appid><mch_id>{M}</mch_id>\xff</xml>",
    ],
    GatewayApi.wechat_v3: [
        b'{"resource": {}}',
        b'{"resource": {"a": 1}, "x": "\\ud800"}',
        b'{"resource": {}, "resource_type": "encrypt-resource"}',
        b'{"resource": {"algorithm": "AEAD_AES_256_GCM", "nonce": 1, "ciphertext": []}, '
        b'"resource_type": "encrypt-resource"}',
        b'{"resource": {}}' + b"\xff",
        b'{"resource": {}, "n": 1e999999}',
        b'{"resource": {}, "n": ' + b"1" * 5000 + b"}",
    ],
}
V3_HEADERS = [{}, {"Wechatpay-Signature": "x"}, {"Wechatpay-Signature": "x", "Wechatpay-Timestamp": "abc",
              "Wechatpay-Nonce": "n", "Wechatpay-Serial": "s"},
              {"Wechatpay-Signature": "!!", "Wechatpay-Timestamp": "1", "Wechatpay-Nonce": "n",
               "Wechatpay-Serial": "s", "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048"}]


@pytest.mark.parametrize(("api", "index"), [(api, i) for api, bodies in CASES.items() for i in range(len(bodies))])
async def test_garbage_is_rejected_not_raised(committed_sessions: async_sessionmaker[AsyncSession],
                                              real_online: OnlinePayments, api: GatewayApi, index: int) -> None:
    a, w, m = _ids(real_online)
    body = CASES[api][index].replace(b"{A}", a.encode()).replace(b"{W}", w.encode()).replace(b"{M}", m.encode())
    for headers in (V3_HEADERS if api is GatewayApi.wechat_v3 else [{}]):
        outcome = await receive_notification(committed_sessions, online=real_online, api=api, headers=headers,
                                             body=body, now=NOW)
        assert outcome.verdict == "rejected", (headers, outcome)

@pytest.mark.parametrize(("path", "body", "content_type"), [
    ("/pay/wechat/notify", b"<?xml version='1.0' encoding='gbk'?><xml><appid>x</appid></xml>", "text/xml"),
    ("/pay/wechat/notify", b"<?xml version='1.0' encoding='utf-16'?><xml><appid>x</appid></xml>", "text/xml"),
])
async def test_a_declared_multibyte_encoding_is_answered_failure_not_500(
        world: World, path: str, body: bytes, content_type: str) -> None:  # noqa: F811
    async with httpx.AsyncClient(base_url=world.api.url) as http:
        answer = await http.post(path, content=body, headers={"content-type": content_type})
    assert answer.status_code == 200 and "FAIL" in answer.text, (answer.status_code, answer.text[:200])


REFUND_NOW = at(2026, 12, 10, 10)


async def _refund_all(session: AsyncSession, account_id: int, payment_id: int, fen: int) -> None:
    plan = await request_online_refunds(session, account_id=account_id, amount_fen=fen, reason="错缴",
                                        by="admin", now=REFUND_NOW, payment_id=payment_id)
    (refund,) = plan.refunds
    assert refund.id is not None
    done = await record_refund_outcome(session, refund_id=refund.id, now=REFUND_NOW, outcome=RefundResult(
        refund.out_refund_no, GatewayRefundState.succeeded, refund_id="G1", amount_fen=fen))
    assert done.state is RefundState.succeeded


async def test_a_refunded_online_recharge_of_a_card_account_keeps_its_pending_card_write(
        session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1),
                                    mode=BillingMode.prepaid_card)
    assert served.household.id is not None
    _, payment = await paid_order(session, account_id=served.account_id, household_id=served.household.id,
                                  channel=PaymentChannel.alipay, fen=3000, at=at(2026, 12, 9, 9))
    assert payment.id is not None
    await _refund_all(session, served.account_id, payment.id, 3000)

    assert await balance(session, served.account_id) == 0
    states = (await session.execute(text("SELECT state FROM pending_writes WHERE payment_id = :p"),
                                    {"p": payment.id})).scalars().all()
    # The money went back to the payer: it must not still be written to the card.
    assert states == ["cancelled"], states


async def test_a_refunded_online_payment_can_still_be_reversed_debiting_the_account_twice(
        session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1),
                                    mode=BillingMode.prepaid_station)
    assert served.household.id is not None
    _, payment = await paid_order(session, account_id=served.account_id, household_id=served.household.id,
                                  channel=PaymentChannel.alipay, fen=3000, at=at(2026, 12, 9, 9))
    assert payment.id is not None
    await _refund_all(session, served.account_id, payment.id, 3000)

    refused = None
    try:
        await reverse_payment(session, payment_id=payment.id, reason="冲正", now=REFUND_NOW,
                              operator=Operator(None, "admin", may_reverse_any=True))
    except DomainError as error:
        refused = error
    money = await balance(session, served.account_id)
    assert money == await ledger_sum(session, served.account_id)
    # 30.00 paid, 30.00 given back online: the payment must not also be reversed (-30.00 more).
    assert refused is not None and money == 0, (refused, money)


async def test_a_reversed_recharge_of_a_card_account_keeps_its_pending_card_write(session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1),
                                    mode=BillingMode.prepaid_card)
    cashier = Operator(None, "收费员", may_reverse_any=True)
    payment = await take_payment(session, account_id=served.account_id, channel=PaymentChannel.cash,
                                 purpose=PaymentPurpose.recharge, amount_fen=5000, confirm_amount_fen=5000,
                                 idempotency_key=f"rev:{served.account_id}", operator=cashier, now=REFUND_NOW)
    assert payment.id is not None
    await reverse_payment(session, payment_id=payment.id, reason="收错", operator=cashier, now=REFUND_NOW)

    states = (await session.execute(text("SELECT state FROM pending_writes WHERE payment_id = :p"),
                                    {"p": payment.id})).scalars().all()
    assert await balance(session, served.account_id) == 0
    assert states == ["cancelled"], states

async def test_money_written_to_the_card_is_neither_refunded_online_nor_reversed(session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1),
                                    mode=BillingMode.prepaid_card)
    assert served.household.id is not None
    _, payment = await paid_order(session, account_id=served.account_id, household_id=served.household.id,
                                  channel=PaymentChannel.alipay, fen=3000, at=at(2026, 12, 9, 9))
    assert payment.id is not None
    await session.execute(text("UPDATE pending_writes SET state = 'written', settled_at = :t, settled_by = 'card' "
                               "WHERE payment_id = :p"), {"t": REFUND_NOW, "p": payment.id})
    with pytest.raises(DomainError) as refused:
        await request_online_refunds(session, account_id=served.account_id, amount_fen=3000, reason="错缴",
                                     by="admin", now=REFUND_NOW, payment_id=payment.id)
    assert refused.value.code is ErrorCode.REFUND_NOT_POSSIBLE
    with pytest.raises(DomainError) as reversal:
        await reverse_payment(session, payment_id=payment.id, reason="冲正", now=REFUND_NOW,
                              operator=Operator(None, "admin", may_reverse_any=True))
    assert reversal.value.code is ErrorCode.REVERSAL_NOT_ALLOWED
    assert await balance(session, served.account_id) == await ledger_sum(session, served.account_id) == 3000


async def test_a_partial_refund_lowers_the_pending_card_write(session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1),
                                    mode=BillingMode.prepaid_card)
    assert served.household.id is not None
    _, payment = await paid_order(session, account_id=served.account_id, household_id=served.household.id,
                                  channel=PaymentChannel.alipay, fen=3000, at=at(2026, 12, 9, 9))
    assert payment.id is not None
    await _refund_all(session, served.account_id, payment.id, 1000)
    rows = (await session.execute(text("SELECT state, amount_fen FROM pending_writes WHERE payment_id = :p"),
                                  {"p": payment.id})).all()
    assert [tuple(r) for r in rows] == [("pending", 2000)]
    assert await balance(session, served.account_id) == 2000


async def test_concurrent_refund_requests_never_exceed_the_payment(
        committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    async with transaction(committed_sessions) as session:
        served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1),
                                         mode=BillingMode.prepaid_station)
        assert served.household.id is not None
        _, payment = await paid_order(session, account_id=served.account_id, household_id=served.household.id,
                                      channel=PaymentChannel.alipay, fen=3000, at=at(2026, 12, 9, 9))
        assert payment.id is not None
        payment_id = payment.id

    async def one() -> str:
        try:
            async with transaction(committed_sessions) as session:
                await request_online_refunds(session, account_id=served.account_id, amount_fen=2000, reason="错缴",
                                             by="a", now=REFUND_NOW, payment_id=payment_id)
            return "ok"
        except DomainError as error:
            return str(error.code)

    await asyncio.gather(*(one() for _ in range(5)))
    async with committed_sessions() as session:
        total = (await session.execute(text("SELECT coalesce(sum(amount_fen), 0) FROM payment_refunds r "
                                            "WHERE r.account_id = :a AND state <> 'failed'"),
                                       {"a": served.account_id})).scalar_one()
    assert total <= 3000, total


async def test_a_counter_order_paid_after_hand_over_leaves_the_handed_over_day_alone(
        committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    online, demo, _ = stand_in_payments()
    async with transaction(committed_sessions) as session:
        served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1),
                                        mode=BillingMode.prepaid_station)
        staff = await make_staff(session)
    assert staff.user.id is not None
    cashier = Operator(staff.user.id, staff.username)
    orders = []
    for _ in range(2):
        async with transaction(committed_sessions) as session:
            orders.append(await open_qr_order(session, online=online, channel=PaymentChannel.alipay,
                                              account_id=served.account_id, amount_fen=4200,
                                              purpose=PaymentPurpose.recharge, operator=cashier, now=NOW))
    before = await receive_notification(committed_sessions, online=online, api=GatewayApi.alipay, headers={},
                                        body=demo.notification(orders[0].out_trade_no, 4200), now=NOW)
    assert before.verdict == "accepted"
    day = business_day(NOW, "Asia/Shanghai")
    async with transaction(committed_sessions) as session:
        handed = await hand_over_day(session, operator_id=staff.user.id, day=day, by="主管",
                                     now=NOW + timedelta(hours=1))
    # Paid before the hand-over: the cashier's day counts it under alipay (the totals line has no channel).
    assert handed.net_fen == 4200 and [c.channel for c in handed.channels] == [PaymentChannel.alipay]
    assert handed.totals.channel is None and handed.takings_json()["alipay"]["net_fen"] == 4200

    after = await receive_notification(committed_sessions, online=online, api=GatewayApi.alipay, headers={},
                                       body=demo.notification(orders[1].out_trade_no, 4200),
                                       now=NOW + timedelta(hours=2))
    assert after.verdict == "accepted"
    async with committed_sessions() as session:
        figures = await cashier_day(session, operator_id=staff.user.id, day=day)
        late = (await session.execute(text(
            "SELECT p.operator_id, p.operator_name FROM payments p JOIN payment_orders o ON o.payment_id = p.id "
            "WHERE o.id = :o"), {"o": orders[1].id})).one()
        money = await balance(session, served.account_id)
        ledger = await ledger_sum(session, served.account_id)
    assert figures.handed_over is not None and figures.net_fen == figures.handed_over.net_fen == 4200
    # Credited all the same, as an online payment with no cashier.
    assert tuple(late) == (None, ONLINE_OPERATOR) and money == ledger == 8400


async def test_barcode_deadline_cancels_an_order_a_notification_already_credited(
        committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    online, demo, _ = stand_in_payments()
    async with transaction(committed_sessions) as session:
        served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1),
                                        mode=BillingMode.prepaid_station)
        staff = await make_staff(session)
    # barcode_pay answers paying; every query answers paying (the payer confirms after it)
    demo.barcode_answers[:] = [TradeState.paying] + [TradeState.paying] * 5
    ticks = iter([0.0, 10.0, 100.0, 100.0, 100.0])
    credited: list[str] = []

    async def sleep(_: float) -> None:
        # between the loop's sleep and its deadline the payer confirms; the gateway notifies
        orders = [o for kind, o in demo.calls if kind == "barcode_pay"]
        if orders and not credited:
            out = await receive_notification(committed_sessions, online=online, api=GatewayApi.alipay, headers={},
                                             body=demo.notification(orders[0], 777), now=NOW + timedelta(seconds=20))
            credited.append(out.verdict)

    raised = None
    try:
        await counter_barcode_pay(committed_sessions, online=online, services={}, account_id=served.account_id,
                                  amount_fen=777, purpose=PaymentPurpose.recharge, auth_code="280000000000000000",
                                  operator=Operator(staff.user.id, staff.username),
                                  clock=lambda: NOW, sleep=sleep, ticker=lambda: next(ticks), poll_s=1,
                                  deadline_s=45)
    except DomainError as error:
        raised = error
    async with committed_sessions() as session:
        order = (await session.execute(text("SELECT state FROM payment_orders WHERE account_id = :a"),
                                       {"a": served.account_id})).scalar_one()
        money = await balance(session, served.account_id)
    assert credited == ["accepted"] and order == "paid" and money == 777
    # The order is paid and credited: the loop must neither cancel (= refund) it at the gateway
    # nor tell the cashier it was declined.
    assert ("cancel", next(o for k, o in demo.calls if k == "barcode_pay")) not in demo.calls, demo.calls
    assert raised is None, raised


async def _barcode(sessions: async_sessionmaker[AsyncSession], online: OnlinePayments, demo: StandIn,
                   answers: list[TradeState]) -> tuple[int, str]:
    """A barcode payment of 777 fen with the gateway answering ``answers`` (barcode_pay's,
    then the queries'): paid, or PAYMENT_DECLINED at the counter. The account and the order."""
    async with transaction(sessions) as session:
        served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1),
                                        mode=BillingMode.prepaid_station)
        staff = await make_staff(session)
    demo.barcode_answers[:] = answers
    ticks = iter([0.0, 10.0, 100.0, 100.0, 100.0])

    async def sleep(_: float) -> None:
        return None

    order_state: OrderState | ErrorCode | None = None
    try:
        paid = await counter_barcode_pay(sessions, online=online, services={}, account_id=served.account_id,
                                         amount_fen=777, purpose=PaymentPurpose.recharge,
                                         auth_code="280000000000000000", operator=Operator(staff.user.id, staff.username),
                                         clock=lambda: NOW, sleep=sleep, ticker=lambda: next(ticks), poll_s=1,
                                         deadline_s=45)
        order_state = paid.state
    except DomainError as error:
        order_state = error.code
    reference = next(o for k, o in demo.calls if k == "barcode_pay")
    assert order_state in (ErrorCode.PAYMENT_DECLINED, OrderState.paid), order_state
    return served.account_id, reference


async def test_the_last_query_before_cancelling_finds_it_paid_and_credits_it(
        committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    online, demo, _ = stand_in_payments()
    # paying at every query in the loop, paid at the one the deadline asks
    account_id, reference = await _barcode(committed_sessions, online, demo,
                                           [TradeState.paying, TradeState.paying, TradeState.paid])
    async with committed_sessions() as session:
        state = (await session.execute(text("SELECT state FROM payment_orders WHERE out_trade_no = :o"),
                                       {"o": reference})).scalar_one()
        money = await balance(session, account_id)
    assert state == "paid" and money == 777 and ("cancel", reference) not in demo.calls


async def test_a_paid_notification_after_the_barcode_cancel_is_stored_and_alarmed_not_credited(
        committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    online, demo, _ = stand_in_payments()
    account_id, reference = await _barcode(committed_sessions, online, demo, [TradeState.paying] * 6)
    assert ("cancel", reference) in demo.calls
    # The trade was paid just before the cancel, which refunded it; its notification comes late.
    late = await receive_notification(committed_sessions, online=online, api=GatewayApi.alipay, headers={},
                                      body=demo.notification(reference, 777), now=NOW + timedelta(minutes=5))
    assert late.verdict == "rejected" and late.answer.body == b"success", late
    async with committed_sessions() as session:
        order = (await session.execute(text("SELECT state, failure, payment_id FROM payment_orders "
                                            "WHERE out_trade_no = :o"), {"o": reference})).one()
        kept = (await session.execute(text("SELECT verdict FROM payment_notifications WHERE out_trade_no = :o"),
                                      {"o": reference})).scalars().all()
        alarms = (await session.execute(text(
            "SELECT count(*) FROM alarms WHERE subject_kind = 'payment' AND subject_id = :o"),
            {"o": late.order_id})).scalar_one()
        money, ledger = await balance(session, account_id), await ledger_sum(session, account_id)
    assert order.state == "closed" and order.failure.startswith(CANCELLED_AT_GATEWAY) and order.payment_id is None
    assert kept == ["rejected"] and alarms == 1 and money == ledger == 0


async def test_a_notification_for_a_declined_order_is_credited_with_an_alarm(
        committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    online, demo, _ = stand_in_payments()
    account_id, reference = await _barcode(committed_sessions, online, demo, [TradeState.failed])
    assert ("cancel", reference) not in demo.calls
    paid = await receive_notification(committed_sessions, online=online, api=GatewayApi.alipay, headers={},
                                      body=demo.notification(reference, 777), now=NOW + timedelta(minutes=5))
    assert paid.verdict == "accepted"
    async with committed_sessions() as session:
        detail = (await session.execute(text(
            "SELECT detail FROM alarms WHERE subject_kind = 'payment' AND subject_id = :o"),
            {"o": paid.order_id})).scalar_one()
        money, ledger = await balance(session, account_id), await ledger_sum(session, account_id)
    assert "paid after it was failed" in detail and money == ledger == 777


@pytest.mark.parametrize("text", ["1.00\n", "1\n", " 1.00", "1.001", "-1", "1e2", "١.٠٠"])
def test_an_amount_in_yuan_is_all_digits_with_nothing_after(text: str) -> None:
    with pytest.raises(ValueError, match="not an amount"):
        alipay_yuan_to_fen(text)
    with pytest.raises(GatewayBadAnswer):
        wechat_yuan_to_fen(text)
    assert alipay_yuan_to_fen("12.3") == wechat_yuan_to_fen("12.3") == 1230


@pytest.mark.parametrize("text", ["100\n", " 100", "1_00", "١٠٠", "-1", ""])
def test_an_amount_in_fen_is_all_ascii_digits(text: str) -> None:
    with pytest.raises(GatewayBadAnswer):
        fen_of(text, what="total_fee")


class _Broken(StandInGateway):
    """A gateway whose client blows up with something that is no GatewayError (a bug)."""

    def refund(self, out_trade_no: str, *, out_refund_no: str, amount_fen: int, total_fen: int,
               reason: str) -> RefundResult:
        raise RuntimeError("a bug in the SDK")


class _Short(StandInGateway):
    """A gateway that confirms a refund of one fen less than asked."""

    def refund(self, out_trade_no: str, *, out_refund_no: str, amount_fen: int, total_fen: int,
               reason: str) -> RefundResult:
        return RefundResult(out_refund_no, GatewayRefundState.succeeded, refund_id="G", amount_fen=amount_fen - 1)


async def _alarm_details(sessions: async_sessionmaker[AsyncSession], order_id: int) -> list[str]:
    async with sessions() as session:
        return list((await session.execute(text(
            "SELECT detail FROM alarms WHERE subject_kind = 'payment' AND subject_id = :o"),
            {"o": order_id})).scalars().all())


async def test_one_refund_blowing_up_does_not_stop_the_others(
        committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    async with transaction(committed_sessions) as session:
        served, _ = await household_with_payments(session)
    done = await refund_online(committed_sessions, services_of(_Broken(PaymentChannel.alipay),
                                                               StandInGateway(PaymentChannel.wechat)),
                               account_id=served.account_id, amount_fen=3000, reason="错缴", by="收费员",
                               now=lambda: REFUND_NOW)
    # alipay 20.00 (newest) could not be sent; wechat 10.00 was refunded all the same
    assert [(r.amount_fen, r.state) for r in done.refunds] == [(1000, RefundState.succeeded)]
    async with committed_sessions() as session:
        stuck = (await session.execute(text(
            "SELECT order_id, state FROM payment_refunds WHERE account_id = :a AND amount_fen = 2000"),
            {"a": served.account_id})).one()
        assert await balance(session, served.account_id) == 19000 == await ledger_sum(session, served.account_id)
    assert stuck.state == "requested"
    assert any("could not be settled: RuntimeError" in d for d in await _alarm_details(committed_sessions,
                                                                                      stuck.order_id))


async def test_a_refund_confirmed_for_another_amount_is_not_posted_but_alarmed(
        committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    async with transaction(committed_sessions) as session:
        served, _ = await household_with_payments(session)
    done = await refund_online(committed_sessions, services_of(_Short(PaymentChannel.alipay)),
                               account_id=served.account_id, amount_fen=2000, reason="错缴", by="收费员",
                               now=lambda: REFUND_NOW)
    (refund,) = done.refunds
    assert refund.state is RefundState.requested
    async with committed_sessions() as session:
        assert await balance(session, served.account_id) == 20000 == await ledger_sum(session, served.account_id)
    assert any("refunded 1999 fen, not 2000" in d for d in await _alarm_details(committed_sessions, refund.order_id))


async def test_the_job_never_cancels_an_expired_barcode_order_a_notification_paid_meanwhile(
        committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    online, demo, _ = stand_in_payments()
    async with transaction(committed_sessions) as session:
        served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1),
                                        mode=BillingMode.prepaid_station)
        staff = await make_staff(session)
        stale = await open_barcode_order(session, online=online, account_id=served.account_id, amount_fen=500,
                                         purpose=PaymentPurpose.recharge, auth_code="280000000000000000",
                                         operator=Operator(staff.user.id, staff.username), now=NOW)
    later = stale.expires_at + timedelta(minutes=1)
    # The job read the order (created) and asked the gateway (still paying there); then the
    # notification credits it before the job cancels.
    demo.trades[stale.out_trade_no] = TradeStatus(stale.out_trade_no, TradeState.paying)
    paid = await receive_notification(committed_sessions, online=online, api=GatewayApi.alipay, headers={},
                                      body=demo.notification(stale.out_trade_no, 500), now=later)
    assert paid.verdict == "accepted" and stale.state is OrderState.created
    done = await follow_order(committed_sessions, online=online, services={}, order=stale, now=later)
    assert done == "paid" and ("cancel", stale.out_trade_no) not in demo.calls

    # An unpaid one is cancelled, and closed as cancelled at the gateway.
    async with transaction(committed_sessions) as session:
        unpaid = await open_barcode_order(session, online=online, account_id=served.account_id, amount_fen=600,
                                          purpose=PaymentPurpose.recharge, auth_code="280000000000000001",
                                          operator=Operator(staff.user.id, staff.username), now=NOW)
    demo.trades[unpaid.out_trade_no] = TradeStatus(unpaid.out_trade_no, TradeState.paying)
    assert await follow_order(committed_sessions, online=online, services={}, order=unpaid, now=later) == "closed"
    assert ("cancel", unpaid.out_trade_no) in demo.calls
    async with committed_sessions() as session:
        failure = (await session.execute(text("SELECT failure FROM payment_orders WHERE id = :o"),
                                         {"o": unpaid.id})).scalar_one()
        assert await balance(session, served.account_id) == 500 == await ledger_sum(session, served.account_id)
    assert failure == f"{CANCELLED_AT_GATEWAY}: expired"
