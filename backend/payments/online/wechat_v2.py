"""One WeChat Pay API v2 merchant (``api = "v2"`` in the merchants file) with wechatpy 1.8's
``WeChatPay``: XML over HTTPS, every request and answer signed with the merchant's
32-character API key (``sign_type`` MD5, or HMAC-SHA256 when the merchants file says so).

wechatpy signs requests but does not check the signature of answers: :class:`_Client`
adds that (an unsigned or mis-signed ``return_code=SUCCESS`` answer is
``GatewayBadAnswer``) and sends ``sign_type`` for HMAC merchants. A refusal
(``result_code=FAIL``) is ``GatewayRejected`` with ``err_code`` in ``detail``, except
where it is an answer (``USERPAYING``, ``ORDERNOTEXIST``, …).

Refunds and reversals (``secapi/…``) need the merchant's API client certificate in
reality; the merchants file does not carry one yet, so they are sent without it (the
local fake accepts that; WeChat would refuse with a TLS error).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import xmltodict
from wechatpy.exceptions import InvalidSignatureException, WeChatPayException
from wechatpy.pay import WeChatPay
from wechatpy.pay.utils import calculate_signature, calculate_signature_hmac
from wechatpy.utils import random_string

from backend.gateways.errors import GatewayBadAnswer, GatewayError, GatewayRejected, GatewayUnavailable
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
    StatementLine,
    TradeState,
    TradeStatus,
    VerifiedNotification,
)
from backend.payments.online.merchants import WechatMerchant
from backend.payments.online.models import GatewayApi, OrderScene
from backend.payments.online.wechat import (
    BARCODE_DECLINED,
    BARCODE_QUERY,
    CHINA,
    TRADE_STATES,
    TRADE_TYPES,
    WechatSettings,
    china_time,
    fen_of,
    parse_statement,
    parse_time,
)

T = TypeVar("T")
HMAC_SHA256 = "HMAC-SHA256"
# Refund states (refundquery's refund_status_0) as the interface's.
_REFUND_STATES: Mapping[str, GatewayRefundState] = {
    "SUCCESS": GatewayRefundState.succeeded, "PROCESSING": GatewayRefundState.processing,
    "REFUNDCLOSE": GatewayRefundState.failed, "CHANGE": GatewayRefundState.failed,
}


def sign(fields: Mapping[str, Any], api_key: str, sign_type: str = "MD5") -> str:
    """v2's signature of ``fields`` (``sign`` left out; empty values skipped, as WeChat does)."""
    unsigned = {name: value for name, value in fields.items() if name != "sign"}
    if sign_type == HMAC_SHA256:
        return str(calculate_signature_hmac(unsigned, api_key))
    return str(calculate_signature(unsigned, api_key))


def signed_by(fields: Mapping[str, Any], api_key: str, sign_type: str = "MD5") -> bool:
    given = fields.get("sign")
    return isinstance(given, str) and hmac.compare_digest(given, sign(fields, api_key, sign_type))


class _Client(WeChatPay):  # type: ignore[misc]
    """wechatpy's client, sending ``sign_type`` for HMAC merchants and verifying answers."""

    def __init__(self, merchant: WechatMerchant, settings: WechatSettings) -> None:
        # The client certificate (refunds' secapi needs it at WeChat; the local fake does
        # not ask for it): wechatpy sends it with every request once both are set.
        super().__init__(appid=merchant.app_id, api_key=merchant.api_key, mch_id=merchant.mch_id,
                         mch_cert=merchant.client_cert, mch_key=merchant.client_key, timeout=settings.timeout_s)
        self.API_BASE_URL = settings.endpoint + "/"
        self.sign_type = merchant.sign_type

    def _request(self, method: str, url_or_endpoint: str, **kwargs: Any) -> Any:
        data = kwargs.get("data")
        if isinstance(data, dict) and self.sign_type == HMAC_SHA256:
            data.setdefault("sign_type", HMAC_SHA256)
        return super()._request(method, url_or_endpoint, **kwargs)

    def _handle_result(self, res: Any) -> Any:
        res.encoding = "utf-8"
        if res.text.lstrip().startswith("<"):
            try:
                fields = xmltodict.parse(res.text).get("xml") or {}
            except Exception:  # expat's several kinds: not XML after all
                raise GatewayBadAnswer(answer=res.text[:2000], detail="the answer is not XML") from None
            if fields.get("return_code") == "SUCCESS" and not signed_by(fields, self.api_key, self.sign_type):
                raise GatewayBadAnswer(answer=res.text[:2000], detail="the answer's sign does not verify")
        return super()._handle_result(res)


