"""Counter payments (柜台收费): recharge and bill payment, reversal (冲正), and closing an
account with its refund (销户).

**Taking a payment.** The cashier types the amount twice (金额 / 确认金额: they must
match, PAYMENT_AMOUNT_MISMATCH); it must be above zero (PAYMENT_AMOUNT_INVALID) and at
most the largest single counter payment (``SHUIWU_PAYMENTS_MAX_COUNTER_PAYMENT``, ¥50,000
by default: PAYMENT_ABOVE_MAXIMUM). A card payment needs its POS 参考号 and a transfer its
serial; a bank payment its partner (PAYMENT_REFERENCE_REQUIRED). The caller's
idempotency key makes a double click one payment: the same key with the same account,
channel, amount, purpose and cashier returns the stored payment; with anything else it is
IDEMPOTENCY_CONFLICT. The payment row, its ledger entry (``recharge`` for a recharge,
``payment`` for bills; billing's ``post_entry``, key ``payment:<id>``) and the
``payment.succeeded`` event are written in one transaction.

**Bills (缴费).** Paying ``bills`` credits the account (kind ``payment``) and, on a
postpaid account, allocates the money in the same transaction
(``backend.billing.allocations.allocate_credit``): the oldest open bills first, each
bill's late fee (posted then, as it reads that day) before its principal; what is left
stays on the account for the next bill. ``bill_ids`` names bills to pay first (oldest of
them first, still fee before principal), then the others oldest first; naming another
account's bill (or an unknown one) is NOT_FOUND, a voided one BILL_VOIDED, before
anything is written. A **recharge on a postpaid account** is allocated the same way:
money on a postpaid account is there to pay its bills. On other modes a ``bills``
payment credits the balance as before.

**Reversal (冲正).** A payment is reversed by the opposite ledger entry (``reversal``, key
``reversal:<id>``) and marked ``reversed``, never edited or deleted. On a postpaid
account its allocations are undone by negative rows and the bills it paid go back to
``open`` (``allocations.undo_allocations``: the accrual resumes from the reversal's day;
a late fee posted when it was paid stays posted, since it was owed). The cashier who took
it may reverse it on its business day; anyone else, or a later day, needs
``counter:reverse_any`` (REVERSAL_NOT_ALLOWED). Twice is PAYMENT_ALREADY_REVERSED. The
money goes back out of the reverser's till, so the reversal counts in the reverser's day
(日结) of the day it is made, whatever the payment's day; a handed-over day refuses
further payments and reversals by its cashier (CASHIER_DAY_LOCKED). A payment with a refund
through its original channel (requested or succeeded) is not reversed, nor is a recharge
already written to the card or meter (REVERSAL_NOT_ALLOWED, each with its own message);
a recharge still waiting to be written has its pending write cancelled with the reversal.

**Closing an account (销户, :func:`close_account`).** Billing's ``final_charge`` prices the
usage up to the final reading (one entered at the desk, stored as a manual reading, or
the meter's latest); a postpaid account's late fees accrued to the day are posted and
credit on it paid to its bills (the collection below is allocated too, so no bill stays
open on a closed account); then a positive balance is refunded in cash at the counter (or,
once online payments exist, back through the original channel) and a negative one is
collected in the channel the cashier names; then billing closes the settled,
zero-balance account and ``account.closed`` is emitted.

Every function is plain async Python: the caller passes who acts and when, and commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from typing import Protocol

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.accounts import account_in_scope, close_settled_account, final_charge
from backend.billing.allocations import allocate_credit, check_payable_bills, undo_allocations
from backend.billing.errors import AccountClosed as AccountIsClosed
from backend.billing.late_fees import post_late_fees
from backend.billing.ledger import post_entry
from backend.billing.models import Account, AccountStatus, BillingMode, EntryKind
from backend.db import raw_connection
from backend.errors import DomainError, ErrorCode, NotFound
from backend.events.service import emit_event
from backend.payments import errors
from backend.payments.events import AccountClosed, PaymentSucceeded
from backend.payments.models import (
    CashierDay,
    Payment,
    PaymentChannel,
    PaymentKind,
    PaymentPurpose,
    PaymentStatus,
)
from backend.payments.online.models import PaymentRefund
from backend.payments.online.pending import add_pending_write, take_back_pending_write
from backend.readings.partitions import as_zone

__all__ = [
    "DEFAULT_MAX_COUNTER_PAYMENT_FEN",
    "ClosedAccount",
    "Operator",
    "RecordedPayment",
    "cashier_day_locked",
    "close_account",
    "record_payment",
    "reverse_payment",
    "take_payment",
    "write_payment",
]

DEFAULT_MAX_COUNTER_PAYMENT_FEN = 5_000_000  # ¥50,000
_NEEDS_REFERENCE = {PaymentChannel.card: "reference", PaymentChannel.transfer: "reference"}


@dataclass(frozen=True, slots=True)
class Operator:
    """Who is at the counter: a staff user (``id``) and the name receipts and the log show."""

    id: int | None
    name: str
    # counter:reverse_any: reverse another cashier's payment, or one of an earlier day.
    may_reverse_any: bool = False


def business_day(instant: datetime, tz: str | tzinfo) -> date:
    """The business day of ``instant`` in the utility's zone (日结 groups by it)."""
    return instant.astimezone(as_zone(tz)).date()


