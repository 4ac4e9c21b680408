"""Every channel through the API's own front door, over real HTTP on both sides: the app
(uvicorn) and the local Alipay and WeChat Pay (uvicorn) of ``test_orders_http``'s module
``world`` (reused, not started again). A resident logs in with the SMS code, binds their
household and calls ``createPaymentOrder`` (Alipay wap, WeChat h5, jsapi, app); the payer
pays at the gateway's cashier page or through its control API; the signed notification
reaches our notify route; the resident's ``paymentOrder`` / ``paymentOrders`` and a
scoped staff member's ``paymentOrders`` show it paid. At the counter, ``counterBarcodePay``
(a slow Alipay payer, WeChat code payment) and ``counterQrOrder`` (WeChat native). The v2
WeChat merchant pays app / h5 / jsapi / micropay through a second app whose merchants file
makes it the default (an order goes to the channel's default merchant: no SQL). The static
QR sticker's page opened inside WeChat (web authorization, JSAPI) and inside Alipay (WAP).
Every test checks the balance and that the ledger sums to it; bad amounts through GraphQL
write nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import itertools
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.archives.models import Area
from backend.archives.service.households import HouseholdChanges, update_household
from backend.auth.sms.senders import sms_sender
from backend.billing.models import BillingMode
from backend.db import transaction
from backend.graphql.relay import encode_id
from backend.payments.models import PaymentChannel
from backend.payments.online import static_qr
from backend.payments.online.fakes.wechat import jsapi_url
from backend.payments.online.merchants import load_merchants
from backend.payments.online.models import GatewayApi
from backend.payments.online.registry import SERVICE, OnlinePayments
from tests.billing.factories import at, served_household, tariff
from tests.factories import make_area_tree, make_staff
from tests.graphql.client import api_settings
from tests.live import LiveServer, live_server
from tests.payments.online.test_orders_http import World, world  # noqa: F401  (module fixture: the servers)

LOGIN_CODE = "mutation($p: String!) { requestLoginCode(phone: $p) { errors { code } } }"
RESIDENT_LOGIN = "mutation($p: String!, $c: String!) { residentLogin(phone: $p, code: $c) { tokens { accessToken } " \
                 "errors { code } } }"
BIND = "mutation($n: String!, $m: String!) { bindHousehold(accountNo: $n, name: $m) { binding { state } " \
       "errors { code } } }"
STAFF_LOGIN = "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { tokens { accessToken } " \
              "errors { code } } }"
ORDER_FIELDS = "id outTradeNo state amount channel scene merchant origin payload { kind url parameters { name value } } " \
               "payment { channel amount }"
CREATE = f"""
mutation($h: ID!, $amount: Money!, $channel: PaymentChannel!, $scene: PaymentScene!, $openid: String,
         $returnUrl: String) {{
  createPaymentOrder(householdId: $h, amount: $amount, purpose: recharge, channel: $channel, scene: $scene,
                     openid: $openid, returnUrl: $returnUrl) {{
    order {{ {ORDER_FIELDS} }}
    errors {{ field code }}
  }}
}}"""
BARCODE = f"""
mutation($a: ID!, $amount: Money!, $code: String!) {{
  counterBarcodePay(accountId: $a, amount: $amount, purpose: recharge, authCode: $code) {{
    order {{ {ORDER_FIELDS} }}
    errors {{ field code }}
  }}
}}"""
COUNTER_QR = f"""
mutation($a: ID!, $amount: Money!) {{
  counterQrOrder(accountId: $a, amount: $amount, purpose: recharge, channel: wechat) {{
    order {{ {ORDER_FIELDS} }}
    errors {{ field code }}
  }}
}}"""
ORDER = f"query($n: String!) {{ paymentOrder(outTradeNo: $n) {{ {ORDER_FIELDS} }} }}"
ORDERS = """query($h: ID) { paymentOrders(filter: {householdId: $h}, first: 20) {
  totalCount edges { node { outTradeNo state amount channel scene } } } }"""

ALIPAY_CODE = "284567890123456789"
WECHAT_CODE = "134567890123456789"
_phones = itertools.count(1)


@dataclass
class Payer:
    """A resident logged in over GraphQL with their household bound, and its account."""

    token: str
    household_id: int
    account_id: int

    @property
    def household(self) -> str:
        return encode_id("Household", self.household_id)

    @property
    def account(self) -> str:
        return encode_id("Account", self.account_id)


async def _gql(http: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None,
               token: str | None = None) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    answer = await http.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)
    result: dict[str, Any] = answer.json()
    return result


async def _data(http: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None,
                token: str | None = None) -> dict[str, Any]:
    result = await _gql(http, query, variables, token)
    assert "errors" not in result, result
    data: dict[str, Any] = result["data"]
    return data


async def _account(sessions: async_sessionmaker[AsyncSession], desk: Desk) -> Any:
    """A served household of the desk's area with a prepaid account (nothing paid yet)."""
    async with transaction(sessions) as session:
        return await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1),
                                      mode=BillingMode.prepaid_station, area=desk.area)


