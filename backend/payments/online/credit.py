"""The one credit path of an online payment: a verified notification, an active query that
found the order paid, and a barcode payment that succeeded all end here.

:func:`credit_order` locks the order row (``FOR UPDATE``: no table lock, so notifications
for different orders never wait for each other), and when it is not paid yet writes the
payment (channel alipay / wechat, kind collect, the order's purpose, reference = the
gateway's trade number) through the counter's :func:`backend.payments.counter.record_payment`
— its ledger entry (``recharge`` / ``payment``, key ``payment:<id>``), a postpaid
account's allocation to its bills, a prepaid_card / prepaid_meter account's pending write
and ``payment.succeeded`` — then marks the order paid with its payment and emits
``payment_order.changed``. A second caller for the same order (a replayed notification
racing the first, the query job) waits for the lock, finds it paid and writes nothing.

A counter order (a cashier's barcode or QR order) counts in that cashier's day (日结) of
the day it is credited, under the day's lock as the counter's own payments
(``counter.CASHIER_DAY_LOCK_CLASS``, held shared until commit, so a hand-over waits for
it); when that day is handed over already (the payer paid the QR after the cashier's
hand-over), the payment is recorded like any other online payment, with no cashier
(operator ``online``), and the handed-over figures stay as they were.

An order that was ``closed`` (expired, closed) or ``failed`` (declined) and is paid after
all is credited too — the payer's money was taken — and an alarm is opened on it (alarms,
subject payment). Not so a barcode order cancelled at the gateway (撤销, its failure
begins with :data:`CANCELLED_AT_GATEWAY`): the cancel gave the money back (a cancel of a
paid trade refunds it), so crediting it is refused (OrderCancelledAtGateway,
PAYMENT_ORDER_CLOSED); the notify path stores such a notification rejected and alarms.
The caller commits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from backend.alarms.models import AlarmKind, AlarmSeverity, AlarmSubjectKind
from backend.alarms.service import AlarmSubject, open_alarms
from backend.billing.models import BillingMode, EntryKind
from backend.db import raw_connection
from backend.errors import DomainError, ErrorCode, NotFound
from backend.events.service import emit_event
from backend.payments.counter import Operator, business_day, cashier_day_locked, write_payment
from backend.payments.events import PaymentOrderChanged
from backend.payments.models import Payment, PaymentChannel, PaymentKind, PaymentPurpose
from backend.payments.online.models import OrderOrigin, OrderState, PaymentOrder

# Who a payment that came in by itself was taken by (payments.operator_name).
ONLINE_OPERATOR = "online"
# How the failure of a barcode order cancelled at the gateway (撤销) begins
# (jobs.cancel_barcode_order): the cancel gave any money taken back, so it is never credited.
CANCELLED_AT_GATEWAY = "cancelled at the gateway"


@dataclass(frozen=True, slots=True)
class Credited:
    """What a credit did: ``payment_id`` is the order's payment (new or the one it already
    had); ``credited`` whether this call wrote it; ``was_closed`` whether the order had
    been closed (an alarm was opened). :func:`credit_order` also gives the rows (``order``,
    ``payment``); the notification's hot path (:func:`credit_locked`) loads none."""

    order_id: int
    payment_id: int | None
    credited: bool
    was_closed: bool = False
    order: PaymentOrder | None = None
    payment: Payment | None = None


@dataclass(frozen=True, slots=True)
class _Payable:
    """The account as a payment needs it (locked by the ledger when it posts)."""

    id: int
    household_id: int
    mode: BillingMode


# The order locked (its row only) with what crediting it needs of it and of its account,
# and the id its payment will have: one statement, no ORM object (a notification's hot
# path). ``unpaid`` leaves a paid order out unlocked (a replay takes no lock).
_ORDER_COLUMNS = """
SELECT o.id, o.out_trade_no, o.state, o.api, o.merchant, o.amount_fen, o.channel, o.purpose, o.origin,
       o.operator_id, o.created_by, o.payment_id, o.household_id, o.account_id, a.mode, o.failure,
       CASE WHEN o.state <> 'paid' THEN nextval('payments_id_seq') END AS next_payment_id
FROM payment_orders o JOIN accounts a ON a.id = o.account_id
"""
LOCK_ORDER_BY_ID = _ORDER_COLUMNS + "WHERE o.id = $1 FOR UPDATE OF o"
LOCK_UNPAID_ORDER_BY_TRADE_NO = _ORDER_COLUMNS + "WHERE o.out_trade_no = $1 AND o.state <> 'paid' FOR UPDATE OF o"
_MARK_PAID = """
UPDATE payment_orders SET state = 'paid', paid_at = $2, payment_id = $3, trade_no = $4 WHERE id = $1
"""
# The same, and the accepted notification stored in the same statement.
_MARK_PAID_AND_KEEP = """
WITH paid AS (UPDATE payment_orders SET state = 'paid', paid_at = $2, payment_id = $3, trade_no = $4 WHERE id = $1)
INSERT INTO payment_notifications (api, order_id, out_trade_no, verdict, reason, headers, body, received_at)
VALUES ($5, $1, $6, 'accepted', NULL, $7::jsonb, $8, $9)
"""


@dataclass(frozen=True, slots=True)
class AcceptedNotification:
    """The notification that paid an order, stored with it (notify.py)."""

    api: str
    headers_json: str
    body: str
    received_at: datetime


class OrderCancelledAtGateway(DomainError):
    code = ErrorCode.PAYMENT_ORDER_CLOSED
    message = "订单已在支付平台撤销, 款项已退回付款人, 不能入账"
    message_en = "The order was cancelled at the gateway (any money taken went back to the payer): not credited"


