"""Refunds through the original channel (原路退款, issue 18 item 6).

**What can go back online.** An account's refundable online payments are its ``collect``
payments of channel ``alipay`` / ``wechat`` that came from a paid payment order, are not
reversed, were paid within :data:`MAX_REFUND_AGE` (both platforms refuse refunds of
trades older than a year), and still have something left: their amount minus what their
refunds already took, requested (in flight) or succeeded; a failed refund frees its
amount again.

**Splitting** (:func:`split_refund`): an amount is split over those payments newest
first, each taking what it has left, each through its own channel and merchant; what
they cannot cover is the remainder, which the caller pays at the counter. The amount
itself is at most the account's balance minus the refunds already in flight
(REFUND_ABOVE_REFUNDABLE, field ``amount``): a refund gives back money the account holds.

**Three steps, the gateway outside any transaction.**

1. :func:`request_online_refunds` (in the caller's transaction, the account locked)
   writes one ``payment_refunds`` row per part, state ``requested``, ``out_refund_no``
   ``RF`` + the day (utility zone) + the id padded to 10. Nothing is posted.
2. :func:`send_refunds` (after that commit) asks each refund's merchant through the
   channel's ``GatewayClient`` (``registry.call_gateway``); :func:`record_refund_outcome` writes what it answered,
   each in a short transaction of its own:

   - ``succeeded``: the refund payment (kind ``refund``, the order's channel, no
     cashier: the money leaves through the gateway, not a till) and its ledger entry
     (``refund``, minus the amount) are written, the refund ``succeeded`` and linked to it;
   - ``processing`` (WeChat), or no answer (a timeout, the gateway unreachable, an
     answer that fails its signature: the outcome is unknown): it stays ``requested``;
     the job :func:`query_open_refunds` asks again until it is settled;
   - ``failed``, or a correctly signed refusal: the refund is ``failed`` with the
     gateway's reason, nothing is posted, and an alarm ``refund_failed`` opens on the
     order (subject ``payment``, as the notify path's alarms).

   A refund is settled once: the outcome is recorded under the refund's row lock and a
   settled refund ignores later answers, so the job and a request racing on the same
   refund post it once.
3. :func:`refund_online` does 1 and 2 in a row (it owns its transactions).

**Mistaken payment** (错缴退款, ``refundPayment``): ``payment_id`` names the one online
payment to refund; any other payment (cash, reversed, a refund, not from an order) is
REFUND_NOT_POSSIBLE, more than it has left REFUND_ABOVE_REFUNDABLE. There is no
remainder: it goes back through that payment's channel or not at all. A payment whose
refund failed before may be tried again this way; the automatic split (account close)
leaves such payments out and pays their share at the counter.

**Closing an account** (``backend.payments.counter.close_account``): the positive balance
left after the final charge goes back through the original channels first: the refunds
are requested in the closing's transaction and the account stays **open** (its balance
is still owed until the gateways confirm); the job sends them. Closing again once they
are settled finds nothing more to send online and pays the rest (failed refunds
included) in cash, then closes. Closing while a refund is still in flight is
REFUND_NOT_POSSIBLE (field ``id``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal
from functools import partial
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.alarms.models import AlarmKind, AlarmSubjectKind
from backend.alarms.service import AlarmSubject, open_alarms
from backend.billing.accounts import account_in_scope
from backend.billing.errors import AccountClosed as AccountIsClosed
from backend.billing.models import Account, AccountStatus, EntryKind
from backend.db import raw_connection, transaction
from backend.errors import DomainError, ErrorCode
from backend.gateways.errors import GatewayError, GatewayRejected
from backend.payments.models import Payment, PaymentChannel, PaymentKind, PaymentPurpose, PaymentStatus
from backend.payments.online.errors import RefundAboveRefundable, RefundNotPossible
from backend.payments.online.gateway import GatewayRefundState, RefundResult
from backend.payments.online.models import PaymentOrder, PaymentRefund, RefundState
from backend.payments.online.pending import pending_write_done, take_back_pending_write
from backend.payments.online.registry import call_gateway, online_payments
from backend.readings.partitions import as_zone

__all__ = [
    "MAX_REFUND_AGE", "OnlineRefundPlan", "OnlineRefunds", "RefundView", "Refundable",
    "out_refund_no", "query_open_refunds", "record_refund_outcome", "refund_online", "refund_views", "refundable_online",
    "refunds_in_flight_fen", "request_online_refunds", "request_payment_refund", "send_refunds", "split_refund",
]

log = logging.getLogger(__name__)


# Alipay and WeChat Pay both refuse a refund of a trade paid more than a year ago.
MAX_REFUND_AGE = timedelta(days=365)
# The job leaves a refund alone this long after it was requested: the request that made
# it is usually sending it right then (the gateway would take it twice without harm, but
# there is no point).
SETTLE_GRACE = timedelta(seconds=30)
# At most this many refunds per run of the job, oldest first (the next run takes the rest).
QUERY_BATCH = 200
REASON_LIMIT = 200


# --------------------------------------------------------------------------- what can go back


@dataclass(frozen=True, slots=True)
class Refundable:
    """One online payment that can still give money back."""

    payment_id: int
    order_id: int
    out_trade_no: str
    channel: PaymentChannel
    merchant: str
    purpose: PaymentPurpose
    total_fen: int  # the order's amount (the gateway wants the trade's total with a refund)
    refundable_fen: int
    paid_at: datetime
    refund_failed: bool  # a refund of it failed before


_REFUNDABLE = """
SELECT p.id AS payment_id, o.id AS order_id, o.out_trade_no, o.channel, o.merchant, p.purpose,
       o.amount_fen AS total_fen, p.paid_at,
       p.amount_fen - coalesce(sum(r.amount_fen) FILTER (WHERE r.state <> 'failed'), 0) AS refundable_fen,
       coalesce(bool_or(r.state = 'failed'), false) AS refund_failed
