"""The local payment gateways (``shuiwu fake-gateway alipay|wechat``): real HTTP servers on
the gateways' base (``backend.gateways.http``) that verify and sign exactly as Alipay and
WeChat Pay do, hold orders in memory, serve a cashier page, and send (replay, tamper
with, delay, drop) signed notifications to the orders' notify URLs."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from backend.gateways.http import Answer, Received


@dataclass(frozen=True, slots=True)
class PayRequest:
    """``POST /_control/pay`` as both local gateways read it: the order, the mode, how
    many notifications, whether unanswered ones are retried, and an amount to sign
    instead of the order's (the ``wrong_amount`` mode)."""

    out_trade_no: str | None
    mode: str
    times: int
    retry: bool
    amount_fen: int | None


def pay_request(received: Received, *, modes: Collection[str], default_retry: bool) -> PayRequest | Answer:
    """The control request, or the 400 answer naming what is wrong with it."""
    try:
        asked = received.json()
    except ValueError:
        return Answer({"error": "the body must be JSON"}, 400)
    if not isinstance(asked, dict):
        return Answer({"error": "the body must be a JSON object"}, 400)
    out_trade_no, mode, times = asked.get("out_trade_no"), asked.get("mode", "normal"), asked.get("times", 1)
    retry, amount_fen = asked.get("retry", default_retry), asked.get("amount_fen")
    if mode not in modes:
        return Answer({"error": f"unknown mode {mode!r}; modes: {sorted(modes)}"}, 400)
    if not isinstance(times, int) or isinstance(times, bool) or not 1 <= times <= 100:
        return Answer({"error": "times must be an integer from 1 to 100"}, 400)
    if not isinstance(retry, bool) or (amount_fen is not None and (not isinstance(amount_fen, int)
                                                                   or isinstance(amount_fen, bool))):
        return Answer({"error": "retry must be true or false, amount_fen an integer"}, 400)
    return PayRequest(out_trade_no if isinstance(out_trade_no, str) else None, mode, times, retry, amount_fen)