class WechatV2Gateway:
    """One v2 merchant's client (blocking: run it through ``gateway.wechat``)."""

    def __init__(self, merchant: WechatMerchant, settings: WechatSettings) -> None:
        if merchant.api is not GatewayApi.wechat_v2 or not merchant.api_key:
            raise ValueError(f"the WeChat merchant {merchant.name!r} is not a v2 merchant with an API key")
        self._merchant = merchant
        self._api_key: str = merchant.api_key
        self.merchant = MerchantRef(channel=PaymentChannel.wechat, api=GatewayApi.wechat_v2, name=merchant.name,
                                    app_id=merchant.app_id, mch_id=merchant.mch_id)
        self._wx = _Client(merchant, settings)

    def _call(self, call: Callable[[], T], *, answers: frozenset[str] = frozenset()) -> T | dict[str, Any]:
        """Run one wechatpy call; a refusal whose ``err_code`` is in ``answers`` comes back
        as its fields (``err_code`` among them), any other raises."""
        try:
            return call()
        except WeChatPayException as error:
            if error.return_code is not None and error.errcode in answers:
                return {"err_code": error.errcode, "err_code_des": error.errmsg or ""}
            raise _translated(error) from None

    def _sign(self, fields: Mapping[str, Any]) -> str:
        return sign(fields, self._api_key, self._merchant.sign_type)

    def create(self, order: OrderRequest) -> ClientPayload:
        trade_type = TRADE_TYPES.get(order.scene)
        if trade_type is None or order.scene is OrderScene.barcode:
            raise ValueError(f"WeChat has no {order.scene.value} scene (barcode: barcode_pay)")
        if order.scene is OrderScene.jsapi and not order.openid:
            raise ValueError("a jsapi order needs the payer's openid")
        scene_info = {"h5_info": {"type": "Wap", "wap_url": order.return_url or "", "wap_name": order.subject[:32]}} \
            if order.scene is OrderScene.h5 else None
        answer = self._call(lambda: self._wx.order.create(
            trade_type=trade_type, body=order.subject, total_fee=order.amount_fen, notify_url=order.notify_url,
            client_ip=order.client_ip, out_trade_no=order.out_trade_no,
            user_id=order.openid if order.scene is OrderScene.jsapi else None,
            product_id=order.out_trade_no if order.scene is OrderScene.native else None,
            time_start=datetime.now(CHINA), time_expire=china_time(order.expires_at), scene_info=scene_info))
        if order.scene is OrderScene.native:
            return ClientPayload(PayloadKind.code_url, _field(answer, "code_url"))
        if order.scene is OrderScene.h5:
            url = _field(answer, "mweb_url")
            if order.return_url:
                url += ("&" if "?" in url else "?") + "redirect_url=" + quote(order.return_url, safe="")
            return ClientPayload(PayloadKind.pay_url, url)
        prepay_id = _field(answer, "prepay_id")
        timestamp, nonce = str(int(time.time())), random_string(32)
        if order.scene is OrderScene.app:
            params = {"appid": self._merchant.app_id, "partnerid": self._merchant.mch_id, "prepayid": prepay_id,
                      "package": "Sign=WXPay", "noncestr": nonce, "timestamp": timestamp}
            return ClientPayload(PayloadKind.app_params, {**params, "sign": self._sign(params)})
        params = {"appId": self._merchant.app_id, "timeStamp": timestamp, "nonceStr": nonce,
                  "package": f"prepay_id={prepay_id}", "signType": self._merchant.sign_type}
        return ClientPayload(PayloadKind.jsapi, {**params, "paySign": self._sign(params)})

    def barcode_pay(self, order: OrderRequest) -> TradeStatus:
        if not order.auth_code:
            raise ValueError("a barcode payment needs the payer's code")
        try:
            answer = self._wx.micropay.create(body=order.subject, total_fee=order.amount_fen, auth_code=order.auth_code,
                                              client_ip=order.client_ip, out_trade_no=order.out_trade_no)
        except WeChatPayException as error:
            if error.return_code == "SUCCESS" and error.errcode in BARCODE_QUERY:
                return TradeStatus(order.out_trade_no, TradeState.paying, detail=error.errcode)
            if error.return_code != "SUCCESS" or error.errcode not in BARCODE_DECLINED:
                raise _translated(error) from None  # ours (parameters, signature, permissions), not the payer's
            return TradeStatus(order.out_trade_no, TradeState.failed,
                               detail=f"{error.errcode or ''} {error.errmsg or ''}".strip())
        return self._trade_status(order.out_trade_no, answer, trade_state="SUCCESS")

    def query(self, out_trade_no: str) -> TradeStatus:
        answer = self._call(lambda: self._wx.order.query(out_trade_no=out_trade_no),
                            answers=frozenset({"ORDERNOTEXIST"}))
        if answer.get("err_code") == "ORDERNOTEXIST":
            return TradeStatus(out_trade_no, TradeState.not_found, detail="ORDERNOTEXIST")
        return self._trade_status(out_trade_no, answer, trade_state=str(answer.get("trade_state", "")))

    def _trade_status(self, out_trade_no: str, answer: Mapping[str, Any], *, trade_state: str) -> TradeStatus:
        if answer.get("out_trade_no") != out_trade_no or answer.get("mch_id") != self._merchant.mch_id \
                or answer.get("appid") != self._merchant.app_id:
            raise GatewayBadAnswer(answer=dict(answer), detail="the answer is about another order or merchant")
        state = TRADE_STATES.get(trade_state)
        if state is None:
            raise GatewayBadAnswer(answer=dict(answer), detail=f"unknown trade_state {trade_state!r}")
        paid = state is TradeState.paid
        return TradeStatus(out_trade_no, state, trade_no=answer.get("transaction_id") or None,
                           amount_fen=fen_of(answer.get("total_fee"), what="total_fee") if paid else None,
                           paid_at=parse_time(answer.get("time_end")) if paid else None, detail=trade_state)

    def close(self, out_trade_no: str) -> None:
        self._call(lambda: self._wx.order.close(out_trade_no), answers=frozenset({"ORDERCLOSED", "ORDERNOTEXIST"}))

    def cancel(self, out_trade_no: str) -> None:
        for _ in range(3):  # recall=Y: WeChat asks for the reversal to be sent again
            answer = self._call(lambda: self._wx.order.reverse(out_trade_no=out_trade_no),
                                answers=frozenset({"ORDERNOTEXIST", "ORDERREVERSED"}))
            if answer.get("recall") != "Y":
                return
        raise GatewayRejected(detail="reverse still asks for a recall after 3 tries")

    def refund(self, out_trade_no: str, *, out_refund_no: str, amount_fen: int, total_fen: int,
               reason: str) -> RefundResult:
        answer = self._call(lambda: self._wx.refund.apply(total_fee=total_fen, refund_fee=amount_fen,
                                                          out_refund_no=out_refund_no, out_trade_no=out_trade_no,
                                                          refund_desc=reason[:80] or None))
        if answer.get("out_refund_no") != out_refund_no:
            raise GatewayBadAnswer(answer=dict(answer), detail="the answer is about another refund")
        # v2 accepts a refund here; whether it succeeded is refundquery's to say.
        return RefundResult(out_refund_no, GatewayRefundState.processing, refund_id=answer.get("refund_id") or None,
                            amount_fen=fen_of(answer.get("refund_fee"), what="refund_fee"), detail="accepted")

    def query_refund(self, out_trade_no: str, *, out_refund_no: str) -> RefundResult:
        answer = self._call(lambda: self._wx.refund.query(out_refund_no=out_refund_no),
                            answers=frozenset({"REFUNDNOTEXIST"}))
        if answer.get("err_code") == "REFUNDNOTEXIST":
            return RefundResult(out_refund_no, GatewayRefundState.failed, detail="REFUNDNOTEXIST")
        if answer.get("out_trade_no") != out_trade_no or answer.get("out_refund_no_0") != out_refund_no:
            raise GatewayBadAnswer(answer=dict(answer), detail="the answer is about another refund")
        status = str(answer.get("refund_status_0", ""))
        state = _REFUND_STATES.get(status)
        if state is None:
            raise GatewayBadAnswer(answer=dict(answer), detail=f"unknown refund_status_0 {status!r}")
        return RefundResult(out_refund_no, state, refund_id=answer.get("refund_id_0") or None,
                            amount_fen=fen_of(answer.get("refund_fee_0"), what="refund_fee_0"), detail=status)

    def statement(self, day: date) -> list[StatementLine]:
        try:
            answer = self._wx.tools.download_bill(day)
        except WeChatPayException as error:
            if error.return_code == "FAIL" and "no bill exist" in (error.return_msg or "").lower():
                return []  # no trade that day: WeChat makes no statement
            raise _translated(error) from None
        if not isinstance(answer, str):
            raise GatewayBadAnswer(answer=dict(answer), detail="downloadbill answered XML, not a statement")
        return parse_statement(answer)

    # ------------------------------------------------------------------ notifications

    def verify_notification(self, headers: Mapping[str, str], body: bytes) -> VerifiedNotification:
        try:
            document = xmltodict.parse(body)
        except Exception:  # expat's several kinds
            raise NotificationRejected("not an XML body") from None
        fields = document.get("xml") if isinstance(document, dict) else None
        if not isinstance(fields, dict):
            raise NotificationRejected("not a WeChat XML notification")
        out_trade_no = fields.get("out_trade_no") if isinstance(fields.get("out_trade_no"), str) else None
        if self._merchant.sign_type == HMAC_SHA256 or fields.get("sign_type") == HMAC_SHA256:
            if not signed_by(fields, self._api_key, HMAC_SHA256):
                raise NotificationRejected("bad signature", out_trade_no=out_trade_no)
        else:
            try:  # wechatpy's own check (MD5)
                fields = self._wx.parse_payment_result(body)
            except InvalidSignatureException:
                raise NotificationRejected("bad signature", out_trade_no=out_trade_no) from None
            except ValueError:  # total_fee that is not a number, under a valid signature
                raise NotificationRejected("total_fee is not a whole number of fen", out_trade_no=out_trade_no) \
                    from None
        if fields.get("return_code") != "SUCCESS":
            raise NotificationRejected(f"return_code {fields.get('return_code')}", out_trade_no=out_trade_no)
        if fields.get("appid") != self._merchant.app_id:
            raise NotificationRejected(f"app id {fields.get('appid')} is not this merchant's", out_trade_no=out_trade_no)
        if fields.get("mch_id") != self._merchant.mch_id:
            raise NotificationRejected(f"mch id {fields.get('mch_id')} is not this merchant's",
                                       out_trade_no=out_trade_no)
        if not out_trade_no:
            raise NotificationRejected("no out_trade_no")
        try:
            total = fen_of(fields.get("total_fee"), what="total_fee")
            paid_at = parse_time(fields.get("time_end"))
        except GatewayBadAnswer as bad:
            raise NotificationRejected(bad.detail or "malformed", out_trade_no=out_trade_no) from None
        result = str(fields.get("result_code", ""))
        return VerifiedNotification(out_trade_no=out_trade_no, trade_no=str(fields.get("transaction_id", "")),
                                    amount_fen=total, paid=result == "SUCCESS", status=result, paid_at=paid_at,
                                    payer=fields.get("openid") or None)

    def answer(self, accepted: bool) -> NotifyAnswer:
        code, message = ("SUCCESS", "OK") if accepted else ("FAIL", "FAIL")
        body = f"<xml><return_code><![CDATA[{code}]]></return_code><return_msg><![CDATA[{message}]]></return_msg></xml>"
        return NotifyAnswer(200, "application/xml", body.encode())


def _translated(error: WeChatPayException) -> GatewayError:
    """wechatpy's exception as the gateway's typed failure."""
    response = error.response
    text = (getattr(response, "text", "") or "")[:2000]
    if error.return_code is None:  # an HTTP error status
        status = getattr(response, "status_code", 0) or 0
        if status >= 500:
            return GatewayUnavailable(answer=text, detail=f"HTTP {status}")
        return GatewayBadAnswer(answer=text, detail=f"HTTP {status}")
    if error.errcode == "SYSTEMERROR":
        return GatewayUnavailable(answer=text, detail="SYSTEMERROR")
    return GatewayRejected(answer=text, detail=f"{error.return_code} {error.errcode or ''} "
                                               f"{error.errmsg or error.return_msg or ''}".strip())


def _field(answer: Mapping[str, Any], name: str) -> str:
    value = answer.get(name)
    if not isinstance(value, str) or not value:
        raise GatewayBadAnswer(answer=dict(answer), detail=f"the answer has no {name}")
    return value