async def _payer(api: LiveServer, sessions: async_sessionmaker[AsyncSession], desk: Desk) -> Payer:
    """A household whose registered phone is the resident's: logged in with the SMS code
    (the ``log`` sender keeps it) and bound at once, all over GraphQL."""
    phone = f"1390{os.getpid() % 10000:04d}{next(_phones):03d}"
    served = await _account(sessions, desk)
    async with transaction(sessions) as session:
        assert served.household.id is not None
        await update_household(session, household_id=served.household.id, changes=HouseholdChanges(phone=phone))
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        assert (await _data(http, LOGIN_CODE, {"p": phone}))["requestLoginCode"]["errors"] == []
        code = next(sent for to, sent in reversed(sms_sender("log").sent) if to == phone)
        login = (await _data(http, RESIDENT_LOGIN, {"p": phone, "c": code}))["residentLogin"]
        assert login["errors"] == [], login
        token = login["tokens"]["accessToken"]
        bound = (await _data(http, BIND, {"n": served.household.account_no, "m": served.household.name},
                             token))["bindHousehold"]
        assert bound == {"binding": {"state": "active"}, "errors": []}, bound
    return Payer(token, served.household.id, served.account_id)


async def _staff_token(api: LiveServer, sessions: async_sessionmaker[AsyncSession], permissions: set[str],
                       area: Area) -> str:
    async with transaction(sessions) as session:
        staff = await make_staff(session, permissions=permissions, areas=[area])
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        login = (await _data(http, STAFF_LOGIN, {"u": staff.username, "p": staff.password}))["login"]
    assert login["errors"] == [], login
    token: str = login["tokens"]["accessToken"]
    return token


async def _money(sessions: async_sessionmaker[AsyncSession], account_id: int) -> tuple[int, int, int, int]:
    """(balance, ledger sum, payments, orders) of the account."""
    async with sessions() as session:
        row = (await session.execute(text(
            "SELECT a.balance_fen, (SELECT coalesce(sum(amount_fen), 0) FROM ledger_entries WHERE account_id = a.id), "
            "(SELECT count(*) FROM payments WHERE account_id = a.id), "
            "(SELECT count(*) FROM payment_orders WHERE account_id = a.id) FROM accounts a WHERE a.id = :a"),
            {"a": account_id})).one()
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def _control_pay(base: str, out_trade_no: str) -> dict[str, Any]:
    answer = httpx.post(f"{base}/_control/pay", json={"out_trade_no": out_trade_no, "mode": "normal", "times": 1},
                        timeout=30)
    answer.raise_for_status()
    paid: dict[str, Any] = answer.json()
    assert [sent["status"] for sent in paid["sent"]] == [200], paid
    return paid


async def _press(browser: httpx.AsyncClient, page: httpx.Response, button: str) -> httpx.Response:
    """Press ``button`` on a cashier page: post its form (hidden fields) as a browser does."""
    for form in re.finditer(r"<form\b([^>]*)>(.*?)</form>", page.text, re.S):
        if f">{button}</button>" not in form.group(2):
            continue
        action = re.search(r'action="([^"]*)"', form.group(1))
        assert action is not None, form.group(0)
        fields = {html.unescape(name): html.unescape(value) for name, value in
                  re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form.group(2))}
        return await browser.post(urljoin(str(page.url), html.unescape(action.group(1))), data=fields)
    raise AssertionError(f"no form with {button}: {page.text[:2000]}")


