"""The payer's pages over real HTTP (uvicorn, real commits): paying for an account number
without login shows the masked name and what is due (late fee included); the amount's
bounds refuse with Chinese messages and write nothing; the user agent picks the way to
pay (a plain browser chooses, Alipay goes WAP, WeChat goes through web authorization to
a JSAPI page); the static QR's token opens the same page; the result page follows the
order; and a payment through the page is credited by its notification.

The gateways here are stand-ins at the gateway interface (the orders tests' Alipay-shaped
one, and a WeChat-shaped one answering JSAPI parameters); WeChat's web authorization is a
small local HTTP server that answers like open.weixin.qq.com / api.weixin.qq.com."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from backend.app import create_app
from backend.billing.models import BillingMode
from backend.billing.notices import local_today
from backend.clock import utcnow
from backend.db import transaction
from backend.domain import HttpHost
from backend.domains import installed
from backend.payments.models import PaymentChannel
from backend.payments.online.gateway import ClientPayload, MerchantRef, OrderRequest, PayloadKind
from backend.payments.online.merchants import AlipayMerchant, Merchants, WechatMerchant
from backend.payments.online.models import GatewayApi
from backend.payments.online.pages import mask_address, mask_name, static_qr_token
from backend.payments.online.payer import http as payer_http
from backend.payments.online.registry import OnlinePayments
from tests.billing.bill_rows import BillTown, make_bill_town
from tests.billing.factories import SHANGHAI, at, balance, ledger_sum, served_household, tariff
from tests.graphql.client import api_settings
from tests.live import serving
from tests.payments.online.stand_in import APP_ID, StandIn

WECHAT_APP_ID = "wx0000000000000001"
WECHAT_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             "Mobile/15E148 MicroMessenger/8.0.47(0x18002f2f) NetType/WIFI Language/zh_CN")
ALIPAY_UA = "Mozilla/5.0 (Linux; Android 13) AppleWebKit/537.36 Chrome/116 Mobile Safari/537.36 AlipayClient/10.5.36"
PLAIN_UA = "Mozilla/5.0 (Linux; Android 13) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120 Mobile Safari/537.36"
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"


class PagePayments(StandIn):
    """An Alipay- or WeChat-shaped stand-in answering what page scenes get: a pay URL
    (wap, h5) or JSAPI parameters; it keeps each request (return URL, openid)."""

    requests: list[OrderRequest]

    def create(self, order: OrderRequest) -> ClientPayload:
        self.calls.append(("create", order.out_trade_no))
        self.requests.append(order)
        if order.scene.value == "jsapi":
            return ClientPayload(PayloadKind.jsapi, {"appId": WECHAT_APP_ID, "timeStamp": "1765000000",
                                                     "nonceStr": "n0nce", "package": f"prepay_id=wx{order.out_trade_no}",
                                                     "signType": "RSA", "paySign": "c2lnbmVk"})
        return ClientPayload(PayloadKind.pay_url, f"http://cashier.test/{order.scene.value}/{order.out_trade_no}")


def _stand_in(channel: PaymentChannel, api: GatewayApi, app_id: str, mch_id: str | None = None) -> PagePayments:
    made = PagePayments(MerchantRef(channel, api, "demo", app_id, mch_id), b"demo-secret")
    made.requests = []
    return made


@dataclass
class StandInClient:
    """What the routes need of the ``gateway.wechat`` client: its URL (the local web
    authorization) and ``call``, run inline."""

    settings: Any

    async def call(self, operation: str, function: Any, *args: Any, **kept: Any) -> Any:
        import asyncio

        return await asyncio.to_thread(function, *args)


@dataclass(frozen=True)
class Site:
    url: str
    alipay: PagePayments
    wechat: PagePayments
    online: OnlinePayments
    sessions: async_sessionmaker[AsyncSession]
    town: BillTown
    prepaid_no: str
    secret: str


def _wechat_web_app() -> Starlette:
    async def authorize(request: Request) -> Response:
        query = request.query_params
        assert query["scope"] == "snsapi_base" and query["appid"] == WECHAT_APP_ID
        return RedirectResponse(f"{query['redirect_uri']}?code=CODE123&state={query['state']}", 302)

    async def access_token(request: Request) -> Response:
        query = request.query_params
        if query.get("code") != "CODE123" or query.get("secret") != "app-secret-0123456789":
            return JSONResponse({"errcode": 40029, "errmsg": "invalid code"})
        return JSONResponse({"access_token": "AT", "expires_in": 7200, "openid": OPENID, "scope": "snsapi_base"})

    return Starlette(routes=[Route("/connect/oauth2/authorize", authorize), Route("/sns/oauth2/access_token", access_token)])


@pytest.fixture(scope="module")
def wechat_web() -> Iterator[str]:
    with serving(_wechat_web_app()) as (host, port):
        yield f"http://{host}:{port}"


@pytest.fixture(scope="module")
async def town(committed_sessions: async_sessionmaker[AsyncSession]) -> tuple[BillTown, str]:
    async with transaction(committed_sessions) as session:
        made = await make_bill_town(session, local_today(utcnow(), SHANGHAI))
        prepaid = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 1, 1),
                                         mode=BillingMode.prepaid_station)
    return made, prepaid.household.account_no


@pytest.fixture(scope="module")
def site(database_url: str, wechat_web: str, town: tuple[BillTown, str],
         committed_sessions: async_sessionmaker[AsyncSession]) -> Iterator[Site]:
    payments = next(domain for domain in installed() if domain.name == "payments")

    def payments_routes(host: HttpHost) -> list[Any]:
        from backend.domain import load

        assert payments.routes is not None
        return [*load(payments.routes)(host), *payer_http.routes(host)]

    alipay = _stand_in(PaymentChannel.alipay, GatewayApi.alipay, APP_ID)
    wechat = _stand_in(PaymentChannel.wechat, GatewayApi.wechat_v3, WECHAT_APP_ID, "1900000001")
    merchants = Merchants(alipay=(AlipayMerchant("demo", APP_ID, "-", "-"),), wechat=(
        WechatMerchant("demo", GatewayApi.wechat_v3, WECHAT_APP_ID, "1900000001", app_secret="app-secret-0123456789"),))
    online = OnlinePayments(merchants, gateways={(PaymentChannel.alipay, "demo"): alipay,
                                                 (PaymentChannel.wechat, "demo"): wechat})

    def payments_services(settings: Any) -> dict[str, Any]:
        return {"payments.online": online}

    domains = tuple(dataclasses.replace(d, routes=payments_routes, services=payments_services)  # type: ignore[arg-type]
                    if d is payments else d
                    for d in installed())
    settings = api_settings()
    app = create_app(settings, database_url, domains=domains)
    with serving(app) as (host, port):
        url = f"http://{host}:{port}"
        # The platforms call back to this very server (known once it listens).
        online.merchants = dataclasses.replace(merchants, public_base_url=url)
        app.state.services["gateway.wechat"] = StandInClient(settings=type("S", (), {"url": wechat_web,
                                                                                    "timeout_s": 5.0}))
        yield Site(url, alipay, wechat, online, committed_sessions, town[0], town[1], settings.secret())


@pytest.fixture
async def browser(site: Site) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=site.url, headers={"User-Agent": PLAIN_UA}) as client:
        yield client


async def _orders(site: Site) -> int:
    async with site.sessions() as session:
        return int((await session.execute(text("SELECT count(*) FROM payment_orders"))).scalar_one())


async def _order(site: Site, out_trade_no: str) -> Any:
    async with site.sessions() as session:
        return (await session.execute(text("SELECT * FROM payment_orders WHERE out_trade_no = :n"),
                                      {"n": out_trade_no})).one()


async def _money(site: Site, account_no: str) -> tuple[int, int, int]:
    """(balance, ledger sum, payments) of the open account of household ``account_no``."""
    async with site.sessions() as session:
        row = (await session.execute(text(
            "SELECT a.balance_fen, (SELECT coalesce(sum(amount_fen), 0) FROM ledger_entries WHERE account_id = a.id), "
            "(SELECT count(*) FROM payments WHERE account_id = a.id) FROM accounts a "
            "JOIN households h ON h.id = a.household_id WHERE h.account_no = :n AND a.status = 'open'"),
            {"n": account_no})).one()
    return int(row[0]), int(row[1]), int(row[2])


def _field(page: str, name: str) -> str | None:
    found = re.search(rf'name="{name}"[^>]*value="([^"]*)"', page)
    return found.group(1) if found else None


# --------------------------------------------------------------------------- what the page shows


def test_names_and_addresses_are_masked() -> None:
    assert [mask_name(n) for n in ("张三", "张小三", "欧阳小明", "王")] == ["张*", "张*三", "欧**明", "王"]
    assert mask_address("翠湖小区1-1-0101") == "翠湖小区****01"


async def test_the_pay_page_shows_the_masked_name_and_what_is_due_with_today_s_late_fee(
        site: Site, browser: httpx.AsyncClient) -> None:
    wang = site.town.households["wang"]

    response = await browser.get(f"/pay/a/{wang.account_no}")

    assert response.status_code == 200, response.text
    page = response.text
    # 王芳 owes ¥53.75 due 10 days ago, and 27 fen of late fee today.
    assert "王*" in page and "王芳" not in page
    assert "¥54.02" in page and _field(page, "amount") == "54.02"
    assert 'value="alipay"' in page and 'value="wechat"' in page  # a plain browser chooses
    policy = response.headers["content-security-policy"]
    assert "script-src 'none'" in policy and "form-action 'self'" in policy and "http://cashier.test" not in policy
    assert response.headers["cache-control"] == "no-store"


async def test_a_prepaid_account_shows_its_balance_and_no_amount_due(site: Site, browser: httpx.AsyncClient) -> None:
    response = await browser.get(f"/pay/a/{site.prepaid_no}")

    assert response.status_code == 200
    assert "账户余额" in response.text and "应缴金额" not in response.text and _field(response.text, "amount") == ""


async def test_an_unknown_account_number_is_not_found(browser: httpx.AsyncClient) -> None:
    response = await browser.get("/pay/a/NO-SUCH-ACCOUNT")

    assert response.status_code == 404 and "未找到该户号" in response.text


@pytest.mark.parametrize(("amount", "message"), [
    ("12.345", "金额最多两位小数"), ("0", "金额须大于零"), ("0.00", "金额须大于零"), ("-5", "金额格式错误"),
    ("1e3", "金额格式错误"), ("", "请输入金额"), ("50000.01", "单笔在线缴费不能超过 50000.00 元"),
])
async def test_a_bad_amount_is_refused_in_chinese_and_opens_no_order(
        site: Site, browser: httpx.AsyncClient, amount: str, message: str) -> None:
    account_no = site.town.households['wang'].account_no
    before, money = await _orders(site), await _money(site, account_no)

    response = await browser.post(f"/pay/a/{account_no}", data={"amount": amount, "channel": "alipay"})

    assert response.status_code == 400 and message in response.text
    assert _field(response.text, "amount") == amount  # what was typed stays in the field
    assert await _orders(site) == before
    assert await _money(site, account_no) == money and money[0] == money[1]  # ledger sum = balance, unchanged


async def test_the_largest_online_payment_is_accepted(site: Site, browser: httpx.AsyncClient) -> None:
    response = await browser.post(f"/pay/a/{site.prepaid_no}", data={"amount": "50000.00", "channel": "alipay"})

    assert response.status_code == 303


# --------------------------------------------------------------------------- where it goes


async def test_a_plain_browser_paying_by_alipay_goes_to_the_wap_cashier_and_returns_to_the_result(
        site: Site, browser: httpx.AsyncClient) -> None:
    wang = site.town.households["wang"]

    response = await browser.post(f"/pay/a/{wang.account_no}", data={"amount": "54.02", "channel": "alipay"})

    assert response.status_code == 303
    out_trade_no = response.headers["location"].rsplit("/", 1)[1]
    assert response.headers["location"] == f"http://cashier.test/wap/{out_trade_no}"
    order = await _order(site, out_trade_no)
    assert (order.scene, order.origin, order.purpose, order.amount_fen, order.channel, order.created_by) == (
        "wap", "pay_page", "bills", 5402, "alipay", "anonymous")
    assert site.alipay.requests[-1].return_url == f"{site.url}/pay/result/{out_trade_no}"


async def test_a_plain_browser_paying_by_wechat_gets_h5(site: Site, browser: httpx.AsyncClient) -> None:
    response = await browser.post(f"/pay/a/{site.prepaid_no}", data={"amount": "20", "channel": "wechat"})

    assert response.status_code == 303 and response.headers["location"].startswith("http://cashier.test/h5/")
    order = await _order(site, response.headers["location"].rsplit("/", 1)[1])
    assert (order.scene, order.purpose, order.amount_fen) == ("h5", "recharge", 2000)


async def test_inside_alipay_only_alipay_is_offered_and_it_pays_by_wap(site: Site) -> None:
    async with httpx.AsyncClient(base_url=site.url, headers={"User-Agent": ALIPAY_UA}) as alipay_app:
        page = (await alipay_app.get(f"/pay/a/{site.prepaid_no}")).text
        refused = await alipay_app.post(f"/pay/a/{site.prepaid_no}", data={"amount": "10", "channel": "wechat"})
        response = await alipay_app.post(f"/pay/a/{site.prepaid_no}", data={"amount": "10"})

    assert 'value="alipay"' in page and 'value="wechat"' not in page
    assert refused.status_code == 400 and "请选择支付方式" in refused.text
    assert response.status_code == 303 and response.headers["location"].startswith("http://cashier.test/wap/")


async def test_inside_wechat_the_page_authorizes_for_the_openid_then_pays_by_jsapi(
        site: Site, wechat_web: str) -> None:
    before = await _orders(site)
    async with httpx.AsyncClient(base_url=site.url, headers={"User-Agent": WECHAT_UA}) as wechat_app:
        page = (await wechat_app.get(f"/pay/a/{site.prepaid_no}")).text
        response = await wechat_app.post(f"/pay/a/{site.prepaid_no}", data={"amount": "30.50", "channel": "wechat"})
        authorize = response.headers["location"]
        back = await wechat_app.get(authorize)  # WeChat sends the payer back with a code
        jsapi = await wechat_app.get(back.headers["location"])

    assert 'value="wechat"' in page and 'value="alipay"' not in page
    assert response.status_code == 303 and authorize.startswith(f"{wechat_web}/connect/oauth2/authorize?")
    query = parse_qs(urlsplit(authorize).query)
    assert query["scope"] == ["snsapi_base"] and query["redirect_uri"] == [f"{site.url}/pay/wechat/oauth"]
    assert await _orders(site) == before + 1  # nothing opened before the openid; one after
    assert jsapi.status_code == 200, jsapi.text
    request = site.wechat.requests[-1]
    assert (request.scene.value, request.openid, request.amount_fen) == ("jsapi", OPENID, 3050)
    assert f"prepay_id=wx{request.out_trade_no}" in jsapi.text and "WeixinJSBridge" in jsapi.text
    assert "script-src 'sha256-" in jsapi.headers["content-security-policy"]
    order = await _order(site, request.out_trade_no)
    assert (order.scene, order.payer_openid, order.origin) == ("jsapi", OPENID, "pay_page")


async def test_a_forged_or_stale_authorization_state_opens_nothing(site: Site) -> None:
    before = await _orders(site)
    async with httpx.AsyncClient(base_url=site.url, headers={"User-Agent": WECHAT_UA}) as wechat_app:
        response = await wechat_app.get("/pay/wechat/oauth", params={"code": "CODE123", "state": "1.2.p.3.forged"})

    assert response.status_code == 400 and "授权已失效" in response.text
    assert await _orders(site) == before


# --------------------------------------------------------------------------- the static QR


async def test_the_static_qr_token_opens_the_household_s_page_and_pays_as_static_qr(
        site: Site, browser: httpx.AsyncClient) -> None:
    zhang = site.town.households["zhang"]
    assert zhang.id is not None
    token = static_qr_token(site.secret, zhang.id)

    page = await browser.get(f"/pay/s/{token}")
    forged = await browser.get(f"/pay/s/{token[:-2]}AA")
    response = await browser.post(f"/pay/s/{token}", data={"amount": "15", "channel": "alipay"})

    assert page.status_code == 200 and "张*" in page.text and "¥15.00" in page.text  # ¥20.00 less ¥5.00 paid
    assert forged.status_code == 404 and "缴费码无效" in forged.text
    order = await _order(site, response.headers["location"].rsplit("/", 1)[1])
    assert (order.origin, order.household_id, order.amount_fen) == ("static_qr", zhang.id, 1500)


# --------------------------------------------------------------------------- the result, and the money


async def test_the_result_page_waits_then_shows_the_payment_its_notification_credited(
        site: Site, browser: httpx.AsyncClient) -> None:
    li = site.town.households["li"]
    response = await browser.post(f"/pay/a/{li.account_no}", data={"amount": "36.05", "channel": "alipay"})
    out_trade_no = response.headers["location"].rsplit("/", 1)[1]
    order = await _order(site, out_trade_no)

    waiting = await browser.get(f"/pay/result/{out_trade_no}")
    notified = await browser.post("/pay/alipay/notify", content=site.alipay.notification(out_trade_no, 3605),
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    paid = await browser.get(f"/pay/result/{out_trade_no}")

    assert waiting.status_code == 200 and "等待支付结果" in waiting.text and 'http-equiv="refresh"' in waiting.text
    assert notified.text == "success"
    assert 'data-state="paid"' in paid.text and "支付成功" in paid.text and "refresh" not in paid.text
    async with site.sessions() as session:
        assert await balance(session, order.account_id) == await ledger_sum(session, order.account_id)
        bill = (await session.execute(text("SELECT status FROM bills WHERE id = :b"),
                                      {"b": site.town.bills["li"].id})).scalar_one()
    assert bill == "paid"  # ¥36.00 and its 5 fen of late fee


async def test_an_unknown_order_s_result_is_not_found(browser: httpx.AsyncClient) -> None:
    assert (await browser.get("/pay/result/SW202601010000000000")).status_code == 404


async def test_the_pages_are_throttled_per_address(database_url: str, site: Site) -> None:
    payments = next(domain for domain in installed() if domain.name == "payments")
    app = create_app(api_settings(anonymous_burst_per_ip=2, anonymous_per_ip_per_minute=2), database_url,
                     domains=tuple(dataclasses.replace(d, routes=payer_http.routes)  # type: ignore[arg-type]
                                   if d is payments else d for d in installed()))
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        statuses = [(await http.get(f"/pay/a/{site.prepaid_no}")).status_code for _ in range(3)]
    await app.state.engine.dispose()

    assert statuses == [200, 200, 429]


async def test_a_form_past_its_bound_is_refused(site: Site, browser: httpx.AsyncClient) -> None:
    response = await browser.post(f"/pay/a/{site.prepaid_no}", content=b"amount=1&x=" + b"a" * 2048,
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})

    assert response.status_code == 413
