"""A gateway whose refund answers a test scripts, for the faults the local gateways cannot
be made to show (an SDK that raises something no GatewayError is, a confirmation of
another amount than asked). Every other refund test runs against the local gateways over
HTTP (refund_helpers.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from backend.gateways.errors import GatewayRejected, GatewayTimeout
from backend.payments.models import PaymentChannel
from backend.payments.online.gateway import GatewayRefundState, MerchantRef, RefundResult, StatementLine
from backend.payments.online.merchants import AlipayMerchant, Merchants, WechatMerchant
from backend.payments.online.models import GatewayApi
from backend.payments.online.registry import SERVICE, OnlinePayments

API = {PaymentChannel.alipay: GatewayApi.alipay, PaymentChannel.wechat: GatewayApi.wechat_v3}


@dataclass
class StandInGateway:
    """One merchant's gateway whose refund answers are scripted: ``refund_states`` (one per
    request, then the last again), ``query_states`` likewise; ``"reject"`` raises a signed
    refusal, ``"timeout"`` a timeout."""

    channel: PaymentChannel
    name: str = "demo"
    refund_states: list[str] = field(default_factory=lambda: ["succeeded"])
    query_states: list[str] = field(default_factory=lambda: ["succeeded"])
    asked: list[tuple[str, str, int]] = field(default_factory=list)  # (operation, out_refund_no, fen)
    lines: dict[date, list[StatementLine]] = field(default_factory=dict)

    @property
    def merchant(self) -> MerchantRef:
        return MerchantRef(self.channel, API[self.channel], self.name, "app")

    def _answer(self, states: list[str], out_refund_no: str, fen: int | None) -> RefundResult:
        state = states.pop(0) if len(states) > 1 else states[0]
        if state == "reject":
            raise GatewayRejected(detail="NOT_ENOUGH_BALANCE 商户余额不足")
        if state == "timeout":
            raise GatewayTimeout(detail="no answer")
        return RefundResult(out_refund_no, GatewayRefundState(state), refund_id=f"G{out_refund_no}", amount_fen=fen,
                            detail="" if state != "failed" else "ABNORMAL 退款异常")

    def refund(self, out_trade_no: str, *, out_refund_no: str, amount_fen: int, total_fen: int,
               reason: str) -> RefundResult:
        assert amount_fen <= total_fen
        self.asked.append(("refund", out_refund_no, amount_fen))
        return self._answer(self.refund_states, out_refund_no, amount_fen)

    def query_refund(self, out_trade_no: str, *, out_refund_no: str) -> RefundResult:
        self.asked.append(("query", out_refund_no, 0))
        return self._answer(self.query_states, out_refund_no, None)

    def statement(self, day: date) -> list[StatementLine]:
        return list(self.lines.get(day, []))


def services_of(*gateways: StandInGateway) -> dict[str, Any]:
    """Host services with ``gateways`` as the merchants' gateways (no GatewayClient: calls
    run on a thread of the loop's executor)."""
    merchants = Merchants(
        alipay=tuple(AlipayMerchant(g.name, "app", "key", "key") for g in gateways if g.channel is PaymentChannel.alipay),
        wechat=tuple(WechatMerchant(g.name, GatewayApi.wechat_v3, "app", "mch") for g in gateways
                     if g.channel is PaymentChannel.wechat))
    online = OnlinePayments(merchants, gateways={(g.channel, g.name): g for g in gateways})  # type: ignore[misc]
    return {SERVICE: online}
