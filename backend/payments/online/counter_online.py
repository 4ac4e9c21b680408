"""支付宝 / 微信 at the counter: barcode pay (付款码) and the dynamic QR shown to the payer.

**Barcode pay** (:func:`counter_barcode_pay`): the cashier scans the payer's payment
code. Its prefix says the channel — Alipay 25–30, WeChat 10–15, 16 to 24 digits in all;
anything else is PAYMENT_CODE_INVALID before anything is written. A ``barcode`` order is
opened for the account (committed), then the gateway takes the payment (Alipay
``alipay.trade.pay`` scene ``bar_code``, WeChat micropay / code payment): ``paid`` is
credited at once; ``paying`` (the payer is confirming on the phone: USERPAYING) is asked
about every ``poll_s`` seconds until it is paid or declined or ``deadline_s`` passes, then
cancelled (撤销) and the order closed: PAYMENT_DECLINED, like an outright refusal — unless
it was paid meanwhile: under the order's lock a paid order (a notification credited it)
or a last query saying paid is returned paid, never cancelled (a cancel of a paid trade
refunds it; ``jobs.cancel_barcode_order``). The
clock and the sleeper are injected (tests wait for nothing).

**Dynamic QR** (:func:`counter_qr_order`): an Alipay ``qr`` (precreate) or WeChat
``native`` order whose ``code_url`` the counter's screen shows; the screen follows the
order (``payment_order.changed``, or the ``paymentOrder`` query).

Both are counter orders: ``operator_id`` is the cashier, so the payment counts in the
cashier's day (日结) under channel alipay / wechat, and the money is credited through the
one credit path (credit.py), whoever completes it (this loop, a notification, the job).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.db import transaction
from backend.gateways.errors import GatewayError
from backend.payments.counter import Operator
from backend.payments.models import PaymentChannel, PaymentPurpose
from backend.payments.online import errors
from backend.payments.online.gateway import ClientPayload, TradeState, TradeStatus
from backend.payments.online.jobs import cancel_barcode_order, complete_paid, end_order
from backend.payments.online.models import OrderOrigin, OrderScene, OrderState, PaymentOrder
from backend.payments.online.orders import OrderAsk, Reach, open_order, order_request, request_payload
from backend.payments.online.registry import OnlinePayments, call_gateway

_ALIPAY_CODE = re.compile(r"^(2[5-9]|30)[0-9]{14,22}\Z", re.ASCII)
_WECHAT_CODE = re.compile(r"^1[0-5][0-9]{14,22}\Z", re.ASCII)
DEFAULT_POLL_S = 3.0
DEFAULT_DEADLINE_S = 45.0

Sleeper = Callable[[float], Awaitable[object]]
Ticker = Callable[[], float]


def channel_of_code(auth_code: str) -> PaymentChannel:
    """The channel a payment code belongs to (PAYMENT_CODE_INVALID: neither)."""
    code = (auth_code or "").strip()
    if _ALIPAY_CODE.match(code):
        return PaymentChannel.alipay
    if _WECHAT_CODE.match(code):
        return PaymentChannel.wechat
    raise errors.PaymentCodeInvalid(field="authCode")


def _counter_ask(*, channel: PaymentChannel, scene: OrderScene, account_id: int, amount_fen: int,
                 purpose: PaymentPurpose, operator: Operator, idempotency_key: str | None) -> OrderAsk:
    return OrderAsk(amount_fen=amount_fen, purpose=purpose, channel=channel, scene=scene, origin=OrderOrigin.counter,
                    created_by=operator.name, account_id=account_id, operator_id=operator.id,
                    idempotency_key=idempotency_key)


async def open_barcode_order(session: AsyncSession, *, online: OnlinePayments, account_id: int, amount_fen: int,
                             purpose: PaymentPurpose, auth_code: str, operator: Operator, now: datetime,
                             tz: str | tzinfo = "Asia/Shanghai", idempotency_key: str | None = None,
                             scope_patterns: list[str] | None = None) -> PaymentOrder:
    """Validate the code and open the barcode order (the caller commits)."""
    channel = channel_of_code(auth_code)
    order, _ = await open_order(session, online=online, now=now, tz=tz, reach=Reach(scope_patterns=scope_patterns),
                                ask=_counter_ask(channel=channel, scene=OrderScene.barcode, account_id=account_id,
                                                 amount_fen=amount_fen, purpose=purpose, operator=operator,
                                                 idempotency_key=idempotency_key))
    return order


async def take_barcode_payment(sessions: async_sessionmaker[AsyncSession], *, online: OnlinePayments,
                               services: Mapping[str, Any], order: PaymentOrder, auth_code: str,
                               clock: Callable[[], datetime], tz: str | tzinfo = "Asia/Shanghai",
                               sleep: Sleeper = asyncio.sleep, ticker: Ticker = time.monotonic,
                               poll_s: float = DEFAULT_POLL_S, deadline_s: float = DEFAULT_DEADLINE_S) -> PaymentOrder:
    """Take the payment of the committed barcode ``order`` (module docstring); returns the
    paid order or raises PAYMENT_DECLINED (the order failed or closed)."""
    assert order.id is not None
    if order.state is OrderState.paid:
        return order
    if order.state is not OrderState.created:
        raise errors.PaymentDeclined(field="authCode")
    gateway = online.gateway(order.channel, order.merchant)
    reference = order.out_trade_no
    started = ticker()
    try:
        status = await call_gateway(services, gateway, "barcode_pay", gateway.barcode_pay,
                                    order_request(order, online, auth_code=auth_code.strip()),
                                    request={"out_trade_no": reference, "amount_fen": order.amount_fen},
                                    reference=reference)
    except GatewayError as failure:
        if not failure.maybe_done:
            await end_order(sessions, order_id=order.id, state=OrderState.failed, now=clock(),
                            failure=f"{failure.code.value}: {failure.detail or ''}")
            raise
        status = TradeStatus(reference, TradeState.paying, detail="no answer: asking")
    while status.state in (TradeState.paying, TradeState.waiting, TradeState.not_found):
        if ticker() - started >= deadline_s:
            ended = await cancel_barcode_order(sessions, services=services, gateway=gateway, order=order, now=clock(),
                                               tz=tz, why="the payer did not confirm in time")
            if ended.state is OrderState.paid:  # paid meanwhile (a notification, or the last query)
                return ended
            raise errors.PaymentDeclined(field="authCode")
        await sleep(poll_s)
        try:
            status = await call_gateway(services, gateway, "query", gateway.query, reference,
                                        request={"out_trade_no": reference}, reference=reference)
        except GatewayError as failure:
            if not failure.retryable:
                raise
    if status.state is TradeState.paid:
        await complete_paid(sessions, order=order, status=status, now=clock(), tz=tz)
        async with transaction(sessions) as session:
            paid = await session.get(PaymentOrder, order.id, populate_existing=True)
        assert paid is not None
        return paid
    await end_order(sessions, order_id=order.id,
                    state=OrderState.failed if status.state is TradeState.failed else OrderState.closed,
                    now=clock(), failure=status.detail or status.state.value)
    raise errors.PaymentDeclined(field="authCode")


async def counter_barcode_pay(sessions: async_sessionmaker[AsyncSession], *, online: OnlinePayments,
                              services: Mapping[str, Any], account_id: int, amount_fen: int, purpose: PaymentPurpose,
                              auth_code: str, operator: Operator, clock: Callable[[], datetime],
                              tz: str | tzinfo = "Asia/Shanghai", idempotency_key: str | None = None,
                              scope_patterns: list[str] | None = None, sleep: Sleeper = asyncio.sleep,
                              ticker: Ticker = time.monotonic, poll_s: float = DEFAULT_POLL_S,
                              deadline_s: float = DEFAULT_DEADLINE_S) -> PaymentOrder:
    """Open the barcode order (committed), then take the payment."""
    async with transaction(sessions) as session:
        order = await open_barcode_order(session, online=online, account_id=account_id, amount_fen=amount_fen,
                                         purpose=purpose, auth_code=auth_code, operator=operator, now=clock(), tz=tz,
                                         idempotency_key=idempotency_key, scope_patterns=scope_patterns)
    return await take_barcode_payment(sessions, online=online, services=services, order=order, auth_code=auth_code,
                                      clock=clock, tz=tz, sleep=sleep, ticker=ticker, poll_s=poll_s,
                                      deadline_s=deadline_s)


QR_SCENES = {PaymentChannel.alipay: OrderScene.qr, PaymentChannel.wechat: OrderScene.native}


async def open_qr_order(session: AsyncSession, *, online: OnlinePayments, channel: PaymentChannel, account_id: int,
                        amount_fen: int, purpose: PaymentPurpose, operator: Operator, now: datetime,
                        tz: str | tzinfo = "Asia/Shanghai", idempotency_key: str | None = None,
                        scope_patterns: list[str] | None = None) -> PaymentOrder:
    """Open the counter's dynamic QR order (the caller commits)."""
    channel = PaymentChannel(channel)
    if channel not in QR_SCENES:
        raise errors.PaymentChannelUnavailable(field="channel")
    order, _ = await open_order(session, online=online, now=now, tz=tz, reach=Reach(scope_patterns=scope_patterns),
                                ask=_counter_ask(channel=channel, scene=QR_SCENES[channel], account_id=account_id,
                                                 amount_fen=amount_fen, purpose=purpose, operator=operator,
                                                 idempotency_key=idempotency_key))
    return order


async def counter_qr_order(sessions: async_sessionmaker[AsyncSession], *, online: OnlinePayments,
                           services: Mapping[str, Any], channel: PaymentChannel, account_id: int, amount_fen: int,
                           purpose: PaymentPurpose, operator: Operator, now: datetime,
                           tz: str | tzinfo = "Asia/Shanghai", idempotency_key: str | None = None,
                           scope_patterns: list[str] | None = None) -> tuple[PaymentOrder, ClientPayload]:
    """Open the QR order (committed), then ask the gateway for its ``code_url``."""
    async with transaction(sessions) as session:
        order = await open_qr_order(session, online=online, channel=channel, account_id=account_id,
                                    amount_fen=amount_fen, purpose=purpose, operator=operator, now=now, tz=tz,
                                    idempotency_key=idempotency_key, scope_patterns=scope_patterns)
    payload = await request_payload(sessions, online=online, services=services, order=order, now=now)
    return order, payload
