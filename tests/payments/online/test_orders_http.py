"""A full payment through every channel and scene over real HTTP on both sides: the real
app (uvicorn) with its merchants file, the local Alipay and WeChat Pay gateways (uvicorn),
the order opened through the gateway, the gateway "pays" and posts its signed
notification to our notify route, and the balance and ledger show it exactly once. Then
the issue's bad input through the same routes (tampered amount, forged signature,
replays, a body that is no form, a cancelled cashier page), each checking balance and
ledger; and the counter: barcode pay with a slow payer, and the dynamic QR over GraphQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.billing.models import BillingMode
from backend.clock import utcnow
from backend.db import transaction
from backend.payments.counter import Operator
from backend.payments.models import PaymentChannel, PaymentPurpose
from backend.payments.online.counter_online import counter_barcode_pay
from backend.payments.online.models import OrderOrigin, OrderScene, OrderState, PaymentOrder
from backend.payments.online.orders import OrderAsk, create_payment_order
from backend.payments.online.registry import OnlinePayments
from tests.billing.factories import at, served_household, tariff
from tests.factories import make_staff
from tests.live import LiveServer
from tests.payments.online.conftest import LiveGateways

RETRY_SCALE = 0.001


@dataclass
class World:
    api: LiveServer
    alipay: str
    wechat: str
    online: OnlinePayments
    services: dict[str, Any]

    def pay(self, channel: PaymentChannel, out_trade_no: str, mode: str = "normal", times: int = 1) -> Any:
        base = self.alipay if channel is PaymentChannel.alipay else self.wechat
        answer = httpx.post(f"{base}/_control/pay", json={"out_trade_no": out_trade_no, "mode": mode, "times": times},
                            timeout=30)
        answer.raise_for_status()
        return answer.json()

    def retries(self, enabled: bool) -> None:
        for base in (self.alipay, self.wechat):
            httpx.post(f"{base}/_control/settings", json={"notify_retries": enabled}).raise_for_status()


@pytest.fixture(scope="module")
def world(database_url: str, live_gateways: LiveGateways) -> Iterator[World]:
    """Our app (uvicorn, this module's database) and the run's local gateways."""
    # Calls made from the test's own loop go straight to the SDK on a thread: the app's
    # GatewayClients keep their exchanges through the app's pool, which belongs to the
    # server's loop (the GraphQL test below goes through them, in the server).
    with live_gateways.app(database_url) as (api, online):
        yield World(api, live_gateways.alipay, live_gateways.wechat, online, {})


async def _served_account(sessions: async_sessionmaker[AsyncSession],
                          mode: BillingMode = BillingMode.prepaid_station) -> Any:
    async with transaction(sessions) as session:
        return await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1), mode=mode)


async def _money(sessions: async_sessionmaker[AsyncSession], account_id: int) -> tuple[int, int, int]:
    async with sessions() as session:
        row = (await session.execute(text(
            "SELECT a.balance_fen, (SELECT coalesce(sum(amount_fen), 0) FROM ledger_entries WHERE account_id = a.id), "
            "(SELECT count(*) FROM payments WHERE account_id = a.id) FROM accounts a WHERE a.id = :a"),
            {"a": account_id})).one()
    return int(row[0]), int(row[1]), int(row[2])


async def _books(sessions: async_sessionmaker[AsyncSession]) -> tuple[int, int, int, int]:
    """The whole database: (every balance, every ledger entry, payments, accounts whose
    ledger sum is not their balance)."""
    async with sessions() as session:
        row = (await session.execute(text(
            "SELECT (SELECT coalesce(sum(balance_fen), 0) FROM accounts), "
            "(SELECT coalesce(sum(amount_fen), 0) FROM ledger_entries), (SELECT count(*) FROM payments), "
            "(SELECT count(*) FROM accounts a WHERE a.balance_fen <> (SELECT coalesce(sum(amount_fen), 0) "
            "FROM ledger_entries e WHERE e.account_id = a.id))"))).one()
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


async def _order_state(sessions: async_sessionmaker[AsyncSession], order_id: int | None) -> OrderState:
    async with sessions() as session:
        found = await session.get(PaymentOrder, order_id)
        assert found is not None
        return found.state


async def _open(world: World, sessions: async_sessionmaker[AsyncSession], household_id: int, channel: PaymentChannel,
                scene: OrderScene, amount_fen: int, **extra: Any) -> tuple[PaymentOrder, Any]:
    return await create_payment_order(sessions, online=world.online, services=world.services, now=utcnow(),
                                      ask=OrderAsk(amount_fen=amount_fen, purpose=PaymentPurpose.recharge,
                                                   channel=channel, scene=scene, origin=OrderOrigin.resident,
                                                   created_by="resident:1", household_id=household_id,
                                                   client_ip="127.0.0.1", **extra))


SCENES = [
    (PaymentChannel.alipay, OrderScene.app, "demo", {}),
    (PaymentChannel.alipay, OrderScene.wap, "demo", {"return_url": "https://pay.example/done"}),
    (PaymentChannel.alipay, OrderScene.page, "demo", {"return_url": "https://pay.example/done"}),
    (PaymentChannel.alipay, OrderScene.qr, "demo", {}),
    (PaymentChannel.wechat, OrderScene.app, "demo", {}),
    (PaymentChannel.wechat, OrderScene.h5, "demo", {}),
    (PaymentChannel.wechat, OrderScene.jsapi, "demo", {"openid": "o-test-payer"}),
    (PaymentChannel.wechat, OrderScene.native, "demo", {}),
]


async def test_every_channel_and_scene_pays_over_http_once(world: World,
                                                            committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    served = await _served_account(committed_sessions)
    total = 0
    for index, (channel, scene, _, extra) in enumerate(SCENES):
        amount = 100 + index
        order, payload = await _open(world, committed_sessions, served.household.id, channel, scene, amount, **extra)
        assert payload.value, (channel, scene)
        if channel is PaymentChannel.alipay and scene in (OrderScene.app, OrderScene.wap, OrderScene.page):
            # The payer opens it (the app SDK hands the order string to Alipay's gateway).
            url = f"{world.alipay}/gateway.do?{payload.value}" if scene is OrderScene.app else str(payload.value)
            async with httpx.AsyncClient() as http:
                assert (await http.get(url)).status_code == 200

        sent = await asyncio.to_thread(world.pay, channel, order.out_trade_no)

        assert [s["status"] for s in sent["sent"]] == [200], (channel, scene, sent)
        assert await _order_state(committed_sessions, order.id) is OrderState.paid, (channel, scene)
        total += amount
        assert await _money(committed_sessions, served.account_id) == (total, total, index + 1), (channel, scene)


async def test_the_v2_merchant_pays_and_a_replay_answers_success_and_writes_nothing(
        world: World, committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    served = await _served_account(committed_sessions)
    legacy = world.online.merchants.named(PaymentChannel.wechat, "legacy")
    assert legacy is not None
    # The default WeChat merchant is v3; make this order with the v2 one.
    async with transaction(committed_sessions) as session:
        from backend.payments.online.orders import open_order

        order, _ = await open_order(session, online=world.online, now=utcnow(), ask=OrderAsk(
            amount_fen=321, purpose=PaymentPurpose.recharge, channel=PaymentChannel.wechat, scene=OrderScene.native,
            origin=OrderOrigin.resident, created_by="resident:1", household_id=served.household.id))
        await session.execute(text("UPDATE payment_orders SET merchant = 'legacy', api = 'wechat_v2' WHERE id = :o"),
                              {"o": order.id})
    order.merchant, order.api = "legacy", legacy.api
    from backend.payments.online.orders import request_payload

    await request_payload(committed_sessions, online=world.online, services=world.services, order=order, now=utcnow())

    sent = await asyncio.to_thread(world.pay, PaymentChannel.wechat, order.out_trade_no, "replay", 3)

    assert len(sent["sent"]) == 3 and all(s["status"] == 200 and "SUCCESS" in s["body"] for s in sent["sent"])
    assert await _money(committed_sessions, served.account_id) == (321, 321, 1)


@contextmanager
def _default_wechat(world: World, name: str) -> Iterator[None]:
    """Merchant ``name`` is the WeChat default (orders are opened with it) for the block: a
    v2 order made as the orders code makes any, no SQL."""
    kept = world.online.merchants
    world.online.merchants = dataclasses.replace(kept, wechat=tuple(
        dataclasses.replace(merchant, default=merchant.name == name) for merchant in kept.wechat))
    try:
        yield
    finally:
        world.online.merchants = kept


@pytest.mark.parametrize(("channel", "mode", "merchant"), [
    (PaymentChannel.alipay, "tamper_amount", "demo"), (PaymentChannel.alipay, "forge_signature", "demo"),
    (PaymentChannel.wechat, "tamper_amount", "demo"), (PaymentChannel.wechat, "forge_signature", "demo"),
    # Genuinely signed by WeChat Pay, for another amount than the order's: v3 and v2.
    (PaymentChannel.wechat, "wrong_amount", "demo"), (PaymentChannel.wechat, "wrong_amount", "legacy"),
])
async def test_a_tampered_or_forged_notification_is_refused_and_credits_nothing(
        world: World, committed_sessions: async_sessionmaker[AsyncSession], channel: PaymentChannel,
        mode: str, merchant: str) -> None:
    await asyncio.to_thread(world.retries, False)
    served = await _served_account(committed_sessions)
    scene = OrderScene.qr if channel is PaymentChannel.alipay else OrderScene.native
    with _default_wechat(world, merchant):
        order, _ = await _open(world, committed_sessions, served.household.id, channel, scene, 5000)
    assert order.merchant == merchant

    async with committed_sessions() as session:
        rejected_before = (await session.execute(text(
            "SELECT count(*) FROM payment_notifications WHERE verdict = 'rejected'"))).scalar_one()

    sent = await asyncio.to_thread(world.pay, channel, order.out_trade_no, mode)

    assert sent["sent"] and all(s["status"] != 200 or "SUCCESS" not in s["body"].upper() for s in sent["sent"]), sent
    assert await _money(committed_sessions, served.account_id) == (0, 0, 0)
    assert await _order_state(committed_sessions, order.id) is OrderState.created
    async with committed_sessions() as session:
        rejected = (await session.execute(text(
            "SELECT count(*) FROM payment_notifications WHERE verdict = 'rejected'"))).scalar_one()
        # A forged v3 notification cannot even be decrypted: it names no order (subject 0).
        alarms = (await session.execute(text("SELECT count(*) FROM alarms WHERE subject_kind = 'payment' "
                                             "AND subject_id IN (0, :o) AND status <> 'closed'"),
                                        {"o": order.id})).scalar_one()
    assert rejected == rejected_before + len(sent["sent"]) and alarms >= 1
    if mode == "wrong_amount":  # it verified: the amount is what refused it
        async with committed_sessions() as session:
            reasons = (await session.execute(text("SELECT reason FROM payment_notifications WHERE order_id = :o"),
                                             {"o": order.id})).scalars().all()
        assert reasons and all("differs from the order's 5000 fen" in (r or "") for r in reasons), reasons
    await asyncio.to_thread(world.retries, True)


async def test_ten_concurrent_replays_over_http_credit_once(world: World,
                                                             committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    served = await _served_account(committed_sessions, BillingMode.prepaid_meter)
    order, _ = await _open(world, committed_sessions, served.household.id, PaymentChannel.alipay, OrderScene.qr, 900)
    await asyncio.to_thread(world.pay, PaymentChannel.alipay, order.out_trade_no)
    async with committed_sessions() as session:
        notification = (await session.execute(text(
            "SELECT body FROM payment_notifications WHERE order_id = :o AND verdict = 'accepted'"),
            {"o": order.id})).scalar_one()

    async with httpx.AsyncClient(base_url=world.api.url) as http:
        answers = await asyncio.gather(*(http.post("/pay/alipay/notify", content=notification.encode(), headers={
            "content-type": "application/x-www-form-urlencoded"}) for _ in range(10)))

    assert [(a.status_code, a.text) for a in answers] == [(200, "success")] * 10
    assert await _money(committed_sessions, served.account_id) == (900, 900, 1)
    async with committed_sessions() as session:
        rows = (await session.execute(text("SELECT count(*) FROM payment_notifications WHERE order_id = :o"),
                                      {"o": order.id})).scalar_one()
        writes = (await session.execute(text("SELECT target, amount_fen FROM pending_writes WHERE account_id = :a"),
                                        {"a": served.account_id})).all()
    assert rows == 1 and [tuple(w) for w in writes] == [("meter", 900)]


@pytest.mark.parametrize(("path", "body", "content_type"), [
    ("/pay/alipay/notify", b"\x00\x01 not a form at all", "application/octet-stream"),
    ("/pay/wechat/notify", b"<xml><oops", "text/xml"),
    ("/pay/wechat/v3/notify", b"[1, 2", "application/json"),
])
async def test_a_body_that_is_not_the_protocols_is_answered_failure(
        world: World, committed_sessions: async_sessionmaker[AsyncSession], path: str, body: bytes,
        content_type: str) -> None:
    served = await _served_account(committed_sessions)
    channel = PaymentChannel.alipay if "alipay" in path else PaymentChannel.wechat
    scene = OrderScene.qr if channel is PaymentChannel.alipay else OrderScene.native
    await _open(world, committed_sessions, served.household.id, channel, scene, 600)
    before = await _books(committed_sessions)

    async with httpx.AsyncClient(base_url=world.api.url) as http:
        answer = await http.post(path, content=body, headers={"content-type": content_type})
        too_big = await http.post(path, content=b"a" * (64 * 1024 + 1), headers={"content-type": content_type})

    assert answer.status_code in (200, 400) and "success" not in answer.text.lower()
    assert too_big.status_code == 413
    assert await _money(committed_sessions, served.account_id) == (0, 0, 0)
    assert await _books(committed_sessions) == before and before[3] == 0


async def test_a_payer_who_cancels_at_the_cashier_page_pays_nothing_and_the_job_closes_it(
        world: World, committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    served = await _served_account(committed_sessions)
    order, payload = await _open(world, committed_sessions, served.household.id, PaymentChannel.alipay,
                                 OrderScene.wap, 700, return_url="https://pay.example/done")
    async with httpx.AsyncClient(follow_redirects=False) as http:
        page = await http.get(str(payload.value))
    assert page.status_code == 200 and "取消" in page.text

    from backend.payments.online.jobs import follow_open_orders

    async with transaction(committed_sessions) as session:
        await session.execute(text("UPDATE payment_orders SET created_at = created_at - interval '1 hour', "
                                   "expires_at = now() - interval '1 minute' WHERE id = :o"), {"o": order.id})
    done = await follow_open_orders(committed_sessions, online=world.online, services=world.services, now=utcnow())

    assert done.closed >= 1 and await _order_state(committed_sessions, order.id) is OrderState.closed
    assert await _money(committed_sessions, served.account_id) == (0, 0, 0)


async def test_barcode_pay_at_the_counter_waits_for_a_slow_wechat_payer(
        world: World, committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    served = await _served_account(committed_sessions)
    async with transaction(committed_sessions) as session:
        staff = await make_staff(session, permissions={"counter:collect"})
    async with httpx.AsyncClient() as http:
        (await http.post(f"{world.wechat}/_control/barcode", json={"queries": 2, "outcome": "paid"})).raise_for_status()
    slept: list[float] = []

    async def no_wait(seconds: float) -> None:
        slept.append(seconds)

    order = await counter_barcode_pay(
        committed_sessions, online=world.online, services=world.services, account_id=served.account_id,
        amount_fen=1500, purpose=PaymentPurpose.recharge, auth_code="134567890123456789",
        operator=Operator(staff.user.id, staff.user.full_name), clock=utcnow, sleep=no_wait)

    assert order.state is OrderState.paid and len(slept) >= 1
    assert await _money(committed_sessions, served.account_id) == (1500, 1500, 1)


COUNTER_QR = """
mutation($accountId: ID!, $amount: Money!) {
  counterQrOrder(accountId: $accountId, amount: $amount, purpose: recharge, channel: alipay) {
    order { id outTradeNo state scene payload { kind url } }
    errors { field code }
  }
}
"""
ORDER = "query($id: ID!) { paymentOrder(id: $id) { state amount payment { channel amount } } }"


async def test_the_counter_qr_over_graphql_is_paid_and_followed(
        world: World, committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    from backend.graphql.relay import encode_id

    served = await _served_account(committed_sessions)
    async with transaction(committed_sessions) as session:
        from backend.archives.models import Area

        area = await session.get(Area, served.household.area_id)
        assert area is not None
        staff = await make_staff(session, permissions={"counter:collect", "payments:read"}, areas=[area])
    async with httpx.AsyncClient(base_url=world.api.url, timeout=30) as http:
        login = await http.post("/graphql", json={"query": "mutation($u: String!, $p: String!) { login(username: $u, "
                                                           "password: $p) { tokens { accessToken } errors { code } } }",
                                                  "variables": {"u": staff.username, "p": staff.password}})
        token = login.json()["data"]["login"]["tokens"]["accessToken"]
        headers = {"authorization": f"Bearer {token}"}
        created = (await http.post("/graphql", headers=headers, json={"query": COUNTER_QR, "variables": {
            "accountId": encode_id("Account", served.account_id), "amount": "12.34"}})).json()
        order = created["data"]["counterQrOrder"]["order"]
        assert created["data"]["counterQrOrder"]["errors"] == [] and order["payload"]["kind"] == "code_url"

        await asyncio.to_thread(world.pay, PaymentChannel.alipay, order["outTradeNo"])
        followed = (await http.post("/graphql", headers=headers, json={"query": ORDER,
                                                                        "variables": {"id": order["id"]}})).json()

    assert followed["data"]["paymentOrder"] == {"state": "paid", "amount": "12.34",
                                                "payment": {"channel": "alipay", "amount": "12.34"}}
    assert await _money(committed_sessions, served.account_id) == (1234, 1234, 1)
