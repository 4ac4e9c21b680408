"""One interface over Alipay and WeChat Pay (v2 and v3): what the orders, notifications,
refunds and reconciliation code calls, whichever merchant an order was made with.

An :class:`OnlineGateway` is one merchant's client (``alipay.py``, ``wechat_v2.py``,
``wechat_v3.py``, each built from its entry in the merchants file by
:func:`backend.payments.online.merchants.gateway_for`). Its methods **block** (the SDKs
use ``requests``): callers run them through the channel's
:class:`backend.gateways.client.GatewayClient` (the service ``gateway.alipay`` /
``gateway.wechat``), which bounds time and threads and keeps every exchange
(docs/gateways.md), e.g.::

    client = runtime.service("gateway.alipay")
    status = await client.call("query", gateway.query, out_trade_no, request={...}, reference=out_trade_no)

Money crosses this interface in fen only: each implementation converts to and from its
protocol (Alipay's ``"12.34"`` yuan strings, parsed exactly — ``"12.345"`` or ``"1e1"`` is
a bad answer, never rounded; WeChat's integer ``total_fee`` / ``amount.total``).

Failures: an answer that fails its signature or protocol raises
``backend.gateways.errors.GatewayBadAnswer``; a correctly signed refusal
``GatewayRejected`` (with the gateway's code in ``detail``); transport errors are
translated by the client. A notification that fails verification raises
:class:`NotificationRejected` with the reason stored on the notification row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Protocol

from backend.payments.models import PaymentChannel
from backend.payments.online.models import GatewayApi, OrderScene


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """What a gateway needs to open an order (or take a barcode payment)."""

    out_trade_no: str
    amount_fen: int
    subject: str  # 商品描述, at most 128 characters
    scene: OrderScene
    notify_url: str  # absolute: the public base URL + the channel's notify route
    expires_at: datetime
    client_ip: str = "127.0.0.1"  # WeChat requires one (never let wechatpy look it up)
    return_url: str | None = None  # wap / page / h5: where the payer's browser goes after paying
    openid: str | None = None  # jsapi: the payer's openid for the merchant's app id
    auth_code: str | None = None  # barcode: the payer's payment code the cashier scanned


class PayloadKind(StrEnum):
    """What a client gets back to pay with."""

    order_string = "order_string"  # Alipay app: the signed order string for the app SDK
    pay_url = "pay_url"  # Alipay wap / page, WeChat h5 (mweb_url): open it in the browser
    jsapi = "jsapi"  # WeChat jsapi: the parameters for WeixinJSBridge / wx.requestPayment
    app_params = "app_params"  # WeChat app: the parameters for the app SDK
    code_url = "code_url"  # Alipay qr, WeChat native: show it as a QR code
    none = "none"  # barcode: nothing to show, the payment is taken


@dataclass(frozen=True, slots=True)
class ClientPayload:
    kind: PayloadKind
    # The URL or string (pay_url, code_url, order_string), or the parameters (jsapi, app_params).
    value: str | Mapping[str, str]

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "value": self.value if isinstance(self.value, str) else dict(self.value)}


class TradeState(StrEnum):
    """An order as the gateway sees it."""

    not_found = "not_found"  # never opened there (or not yet: Alipay's precreate before a scan)
    waiting = "waiting"  # opened, not paid (WAIT_BUYER_PAY / NOTPAY)
    paying = "paying"  # barcode: the payer is entering their password (USERPAYING)
    paid = "paid"  # TRADE_SUCCESS / TRADE_FINISHED / SUCCESS
    closed = "closed"  # TRADE_CLOSED / CLOSED / REVOKED (a fully refunded Alipay trade reads closed too)
    failed = "failed"  # PAYERROR: declined


@dataclass(frozen=True, slots=True)
class TradeStatus:
    out_trade_no: str
    state: TradeState
    trade_no: str | None = None  # the gateway's transaction id
    amount_fen: int | None = None  # what the payer paid (paid only)
    paid_at: datetime | None = None
    detail: str = ""  # the gateway's own status text, for the log and the order's ``failure``


@dataclass(frozen=True, slots=True)
class VerifiedNotification:
    """A notification whose signature verified and whose app id / merchant id are this
    merchant's. The caller still checks the order exists, the amount, and ``paid``."""

    out_trade_no: str
    trade_no: str
    amount_fen: int
    paid: bool  # the trade status says paid (TRADE_SUCCESS / TRADE_FINISHED / SUCCESS)
    status: str  # the trade status as the gateway wrote it
    paid_at: datetime | None = None
    payer: str | None = None  # buyer_id / openid, kept for the payment's record


