"""Alipay (支付宝) behind the one gateway interface: python-alipay-sdk 3.4, RSA2, public key
mode (公钥模式), one :class:`AlipayGateway` per app of the merchants file.

- **Scenes**: ``app`` (the signed order string for the app SDK), ``wap`` / ``page`` (the
  pay URL: the gateway + ``?`` + the signed order string, opened in the payer's browser;
  Alipay learns of the order only then), ``qr`` (``alipay.trade.precreate``: the
  ``qr_code`` the payer scans), ``barcode`` (``alipay.trade.pay`` scene ``bar_code``:
  code ``10003`` means the payer is confirming: query, then cancel at the deadline).
- **Answers**: every synchronous answer's signature is verified over the exact string
  Alipay signed (the SDK does, :meth:`AlipayGateway._call` makes sure nothing unsigned is
  believed): a bad one, an unsigned one or one off the protocol raises
  :class:`GatewayBadAnswer`; a signed refusal :class:`GatewayRejected` with the
  ``sub_code`` in ``detail``. The SDK talks through ``urllib``; its failures are
  translated here into the gateways' typed failures (the client translates ``requests``').
- **Notifications**: a form POST; ``sign`` and ``sign_type`` are taken out, the rest is
  verified with Alipay's public key, then the app id, the amount (parsed exactly) and the
  trade status are read. A partial refund also notifies (``TRADE_SUCCESS`` with
  ``refund_fee``): for an order already paid it is a repeat.
- **Amounts**: Alipay speaks yuan strings (``"12.34"``); :func:`yuan_to_fen` parses them
  exactly (``"12.345"``, ``"1e1"``, ``"-1"`` are refused, never rounded) and
  :func:`fen_to_yuan` writes them.

The endpoint is ``SHUIWU_ALIPAY_URL`` (:class:`AlipaySettings`): Alipay's
``https://openapi.alipay.com/gateway.do`` in production, the sandbox's
``https://openapi-sandbox.dl.alipaydev.com/gateway.do``, and by default the local
gateway (``shuiwu fake-gateway alipay``, :mod:`backend.payments.online.fakes.alipay`).
"""

from __future__ import annotations

import binascii
import csv
import http.client
import io
import re
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

from alipay import AliPay
from alipay.exceptions import AliPayException, AliPayValidationError
from alipay.utils import AliPayConfig
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from backend.gateways.errors import GatewayBadAnswer, GatewayRejected, GatewayTimeout, GatewayUnavailable
from backend.gateways.settings import GatewaySettings
from backend.payments.models import PaymentChannel
from backend.payments.online.gateway import (
    ClientPayload,
    GatewayRefundState,
    MerchantRef,
    NotificationRejected,
    NotifyAnswer,
    OrderRequest,
    PayloadKind,
    RefundResult,
    StatementKind,
    StatementLine,
    TradeState,
    TradeStatus,
    VerifiedNotification,
)
from backend.payments.online.merchants import AlipayMerchant
from backend.payments.online.models import GatewayApi, OrderScene

# The local gateway's port: SHUIWU_ALIPAY_URL's default points there, so the demo and a
# developer's machine need no setting (`shuiwu fake-gateway alipay` listens on it).
FAKE_PORT = 18940
GATEWAY_PATH = "/gateway.do"
DEFAULT_URL = f"http://127.0.0.1:{FAKE_PORT}{GATEWAY_PATH}"
# Alipay's times (gmt_payment, time_expire, the statement) are China time.
CHINA = ZoneInfo("Asia/Shanghai")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
SIGN_TYPE = "RSA2"