def serial_number(payment_id: int, day: date) -> str:
    """The 流水号 of payment ``payment_id``: ``SW`` + the business day + the id, unique by the id."""
    return f"SW{day:%Y%m%d}{payment_id:010d}"


# The advisory lock class of a cashier's day (日结): payments and reversals hold it shared
# until they commit, a hand-over exclusively (backend.payments.days), so a hand-over
# waits for the day's payments in flight and no payment slips in after its figures.
CASHIER_DAY_LOCK_CLASS = 16_0001


def cashier_day_key(operator_id: int, day: date) -> str:
    """What :data:`CASHIER_DAY_LOCK_CLASS` is keyed by (hashed by PostgreSQL's ``hashtext``)."""
    return f"{operator_id}:{day.isoformat()}"


async def cashier_day_locked(session: AsyncSession, operator_id: int | None, day: date) -> bool:
    """Whether ``operator_id``'s ``day`` is handed over, holding the day's lock shared until
    the transaction ends (see :data:`CASHIER_DAY_LOCK_CLASS`)."""
    if operator_id is None:
        return False
    await session.execute(text("SELECT pg_advisory_xact_lock_shared(:class, hashtext(:key))"),
                          {"class": CASHIER_DAY_LOCK_CLASS, "key": cashier_day_key(operator_id, day)})
    found = await session.execute(select(CashierDay.id).where(  # type: ignore[call-overload]
        CashierDay.operator_id == operator_id, CashierDay.business_day == day))
    return found.first() is not None


def _clean(value: str | None, limit: int) -> str | None:
    value = (value or "").strip()
    return value[:limit] if value else None