async def _paid(http: httpx.AsyncClient, out_trade_no: str, token: str) -> dict[str, Any]:
    """The order once paid: a cashier page's notification is sent as the page answers the
    payer, so the caller follows the order as the pay page's result and the counter's
    screen do."""
    for _ in range(250):
        order: dict[str, Any] = (await _data(http, ORDER, {"n": out_trade_no}, token))["paymentOrder"]
        if order["state"] == "paid":
            return order
        await asyncio.sleep(0.02)
    raise AssertionError(f"{out_trade_no} is still {order['state']}")


async def _alipay_order(http: httpx.AsyncClient, world: World, amount_fen: int,  # noqa: F811
                        ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The local Alipay's barcode order of ``amount_fen`` once ``ready`` holds for it."""
    for _ in range(250):
        listed = (await http.get(f"{world.alipay}/_control/orders")).json()["orders"]
        found = [o for o in listed if o["scene"] == "barcode" and o["amount_fen"] == amount_fen and ready(o)]
        if found:
            order: dict[str, Any] = found[-1]
            return order
        await asyncio.sleep(0.02)
    raise AssertionError(f"no barcode order of {amount_fen} fen is ready at Alipay")


async def _followed(http: httpx.AsyncClient, payer: Payer, out_trade_no: str, staff_token: str,
                    outsider_token: str) -> dict[str, Any]:
    """The order as the resident sees it (one, and in their list) and as the staff of its
    area see it in theirs; staff of another area see none of the household's orders."""
    mine = (await _data(http, ORDER, {"n": out_trade_no}, payer.token))["paymentOrder"]
    listed = (await _data(http, ORDERS, {"h": None}, payer.token))["paymentOrders"]
    staff = (await _data(http, ORDERS, {"h": payer.household}, staff_token))["paymentOrders"]
    outsider = (await _data(http, ORDERS, {"h": payer.household}, outsider_token))["paymentOrders"]
    theirs = {edge["node"]["outTradeNo"]: edge["node"] for edge in listed["edges"]}
    seen_by_staff = {edge["node"]["outTradeNo"]: edge["node"] for edge in staff["edges"]}
    assert theirs[out_trade_no]["state"] == "paid" and seen_by_staff[out_trade_no]["state"] == "paid"
    assert theirs[out_trade_no] == seen_by_staff[out_trade_no]
    assert outsider["totalCount"] == 0 and outsider["edges"] == []
    found: dict[str, Any] = mine
    return found


@dataclass(frozen=True)
class Desk:
    """One area for the module's households, its cashier (counter:collect and
    payments:read there) and a reader of another area, logged in once: staff passwords
    are argon2-hashed, the dearest thing here."""

    area: Area
    cashier: str
    outsider: str


@pytest.fixture(scope="module")
async def desk(world: World, committed_sessions: async_sessionmaker[AsyncSession]) -> Desk:  # noqa: F811
    async with transaction(committed_sessions) as session:
        tree = await make_area_tree(session)
    cashier, outsider = await asyncio.gather(
        _staff_token(world.api, committed_sessions, {"counter:collect", "payments:read"}, tree.east),
        _staff_token(world.api, committed_sessions, {"payments:read"}, tree.west))
    return Desk(tree.east, cashier, outsider)


# --------------------------------------------------------------------------- the resident


async def test_a_resident_pays_by_alipay_wap_and_wechat_h5_jsapi_app_over_graphql(
        world: World, desk: Desk, committed_sessions: async_sessionmaker[AsyncSession]) -> None:  # noqa: F811
    payer = await _payer(world.api, committed_sessions, desk)
    total = 0
    async with httpx.AsyncClient(base_url=world.api.url, timeout=30) as http, \
            httpx.AsyncClient(timeout=30) as browser:
        for index, (channel, scene, extra) in enumerate([
            ("alipay", "wap", {"returnUrl": f"{world.api.url}/pay/result"}),
            ("wechat", "h5", {}),
            ("wechat", "jsapi", {"openid": "o-resident-payer"}),
            ("wechat", "app", {}),
        ]):
            amount_fen = 1200 + index
            created = (await _data(http, CREATE, {"h": payer.household, "amount": f"{amount_fen / 100:.2f}",
                                                  "channel": channel, "scene": scene, **extra},
                                   payer.token))["createPaymentOrder"]
            assert created["errors"] == [], (scene, created)
            order = created["order"]
            assert (order["state"], order["origin"], order["merchant"]) == ("created", "resident", "demo"), order
            payload = order["payload"]
            if scene in ("wap", "h5"):
                # The payer's browser opens the pay URL: the gateway's cashier page, and presses 付款.
                assert payload["kind"] == "pay_url", payload
                cashier = await browser.get(payload["url"])
                assert cashier.status_code == 200 and f"¥{amount_fen / 100:.2f}" in cashier.text, cashier.text
                paid = await _press(browser, cashier, "付款")
                assert paid.status_code in (200, 303), paid.text
            else:
                kind = "jsapi" if scene == "jsapi" else "app_params"
                assert payload["kind"] == kind and payload["parameters"], payload
                await asyncio.to_thread(_control_pay, world.wechat, order["outTradeNo"])
            total += amount_fen

            await _paid(http, order["outTradeNo"], payer.token)
            followed = await _followed(http, payer, order["outTradeNo"], desk.cashier, desk.outsider)
            assert followed["payment"] == {"channel": channel, "amount": f"{amount_fen / 100:.2f}"}, (scene, followed)
            assert await _money(committed_sessions, payer.account_id) == (total, total, index + 1, index + 1), scene


BAD_AMOUNTS = [("0", "PAYMENT_AMOUNT_INVALID"), ("-1", "PAYMENT_AMOUNT_INVALID"),
               ("50000.01", "PAYMENT_ONLINE_ABOVE_MAXIMUM")]


async def test_a_bad_amount_through_graphql_is_a_typed_error_and_writes_nothing(
        world: World, desk: Desk, committed_sessions: async_sessionmaker[AsyncSession]) -> None:  # noqa: F811
    payer = await _payer(world.api, committed_sessions, desk)
    async with httpx.AsyncClient(base_url=world.api.url, timeout=30) as http:
        # One genuine payment first: the bad ones must leave a balance that is not zero alone.
        created = (await _data(http, CREATE, {"h": payer.household, "amount": "8.88", "channel": "alipay",
                                              "scene": "qr"}, payer.token))["createPaymentOrder"]
        await asyncio.to_thread(_control_pay, world.alipay, created["order"]["outTradeNo"])
        assert await _money(committed_sessions, payer.account_id) == (888, 888, 1, 1)

        maximum = world.online.merchants.max_online_payment_fen
        assert maximum == 5_000_000  # ¥50,000: "50000.01" is the first fen above it
        for channel, scene in (("alipay", "wap"), ("wechat", "h5")):
            for amount, code in BAD_AMOUNTS:
                refused = (await _data(http, CREATE, {"h": payer.household, "amount": amount, "channel": channel,
                                                      "scene": scene}, payer.token))["createPaymentOrder"]
                assert refused["order"] is None and [e["code"] for e in refused["errors"]] == [code], (amount, refused)
            # More than two decimals is not Money at all: the scalar refuses it before any resolver runs.
            three = await _gql(http, CREATE, {"h": payer.household, "amount": "12.345", "channel": channel,
                                              "scene": scene}, payer.token)
            assert three.get("data") is None and [e["extensions"]["code"] for e in three["errors"]] == [
                "BAD_USER_INPUT"], three

    assert await _money(committed_sessions, payer.account_id) == (888, 888, 1, 1)


# --------------------------------------------------------------------------- the counter


async def test_counter_barcode_pay_a_slow_alipay_payer_and_wechat_at_once_over_graphql(
        world: World, desk: Desk, committed_sessions: async_sessionmaker[AsyncSession]) -> None:  # noqa: F811
    alipay_payer, wechat_payer = await _account(committed_sessions, desk), await _account(committed_sessions, desk)
    cashier = desk.cashier
    # The payer confirms on their phone only at the 30th query after the code was scanned
    # (the app asks every 0.1 s here: about 3 s, while the cashier serves the next payer).
    async with httpx.AsyncClient(base_url=world.api.url, timeout=60) as http:
        (await http.post(f"{world.alipay}/_control/next", json={"action": "user_paying", "body": 30})
         ).raise_for_status()
        slow = asyncio.create_task(_data(http, BARCODE, {"a": encode_id("Account", alipay_payer.account_id),
                                                         "amount": "66.60", "code": ALIPAY_CODE}, cashier))
        at_alipay = await _alipay_order(http, world, 6660, lambda o: o["state"] == "paying")
        # While the Alipay payer confirms (the loop waits), the cashier takes another payer's WeChat.
        quick = (await _data(http, BARCODE, {"a": encode_id("Account", wechat_payer.account_id), "amount": "23.45",
                                             "code": WECHAT_CODE}, cashier))["counterBarcodePay"]
        waiting = (await _data(http, ORDERS, {"h": encode_id("Household", alipay_payer.household.id)},
                               cashier))["paymentOrders"]
        assert not slow.done()
        paid = (await slow)["counterBarcodePay"]

    assert quick["errors"] == [] and quick["order"]["state"] == "paid", quick
    assert (quick["order"]["scene"], quick["order"]["merchant"], quick["order"]["payment"]) == (
        "barcode", "demo", {"channel": "wechat", "amount": "23.45"})
    assert [edge["node"]["state"] for edge in waiting["edges"]] == ["created"], waiting
    assert paid["errors"] == [] and paid["order"]["state"] == "paid", paid
    assert paid["order"]["payment"] == {"channel": "alipay", "amount": "66.60"}
    assert await _money(committed_sessions, alipay_payer.account_id) == (6660, 6660, 1, 1)
    assert await _money(committed_sessions, wechat_payer.account_id) == (2345, 2345, 1, 1)
    # Alipay's notification of the payment comes after the query paid it: answered success, nothing more.
    async with httpx.AsyncClient(timeout=30) as http:
        notified = await _alipay_order(http, world, 6660, lambda o: o["out_trade_no"] == at_alipay["out_trade_no"]
                                       and bool(o["notifications"]))
    assert [(n["status"], n["body"]) for n in notified["notifications"]] == [(200, "success")], notified
    assert await _money(committed_sessions, alipay_payer.account_id) == (6660, 6660, 1, 1)


async def test_counter_qr_for_wechat_native_is_paid_and_followed_over_graphql(
        world: World, desk: Desk, committed_sessions: async_sessionmaker[AsyncSession]) -> None:  # noqa: F811
    payer = await _account(committed_sessions, desk)
    async with httpx.AsyncClient(base_url=world.api.url, timeout=30) as http, \
            httpx.AsyncClient(timeout=30) as phone:
        created = (await _data(http, COUNTER_QR, {"a": encode_id("Account", payer.account_id), "amount": "45.00"},
                               desk.cashier))["counterQrOrder"]
        order = created["order"]
        assert created["errors"] == [] and order["scene"] == "native" and order["payload"]["kind"] == "code_url"
        # The payer scans the screen's code_url (the local WeChat's is its cashier page) and pays.
        scanned = await phone.get(order["payload"]["url"])
        assert scanned.status_code == 200 and "¥45.00" in scanned.text, scanned.text
        await _press(phone, scanned, "付款")
        # The counter's screen follows the order until the notification has paid it.
        followed = await _paid(http, order["outTradeNo"], desk.cashier)

    assert followed["payment"] == {"channel": "wechat", "amount": "45.00"} and followed["origin"] == "counter"
    assert await _money(committed_sessions, payer.account_id) == (4500, 4500, 1, 1)


# --------------------------------------------------------------------------- WeChat Pay API v2


@pytest.fixture(scope="module")
def v2_api(world: World, database_url: str) -> Iterator[LiveServer]:  # noqa: F811
    """A second app on the same database and gateways whose merchants file is the world's
    with the v2 merchant ``legacy`` as WeChat's default (same keys: the gateways know it)."""
    source = world.online.merchants.source
    assert source is not None
    v2_file = source.with_name("merchants-v2-default.toml")
    original = source.read_text(encoding="utf-8")
    assert original.count('name = "legacy"\n') == 1

    def write(base_url: str) -> None:
        v2_file.write_text(re.sub(r'(?m)^public_base_url = ".*"$', f'public_base_url = "{base_url}"', original)
                           .replace('name = "legacy"\n', 'name = "legacy"\ndefault = true\n'), encoding="utf-8")

    write(world.api.url)
    saved = os.environ["SHUIWU_PAYMENTS_CONFIG"]
    with contextlib.ExitStack() as stack:
        # The app reads SHUIWU_PAYMENTS_CONFIG as it starts; the world's app keeps its own file.
        os.environ["SHUIWU_PAYMENTS_CONFIG"] = str(v2_file)
        try:
            api = stack.enter_context(live_server(database_url))
        finally:
            os.environ["SHUIWU_PAYMENTS_CONFIG"] = saved
        # The platforms call this app back where it listens: known only now.
        write(api.url)
        online: OnlinePayments = api.app.state.services[SERVICE]
        online.merchants = load_merchants(v2_file)
        default = online.merchants.default(PaymentChannel.wechat)
        assert default is not None and default.name == "legacy" and default.api is GatewayApi.wechat_v2
        yield api


async def test_the_v2_merchant_pays_app_h5_jsapi_and_micropay_end_to_end(
        world: World, v2_api: LiveServer, desk: Desk,  # noqa: F811
        committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    payer = await _payer(v2_api, committed_sessions, desk)
    cashier = desk.cashier
    total = 0
    async with httpx.AsyncClient(base_url=v2_api.url, timeout=30) as http, httpx.AsyncClient(timeout=30) as browser:
        for index, (scene, extra) in enumerate([("app", {}), ("h5", {}), ("jsapi", {"openid": "o-v2-payer"})]):
            amount_fen = 3100 + index
            created = (await _data(http, CREATE, {"h": payer.household, "amount": f"{amount_fen / 100:.2f}",
                                                  "channel": "wechat", "scene": scene, **extra},
                                   payer.token))["createPaymentOrder"]
            assert created["errors"] == [] and created["order"]["merchant"] == "legacy", created
            order = created["order"]
            if scene == "h5":
                cashier_page = await browser.get(order["payload"]["url"])
                assert cashier_page.status_code == 200, cashier_page.text
                await _press(browser, cashier_page, "付款")
            else:
                names = {p["name"] for p in order["payload"]["parameters"]}
                # v2's signed client parameters: jsapi's paySign over package prepay_id=…, app's sign.
                assert ("paySign" in names) if scene == "jsapi" else ("sign" in names), names
                await asyncio.to_thread(_control_pay, world.wechat, order["outTradeNo"])
            total += amount_fen
            mine = await _paid(http, order["outTradeNo"], payer.token)
            assert mine["payment"] == {"channel": "wechat", "amount": f"{amount_fen / 100:.2f}"}, (scene, mine)
            assert await _money(committed_sessions, payer.account_id) == (total, total, index + 1, index + 1), scene

        micropay = (await _data(http, BARCODE, {"a": payer.account, "amount": "7.00", "code": WECHAT_CODE},
                                cashier))["counterBarcodePay"]
    assert micropay["errors"] == [] and micropay["order"]["merchant"] == "legacy", micropay
    assert micropay["order"]["payment"] == {"channel": "wechat", "amount": "7.00"}
    total += 700
    assert await _money(committed_sessions, payer.account_id) == (total, total, 4, 4)
    async with committed_sessions() as session:
        apis = (await session.execute(text("SELECT DISTINCT api FROM payment_orders WHERE account_id = :a"),
                                      {"a": payer.account_id})).scalars().all()
    assert list(apis) == ["wechat_v2"]


# --------------------------------------------------------------------------- the static QR sticker

WECHAT_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             "Mobile/15E148 MicroMessenger/8.0.47(0x18002f2f) NetType/WIFI Language/zh_CN")
ALIPAY_UA = ("Mozilla/5.0 (Linux; Android 13) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120 Mobile Safari/537.36 "
             "AlipayClient/10.5.86.8000 Language/zh-Hans")


async def _sticker_order(phone: httpx.AsyncClient, sticker: str, amount: str, channel: str) -> str:
    """Open the sticker's page, enter the amount and send it: where the page sends the payer."""
    shown = await phone.get(sticker)
    assert shown.status_code == 200, shown.text
    action = re.search(r'<form class="card" method="post" action="([^"]+)"', shown.text)
    assert action is not None, shown.text
    sent = await phone.post(urljoin(sticker, html.unescape(action.group(1))), data={"amount": amount,
                                                                                      "channel": channel})
    assert sent.status_code == 303, sent.text
    location: str = sent.headers["location"]
    return location


async def test_the_static_qr_inside_wechat_pays_by_jsapi_and_inside_alipay_by_wap(
        world: World, desk: Desk, committed_sessions: async_sessionmaker[AsyncSession]) -> None:  # noqa: F811
    payer = await _account(committed_sessions, desk)
    sticker = static_qr.static_qr_url(world.api.url, api_settings().secret(), payer.household.id)

    async with httpx.AsyncClient(headers={"User-Agent": WECHAT_UA}, timeout=30) as wechat_app:
        authorize = await _sticker_order(wechat_app, sticker, "18.80", "wechat")
        # Inside WeChat: silent web authorization at the local WeChat for the payer's openid, then JSAPI.
        assert authorize.startswith(f"{world.wechat}/connect/oauth2/authorize?"), authorize
        callback = await wechat_app.get(authorize)
        assert callback.status_code == 302 and callback.headers["location"].startswith(f"{world.api.url}/pay/")
        jsapi = await wechat_app.get(callback.headers["location"])
        card = re.search(r'id="pay" data-params="([^"]+)" data-result="([^"]+)"', jsapi.text)
        assert jsapi.status_code == 200 and card is not None, jsapi.text
        params, result_path = json.loads(html.unescape(card.group(1))), html.unescape(card.group(2))
        bridge = await wechat_app.get(jsapi_url(world.wechat, params, redirect_url=world.api.url + result_path))
        assert bridge.status_code == 200 and "¥18.80" in bridge.text, bridge.text
        await _press(wechat_app, bridge, "付款")
        in_wechat = result_path.rsplit("/", 1)[1]

    async with httpx.AsyncClient(headers={"User-Agent": ALIPAY_UA}, timeout=30) as alipay_app:
        cashier_url = await _sticker_order(alipay_app, sticker, "9.90", "alipay")
        assert cashier_url.startswith(f"{world.alipay}/gateway.do?"), cashier_url
        cashier = await alipay_app.get(cashier_url)
        assert cashier.status_code == 200 and "¥9.90" in cashier.text, cashier.text
        found = re.search(r"SW\d{18}", cashier.text)
        assert found is not None
        await _press(alipay_app, cashier, "付款")
        in_alipay = found.group(0)

    async with httpx.AsyncClient(base_url=world.api.url, timeout=30) as http:
        for out_trade_no in (in_wechat, in_alipay):
            await _paid(http, out_trade_no, desk.cashier)
    async with committed_sessions() as session:
        orders = {row.out_trade_no: (row.scene, row.origin, row.state) for row in (await session.execute(text(
            "SELECT out_trade_no, scene, origin, state FROM payment_orders WHERE account_id = :a"),
            {"a": payer.account_id})).all()}
    assert orders == {in_wechat: ("jsapi", "static_qr", "paid"), in_alipay: ("wap", "static_qr", "paid")}, orders
    assert await _money(committed_sessions, payer.account_id) == (2870, 2870, 2, 2)