FROM payments p
JOIN payment_orders o ON o.payment_id = p.id
LEFT JOIN payment_refunds r ON r.order_id = o.id
WHERE p.account_id = $1 AND p.kind = 'collect' AND p.status = 'succeeded' AND p.channel IN ('alipay', 'wechat')
  AND p.paid_at > $2 AND ($3::bigint IS NULL OR p.id = $3)
GROUP BY p.id, o.id
ORDER BY p.paid_at DESC, p.id DESC
"""


async def refundable_online(session: AsyncSession, *, account_id: int, now: datetime,
                            payment_id: int | None = None) -> list[Refundable]:
    """The account's online payments with something left to refund, newest first (module
    docstring); with ``payment_id`` only that one (if it qualifies)."""
    driver = await raw_connection(session)
    rows = await driver.fetch(_REFUNDABLE, account_id, now - MAX_REFUND_AGE, payment_id)
    return [Refundable(
        payment_id=row["payment_id"], order_id=row["order_id"], out_trade_no=row["out_trade_no"],
        channel=PaymentChannel(row["channel"]), merchant=row["merchant"], purpose=PaymentPurpose(row["purpose"]),
        total_fen=row["total_fen"], refundable_fen=row["refundable_fen"], paid_at=row["paid_at"],
        refund_failed=row["refund_failed"],
    ) for row in rows if row["refundable_fen"] > 0]


def split_refund(amount_fen: int, payments: Sequence[Refundable]) -> tuple[list[tuple[Refundable, int]], int]:
    """Split ``amount_fen`` over ``payments`` in their order (newest first), each taking
    what it has left: the parts and the remainder nobody covers (the counter's)."""
    parts: list[tuple[Refundable, int]] = []
    left = amount_fen
    for payment in payments:
        if left <= 0:
            break
        take = min(left, payment.refundable_fen)
        if take > 0:
            parts.append((payment, take))
            left -= take
    return parts, left


async def refunds_in_flight_fen(session: AsyncSession, account_id: int) -> int:
    """What the account's refunds still waiting for their gateway will take."""
    found = await session.execute(text(
        "SELECT coalesce(sum(amount_fen), 0) FROM payment_refunds WHERE account_id = :a AND state = 'requested'"),
        {"a": account_id})
    return int(found.scalar_one())


def out_refund_no(refund_id: int, day: date) -> str:
    """``RF`` + the day (utility zone) + the refund's id padded to 10 (the contract)."""
    return f"RF{day:%Y%m%d}{refund_id:010d}"


# --------------------------------------------------------------------------- 1. request


@dataclass(frozen=True, slots=True)
class OnlineRefundPlan:
    refunds: tuple[PaymentRefund, ...]  # requested, newest payment first
    remainder_fen: int  # what the counter pays (always 0 for a mistaken payment)

    @property
    def online_fen(self) -> int:
        return sum(refund.amount_fen for refund in self.refunds)


def _check_amount(amount_fen: int) -> None:
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int) or amount_fen <= 0:
        raise DomainError("退款金额须大于零", "A refund must be above zero", field="amount",
                          code=ErrorCode.PAYMENT_AMOUNT_INVALID)


