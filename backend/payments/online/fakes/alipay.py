"""The local Alipay (``shuiwu fake-gateway alipay``): Alipay's OpenAPI gateway as the SDK
calls it, signing and verifying RSA2 exactly as Alipay does, with orders in memory, a
cashier page, the day's statement, and notifications sent to the orders' notify URLs.

**The OpenAPI** (``GET`` or ``POST /gateway.do`` with ``method=…``): the request's RSA2
signature (over every parameter but ``sign``, sorted, ``biz_content`` the exact string
received) is checked with the app's public key, derived from the app's private key in
the merchants file (``SHUIWU_ALIPAY_FAKE_MERCHANTS_FILE``, else
``SHUIWU_PAYMENTS_CONFIG``). Answers are ``{"<method>_response": {…}, "sign": "…"}``, the
signature over that exact inner JSON with "Alipay's" key (``fake_alipay_private.pem``
beside the merchants file, or ``SHUIWU_ALIPAY_FAKE_PRIVATE_KEY_FILE``). Methods:
``alipay.trade.precreate`` / ``pay`` (barcode) / ``query`` / ``close`` / ``cancel`` /
``refund`` / ``fastpay.refund.query`` and ``alipay.data.dataservice.bill.downloadurl.query``
(the statement zip, GBK CSV as Alipay's, at ``/bill/<token>``). ``alipay.trade.app.pay`` /
``wap.pay`` / ``page.pay`` opened in a browser (the pay URL, or the app's order string as
``gateway.do?<order string>``) register the order and show the cashier; so does a
precreated order's ``qr_code`` (``/qr/<token>``). Unknown orders are
``ACQ.TRADE_NOT_EXIST``, as at Alipay: a wap / page / app order exists only once opened.

**The cashier** (付款 / 取消, in Chinese): 付款 pays and sends the notification; 取消
leaves the order unpaid (it closes when it expires, as at Alipay).

**Notifications**: a signed form POST (``trade_status_sync``) to the order's notify URL,
retried when the answer is not exactly ``success`` on Alipay's schedule (4m, 10m, 10m, 1h,
2h, 6h, 15h) times ``SHUIWU_ALIPAY_FAKE_NOTIFY_RETRY_SCALE``, unless
``SHUIWU_ALIPAY_FAKE_NOTIFY_RETRIES=false``.

**Control** (beside the base's ``/_control/``, ``requests``, ``next``, ``reset``):

- ``POST /_control/pay`` ``{"out_trade_no", "mode", "times": 1, "retry": true, "amount_fen"}``
  pays the order and sends its notification(s), answering ``{"out_trade_no", "sent":
  [{"status", "body"}…]}`` (status 0: no answer). Modes: ``normal`` (``times`` sent one
  after another), ``replay`` (the same notification ``times`` times at once),
  ``tamper_amount`` (a genuine notification whose ``total_amount`` is changed after
  signing: ``amount_fen``, default ×100), ``forge_signature`` (signed with a key that is
  not Alipay's), ``other_app`` (genuinely signed, for another app id), ``wrong_amount``
  (genuinely signed with another amount: ``amount_fen``, default 1 fen less). The last
  four are not Alipay paying: the order stays as it was and nothing is retried. A closed
  order is paid all the same (the payer's money was taken as it closed).
- ``GET /_control/orders``: ``{"orders": [{out_trade_no, amount_fen, state, trade_status,
  scene, merchant, app_id, notify_url, trade_no, refunded_fen, notifications}]}``.
- ``POST /_control/settings`` ``{"notify_retries": bool, "notify_retry_scale": float}``.
- ``POST /_control/next`` with this kind's actions (:data:`ACTIONS`): whichever request
  takes the script, it applies to the next OpenAPI call / barcode payment /
  notification it names.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import html
import io
import json
import logging
import os
import secrets
import zipfile
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from backend.gateways.http import Answer, FakeRoute, Received, Script, fake_gateway_app
from backend.payments.online.alipay import (
    CHINA,
    GATEWAY_PATH,
    SIGN_TYPE,
    TIME_FORMAT,
    AlipaySettings,
    fen_to_yuan,
    yuan_to_fen,
)
from backend.payments.online.fakes import pay_request
from backend.payments.online.merchants import MerchantsInvalid, load_merchants
from backend.payments.online.testkeys import FAKE_ALIPAY_KEY

log = logging.getLogger(__name__)

# Alipay's notification retry schedule, in seconds (4m, 10m, 10m, 1h, 2h, 6h, 15h).
RETRY_SCHEDULE_S = (240, 600, 600, 3600, 7200, 21600, 54000)
NOTIFY_TIMEOUT_S = 15.0
OTHER_APP_ID = "2021000000009999"  # "another merchant's app": signed by Alipay, not ours
SELLER_ID = "2088000000000001"
MAX_SKEW_S = 10 * 60  # how far a call's time stamp may be from the gateway's clock
MAX_AMOUNT_FEN = 100_000_000_00  # Alipay's single-trade maximum, ¥100,000,000
MODES = frozenset({"normal", "replay", "tamper_amount", "forge_signature", "other_app", "wrong_amount"})
GENUINE_MODES = frozenset({"normal", "replay"})
# The kind's actions for POST /_control/next (the base adds delay and error).
ACTIONS: Mapping[str, str] = {
    "refuse": "the next OpenAPI call answers a signed refusal; `body` is the sub_code (default ACQ.SYSTEM_ERROR)",
    "bad_signature": "the next OpenAPI answer is signed with a key that is not Alipay's",
    "unsigned": "the next OpenAPI answer carries no sign",
    "user_paying": "the next barcode payment answers 10003 (USERPAYING) and is paid at the `body`-th query "
                   "(default 2) after it",
    "drop_notify": "the next notification is lost (then retried on the schedule, if retries are on)",
    "delay_notify": "the next notification is sent after `seconds`",
}
_OPENAPI_ACTIONS = frozenset({"refuse", "bad_signature", "unsigned"})
_NOTIFY_ACTIONS = frozenset({"drop_notify", "delay_notify"})
_PAGE_METHODS = {"alipay.trade.app.pay": "app", "alipay.trade.wap.pay": "wap", "alipay.trade.page.pay": "page"}
_PRODUCT_CODES = {"alipay.trade.app.pay": {"QUICK_MSECURITY_PAY"}, "alipay.trade.wap.pay": {"QUICK_WAP_WAY", "QUICK_WAP_PAY"},
                  "alipay.trade.page.pay": {"FAST_INSTANT_TRADE_PAY"}}
_PAID = frozenset({"TRADE_SUCCESS", "TRADE_FINISHED"})
_STATES = {"WAIT_BUYER_PAY": "waiting", "TRADE_SUCCESS": "paid", "TRADE_FINISHED": "paid", "TRADE_CLOSED": "closed"}
_AUTH_CODE_DIGITS = range(16, 25)


def _now() -> datetime:
    return datetime.now(CHINA)


def _stamp(moment: datetime | None) -> str:
    return moment.astimezone(CHINA).strftime(TIME_FORMAT) if moment is not None else ""


def _digits(count: int) -> str:
    return "".join(secrets.choice("0123456789") for _ in range(count))


@dataclass
class FakeRefund:
    out_request_no: str
    amount_fen: int
    at: datetime


@dataclass
class FakeOrder:
    out_trade_no: str
    app_id: str
    merchant: str
    amount_fen: int
    subject: str
    scene: str
    notify_url: str | None
    return_url: str | None = None
    expires_at: datetime | None = None
    status: str = "WAIT_BUYER_PAY"
    trade_no: str = field(default_factory=lambda: _now().strftime("%Y%m%d") + "2200" + _digits(16))
    created_at: datetime = field(default_factory=_now)
    paid_at: datetime | None = None
    buyer_id: str = field(default_factory=lambda: "2088" + _digits(12))
    token: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    paying_queries: int = 0  # barcode: queries left until the payer confirms (0: not paying)
    refunds: dict[str, FakeRefund] = field(default_factory=dict)
    deliveries: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=20))

    @property
    def refunded_fen(self) -> int:
        return sum(refund.amount_fen for refund in self.refunds.values())

    def as_json(self) -> dict[str, Any]:
        state = "paying" if self.paying_queries else _STATES[self.status]
        return {"out_trade_no": self.out_trade_no, "amount_fen": self.amount_fen, "state": state,
                "trade_status": self.status, "scene": self.scene, "merchant": self.merchant, "app_id": self.app_id,
                "notify_url": self.notify_url, "return_url": self.return_url, "trade_no": self.trade_no,
                "paid_at": self.paid_at.isoformat() if self.paid_at else None, "refunded_fen": self.refunded_fen,
                "notifications": list(self.deliveries)}


class _Refusal(Exception):
    """An OpenAPI call refused: Alipay's code, msg, sub_code and sub_msg."""

    def __init__(self, sub_code: str, sub_msg: str, *, code: str = "40004", msg: str = "Business Failed",
                 **extra: str) -> None:
        super().__init__(sub_code)
        self.content = {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg, **extra}


