"""The local WeChat Pay (``shuiwu fake-gateway wechat``): API v2 and v3 and WeChat's web
authorization on one port, signing and verifying as WeChat does, with orders in memory.

It learns the merchants from the merchants file (``SHUIWU_WECHAT_FAKE_MERCHANTS_FILE``,
else ``SHUIWU_PAYMENTS_CONFIG``: the file the app reads) and signs as "WeChat Pay" with
``fake_wechat_platform_private.pem`` beside it (``testkeys.write_test_merchants``), or
``SHUIWU_WECHAT_FAKE_PRIVATE_KEY_FILE``.

- **v2** (XML): ``/pay/unifiedorder``, ``/pay/micropay``, ``/pay/orderquery``,
  ``/pay/closeorder``, ``/secapi/pay/reverse``, ``/secapi/pay/refund``,
  ``/pay/refundquery``, ``/pay/downloadbill``: the request's ``sign`` (MD5 or
  HMAC-SHA256 with the merchant's API key) is checked, the answer signed the same way.
  The client certificate of ``secapi`` is not asked for.
- **v3** (JSON): ``/v3/pay/transactions/{app,h5,jsapi,native,codepay}``,
  ``…/out-trade-no/{no}`` (query), ``…/close``, ``…/reverse``,
  ``/v3/refund/domestic/refunds[/{no}]``, ``/v3/bill/tradebill`` and its download: the
  ``Authorization`` signature is verified with the public half of the merchant's key in
  the merchants file; answers are signed with the platform key (``Wechatpay-*`` headers).
- **Web authorization**: ``/connect/oauth2/authorize`` redirects back with a code (the
  fake-only ``payer`` parameter picks who is paying, default one payer);
  ``/sns/oauth2/access_token`` exchanges it once for an openid that is stable per app id.
- **Cashier** (h5's ``mweb_url`` / ``h5_url``, native's ``code_url``): ``/cashier/{prepay_id}``
  shows the amount with 付款 and 取消; ``/jsapi`` stands in for WeixinJSBridge (verifies the
  JSAPI parameters' ``paySign``, then shows the cashier). 付款 sends the notification as
  ``/_control/pay`` does; 取消 leaves the order unpaid.

Refunds answer ``PROCESSING`` (v2: accepted) and are ``SUCCESS`` at their first query.
Barcode payments are paid at once unless scripted (``user_paying``, ``/_control/barcode``).

**Notifications** go to the order's ``notify_url``; one not answered success (v2: XML
``SUCCESS``; v3: a 2xx) is sent again on WeChat's schedule (:data:`RETRY_SCHEDULE_S`: 15 s,
15 s, 30 s, 3 min, 10 min, 20 min, 30 min ×3, 1 h, 3 h ×3, 6 h ×2) times
``SHUIWU_WECHAT_FAKE_NOTIFY_RETRY_SCALE``, unless ``SHUIWU_WECHAT_FAKE_NOTIFY_RETRIES=false``.

**Control** (beside the base's ``/_control/``, ``requests``, ``next``, ``reset``), the
same shape as the local Alipay's:

- ``POST /_control/pay`` ``{"out_trade_no", "mode", "times": 1, "retry": true, "amount_fen"}``
  pays the order and sends its notification(s), answering ``{"out_trade_no", "mode",
  "sent": [{"status", "body"}…], "order": {…}}`` (status 0: no answer). Modes:
  ``normal`` (``times`` sent one after another), ``replay`` (the same notification
  ``times`` times at once), ``tamper_amount`` (the genuine notification with its amount
  changed after signing: ``amount_fen``, default ×100), ``forge_signature`` (signed with a
  key that is not WeChat Pay's), ``other_app`` (genuinely signed, for another app id),
  ``wrong_amount`` (genuinely signed with another amount: ``amount_fen``, default 1 fen
  less). The last four are not WeChat paying: the order stays as it was and nothing is
  retried. A closed order is paid all the same (the payer's money was taken as it closed).
- ``GET /_control/orders``: ``{"orders": [{out_trade_no, amount_fen, state (waiting |
  paying | paid | closed | failed), trade_status (WeChat's trade_state), scene, merchant,
  api, app_id, mch_id, notify_url, trade_no, openid, paid_at, refunded_fen,
  notifications}]}``; ``GET /_control/notifications``: every attempt.
- ``POST /_control/settings`` ``{"notify_retries": bool, "notify_retry_scale": float}``.
- ``POST /_control/barcode`` ``{"queries": N, "outcome": "paid" | "declined" |
  "abandoned"}``: the next barcode payment answers USERPAYING and its next N queries too,
  then ends as ``outcome`` (``abandoned``: paying until reversed; ``queries: 0`` with
  ``declined``: declined at once).
- ``POST /_control/next`` with this kind's actions (:data:`ACTIONS`): whichever request
  takes the script, it applies to the next API call / barcode payment / notification it
  names.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import gzip
import hashlib
import html
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import httpx
import xmltodict
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from wechatpy.pay.utils import dict_to_xml

from backend.gateways.http import Answer, FakeRoute, Received, Script, fake_gateway_app
from backend.payments.online.fakes import pay_request
from backend.payments.online.merchants import MerchantsInvalid, WechatMerchant, load_merchants
from backend.payments.online.models import GatewayApi
from backend.payments.online.testkeys import FAKE_WECHAT_PLATFORM_KEY
from backend.payments.online.wechat import CHINA, WechatSettings, fen_to_yuan, statement_text
from backend.payments.online.wechat_v2 import HMAC_SHA256, sign, signed_by

log = logging.getLogger(__name__)

# WeChat Pay's notification retry schedule (seconds after the previous attempt).
RETRY_SCHEDULE_S = (15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600)
PAY_MODES = ("normal", "replay", "tamper_amount", "forge_signature", "other_app", "wrong_amount")
BARCODE_OUTCOMES = ("paid", "declined", "abandoned")
NOTIFY_TIMEOUT_S = 10.0
_AUTH_CODE = re.compile(r"^1[0-5]\d{16}$")  # WeChat's payment codes: 18 digits starting 10-15
_AUTHORIZATION = re.compile(r'^WECHATPAY2-SHA256-RSA2048 (?P<params>.+)$')
_V2_TRADE_TYPES = frozenset({"JSAPI", "NATIVE", "APP", "MWEB"})
_V3_TRADE_TYPES = {"app": "APP", "h5": "MWEB", "jsapi": "JSAPI", "native": "NATIVE", "codepay": "MICROPAY"}
_STATES = {"NOTPAY": "waiting", "USERPAYING": "paying", "SUCCESS": "paid", "REFUND": "paid", "CLOSED": "closed",
           "REVOKED": "closed", "PAYERROR": "failed"}
# The kind's actions for POST /_control/next (the base adds delay and error): whichever
# request takes the script, it applies to the next API call / barcode payment / notification.
ACTIONS: Mapping[str, str] = {
    "refuse": "the next API call is refused (v2 result_code FAIL NOAUTH; v3 403 NO_AUTH)",
    "bad_signature": "the next API answer's signature does not verify",
    "unsigned": "the next API answer carries no signature",
    "user_paying": "the next barcode payment answers USERPAYING, and is paid at the `body`-th query (default 2)",
    "drop_notify": "the next notification is lost (then retried on the schedule, if retries are on)",
    "delay_notify": "the next notification is sent after `seconds` (then retried as usual)",
}
_API_ACTIONS = frozenset({"refuse", "bad_signature", "unsigned"})
_NOTIFY_ACTIONS = frozenset({"drop_notify", "delay_notify"})
GENUINE_MODES = frozenset({"normal", "replay"})
OTHER_APP_ID = "wx00000000000000ff"
_SCENES = {"APP": "app", "MWEB": "h5", "JSAPI": "jsapi", "NATIVE": "native", "MICROPAY": "barcode"}
_STATE_TEXT = {"SUCCESS": "支付成功", "NOTPAY": "未支付", "CLOSED": "已关闭", "REVOKED": "已撤销",
               "USERPAYING": "用户支付中", "PAYERROR": "支付失败", "REFUND": "转入退款"}


@dataclass
class FakeOrder:
    out_trade_no: str
    merchant: WechatMerchant
    trade_type: str  # APP | MWEB | JSAPI | NATIVE | MICROPAY
    amount_fen: int
    description: str
    notify_url: str | None
    sign_type: str  # v2: what the order was signed with (its notification is too)
    prepay_id: str
    created_at: datetime
    openid: str | None = None
    state: str = "NOTPAY"
    transaction_id: str | None = None
    paid_at: datetime | None = None
    # barcode: the USERPAYING answers still to give, and how it ends
    paying_queries: int = 0
    paying_outcome: str = "paid"
    refunded_fen: int = 0

    def pay(self, payer: str) -> None:
        self.state = "SUCCESS"
        self.paid_at = datetime.now(CHINA).replace(microsecond=0)
        self.transaction_id = self.transaction_id or _transaction_id()
        self.openid = self.openid or payer


@dataclass
class FakeRefund:
    out_refund_no: str
    order: FakeOrder
    refund_id: str
    amount_fen: int
    created_at: datetime
    state: str = "PROCESSING"  # SUCCESS at the first query (WeChat refunds take a moment)
    succeeded_at: datetime | None = None


@dataclass
class Sent:
    status: int
    body: str

    def ok(self, api: GatewayApi) -> bool:
        if api is GatewayApi.wechat_v3:
            return 200 <= self.status < 300
        return self.status == 200 and re.search(r"<return_code>\s*(<!\[CDATA\[)?SUCCESS", self.body) is not None


@dataclass
class FakeWechat:
    """Everything the fake holds."""

    settings: WechatSettings
    merchants: tuple[WechatMerchant, ...]
    platform_key: rsa.RSAPrivateKey | None
    orders: dict[str, FakeOrder] = field(default_factory=dict)
    by_prepay: dict[str, FakeOrder] = field(default_factory=dict)
    refunds: dict[str, FakeRefund] = field(default_factory=dict)
    codes: dict[str, tuple[str, str]] = field(default_factory=dict)  # oauth code -> (app id, openid)
    used_codes: set[str] = field(default_factory=set)
    bills: dict[str, bytes] = field(default_factory=dict)
    barcode_next: list[tuple[int, str]] = field(default_factory=list)
    # Scripted actions waiting for what they name: the next API call, the next notification.
    api_next: list[Script] = field(default_factory=list)
    notify_next: list[Script] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    retries: bool = True
    retry_scale: float = 1.0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def stash(self, script: Script | None) -> None:
        """Keep a scripted action for what it names, whichever request took it."""
        if script is None:
            return
        if script.action in _API_ACTIONS:
            self.api_next.append(script)
        elif script.action in _NOTIFY_ACTIONS:
            self.notify_next.append(script)
        elif script.action == "user_paying":
            queries = script.body if isinstance(script.body, int) and not isinstance(script.body, bool) else 2
            self.barcode_next.append((max(queries, 1), "paid"))

    def order_json(self, order: FakeOrder) -> dict[str, Any]:
        return {
            "out_trade_no": order.out_trade_no, "amount_fen": order.amount_fen, "state": _STATES[order.state],
            "trade_status": order.state, "scene": _SCENES[order.trade_type], "merchant": order.merchant.name,
            "api": order.merchant.api.value, "app_id": order.merchant.app_id, "mch_id": order.merchant.mch_id,
            "notify_url": order.notify_url, "trade_no": order.transaction_id, "openid": order.openid,
            "paid_at": order.paid_at.isoformat() if order.paid_at else None, "refunded_fen": order.refunded_fen,
            "notifications": [sent for sent in self.attempts if sent["out_trade_no"] == order.out_trade_no][-20:],
        }

    def merchant(self, api: GatewayApi, mch_id: Any) -> WechatMerchant | None:
        return next((m for m in self.merchants if m.api is api and m.mch_id == mch_id), None)

    def public_key(self, merchant: WechatMerchant) -> rsa.RSAPublicKey:
        """The public half of the merchant's API key (what WeChat keeps from the merchant's certificate)."""
        return _public_key(merchant.private_key or "")


def _load(settings: WechatSettings) -> FakeWechat:
    path = settings.fake_merchants_file
    merchants: tuple[WechatMerchant, ...] = ()
    platform_key = None
    if path is None:
        log.warning("the WeChat fake has no merchants file (SHUIWU_PAYMENTS_CONFIG): it refuses every merchant")
    else:
        try:
            merchants = load_merchants(Path(path)).wechat
        except MerchantsInvalid as invalid:
            raise ValueError(f"the WeChat fake cannot read the merchants file: {invalid}") from None
        key_file = settings.fake_private_key_file or Path(path).parent / FAKE_WECHAT_PLATFORM_KEY
        if key_file.exists():
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            assert isinstance(key, rsa.RSAPrivateKey)
            platform_key = key
        elif any(m.api is GatewayApi.wechat_v3 for m in merchants):
            raise ValueError(f"the WeChat fake signs v3 answers with {key_file}, which is missing")
    return FakeWechat(settings, merchants, platform_key, retries=settings.fake_notify_retries,
                      retry_scale=settings.fake_notify_retry_scale)


def _transaction_id() -> str:
    return "4200" + datetime.now(CHINA).strftime("%Y%m%d") + f"{secrets.randbelow(10**16):016d}"


def _base_url(received: Received) -> str:
    return f"http://{received.headers.get('host', '127.0.0.1')}"


def _now() -> datetime:
    return datetime.now(CHINA).replace(microsecond=0)


def _nonce() -> str:
    return secrets.token_hex(16)


def _page(title: str, body: str, status: int = 200) -> Answer:
    document = (f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{html.escape(title)}</title></head><body>{body}</body></html>")
    return Answer(document, status, media_type="text/html; charset=utf-8")


def fake_app(settings: WechatSettings) -> Any:
    """The fake's ASGI app (``fake_gateway_app``'s Starlette)."""
    fake = _load(settings)

    # ------------------------------------------------------------------ v3 signing

    def v3_headers(merchant: WechatMerchant, body: str) -> dict[str, str]:
        assert fake.platform_key is not None
        return v3_signature_headers(merchant, body, fake.platform_key)

    def v3_answer(merchant: WechatMerchant, received: Received, body: Mapping[str, Any] | None,
                  status: int = 200) -> Answer:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":")) if body is not None else ""
        headers = v3_headers(merchant, text)
        if received.script is not None and received.script.action == "bad_signature":
            headers["Wechatpay-Nonce"] = _nonce()  # the signature no longer covers what is sent
        if received.script is not None and received.script.action == "unsigned":
            for name in ("Wechatpay-Signature", "Wechatpay-Signature-Type", "Wechatpay-Timestamp", "Wechatpay-Nonce"):
                del headers[name]
        return Answer(text.encode(), status, headers, media_type="application/json" if body is not None else None)

    def v3_error(status: int, code: str, message: str) -> Answer:
        return Answer({"code": code, "message": message}, status)

    def v3_authenticate(received: Received) -> WechatMerchant | Answer:
        matched = _AUTHORIZATION.match(received.headers.get("authorization", ""))
        if matched is None:
            return v3_error(401, "SIGN_ERROR", "Authorization 头缺失或格式错误")
        params = dict(re.findall(r'(\w+)="([^"]*)"', matched["params"]))
        merchant = fake.merchant(GatewayApi.wechat_v3, params.get("mchid"))
        if merchant is None:
            return v3_error(401, "SIGN_ERROR", f"商户号 {params.get('mchid')} 不存在")
        if params.get("serial_no", "").upper() != (merchant.cert_serial_no or "").upper():
            return v3_error(401, "SIGN_ERROR", "商户证书序列号有误")
        query = "&".join(f"{name}={value}" for name, value in received.query.items())
        message = "\n".join((received.method, received.path + (f"?{query}" if query else ""),
                             params.get("timestamp", ""), params.get("nonce_str", ""), received.text())) + "\n"
        try:
            fake.public_key(merchant).verify(base64.b64decode(params.get("signature", "")), message.encode(),
                                             padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            return v3_error(401, "SIGN_ERROR", "签名错误")
        if abs(time.time() - int(params.get("timestamp", "0") or 0)) > 300:
            return v3_error(401, "SIGN_ERROR", "签名已过期")
        return merchant

    def v3_route(handler: Callable[[Received, WechatMerchant, dict[str, Any]], Answer]) \
            -> Callable[[Received], Awaitable[Answer]]:
        async def route(received: Received) -> Answer:
            merchant = v3_authenticate(received)
            if isinstance(merchant, Answer):
                return merchant
            received = dataclasses.replace(received, script=fake.api_next.pop(0) if fake.api_next else None)
            try:
                body = received.json() if received.body else {}
            except ValueError:
                return v3_error(400, "PARAM_ERROR", "请求体不是 JSON")
            if not isinstance(body, dict):
                return v3_error(400, "PARAM_ERROR", "请求体不是 JSON 对象")
            if received.script is not None and received.script.action == "refuse":
                return v3_error(403, "NO_AUTH", "商户无权限 (scripted)")
            return handler(received, merchant, body)

        return route

    def v3_transaction(order: FakeOrder) -> dict[str, Any]:
        transaction: dict[str, Any] = {
            "appid": order.merchant.app_id, "mchid": order.merchant.mch_id, "out_trade_no": order.out_trade_no,
            "trade_type": order.trade_type, "trade_state": order.state,
            "trade_state_desc": _STATE_TEXT.get(order.state, order.state), "attach": "",
        }
        if order.state in ("SUCCESS", "REFUND"):
            transaction.update({
                "transaction_id": order.transaction_id, "bank_type": "OTHERS",
                "success_time": order.paid_at.isoformat() if order.paid_at else None,
                "payer": {"openid": order.openid},
                "amount": {"total": order.amount_fen, "payer_total": order.amount_fen, "currency": "CNY",
                           "payer_currency": "CNY"}})
        else:
            transaction["amount"] = {"total": order.amount_fen, "currency": "CNY"}
        return transaction

    def open_order(merchant: WechatMerchant, *, out_trade_no: str, trade_type: str, amount_fen: int,
                   description: str, notify_url: str | None, sign_type: str, openid: str | None) -> FakeOrder | str:
        """The order (a repeat of the same one is the same order), or why not."""
        existing = fake.orders.get(out_trade_no)
        if existing is not None:
            if existing.state in ("SUCCESS", "REFUND"):
                return "ORDERPAID"
            if existing.state != "NOTPAY" or existing.amount_fen != amount_fen or existing.merchant != merchant \
                    or existing.trade_type != trade_type:
                return "OUT_TRADE_NO_USED"
            return existing
        prepay_id = "wx" + datetime.now(CHINA).strftime("%d%H%M%S") + secrets.token_hex(12)
        order = FakeOrder(out_trade_no, merchant, trade_type, amount_fen, description, notify_url, sign_type, prepay_id,
                          _now(), openid=openid)
        fake.orders[out_trade_no] = order
        fake.by_prepay[prepay_id] = order
        return order

    def cashier_url(received: Received, order: FakeOrder) -> str:
        return f"{_base_url(received)}/cashier/{order.prepay_id}"

    def start_barcode(order: FakeOrder) -> str:
        """What a barcode payment does now: SUCCESS, USERPAYING or PAYERROR."""
        queries, outcome = fake.barcode_next.pop(0) if fake.barcode_next else (0, "paid")
        if queries == 0 and outcome == "declined":
            order.state = "PAYERROR"
        elif queries == 0 and outcome == "paid":
            order.pay(_openid(order.merchant.app_id, "payer"))
        else:
            order.state, order.paying_queries, order.paying_outcome = "USERPAYING", queries, outcome
        return order.state

    def on_query(order: FakeOrder) -> None:
        if order.state != "USERPAYING" or order.paying_outcome == "abandoned":
            return
        if order.paying_queries > 0:
            order.paying_queries -= 1
            return
        if order.paying_outcome == "paid":
            order.pay(_openid(order.merchant.app_id, "payer"))
        else:
            order.state = "PAYERROR"

    # ------------------------------------------------------------------ v3 endpoints

    def v3_pay(received: Received, merchant: WechatMerchant, body: dict[str, Any]) -> Answer:
        kind = received.path.rsplit("/", 1)[-1]
        trade_type = _V3_TRADE_TYPES.get(kind)
        if trade_type is None:
            return v3_error(404, "NOT_FOUND", "无此接口")
        amount = body.get("amount") or {}
        total = amount.get("total") if isinstance(amount, dict) else None
        payer: dict[str, Any] = body["payer"] if isinstance(body.get("payer"), dict) else {}
        missing = [name for name in ("appid", "mchid", "description", "out_trade_no") if not body.get(name)]
        if kind != "codepay" and not body.get("notify_url"):
            missing.append("notify_url")
        if missing:
            return v3_error(400, "PARAM_ERROR", f"缺少参数 {', '.join(missing)}")
        if body["appid"] != merchant.app_id or body["mchid"] != merchant.mch_id:
            return v3_error(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配")
        if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
            return v3_error(400, "PARAM_ERROR", "amount.total 应为正整数 (分)")
        if len(str(body["out_trade_no"])) > 32:
            return v3_error(400, "PARAM_ERROR", "out_trade_no 超过 32 位")
        if kind == "jsapi" and not payer.get("openid"):
            return v3_error(400, "PARAM_ERROR", "JSAPI 下单需要 payer.openid")
        if kind == "h5" and not (body.get("scene_info") or {}).get("h5_info"):
            return v3_error(400, "PARAM_ERROR", "H5 下单需要 scene_info.h5_info")
        if kind == "codepay" and not _AUTH_CODE.match(str(payer.get("auth_code", ""))):
            return v3_error(400, "AUTH_CODE_INVALID", "付款码无效, 请重新扫码")
        order = open_order(merchant, out_trade_no=str(body["out_trade_no"]), trade_type=trade_type, amount_fen=total,
                           description=str(body["description"]), notify_url=body.get("notify_url"), sign_type="RSA",
                           openid=payer.get("openid"))
        if order == "ORDERPAID":
            return v3_error(400, "ORDERPAID", "该订单已支付")
        if isinstance(order, str):
            return v3_error(400, "INVALID_REQUEST", "201 商户订单号重复")
        if kind == "codepay":
            state = start_barcode(order)
            if state == "USERPAYING":
                return v3_answer(merchant, received, {"code": "USERPAYING", "message": "需要用户输入支付密码"}, 202)
            if state == "PAYERROR":
                return v3_error(403, "NOT_ENOUGH", "用户余额不足")
            return v3_answer(merchant, received, v3_transaction(order))
        if kind == "native":
            return v3_answer(merchant, received, {"code_url": cashier_url(received, order)})
        if kind == "h5":
            return v3_answer(merchant, received, {"h5_url": cashier_url(received, order) + "?scene=h5"})
        return v3_answer(merchant, received, {"prepay_id": order.prepay_id})

    def v3_order(received: Received, merchant: WechatMerchant) -> FakeOrder | Answer:
        out_trade_no = received.path.split("/out-trade-no/", 1)[1].split("/", 1)[0]
        order = fake.orders.get(out_trade_no)
        if order is None or order.merchant != merchant:
            return v3_error(404, "ORDER_NOT_EXIST", "订单不存在")
        return order

    def v3_query(received: Received, merchant: WechatMerchant, body: dict[str, Any]) -> Answer:
        if received.query.get("mchid") != merchant.mch_id:
            return v3_error(400, "PARAM_ERROR", "mchid 与请求的商户不符")
        order = v3_order(received, merchant)
        if isinstance(order, Answer):
            return order
        on_query(order)
        return v3_answer(merchant, received, v3_transaction(order))

    def v3_close(received: Received, merchant: WechatMerchant, body: dict[str, Any]) -> Answer:
        order = v3_order(received, merchant)
        if isinstance(order, Answer):
            return order
        if order.state in ("SUCCESS", "REFUND"):
            return v3_error(400, "ORDERPAID", "订单已支付")
        order.state = "CLOSED"
        return v3_answer(merchant, received, None, 204)

    def v3_reverse(received: Received, merchant: WechatMerchant, body: dict[str, Any]) -> Answer:
        order = v3_order(received, merchant)
        if isinstance(order, Answer):
            return order
        order.state = "REVOKED"  # a paid one is refunded to the payer
        return v3_answer(merchant, received, {"appid": merchant.app_id, "mchid": merchant.mch_id,
                                              "out_trade_no": order.out_trade_no})

    def take_refund(merchant: WechatMerchant, out_trade_no: str, out_refund_no: str, amount_fen: Any,
                    total_fen: Any) -> FakeRefund | tuple[str, str]:
        existing = fake.refunds.get(out_refund_no)
        if existing is not None:
            return existing
        order = fake.orders.get(out_trade_no)
        if order is None or order.merchant != merchant:
            return "RESOURCE_NOT_EXISTS", "订单不存在"
        if order.state not in ("SUCCESS", "REFUND"):
            return "INVALID_REQUEST", "订单未支付, 不能退款"
        if not isinstance(amount_fen, int) or isinstance(amount_fen, bool) or amount_fen <= 0:
            return "PARAM_ERROR", "退款金额应为正整数 (分)"
        if total_fen != order.amount_fen:
            return "PARAM_ERROR", "订单金额与原订单不符"
        if order.refunded_fen + amount_fen > order.amount_fen:
            return "INVALID_REQUEST", "退款金额超过订单可退金额"
        order.refunded_fen += amount_fen
        order.state = "REFUND"
        refund = FakeRefund(out_refund_no, order, "5030" + datetime.now(CHINA).strftime("%Y%m%d") +
                            f"{secrets.randbelow(10**16):016d}", amount_fen, _now())
        fake.refunds[out_refund_no] = refund
        return refund

    def settle(refund: FakeRefund) -> None:
        if refund.state == "PROCESSING":
            refund.state, refund.succeeded_at = "SUCCESS", _now()

    def v3_refund_body(refund: FakeRefund) -> dict[str, Any]:
        return {"refund_id": refund.refund_id, "out_refund_no": refund.out_refund_no,
                "transaction_id": refund.order.transaction_id, "out_trade_no": refund.order.out_trade_no,
                "channel": "ORIGINAL", "user_received_account": "支付用户零钱", "status": refund.state,
                "create_time": refund.created_at.isoformat(),
                "success_time": refund.succeeded_at.isoformat() if refund.succeeded_at else None,
                "amount": {"total": refund.order.amount_fen, "refund": refund.amount_fen,
                           "payer_total": refund.order.amount_fen, "payer_refund": refund.amount_fen,
                           "currency": "CNY"}}

    def v3_refund(received: Received, merchant: WechatMerchant, body: dict[str, Any]) -> Answer:
        amount: dict[str, Any] = body["amount"] if isinstance(body.get("amount"), dict) else {}
        if not body.get("out_refund_no") or not body.get("out_trade_no"):
            return v3_error(400, "PARAM_ERROR", "缺少 out_refund_no 或 out_trade_no")
        refund = take_refund(merchant, str(body["out_trade_no"]), str(body["out_refund_no"]), amount.get("refund"),
                             amount.get("total"))
        if isinstance(refund, tuple):
            return v3_error(404 if refund[0] == "RESOURCE_NOT_EXISTS" else 400, *refund)
        return v3_answer(merchant, received, v3_refund_body(refund))

    def v3_refund_query(received: Received, merchant: WechatMerchant, body: dict[str, Any]) -> Answer:
        refund = fake.refunds.get(received.path.rsplit("/", 1)[-1])
        if refund is None or refund.order.merchant != merchant:
            return v3_error(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
        settle(refund)
        return v3_answer(merchant, received, v3_refund_body(refund))

    def bill_rows(merchant: WechatMerchant, day: date) -> list[dict[str, str]]:
        rows = []
        for order in fake.orders.values():
            if order.merchant == merchant and order.paid_at is not None and order.paid_at.date() == day:
                rows.append(bill_row(order, order.paid_at, "SUCCESS"))
        for refund in fake.refunds.values():
            if refund.order.merchant == merchant and refund.succeeded_at is not None \
                    and refund.succeeded_at.date() == day:
                rows.append({**bill_row(refund.order, refund.succeeded_at, "REFUND"), "应结订单金额": "0.00",
                             "微信退款单号": refund.refund_id, "商户退款单号": refund.out_refund_no,
                             "退款金额": fen_to_yuan(refund.amount_fen), "退款类型": "ORIGINAL", "退款状态": "SUCCESS",
                             "申请退款金额": fen_to_yuan(refund.amount_fen)})
        return sorted(rows, key=lambda row: row["交易时间"])

    def bill_row(order: FakeOrder, at: datetime, status: str) -> dict[str, str]:
        return {"交易时间": at.strftime("%Y-%m-%d %H:%M:%S"), "公众账号ID": order.merchant.app_id,
                "商户号": order.merchant.mch_id, "特约商户号": "0", "设备号": "", "微信订单号": order.transaction_id or "",
                "商户订单号": order.out_trade_no, "用户标识": order.openid or "", "交易类型": order.trade_type,
                "交易状态": status, "付款银行": "OTHERS", "货币种类": "CNY", "应结订单金额": fen_to_yuan(order.amount_fen),
                "代金券金额": "0.00", "微信退款单号": "0", "商户退款单号": "0", "退款金额": "0.00",
                "充值券退款金额": "0.00", "退款类型": "", "退款状态": "", "商品名称": order.description,
                "商户数据包": "", "手续费": "0.00", "费率": "0.60%", "订单金额": fen_to_yuan(order.amount_fen),
                "申请退款金额": "0.00", "费率备注": ""}

    def v3_tradebill(received: Received, merchant: WechatMerchant, body: dict[str, Any]) -> Answer:
        try:
            day = date.fromisoformat(received.query.get("bill_date", ""))
        except ValueError:
            return v3_error(400, "PARAM_ERROR", "bill_date 格式应为 yyyy-MM-DD")
        rows = bill_rows(merchant, day)
        if not rows:
            return v3_error(400, "NO_STATEMENT_EXIST", "账单文件不存在")
        raw = statement_text(rows).encode("utf-8")
        token = secrets.token_hex(16)
        fake.bills[token] = gzip.compress(raw) if received.query.get("tar_type") == "GZIP" else raw
        return v3_answer(merchant, received, {"hash_type": "SHA1", "hash_value": hashlib.sha1(raw).hexdigest(),
                                              "download_url": f"{_base_url(received)}/v3/billdownload/file?token={token}"})

    def v3_download(received: Received, merchant: WechatMerchant, body: dict[str, Any]) -> Answer:
        content = fake.bills.get(received.query.get("token", ""))
        if content is None:
            return v3_error(404, "RESOURCE_NOT_EXISTS", "账单不存在或已过期")
        return Answer(content, 200, media_type="application/octet-stream")

    # ------------------------------------------------------------------ v2 endpoints

    def v2_xml(fields: Mapping[str, Any]) -> Answer:
        return Answer(dict_to_xml(dict(fields)), 200, media_type="text/xml")

    def v2_fail(message: str) -> Answer:
        return v2_xml({"return_code": "FAIL", "return_msg": message})

    async def v2_route(received: Received) -> Answer:
        try:
            document = xmltodict.parse(received.body)
            fields = document["xml"]
            assert isinstance(fields, dict)
        except Exception:  # not XML, or not WeChat's
            return v2_fail("XML格式错误")
        merchant = fake.merchant(GatewayApi.wechat_v2, fields.get("mch_id"))
        if merchant is None or merchant.api_key is None:
            return v2_fail("mch_id参数格式错误")
        if fields.get("appid") != merchant.app_id:
            return v2_fail("appid和mch_id不匹配")
        sign_type = fields.get("sign_type") or "MD5"
        if sign_type not in ("MD5", HMAC_SHA256) or not signed_by(fields, merchant.api_key, sign_type):
            return v2_fail("签名错误")
        received = dataclasses.replace(received, script=fake.api_next.pop(0) if fake.api_next else None)
        if received.script is not None and received.script.action == "refuse":
            result: dict[str, Any] = {"result_code": "FAIL", "err_code": "NOAUTH", "err_code_des": "商户无此接口权限"}
        else:
            handler = v2_handlers[received.path]
            outcome = handler(received, merchant, fields, sign_type)
            if isinstance(outcome, Answer):
                return outcome
            result = outcome
        answer = {"return_code": "SUCCESS", "return_msg": "OK", "appid": merchant.app_id, "mch_id": merchant.mch_id,
                  "nonce_str": _nonce(), **result}
        answer["sign"] = sign(answer, merchant.api_key, sign_type)
        if received.script is not None and received.script.action == "bad_signature":
            answer["sign"] = sign(answer, "0" * 32, sign_type)
        if received.script is not None and received.script.action == "unsigned":
            del answer["sign"]
        return v2_xml(answer)

    def v2_refusal(code: str, message: str) -> dict[str, Any]:
        return {"result_code": "FAIL", "err_code": code, "err_code_des": message}

    def v2_unifiedorder(received: Received, merchant: WechatMerchant, fields: dict[str, Any],
                        sign_type: str) -> dict[str, Any]:
        trade_type = fields.get("trade_type")
        missing = [name for name in ("body", "out_trade_no", "total_fee", "spbill_create_ip", "notify_url",
                                     "trade_type") if not fields.get(name)]
        if missing:
            return v2_refusal("PARAM_ERROR", f"缺少参数 {', '.join(missing)}")
        if trade_type not in _V2_TRADE_TYPES:
            return v2_refusal("PARAM_ERROR", "trade_type 无效")
        if not str(fields["total_fee"]).isdigit() or int(fields["total_fee"]) <= 0:
            return v2_refusal("PARAM_ERROR", "total_fee 应为正整数 (分)")
        if trade_type == "JSAPI" and not fields.get("openid"):
            return v2_refusal("PARAM_ERROR", "JSAPI 支付必须传 openid")
        order = open_order(merchant, out_trade_no=fields["out_trade_no"], trade_type=trade_type,
                           amount_fen=int(fields["total_fee"]), description=fields["body"],
                           notify_url=fields["notify_url"], sign_type=sign_type, openid=fields.get("openid"))
        if order == "ORDERPAID":
            return v2_refusal("ORDERPAID", "该订单已支付")
        if isinstance(order, str):
            return v2_refusal("INVALID_REQUEST", "201 商户订单号重复")
        result = {"result_code": "SUCCESS", "trade_type": trade_type, "prepay_id": order.prepay_id}
        if trade_type == "NATIVE":
            result["code_url"] = cashier_url(received, order)
        if trade_type == "MWEB":
            result["mweb_url"] = cashier_url(received, order) + "?scene=h5"
        return result

    def v2_trade(order: FakeOrder) -> dict[str, Any]:
        fields: dict[str, Any] = {"result_code": "SUCCESS", "out_trade_no": order.out_trade_no,
                                  "trade_state": order.state, "trade_state_desc": _STATE_TEXT.get(order.state, ""),
                                  "total_fee": order.amount_fen, "fee_type": "CNY", "trade_type": order.trade_type}
        if order.state in ("SUCCESS", "REFUND"):
            fields.update({"transaction_id": order.transaction_id, "openid": order.openid, "bank_type": "OTHERS",
                           "cash_fee": order.amount_fen, "is_subscribe": "N",
                           "time_end": order.paid_at.strftime("%Y%m%d%H%M%S") if order.paid_at else ""})
        return fields

    def v2_micropay(received: Received, merchant: WechatMerchant, fields: dict[str, Any],
                    sign_type: str) -> dict[str, Any]:
        missing = [name for name in ("body", "out_trade_no", "total_fee", "spbill_create_ip", "auth_code")
                   if not fields.get(name)]
        if missing:
            return v2_refusal("PARAM_ERROR", f"缺少参数 {', '.join(missing)}")
        if not _AUTH_CODE.match(str(fields["auth_code"])):
            return v2_refusal("AUTH_CODE_INVALID", "付款码无效, 请重新扫码")
        if not str(fields["total_fee"]).isdigit() or int(fields["total_fee"]) <= 0:
            return v2_refusal("PARAM_ERROR", "total_fee 应为正整数 (分)")
        order = open_order(merchant, out_trade_no=fields["out_trade_no"], trade_type="MICROPAY",
                           amount_fen=int(fields["total_fee"]), description=fields["body"], notify_url=None,
                           sign_type=sign_type, openid=None)
        if order == "ORDERPAID":
            return v2_refusal("ORDERPAID", "该订单已支付")
        if isinstance(order, str):
            return v2_refusal("OUT_TRADE_NO_USED", "商户订单号重复")
        state = start_barcode(order)
        if state == "USERPAYING":
            return v2_refusal("USERPAYING", "需要用户输入支付密码")
        if state == "PAYERROR":
            return v2_refusal("NOTENOUGH", "用户余额不足")
        return v2_trade(order)

    def v2_order(merchant: WechatMerchant, fields: dict[str, Any]) -> FakeOrder | None:
        order = fake.orders.get(fields.get("out_trade_no") or "")
        return order if order is not None and order.merchant == merchant else None

    def v2_orderquery(received: Received, merchant: WechatMerchant, fields: dict[str, Any],
                      sign_type: str) -> dict[str, Any]:
        order = v2_order(merchant, fields)
        if order is None:
            return v2_refusal("ORDERNOTEXIST", "此交易订单号不存在")
        on_query(order)
        return v2_trade(order)

    def v2_closeorder(received: Received, merchant: WechatMerchant, fields: dict[str, Any],
                      sign_type: str) -> dict[str, Any]:
        order = v2_order(merchant, fields)
        if order is None:
            return v2_refusal("ORDERNOTEXIST", "此交易订单号不存在")
        if order.state in ("SUCCESS", "REFUND"):
            return v2_refusal("ORDERPAID", "订单已支付")
        if order.state == "CLOSED":
            return v2_refusal("ORDERCLOSED", "订单已关闭")
        order.state = "CLOSED"
        return {"result_code": "SUCCESS"}

    def v2_reverse(received: Received, merchant: WechatMerchant, fields: dict[str, Any],
                   sign_type: str) -> dict[str, Any]:
        order = v2_order(merchant, fields)
        if order is None:
            return v2_refusal("ORDERNOTEXIST", "此交易订单号不存在")
        order.state = "REVOKED"
        return {"result_code": "SUCCESS", "recall": "N"}

    def v2_refund(received: Received, merchant: WechatMerchant, fields: dict[str, Any],
                  sign_type: str) -> dict[str, Any]:
        amount = int(fields["refund_fee"]) if str(fields.get("refund_fee", "")).isdigit() else None
        total = int(fields["total_fee"]) if str(fields.get("total_fee", "")).isdigit() else None
        refund = take_refund(merchant, fields.get("out_trade_no") or "", fields.get("out_refund_no") or "", amount,
                             total)
        if isinstance(refund, tuple):
            return v2_refusal("ORDERNOTEXIST" if refund[0] == "RESOURCE_NOT_EXISTS" else refund[0], refund[1])
        return {"result_code": "SUCCESS", "transaction_id": refund.order.transaction_id,
                "out_trade_no": refund.order.out_trade_no, "out_refund_no": refund.out_refund_no,
                "refund_id": refund.refund_id, "refund_fee": refund.amount_fen, "total_fee": refund.order.amount_fen,
                "cash_fee": refund.order.amount_fen}

    def v2_refundquery(received: Received, merchant: WechatMerchant, fields: dict[str, Any],
                       sign_type: str) -> dict[str, Any]:
        refund = fake.refunds.get(fields.get("out_refund_no") or "")
        if refund is None or refund.order.merchant != merchant:
            return v2_refusal("REFUNDNOTEXIST", "退款订单查询失败")
        settle(refund)
        return {"result_code": "SUCCESS", "transaction_id": refund.order.transaction_id,
                "out_trade_no": refund.order.out_trade_no, "total_fee": refund.order.amount_fen,
                "cash_fee": refund.order.amount_fen, "refund_count": 1, "out_refund_no_0": refund.out_refund_no,
                "refund_id_0": refund.refund_id, "refund_channel_0": "ORIGINAL", "refund_fee_0": refund.amount_fen,
                "refund_status_0": refund.state,
                "refund_success_time_0": refund.succeeded_at.strftime("%Y-%m-%d %H:%M:%S")
                if refund.succeeded_at else ""}

    def v2_downloadbill(received: Received, merchant: WechatMerchant, fields: dict[str, Any],
                        sign_type: str) -> dict[str, Any] | Answer:
        try:
            day = datetime.strptime(fields.get("bill_date") or "", "%Y%m%d").date()
        except ValueError:
            return v2_xml({"return_code": "FAIL", "return_msg": "invalid bill_date", "error_code": "20001"})
        rows = bill_rows(merchant, day)
        if not rows:
            return v2_xml({"return_code": "FAIL", "return_msg": "No Bill Exist", "error_code": "20002"})
        return Answer(statement_text(rows), 200, media_type="text/plain; charset=utf-8")

    v2_handlers: dict[str, Callable[..., dict[str, Any] | Answer]] = {
        "/pay/unifiedorder": v2_unifiedorder, "/pay/micropay": v2_micropay, "/pay/orderquery": v2_orderquery,
        "/pay/closeorder": v2_closeorder, "/secapi/pay/reverse": v2_reverse, "/secapi/pay/refund": v2_refund,
        "/pay/refundquery": v2_refundquery, "/pay/downloadbill": v2_downloadbill,
    }

    # ------------------------------------------------------------------ notifications

    def notification(order: FakeOrder, mode: str, amount_fen: int | None = None) -> tuple[dict[str, str], bytes]:
        trade = PaidTrade(order.out_trade_no, order.amount_fen, order.transaction_id or _transaction_id(),
                          order.trade_type, order.openid, order.paid_at or _now())
        return signed_notification(order.merchant, trade, platform_key=fake.platform_key, mode=mode,
                                   amount_fen=amount_fen, sign_type=order.sign_type)

    async def post(order: FakeOrder, headers: Mapping[str, str], body: bytes, attempt: int) -> Sent:
        assert order.notify_url is not None
        try:
            async with httpx.AsyncClient(timeout=NOTIFY_TIMEOUT_S) as client:
                response = await client.post(order.notify_url, content=body, headers=dict(headers))
            sent = Sent(response.status_code, response.text[:2000])
        except httpx.HTTPError as error:
            sent = Sent(0, f"{type(error).__name__}: {error}")
        fake.attempts.append({"out_trade_no": order.out_trade_no, "attempt": attempt, "at": _now().isoformat(),
                              "status": sent.status, "body": sent.body})
        return sent

    async def retry(order: FakeOrder, headers: Mapping[str, str], body: bytes, *, after: int) -> None:
        """Send again on WeChat's schedule, after attempt ``after``, until answered success
        (or retries are turned off)."""
        for attempt in range(after + 1, len(RETRY_SCHEDULE_S) + 2):
            await asyncio.sleep(RETRY_SCHEDULE_S[attempt - 2] * fake.retry_scale)
            if not fake.retries:
                return
            if (await post(order, headers, body, attempt)).ok(order.merchant.api):
                return

    async def delayed(order: FakeOrder, headers: Mapping[str, str], body: bytes, seconds: float, retry_: bool) -> None:
        await asyncio.sleep(seconds)
        if not (await post(order, headers, body, 1)).ok(order.merchant.api) and retry_ and fake.retries:
            await retry(order, headers, body, after=1)

    def in_background(work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        fake.tasks.add(task)
        task.add_done_callback(fake.tasks.discard)

    async def pay_and_notify(order: FakeOrder, mode: str = "normal", times: int = 1, *, retry_: bool = True,
                             amount_fen: int | None = None) -> list[Sent]:
        """Pay the order (genuine modes; a closed one too: the payer's money was taken as it
        closed) and send its notification(s) as the mode and the notify scripts say."""
        genuine = mode in GENUINE_MODES
        if genuine and order.state not in ("SUCCESS", "REFUND"):
            order.pay(order.openid or _openid(order.merchant.app_id, "payer"))
        if order.notify_url is None:
            return []  # barcode payments are not notified
        headers, body = notification(order, mode, amount_fen)
        retry_ = retry_ and genuine
        scripted = fake.notify_next.pop(0) if fake.notify_next else None
        if scripted is not None and scripted.action == "drop_notify":
            fake.attempts.append({"out_trade_no": order.out_trade_no, "attempt": 1, "at": _now().isoformat(),
                                  "status": None, "body": "dropped"})
            if retry_ and fake.retries:
                in_background(retry(order, headers, body, after=1))
            return []
        if scripted is not None and scripted.action == "delay_notify":
            in_background(delayed(order, headers, body, scripted.seconds, retry_))
            return []
        if mode == "replay":
            sent = list(await asyncio.gather(*(post(order, headers, body, 1) for _ in range(times))))
        else:
            sent = [await post(order, headers, body, attempt) for attempt in range(1, times + 1)]
        if retry_ and fake.retries and not any(one.ok(order.merchant.api) for one in sent):
            in_background(retry(order, headers, body, after=len(sent) if mode != "replay" else 1))
        return sent

    # ------------------------------------------------------------------ control

    async def control_pay(received: Received) -> Answer:
        asked = pay_request(received, modes=PAY_MODES, default_retry=fake.retries)
        if isinstance(asked, Answer):
            return asked
        mode = asked.mode
        order = fake.orders.get(asked.out_trade_no) if asked.out_trade_no is not None else None
        if order is None:
            return Answer({"error": f"no order {asked.out_trade_no!r} here"}, 404)
        sent = await pay_and_notify(order, mode, asked.times, retry_=asked.retry, amount_fen=asked.amount_fen)
        return Answer({"out_trade_no": order.out_trade_no, "mode": mode,
                       "sent": [{"status": one.status, "body": one.body} for one in sent],
                       "order": fake.order_json(order)})

    async def control_orders(received: Received) -> Answer:
        return Answer({"orders": [fake.order_json(order) for order in fake.orders.values()]})

    async def control_notifications(received: Received) -> Answer:
        return Answer({"notifications": fake.attempts[-1000:]})

    async def control_barcode(received: Received) -> Answer:
        try:
            order = received.json()
            queries, outcome = order.get("queries", 3), order.get("outcome", "paid")
        except (ValueError, AttributeError):
            return Answer({"error": 'the body must be {"queries": N, "outcome": "paid"}'}, 400)
        if not isinstance(queries, int) or not 0 <= queries <= 1000 or outcome not in BARCODE_OUTCOMES:
            return Answer({"error": f"queries: 0-1000; outcome: one of {list(BARCODE_OUTCOMES)}"}, 400)
        fake.barcode_next.append((queries, outcome))
        return Answer({"waiting": [{"queries": q, "outcome": o} for q, o in fake.barcode_next]})

    async def control_settings(received: Received) -> Answer:
        try:
            asked = received.json() if received.body else {}
            enabled = asked.get("notify_retries", fake.retries)
            scale = asked.get("notify_retry_scale", fake.retry_scale)
        except (ValueError, AttributeError):
            return Answer({"error": 'the body must be {"notify_retries": true, "notify_retry_scale": 0.001}'}, 400)
        if not isinstance(enabled, bool) or not isinstance(scale, int | float) or not 0 < scale <= 1:
            return Answer({"error": "notify_retries: true or false; notify_retry_scale: a number in (0, 1]"}, 400)
        fake.retries, fake.retry_scale = enabled, float(scale)
        return Answer({"notify_retries": fake.retries, "notify_retry_scale": fake.retry_scale,
                       "retry_schedule_s": list(RETRY_SCHEDULE_S)})

    # ------------------------------------------------------------------ web authorization

    async def authorize(received: Received) -> Answer:
        app_id, redirect_uri = received.query.get("appid", ""), received.query.get("redirect_uri", "")
        if not any(m.app_id == app_id for m in fake.merchants):
            return _page("错误", "<p>appid 参数错误 (10003)</p>", 400)
        if received.query.get("scope") not in ("snsapi_base", "snsapi_userinfo") \
                or received.query.get("response_type") != "code":
            return _page("错误", "<p>scope 参数错误或没有 scope 权限 (10005)</p>", 400)
        if urlsplit(redirect_uri).scheme not in ("http", "https"):
            return _page("错误", "<p>redirect_uri 参数错误 (10003)</p>", 400)
        code = secrets.token_hex(16)
        fake.codes[code] = (app_id, _openid(app_id, received.query.get("payer", "payer")))
        back = redirect_uri + ("&" if "?" in redirect_uri else "?") + urlencode(
            {"code": code, "state": received.query.get("state", "")})
        return Answer(b"", 302, {"Location": back})

    async def access_token(received: Received) -> Answer:
        query = received.query
        merchant = next((m for m in fake.merchants if m.app_id == query.get("appid")), None)
        if merchant is None:
            return Answer({"errcode": 40013, "errmsg": "invalid appid"})
        if not merchant.app_secret or query.get("secret") != merchant.app_secret.strip():
            return Answer({"errcode": 40125, "errmsg": "invalid appsecret"})
        if query.get("grant_type") != "authorization_code":
            return Answer({"errcode": 40002, "errmsg": "invalid grant_type"})
        code = query.get("code", "")
        if code in fake.used_codes:
            return Answer({"errcode": 40163, "errmsg": "code been used"})
        issued = fake.codes.pop(code, None)
        if issued is None or issued[0] != merchant.app_id:
            return Answer({"errcode": 40029, "errmsg": "invalid code"})
        fake.used_codes.add(code)
        return Answer({"access_token": secrets.token_urlsafe(32), "expires_in": 7200,
                       "refresh_token": secrets.token_urlsafe(32), "openid": issued[1], "scope": "snsapi_base"})

    # ------------------------------------------------------------------ cashier

    def cashier(order: FakeOrder, redirect_url: str, note: str = "") -> Answer:
        prepay = html.escape(order.prepay_id)
        target = html.escape(redirect_url, quote=True)
        if order.state != "NOTPAY":
            return _page("微信支付", f"<h1>订单{html.escape(_STATE_TEXT.get(order.state, order.state))}</h1>")
        return _page("微信支付", f"""