def _check_reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise DomainError("请填写退款原因", "Give the refund's reason", field="reason", code=ErrorCode.INVALID)
    if len(reason) > REASON_LIMIT:
        raise DomainError("退款原因不能超过 200 个字符", "A reason is at most 200 characters", field="reason",
                          code=ErrorCode.TOO_LONG)
    return reason


async def request_online_refunds(
    session: AsyncSession,
    *,
    account_id: int,
    amount_fen: int,
    reason: str,
    by: str,
    now: datetime,
    tz: str | tzinfo = "Asia/Shanghai",
    payment_id: int | None = None,
    scope_patterns: Sequence[str] | None = None,
    account: Account | None = None,
) -> OnlineRefundPlan:
    """Step 1 (module docstring): lock the account, split ``amount_fen`` over its
    refundable online payments (or take it from ``payment_id`` alone) and write the
    refunds ``requested``. The caller commits, then :func:`send_refunds`. ``account``:
    the caller holds it locked already (closing)."""
    _check_amount(amount_fen)
    reason = _check_reason(reason)
    if account is None:
        account = await account_in_scope(session, account_id, scope_patterns, lock=True, field="accountId")
    if account.status is not AccountStatus.open:
        raise AccountIsClosed(field="accountId")
    assert account.id is not None
    available = account.balance_fen - await refunds_in_flight_fen(session, account.id)
    if amount_fen > available:
        raise RefundAboveRefundable(field="amount")
    payments = await refundable_online(session, account_id=account.id, now=now, payment_id=payment_id)
    if payment_id is not None:
        if not payments:
            await _refuse_payment(session, account.id, payment_id, now)
        if await pending_write_done(session, payment_id):  # the money is on the card / meter now
            raise RefundNotPossible("该笔充值已写入卡/表, 不能原路退款", "This recharge is on the card or meter already: "
                                    "it cannot be refunded online", field="paymentId")
        parts, remainder = split_refund(amount_fen, payments)
        if remainder:
            raise RefundAboveRefundable(field="amount")
    else:
        parts, remainder = split_refund(amount_fen, [p for p in payments if not p.refund_failed])
    day = now.astimezone(as_zone(tz)).date()
    refunds: list[PaymentRefund] = []
    for payment, fen in parts:
        number = (await session.execute(text("SELECT nextval('payment_refunds_id_seq')"))).scalar_one()
        refund = PaymentRefund(id=number, out_refund_no=out_refund_no(number, day), order_id=payment.order_id,
                               account_id=account.id, amount_fen=fen, state=RefundState.requested, reason=reason,
                               requested_by=by[:100], requested_at=now)
        session.add(refund)
        refunds.append(refund)
    await session.flush()
    return OnlineRefundPlan(tuple(refunds), remainder)


