"""The payer's H5 pages and the static QR downloads over HTTP.

Anonymous pages (no login; :mod:`backend.payments.online.pages` says what they decide):

- ``GET /pay/a/{缴费号}``: the household (masked), what is due, amount entry, channels;
  ``POST`` (form ``amount``, ``channel``) opens the order and answers 303 to the
  gateway's pay URL (Alipay WAP, WeChat H5), or inside WeChat 303 to WeChat's web
  authorization (``snsapi_base``).
- ``GET /pay/s/{token}`` and ``POST``: the same for the static QR sticker's household.
- ``GET /pay/wechat/oauth?code=…&state=…``: WeChat's callback: the code becomes the
  payer's openid (through the ``gateway.wechat`` client: bounded and kept), a JSAPI order
  opens and the page calls WeixinJSBridge, then goes to the result page.
- ``GET /pay/result/{out_trade_no}``: paid / waiting (reloads itself) / closed / failed.

Bounds: every request to these pages takes a token from the pages' anonymous buckets
(the app's anonymous limits, ``SHUIWU_ANONYMOUS_*``, per client address and in all), and
opening an order one more from :data:`ORDERS_PER_IP_PER_MINUTE` per address: 429 with a
page saying so. A form body is at most :data:`FORM_MAX_BODY_BYTES` (413); the amount is
checked by :func:`~backend.payments.online.pages.parse_amount`.

Staff downloads (``payments:read``, the caller's data scope, audited ``printStaticQr``;
a Bearer token or a signed link ``token`` for the path):

- ``GET /payments/static-qr.pdf?areaId=…``: the sticker sheet of an area (a building; a
  community prints each building from a new page);
- ``GET /payments/static-qr.png?householdId=…`` and ``.svg``: one household's QR.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from backend.audit.service import record_operation
from backend.auth.http import client_ip
from backend.auth.principal import Principal
from backend.auth.ratelimit import AnonymousThrottle, TokenBuckets, source_of
from backend.billing.notices import local_today
from backend.clock import utcnow
from backend.db import transaction
from backend.domain import HttpHost, settings_group_key
from backend.edge import body_limit
from backend.errors import BadUserInput, DomainError, RateLimited
from backend.files.http import Exported, ExportRoute, export_route, refuse_unknown_params
from backend.files.service import FileStore
from backend.gateways.errors import GatewayError
from backend.graphql.relay import decode_id
from backend.payments.models import PaymentChannel
from backend.payments.online import pages, static_qr
from backend.payments.online.gateway import PayloadKind
from backend.payments.online.merchants import WechatMerchant
from backend.payments.online.models import OrderOrigin
from backend.payments.online.orders import OrderAsk, open_order, request_payload
from backend.payments.online.registry import OnlinePayments, online_payments
from backend.payments.settings import PaymentsSettings

FORM_MAX_BODY_BYTES = 2 * 1024  # an amount and a channel
ORDERS_PER_IP_PER_MINUTE = 10
OAUTH_PATH = "/pay/wechat/oauth"
STATIC_QR_PDF_PATH = "/payments/static-qr.pdf"
STATIC_QR_PNG_PATH = "/payments/static-qr.png"
STATIC_QR_SVG_PATH = "/payments/static-qr.svg"
STATIC_QR_PERMISSION = "payments:read"
# Where the payer's browser is sent after a form: the real platforms' cashier and
# authorization origins (a local or sandbox gateway's origin is added from its URL).
PLATFORM_ORIGINS = ("https://openapi.alipay.com", "https://wx.tenpay.com", "https://open.weixin.qq.com")
WECHAT_OPEN_BASE = "https://open.weixin.qq.com"
WECHAT_API_BASE = "https://api.weixin.qq.com"
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else None


def _gateway_url(services: Mapping[str, Any], kind: str) -> str:
    client = services.get(f"gateway.{kind}")
    return str(getattr(getattr(client, "settings", None), "url", "") or "")


def wechat_web_bases(services: Mapping[str, Any]) -> tuple[str, str]:
    """(authorization base, API base) of WeChat's web authorization: ``SHUIWU_WECHAT_OAUTH_URL``
    / ``…_SNS_URL`` where one is set apart from ``SHUIWU_WECHAT_URL`` (a sandbox), else the
    local gateway when that URL is on this machine (it serves both paths), else the real
    hosts (WeChat Pay's API host serves neither)."""
    url = _gateway_url(services, "wechat").rstrip("/")
    settings = getattr(services.get("gateway.wechat"), "settings", None)
    local = url if url and urlsplit(url).hostname in _LOOPBACK else ""

    def base(name: str, real: str) -> str:
        own = str(getattr(settings, name, "") or "").rstrip("/")
        return own if own and own != url else local or real

    return base("oauth_url", WECHAT_OPEN_BASE), base("sns_url", WECHAT_API_BASE)


def _fetch_json(url: str, timeout_s: float) -> dict[str, Any]:
    """GET ``url`` and parse its JSON (blocking: run through the gateway client)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            parsed = json.loads(answer.read(64 * 1024))
    except (urllib.error.URLError, TimeoutError, ValueError) as error:
        raise pages.OpenidRefused() from error
    return parsed if isinstance(parsed, dict) else {}


def _html(body: str, status: int = 200, *, script: str | None = None, form_targets: tuple[str, ...] = ()) -> Response:
    return HTMLResponse(body, status, headers={"Content-Security-Policy": pages.page_policy(script, form_targets=form_targets),
                                               "Cache-Control": "no-store"})


def routes(host: HttpHost) -> list[Route]:
    settings = host.settings
    secret = settings.secret()
    zone = settings.tz
    throttle = AnonymousThrottle(per_ip_per_minute=settings.anonymous_per_ip_per_minute,
                                 per_minute=settings.anonymous_per_minute, burst_per_ip=settings.anonymous_burst_per_ip)
    order_buckets = TokenBuckets()
    form_targets = tuple(sorted({*PLATFORM_ORIGINS, *(origin for kind in ("alipay", "wechat")
                                                       if (origin := _origin(_gateway_url(host.services, kind))))}))

    def online() -> OnlinePayments:
        return online_payments(host.services)

    def public_base(request: Request) -> str:
        return online().merchants.public_base_url or str(request.base_url).rstrip("/")

    def too_many() -> Response:
        return _html(pages.message_page("请稍后再试", RateLimited.message), 429)

    def not_found(what: str) -> Response:
        return _html(pages.message_page("未找到", what), 404)

    def available() -> list[PaymentChannel]:
        return [channel for channel in (PaymentChannel.alipay, PaymentChannel.wechat) if online().configured(channel)]

    async def payee_of(request: Request, origin: OrderOrigin) -> pages.Payee | None:
        today = local_today(utcnow(), zone)
        async with host.sessions() as session:
            if origin is OrderOrigin.static_qr:
                household_id = pages.household_of_token(secret, request.path_params["token"])
                if household_id is None:
                    return None
                return await pages.payee_by_household(session, household_id, today=today)
            return await pages.payee_by_account_no(session, request.path_params["account_no"], today=today)

    def form_page(request: Request, payee: pages.Payee, form: pages.PayForm, status: int = 200) -> Response:
        browser = pages.browser_of(request.headers.get("user-agent"))
        body = pages.pay_page(payee, action=request.url.path, channels=pages.channels_for(browser, available()),
                              browser=browser, form=form, maximum_fen=online().merchants.max_online_payment_fen)
        return _html(body, status, form_targets=form_targets)

    async def open_for_page(request: Request, *, payee_household: int, amount_fen: int, purpose: Any,
                            channel: PaymentChannel, origin: OrderOrigin, openid: str | None) -> tuple[str, Any]:
        """Open the order (committed), then ask the gateway with the result page as the
        return URL: (out_trade_no, the client payload)."""
        browser = pages.browser_of(request.headers.get("user-agent"))
        now = utcnow()
        ask = OrderAsk(amount_fen=amount_fen, purpose=purpose, channel=channel, scene=pages.scene_for(channel, browser),
                       origin=origin, created_by="anonymous", household_id=payee_household, openid=openid,
                       client_ip=client_ip(request), user_agent=request.headers.get("user-agent"))
        async with transaction(host.sessions) as session:
            order, _ = await open_order(session, online=online(), ask=ask, now=now, tz=zone)
        payload = await request_payload(host.sessions, online=online(), services=host.services, order=order, now=now,
                                        return_url=public_base(request) + pages.result_path(order.out_trade_no))
        return order.out_trade_no, payload

    async def show(request: Request, origin: OrderOrigin) -> Response:
        try:
            throttle.check(client_ip(request))
        except RateLimited:
            return too_many()
        payee = await payee_of(request, origin)
        if payee is None:
            return not_found("未找到该户号, 请核对缴费号" if origin is OrderOrigin.pay_page else "缴费码无效, 请联系自来水公司")
        if payee.account_id is None:
            return _html(pages.message_page("无法缴费", "该户不能在线缴费 (无开户账户或已销户), 请到营业厅办理"), 409)
        return form_page(request, payee, pages.PayForm(amount=pages.default_amount(payee)))

    async def submit(request: Request, origin: OrderOrigin) -> Response:
        ip = client_ip(request)
        try:
            throttle.check(ip)
        except RateLimited:
            return too_many()
        payee = await payee_of(request, origin)
        if payee is None:
            return not_found("未找到该户号, 请核对缴费号" if origin is OrderOrigin.pay_page else "缴费码无效, 请联系自来水公司")
        if payee.account_id is None:
            return _html(pages.message_page("无法缴费", "该户不能在线缴费 (无开户账户或已销户), 请到营业厅办理"), 409)
        form = await request.form(max_files=0, max_fields=5)
        raw_amount, raw_channel = str(form.get("amount") or ""), str(form.get("channel") or "")
        filled = pages.PayForm(amount=raw_amount[:16], channel=raw_channel[:16])
        browser = pages.browser_of(request.headers.get("user-agent"))
        errors: dict[str, str] = {}
        amount_fen = channel = None
        try:
            amount_fen = pages.parse_amount(raw_amount, maximum_fen=online().merchants.max_online_payment_fen)
        except pages.PageInputError as error:
            errors["amount"] = error.message
        try:
            channel = pages.parse_channel(raw_channel, pages.channels_for(browser, available()))
        except pages.PageInputError as error:
            errors["channel"] = error.message
        if errors or amount_fen is None or channel is None:
            return form_page(request, payee, pages.PayForm(filled.amount, filled.channel, errors), 400)
        if not order_buckets.take(source_of(ip), ORDERS_PER_IP_PER_MINUTE):
            return too_many()
        if pages.scene_for(channel, browser).value == "jsapi":
            # Inside WeChat: the openid first, by web authorization; the intent rides in its state.
            merchant = online().merchants.default(PaymentChannel.wechat)
            if not isinstance(merchant, WechatMerchant) or not merchant.app_secret:
                errors[""] = "微信内支付未开通, 请在浏览器中打开本页面"
                return form_page(request, payee, pages.PayForm(filled.amount, filled.channel, errors), 400)
            state = pages.sign_intent(secret, pages.PayIntent(payee.household_id, amount_fen, origin,
                                                              int(utcnow().timestamp()) + int(pages.INTENT_TTL.total_seconds())))
            authorize_base, _ = wechat_web_bases(host.services)
            target = pages.wechat_authorize_url(authorize_base, app_id=merchant.app_id,
                                                redirect_uri=public_base(request) + OAUTH_PATH, state=state)
            return RedirectResponse(target, 303, headers={"Cache-Control": "no-store"})
        try:
            out_trade_no, payload = await open_for_page(request, payee_household=payee.household_id,
                                                        amount_fen=amount_fen, purpose=payee.purpose, channel=channel,
                                                        origin=origin, openid=None)
        except DomainError as error:
            errors[error.field if error.field == "amount" or error.field == "channel" else ""] = error.message
            return form_page(request, payee, pages.PayForm(filled.amount, filled.channel, errors), 400)
        except GatewayError:
            errors[""] = "支付渠道暂时不可用, 请稍后再试"
            return form_page(request, payee, pages.PayForm(filled.amount, filled.channel, errors), 502)
        pay_url = pages.redirect_target(payload)
        if pay_url is None:
            return RedirectResponse(pages.result_path(out_trade_no), 303)
        return RedirectResponse(pay_url, 303, headers={"Cache-Control": "no-store"})

    async def wechat_oauth(request: Request) -> Response:
        ip = client_ip(request)
        try:
            throttle.check(ip)
        except RateLimited:
            return too_many()
        intent = pages.read_intent(secret, request.query_params.get("state", ""), now=utcnow())
        code = request.query_params.get("code", "")
        if intent is None or not code or len(code) > 256:
            return _html(pages.message_page("授权已失效", "授权已失效或链接无效, 请返回缴费页面重新支付"), 400)
        merchant = online().merchants.default(PaymentChannel.wechat)
        if not isinstance(merchant, WechatMerchant) or not merchant.app_secret:
            return _html(pages.message_page("无法支付", "微信内支付未开通"), 409)
        _, api_base = wechat_web_bases(host.services)
        url = pages.wechat_openid_url(api_base, app_id=merchant.app_id, app_secret=merchant.app_secret or "", code=code)
        client = host.services.get("gateway.wechat")
        timeout = float(getattr(getattr(client, "settings", None), "timeout_s", 10.0))
        try:
            if client is not None:
                answer = await client.call("oauth.openid", _fetch_json, url, timeout,
                                           request={"appid": merchant.app_id, "code": code}, reference=None)
            else:
                answer = await asyncio.to_thread(_fetch_json, url, timeout)
            openid = pages.openid_of_answer(answer)
        except (DomainError, GatewayError):
            return _html(pages.message_page("授权失败", pages.OpenidRefused.message), 502)
        if not order_buckets.take(source_of(ip), ORDERS_PER_IP_PER_MINUTE):
            return too_many()
        async with host.sessions() as session:
            payee = await pages.payee_by_household(session, intent.household_id, today=local_today(utcnow(), zone))
        if payee is None or payee.account_id is None:
            return _html(pages.message_page("无法缴费", "该户不能在线缴费 (无开户账户或已销户), 请到营业厅办理"), 409)
        try:
            out_trade_no, payload = await open_for_page(
                request, payee_household=intent.household_id, amount_fen=intent.amount_fen, purpose=payee.purpose,
                channel=PaymentChannel.wechat, origin=intent.origin, openid=openid)
        except DomainError as error:
            return _html(pages.message_page("无法支付", error.message), 400)
        except GatewayError:
            return _html(pages.message_page("无法支付", "支付渠道暂时不可用, 请稍后再试"), 502)
        if payload.kind is not PayloadKind.jsapi or isinstance(payload.value, str):
            return _html(pages.message_page("无法支付", "支付渠道返回了无法使用的参数"), 502)
        body = pages.jsapi_page(out_trade_no=out_trade_no, amount_fen=intent.amount_fen, params=payload.value,
                                result_url=pages.result_path(out_trade_no))
        return _html(body, script=pages.JSAPI_SCRIPT)

    async def result(request: Request) -> Response:
        try:
            throttle.check(client_ip(request))
        except RateLimited:
            return too_many()
        async with host.sessions() as session:
            order = await pages.order_view(session, request.path_params["out_trade_no"])
        if order is None:
            return not_found("未找到该订单")
        return _html(pages.result_page(order))

    async def pay_page(request: Request) -> Response:
        if request.method == "POST":
            return await submit(request, OrderOrigin.pay_page)
        return await show(request, OrderOrigin.pay_page)

    async def sticker_page(request: Request) -> Response:
        if request.method == "POST":
            return await submit(request, OrderOrigin.static_qr)
        return await show(request, OrderOrigin.static_qr)

    body_limit(FORM_MAX_BODY_BYTES)(pay_page)
    body_limit(FORM_MAX_BODY_BYTES)(sticker_page)
    return [
        Route("/pay/a/{account_no}", pay_page, methods=["GET", "POST"]),
        Route("/pay/s/{token}", sticker_page, methods=["GET", "POST"]),
        Route(OAUTH_PATH, wechat_oauth, methods=["GET"]),
        Route("/pay/result/{out_trade_no}", result, methods=["GET"]),
        *static_qr_routes(host),
    ]


def static_qr_routes(host: HttpHost) -> list[Route]:
    """The staff's downloads of stickers and QR images (module docstring)."""
    files: FileStore = host.services["files"]
    secret = host.settings.secret()
    payments: PaymentsSettings = host.services.get(settings_group_key("payments")) or PaymentsSettings()

    def base() -> str:
        return online_payments(host.services).merchants.public_base_url

    def spooled(content: bytes, suffix: str) -> str:
        descriptor, name = tempfile.mkstemp(prefix="shuiwu-static-qr-", suffix=suffix, dir=str(files.spool_directory()))
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
        return name

    def public_base_or_refuse() -> str:
        found = base()
        if not found:
            raise BadUserInput("未配置在线支付 (SHUIWU_PAYMENTS_CONFIG 的 public_base_url), 无法生成缴费码",
                               "Online payment is not configured (public_base_url): no QR can be made")
        return found

    async def sheet(principal: Principal, params: dict[str, str]) -> Exported:
        refuse_unknown_params(params, frozenset({"areaId"}))
        if "areaId" not in params:
            raise BadUserInput("请选择片区 (楼宇)", "Choose an area (a building)", field="areaId")
        area_id = decode_id(params["areaId"], "Area", field="areaId")
        public = public_base_or_refuse()
        async with host.sessions() as session:
            stickers = await static_qr.sticker_households(session, area_id=area_id, public_base_url=public,
                                                          scope_patterns=principal.scope_patterns(), secret=secret)
        pdf = await static_qr.render_sticker_sheet_async(stickers, font=payments.font)
        return Exported(spooled(pdf, ".pdf"), len(stickers), f"static-qr-{area_id}.pdf")

    def one(kind: str) -> Any:
        async def build(principal: Principal, params: dict[str, str]) -> Exported:
            refuse_unknown_params(params, frozenset({"householdId"}))
            if "householdId" not in params:
                raise BadUserInput("请指定住户", "Name the household", field="householdId")
            household_id = decode_id(params["householdId"], "Household", field="householdId")
            public = public_base_or_refuse()
            async with host.sessions() as session:
                sticker = await static_qr.household_sticker(session, household_id=household_id, secret=secret,
                                                            scope_patterns=principal.scope_patterns(),
                                                            public_base_url=public)
            if kind == "png":
                content = await asyncio.to_thread(static_qr.qr_png, sticker.url)
            else:
                content = static_qr.qr_svg(sticker.url).encode()
            return Exported(spooled(content, f".{kind}"), 1, f"static-qr-{sticker.account_no}.{kind}")
        return build

    def export(path: str, media_type: str) -> ExportRoute:
        return ExportRoute(path, STATIC_QR_PERMISSION, "payments", "printStaticQr", "打印静态缴费码",
                           media_type=media_type)

    return [
        export_route(host, export(STATIC_QR_PDF_PATH, "application/pdf"), sheet, record=record_operation),
        export_route(host, export(STATIC_QR_PNG_PATH, "image/png"), one("png"), record=record_operation),
        export_route(host, export(STATIC_QR_SVG_PATH, "image/svg+xml"), one("svg"), record=record_operation),
    ]