<h1>微信支付</h1>{note}
<p class="merchant">收款方: {html.escape(order.merchant.name)} ({html.escape(order.merchant.mch_id)})</p>
<p class="subject">{html.escape(order.description)}</p>
<p class="amount">¥{fen_to_yuan(order.amount_fen)}</p>
<form method="post" action="/cashier/{prepay}/pay"><input type="hidden" name="redirect_url" value="{target}">
<button type="submit" id="pay">付款</button></form>
<form method="post" action="/cashier/{prepay}/cancel"><input type="hidden" name="redirect_url" value="{target}">
<button type="submit" id="cancel">取消</button></form>""")

    def cashier_order(received: Received) -> FakeOrder | None:
        parts = received.path.split("/")
        return fake.by_prepay.get(parts[2]) if len(parts) > 2 else None

    async def cashier_page(received: Received) -> Answer:
        order = cashier_order(received)
        if order is None:
            return _page("微信支付", "<p>订单不存在或已失效</p>", 404)
        return cashier(order, received.query.get("redirect_url", ""))

    async def cashier_action(received: Received) -> Answer:
        order = cashier_order(received)
        if order is None:
            return _page("微信支付", "<p>订单不存在或已失效</p>", 404)
        form = dict(parse_qsl(received.text()))
        redirect_url = form.get("redirect_url", "")
        if received.path.endswith("/pay"):
            if order.state != "NOTPAY":
                return cashier(order, redirect_url)
            await pay_and_notify(order)
            result = "支付成功"
        else:
            result = "已取消支付"  # the order stays unpaid until it expires or is closed
        if redirect_url:
            return Answer(b"", 303, {"Location": redirect_url})
        return _page("微信支付", f'<h1 id="result">{result}</h1>')

    async def jsapi_bridge(received: Received) -> Answer:
        """WeixinJSBridge's getBrandWCPayRequest, for a browser outside WeChat: the JSAPI
        parameters arrive as the query; a bad paySign fails as the bridge does."""
        params = dict(received.query)
        redirect_url = params.pop("redirect_url", "")
        pay_sign = params.pop("paySign", "")
        order = fake.by_prepay.get(params.get("package", "").removeprefix("prepay_id="))
        if order is None or order.merchant.app_id != params.get("appId"):
            return _page("微信支付", "<p>get_brand_wcpay_request:fail (订单不存在)</p>", 400)
        merchant = order.merchant
        if merchant.api is GatewayApi.wechat_v3:
            message = "\n".join(params.get(name, "") for name in ("appId", "timeStamp", "nonceStr", "package")) + "\n"
            try:
                fake.public_key(merchant).verify(base64.b64decode(pay_sign), message.encode(), padding.PKCS1v15(),
                                                 hashes.SHA256())
                valid = params.get("signType") == "RSA"
            except (InvalidSignature, ValueError):
                valid = False
        else:
            assert merchant.api_key is not None
            valid = signed_by({**params, "sign": pay_sign}, merchant.api_key, params.get("signType", "MD5"))
        if not valid:
            return _page("微信支付", "<p>get_brand_wcpay_request:fail (支付验证签名失败)</p>", 400)
        return cashier(order, redirect_url, '<p class="bridge">WeixinJSBridge (本地模拟)</p>')

    def v3(path: str, method: str, handler: Callable[[Received, WechatMerchant, dict[str, Any]], Answer]) -> FakeRoute:
        return FakeRoute(method, path, v3_route(handler))

    routes = [
        *(FakeRoute("POST", path, v2_route) for path in v2_handlers),
        v3("/v3/pay/transactions/{kind}", "POST", v3_pay),
        v3("/v3/pay/transactions/out-trade-no/{out_trade_no}", "GET", v3_query),
        v3("/v3/pay/transactions/out-trade-no/{out_trade_no}/close", "POST", v3_close),
        v3("/v3/pay/transactions/out-trade-no/{out_trade_no}/reverse", "POST", v3_reverse),
        v3("/v3/refund/domestic/refunds", "POST", v3_refund),
        v3("/v3/refund/domestic/refunds/{out_refund_no}", "GET", v3_refund_query),
        v3("/v3/bill/tradebill", "GET", v3_tradebill),
        v3("/v3/billdownload/file", "GET", v3_download),
        FakeRoute("GET", "/connect/oauth2/authorize", authorize),
        FakeRoute("GET", "/sns/oauth2/access_token", access_token),
        FakeRoute("GET", "/cashier/{prepay_id}", cashier_page),
        FakeRoute("POST", "/cashier/{prepay_id}/pay", cashier_action),
        FakeRoute("POST", "/cashier/{prepay_id}/cancel", cashier_action),
        FakeRoute("GET", "/jsapi", jsapi_bridge),
        FakeRoute("POST", "/_control/pay", control_pay),
        FakeRoute("GET", "/_control/orders", control_orders),
        FakeRoute("GET", "/_control/notifications", control_notifications),
        FakeRoute("POST", "/_control/barcode", control_barcode),
        FakeRoute("POST", "/_control/settings", control_settings),
    ]
    return fake_gateway_app("wechat", [FakeRoute(route.method, route.path, stashing(fake, route.handler))
                                       for route in routes], actions=ACTIONS)


def stashing(fake: FakeWechat, handler: Callable[[Received], Awaitable[Answer]]) -> Callable[[Received], Awaitable[Answer]]:
    """``handler`` after keeping the request's scripted action for what it names."""
    async def route(received: Received) -> Answer:
        fake.stash(received.script)
        return await handler(dataclasses.replace(received, script=None))

    return route