async def take_payment(
    session: AsyncSession,
    *,
    account_id: int,
    channel: PaymentChannel,
    purpose: PaymentPurpose,
    amount_fen: int,
    confirm_amount_fen: int,
    idempotency_key: str,
    operator: Operator,
    now: datetime,
    tz: str | tzinfo = "Asia/Shanghai",
    reference: str | None = None,
    bank_partner: str | None = None,
    bank_outlet: str | None = None,
    note: str = "",
    max_fen: int = DEFAULT_MAX_COUNTER_PAYMENT_FEN,
    scope_patterns: Sequence[str] | None = None,
    bill_ids: Sequence[int] = (),
) -> Payment:
    """收费: take ``amount_fen`` for ``account_id`` (module docstring for the refusals and
    for how a postpaid account's bills take it; ``bill_ids`` are paid first). Returns the
    payment (the stored one when the key was used before)."""
    channel, purpose = PaymentChannel(channel), PaymentPurpose(purpose)
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int) or amount_fen <= 0:
        raise errors.PaymentAmountInvalid(field="amount")
    if confirm_amount_fen != amount_fen:
        raise errors.PaymentAmountMismatch(field="confirmAmount")
    if amount_fen > max_fen:
        raise errors.PaymentAboveMaximum(field="amount")
    reference, bank_partner, bank_outlet = _clean(reference, 64), _clean(bank_partner, 50), _clean(bank_outlet, 50)
    if channel in _NEEDS_REFERENCE and reference is None:
        raise errors.PaymentReferenceRequired(field="reference")
    if channel is PaymentChannel.bank and bank_partner is None:
        raise errors.PaymentReferenceRequired(field="bankPartner")
    if not idempotency_key or len(idempotency_key) > 100:
        raise DomainError("幂等键须为 1 至 100 个字符", "The idempotency key must be 1 to 100 characters",
                          field="idempotencyKey", code=ErrorCode.INVALID)
    if len(note) > 200:
        raise DomainError("备注不能超过 200 个字符", "A note is at most 200 characters", field="note",
                          code=ErrorCode.TOO_LONG)
    account = await account_in_scope(session, account_id, scope_patterns, lock=True, field="accountId")
    # Under the account's lock: a double click waits here for the first and then finds it.
    previous = (await session.execute(select(Payment).where(
        Payment.idempotency_key == idempotency_key))).scalars().first()  # type: ignore[arg-type]
    if previous is not None:
        if (previous.account_id, previous.channel, previous.amount_fen, previous.kind, previous.operator_id,
                previous.purpose) != (account_id, channel, amount_fen, PaymentKind.collect, operator.id, purpose):
            raise errors.IdempotencyKeyReused(field="idempotencyKey")
        return previous
    if account.status is not AccountStatus.open:
        raise AccountIsClosed(field="accountId")
    day = business_day(now, tz)
    if await cashier_day_locked(session, operator.id, day):
        raise errors.CashierDayLocked(field="accountId")
    if bill_ids:
        await check_payable_bills(session, account_id=account_id, bill_ids=bill_ids)
    kind = EntryKind.recharge if purpose is PaymentPurpose.recharge else EntryKind.payment
    return await record_payment(session, account=account, kind=PaymentKind.collect, entry_kind=kind, channel=channel,
                         purpose=purpose, amount_fen=amount_fen, idempotency_key=idempotency_key, operator=operator,
                         now=now, day=day, reference=reference, bank_partner=bank_partner, bank_outlet=bank_outlet,
                         note=note.strip(), bill_ids=bill_ids)


class PayableAccount(Protocol):
    """What a payment needs of its account: an ``Account`` row, a ``LockedAccount``, or
    the online credit's few columns."""

    @property
    def id(self) -> int | None: ...
    @property
    def household_id(self) -> int: ...
    @property
    def mode(self) -> BillingMode: ...


_INSERT_PAYMENT = """
INSERT INTO payments (id, serial_no, idempotency_key, account_id, household_id, kind, channel, purpose, amount_fen,
                      reference, bank_partner, bank_outlet, operator_id, operator_name, status, entry_id, note,
                      receipts_printed, paid_at, business_day)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 'succeeded', $15, $16, 0, $17, $18)
"""


@dataclass(frozen=True, slots=True)
class RecordedPayment:
    """A payment :func:`write_payment` wrote: its id and 流水号."""

    id: int
    serial_no: str


