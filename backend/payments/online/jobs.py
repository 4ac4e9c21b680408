"""Active query and close (主动查询 / 关单): the notification may never come.

:func:`follow_order` asks the gateway about one unpaid order and acts on the answer: paid
→ credited through :func:`backend.payments.online.credit.credit_order` (the same one path
as a notification; an amount other than the order's is alarmed, never credited); closed
or declined there → the order is ``closed`` / ``failed``; still unpaid past its expiry →
closed at the gateway and then here — a barcode payment is cancelled (撤销) by
:func:`cancel_barcode_order`, which never cancels one that is paid meanwhile. Each step is
its own short transaction; the gateway is called outside any.

The ``query_payment_orders`` job (every minute) follows every order still ``created``
``query_after_minutes`` (the merchants file) after it was made or last asked about, oldest
first, a bounded batch per run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.db import transaction
from backend.gateways.errors import GatewayError
from backend.payments.online.credit import CANCELLED_AT_GATEWAY, alarm_on_order, credit_order, order_changed
from backend.payments.online.gateway import OnlineGateway, TradeState, TradeStatus
from backend.payments.online.models import OrderScene, OrderState, PaymentOrder
from backend.payments.online.registry import OnlinePayments, call_gateway, online_payments
from backend.runtime import Runtime

log = logging.getLogger("shuiwu.payments.online")

BATCH = 200  # orders one run follows at most (the next run takes the rest)


@dataclass(frozen=True, slots=True)
class FollowedOrders:
    asked: int = 0
    credited: int = 0
    closed: int = 0
    failed: int = 0
    errors: int = 0


async def end_order(sessions: async_sessionmaker[AsyncSession], *, order_id: int, state: OrderState, now: datetime,
                    failure: str | None = None) -> PaymentOrder:
    """Mark an unpaid order ``closed`` or ``failed`` (its own transaction; a paid or
    already ended one is left as it is)."""
    async with transaction(sessions) as session:
        order = (await session.execute(select(PaymentOrder).where(PaymentOrder.id == order_id)  # type: ignore[arg-type]
                                       .with_for_update())).scalar_one()
        if order.state is OrderState.created:
            order.state, order.closed_at = state, now
            order.failure = (failure or None) and failure[:200]
            await session.flush()
            await order_changed(session, order)
        return order  # type: ignore[no-any-return]


async def complete_paid(sessions: async_sessionmaker[AsyncSession], *, order: PaymentOrder, status: TradeStatus,
                        now: datetime, tz: str | tzinfo) -> bool:
    """Credit ``order`` the gateway says is paid (True: credited now). A paid amount other
    than the order's is alarmed and left for a person."""
    assert order.id is not None
    amount = status.amount_fen if status.amount_fen is not None else order.amount_fen
    async with transaction(sessions) as session:
        if amount != order.amount_fen:
            await alarm_on_order(session, order=order, now=now,
                                 detail=f"the gateway says {amount} fen were paid, the order is {order.amount_fen}")
            return False
        credited = await credit_order(session, order_id=order.id, trade_no=status.trade_no or "", amount_fen=amount,
                                      now=now, tz=tz, paid_at=status.paid_at)
    return credited.credited


async def cancel_barcode_order(sessions: async_sessionmaker[AsyncSession], *, services: Mapping[str, Any],
                               gateway: OnlineGateway, order: PaymentOrder, now: datetime, tz: str | tzinfo,
                               why: str) -> PaymentOrder:
    """End the unpaid barcode ``order`` (撤销: the payer did not confirm in time, or it
    expired) without ever cancelling a paid one: a cancel of a paid trade refunds it.
    Under the order's row lock, held to the end (a notification for it waits, then finds
    it ended): an order paid meanwhile is returned as it is; the gateway is asked once
    more and a trade it says is paid is credited (the one credit path) and returned paid;
    otherwise the trade is cancelled at the gateway and the order ``closed`` with
    :data:`CANCELLED_AT_GATEWAY` as its failure, so a paid notification that arrives
    later (the cancel gave that money back) is stored and alarmed, never credited
    (credit.py). A cancel that fails raises and leaves the order open (the job asks
    again)."""
    assert order.id is not None
    reference = order.out_trade_no
    async with transaction(sessions) as session:
        locked = (await session.execute(select(PaymentOrder).where(PaymentOrder.id == order.id)  # type: ignore[arg-type]
                                        .with_for_update().execution_options(populate_existing=True))).scalar_one()
        if locked.state is not OrderState.created:
            return locked  # type: ignore[no-any-return]
        try:
            status = await call_gateway(services, gateway, "query", gateway.query, reference,
                                        request={"out_trade_no": reference}, reference=reference)
        except GatewayError as failure:  # cancelling is safe either way: the money goes back if it was taken
            log.warning("order %s: the last query before cancelling failed (%s)", reference, failure.code.value)
            status = TradeStatus(reference, TradeState.paying)
        if status.state is TradeState.paid:
            amount = status.amount_fen if status.amount_fen is not None else locked.amount_fen
            if amount == locked.amount_fen:
                credited = await credit_order(session, order_id=order.id, trade_no=status.trade_no or "",
                                              amount_fen=amount, now=now, tz=tz, paid_at=status.paid_at)
                assert credited.order is not None
                return credited.order
            await alarm_on_order(session, order=locked, now=now,
                                 detail=f"the gateway says {amount} fen were paid, the order is {locked.amount_fen}")
            return locked  # type: ignore[no-any-return]  # left for a person, as complete_paid does
        await call_gateway(services, gateway, "cancel", gateway.cancel, reference,
                           request={"out_trade_no": reference}, reference=reference)
        locked.state, locked.closed_at = OrderState.closed, now
        locked.failure = f"{CANCELLED_AT_GATEWAY}: {why}"[:200]
        await session.flush()
        await order_changed(session, locked)
        return locked  # type: ignore[no-any-return]


