"""The local WeChat Pay (``shuiwu fake-gateway wechat``): API v2 and v3 and WeChat's web
authorization on one port, signing and verifying as WeChat does, with orders in memory.

It learns the merchants from the merchants file (``SHUIWU_PAYMENTS_CONFIG``, the file the
app reads: ``WechatSettings.merchants_file``) and signs as "WeChat Pay" with
``fake_wechat_platform_private.pem`` beside it (``testkeys.write_test_merchants``).

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
- **Cashier** (h5's ``mweb_url``, native's ``code_url``): ``/cashier/{prepay_id}`` shows
  the amount with 付款 and 取消; ``/jsapi`` stands in for WeixinJSBridge (verifies the
  JSAPI parameters' ``paySign``, then shows the cashier). Paying there sends the
  notification as ``/_control/pay`` does.

Notifications go to the order's ``notify_url``; one not answered success (v2: XML
``SUCCESS``; v3: a 2xx) is sent again on WeChat's schedule (:data:`RETRY_SCHEDULE_S`)
times ``fake_retry_scale``, unless retries are off.

The control API (besides the base's ``/_control/requests``, ``next``, ``reset``):

- ``POST /_control/pay`` ``{"out_trade_no", "mode", "times"}``: pays the order and sends
  its notification(s), answering ``{"out_trade_no", "state", "sent": [{"status",
  "body"}…]}``. Modes: ``normal`` (``times`` sends of the genuine notification, one after
  another), ``replay`` (``times`` copies of it at once), ``tamper_amount`` (correctly
  signed, amount + 1 fen: what a wrong amount looks like once the signature verifies),
  ``forge_signature`` (signed with a key that is not WeChat's; the order stays unpaid
  here). A scripted ``drop_notify`` (``POST /_control/next {"action": "drop_notify",
  "path": "/_control/pay"}``) pays without notifying; ``delay_notify`` (``seconds``)
  notifies later.
- ``GET /_control/orders``: what the fake holds; ``GET /_control/notifications``: every
  notification attempt (order, attempt, status, what our server replied).
- ``POST /_control/barcode`` ``{"queries": N, "outcome": "paid" | "declined" |
  "abandoned"}``: the next barcode payment answers USERPAYING, then its next N queries
  too, then ends as ``outcome`` (``abandoned``: paying until reversed);
  ``{"outcome": "declined", "queries": 0}`` declines it at once.
- ``POST /_control/retries`` ``{"enabled": bool, "scale": float}``: notification retries.
"""

from __future__ import annotations

import asyncio
import base64
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

from backend.gateways.http import Answer, FakeRoute, Received, fake_gateway_app
from backend.payments.online.merchants import MerchantsInvalid, WechatMerchant, load_merchants
from backend.payments.online.models import GatewayApi
from backend.payments.online.testkeys import FAKE_WECHAT_PLATFORM_KEY
from backend.payments.online.wechat import CHINA, WechatSettings, fen_to_yuan, statement_text
from backend.payments.online.wechat_v2 import HMAC_SHA256, sign, signed_by

log = logging.getLogger(__name__)