async def write_payment(session: AsyncSession, *, account: PayableAccount, kind: PaymentKind, entry_kind: EntryKind,
                        channel: PaymentChannel, purpose: PaymentPurpose, amount_fen: int, idempotency_key: str,
                        operator: Operator, now: datetime, day: date, reference: str | None = None,
                        bank_partner: str | None = None, bank_outlet: str | None = None, note: str = "",
                        bill_ids: Sequence[int] = (), number: int | None = None) -> RecordedPayment:
    """Write the payment, its ledger entry, (money in on a postpaid account) its allocation
    to the bills, ``bill_ids`` first, (money in on a prepaid_card / prepaid_meter account)
    its pending card or meter write, and (money in) ``payment.succeeded``, whose balance is
    the one after it all (late fees the payment posted included). The one writer of a
    payment of any channel: the counter's (:func:`record_payment`) and the online credit
    (``online.credit``, a notification's hot path: a few plain statements, no ORM).
    ``account`` is locked by the caller (or by the ledger as it posts). ``number`` is the
    payment's id when the caller drew it from ``payments_id_seq`` already."""
    assert account.id is not None
    driver = await raw_connection(session)
    if number is None:
        number = await driver.fetchval("SELECT nextval('payments_id_seq')")
    assert number is not None
    serial_no = serial_number(number, day)
    # The entry first, so the payment is inserted once with it.
    signed = amount_fen if kind is PaymentKind.collect else -amount_fen
    entry = await post_entry(session, account_id=account.id, kind=entry_kind, amount_fen=signed,
                             ref=f"payment:{number}", idempotency_key=f"payment:{number}",
                             note=f"{serial_no} {channel.value}", posted_by=operator.name, posted_at=now)
    await driver.execute(_INSERT_PAYMENT, number, serial_no, idempotency_key, account.id, account.household_id,
                         PaymentKind(kind).value, PaymentChannel(channel).value, PaymentPurpose(purpose).value,
                         amount_fen, reference, bank_partner, bank_outlet, operator.id, operator.name[:100], entry.id,
                         note, now, day)
    balance_after = entry.balance_after_fen
    if kind is PaymentKind.collect and account.mode is BillingMode.postpaid:
        allocated = await allocate_credit(session, account_ids=[account.id], on=day, now=now, entry_id=entry.id,
                                          bill_ids=bill_ids, by=operator.name)
        balance_after -= allocated.late_fee_posted_fen
    if kind is PaymentKind.collect:
        # Money credited anywhere but at the card or the meter must still be written there.
        await add_pending_write(session, account=account, payment_id=number, amount_fen=amount_fen, now=now)
        await emit_event(session, "payment.succeeded", PaymentSucceeded(
            payment_id=number, account_id=account.id, household_id=account.household_id, channel=channel,
            amount_fen=amount_fen, balance_after_fen=balance_after,
        ), key=f"account:{account.id}")
    return RecordedPayment(number, serial_no)


async def record_payment(session: AsyncSession, *, account: PayableAccount, kind: PaymentKind, entry_kind: EntryKind,
                         channel: PaymentChannel, purpose: PaymentPurpose, amount_fen: int, idempotency_key: str,
                         operator: Operator, now: datetime, day: date, reference: str | None = None,
                         bank_partner: str | None = None, bank_outlet: str | None = None, note: str = "",
                         bill_ids: Sequence[int] = ()) -> Payment:
    """:func:`write_payment`, returning the payment row (the counter's and refunds' form)."""
    recorded = await write_payment(
        session, account=account, kind=kind, entry_kind=entry_kind, channel=channel, purpose=purpose,
        amount_fen=amount_fen, idempotency_key=idempotency_key, operator=operator, now=now, day=day,
        reference=reference, bank_partner=bank_partner, bank_outlet=bank_outlet, note=note, bill_ids=bill_ids)
    payment = await session.get(Payment, recorded.id)
    assert payment is not None
    return payment


# The name other branches of issue 18 were written against (refunds): the same function.
_record = record_payment