async def follow_order(sessions: async_sessionmaker[AsyncSession], *, online: OnlinePayments,
                       services: Mapping[str, Any], order: PaymentOrder, now: datetime,
                       tz: str | tzinfo = "Asia/Shanghai") -> str:
    """Ask the gateway about ``order`` and act (module docstring). Returns what was done:
    ``credited``, ``closed``, ``failed``, ``waiting`` or ``paid`` (already)."""
    assert order.id is not None
    if order.state is not OrderState.created:
        return order.state.value
    gateway = online.gateway(order.channel, order.merchant)
    status = await call_gateway(services, gateway, "query", gateway.query, order.out_trade_no,
                                request={"out_trade_no": order.out_trade_no}, reference=order.out_trade_no)
    async with transaction(sessions) as session:
        await session.execute(text("UPDATE payment_orders SET queried_at = :now, queries = queries + 1 WHERE id = :id"),
                              {"now": now, "id": order.id})
    if status.state is TradeState.paid:
        return "credited" if await complete_paid(sessions, order=order, status=status, now=now, tz=tz) else "paid"
    if status.state is TradeState.failed:
        await end_order(sessions, order_id=order.id, state=OrderState.failed, now=now,
                        failure=status.detail or "declined")
        return "failed"
    if status.state is TradeState.closed:
        await end_order(sessions, order_id=order.id, state=OrderState.closed, now=now, failure=status.detail or None)
        return "closed"
    if order.expires_at <= now:
        if order.scene is OrderScene.barcode:
            ended = await cancel_barcode_order(sessions, services=services, gateway=gateway, order=order, now=now,
                                               tz=tz, why="expired")
            return ended.state.value  # closed (cancelled), or paid (meanwhile, or credited by its last query)
        else:
            await call_gateway(services, gateway, "close", gateway.close, order.out_trade_no,
                               request={"out_trade_no": order.out_trade_no}, reference=order.out_trade_no)
        await end_order(sessions, order_id=order.id, state=OrderState.closed, now=now, failure="expired")
        return "closed"
    return "waiting"


async def follow_open_orders(sessions: async_sessionmaker[AsyncSession], *, online: OnlinePayments,
                             services: Mapping[str, Any], now: datetime, tz: str | tzinfo = "Asia/Shanghai",
                             limit: int = BATCH) -> FollowedOrders:
    """Follow the orders still open ``query_after_minutes`` after they were made or last
    asked about (oldest first, at most ``limit``); a gateway failure is logged and the
    order is asked again on a later run."""
    due = now - timedelta(minutes=online.merchants.query_after_minutes)
    async with sessions() as session:
        orders = list((await session.execute(
            select(PaymentOrder).where(PaymentOrder.state == OrderState.created,  # type: ignore[arg-type]
                                       PaymentOrder.created_at <= due,  # type: ignore[arg-type,operator]
                                       text("(queried_at IS NULL OR queried_at <= :due)"))
            .order_by(PaymentOrder.created_at).limit(limit), {"due": due})).scalars().all())  # type: ignore[arg-type]
    counts = {"credited": 0, "closed": 0, "failed": 0}
    errors = 0
    for order in orders:
        try:
            done = await follow_order(sessions, online=online, services=services, order=order, now=now, tz=tz)
        except GatewayError as failure:
            errors += 1
            log.warning("order %s: the gateway could not be asked (%s)", order.out_trade_no, failure.code.value)
            continue
        if done in counts:
            counts[done] += 1
    return FollowedOrders(asked=len(orders), errors=errors, **counts)


async def query_payment_orders(runtime: Runtime, payload: Mapping[str, Any]) -> FollowedOrders:
    """The ``query_payment_orders`` job: follow the open orders that are due."""
    online = online_payments(runtime.services)
    if not (online.merchants.alipay or online.merchants.wechat):
        return FollowedOrders()
    done = await follow_open_orders(runtime.sessions, online=online, services=runtime.services, now=runtime.now(),
                                    tz=runtime.tz)
    if done.asked:
        log.info("payment orders followed: %s", done)
    return done
