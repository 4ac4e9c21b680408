"""A stand-in Alipay-shaped gateway for the orders and notify service tests: it signs a
notification form with an HMAC of the merchant's secret (the real gateways' RSA and
AES-GCM are theirs to test), so the verify → check → credit path runs with no network."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from urllib.parse import parse_qsl, urlencode

from backend.money import fen_to_yuan, yuan_to_fen
from backend.payments.models import PaymentChannel
from backend.payments.online.gateway import (
    ClientPayload,
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
from backend.payments.online.merchants import AlipayMerchant, Merchants
from backend.payments.online.models import GatewayApi
from backend.payments.online.registry import OnlinePayments

APP_ID = "2021000000000001"
OTHER_APP_ID = "2021000000000002"


@dataclass
class StandIn:
    """One merchant's stand-in: ``trades`` is what the gateway holds (for query), ``calls``
    what it was asked."""

    merchant: MerchantRef
    secret: bytes
    trades: dict[str, TradeStatus] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    barcode_answers: list[TradeState] = field(default_factory=list)

    def sign(self, fields: Mapping[str, str]) -> str:
        text = "&".join(f"{k}={fields[k]}" for k in sorted(fields))
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()

    def notification(self, out_trade_no: str, amount_fen: int, *, status: str = "TRADE_SUCCESS",
                     trade_no: str | None = None, amount: str | None = None) -> bytes:
        fields = {"app_id": self.merchant.app_id, "out_trade_no": out_trade_no,
                  "trade_no": trade_no or f"T{out_trade_no}", "total_amount": amount or fen_to_yuan(amount_fen),
                  "trade_status": status}
        return urlencode({**fields, "sign": self.sign(fields)}).encode()

    def create(self, order: OrderRequest) -> ClientPayload:
        self.calls.append(("create", order.out_trade_no))
        return ClientPayload(PayloadKind.code_url, f"https://qr.example/{order.out_trade_no}")

    def barcode_pay(self, order: OrderRequest) -> TradeStatus:
        self.calls.append(("barcode_pay", order.out_trade_no))
        state = self.barcode_answers.pop(0) if self.barcode_answers else TradeState.paid
        status = TradeStatus(order.out_trade_no, state, trade_no=f"T{order.out_trade_no}", amount_fen=order.amount_fen)
        self.trades[order.out_trade_no] = status
        return status

    def query(self, out_trade_no: str) -> TradeStatus:
        self.calls.append(("query", out_trade_no))
        found = self.trades.get(out_trade_no, TradeStatus(out_trade_no, TradeState.waiting))
        if found.state is TradeState.paying and self.barcode_answers:
            found = TradeStatus(out_trade_no, self.barcode_answers.pop(0), trade_no=found.trade_no,
                                amount_fen=found.amount_fen)
            self.trades[out_trade_no] = found
        return found

    def close(self, out_trade_no: str) -> None:
        self.calls.append(("close", out_trade_no))

    def cancel(self, out_trade_no: str) -> None:
        self.calls.append(("cancel", out_trade_no))

    def refund(self, out_trade_no: str, *, out_refund_no: str, amount_fen: int, total_fen: int,
               reason: str) -> RefundResult:
        raise NotImplementedError

    def query_refund(self, out_trade_no: str, *, out_refund_no: str) -> RefundResult:
        raise NotImplementedError

    def statement(self, day: date) -> list[StatementLine]:
        raise NotImplementedError

    def verify_notification(self, headers: Mapping[str, str], body: bytes) -> VerifiedNotification:
        form = dict(parse_qsl(body.decode()))
        sign = form.pop("sign", "")
        if not hmac.compare_digest(sign, self.sign(form)):
            raise NotificationRejected("bad signature", out_trade_no=form.get("out_trade_no"))
        if form.get("app_id") != self.merchant.app_id:
            raise NotificationRejected(f"app id {form.get('app_id')} is not this merchant's")
        try:
            amount = yuan_to_fen(form.get("total_amount"))
        except Exception:
            raise NotificationRejected("total_amount is not an amount", out_trade_no=form.get("out_trade_no")) from None
        return VerifiedNotification(out_trade_no=form["out_trade_no"], trade_no=form["trade_no"], amount_fen=amount,
                                    paid=form["trade_status"] in ("TRADE_SUCCESS", "TRADE_FINISHED"),
                                    status=form["trade_status"])

    def answer(self, accepted: bool) -> NotifyAnswer:
        return NotifyAnswer(200, "text/plain", b"success" if accepted else b"fail")


def stand_in_payments(*, max_fen: int = 5_000_000) -> tuple[OnlinePayments, StandIn, StandIn]:
    """Merchants 'demo' (default) and 'other' (another app id), both Alipay, each with a stand-in."""
    demo = StandIn(MerchantRef(PaymentChannel.alipay, GatewayApi.alipay, "demo", APP_ID), b"demo-secret")
    other = StandIn(MerchantRef(PaymentChannel.alipay, GatewayApi.alipay, "other", OTHER_APP_ID), b"other-secret")
    merchants = Merchants(public_base_url="http://127.0.0.1:1", max_online_payment_fen=max_fen, alipay=(
        AlipayMerchant(name="demo", app_id=APP_ID, private_key="-", alipay_public_key="-"),
        AlipayMerchant(name="other", app_id=OTHER_APP_ID, private_key="-", alipay_public_key="-")))
    online = OnlinePayments(merchants, gateways={(PaymentChannel.alipay, "demo"): demo,  # type: ignore[dict-item]
                                                 (PaymentChannel.alipay, "other"): other})
    return online, demo, other