SUCCESS = "10000"
USER_PAYING = "10003"  # alipay.trade.pay: the payer is confirming on their phone
UNKNOWN = "20000"  # 服务不可用: the outcome is unknown, ask again
BUSINESS_FAILED = "40004"
TRADE_HAS_SUCCESS = "ACQ.TRADE_HAS_SUCCESS"
TRADE_NOT_EXIST = "ACQ.TRADE_NOT_EXIST"
TRADE_STATUS_ERROR = "ACQ.TRADE_STATUS_ERROR"
SYSTEM_ERROR = "ACQ.SYSTEM_ERROR"
PAID_STATUSES = frozenset({"TRADE_SUCCESS", "TRADE_FINISHED"})
TRADE_STATES: Mapping[str, TradeState] = {
    "WAIT_BUYER_PAY": TradeState.waiting,
    "TRADE_CLOSED": TradeState.closed,
    "TRADE_SUCCESS": TradeState.paid,
    "TRADE_FINISHED": TradeState.paid,
}
# The scenes whose signed order the client opens: the method and Alipay's product code.
_PAGE_METHODS: Mapping[OrderScene, tuple[str, str]] = {
    OrderScene.app: ("alipay.trade.app.pay", "QUICK_MSECURITY_PAY"),
    OrderScene.wap: ("alipay.trade.wap.pay", "QUICK_WAP_WAY"),
    OrderScene.page: ("alipay.trade.page.pay", "FAST_INSTANT_TRADE_PAY"),
}
_YUAN = re.compile(r"(0|[1-9][0-9]{0,15})(?:\.([0-9]{1,2}))?", re.ASCII)  # fullmatch: no trailing newline
_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}", re.ASCII)
# The statement's columns this module reads (支付宝业务明细).
_COL_TRADE_NO, _COL_OUT_TRADE_NO, _COL_KIND = "支付宝交易号", "商户订单号", "业务类型"
_COL_FINISHED, _COL_AMOUNT, _COL_REFUND_NO = "完成时间", "订单金额（元）", "退款批次号/请求号"


class AlipaySettings(GatewaySettings):
    """The ``alipay`` gateway (``SHUIWU_ALIPAY_*``): the endpoint and the bounds. The
    apps' keys are in the merchants file (``SHUIWU_PAYMENTS_CONFIG``), not here. The
    ``fake_*`` settings are the local gateway's only."""

    model_config = SettingsConfigDict(env_prefix="SHUIWU_ALIPAY_", extra="ignore", frozen=True)

    # Alipay's gateway (https://openapi.alipay.com/gateway.do); a URL without a path
    # means its /gateway.do.
    url: str = DEFAULT_URL
    # A barcode payment answers within seconds; a statement download is a small zip.
    timeout_s: float = Field(default=10.0, gt=0, le=60)
    # The local gateway: the merchants file it learns the apps from (unset: the one
    # SHUIWU_PAYMENTS_CONFIG names) and the key it signs with as "Alipay" (unset:
    # fake_alipay_private.pem beside that file, as testkeys.write_test_merchants puts it).
    fake_merchants_file: str | None = None
    fake_private_key_file: str | None = None
    # The local gateway retries a notification not answered `success` on Alipay's
    # schedule (4m, 10m, 10m, 1h, 2h, 6h, 15h) times this scale (tests: 0.001), if on.
    fake_notify_retries: bool = True
    fake_notify_retry_scale: float = Field(default=1.0, gt=0, le=1)

    @property
    def gateway_url(self) -> str:
        """The full gateway.do URL the SDK calls."""
        url = self.url.strip()
        return url.rstrip("/") + GATEWAY_PATH if urlsplit(url).path in ("", "/") else url


# --------------------------------------------------------------------------- amounts


def yuan_to_fen(text: str) -> int:
    """``"12.34"`` -> 1234, exactly; anything else (more than two decimals, a sign, an
    exponent, spaces, a leading zero) raises ValueError."""
    match = _YUAN.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not an amount in yuan: {text!r}")
    return int(match.group(1)) * 100 + int((match.group(2) or "0").ljust(2, "0"))


def fen_to_yuan(fen: int) -> str:
    """1234 -> ``"12.34"`` (fen are never negative here)."""
    if isinstance(fen, bool) or not isinstance(fen, int) or fen < 0:
        raise ValueError(f"not an amount in fen: {fen!r}")
    return f"{fen // 100}.{fen % 100:02d}"


def china_time(text: str | None) -> datetime | None:
    """Alipay's ``2026-12-07 10:00:05`` (China time) as an aware datetime (None: absent)."""
    if not text:
        return None
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=CHINA)


def _china_now() -> str:
    return datetime.now(CHINA).strftime(TIME_FORMAT)


# --------------------------------------------------------------------------- the gateway