async def request_payment_refund(
    session: AsyncSession,
    *,
    payment_id: int,
    amount_fen: int,
    reason: str,
    by: str,
    now: datetime,
    tz: str | tzinfo = "Asia/Shanghai",
    scope_patterns: Sequence[str] | None = None,
) -> OnlineRefundPlan:
    """Step 1 for a mistaken payment (``refundPayment``, module docstring): the refund of
    ``payment_id`` through its own channel, on its account (locked, in the caller's
    scope). A payment that does not exist is REFUND_NOT_POSSIBLE (field ``paymentId``), as
    one outside the scope is NOT_FOUND. The caller commits, then :func:`send_refunds`."""
    found = await session.execute(text("SELECT account_id FROM payments WHERE id = :p"), {"p": payment_id})
    account_id = found.scalar_one_or_none()
    if account_id is None:
        raise RefundNotPossible(field="paymentId")
    return await request_online_refunds(session, account_id=int(account_id), amount_fen=amount_fen, reason=reason,
                                        by=by, now=now, tz=tz, payment_id=payment_id, scope_patterns=scope_patterns)


async def _refuse_payment(session: AsyncSession, account_id: int, payment_id: int, now: datetime) -> None:
    """Why ``payment_id`` has nothing to refund online: not this account's or not online
    (REFUND_NOT_POSSIBLE), or all of it refunded or in flight (REFUND_ABOVE_REFUNDABLE)."""
    payment = await session.get(Payment, payment_id)
    online = payment is not None and payment.account_id == account_id and payment.kind is PaymentKind.collect \
        and payment.channel in (PaymentChannel.alipay, PaymentChannel.wechat) and payment.paid_at > now - MAX_REFUND_AGE
    if not online or payment is None or payment.status is not PaymentStatus.succeeded:
        raise RefundNotPossible(field="paymentId")
    ordered = await session.execute(text("SELECT 1 FROM payment_orders WHERE payment_id = :p"), {"p": payment_id})
    if ordered.first() is None:
        raise RefundNotPossible(field="paymentId")
    raise RefundAboveRefundable(field="amount")


# --------------------------------------------------------------------------- 2. send and record


_REFUND_TARGET = """
SELECT r.id, r.out_refund_no, r.amount_fen, r.reason, r.gateway_refund_id, o.out_trade_no, o.channel, o.merchant,
       o.amount_fen AS total_fen
FROM payment_refunds r JOIN payment_orders o ON o.id = r.order_id
WHERE r.id = ANY($1::bigint[]) AND r.state = 'requested'
ORDER BY r.id
"""


@dataclass(frozen=True, slots=True)
class _Target:
    id: int
    out_refund_no: str
    out_trade_no: str
    channel: PaymentChannel
    merchant: str
    amount_fen: int
    total_fen: int
    reason: str
    gateway_refund_id: str | None


async def _targets(sessions: async_sessionmaker[AsyncSession], refund_ids: Sequence[int]) -> list[_Target]:
    async with sessions() as session:
        driver = await raw_connection(session)
        rows = await driver.fetch(_REFUND_TARGET, sorted(set(refund_ids)))
    return [_Target(id=row["id"], out_refund_no=row["out_refund_no"], out_trade_no=row["out_trade_no"],
                    channel=PaymentChannel(row["channel"]), merchant=row["merchant"], amount_fen=row["amount_fen"],
                    total_fen=row["total_fen"], reason=row["reason"], gateway_refund_id=row["gateway_refund_id"])
            for row in rows]


Outcome = RefundResult | GatewayError