# WeChat Pay's notification retry schedule (seconds after the previous attempt).
RETRY_SCHEDULE_S = (15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600)
PAY_MODES = ("normal", "replay", "tamper_amount", "forge_signature")
BARCODE_OUTCOMES = ("paid", "declined", "abandoned")
_AUTH_CODE = re.compile(r"^1[0-5]\d{16}$")  # WeChat's payment codes: 18 digits starting 10-15
_AUTHORIZATION = re.compile(r'^WECHATPAY2-SHA256-RSA2048 (?P<params>.+)$')
_V2_TRADE_TYPES = frozenset({"JSAPI", "NATIVE", "APP", "MWEB"})
_V3_TRADE_TYPES = {"app": "APP", "h5": "MWEB", "jsapi": "JSAPI", "native": "NATIVE", "codepay": "MICROPAY"}
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
        self.transaction_id = self.transaction_id or "4200" + datetime.now(CHINA).strftime("%Y%m%d") + \
            f"{secrets.randbelow(10**16):016d}"
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
    attempts: list[dict[str, Any]] = field(default_factory=list)
    retries: bool = True
    retry_scale: float = 1.0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def merchant(self, api: GatewayApi, mch_id: Any) -> WechatMerchant | None:
        return next((m for m in self.merchants if m.api is api and m.mch_id == mch_id), None)

    def public_key(self, merchant: WechatMerchant) -> rsa.RSAPublicKey:
        assert merchant.private_key is not None
        key = serialization.load_pem_private_key(merchant.private_key.encode(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key.public_key()


def _load(settings: WechatSettings) -> FakeWechat:
    path = settings.merchants_file
    merchants: tuple[WechatMerchant, ...] = ()
    platform_key = None
    if path is None:
        log.warning("the WeChat fake has no merchants file (SHUIWU_PAYMENTS_CONFIG): it refuses every merchant")
    else:
        try:
            merchants = load_merchants(Path(path)).wechat
        except MerchantsInvalid as invalid:
            raise ValueError(f"the WeChat fake cannot read the merchants file: {invalid}") from None
        key_file = Path(path).parent / FAKE_WECHAT_PLATFORM_KEY
        if key_file.exists():
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            assert isinstance(key, rsa.RSAPrivateKey)
            platform_key = key
        elif any(m.api is GatewayApi.wechat_v3 for m in merchants):
            raise ValueError(f"the WeChat fake signs v3 answers with {key_file}, which is missing")
    return FakeWechat(settings, merchants, platform_key, retries=settings.fake_retries,
                      retry_scale=settings.fake_retry_scale)


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

    def v3_sign(message: str, key: rsa.RSAPrivateKey | None = None) -> str:
        signer = key or fake.platform_key
        assert signer is not None
        return base64.b64encode(signer.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()

    def v3_headers(merchant: WechatMerchant, body: str, key: rsa.RSAPrivateKey | None = None) -> dict[str, str]:
        timestamp, nonce = str(int(time.time())), _nonce()
        return {"Wechatpay-Timestamp": timestamp, "Wechatpay-Nonce": nonce,
                "Wechatpay-Signature": v3_sign(f"{timestamp}\n{nonce}\n{body}\n", key),
                "Wechatpay-Serial": merchant.platform_public_key_id or "",
                "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048", "Request-ID": str(uuid.uuid4())}

    def v3_answer(merchant: WechatMerchant, received: Received, body: Mapping[str, Any] | None,
                  status: int = 200) -> Answer:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":")) if body is not None else ""
        headers = v3_headers(merchant, text)
        if received.script is not None and received.script.action == "bad_signature":
            headers["Wechatpay-Signature"] = v3_sign(f"{headers['Wechatpay-Timestamp']}\n0\n{text}\n")
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
            return v3_error(400, "PARAM_ERROR", "付款码无效, 请重新扫码")
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

    def notification(order: FakeOrder, mode: str) -> tuple[dict[str, str], bytes]:
        """The headers and body WeChat posts for a paid order (``mode``: tamper_amount adds a
        fen under a valid signature; forge_signature signs with a key that is not WeChat's)."""
        amount = order.amount_fen + (1 if mode == "tamper_amount" else 0)
        paid_at = order.paid_at or _now()
        merchant = order.merchant
        if merchant.api is GatewayApi.wechat_v2:
            assert merchant.api_key is not None
            fields: dict[str, Any] = {
                "appid": merchant.app_id, "mch_id": merchant.mch_id, "nonce_str": _nonce(), "result_code": "SUCCESS",
                "return_code": "SUCCESS", "openid": order.openid or "", "is_subscribe": "N",
                "trade_type": order.trade_type, "bank_type": "OTHERS", "total_fee": amount, "fee_type": "CNY",
                "cash_fee": amount, "transaction_id": order.transaction_id or "", "out_trade_no": order.out_trade_no,
                "time_end": paid_at.strftime("%Y%m%d%H%M%S")}
            key = merchant.api_key if mode != "forge_signature" else secrets.token_hex(16)
            body = dict_to_xml(fields, sign(fields, key, order.sign_type)).encode()
            return {"Content-Type": "text/xml"}, body
        assert merchant.api_v3_key is not None
        transaction = v3_transaction(order)
        transaction["amount"] = {"total": amount, "payer_total": amount, "currency": "CNY", "payer_currency": "CNY"}
        transaction["success_time"] = paid_at.isoformat()
        transaction["transaction_id"] = order.transaction_id
        transaction["trade_state"], transaction["trade_state_desc"] = "SUCCESS", "支付成功"
        nonce = secrets.token_hex(6)
        ciphertext = AESGCM(merchant.api_v3_key.encode()).encrypt(
            nonce.encode(), json.dumps(transaction, ensure_ascii=False, separators=(",", ":")).encode(), b"transaction")
        envelope = {"id": str(uuid.uuid4()), "create_time": _now().isoformat(), "resource_type": "encrypt-resource",
                    "event_type": "TRANSACTION.SUCCESS", "summary": "支付成功",
                    "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                                 "ciphertext": base64.b64encode(ciphertext).decode(), "associated_data": "transaction",
                                 "nonce": nonce}}
        text = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))
        forger = _forger_key() if mode == "forge_signature" else None
        return {"Content-Type": "application/json", **v3_headers(merchant, text, forger)}, text.encode()

    async def post(order: FakeOrder, headers: Mapping[str, str], body: bytes, attempt: int) -> Sent:
        assert order.notify_url is not None
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.post(order.notify_url, content=body, headers=dict(headers))
            sent = Sent(response.status_code, response.text[:2000])
        except httpx.HTTPError as error:
            sent = Sent(0, f"{type(error).__name__}: {error}")
        fake.attempts.append({"out_trade_no": order.out_trade_no, "attempt": attempt, "at": _now().isoformat(),
                              "status": sent.status, "body": sent.body})
        return sent

    async def retry(order: FakeOrder, headers: Mapping[str, str], body: bytes, first_delay_s: float = 0.0) -> None:
        """Send again on WeChat's schedule until answered success (or retries are turned off)."""
        if first_delay_s:
            await asyncio.sleep(first_delay_s)
            if (await post(order, headers, body, 1)).ok(order.merchant.api):
                return
        for attempt, delay in enumerate(RETRY_SCHEDULE_S, start=2):
            if not fake.retries:
                return
            await asyncio.sleep(delay * fake.retry_scale)
            if not fake.retries:
                return
            if (await post(order, headers, body, attempt)).ok(order.merchant.api):
                return

    def in_background(work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        fake.tasks.add(task)
        task.add_done_callback(fake.tasks.discard)

    async def pay_and_notify(order: FakeOrder, mode: str, times: int, script: Any) -> list[Sent] | str:
        if mode != "forge_signature" and order.state not in ("SUCCESS", "REFUND"):
            order.pay(order.openid or _openid(order.merchant.app_id, "payer"))
        if order.notify_url is None:
            return []  # barcode payments are not notified
        headers, body = notification(order, mode)
        if script is not None and script.action == "drop_notify":
            return []
        if script is not None and script.action == "delay_notify":
            in_background(retry(order, headers, body, first_delay_s=max(script.seconds, 0.001)))
            return f"delayed {script.seconds:g} s"
        if mode == "replay":
            sent = list(await asyncio.gather(*(post(order, headers, body, 1) for _ in range(times))))
        else:
            sent = [await post(order, headers, body, attempt) for attempt in range(1, times + 1)]
        if mode in ("normal", "replay") and not any(one.ok(order.merchant.api) for one in sent) and fake.retries:
            in_background(retry(order, headers, body))
        return sent

    # ------------------------------------------------------------------ control

    async def control_pay(received: Received) -> Answer:
        try:
            order_request = received.json()
            out_trade_no = order_request["out_trade_no"]
            mode = order_request.get("mode", "normal")
            times = order_request.get("times", 1)
        except (ValueError, KeyError, TypeError):
            return Answer({"error": 'the body must be {"out_trade_no": …, "mode": …, "times": N}'}, 400)
        if mode not in PAY_MODES:
            return Answer({"error": f"mode must be one of {list(PAY_MODES)}"}, 400)
        if not isinstance(times, int) or not 1 <= times <= 100:
            return Answer({"error": "times must be an integer from 1 to 100"}, 400)
        order = fake.orders.get(out_trade_no)
        if order is None:
            return Answer({"error": f"no order {out_trade_no!r} here"}, 404)
        sent = await pay_and_notify(order, mode, times, received.script)
        return Answer({"out_trade_no": out_trade_no, "state": order.state,
                       "sent": [] if isinstance(sent, str) else [{"status": s.status, "body": s.body} for s in sent],
                       **({"delayed": sent} if isinstance(sent, str) else {})})

    async def control_orders(received: Received) -> Answer:
        return Answer({"orders": [{
            "out_trade_no": order.out_trade_no, "amount_fen": order.amount_fen, "state": order.state,
            "scene": order.trade_type, "merchant": order.merchant.name, "api": order.merchant.api.value,
            "mch_id": order.merchant.mch_id, "notify_url": order.notify_url, "transaction_id": order.transaction_id,
            "openid": order.openid, "refunded_fen": order.refunded_fen,
        } for order in fake.orders.values()]})

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

    async def control_retries(received: Received) -> Answer:
        try:
            order = received.json() if received.body else {}
            enabled, scale = order.get("enabled", fake.retries), order.get("scale", fake.retry_scale)
        except (ValueError, AttributeError):
            return Answer({"error": 'the body must be {"enabled": true, "scale": 0.001}'}, 400)
        if not isinstance(enabled, bool) or not isinstance(scale, int | float) or not 0 <= scale <= 1:
            return Answer({"error": "enabled: true or false; scale: a number from 0 to 1"}, 400)
        fake.retries, fake.retry_scale = enabled, float(scale)
        return Answer({"enabled": fake.retries, "scale": fake.retry_scale, "schedule_s": list(RETRY_SCHEDULE_S)})

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
            await pay_and_notify(order, "normal", 1, received.script)
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
        FakeRoute("POST", "/_control/retries", control_retries),
    ]
    return fake_gateway_app("wechat", routes, actions={
        "refuse": "refuse the next API request (v2 result_code FAIL NOAUTH; v3 403 NO_AUTH)",
        "bad_signature": "sign the next API answer wrongly",
        "drop_notify": "pay without sending the notification (POST /_control/pay or the cashier's 付款)",
        "delay_notify": "send the notification `seconds` later (then retried as usual)",
    })


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