class NotificationRejected(Exception):
    """A notification failed verification; ``reason`` is stored on its row (English,
    short: 'bad signature', 'app id 2021… is not this merchant's', 'not a form body')."""

    def __init__(self, reason: str, *, out_trade_no: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.out_trade_no = out_trade_no


@dataclass(frozen=True, slots=True)
class NotifyAnswer:
    """What the notify route answers: ``success`` / ``<xml>SUCCESS</xml>`` / ``{}`` 200 after
    commit when accepted (or a repeat); the protocol's failure otherwise (the platform
    retries)."""

    status: int
    media_type: str
    body: bytes


class GatewayRefundState(StrEnum):
    succeeded = "succeeded"
    processing = "processing"  # WeChat: asked, not done yet; query later
    failed = "failed"


@dataclass(frozen=True, slots=True)
class RefundResult:
    out_refund_no: str
    state: GatewayRefundState
    refund_id: str | None = None  # the gateway's id of the refund
    amount_fen: int | None = None
    detail: str = ""


class StatementKind(StrEnum):
    payment = "payment"
    refund = "refund"


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One line of the gateway's statement of a day (对账单)."""

    kind: StatementKind
    out_trade_no: str
    trade_no: str
    amount_fen: int  # positive for both kinds
    at: datetime
    out_refund_no: str | None = None


@dataclass(frozen=True, slots=True)
class MerchantRef:
    """Which merchant a gateway object is: the channel, the protocol and its name in the
    merchants file (stored on every order)."""

    channel: PaymentChannel
    api: GatewayApi
    name: str
    app_id: str
    mch_id: str | None = None  # WeChat only
    extra: Mapping[str, str] = field(default_factory=dict)


class OnlineGateway(Protocol):
    """One merchant's client. Every method blocks (run it through the GatewayClient)."""

    merchant: MerchantRef

    def create(self, order: OrderRequest) -> ClientPayload:
        """Open the order for its scene and return what the client pays with. Barcode
        scenes use :meth:`barcode_pay` instead."""
        ...

    def barcode_pay(self, order: OrderRequest) -> TradeStatus:
        """Take a payment with the payer's code (``order.auth_code``): ``paid``,
        ``paying`` (the payer is confirming: query until paid or the deadline, then
        :meth:`cancel`) or ``failed``."""
        ...

    def query(self, out_trade_no: str) -> TradeStatus:
        ...

    def close(self, out_trade_no: str) -> None:
        """Close an unpaid order at the gateway (a closed or never-opened one is fine)."""
        ...

    def cancel(self, out_trade_no: str) -> None:
        """撤销 a barcode payment that did not finish (Alipay trade.cancel, WeChat reverse /
        v3 close): refunds it if the payer paid after all."""
        ...

    def refund(self, out_trade_no: str, *, out_refund_no: str, amount_fen: int, total_fen: int,
               reason: str) -> RefundResult:
        ...

    def query_refund(self, out_trade_no: str, *, out_refund_no: str) -> RefundResult:
        ...

    def statement(self, day: date) -> list[StatementLine]:
        """The day's statement (China time): payments and refunds of this merchant."""
        ...

    def verify_notification(self, headers: Mapping[str, str], body: bytes) -> VerifiedNotification:
        """Verify a notification posted to this channel's notify route; raises
        :class:`NotificationRejected`."""
        ...

    def answer(self, accepted: bool) -> NotifyAnswer:
        ...