class AmountDiffers(DomainError):
    code = ErrorCode.BAD_USER_INPUT
    message = "支付金额与订单金额不一致"
    message_en = "The amount paid differs from the order's"


async def order_changed(session: AsyncSession, order: PaymentOrder) -> None:
    """``payment_order.changed`` for ``order``'s current state (in the caller's transaction)."""
    assert order.id is not None
    await emit_event(session, "payment_order.changed", PaymentOrderChanged(order_id=order.id, state=order.state.value),
                     key=f"payment_order:{order.id}")


async def order_area_id(session: AsyncSession, order: PaymentOrder) -> int | None:
    """The area an order's alarms are scoped by: its household's."""
    from sqlalchemy import text

    return (await session.execute(text("SELECT area_id FROM households WHERE id = :id"),  # type: ignore[no-any-return]
                                  {"id": order.household_id})).scalar_one_or_none()


async def alarm_on_order(session: AsyncSession, *, order: PaymentOrder | None, detail: str, now: datetime) -> None:
    """Open (or refresh) the ``verification_failed`` alarm of the payment subject ``order``
    (subject 0, the company as a whole, when the notification named no order of ours)."""
    area_id = await order_area_id(session, order) if order is not None else None
    name = order.out_trade_no if order is not None else "未知订单"
    await open_alarms(session, subject_kind=AlarmSubjectKind.payment, kind=AlarmKind.verification_failed,
                      subjects=[AlarmSubject(subject_id=order.id if order is not None and order.id else 0,
                                             severity=AlarmSeverity.critical, detail=detail[:200], area_id=area_id,
                                             name=name)], now=now)


async def credit_order(session: AsyncSession, *, order_id: int, trade_no: str, amount_fen: int, now: datetime,
                       tz: str | tzinfo = "Asia/Shanghai", paid_at: datetime | None = None) -> Credited:
    """Credit order ``order_id`` paid at the gateway as ``trade_no`` for ``amount_fen``
    (module docstring). An amount other than the order's is refused (the caller checked
    and stored the notification as rejected already; this is the last guard)."""
    row = await (await raw_connection(session)).fetchrow(LOCK_ORDER_BY_ID, order_id)
    if row is None:
        raise NotFound(field="orderId")
    if row["state"] == OrderState.paid.value:
        done = Credited(order_id, row["payment_id"], credited=False)
    else:
        done = await credit_locked(session, row, trade_no=trade_no, amount_fen=amount_fen, now=now, tz=tz,
                                   paid_at=paid_at)
    order = await session.get(PaymentOrder, order_id, populate_existing=True)
    payment = await session.get(Payment, done.payment_id, populate_existing=True) if done.payment_id else None
    return replace(done, order=order, payment=payment)


async def credit_locked(session: AsyncSession, row: Any, *, trade_no: str, amount_fen: int, now: datetime,
                        tz: str | tzinfo = "Asia/Shanghai", paid_at: datetime | None = None,
                        notification: AcceptedNotification | None = None) -> Credited:
    """Credit the unpaid order ``row`` (one of the ``LOCK_*`` statements' rows, locked in
    this transaction); ``notification``, when given, is stored accepted with it."""
    order_id = row["id"]
    if amount_fen != row["amount_fen"]:
        raise AmountDiffers(field="amount")
    # Closed (expired, cancelled) or failed (declined) here, paid there after all.
    was_closed = row["state"] in (OrderState.closed.value, OrderState.failed.value)
    if was_closed and (row["failure"] or "").startswith(CANCELLED_AT_GATEWAY):
        raise OrderCancelledAtGateway(field="outTradeNo")
    day = business_day(now, tz)
    operator = Operator(None, ONLINE_OPERATOR)
    if row["origin"] == OrderOrigin.counter.value and row["operator_id"] is not None \
            and not await cashier_day_locked(session, row["operator_id"], day):
        operator = Operator(row["operator_id"], row["created_by"])  # the cashier's day (日结) counts it
    purpose = PaymentPurpose(row["purpose"])
    payment = await write_payment(
        session, account=_Payable(row["account_id"], row["household_id"], BillingMode(row["mode"])),
        kind=PaymentKind.collect,
        entry_kind=EntryKind.recharge if purpose is PaymentPurpose.recharge else EntryKind.payment,
        channel=PaymentChannel(row["channel"]), purpose=purpose, amount_fen=row["amount_fen"],
        idempotency_key=f"order:{row['out_trade_no']}", operator=operator, now=now, day=day,
        reference=trade_no[:64], note=row["out_trade_no"], number=row["next_payment_id"])
    driver = await raw_connection(session)
    if notification is None:
        await driver.execute(_MARK_PAID, order_id, paid_at or now, payment.id, trade_no[:64])
    else:
        await driver.execute(_MARK_PAID_AND_KEEP, order_id, paid_at or now, payment.id, trade_no[:64],
                             notification.api, row["out_trade_no"], notification.headers_json, notification.body,
                             notification.received_at)
    await emit_event(session, "payment_order.changed", PaymentOrderChanged(order_id=order_id, state="paid"),
                     key=f"payment_order:{order_id}")
    if was_closed:
        order = await session.get(PaymentOrder, order_id, populate_existing=True)
        await alarm_on_order(session, order=order, now=now,
                             detail=f"paid after it was {row['state']}: credited as payment {payment.serial_no}; "
                                    f"refund it if the payer did not mean it")
    return Credited(order_id, payment.id, credited=True, was_closed=was_closed)
