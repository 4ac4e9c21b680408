"""One WeChat Pay API v3 merchant (``api = "v3"`` in the merchants file) with
``wechatpayv3`` in platform public key mode (公钥模式: ``public_key`` /
``public_key_id``; no platform certificates are downloaded).

Every request is signed with the merchant's API certificate key (``Authorization:
WECHATPAY2-SHA256-RSA2048 …``); every 2xx answer's ``Wechatpay-Signature`` is verified
by the SDK with WeChat Pay's public key (a bad one is ``GatewayBadAnswer``). Refusals
come as 4xx JSON ``{"code", "message"}`` (``GatewayRejected``, the code in ``detail``),
server errors as 5xx (``GatewayUnavailable``).

Notifications (``/pay/wechat/v3/notify``): the headers' RSA signature over
``timestamp\\nnonce\\nbody\\n`` is verified with the platform public key, then the
``resource`` is decrypted with the API v3 key (AES-256-GCM), then app id, merchant id,
``trade_state`` and ``amount.total`` are read. The answer is 200 ``{}`` when accepted
(after commit), else 500 ``{"code": "FAIL", "message": …}`` so WeChat sends it again.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any
from urllib.parse import quote

from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3.utils import aes_decrypt

from backend.gateways.errors import GatewayBadAnswer, GatewayRejected, GatewayUnavailable
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
from backend.payments.online.wechat import TRADE_STATES, WechatSettings, china_time, fen_of, parse_statement, parse_time

_PAY_TYPES: Mapping[OrderScene, WeChatPayType] = {
    OrderScene.app: WeChatPayType.APP, OrderScene.h5: WeChatPayType.H5, OrderScene.jsapi: WeChatPayType.JSAPI,
    OrderScene.native: WeChatPayType.NATIVE,
}
# Refund states (v3 refunds' `status`) as the interface's.
_REFUND_STATES: Mapping[str, GatewayRefundState] = {
    "SUCCESS": GatewayRefundState.succeeded, "PROCESSING": GatewayRefundState.processing,
    "CLOSED": GatewayRefundState.failed, "ABNORMAL": GatewayRefundState.failed,
}
# A close or cancel of an order in these states has nothing left to do.
_ALREADY_CLOSED = frozenset({"ORDER_CLOSED", "ORDER_NOT_EXIST", "ORDERNOTEXIST", "ORDER_REVERSED"})
_SIGNATURE_FAILED = "failed to verify the signature"  # what wechatpayv3 raises on a bad answer signature


class WechatV3Gateway:
    """One v3 merchant's client (blocking: run it through ``gateway.wechat``)."""

    def __init__(self, merchant: WechatMerchant, settings: WechatSettings) -> None:
        if merchant.api is not GatewayApi.wechat_v3:
            raise ValueError(f"the WeChat merchant {merchant.name!r} speaks {merchant.api.value}, not v3")
        self._merchant = merchant
        self._settings = settings
        self.merchant = MerchantRef(channel=PaymentChannel.wechat, api=GatewayApi.wechat_v3, name=merchant.name,
                                    app_id=merchant.app_id, mch_id=merchant.mch_id)
        self._sdk = WeChatPay(wechatpay_type=WeChatPayType.NATIVE, mchid=merchant.mch_id,
                              private_key=merchant.private_key, cert_serial_no=merchant.cert_serial_no,
                              appid=merchant.app_id, apiv3_key=merchant.api_v3_key, timeout=settings.timeout_s,
                              public_key=merchant.platform_public_key, public_key_id=merchant.platform_public_key_id)
        # The SDK's base URL (its `gateway`): the fake in tests and the demo.
        self._sdk._core._gate_way = settings.endpoint

    # ------------------------------------------------------------------ calls

    def _call(self, call: Callable[[], tuple[int, Any]], *, accept: frozenset[str] = frozenset()) -> tuple[int, Any]:
        """Run one SDK request: 2xx answers come back verified; a 4xx refusal whose code is in
        ``accept`` comes back too (the caller reads it), any other is ``GatewayRejected``."""
        try:
            status, text = call()
        except Exception as error:
            if str(error) == _SIGNATURE_FAILED:
                raise GatewayBadAnswer(detail="the answer's Wechatpay-Signature does not verify") from None
            raise
        if 200 <= status < 300:
            return status, text
        if status >= 500:
            raise GatewayUnavailable(answer=_text(text), detail=f"HTTP {status}")
        refusal = _json(text) if text else {}
        code = str(refusal.get("code", "")) if isinstance(refusal, dict) else ""
        if code in accept:
            return status, refusal
        raise GatewayRejected(answer=_text(text), detail=f"HTTP {status} {code} {refusal.get('message', '')}".strip())

    def create(self, order: OrderRequest) -> ClientPayload:
        pay_type = _PAY_TYPES.get(order.scene)
        if pay_type is None:
            raise ValueError(f"WeChat has no {order.scene.value} scene (barcode: barcode_pay)")
        scene_info: dict[str, Any] = {"payer_client_ip": order.client_ip}
        if order.scene is OrderScene.h5:
            scene_info["h5_info"] = {"type": "Wap"}
        if order.scene is OrderScene.jsapi and not order.openid:
            raise ValueError("a jsapi order needs the payer's openid")
        _, text = self._call(lambda: self._sdk.pay(
            description=order.subject, out_trade_no=order.out_trade_no,
            amount={"total": order.amount_fen, "currency": "CNY"},
            payer={"openid": order.openid} if order.scene is OrderScene.jsapi else None,
            time_expire=china_time(order.expires_at).isoformat(timespec="seconds"), scene_info=scene_info,
            notify_url=order.notify_url, pay_type=pay_type))
        answer = _json(text)
        if order.scene is OrderScene.native:
            return ClientPayload(PayloadKind.code_url, _field(answer, "code_url"))
        if order.scene is OrderScene.h5:
            url = _field(answer, "h5_url")
            if order.return_url:
                url += ("&" if "?" in url else "?") + "redirect_url=" + quote(order.return_url, safe="")
            return ClientPayload(PayloadKind.pay_url, url)
        prepay_id = _field(answer, "prepay_id")
        timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
        if order.scene is OrderScene.app:
            # The app SDK's PayReq: signed appid\ntimestamp\nnoncestr\nprepayid\n.
            return ClientPayload(PayloadKind.app_params, {
                "appid": self._merchant.app_id, "partnerid": self._merchant.mch_id, "prepayid": prepay_id,
                "package": "Sign=WXPay", "noncestr": nonce, "timestamp": timestamp,
                "sign": self._sdk.sign([self._merchant.app_id, timestamp, nonce, prepay_id])})
        package = f"prepay_id={prepay_id}"
        return ClientPayload(PayloadKind.jsapi, {
            "appId": self._merchant.app_id, "timeStamp": timestamp, "nonceStr": nonce, "package": package,
            "signType": "RSA", "paySign": self._sdk.sign([self._merchant.app_id, timestamp, nonce, package])})

    def barcode_pay(self, order: OrderRequest) -> TradeStatus:
        if not order.auth_code:
            raise ValueError("a barcode payment needs the payer's code")
        try:
            status, text = self._call(lambda: self._sdk.pay(
                description=order.subject, out_trade_no=order.out_trade_no,
                amount={"total": order.amount_fen, "currency": "CNY"}, payer={"auth_code": order.auth_code},
                scene_info={"store_info": {"out_id": "counter"}, "device_ip": order.client_ip},
                pay_type=WeChatPayType.CODEPAY))
        except GatewayRejected as refused:
            # The payer's code was refused (expired, not enough money, …): declined, not an error.
            return TradeStatus(order.out_trade_no, TradeState.failed, detail=refused.detail or "")
        answer = _json(text) if text else {}
        if status == 202 or answer.get("code") == "USERPAYING" or answer.get("trade_state") == "USERPAYING":
            return TradeStatus(order.out_trade_no, TradeState.paying, detail="USERPAYING")
        return self._trade_status(order.out_trade_no, answer)

    def query(self, out_trade_no: str) -> TradeStatus:
        status, text = self._call(lambda: self._sdk.query(out_trade_no=out_trade_no),
                                  accept=frozenset({"ORDER_NOT_EXIST", "ORDERNOTEXIST"}))
        if status >= 400:
            return TradeStatus(out_trade_no, TradeState.not_found, detail="ORDER_NOT_EXIST")
        return self._trade_status(out_trade_no, _json(text))

    def _trade_status(self, out_trade_no: str, answer: Mapping[str, Any]) -> TradeStatus:
        if answer.get("out_trade_no") != out_trade_no or answer.get("mchid") != self._merchant.mch_id:
            raise GatewayBadAnswer(answer=dict(answer), detail="the answer is about another order or merchant")
        trade_state = str(answer.get("trade_state", ""))
        state = TRADE_STATES.get(trade_state)
        if state is None:
            raise GatewayBadAnswer(answer=dict(answer), detail=f"unknown trade_state {trade_state!r}")
        amount = answer.get("amount") or {}
        paid = state is TradeState.paid
        return TradeStatus(out_trade_no, state, trade_no=answer.get("transaction_id") or None,
                           amount_fen=fen_of(amount.get("total"), what="amount.total") if paid else None,
                           paid_at=parse_time(answer.get("success_time")) if paid else None, detail=trade_state)

    def close(self, out_trade_no: str) -> None:
        self._call(lambda: self._sdk.close(out_trade_no), accept=_ALREADY_CLOSED)

    def cancel(self, out_trade_no: str) -> None:
        self._call(lambda: self._sdk.codepay_reverse(out_trade_no), accept=_ALREADY_CLOSED)

    def refund(self, out_trade_no: str, *, out_refund_no: str, amount_fen: int, total_fen: int,
               reason: str) -> RefundResult:
        _, text = self._call(lambda: self._sdk.refund(
            out_refund_no=out_refund_no, out_trade_no=out_trade_no, reason=reason[:80] or None,
            amount={"refund": amount_fen, "total": total_fen, "currency": "CNY"}))
        return self._refund_result(out_refund_no, _json(text))

    def query_refund(self, out_trade_no: str, *, out_refund_no: str) -> RefundResult:
        status, text = self._call(lambda: self._sdk.query_refund(out_refund_no),
                                  accept=frozenset({"RESOURCE_NOT_EXISTS"}))
        if status >= 400:  # never arrived: asking again with the same out_refund_no is safe
            return RefundResult(out_refund_no, GatewayRefundState.failed, detail="RESOURCE_NOT_EXISTS")
        answer = _json(text)
        if answer.get("out_trade_no") not in (None, out_trade_no):
            raise GatewayBadAnswer(answer=answer, detail="the refund belongs to another order")
        return self._refund_result(out_refund_no, answer)

    @staticmethod
    def _refund_result(out_refund_no: str, answer: Mapping[str, Any]) -> RefundResult:
        if answer.get("out_refund_no") != out_refund_no:
            raise GatewayBadAnswer(answer=dict(answer), detail="the answer is about another refund")
        status = str(answer.get("status", ""))
        state = _REFUND_STATES.get(status)
        if state is None:
            raise GatewayBadAnswer(answer=dict(answer), detail=f"unknown refund status {status!r}")
        amount = answer.get("amount") or {}
        return RefundResult(out_refund_no, state, refund_id=answer.get("refund_id") or None,
                            amount_fen=fen_of(amount.get("refund"), what="amount.refund"), detail=status)

    def statement(self, day: date) -> list[StatementLine]:
        status, text = self._call(lambda: self._sdk.trade_bill(day.isoformat(), tar_type="GZIP"),
                                  accept=frozenset({"NO_STATEMENT_EXIST"}))
        if status >= 400:  # no trade that day: WeChat makes no statement
            return []
        answer = _json(text)
        url = _field(answer, "download_url")
        _, content = self._call(lambda: self._sdk.download_bill(url))
        raw = content if isinstance(content, bytes) else str(content).encode()
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError):
            raise GatewayBadAnswer(answer=raw[:2000].decode("utf-8", "replace"), detail="the statement is not gzip") \
                from None
        # The statement file is unsigned: its digest comes in the signed answer above.
        if answer.get("hash_type") == "SHA1" and hashlib.sha1(raw).hexdigest() != answer.get("hash_value"):
            raise GatewayBadAnswer(answer=answer, detail="the statement's SHA1 differs from hash_value")
        return parse_statement(raw.decode("utf-8"))

    # ------------------------------------------------------------------ notifications

    def verify_notification(self, headers: Mapping[str, str], body: bytes) -> VerifiedNotification:
        lowered = {name.lower(): value for name, value in headers.items()}
        text = body.decode("utf-8", "replace")
        if not lowered.get("wechatpay-signature"):
            raise NotificationRejected("no Wechatpay-Signature header")
        try:
            signed = self._sdk._core._verify_signature(lowered, text)
        except Exception as error:  # the SDK raises on an unknown Wechatpay-Signature-Type
            raise NotificationRejected(f"bad signature: {error}") from None
        if not signed:
            raise NotificationRejected("bad signature")
        try:
            envelope = json.loads(text)
        except ValueError:
            raise NotificationRejected("not a JSON body") from None
        resource = envelope.get("resource") if isinstance(envelope, dict) else None
        if not isinstance(resource, dict) or envelope.get("resource_type") != "encrypt-resource":
            raise NotificationRejected("no encrypted resource")
        if resource.get("algorithm") != "AEAD_AES_256_GCM":
            raise NotificationRejected(f"resource algorithm {resource.get('algorithm')!r}")
        try:
            plain = aes_decrypt(nonce=str(resource.get("nonce", "")), ciphertext=str(resource.get("ciphertext", "")),
                                associated_data=str(resource.get("associated_data") or ""),
                                apiv3_key=self._merchant.api_v3_key)
            transaction = json.loads(plain) if plain is not None else None
        except ValueError:
            transaction = None
        if not isinstance(transaction, dict):
            raise NotificationRejected("the resource does not decrypt with the API v3 key")
        out_trade_no = transaction.get("out_trade_no") if isinstance(transaction.get("out_trade_no"), str) else None
        if transaction.get("appid") != self._merchant.app_id:
            raise NotificationRejected(f"app id {transaction.get('appid')} is not this merchant's",
                                       out_trade_no=out_trade_no)
        if transaction.get("mchid") != self._merchant.mch_id:
            raise NotificationRejected(f"mch id {transaction.get('mchid')} is not this merchant's",
                                       out_trade_no=out_trade_no)
        if not out_trade_no:
            raise NotificationRejected("no out_trade_no")
        amount = transaction.get("amount")
        total = amount.get("total") if isinstance(amount, dict) else None
        if not isinstance(total, int) or isinstance(total, bool):
            raise NotificationRejected("amount.total is not a whole number of fen", out_trade_no=out_trade_no)
        trade_state = str(transaction.get("trade_state", ""))
        payer = transaction.get("payer")
        try:
            paid_at = parse_time(transaction.get("success_time"))
        except GatewayBadAnswer:
            raise NotificationRejected("success_time is not a time", out_trade_no=out_trade_no) from None
        return VerifiedNotification(out_trade_no=out_trade_no, trade_no=str(transaction.get("transaction_id", "")),
                                    amount_fen=total, paid=trade_state == "SUCCESS", status=trade_state,
                                    paid_at=paid_at, payer=payer.get("openid") if isinstance(payer, dict) else None)

    def answer(self, accepted: bool) -> NotifyAnswer:
        if accepted:
            return NotifyAnswer(200, "application/json", b"{}")
        return NotifyAnswer(500, "application/json",
                            json.dumps({"code": "FAIL", "message": "失败"}, ensure_ascii=False).encode())


def _json(text: Any) -> dict[str, Any]:
    try:
        answer = json.loads(text)
    except (TypeError, ValueError):
        raise GatewayBadAnswer(answer=_text(text), detail="the answer is not JSON") from None
    if not isinstance(answer, dict):
        raise GatewayBadAnswer(answer=answer, detail="the answer is not a JSON object")
    return answer


def _field(answer: Mapping[str, Any], name: str) -> str:
    value = answer.get(name)
    if not isinstance(value, str) or not value:
        raise GatewayBadAnswer(answer=dict(answer), detail=f"the answer has no {name}")
    return value


def _text(content: Any) -> str:
    return content.decode("utf-8", "replace")[:2000] if isinstance(content, bytes) else str(content)[:2000]