@dataclass(frozen=True)
class _App:
    name: str
    public_key: rsa.RSAPublicKey


class _Keys:
    """The apps of the merchants file and "Alipay's" private key, read when first needed
    (and again when the file changes: a demo writes its merchants as it starts)."""

    def __init__(self, settings: AlipaySettings) -> None:
        self.settings = settings
        self._loaded: tuple[Any, dict[str, _App], rsa.RSAPrivateKey] | None = None

    def _file(self) -> Path | None:
        named = self.settings.fake_merchants_file or os.environ.get("SHUIWU_PAYMENTS_CONFIG")
        return Path(named) if named else None

    def get(self) -> tuple[dict[str, _App], rsa.RSAPrivateKey]:
        path = self._file()
        if path is None:
            raise _Refusal("isv.invalid-app-id", "无效的AppID参数 (本地支付宝未配置商户: SHUIWU_PAYMENTS_CONFIG)",
                           code="40002", msg="Invalid Arguments")
        key_path = Path(self.settings.fake_private_key_file) if self.settings.fake_private_key_file \
            else path.parent / FAKE_ALIPAY_KEY
        try:
            version = (path, path.stat().st_mtime_ns, key_path, key_path.stat().st_mtime_ns)
        except OSError as error:
            raise _Refusal("isv.invalid-app-id", f"无效的AppID参数 ({error})", code="40002",
                           msg="Invalid Arguments") from None
        if self._loaded is None or self._loaded[0] != version:
            try:
                merchants = load_merchants(path)
            except MerchantsInvalid as invalid:
                raise _Refusal("isv.invalid-app-id", f"无效的AppID参数 ({invalid.lines[0]})", code="40002",
                               msg="Invalid Arguments") from None
            apps = {}
            for merchant in merchants.alipay:
                private = serialization.load_pem_private_key(merchant.private_key.encode(), password=None)
                assert isinstance(private, rsa.RSAPrivateKey)
                apps[merchant.app_id] = _App(merchant.name, private.public_key())
            signing = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            assert isinstance(signing, rsa.RSAPrivateKey)
            self._loaded = (version, apps, signing)
        return self._loaded[1], self._loaded[2]