class AlipayGateway:
    """One Alipay app's client: the methods of ``OnlineGateway``, each blocking (run
    them through the ``gateway.alipay`` GatewayClient)."""

    def __init__(self, merchant: AlipayMerchant, settings: AlipaySettings) -> None:
        self.merchant = MerchantRef(channel=PaymentChannel.alipay, api=GatewayApi.alipay, name=merchant.name,
                                    app_id=merchant.app_id)
        self.gateway_url = settings.gateway_url
        self.timeout_s = settings.timeout_s
        self._sdk = AliPay(appid=merchant.app_id, app_notify_url=None, app_private_key_string=merchant.private_key,
                           alipay_public_key_string=merchant.alipay_public_key, sign_type=SIGN_TYPE,
                           config=AliPayConfig(timeout=settings.timeout_s))
        # The SDK offers only Alipay's production or sandbox gateway; its attribute is the way.
        self._sdk._gateway = self.gateway_url

    # ----------------------------------------------------------------- orders

    def create(self, order: OrderRequest) -> ClientPayload:
        biz: dict[str, Any] = {"out_trade_no": order.out_trade_no, "total_amount": fen_to_yuan(order.amount_fen),
                               "subject": order.subject[:128],
                               "time_expire": order.expires_at.astimezone(CHINA).strftime(TIME_FORMAT)}
        if order.scene is OrderScene.qr:
            answer = self._call("alipay.trade.precreate", biz, notify_url=order.notify_url)
            qr_code = answer.get("qr_code")
            if not isinstance(qr_code, str) or not qr_code:
                raise GatewayBadAnswer(answer=answer, detail="precreate answered no qr_code")
            return ClientPayload(PayloadKind.code_url, qr_code)
        if order.scene not in _PAGE_METHODS:
            raise ValueError(f"Alipay has no scene {order.scene} to create (a barcode payment is barcode_pay)")
        method, product_code = _PAGE_METHODS[order.scene]
        biz["product_code"] = product_code
        if order.scene is OrderScene.wap and order.return_url:
            biz["quit_url"] = order.return_url  # where 取消 on Alipay's page goes back to
        # Signed by the SDK as its api_alipay_trade_*_pay do, with China's time stamp.
        signed = self._sdk.sign_data(self._sdk.build_body(
            method, biz, notify_url=order.notify_url, return_url=None if order.scene is OrderScene.app else order.return_url,
            timestamp=_china_now()))
        if order.scene is OrderScene.app:
            return ClientPayload(PayloadKind.order_string, signed)
        return ClientPayload(PayloadKind.pay_url, f"{self.gateway_url}?{signed}")

    def barcode_pay(self, order: OrderRequest) -> TradeStatus:
        if not order.auth_code:
            raise ValueError("a barcode payment needs the payer's code (auth_code)")
        biz = {"out_trade_no": order.out_trade_no, "scene": "bar_code", "auth_code": order.auth_code,
               "subject": order.subject[:128], "total_amount": fen_to_yuan(order.amount_fen),
               "time_expire": order.expires_at.astimezone(CHINA).strftime(TIME_FORMAT)}
        answer = self._call("alipay.trade.pay", biz, notify_url=order.notify_url,
                            accept=(SUCCESS, USER_PAYING, UNKNOWN, BUSINESS_FAILED))
        code, sub_code = answer.get("code"), answer.get("sub_code", "")
        if sub_code == TRADE_HAS_SUCCESS:  # paid by an earlier attempt of this very order
            return self.query(order.out_trade_no)
        if code == BUSINESS_FAILED and sub_code != SYSTEM_ERROR:
            # Declined (a bad or expired code, not enough balance, a risk refusal): the payer did not pay.
            return TradeStatus(order.out_trade_no, TradeState.failed, detail=str(sub_code))
        if code == SUCCESS:
            return self._paid(order.out_trade_no, answer, "TRADE_SUCCESS", paid_at=answer.get("gmt_payment"))
        if code == USER_PAYING:
            return TradeStatus(order.out_trade_no, TradeState.paying, trade_no=answer.get("trade_no"),
                               detail="USERPAYING")
        # 20000 / ACQ.SYSTEM_ERROR: the outcome is unknown: the caller queries, then cancels.
        return TradeStatus(order.out_trade_no, TradeState.paying, detail=sub_code or str(code))

    def query(self, out_trade_no: str) -> TradeStatus:
        answer = self._call("alipay.trade.query", {"out_trade_no": out_trade_no},
                            passing=frozenset({TRADE_NOT_EXIST}))
        if answer.get("sub_code") == TRADE_NOT_EXIST:
            return TradeStatus(out_trade_no, TradeState.not_found, detail=TRADE_NOT_EXIST)
        self._same_trade(out_trade_no, answer)
        status = answer.get("trade_status")
        state = TRADE_STATES.get(status) if isinstance(status, str) else None
        if state is None:
            raise GatewayBadAnswer(answer=answer, detail=f"unknown trade_status {status!r}")
        if state is TradeState.paid:
            return self._paid(out_trade_no, answer, str(status), paid_at=answer.get("send_pay_date"))
        return TradeStatus(out_trade_no, state, trade_no=answer.get("trade_no"), detail=str(status))

    def close(self, out_trade_no: str) -> None:
        answer = self._call("alipay.trade.close", {"out_trade_no": out_trade_no},
                            passing=frozenset({TRADE_NOT_EXIST, TRADE_STATUS_ERROR}))
        if answer.get("sub_code") == TRADE_STATUS_ERROR:
            # Closed already (fine) or paid (not closable: the caller must know): ask.
            status = self.query(out_trade_no)
            if status.state is not TradeState.closed:
                raise GatewayRejected(answer=answer, detail=f"{TRADE_STATUS_ERROR}: the trade is {status.state}")

    def cancel(self, out_trade_no: str) -> None:
        answer = self._call("alipay.trade.cancel", {"out_trade_no": out_trade_no},
                            passing=frozenset({TRADE_NOT_EXIST}), retrying=True)
        if answer.get("code") == SUCCESS and answer.get("retry_flag") == "Y":
            raise GatewayUnavailable(answer=answer, detail="cancel answered retry_flag Y", maybe_done=True)

    # ----------------------------------------------------------------- refunds

    def refund(self, out_trade_no: str, *, out_refund_no: str, amount_fen: int, total_fen: int,
               reason: str) -> RefundResult:
        biz = {"out_trade_no": out_trade_no, "refund_amount": fen_to_yuan(amount_fen),
               "out_request_no": out_refund_no, "refund_reason": reason[:256]}
        answer = self._call("alipay.trade.refund", biz, accept=(SUCCESS, UNKNOWN), passing=frozenset({SYSTEM_ERROR}))
        if answer.get("code") != SUCCESS:
            # The outcome is unknown: query_refund says (the same out_request_no is idempotent).
            return RefundResult(out_refund_no, GatewayRefundState.processing,
                                detail=str(answer.get("sub_code") or answer.get("code")))
        self._same_trade(out_trade_no, answer)
        return RefundResult(out_refund_no, GatewayRefundState.succeeded, refund_id=answer.get("trade_no"),
                            amount_fen=amount_fen, detail=f"fund_change {answer.get('fund_change', '')}".strip())

    def query_refund(self, out_trade_no: str, *, out_refund_no: str) -> RefundResult:
        biz = {"out_trade_no": out_trade_no, "out_request_no": out_refund_no, "query_options": ["gmt_refund_pay"]}
        answer = self._call("alipay.trade.fastpay.refund.query", biz, passing=frozenset({TRADE_NOT_EXIST}))
        refund_status = answer.get("refund_status")
        # Alipay: an answer naming the refund with no status, or REFUND_SUCCESS, is a refund
        # made; one that names none was not made (refunding again with the same number is safe).
        if answer.get("refund_amount") and refund_status in (None, "", "REFUND_SUCCESS"):
            if answer.get("out_request_no") not in (None, out_refund_no):
                raise GatewayBadAnswer(answer=answer, detail="the answer is about another refund")
            return RefundResult(out_refund_no, GatewayRefundState.succeeded, refund_id=answer.get("trade_no"),
                                amount_fen=self._fen(answer, "refund_amount"), detail="REFUND_SUCCESS")
        return RefundResult(out_refund_no, GatewayRefundState.failed,
                            detail=str(answer.get("sub_code") or refund_status or "no such refund"))

    # ----------------------------------------------------------------- the statement

    def statement(self, day: date) -> list[StatementLine]:
        answer = self._call("alipay.data.dataservice.bill.downloadurl.query",
                            {"bill_type": "trade", "bill_date": day.isoformat()})
        url = answer.get("bill_download_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise GatewayBadAnswer(answer=answer, detail="no bill_download_url")
        archive = self._fetch(url)
        try:
            return parse_statement(archive)
        except (zipfile.BadZipFile, ValueError, KeyError) as error:
            raise GatewayBadAnswer(answer=archive[:2000].decode("latin-1"),
                                   detail=f"the statement cannot be read: {error}") from None

    # ----------------------------------------------------------------- notifications

    def verify_notification(self, headers: Mapping[str, str], body: bytes) -> VerifiedNotification:
        fields = notification_fields(headers, body)
        sign, sign_type = fields.pop("sign", ""), fields.pop("sign_type", "")
        out_trade_no = fields.get("out_trade_no") or None
        if not sign:
            raise NotificationRejected("no signature", out_trade_no=out_trade_no)
        if sign_type != SIGN_TYPE:
            raise NotificationRejected(f"sign_type {sign_type!r} is not {SIGN_TYPE}", out_trade_no=out_trade_no)
        try:
            verified = self._sdk.verify(dict(fields), sign)
        except (ValueError, TypeError, binascii.Error, AliPayException):
            verified = False
        if not verified:
            raise NotificationRejected("bad signature", out_trade_no=out_trade_no)
        if fields.get("app_id") != self.merchant.app_id:
            raise NotificationRejected(f"app id {fields.get('app_id')} is not this merchant's",
                                       out_trade_no=out_trade_no)
        missing = [name for name in ("out_trade_no", "trade_no", "total_amount", "trade_status") if not fields.get(name)]
        if missing:
            raise NotificationRejected(f"missing {', '.join(missing)}", out_trade_no=out_trade_no)
        assert out_trade_no is not None
        try:
            amount_fen = yuan_to_fen(fields["total_amount"])
            paid_at = china_time(fields.get("gmt_payment"))
        except ValueError as error:
            raise NotificationRejected(f"bad value: {error}", out_trade_no=out_trade_no) from None
        status = fields["trade_status"]
        return VerifiedNotification(out_trade_no=out_trade_no, trade_no=fields["trade_no"], amount_fen=amount_fen,
                                    paid=status in PAID_STATUSES, status=status, paid_at=paid_at,
                                    payer=fields.get("buyer_id") or fields.get("buyer_open_id") or None)

    def answer(self, accepted: bool) -> NotifyAnswer:
        # Alipay retries until it reads exactly `success`.
        return NotifyAnswer(200, "text/plain", b"success" if accepted else b"failure")

    # ----------------------------------------------------------------- the wire

    def _call(self, method: str, biz: Mapping[str, Any], *, accept: tuple[str, ...] = (SUCCESS,),
              passing: frozenset[str] = frozenset(), retrying: bool = False, **common: Any) -> dict[str, Any]:
        """Call ``method``; the verified answer's content when its code is in ``accept``
        or its ``sub_code`` in ``passing`` (refusals the caller reads as a state).
        ``retrying``: a refusal with ``retry_flag`` Y is worth asking again (unavailable)."""
        # Alipay reads the time stamp as China time (the SDK writes the host's local time).
        data = self._sdk.build_body(method, dict(biz), timestamp=_china_now(), **common)
        response_type = method.replace(".", "_") + "_response"
        raw = self._fetch(f"{self.gateway_url}?{self._sdk.sign_data(data)}").decode("utf-8", "replace")
        try:
            # The SDK verifies the signature over the exact string Alipay signed, and
            # refuses an unsigned answer or an error_response (AliPayException).
            content = self._sdk._verify_and_return_sync_response(raw, response_type)
        except AliPayValidationError:
            raise GatewayBadAnswer(answer=raw, detail="the answer's signature does not verify") from None
        except AliPayException as refused:
            raise GatewayBadAnswer(answer=raw, detail=f"an unsigned or error answer: {refused}") from None
        except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as error:
            raise GatewayBadAnswer(answer=raw, detail=f"not an Alipay answer: {type(error).__name__}: {error}") from None
        if not isinstance(content, dict) or not isinstance(content.get("code"), str):
            raise GatewayBadAnswer(answer=raw, detail="the answer has no code")
        code, sub_code = content["code"], content.get("sub_code")
        if code in accept or sub_code in passing:
            return content
        if retrying and content.get("retry_flag") == "Y":
            raise GatewayUnavailable(answer=raw, detail=f"{sub_code or code} (retry_flag Y)", maybe_done=True)
        raise GatewayRejected(answer=raw, detail=str(sub_code or code))

    def _fetch(self, url: str) -> bytes:
        """GET ``url`` within the timeout (the SDK's transport, urllib), its failures typed."""
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as error:
            answer = error.read()[:2000].decode("utf-8", "replace")
            if error.code >= 500:
                raise GatewayUnavailable(answer=answer, detail=f"HTTP {error.code}", maybe_done=True) from None
            raise GatewayBadAnswer(answer=answer, detail=f"HTTP {error.code}") from None
        except urllib.error.URLError as error:
            # No connection was made (refused, no route, connect timeout): nothing was sent.
            if isinstance(error.reason, TimeoutError):
                raise GatewayTimeout(detail=f"connect: {error.reason}", maybe_done=False) from None
            raise GatewayUnavailable(detail=f"{error.reason}", maybe_done=False) from None
        except TimeoutError as error:
            raise GatewayTimeout(detail=f"no answer within {self.timeout_s:g}s: {error}") from None
        except (http.client.HTTPException, ConnectionError) as error:
            raise GatewayUnavailable(detail=f"{type(error).__name__}: {error}", maybe_done=True) from None

    def _same_trade(self, out_trade_no: str, answer: Mapping[str, Any]) -> None:
        if answer.get("out_trade_no") not in (None, out_trade_no):
            raise GatewayBadAnswer(answer=dict(answer), detail=f"the answer is about {answer.get('out_trade_no')!r}")

    def _fen(self, answer: Mapping[str, Any], key: str) -> int:
        try:
            return yuan_to_fen(answer.get(key))  # type: ignore[arg-type]
        except ValueError as error:
            raise GatewayBadAnswer(answer=dict(answer), detail=f"{key}: {error}") from None

    def _paid(self, out_trade_no: str, answer: Mapping[str, Any], status: str, *, paid_at: Any) -> TradeStatus:
        self._same_trade(out_trade_no, answer)
        try:
            when = china_time(paid_at) if isinstance(paid_at, str) else None
        except ValueError:
            raise GatewayBadAnswer(answer=dict(answer), detail=f"bad time {paid_at!r}") from None
        trade_no = answer.get("trade_no")
        if not isinstance(trade_no, str) or not trade_no:
            raise GatewayBadAnswer(answer=dict(answer), detail="a paid trade without trade_no")
        return TradeStatus(out_trade_no, TradeState.paid, trade_no=trade_no, amount_fen=self._fen(answer, "total_amount"),
                           paid_at=when, detail=status)


# --------------------------------------------------------------------------- parsing


def notification_fields(headers: Mapping[str, str], body: bytes) -> dict[str, str]:
    """A notification's form fields, parsed strictly: UTF-8, ``name=value`` pairs joined by
    ``&``, each name once; anything else raises :class:`NotificationRejected`."""
    content_type = next((value for name, value in headers.items() if name.lower() == "content-type"), "")
    if content_type and not content_type.lower().startswith("application/x-www-form-urlencoded"):
        raise NotificationRejected(f"not a form body ({content_type.split(';')[0]})")
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise NotificationRejected("not a form body") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if not _FIELD_NAME.fullmatch(name) or name in fields:
            raise NotificationRejected("not a form body" if not _FIELD_NAME.fullmatch(name) else f"field {name} twice")
        fields[name] = value
    return fields


def parse_statement(archive: bytes) -> list[StatementLine]:
    """Payments and refunds of Alipay's statement zip (``业务明细``: GBK CSV, ``#`` lines
    around a table, values padded with tabs). The summary file beside it is skipped."""
    with zipfile.ZipFile(io.BytesIO(archive)) as bundle:
        for member in bundle.infolist():
            raw = bundle.read(member)
            try:
                text = raw.decode("gbk")
            except UnicodeDecodeError:
                text = raw.decode("utf-8-sig")
            lines = _statement_lines(text)
            if lines is not None:
                return lines
    raise ValueError("no 业务明细 table in the statement")


def _statement_lines(text: str) -> list[StatementLine] | None:
    rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(text))
            if row and not row[0].lstrip().startswith("#")]
    header = next((index for index, row in enumerate(rows) if _COL_TRADE_NO in row and _COL_OUT_TRADE_NO in row), None)
    if header is None:
        return None
    columns = {name: position for position, name in enumerate(rows[header])}
    lines = []
    for row in rows[header + 1:]:
        if len(row) < len(columns):
            continue
        kind = {"交易": StatementKind.payment, "退款": StatementKind.refund}.get(row[columns[_COL_KIND]])
        if kind is None:
            continue
        amount = row[columns[_COL_AMOUNT]]
        at = china_time(row[columns[_COL_FINISHED]])
        if at is None:
            raise ValueError(f"a line without {_COL_FINISHED}: {row}")
        lines.append(StatementLine(kind=kind, out_trade_no=row[columns[_COL_OUT_TRADE_NO]],
                                   trade_no=row[columns[_COL_TRADE_NO]], amount_fen=yuan_to_fen(amount.lstrip("-")),
                                   at=at, out_refund_no=(row[columns[_COL_REFUND_NO]] or None)
                                   if kind is StatementKind.refund else None))
    return lines