async def _ask(services: Mapping[str, Any], target: _Target, *, query: bool) -> Outcome | None:
    """Ask the gateway to refund (or, ``query``, how the refund stands) through the
    channel's client. None: the merchant is no longer configured (the refund waits; the
    log says why)."""
    try:
        gateway = online_payments(services).gateway(target.channel, target.merchant)
    except DomainError:
        log.warning("refund %s: merchant %s/%s is not configured; it waits", target.out_refund_no,
                    target.channel.value, target.merchant)
        return None
    request = {"out_trade_no": target.out_trade_no, "out_refund_no": target.out_refund_no,
               "amount_fen": target.amount_fen, "total_fen": target.total_fen, "reason": target.reason}
    try:
        if query:
            try:
                return await call_gateway(services, gateway, "refund.query", partial(
                    gateway.query_refund, target.out_trade_no, out_refund_no=target.out_refund_no),
                    request=request, reference=target.out_refund_no)
            except GatewayRejected:
                # Unknown there: the first request never arrived. Asking again with the same
                # out_refund_no is safe: both platforms refund a number once.
                pass
        return await call_gateway(services, gateway, "refund", partial(
            gateway.refund, target.out_trade_no, out_refund_no=target.out_refund_no, amount_fen=target.amount_fen,
            total_fen=target.total_fen, reason=target.reason), request=request, reference=target.out_refund_no)
    except GatewayError as error:
        return error


async def send_refunds(
    sessions: async_sessionmaker[AsyncSession],
    services: Mapping[str, Any],
    *,
    refund_ids: Sequence[int],
    now: Callable[[], datetime],
    tz: str | tzinfo = "Asia/Shanghai",
    query: bool = False,
) -> list[PaymentRefund]:
    """Step 2 (module docstring): ask each still requested refund's gateway, outside any
    transaction, and record each answer in a transaction of its own. ``query``: ask how a
    refund already sent stands first (the job). Returns the refunds as they stand."""
    settled: list[PaymentRefund] = []
    for target in await _targets(sessions, refund_ids):
        try:
            outcome = await _ask(services, target, query=query or target.gateway_refund_id is not None)
            async with transaction(sessions) as session:
                refund = await record_refund_outcome(session, refund_id=target.id, outcome=outcome, now=now(), tz=tz)
        except Exception as error:  # one refund's surprise (a bug, the database) must not stop the others
            log.exception("refund %s could not be sent or recorded; it stays requested", target.out_refund_no)
            await _alarm_unsettled(sessions, target, error, now())
            continue
        settled.append(refund)
    return settled


async def _alarm_unsettled(sessions: async_sessionmaker[AsyncSession], target: _Target, error: Exception,
                           now: datetime) -> None:
    from backend.payments.online.credit import alarm_on_order

    try:
        async with transaction(sessions) as session:
            order = (await session.execute(select(PaymentOrder).where(  # type: ignore[arg-type]
                PaymentOrder.out_trade_no == target.out_trade_no))).scalar_one_or_none()  # type: ignore[arg-type]
            await alarm_on_order(session, order=order, now=now,
                                 detail=f"{target.out_refund_no} could not be settled: {type(error).__name__}")
    except Exception:
        log.exception("refund %s: the alarm could not be opened either", target.out_refund_no)