def _sign(key: rsa.RSAPrivateKey, text: str) -> str:
    return base64.b64encode(key.sign(text.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()


def _verified(key: rsa.RSAPublicKey, text: str, signature: str) -> bool:
    try:
        key.verify(base64.b64decode(signature, validate=True), text.encode(), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def unsigned_string(fields: Mapping[str, str], *, skip: frozenset[str]) -> str:
    """Alipay's string to sign: ``k=v`` of the non-empty fields but ``skip``, sorted, by ``&``."""
    return "&".join(f"{name}={value}" for name, value in sorted(fields.items()) if name not in skip and value != "")


class FakeAlipay:
    """The state and the handlers of one local Alipay."""

    def __init__(self, settings: AlipaySettings) -> None:
        self.settings = settings
        self.keys = _Keys(settings)
        self.orders: dict[str, FakeOrder] = {}
        self.by_token: dict[str, str] = {}
        self.bills: dict[str, bytes] = {}
        self.notify_retries = settings.fake_notify_retries
        self.retry_scale = settings.fake_notify_retry_scale
        self.scripts: dict[str, deque[Script]] = {"openapi": deque(), "barcode": deque(), "notify": deque()}
        self.forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.tasks: set[asyncio.Task[Any]] = set()
        self._client: httpx.AsyncClient | None = None

    # ----------------------------------------------------------------- scripts

    def stash(self, script: Script | None) -> None:
        """Keep a kind's scripted action for the request or notification it is about."""
        if script is None:
            return
        queue = "notify" if script.action in _NOTIFY_ACTIONS else "barcode" if script.action == "user_paying" \
            else "openapi"
        self.scripts[queue].append(script)

    def _next(self, queue: str) -> Script | None:
        return self.scripts[queue].popleft() if self.scripts[queue] else None

    # ----------------------------------------------------------------- the OpenAPI

    async def openapi(self, received: Received) -> Answer:
        self.stash(received.script)
        params = dict(received.query)
        if received.method == "POST" and received.body:
            params.update(parse_qsl(received.text(), keep_blank_values=True))
        method = params.get("method", "")
        response_key = method.replace(".", "_") + "_response" if method else "error_response"
        scripted = None if method in _PAGE_METHODS else self._next("openapi")
        try:
            apps, key = self.keys.get()
            app = self._check_request(params, apps)
            try:
                biz = json.loads(params.get("biz_content") or "{}")
            except ValueError:
                raise _Refusal("isv.invalid-biz-content", "业务参数格式错误", code="40002", msg="Invalid Arguments") \
                    from None
            if not isinstance(biz, dict):
                raise _Refusal("isv.invalid-biz-content", "业务参数格式错误", code="40002", msg="Invalid Arguments")
            if method in _PAGE_METHODS:
                return self._open_page(received, params, biz, app)
            if scripted is not None and scripted.action == "refuse":
                sub_code = str(scripted.body or "ACQ.SYSTEM_ERROR")
                raise _Refusal(sub_code, "本地支付宝按脚本拒绝", code="20000" if sub_code == "ACQ.SYSTEM_ERROR" else "40004",
                               msg="Service Currently Unavailable" if sub_code == "ACQ.SYSTEM_ERROR" else "Business Failed")
            content = self._dispatch(method, params, biz, params["app_id"], app, received)
        except _Refusal as refused:
            content = refused.content
            try:
                _, key = self.keys.get()
            except _Refusal:
                return Answer(json.dumps({response_key: content}, ensure_ascii=False),
                              media_type="application/json;charset=utf-8")
        return self._signed(response_key, content, key, scripted)

    def _check_request(self, params: Mapping[str, str], apps: Mapping[str, _App]) -> _App:
        for name in ("app_id", "method", "sign", "sign_type", "timestamp", "version", "charset"):
            if not params.get(name):
                raise _Refusal(f"isv.missing-{name.replace('_', '-')}", f"缺少{name}参数", code="40001",
                               msg="Missing Required Arguments")
        app = apps.get(params["app_id"])
        if app is None:
            raise _Refusal("isv.invalid-app-id", "无效的AppID参数", code="40002", msg="Invalid Arguments")
        if params["sign_type"] != SIGN_TYPE:
            raise _Refusal("isv.invalid-signature-type", "无效的签名类型", code="40002", msg="Invalid Arguments")
        if not _verified(app.public_key, unsigned_string(params, skip=frozenset({"sign"})), params["sign"]):
            raise _Refusal("isv.invalid-signature", "验签出错, 建议检查签名字符串或签名私钥与应用公钥是否匹配",
                           code="40002", msg="Invalid Arguments")
        # A server call's time stamp is China time, within minutes (a pay URL may be opened later).
        if params["method"] not in _PAGE_METHODS:
            try:
                sent_at = datetime.strptime(params["timestamp"], TIME_FORMAT).replace(tzinfo=CHINA)
            except ValueError:
                sent_at = None
            if sent_at is None or abs((_now() - sent_at).total_seconds()) > MAX_SKEW_S:
                raise _Refusal("isv.invalid-timestamp", "非法的时间戳参数", code="40002", msg="Invalid Arguments")
        return app

    def _signed(self, response_key: str, content: Mapping[str, Any], key: rsa.RSAPrivateKey,
                scripted: Script | None) -> Answer:
        # Alipay signs the exact inner JSON it sends; Chinese is sent as UTF-8 text.
        inner = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
        if scripted is not None and scripted.action == "unsigned":
            body = f'{{"{response_key}":{inner}}}'
        else:
            signer = self.forger if scripted is not None and scripted.action == "bad_signature" else key
            body = f'{{"{response_key}":{inner},"sign":"{_sign(signer, inner)}"}}'
        return Answer(body, media_type="application/json;charset=utf-8")

    def _dispatch(self, method: str, params: Mapping[str, str], biz: dict[str, Any], app_id: str, app: _App,
                  received: Received) -> dict[str, Any]:
        if method == "alipay.data.dataservice.bill.downloadurl.query":
            return self._bill_url(biz, app_id, received)
        out_trade_no = biz.get("out_trade_no")
        if not isinstance(out_trade_no, str) or not out_trade_no:
            raise _Refusal("ACQ.INVALID_PARAMETER", "参数无效 (out_trade_no)")
        if method == "alipay.trade.precreate":
            created = self._register(out_trade_no, biz, app_id, app, scene="qr", notify_url=params.get("notify_url"))
            return {**_SUCCESS, "out_trade_no": out_trade_no, "qr_code": f"{_base(received)}/qr/{created.token}"}
        if method == "alipay.trade.pay":
            return self._barcode(out_trade_no, biz, app_id, app, params.get("notify_url"))
        order = self.orders.get(out_trade_no)
        if order is None or order.app_id != app_id:
            raise _Refusal("ACQ.TRADE_NOT_EXIST", "交易不存在")
        self._expire(order)
        if method == "alipay.trade.query":
            return self._query(order)
        if method == "alipay.trade.close":
            if order.status != "WAIT_BUYER_PAY" or order.paying_queries:
                raise _Refusal("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
            order.status = "TRADE_CLOSED"
            return {**_SUCCESS, "out_trade_no": out_trade_no, "trade_no": order.trade_no}
        if method == "alipay.trade.cancel":
            action = "close" if order.status == "WAIT_BUYER_PAY" else "refund" if order.status in _PAID else ""
            if action == "refund":
                self._refund_fen(order, f"cancel-{order.trade_no}", order.amount_fen - order.refunded_fen)
            order.status, order.paying_queries = "TRADE_CLOSED", 0
            return {**_SUCCESS, "out_trade_no": out_trade_no, "trade_no": order.trade_no, "retry_flag": "N",
                    "action": action}
        if method == "alipay.trade.refund":
            return self._refund(order, biz)
        if method == "alipay.trade.fastpay.refund.query":
            return self._refund_query(order, biz)
        raise _Refusal("isv.invalid-method", "不存在的方法名", code="40002", msg="Invalid Arguments")

    # ----------------------------------------------------------------- orders

    def _register(self, out_trade_no: str, biz: Mapping[str, Any], app_id: str, app: _App, *, scene: str,
                  notify_url: str | None, return_url: str | None = None) -> FakeOrder:
        amount = _amount(biz.get("total_amount"))
        subject = biz.get("subject")
        if not isinstance(subject, str) or not subject or len(subject) > 256:
            raise _Refusal("ACQ.INVALID_PARAMETER", "参数无效 (subject)")
        expires_at = None
        if isinstance(biz.get("time_expire"), str):
            try:
                expires_at = datetime.strptime(biz["time_expire"], TIME_FORMAT).replace(tzinfo=CHINA)
            except ValueError:
                raise _Refusal("ACQ.INVALID_PARAMETER", "参数无效 (time_expire)") from None
        existing = self.orders.get(out_trade_no)
        if existing is not None:
            order = existing
            self._expire(order)
            if order.app_id != app_id or order.amount_fen != amount:
                raise _Refusal("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
            if order.status in _PAID:
                raise _Refusal("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
            if order.status == "TRADE_CLOSED":
                raise _Refusal("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
            return order
        order = FakeOrder(out_trade_no=out_trade_no, app_id=app_id, merchant=app.name, amount_fen=amount,
                          subject=subject, scene=scene, notify_url=notify_url, return_url=return_url,
                          expires_at=expires_at)
        self.orders[out_trade_no] = order
        self.by_token[order.token] = out_trade_no
        return order

    def _expire(self, order: FakeOrder) -> None:
        if order.status == "WAIT_BUYER_PAY" and not order.paying_queries and order.expires_at is not None \
                and _now() > order.expires_at:
            order.status = "TRADE_CLOSED"

    def _pay(self, order: FakeOrder) -> None:
        if order.status not in _PAID:
            order.status, order.paid_at, order.paying_queries = "TRADE_SUCCESS", _now(), 0

    def _paid_fields(self, order: FakeOrder) -> dict[str, Any]:
        amount = fen_to_yuan(order.amount_fen)
        return {"trade_no": order.trade_no, "out_trade_no": order.out_trade_no, "buyer_logon_id": "159****0000",
                "buyer_user_id": order.buyer_id, "total_amount": amount, "receipt_amount": amount,
                "buyer_pay_amount": amount, "invoice_amount": amount, "point_amount": "0.00",
                "fund_bill_list": [{"amount": amount, "fund_channel": "ALIPAYACCOUNT"}]}

    def _barcode(self, out_trade_no: str, biz: Mapping[str, Any], app_id: str, app: _App,
                 notify_url: str | None) -> dict[str, Any]:
        if biz.get("scene") not in ("bar_code", "wave_code"):
            raise _Refusal("ACQ.INVALID_PARAMETER", "参数无效 (scene)")
        code = biz.get("auth_code")
        if not isinstance(code, str) or not code.isdigit() or len(code) not in _AUTH_CODE_DIGITS \
                or not 25 <= int(code[:2]) <= 30:
            raise _Refusal("ACQ.PAYMENT_AUTH_CODE_INVALID", "支付失败，获取顾客账户信息失败，请顾客刷新付款码后重新收款")
        existing = self.orders.get(out_trade_no)
        if existing is not None and existing.paying_queries:
            return {"code": "10003", "msg": "Waiting Payment", "out_trade_no": out_trade_no,
                    "trade_no": existing.trade_no, "total_amount": fen_to_yuan(existing.amount_fen)}
        order = self._register(out_trade_no, biz, app_id, app, scene="barcode", notify_url=notify_url)
        scripted = self._next("barcode")
        if scripted is not None:
            order.paying_queries = max(1, int(scripted.body)) if isinstance(scripted.body, int) else 2
            return {"code": "10003", "msg": "Waiting Payment", "out_trade_no": out_trade_no,
                    "trade_no": order.trade_no, "total_amount": fen_to_yuan(order.amount_fen),
                    "buyer_logon_id": "159****0000"}
        self._pay(order)
        self._notify_later(order)
        return {**_SUCCESS, **self._paid_fields(order), "gmt_payment": _stamp(order.paid_at)}

    def _query(self, order: FakeOrder) -> dict[str, Any]:
        if order.paying_queries:
            order.paying_queries -= 1
            if order.paying_queries == 0:
                self._pay(order)
                self._notify_later(order)
        answer = {**_SUCCESS, **self._paid_fields(order), "trade_status": order.status}
        if order.status in _PAID:
            answer["send_pay_date"] = _stamp(order.paid_at)
        else:
            for unpaid in ("receipt_amount", "buyer_pay_amount", "invoice_amount", "fund_bill_list"):
                answer.pop(unpaid)
        return answer

    # ----------------------------------------------------------------- refunds

    def _refund_fen(self, order: FakeOrder, out_request_no: str, amount: int) -> None:
        order.refunds[out_request_no] = FakeRefund(out_request_no, amount, _now())
        if order.refunded_fen >= order.amount_fen:
            order.status = "TRADE_CLOSED"  # a fully refunded trade reads closed at Alipay

    def _refund(self, order: FakeOrder, biz: Mapping[str, Any]) -> dict[str, Any]:
        amount = _amount(biz.get("refund_amount"))
        out_request_no = str(biz.get("out_request_no") or order.out_trade_no)
        done = order.refunds.get(out_request_no)
        if done is not None:
            if done.amount_fen != amount:
                raise _Refusal("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额与同一退款请求号的金额不一致")
            fund_change = "N"  # the same request again: Alipay answers it, moving nothing
        else:
            if order.status not in _PAID:
                raise _Refusal("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
            if amount > order.amount_fen - order.refunded_fen:
                raise _Refusal("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
            self._refund_fen(order, out_request_no, amount)
            fund_change = "Y"
        return {**_SUCCESS, "trade_no": order.trade_no, "out_trade_no": order.out_trade_no,
                "buyer_logon_id": "159****0000", "fund_change": fund_change,
                "refund_fee": fen_to_yuan(order.refunded_fen), "buyer_user_id": order.buyer_id,
                "gmt_refund_pay": _stamp(order.refunds[out_request_no].at)}

    def _refund_query(self, order: FakeOrder, biz: Mapping[str, Any]) -> dict[str, Any]:
        refund = order.refunds.get(str(biz.get("out_request_no") or order.out_trade_no))
        if refund is None:
            return {**_SUCCESS, "out_trade_no": order.out_trade_no, "trade_no": order.trade_no}
        return {**_SUCCESS, "trade_no": order.trade_no, "out_trade_no": order.out_trade_no,
                "out_request_no": refund.out_request_no, "total_amount": fen_to_yuan(order.amount_fen),
                "refund_amount": fen_to_yuan(refund.amount_fen), "refund_status": "REFUND_SUCCESS",
                "gmt_refund_pay": _stamp(refund.at)}

    # ----------------------------------------------------------------- the statement

    def _bill_url(self, biz: Mapping[str, Any], app_id: str, received: Received) -> dict[str, Any]:
        if biz.get("bill_type") != "trade":
            raise _Refusal("isp.bill_type_not_support", "账单类型不支持", code="40004")
        try:
            day = date.fromisoformat(str(biz.get("bill_date")))
        except ValueError:
            raise _Refusal("isv.invalid-bill-date", "账单日期格式不正确", code="40004") from None
        token = secrets.token_urlsafe(16)
        self.bills[token] = self.statement_zip(app_id, day)
        return {**_SUCCESS, "bill_download_url": f"{_base(received)}/bill/{token}"}

    def statement_zip(self, app_id: str, day: date) -> bytes:
        """The day's 业务明细 of ``app_id`` as Alipay's zip: a GBK CSV and its summary."""
        columns = ["支付宝交易号", "商户订单号", "业务类型", "商品名称", "创建时间", "完成时间", "门店编号", "门店名称",
                   "操作员", "终端号", "对方账户", "订单金额（元）", "商家实收（元）", "支付宝红包（元）", "集分宝（元）",
                   "支付宝优惠（元）", "商家优惠（元）", "券核销金额（元）", "券名称", "商家红包消费金额（元）",
                   "卡消费金额（元）", "退款批次号/请求号", "服务费（元）", "分润（元）", "备注"]
        rows: list[list[str]] = []
        for order in self.orders.values():
            if order.app_id != app_id:
                continue
            if order.paid_at is not None and order.paid_at.astimezone(CHINA).date() == day:
                amount = fen_to_yuan(order.amount_fen)
                rows.append(_bill_row(order, "交易", order.paid_at, amount, ""))
            for refund in order.refunds.values():
                if refund.at.astimezone(CHINA).date() == day:
                    rows.append(_bill_row(order, "退款", refund.at, "-" + fen_to_yuan(refund.amount_fen),
                                          refund.out_request_no))
        text = io.StringIO()
        start = datetime.combine(day, datetime.min.time())
        text.write(f"#支付宝业务明细查询\n#账号：[{SELLER_ID}0156]\n"
                   f"#起始日期：[{start:%Y年%m月%d日 %H:%M:%S}]   终止日期：[{start + timedelta(days=1):%Y年%m月%d日 %H:%M:%S}]\n"
                   "#-----------------------------------------业务明细列表----------------------------------------\n")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        text.write("#-----------------------------------------业务明细列表结束------------------------------------\n"
                   f"#导出时间：[{_now():%Y年%m月%d日 %H:%M:%S}]\n")
        summary = "#支付宝业务汇总查询\n门店编号,门店名称,交易订单总笔数,退款订单总笔数\n合计,," \
                  f"{sum(row[2] == '交易' for row in rows)},{sum(row[2] == '退款' for row in rows)}\n"
        stem = f"{SELLER_ID}0156_{day:%Y%m%d}"
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
            bundle.writestr(f"{stem}_业务明细.csv", text.getvalue().encode("gbk"))
            bundle.writestr(f"{stem}_业务明细(汇总).csv", summary.encode("gbk"))
        return archive.getvalue()

    async def bill(self, received: Received) -> Answer:
        self.stash(received.script)
        archive = self.bills.pop(received.path.rsplit("/", 1)[-1], None)
        if archive is None:
            return Answer("<html><body>链接已失效</body></html>", 404, media_type="text/html; charset=utf-8")
        return Answer(archive, headers={"content-disposition": "attachment; filename=bill.csv.zip"},
                      media_type="application/zip")

    # ----------------------------------------------------------------- the cashier

    def _open_page(self, received: Received, params: Mapping[str, str], biz: Mapping[str, Any], app: _App) -> Answer:
        out_trade_no = biz.get("out_trade_no")
        if not isinstance(out_trade_no, str) or not out_trade_no:
            raise _Refusal("ACQ.INVALID_PARAMETER", "参数无效 (out_trade_no)")
        try:
            if biz.get("product_code") not in _PRODUCT_CODES[params["method"]]:
                raise _Refusal("ACQ.INVALID_PRODUCT_CODE", f"产品码不正确 ({biz.get('product_code')})")
            order = self._register(out_trade_no, biz, params["app_id"], app, scene=_PAGE_METHODS[params["method"]],
                                   notify_url=params.get("notify_url"), return_url=params.get("return_url"))
        except _Refusal as refused:
            return _page("支付宝 - 无法支付", f"<p>{html.escape(refused.content['sub_msg'])}</p>", 400)
        return self._cashier(order)

    def _cashier(self, order: FakeOrder) -> Answer:
        self._expire(order)
        if order.status in _PAID:
            return _page("支付宝 - 订单已支付", "<p>该订单已支付</p>")
        if order.status == "TRADE_CLOSED":
            return _page("支付宝 - 订单已关闭", "<p>该订单已关闭, 请重新下单</p>", 409)
        hidden = f'<input type="hidden" name="out_trade_no" value="{html.escape(order.out_trade_no)}">'
        return _page("支付宝 - 收银台", f"""
<p class="merchant">{html.escape(order.merchant)} · {html.escape(order.subject)}</p>
<p class="amount" id="amount">¥{fen_to_yuan(order.amount_fen)}</p>
<p>订单号 {html.escape(order.out_trade_no)}</p>
<form method="post" action="/cashier/pay">{hidden}<button id="pay" type="submit">付款</button></form>
<form method="post" action="/cashier/cancel">{hidden}<button id="cancel" type="submit">取消</button></form>""")

    async def qr(self, received: Received) -> Answer:
        self.stash(received.script)
        order = self.orders.get(self.by_token.get(received.path.rsplit("/", 1)[-1], ""))
        if order is None:
            return _page("支付宝 - 二维码无效", "<p>二维码无效或已过期</p>", 404)
        return self._cashier(order)

    async def cashier_pay(self, received: Received) -> Answer:
        self.stash(received.script)
        order = self._form_order(received)
        if order is None:
            return _page("支付宝 - 订单不存在", "<p>订单不存在</p>", 404)
        self._expire(order)
        if order.status == "TRADE_CLOSED":
            return _page("支付宝 - 订单已关闭", "<p>该订单已关闭, 请重新下单</p>", 409)
        self._pay(order)
        self._notify_later(order)
        back = f'<p><a id="return" href="{html.escape(order.return_url)}">返回商户</a></p>' if order.return_url else ""
        return _page("支付宝 - 支付成功", f"<p id=\"result\">支付成功 ¥{fen_to_yuan(order.amount_fen)}</p>{back}")

    async def cashier_cancel(self, received: Received) -> Answer:
        self.stash(received.script)
        order = self._form_order(received)
        if order is None:
            return _page("支付宝 - 订单不存在", "<p>订单不存在</p>", 404)
        back = f'<p><a id="return" href="{html.escape(order.return_url)}">返回商户</a></p>' if order.return_url else ""
        return _page("支付宝 - 已取消", f"<p id=\"result\">已取消支付, 订单未付款</p>{back}")

    def _form_order(self, received: Received) -> FakeOrder | None:
        form = dict(parse_qsl(received.text()))
        return self.orders.get(form.get("out_trade_no", ""))

    # ----------------------------------------------------------------- notifications

    def notification(self, order: FakeOrder, *, app_id: str | None = None, amount_fen: int | None = None,
                     key: rsa.RSAPrivateKey | None = None) -> dict[str, str]:
        """The signed trade_status_sync form of ``order`` (for ``app_id`` / ``amount_fen``
        instead of the order's, signed with ``key`` instead of Alipay's: the control modes)."""
        _, alipay_key = self.keys.get()
        amount = fen_to_yuan(order.amount_fen if amount_fen is None else amount_fen)
        fields = {
            "gmt_create": _stamp(order.created_at), "charset": "utf-8", "gmt_payment": _stamp(order.paid_at or _now()),
            "notify_time": _stamp(_now()), "subject": order.subject, "buyer_id": order.buyer_id,
            "invoice_amount": amount, "version": "1.0", "notify_id": "2026" + secrets.token_hex(14),
            "fund_bill_list": json.dumps([{"amount": amount, "fundChannel": "ALIPAYACCOUNT"}], separators=(",", ":")),
            "notify_type": "trade_status_sync", "out_trade_no": order.out_trade_no, "total_amount": amount,
            "trade_status": "TRADE_SUCCESS", "trade_no": order.trade_no, "auth_app_id": app_id or order.app_id,
            "receipt_amount": amount, "point_amount": "0.00", "buyer_pay_amount": amount,
            "app_id": app_id or order.app_id, "seller_id": SELLER_ID,
        }
        fields["sign"] = _sign(key or alipay_key, unsigned_string(fields, skip=frozenset({"sign", "sign_type"})))
        fields["sign_type"] = SIGN_TYPE
        return fields

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=NOTIFY_TIMEOUT_S, limits=httpx.Limits(max_connections=64))
        return self._client

    async def deliver(self, order: FakeOrder, body: bytes, *, retry: bool, attempt: int = 0) -> dict[str, Any]:
        """POST one notification; not answered ``success``: retried later (``retry``)."""
        if not order.notify_url:
            return {"status": 0, "body": "the order has no notify_url"}
        try:
            response = await self._http().post(order.notify_url, content=body, headers={
                "content-type": "application/x-www-form-urlencoded; charset=utf-8", "user-agent": "Mozilla/4.0"})
            sent: dict[str, Any] = {"status": response.status_code, "body": response.text}
        except httpx.HTTPError as error:
            sent = {"status": 0, "body": f"{type(error).__name__}: {error}"}
        order.deliveries.append({"at": _now().isoformat(), "attempt": attempt, **sent})
        if retry and str(sent["body"]).strip() != "success" and attempt < len(RETRY_SCHEDULE_S):
            self._later(self._retry(order, body, attempt))
        return sent

    async def _retry(self, order: FakeOrder, body: bytes, attempt: int) -> None:
        await asyncio.sleep(RETRY_SCHEDULE_S[attempt] * self.retry_scale)
        if self.notify_retries:
            await self.deliver(order, body, retry=True, attempt=attempt + 1)

    def _later(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def send(self, order: FakeOrder, body: bytes, *, retry: bool) -> dict[str, Any] | None:
        """Send as the notify scripts say: None when dropped or delayed (sent later)."""
        scripted = self._next("notify")
        if scripted is not None and scripted.action == "drop_notify":
            order.deliveries.append({"at": _now().isoformat(), "attempt": 0, "status": None, "body": "dropped"})
            if retry:
                self._later(self._retry(order, body, 0))
            return None
        if scripted is not None and scripted.action == "delay_notify":
            async def delayed() -> None:
                await asyncio.sleep(scripted.seconds)
                await self.deliver(order, body, retry=retry)
            self._later(delayed())
            return None
        return await self.deliver(order, body, retry=retry)

    def _notify_later(self, order: FakeOrder) -> None:
        """Alipay paid the order: its notification goes out in the background."""
        if order.notify_url:
            body = urlencode(self.notification(order)).encode()
            self._later(self.send(order, body, retry=self.notify_retries))

    # ----------------------------------------------------------------- control

    async def control_pay(self, received: Received) -> Answer:
        self.stash(received.script)
        asked = pay_request(received, modes=MODES, default_retry=self.notify_retries)
        if isinstance(asked, Answer):
            return asked
        out_trade_no, mode, times, retry, amount_fen = (asked.out_trade_no, asked.mode, asked.times, asked.retry,
                                                        asked.amount_fen)
        order = self.orders.get(out_trade_no) if out_trade_no is not None else None
        if order is None:
            return Answer({"error": f"no order {out_trade_no!r} (a wap / page / app order exists once its pay URL "
                                    f"or order string is opened)"}, 404)
        try:
            fields = self._control_fields(order, mode, amount_fen)
        except _Refusal as refused:
            return Answer({"error": refused.content["sub_msg"]}, 409)
        body = urlencode(fields).encode()
        retry = retry and mode in GENUINE_MODES
        sent: list[dict[str, Any]] = []
        if mode == "replay":
            answers = await asyncio.gather(*(self.send(order, body, retry=retry) for _ in range(times)))
            sent = [answer for answer in answers if answer is not None]
        else:
            for _ in range(times):
                answer = await self.send(order, body, retry=retry)
                if answer is not None:
                    sent.append(answer)
        return Answer({"out_trade_no": order.out_trade_no, "mode": mode, "sent": sent, "order": order.as_json()})

    def _control_fields(self, order: FakeOrder, mode: str, amount_fen: int | None) -> dict[str, str]:
        if mode in GENUINE_MODES:
            self._pay(order)  # a closed order too: the payer's money was taken as it closed
            return self.notification(order)
        if mode == "forge_signature":
            return self.notification(order, key=self.forger)
        if mode == "other_app":
            return self.notification(order, app_id=OTHER_APP_ID)
        if mode == "wrong_amount":
            other = amount_fen if amount_fen is not None else order.amount_fen - 1 if order.amount_fen > 1 else 2
            return self.notification(order, amount_fen=other)
        fields = self.notification(order)  # tamper_amount: changed after Alipay signed it
        fields["total_amount"] = fen_to_yuan(amount_fen if amount_fen is not None else order.amount_fen * 100)
        return fields

    async def control_orders(self, received: Received) -> Answer:
        self.stash(received.script)
        return Answer({"orders": [order.as_json() for order in self.orders.values()]})

    async def control_settings(self, received: Received) -> Answer:
        self.stash(received.script)
        try:
            asked = received.json()
        except ValueError:
            asked = None
        if not isinstance(asked, dict) or not set(asked) <= {"notify_retries", "notify_retry_scale"}:
            return Answer({"error": "send {\"notify_retries\": bool, \"notify_retry_scale\": number}"}, 400)
        retries, scale = asked.get("notify_retries", self.notify_retries), asked.get("notify_retry_scale",
                                                                                     self.retry_scale)
        if not isinstance(retries, bool) or not isinstance(scale, int | float) or not 0 < scale <= 1:
            return Answer({"error": "notify_retries must be true or false, notify_retry_scale in (0, 1]"}, 400)
        self.notify_retries, self.retry_scale = retries, float(scale)
        return Answer({"notify_retries": self.notify_retries, "notify_retry_scale": self.retry_scale})


_SUCCESS = {"code": "10000", "msg": "Success"}


def _amount(value: Any) -> int:
    try:
        amount = yuan_to_fen(value)
    except ValueError:
        raise _Refusal("ACQ.INVALID_PARAMETER", f"参数无效 (金额 {value!r})") from None
    if not 1 <= amount <= MAX_AMOUNT_FEN:
        raise _Refusal("ACQ.TOTAL_FEE_EXCEED" if amount else "ACQ.INVALID_PARAMETER", "订单金额超过限额或无效")
    return amount


def _base(received: Received) -> str:
    return f"http://{received.headers.get('host', '127.0.0.1')}"


def _bill_row(order: FakeOrder, kind: str, at: datetime, amount: str, out_request_no: str) -> list[str]:
    # Alipay pads its ids with a tab so that spreadsheets keep them as text.
    return [f"{order.trade_no}\t", f"{order.out_trade_no}\t", kind, order.subject, _stamp(order.created_at), _stamp(at),
            "", "", "", "", "159****0000", amount, amount, "0.00", "0.00", "0.00", "0.00", "0.00", "", "0.00", "0.00",
            f"{out_request_no}\t" if out_request_no else "", "0.00", "0.00", ""]


def _page(title: str, content: str, status: int = 200) -> Answer:
    return Answer(f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:28em;margin:2em auto;text-align:center}}
.amount{{font-size:2.4em;margin:.4em}} button{{font-size:1.2em;width:100%;padding:.6em;margin:.3em 0}}
#pay{{background:#1677ff;color:#fff;border:0}}</style></head>
<body><h1>{html.escape(title)}</h1>{content}<p><small>本地支付宝 (测试用, 不涉及真实资金)</small></p></body></html>""",
                  status, media_type="text/html; charset=utf-8")


def fake_app(settings: AlipaySettings) -> Any:
    """The local Alipay's ASGI app (on ``fake_gateway_app``)."""
    fake = FakeAlipay(settings)
    return fake_gateway_app("alipay", [
        FakeRoute("GET", GATEWAY_PATH, fake.openapi),
        FakeRoute("POST", GATEWAY_PATH, fake.openapi),
        FakeRoute("GET", "/qr/{token}", fake.qr),
        FakeRoute("POST", "/cashier/pay", fake.cashier_pay),
        FakeRoute("POST", "/cashier/cancel", fake.cashier_cancel),
        FakeRoute("GET", "/bill/{token}", fake.bill),
        FakeRoute("POST", "/_control/pay", fake.control_pay),
        FakeRoute("GET", "/_control/orders", fake.control_orders),
        FakeRoute("POST", "/_control/settings", fake.control_settings),
    ], actions=ACTIONS)
