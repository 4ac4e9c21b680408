"""Payment orders at the service: every refusal before anything is written, the
out_trade_no and expiry, a double tap is one order; the gateway is asked after the row is
committed; the query job credits what the gateway says is paid and closes the expired;
barcode pay at the counter waits for a slow payer, cancels at the deadline and counts in
the cashier's day."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.billing.models import BillingMode
from backend.db import transaction
from backend.errors import DomainError, ErrorCode
from backend.payments.counter import Operator
from backend.payments.models import PaymentChannel, PaymentPurpose
from backend.payments.online.counter_online import channel_of_code, counter_barcode_pay, counter_qr_order
from backend.payments.online.gateway import TradeState, TradeStatus
from backend.payments.online.jobs import follow_open_orders
from backend.payments.online.models import OrderOrigin, OrderScene, OrderState, PaymentOrder
from backend.payments.online.orders import OrderAsk, create_payment_order, open_order
from tests.billing.factories import at, balance, ledger_sum, served_household, tariff
from tests.factories import make_staff
from tests.payments.online.stand_in import stand_in_payments

NOW = at(2026, 12, 7, 10)
WECHAT_UA = "Mozilla/5.0 (iPhone) AppleWebKit MicroMessenger/8.0.50"


def _ask(household_id: int, **changes: Any) -> OrderAsk:
    values: dict[str, Any] = {"amount_fen": 10000, "purpose": PaymentPurpose.recharge,
                              "channel": PaymentChannel.alipay, "scene": OrderScene.wap,
                              "origin": OrderOrigin.resident, "created_by": "resident:1", "household_id": household_id}
    values.update(changes)
    return OrderAsk(**values)


async def test_an_order_gets_its_trade_number_expiry_and_a_double_tap_is_one_order(session: AsyncSession) -> None:
    online, _, _ = stand_in_payments()
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
    assert served.household.id is not None

    order, new = await open_order(session, online=online, ask=_ask(served.household.id, idempotency_key="tap-1"),
                                  now=NOW)
    again, again_new = await open_order(session, online=online, ask=_ask(served.household.id,
                                                                         idempotency_key="tap-1"), now=NOW)

    assert (new, again_new, again.id) == (True, False, order.id)
    assert order.out_trade_no == f"SW20261207{order.id:010d}"
    assert (order.expires_at - NOW, order.merchant, order.state) == (timedelta(minutes=30), "demo", OrderState.created)
    assert order.subject == f"水费充值 {served.household.account_no}"
    with pytest.raises(DomainError) as reused:
        await open_order(session, online=online, ask=_ask(served.household.id, idempotency_key="tap-1",
                                                          amount_fen=10001), now=NOW)
    assert reused.value.code is ErrorCode.IDEMPOTENCY_CONFLICT


@pytest.mark.parametrize(("changes", "code"), [
    ({"amount_fen": 0}, ErrorCode.PAYMENT_AMOUNT_INVALID),
    ({"amount_fen": -1}, ErrorCode.PAYMENT_AMOUNT_INVALID),
    ({"amount_fen": 5_000_001}, ErrorCode.PAYMENT_ONLINE_ABOVE_MAXIMUM),
    ({"channel": PaymentChannel.wechat, "scene": OrderScene.h5}, ErrorCode.PAYMENT_CHANNEL_UNAVAILABLE),
    ({"scene": OrderScene.jsapi}, ErrorCode.PAYMENT_SCENE_UNSUPPORTED),
    ({"scene": OrderScene.h5}, ErrorCode.PAYMENT_SCENE_UNSUPPORTED),
    ({"household_id": 0}, ErrorCode.NOT_FOUND),
    ({"household_id": None, "account_no": "NOPE"}, ErrorCode.NOT_FOUND),
    ({"closed": True}, ErrorCode.PAYMENT_ACCOUNT_NOT_PAYABLE),
])
async def test_a_bad_order_is_refused_and_writes_nothing(session: AsyncSession, changes: dict[str, Any],
                                                         code: ErrorCode) -> None:
    online, demo, _ = stand_in_payments()
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
    household_id = served.household.id
    assert household_id is not None
    if changes.pop("closed", False):
        await session.execute(text("UPDATE accounts SET status = 'closed' WHERE id = :a"), {"a": served.account_id})
        session.expire_all()
    ask = _ask(**{"household_id": household_id, **changes})
    with pytest.raises(DomainError) as refused:
        await open_order(session, online=online, ask=ask, now=NOW)
    assert refused.value.code is code
    count = (await session.execute(select(func.count()).select_from(PaymentOrder).where(
        PaymentOrder.account_id == served.account_id))).scalar_one()  # type: ignore[arg-type]
    assert count == 0 and demo.calls == []
    assert (await balance(session, served.account_id), await ledger_sum(session, served.account_id)) == (0, 0)
    payments = (await session.execute(text("SELECT count(*) FROM payments WHERE account_id = :a"),
                                      {"a": served.account_id})).scalar_one()
    assert payments == 0


def test_wechat_rules_need_an_openid_for_jsapi_and_refuse_h5_inside_wechat() -> None:
    from backend.payments.online.merchants import Merchants, WechatMerchant
    from backend.payments.online.models import GatewayApi
    from backend.payments.online.orders import _validate
    from backend.payments.online.registry import OnlinePayments

    online = OnlinePayments(Merchants(public_base_url="http://x", wechat=(WechatMerchant(
        name="demo", api=GatewayApi.wechat_v3, app_id="wx0000000000000001", mch_id="1900000001"),)))
    wechat = {"channel": PaymentChannel.wechat}
    for changes, code in (({"scene": OrderScene.jsapi}, ErrorCode.PAYMENT_OPENID_REQUIRED),
                          ({"scene": OrderScene.h5, "user_agent": WECHAT_UA}, ErrorCode.PAYMENT_H5_IN_WECHAT)):
        with pytest.raises(DomainError) as refused:
            _validate(_ask(1, **wechat, **changes), online)
        assert refused.value.code is code
    _validate(_ask(1, **wechat, scene=OrderScene.jsapi, openid="o-payer", user_agent=WECHAT_UA), online)
    _validate(_ask(1, **wechat, scene=OrderScene.h5, user_agent="Mozilla/5.0 Safari"), online)


@pytest.mark.parametrize(("code", "channel"), [
    ("283456789012345678", PaymentChannel.alipay), ("134567890123456789", PaymentChannel.wechat),
    ("1345678901234", None), ("993456789012345678", None), ("28345678901234567a", None), ("", None),
])
def test_a_payment_code_says_its_channel(code: str, channel: PaymentChannel | None) -> None:
    if channel is None:
        with pytest.raises(DomainError) as refused:
            channel_of_code(code)
        assert refused.value.code is ErrorCode.PAYMENT_CODE_INVALID
    else:
        assert channel_of_code(code) is channel


# ----------------------------------------------------------------- with commits


@pytest.fixture(scope="module")
def stand_in() -> Any:
    return stand_in_payments()


async def _served(sessions: async_sessionmaker[AsyncSession], mode: BillingMode = BillingMode.prepaid_station) -> Any:
    async with transaction(sessions) as session:
        return await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1), mode=mode)


async def _money(sessions: async_sessionmaker[AsyncSession], account_id: int) -> tuple[int, int]:
    async with sessions() as session:
        return await balance(session, account_id), await ledger_sum(session, account_id)


async def test_the_gateway_is_asked_after_the_order_is_committed_and_its_payload_kept(
        committed_sessions: async_sessionmaker[AsyncSession], stand_in: Any) -> None:
    online, demo, _ = stand_in
    served = await _served(committed_sessions)

    order, payload = await create_payment_order(committed_sessions, online=online, services={}, now=NOW,
                                                ask=_ask(served.household.id, scene=OrderScene.qr))

    assert payload.value == f"https://qr.example/{order.out_trade_no}" and ("create", order.out_trade_no) in demo.calls
    async with committed_sessions() as session:
        stored = await session.get(PaymentOrder, order.id)
    assert stored is not None and stored.client_payload == {"kind": "code_url", "value": payload.value}


async def test_the_query_job_credits_the_paid_and_closes_the_expired(
        committed_sessions: async_sessionmaker[AsyncSession], stand_in: Any) -> None:
    online, demo, _ = stand_in
    served = await _served(committed_sessions)
    async with transaction(committed_sessions) as session:
        paid, _ = await open_order(session, online=online, ask=_ask(served.household.id, amount_fen=777), now=NOW)
        expired, _ = await open_order(session, online=online, ask=_ask(served.household.id, amount_fen=888), now=NOW)
        fresh, _ = await open_order(session, online=online, ask=_ask(served.household.id, amount_fen=999),
                                    now=NOW + timedelta(minutes=40))
    demo.trades[paid.out_trade_no] = TradeStatus(paid.out_trade_no, TradeState.paid, trade_no="T-paid",
                                                 amount_fen=777)

    done = await follow_open_orders(committed_sessions, online=online, services={}, now=NOW + timedelta(minutes=41))
    again = await follow_open_orders(committed_sessions, online=online, services={}, now=NOW + timedelta(minutes=41, seconds=30))

    # (the module's earlier orders expired too)
    assert done.credited == 1 and done.closed >= 1 and again.asked == 0
    async with committed_sessions() as session:
        states = {o.id: o.state for o in (await session.execute(select(PaymentOrder).where(
            PaymentOrder.account_id == served.account_id))).scalars()}  # type: ignore[arg-type]
    assert states == {paid.id: OrderState.paid, expired.id: OrderState.closed, fresh.id: OrderState.created}
    assert ("close", expired.out_trade_no) in demo.calls
    assert await _money(committed_sessions, served.account_id) == (777, 777)


async def _cashier(sessions: async_sessionmaker[AsyncSession]) -> Operator:
    async with transaction(sessions) as session:
        staff = await make_staff(session, permissions={"counter:collect"})
    assert staff.user.id is not None
    return Operator(staff.user.id, staff.user.full_name)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0
        self.slept: list[float] = []

    def tick(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


async def test_barcode_pay_waits_for_a_slow_payer_and_counts_in_the_cashiers_day(
        committed_sessions: async_sessionmaker[AsyncSession], stand_in: Any) -> None:
    online, demo, _ = stand_in
    served = await _served(committed_sessions)
    operator = await _cashier(committed_sessions)
    clock = _Clock()
    demo.barcode_answers[:] = [TradeState.paying, TradeState.paying, TradeState.paid]

    order = await counter_barcode_pay(committed_sessions, online=online, services={}, account_id=served.account_id,
                                      amount_fen=4200, purpose=PaymentPurpose.recharge, auth_code="283456789012345678",
                                      operator=operator, clock=lambda: NOW, sleep=clock.sleep, ticker=clock.tick)

    assert order.state is OrderState.paid and clock.slept == [3.0, 3.0]
    assert await _money(committed_sessions, served.account_id) == (4200, 4200)
    async with committed_sessions() as session:
        payment = (await session.execute(text("SELECT channel, operator_id, business_day FROM payments WHERE id = :p"),
                                         {"p": order.payment_id})).one()
    assert tuple(payment) == ("alipay", operator.id, NOW.date())


async def test_barcode_pay_cancels_at_the_deadline_and_credits_nothing(
        committed_sessions: async_sessionmaker[AsyncSession], stand_in: Any) -> None:
    online, demo, _ = stand_in
    served = await _served(committed_sessions)
    operator = await _cashier(committed_sessions)
    clock = _Clock()
    demo.barcode_answers[:] = [TradeState.paying] * 30

    with pytest.raises(DomainError) as declined:
        await counter_barcode_pay(committed_sessions, online=online, services={}, account_id=served.account_id,
                                  amount_fen=4200, purpose=PaymentPurpose.recharge, auth_code="283456789012345679",
                                  operator=operator, clock=lambda: NOW, sleep=clock.sleep, ticker=clock.tick,
                                  deadline_s=10)

    assert declined.value.code is ErrorCode.PAYMENT_DECLINED
    assert await _money(committed_sessions, served.account_id) == (0, 0)
    async with committed_sessions() as session:
        order = (await session.execute(select(PaymentOrder).where(
            PaymentOrder.account_id == served.account_id))).scalar_one()  # type: ignore[arg-type]
    assert order.state is OrderState.closed and ("cancel", order.out_trade_no) in demo.calls


async def test_the_counter_qr_is_a_qr_order_of_the_cashier(
        committed_sessions: async_sessionmaker[AsyncSession], stand_in: Any) -> None:
    online, _, _ = stand_in
    served = await _served(committed_sessions)
    operator = await _cashier(committed_sessions)

    order, payload = await counter_qr_order(committed_sessions, online=online, services={},
                                            channel=PaymentChannel.alipay, account_id=served.account_id,
                                            amount_fen=500, purpose=PaymentPurpose.recharge, operator=operator,
                                            now=NOW)

    assert (order.scene, order.origin, order.operator_id) == (OrderScene.qr, OrderOrigin.counter, operator.id)
    assert payload.value.startswith("https://qr.example/")  # type: ignore[union-attr]


async def test_the_merchants_check_prints_each_mistake_and_the_hosts_refuse_a_bad_file(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.payments.online.registry import merchants_check, offered
    from backend.settings import SettingsError

    bad = tmp_path / "merchants.toml"
    bad.write_text('public_base_url = "ftp://x"\n[[alipay]]\nname = "Main"\napp_id = "12"\n', encoding="utf-8")
    monkeypatch.setenv("SHUIWU_PAYMENTS_CONFIG", str(bad))

    result = await merchants_check(None)
    with pytest.raises(SettingsError) as refused:
        offered(None)

    assert not result.ok and "`public_base_url` must be an http(s) URL" in result.detail
    assert "`name` = 'Main' is not valid" in result.detail and "`private_key` is missing" in result.detail
    assert len(result.detail.splitlines()) == 1 + len(str(refused.value).splitlines()) - 1
    monkeypatch.delenv("SHUIWU_PAYMENTS_CONFIG")
    assert (await merchants_check(None)).ok
