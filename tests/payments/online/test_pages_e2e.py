"""The payer's pages end to end, over real HTTP on every side: the real app (uvicorn) with
its merchants file, and the local Alipay and WeChat Pay (uvicorn) it calls and that call
it back. A browser (httpx, following what each page says) pays for an account number
without login: our page → the gateway's cashier page → 付款 (posted as the page's form
posts it) → the gateway's signed notification to our notify route → the order paid, the
balance and the ledger (ledger sum = balance). Alipay WAP, WeChat H5 outside WeChat,
WeChat JSAPI inside it (web authorization at the local WeChat for the openid, then its
WeixinJSBridge stand-in), the static QR sticker's page, and a payer who cancels at the
cashier (nothing credited; the result page says the order closed once the job closed it).
Then the staff's signed links to the stickers and QR images over GraphQL.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.archives.models import Area
from backend.billing.models import BillingMode
from backend.clock import utcnow
from backend.db import transaction
from backend.graphql.relay import encode_id
from backend.payments.online import static_qr
from backend.payments.online.fakes.wechat import jsapi_url
from backend.payments.online.jobs import follow_open_orders
from backend.payments.online.registry import OnlinePayments
from backend.payments.online.wechat import WechatSettings
from tests.billing.factories import at, served_household, tariff
from tests.factories import make_staff
from tests.graphql.client import api_settings
from tests.live import LiveServer
from tests.payments.online.conftest import LiveGateways

RETRY_SCALE = 0.001
WECHAT_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             "Mobile/15E148 MicroMessenger/8.0.47(0x18002f2f) NetType/WIFI Language/zh_CN")
PLAIN_UA = "Mozilla/5.0 (Linux; Android 13) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120 Mobile Safari/537.36"


@dataclass
class Site:
    api: LiveServer
    alipay: str
    wechat: str
    online: OnlinePayments
    secret: str


@pytest.fixture(scope="module")
def site(database_url: str, live_gateways: LiveGateways) -> Iterator[Site]:
    """Our app (uvicorn, this module's database) and the run's local gateways."""
    with live_gateways.app(database_url) as (api, online):
        yield Site(api, live_gateways.alipay, live_gateways.wechat, online, api_settings().secret())


@pytest.fixture
async def browser(site: Site) -> AsyncIterator[httpx.AsyncClient]:
    """A phone's browser outside WeChat and Alipay: every URL absolute, no redirect followed
    unless the test follows it (each hop is asserted)."""
    async with httpx.AsyncClient(headers={"User-Agent": PLAIN_UA}, timeout=30) as client:
        yield client


async def _household(sessions: async_sessionmaker[AsyncSession]) -> Any:
    async with transaction(sessions) as session:
        return await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1),
                                      mode=BillingMode.prepaid_station)


async def _money(sessions: async_sessionmaker[AsyncSession], account_id: int) -> tuple[int, int, int]:
    """(balance, ledger sum, payments) of the account."""
    async with sessions() as session:
        row = (await session.execute(text(
            "SELECT a.balance_fen, (SELECT coalesce(sum(amount_fen), 0) FROM ledger_entries WHERE account_id = a.id), "
            "(SELECT count(*) FROM payments WHERE account_id = a.id) FROM accounts a WHERE a.id = :a"),
            {"a": account_id})).one()
    return int(row[0]), int(row[1]), int(row[2])


def _form(page: str, button: str) -> tuple[str, dict[str, str]]:
    """The action and hidden fields of the form whose submit button reads ``button``, as a
    browser would post it."""
    for form in re.finditer(r"<form\b([^>]*)>(.*?)</form>", page, re.S):
        if f">{button}</button>" not in form.group(2):
            continue
        action = re.search(r'action="([^"]*)"', form.group(1))
        assert action is not None, form.group(0)
        fields = {html.unescape(name): html.unescape(value) for name, value in
                  re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form.group(2))}
        return html.unescape(action.group(1)), fields
    raise AssertionError(f"no form with {button}: {page[:2000]}")


async def _click(browser: httpx.AsyncClient, page: httpx.Response, button: str) -> httpx.Response:
    """Press ``button`` (付款, 取消) on ``page``: post its form to the page's own origin."""
    action, fields = _form(page.text, button)
    return await browser.post(urljoin(str(page.url), action), data=fields)


async def _result(browser: httpx.AsyncClient, site: Site, out_trade_no: str, state: str,
                  timeout_s: float = 10.0) -> str:
    """The result page once it shows ``state`` (it reloads itself while waiting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        page = await browser.get(f"{site.api.url}/pay/result/{out_trade_no}")
        assert page.status_code == 200, page.text
        if f'data-state="{state}"' in page.text or time.monotonic() > deadline:
            assert f'data-state="{state}"' in page.text, page.text
            return page.text
        await asyncio.sleep(0.05)


async def _pay_page_order(browser: httpx.AsyncClient, page_url: str, amount: str, channel: str) -> httpx.Response:
    """Open the pay page, fill it in and send it: the answer is a redirect (not followed)."""
    shown = await browser.get(page_url)
    assert shown.status_code == 200 and "王*" in shown.text and "王芳" not in shown.text, shown.text
    action_found = re.search(r'<form class="card" method="post" action="([^"]+)"', shown.text)
    assert action_found is not None
    sent = await browser.post(urljoin(page_url, html.unescape(action_found.group(1))),
                              data={"amount": amount, "channel": channel})
    assert sent.status_code == 303, sent.text
    return sent


def _out_trade_no(cashier: str) -> str:
    found = re.search(r"SW\d{18}", cashier)
    assert found is not None, cashier
    return found.group(0)


# --------------------------------------------------------------------------- paying


async def test_alipay_wap_from_the_pay_page_to_the_cashier_and_back_credits_once(
        site: Site, browser: httpx.AsyncClient, committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    payer = await _household(committed_sessions)

    sent = await _pay_page_order(browser, f"{site.api.url}/pay/a/{payer.household.account_no}", "36.05", "alipay")
    assert sent.headers["location"].startswith(f"{site.alipay}/gateway.do?")
    cashier = await browser.get(sent.headers["location"])
    assert cashier.status_code == 200 and "¥36.05" in cashier.text and "付款" in cashier.text and "取消" in cashier.text
    out_trade_no = _out_trade_no(cashier.text)
    paid = await _click(browser, cashier, "付款")

    assert paid.status_code == 200 and "支付成功" in paid.text
    back = re.search(r'id="return" href="([^"]+)"', paid.text)
    assert back is not None and html.unescape(back.group(1)) == f"{site.api.url}/pay/result/{out_trade_no}"
    result = await _result(browser, site, out_trade_no, "paid")
    assert "支付成功" in result and "¥36.05" in result and "支付宝" in result
    assert await _money(committed_sessions, payer.account_id) == (3605, 3605, 1)


async def test_wechat_h5_outside_wechat_pays_at_the_cashier_and_returns_to_the_result(
        site: Site, browser: httpx.AsyncClient, committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    payer = await _household(committed_sessions)

    sent = await _pay_page_order(browser, f"{site.api.url}/pay/a/{payer.household.account_no}", "20", "wechat")
    assert sent.headers["location"].startswith(f"{site.wechat}/cashier/")
    cashier = await browser.get(sent.headers["location"])
    assert cashier.status_code == 200 and "¥20.00" in cashier.text
    _, fields = _form(cashier.text, "付款")
    out_trade_no = fields["redirect_url"].rsplit("/", 1)[1]
    paid = await _click(browser, cashier, "付款")

    # WeChat sends the payer back to the redirect_url: our result page.
    assert paid.status_code == 303 and paid.headers["location"] == f"{site.api.url}/pay/result/{out_trade_no}"
    result = await _result(browser, site, out_trade_no, "paid")
    assert "微信支付" in result and "¥20.00" in result
    assert await _money(committed_sessions, payer.account_id) == (2000, 2000, 1)


async def test_inside_wechat_authorization_gives_the_openid_and_jsapi_pays(
        site: Site, committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    payer = await _household(committed_sessions)
    async with httpx.AsyncClient(headers={"User-Agent": WECHAT_UA}, timeout=30) as wechat_app:
        sent = await _pay_page_order(wechat_app, f"{site.api.url}/pay/a/{payer.household.account_no}", "30.50",
                                     "wechat")
        authorize = sent.headers["location"]
        assert authorize.startswith(f"{site.wechat}/connect/oauth2/authorize?")
        assert parse_qs(urlsplit(authorize).query)["scope"] == ["snsapi_base"]
        callback = await wechat_app.get(authorize)  # silent: WeChat sends the payer straight back with a code
        assert callback.status_code == 302
        assert callback.headers["location"].startswith(f"{site.api.url}/pay/wechat/oauth?code=")
        jsapi = await wechat_app.get(callback.headers["location"])
        assert jsapi.status_code == 200, jsapi.text
        card = re.search(r'id="pay" data-params="([^"]+)" data-result="([^"]+)"', jsapi.text)
        assert card is not None
        params, result_path = json.loads(html.unescape(card.group(1))), html.unescape(card.group(2))
        out_trade_no = result_path.rsplit("/", 1)[1]
        # The page calls WeixinJSBridge with these parameters: the local WeChat's stand-in checks paySign.
        bridge = await wechat_app.get(jsapi_url(site.wechat, params, redirect_url=site.api.url + result_path))
        assert bridge.status_code == 200 and "WeixinJSBridge" in bridge.text and "¥30.50" in bridge.text
        paid = await _click(wechat_app, bridge, "付款")
        assert paid.status_code == 303 and paid.headers["location"] == site.api.url + result_path
        await _result(wechat_app, site, out_trade_no, "paid")

    async with committed_sessions() as session:
        order = (await session.execute(text("SELECT scene, payer_openid, origin FROM payment_orders "
                                            "WHERE out_trade_no = :n"), {"n": out_trade_no})).one()
    assert order.scene == "jsapi" and order.origin == "pay_page" and order.payer_openid.startswith("o")
    assert await _money(committed_sessions, payer.account_id) == (3050, 3050, 1)


async def test_the_static_qr_sticker_s_page_takes_an_amount_and_credits_it(
        site: Site, browser: httpx.AsyncClient, committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    payer = await _household(committed_sessions)
    sticker = static_qr.static_qr_url(site.api.url, site.secret, payer.household.id)

    sent = await _pay_page_order(browser, sticker, "15", "alipay")
    cashier = await browser.get(sent.headers["location"])
    out_trade_no = _out_trade_no(cashier.text)
    await _click(browser, cashier, "付款")

    await _result(browser, site, out_trade_no, "paid")
    async with committed_sessions() as session:
        origin = (await session.execute(text("SELECT origin FROM payment_orders WHERE out_trade_no = :n"),
                                        {"n": out_trade_no})).scalar_one()
    assert origin == "static_qr"
    assert await _money(committed_sessions, payer.account_id) == (1500, 1500, 1)


async def test_a_payer_who_cancels_at_the_cashier_is_credited_nothing_and_the_result_says_closed(
        site: Site, browser: httpx.AsyncClient, committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    payer = await _household(committed_sessions)
    sent = await _pay_page_order(browser, f"{site.api.url}/pay/a/{payer.household.account_no}", "8", "alipay")
    cashier = await browser.get(sent.headers["location"])
    out_trade_no = _out_trade_no(cashier.text)

    cancelled = await _click(browser, cashier, "取消")
    waiting = await _result(browser, site, out_trade_no, "created")
    # The order expires unpaid; the job asks the gateway, then closes it there and here.
    async with transaction(committed_sessions) as session:
        await session.execute(text("UPDATE payment_orders SET created_at = created_at - interval '1 hour', "
                                   "expires_at = now() - interval '1 minute' WHERE out_trade_no = :n"),
                              {"n": out_trade_no})
    done = await follow_open_orders(committed_sessions, online=site.online, services={}, now=utcnow())
    closed = await _result(browser, site, out_trade_no, "closed")

    assert cancelled.status_code == 200 and "已取消支付" in cancelled.text
    assert "等待支付结果" in waiting
    assert done.closed >= 1 and "订单已关闭" in closed and "refresh" not in closed
    held = {order["out_trade_no"]: order for order in (await browser.get(f"{site.alipay}/_control/orders")).json()["orders"]}
    assert held[out_trade_no]["state"] not in ("paid", "TRADE_SUCCESS")
    assert await _money(committed_sessions, payer.account_id) == (0, 0, 0)


async def test_a_wechat_payer_who_cancels_at_the_h5_cashier_is_credited_nothing_and_the_order_closes(
        site: Site, browser: httpx.AsyncClient, committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    payer = await _household(committed_sessions)
    sent = await _pay_page_order(browser, f"{site.api.url}/pay/a/{payer.household.account_no}", "9", "wechat")
    assert sent.headers["location"].startswith(f"{site.wechat}/cashier/")
    cashier = await browser.get(sent.headers["location"])
    _, fields = _form(cashier.text, "取消")
    out_trade_no = fields["redirect_url"].rsplit("/", 1)[1]

    cancelled = await _click(browser, cashier, "取消")
    # WeChat sends the payer back to our result page, which still waits: nothing was paid.
    assert cancelled.status_code == 303 and cancelled.headers["location"] == f"{site.api.url}/pay/result/{out_trade_no}"
    waiting = await _result(browser, site, out_trade_no, "created")
    async with transaction(committed_sessions) as session:
        await session.execute(text("UPDATE payment_orders SET created_at = created_at - interval '1 hour', "
                                   "expires_at = now() - interval '1 minute' WHERE out_trade_no = :n"),
                              {"n": out_trade_no})
    done = await follow_open_orders(committed_sessions, online=site.online, services={}, now=utcnow())
    closed = await _result(browser, site, out_trade_no, "closed")

    assert "等待支付结果" in waiting
    assert done.closed >= 1 and "订单已关闭" in closed
    control = f"{site.wechat}/_control"
    held = {order["out_trade_no"]: order for order in (await browser.get(f"{control}/orders")).json()["orders"]}
    sent_notifications = [n for n in (await browser.get(f"{control}/notifications")).json()["notifications"]
                          if n["out_trade_no"] == out_trade_no]
    assert held[out_trade_no]["state"] == "closed" and sent_notifications == []
    assert await _money(committed_sessions, payer.account_id) == (0, 0, 0)


# --------------------------------------------------------------------------- the staff's links


STICKER_LINKS = """
query($areaId: ID!, $householdId: ID!) {
  staticQrSheetUrl(areaId: $areaId)
  png: staticQrUrl(householdId: $householdId)
  svg: staticQrUrl(householdId: $householdId, format: svg)
}"""
ONE_LINK = "query($householdId: ID!) { staticQrUrl(householdId: $householdId) }"
LOGIN = ("mutation($u: String!, $p: String!) { login(username: $u, password: $p) { tokens { accessToken } "
         "errors { code } } }")


async def test_staff_get_signed_links_to_stickers_and_qr_images_in_their_scope_only(
        site: Site, committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    mine, theirs = await _household(committed_sessions), await _household(committed_sessions)
    async with transaction(committed_sessions) as session:
        area = await session.get(Area, mine.household.area_id)
        assert area is not None
        reader = await make_staff(session, permissions={"payments:read"}, areas=[area])
        cashier = await make_staff(session, permissions={"counter:collect"}, areas=[area])
    async with httpx.AsyncClient(base_url=site.api.url, timeout=30) as http:
        async def token(staff: Any) -> dict[str, str]:
            login = (await http.post("/graphql", json={"query": LOGIN, "variables": {
                "u": staff.username, "p": staff.password}})).json()
            return {"authorization": f"Bearer {login['data']['login']['tokens']['accessToken']}"}

        reader_auth, cashier_auth = await token(reader), await token(cashier)
        links = (await http.post("/graphql", headers=reader_auth, json={"query": STICKER_LINKS, "variables": {
            "areaId": encode_id("Area", mine.household.area_id),
            "householdId": encode_id("Household", mine.household.id)}})).json()
        assert "errors" not in links, links
        sheet = await http.get(links["data"]["staticQrSheetUrl"])  # signed: no Authorization header
        png = await http.get(links["data"]["png"])
        svg = await http.get(links["data"]["svg"])
        outside = (await http.post("/graphql", headers=reader_auth, json={"query": ONE_LINK, "variables": {
            "householdId": encode_id("Household", theirs.household.id)}})).json()
        refused = (await http.post("/graphql", headers=cashier_auth, json={"query": ONE_LINK, "variables": {
            "householdId": encode_id("Household", mine.household.id)}})).json()

    assert links["data"]["staticQrSheetUrl"].startswith("/payments/static-qr.pdf?")
    assert sheet.status_code == 200 and sheet.content.startswith(b"%PDF")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
    # The image encodes the household's sticker page.
    assert svg.status_code == 200 and svg.text == static_qr.qr_svg(
        static_qr.static_qr_url(site.api.url, site.secret, mine.household.id))
    assert outside["data"] is None and [e["extensions"]["code"] for e in outside["errors"]] == ["NOT_FOUND"]
    assert refused["data"] is None and [e["extensions"]["code"] for e in refused["errors"]] == ["FORBIDDEN"]


def test_web_authorization_goes_where_the_wechat_settings_say() -> None:
    from types import SimpleNamespace

    from backend.payments.online.payer.http import wechat_web_bases

    def bases(**settings: Any) -> tuple[str, str]:
        return wechat_web_bases({"gateway.wechat": SimpleNamespace(settings=WechatSettings(**settings))})

    local = "http://127.0.0.1:18962"
    assert bases(url=local) == (local, local)  # the local gateway serves both
    assert bases(url="https://api.mch.weixin.qq.com") == ("https://open.weixin.qq.com", "https://api.weixin.qq.com")
    assert bases(url="https://api.mch.weixin.qq.com", oauth_url="https://open.sandbox.test/",
                 sns_url="https://sns.sandbox.test") == ("https://open.sandbox.test", "https://sns.sandbox.test")
    assert wechat_web_bases({}) == ("https://open.weixin.qq.com", "https://api.weixin.qq.com")