async def reverse_payment(
    session: AsyncSession,
    *,
    payment_id: int,
    reason: str,
    operator: Operator,
    now: datetime,
    tz: str | tzinfo = "Asia/Shanghai",
    scope_patterns: Sequence[str] | None = None,
) -> Payment:
    """冲正 payment ``payment_id`` (module docstring for who may and the refusals)."""
    payment = await session.get(Payment, payment_id)
    if payment is None:
        raise NotFound(field="id")
    await account_in_scope(session, payment.account_id, scope_patterns, lock=True, field="id")
    await session.refresh(payment, with_for_update=True)
    if payment.status is PaymentStatus.reversed:
        raise errors.PaymentAlreadyReversed(field="id")
    if payment.kind is not PaymentKind.collect:
        raise DomainError("退费不能冲正", "A refund cannot be reversed", field="id", code=ErrorCode.INVALID)
    if len(reason.strip()) > 200:
        raise DomainError("冲正原因不能超过 200 个字符", "A reason is at most 200 characters", field="reason",
                          code=ErrorCode.TOO_LONG)
    today = business_day(now, tz)
    own_today = payment.operator_id is not None and payment.operator_id == operator.id and payment.business_day == today
    if not (own_today or operator.may_reverse_any):
        raise errors.ReversalNotAllowed(field="id")
    # The money goes back out of the reverser's till today: their day must be open (the
    # payment's own day may be handed over; 日结 counts the reversal today).
    if await cashier_day_locked(session, operator.id, today):
        raise errors.CashierDayLocked(field="id")
    # Under the account's lock (a refund request takes it too): money given back online is
    # not also reversed, and money on the card or meter already is not reversed here.
    refunded = await session.execute(text(
        "SELECT 1 FROM payment_refunds r JOIN payment_orders o ON o.id = r.order_id "
        "WHERE o.payment_id = :p AND r.state <> 'failed' LIMIT 1"), {"p": payment.id})
    if refunded.first() is not None:
        raise errors.ReversalRefundedOnline(field="id")
    if not await take_back_pending_write(session, payment_id=payment_id, amount_fen=payment.amount_fen, now=now,
                                         by=operator.name):
        raise errors.ReversalWrittenToDevice(field="id")
    entry = await post_entry(session, account_id=payment.account_id, kind=EntryKind.reversal,
                             amount_fen=-payment.amount_fen, ref=f"payment:{payment.id}",
                             idempotency_key=f"reversal:{payment.id}", note=f"冲正 {payment.serial_no}",
                             posted_by=operator.name, posted_at=now)
    payment.status, payment.reversal_entry_id = PaymentStatus.reversed, entry.id
    payment.reversed_at, payment.reversed_by, payment.reversal_reason = now, operator.name[:100], reason.strip()
    payment.reversed_by_id, payment.reversal_business_day = operator.id, today
    await session.flush()
    if payment.entry_id is not None:
        await undo_allocations(session, account_id=payment.account_id, entry_id=payment.entry_id,
                               reversal_entry_id=entry.id, on=today, now=now, by=operator.name)
    return payment


@dataclass(frozen=True, slots=True)
class ClosedAccount:
    account: Account
    final_charge_fen: int  # what the final charge debited (net)
    refund: Payment | None  # the balance given back
    collection: Payment | None  # the arrears taken
    # Refunds through the original channels requested by this call: the account stays open
    # until they are settled, then closing again pays the rest (backend.payments.online.refunds).
    online_refunds: tuple[PaymentRefund, ...] = ()


