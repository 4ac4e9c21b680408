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

An order that was ``closed`` (expired, cancelled) and is paid after all is credited too —
the payer's money was taken — and an alarm is opened on it (alarms, subject payment).
The caller commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.alarms.models import AlarmKind, AlarmSeverity, AlarmSubjectKind
from backend.alarms.service import AlarmSubject, open_alarms
from backend.billing.ledger import lock_accounts
from backend.billing.models import Account, EntryKind
from backend.errors import DomainError, ErrorCode
from backend.events.service import emit_event
from backend.payments.counter import Operator, business_day, record_payment
from backend.payments.events import PaymentOrderChanged
from backend.payments.models import Payment, PaymentKind, PaymentPurpose
from backend.payments.online.models import OrderOrigin, OrderState, PaymentOrder

# Who a payment that came in by itself was taken by (payments.operator_name).
ONLINE_OPERATOR = "online"


@dataclass(frozen=True, slots=True)
class Credited:
    """What :func:`credit_order` did: ``payment`` is the order's payment (new or the one it
    already had); ``credited`` whether this call wrote it; ``was_closed`` whether the order
    had been closed (an alarm was opened)."""

    order: PaymentOrder
    payment: Payment | None
    credited: bool
    was_closed: bool = False


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
    order = (await session.execute(select(PaymentOrder).where(PaymentOrder.id == order_id)  # type: ignore[arg-type]
                                   .with_for_update().execution_options(populate_existing=True))).scalar_one()
    if order.state is OrderState.paid:
        payment = await session.get(Payment, order.payment_id) if order.payment_id is not None else None
        return Credited(order, payment, credited=False)
    if amount_fen != order.amount_fen:
        raise AmountDiffers(field="amount")
    was_closed = order.state is OrderState.closed
    await lock_accounts(session, [order.account_id])
    account = await session.get(Account, order.account_id, populate_existing=True)
    assert account is not None
    if order.origin is OrderOrigin.counter and order.operator_id is not None:
        operator = Operator(order.operator_id, order.created_by)  # the cashier's day (日结) counts it
    else:
        operator = Operator(None, ONLINE_OPERATOR)
    purpose = PaymentPurpose(order.purpose)
    payment = await record_payment(
        session, account=account, kind=PaymentKind.collect,
        entry_kind=EntryKind.recharge if purpose is PaymentPurpose.recharge else EntryKind.payment,
        channel=order.channel, purpose=purpose, amount_fen=order.amount_fen,
        idempotency_key=f"order:{order.out_trade_no}", operator=operator, now=now, day=business_day(now, tz),
        reference=trade_no[:64], note=order.out_trade_no)
    order.state, order.paid_at, order.payment_id, order.trade_no = OrderState.paid, paid_at or now, payment.id, trade_no
    await session.flush()
    await order_changed(session, order)
    if was_closed:
        await alarm_on_order(session, order=order, now=now,
                             detail=f"paid after it was closed: credited as payment {payment.serial_no}; "
                                    f"refund it if the payer did not mean it")
    return Credited(order, payment, credited=True, was_closed=was_closed)