@dataclass(frozen=True, slots=True)
class PaidTrade:
    """What a payment notification says."""

    out_trade_no: str
    amount_fen: int
    transaction_id: str
    trade_type: str  # JSAPI | NATIVE | APP | MWEB
    openid: str | None
    paid_at: datetime


def v3_signature_headers(merchant: WechatMerchant, body: str, key: rsa.RSAPrivateKey) -> dict[str, str]:
    """The ``Wechatpay-*`` headers signing ``body`` (an answer or a notification) with ``key``."""
    timestamp, nonce = str(int(time.time())), _nonce()
    signature = key.sign(f"{timestamp}\n{nonce}\n{body}\n".encode(), padding.PKCS1v15(), hashes.SHA256())
    return {"Wechatpay-Timestamp": timestamp, "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": base64.b64encode(signature).decode(),
            "Wechatpay-Serial": merchant.platform_public_key_id or "",
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048", "Request-ID": str(uuid.uuid4())}


def signed_notification(merchant: WechatMerchant, trade: PaidTrade, *, platform_key: rsa.RSAPrivateKey | None = None,
                        mode: str = "normal", amount_fen: int | None = None,
                        sign_type: str | None = None) -> tuple[dict[str, str], bytes]:
    """The headers and body WeChat Pay posts to the notify URL for a paid trade, signed as
    it signs them: v2 XML signed with the merchant's API key (``sign_type``: the order's,
    default the merchant's); v3 JSON whose resource is AES-GCM encrypted with the API v3
    key, signed with ``platform_key`` (WeChat Pay's private key: the test merchants'
    ``fake_wechat_platform_private.pem``). The fake sends these; a bench or test may build
    them directly. ``mode`` (the control API's):

    - ``normal`` / ``replay``: the genuine notification;
    - ``tamper_amount``: the genuine one whose amount is changed after signing
      (``amount_fen``, default ×100): its signature no longer verifies;
    - ``forge_signature``: signed with a key that is not WeChat Pay's (v2: another API key);
    - ``other_app``: genuinely signed, for another app id (:data:`OTHER_APP_ID`);
    - ``wrong_amount``: genuinely signed, with another amount (``amount_fen``, default 1 fen less).
    """
    signed_amount = trade.amount_fen
    if mode == "wrong_amount":
        signed_amount = amount_fen if amount_fen is not None else trade.amount_fen - 1 or trade.amount_fen + 1
    app_id = OTHER_APP_ID if mode == "other_app" else merchant.app_id
    headers, body = _notification(merchant, trade, app_id, signed_amount, platform_key=platform_key,
                                  forged=mode == "forge_signature", sign_type=sign_type or merchant.sign_type)
    if mode == "tamper_amount":  # the same signature over a body that now says another amount
        _, body = _notification(merchant, trade, app_id, amount_fen if amount_fen is not None else trade.amount_fen * 100,
                                platform_key=platform_key, forged=False, sign_type=sign_type or merchant.sign_type,
                                signature_of=body)
    return headers, body


def _notification(merchant: WechatMerchant, trade: PaidTrade, app_id: str, amount: int, *,
                  platform_key: rsa.RSAPrivateKey | None, forged: bool, sign_type: str,
                  signature_of: bytes | None = None) -> tuple[dict[str, str], bytes]:
    if merchant.api is GatewayApi.wechat_v2:
        assert merchant.api_key is not None
        fields: dict[str, Any] = {
            "appid": app_id, "mch_id": merchant.mch_id, "nonce_str": _nonce(), "result_code": "SUCCESS",
            "return_code": "SUCCESS", "openid": trade.openid or "", "is_subscribe": "N", "trade_type": trade.trade_type,
            "bank_type": "OTHERS", "total_fee": amount, "fee_type": "CNY", "cash_fee": amount,
            "transaction_id": trade.transaction_id, "out_trade_no": trade.out_trade_no,
            "time_end": trade.paid_at.astimezone(CHINA).strftime("%Y%m%d%H%M%S")}
        key = merchant.api_key if not forged else secrets.token_hex(16)
        signature = sign(fields, key, sign_type)
        if signature_of is not None:  # keep the earlier body's sign (and nonce): changed after signing
            earlier = xmltodict.parse(signature_of)["xml"]
            fields["nonce_str"], signature = earlier["nonce_str"], earlier["sign"]
        return {"Content-Type": "text/xml"}, dict_to_xml(fields, signature).encode()
    assert merchant.api_v3_key is not None and platform_key is not None
    transaction = {
        "appid": app_id, "mchid": merchant.mch_id, "out_trade_no": trade.out_trade_no,
        "transaction_id": trade.transaction_id, "trade_type": trade.trade_type, "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功", "bank_type": "OTHERS", "attach": "",
        "success_time": trade.paid_at.astimezone(CHINA).isoformat(), "payer": {"openid": trade.openid},
        "amount": {"total": amount, "payer_total": amount, "currency": "CNY", "payer_currency": "CNY"}}
    nonce = secrets.token_hex(6)
    ciphertext = AESGCM(merchant.api_v3_key.encode()).encrypt(
        nonce.encode(), json.dumps(transaction, ensure_ascii=False, separators=(",", ":")).encode(), b"transaction")
    envelope = {"id": str(uuid.uuid4()), "create_time": _now().isoformat(), "resource_type": "encrypt-resource",
                "event_type": "TRANSACTION.SUCCESS", "summary": "支付成功",
                "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                             "ciphertext": base64.b64encode(ciphertext).decode(), "associated_data": "transaction",
                             "nonce": nonce}}
    text = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))
    key_used = _forger_key() if forged else platform_key
    return {"Content-Type": "application/json", **v3_signature_headers(merchant, text, key_used)}, text.encode()


@functools.cache
def _public_key(private_pem: str) -> rsa.RSAPublicKey:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key.public_key()


@functools.cache
def _forger_key() -> rsa.RSAPrivateKey:
    """A key that is not WeChat Pay's (forged notifications are signed with it)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _openid(app_id: str, payer: str) -> str:
    """The payer's openid under an app id: stable, different per app (as WeChat's)."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(f"{app_id}:{payer}".encode()).digest()).decode()
    return "o" + digest[:27]


def jsapi_url(fake_url: str, params: Mapping[str, str], *, redirect_url: str = "") -> str:
    """Where a page outside WeChat sends the browser to "invoke" WeixinJSBridge with the
    JSAPI parameters of an order (the fake's stand-in)."""
    query = urlencode({**params, **({"redirect_url": redirect_url} if redirect_url else {})}, quote_via=quote)
    return f"{fake_url.rstrip('/')}/jsapi?{query}"