async def close_account(
    session: AsyncSession,
    *,
    account_id: int,
    final_reading_at: datetime,
    operator: Operator,
    now: datetime,
    idempotency_key: str,
    tz: str | tzinfo = "Asia/Shanghai",
    collect_channel: PaymentChannel = PaymentChannel.cash,
    collect_reference: str | None = None,
    collect_bank_partner: str | None = None,
    collect_bank_outlet: str | None = None,
    scope_patterns: Sequence[str] | None = None,
) -> ClosedAccount:
    """销户: final charge up to ``final_reading_at`` (the desk's manual reading, stored by
    the caller first, or the meter's latest), then refund a positive balance or collect a
    negative one in ``collect_channel``, then close and emit ``account.closed``. A positive
    balance goes back through the account's online payments first: when any can take
    some, those refunds are requested (``online_refunds``) and the account is returned
    still open, to be closed again once they are settled; otherwise it is refunded in
    cash. REFUND_NOT_POSSIBLE while such refunds are in flight.
    The refund or collection is keyed ``<idempotency_key>:refund`` / ``:collect`` (the key
    is at most 90 characters). A collection follows the counter's rules for its channel
    (a card's reference, a bank's partner); it is not capped by the largest single counter
    payment: arrears are what they are, and the account cannot close without them."""
    if not idempotency_key or len(idempotency_key) > 90:
        raise DomainError("幂等键须为 1 至 90 个字符", "The idempotency key must be 1 to 90 characters",
                          field="idempotencyKey", code=ErrorCode.INVALID)
    collect_channel = PaymentChannel(collect_channel)
    reference, bank_partner = _clean(collect_reference, 64), _clean(collect_bank_partner, 50)
    if collect_channel in _NEEDS_REFERENCE and reference is None:
        raise errors.PaymentReferenceRequired(field="collectReference")
    if collect_channel is PaymentChannel.bank and bank_partner is None:
        raise errors.PaymentReferenceRequired(field="collectBankPartner")
    account = await account_in_scope(session, account_id, scope_patterns, lock=True, field="id")
    if account.status is not AccountStatus.open:
        raise AccountIsClosed(field="id")
    if final_reading_at > now:
        raise DomainError("最终读数时间不能晚于当前时间", "The final reading cannot be in the future",
                          field="finalReadingAt", code=ErrorCode.BAD_USER_INPUT)
    day = business_day(now, tz)
    if await cashier_day_locked(session, operator.id, day):
        raise errors.CashierDayLocked(field="id")
    charged = await final_charge(session, account_id=account_id, at=final_reading_at, tz=tz, now=now)
    if account.mode is BillingMode.postpaid:
        # The fees owed today are part of what closing settles; credit on it pays its bills.
        await post_late_fees(session, on=day, account_ids=[account_id], now=now, by=operator.name)
        await allocate_credit(session, account_ids=[account_id], on=day, now=now, by=operator.name)
    await session.refresh(account)
    refund = collection = None
    if account.balance_fen > 0:
        # Back through the original channels first (backend.payments.online.refunds): those
        # refunds are requested now and sent after commit; the account closes when closed
        # again once they are settled, the rest (failed ones included) then in cash.
        from backend.payments.online import refunds as online

        if await online.refunds_in_flight_fen(session, account_id):
            raise DomainError("原路退款处理中, 待支付平台确认后再销户",
                              "Refunds through the original channels are in flight: close once they are settled",
                              field="id", code=ErrorCode.REFUND_NOT_POSSIBLE)
        planned = await online.request_online_refunds(session, account_id=account_id, amount_fen=account.balance_fen,
                                                      reason="销户退费", by=operator.name, now=now, tz=tz,
                                                      account=account)
        if planned.refunds:
            return ClosedAccount(account, charged.charged_fen, None, None, online_refunds=planned.refunds)
        refund = await record_payment(session, account=account, kind=PaymentKind.refund, entry_kind=EntryKind.refund,
                               channel=PaymentChannel.cash, purpose=PaymentPurpose.recharge,
                               amount_fen=account.balance_fen, idempotency_key=f"{idempotency_key}:refund",
                               operator=operator, now=now, day=day, note="销户退费")
    elif account.balance_fen < 0:
        collection = await record_payment(session, account=account, kind=PaymentKind.collect, entry_kind=EntryKind.payment,
                                   channel=collect_channel, purpose=PaymentPurpose.bills,
                                   amount_fen=-account.balance_fen, idempotency_key=f"{idempotency_key}:collect",
                                   operator=operator, now=now, day=day, reference=reference,
                                   bank_partner=bank_partner, bank_outlet=_clean(collect_bank_outlet, 50),
                                   note="销户补缴")
    closed = await close_settled_account(session, account_id=account_id, now=now, by=operator.name, tz=tz)
    assert closed.id is not None
    await emit_event(session, "account.closed", AccountClosed(account_id=closed.id, household_id=closed.household_id),
                     key=f"account:{closed.id}")
    return ClosedAccount(closed, charged.charged_fen, refund, collection)