async def record_refund_outcome(session: AsyncSession, *, refund_id: int, outcome: Outcome | None, now: datetime,
                                tz: str | tzinfo = "Asia/Shanghai") -> PaymentRefund:
    """Write what the gateway answered for refund ``refund_id`` (module docstring, step 2),
    once: a refund no longer ``requested`` is returned unchanged. The caller commits."""
    from backend.payments.counter import Operator, business_day, record_payment  # counter imports this module

    refund = await session.get(PaymentRefund, refund_id)
    if refund is None:
        raise LookupError(f"no refund {refund_id}")
    # The account first, then the refund: every writer of an account locks it first.
    account = await session.get(Account, refund.account_id, with_for_update=True, populate_existing=True)
    await session.refresh(refund, with_for_update=True)
    assert account is not None
    if refund.state is not RefundState.requested or outcome is None:
        return refund
    if isinstance(outcome, RefundResult) and outcome.refund_id:
        refund.gateway_refund_id = outcome.refund_id[:64]
    if isinstance(outcome, RefundResult) and outcome.state is GatewayRefundState.succeeded \
            and outcome.amount_fen not in (None, refund.amount_fen):  # not what we asked: a person looks
        from backend.payments.online.credit import alarm_on_order

        await alarm_on_order(session, order=await session.get(PaymentOrder, refund.order_id), now=now, detail=(
            f"{refund.out_refund_no}: the gateway refunded {outcome.amount_fen} fen, not {refund.amount_fen}"))
    elif isinstance(outcome, RefundResult) and outcome.state is GatewayRefundState.succeeded:
        original = await _original_payment(session, refund.order_id)
        assert original.id is not None
        if not await take_back_pending_write(session, payment_id=original.id, amount_fen=refund.amount_fen, now=now,
                                             by=refund.requested_by):  # written since it was requested: a person checks
            from backend.payments.online.credit import alarm_on_order

            await alarm_on_order(session, order=await session.get(PaymentOrder, refund.order_id), now=now, detail=(
                f"{refund.out_refund_no} refunded online, but the payment was written to the card/meter already"))
        payment = await record_payment(
            session, account=account, kind=PaymentKind.refund, entry_kind=EntryKind.refund, channel=original.channel,
            purpose=original.purpose, amount_fen=refund.amount_fen, idempotency_key=f"refund:{refund.out_refund_no}",
            operator=Operator(None, refund.requested_by), now=now, day=business_day(now, tz),
            reference=refund.gateway_refund_id or refund.out_refund_no,
            note=f"原路退款 {refund.out_refund_no} ({original.serial_no})"[:200])
        refund.state, refund.refund_payment_id, refund.settled_at = RefundState.succeeded, payment.id, now
    elif _failed(outcome):
        refund.state, refund.settled_at = RefundState.failed, now
        refund.failure = _failure_text(outcome)
        await _alarm(session, refund, account, now)
    await session.flush()
    return refund


def _failed(outcome: Outcome) -> bool:
    if isinstance(outcome, RefundResult):
        return outcome.state is GatewayRefundState.failed
    # A correctly signed refusal is final; every other error leaves the outcome unknown.
    return isinstance(outcome, GatewayRejected)


def _failure_text(outcome: Outcome) -> str:
    if isinstance(outcome, RefundResult):
        return (outcome.detail or "the gateway says the refund failed")[:200]
    return (str(getattr(outcome, "detail", "") or outcome.message_en or outcome.code))[:200]


async def _original_payment(session: AsyncSession, order_id: int) -> Payment:
    found = await session.execute(select(Payment).join(  # type: ignore[arg-type]
        PaymentOrder, PaymentOrder.payment_id == Payment.id).where(PaymentOrder.id == order_id))  # type: ignore[arg-type]
    return found.scalars().one()


async def _alarm(session: AsyncSession, refund: PaymentRefund, account: Account, now: datetime) -> None:
    """``refund_failed`` on the payment subject of the refund's order (as the notify
    path's alarms name an order), valued at the fen not refunded."""
    order = await session.get(PaymentOrder, refund.order_id)
    assert order is not None and order.id is not None
    area = await session.execute(text("SELECT area_id FROM households WHERE id = :h"), {"h": account.household_id})
    await open_alarms(session, subject_kind=AlarmSubjectKind.payment, kind=AlarmKind.refund_failed, subjects=[
        AlarmSubject(subject_id=order.id, value=Decimal(refund.amount_fen),
                     detail=f"{refund.out_refund_no}: {refund.failure or ''}"[:200], area_id=area.scalar_one_or_none(),
                     name=order.out_trade_no),
    ], now=now)


@dataclass(frozen=True, slots=True)
class RefundView:
    """A refund with what names it at the gateway: its order's number, channel and merchant."""

    refund: PaymentRefund
    out_trade_no: str
    channel: PaymentChannel
    merchant: str


async def refund_views(session: AsyncSession, refund_ids: Sequence[int]) -> list[RefundView]:
    """The refunds ``refund_ids`` as they stand now, in that order (unknown ids left out)."""
    if not refund_ids:
        return []
    found = await session.execute(
        select(PaymentRefund, PaymentOrder.out_trade_no, PaymentOrder.channel, PaymentOrder.merchant)  # type: ignore[call-overload]
        .join(PaymentOrder, PaymentOrder.id == PaymentRefund.order_id)
        .where(PaymentRefund.id.in_(list(refund_ids)))  # type: ignore[union-attr]
        .execution_options(populate_existing=True))
    views = {row[0].id: RefundView(row[0], row[1], PaymentChannel(row[2]), row[3]) for row in found.all()}
    return [views[i] for i in refund_ids if i in views]


# --------------------------------------------------------------------------- 3. both, and the job


@dataclass(frozen=True, slots=True)
class OnlineRefunds:
    """What :func:`refund_online` did: the refunds as the gateways left them, and the
    remainder the counter pays."""

    refunds: tuple[PaymentRefund, ...]
    remainder_fen: int

    @property
    def succeeded_fen(self) -> int:
        return sum(r.amount_fen for r in self.refunds if r.state is RefundState.succeeded)

    @property
    def pending_fen(self) -> int:
        return sum(r.amount_fen for r in self.refunds if r.state is RefundState.requested)


async def refund_online(
    sessions: async_sessionmaker[AsyncSession],
    services: Mapping[str, Any],
    *,
    account_id: int,
    amount_fen: int,
    reason: str,
    by: str,
    now: Callable[[], datetime],
    tz: str | tzinfo = "Asia/Shanghai",
    payment_id: int | None = None,
    scope_patterns: Sequence[str] | None = None,
) -> OnlineRefunds:
    """Request (one transaction, committed), send and record (module docstring): owns its
    transactions, so the gateways are never called while the account is locked."""
    async with transaction(sessions) as session:
        plan = await request_online_refunds(session, account_id=account_id, amount_fen=amount_fen, reason=reason, by=by,
                                            now=now(), tz=tz, payment_id=payment_id, scope_patterns=scope_patterns)
    ids = [refund.id for refund in plan.refunds if refund.id is not None]
    refunds = await send_refunds(sessions, services, refund_ids=ids, now=now, tz=tz)
    return OnlineRefunds(tuple(refunds), plan.remainder_fen)


async def open_refund_ids(session: AsyncSession, *, before: datetime, limit: int = QUERY_BATCH) -> list[int]:
    """The requested refunds asked for before ``before``, oldest first."""
    found = await session.execute(text(
        "SELECT id FROM payment_refunds WHERE state = 'requested' AND requested_at < :before "
        "ORDER BY requested_at, id LIMIT :limit"), {"before": before, "limit": limit})
    return [int(row) for row in found.scalars().all()]


async def query_open_refunds(sessions: async_sessionmaker[AsyncSession], services: Mapping[str, Any], *,
                             now: Callable[[], datetime], tz: str | tzinfo = "Asia/Shanghai") -> list[PaymentRefund]:
    """The job's work: every refund still ``requested`` (sent and processing, never
    answered, or requested by a closing and not sent yet) is asked about, or sent, and
    its answer recorded."""
    async with sessions() as session:
        ids = await open_refund_ids(session, before=now() - SETTLE_GRACE)
    return await send_refunds(sessions, services, refund_ids=ids, now=now, tz=tz)


async def refund_job(runtime: Any, payload: Mapping[str, Any]) -> int:
    """The job ``query_refunds`` (every minute): :func:`query_open_refunds` with the
    configured merchants (``payments.online``). Returns how many refunds it settled."""
    refunds = await query_open_refunds(runtime.sessions, runtime.services, now=runtime.now, tz=runtime.timezone)
    return sum(1 for refund in refunds if refund.state is not RefundState.requested)
