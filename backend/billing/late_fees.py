"""Late fees (滞纳金): computed on read from the overdue days, never stored per day.

The arithmetic (this module's pure part, shared by queries, payments and the month-end
posting so "the fee on read" and "the fee posted" can never disagree):

- A bill accrues from the day after its ``due_date``: each day, ``late_fee_rate`` times
  the principal still owed that day. The owed principal changes only when money is
  allocated to the bill, and each allocation first folds the fee accrued so far into
  ``late_fee_carried`` (exact fen, not rounded) and moves ``late_fee_from`` to its day,
  so accrual is exact across partial payments.
- The fee on day ``D`` is ``min(cap, round_half_up(carried + owed × rate × days))``, with
  ``days`` the days from ``max(due_date, late_fee_from)`` to ``D``. A fee on day ``D``
  counts the days up to and including ``D`` that are after the due date: a bill due on
  the 15th owes one day's fee on the 16th.
- A waived bill's fee stops where it stood: ``late_fee_paid_fen + late_fee_waived_fen``.
- What is still owed of the fee is the fee minus what was paid and waived; what a
  posting writes is the fee minus what was posted (and waived). What a bill owes on a
  day (:func:`owed_on`) is its unpaid principal plus the fee still owed.

The services below the arithmetic (the caller commits each):

- **Rules** (滞纳金规则): :func:`set_late_fee_rule` stores a customer type's rule (on/off,
  daily rate 0–1% with at most 8 places, grace days 0–365, cap 0–1000 % of the bill);
  :func:`late_fee_rules` lists all three types, a type without a row showing the defaults
  (0.5‰ a day after 15 days, capped at the bill). :func:`late_fee_terms` is what the
  billing run copies onto a bill: the rate (0 when the rule is off) and the cap in fen
  (the bill's amount × cap percent, rounded half up), so a later rule change never
  rewrites a sent bill.
- **On read**: :func:`late_fee_owed` answers ``{bill_id: fen}`` for a day; a loaded row
  goes through ``LateFeeState.of(row)`` and the functions above.
- **Month-end posting** (:func:`post_late_fees`): for every open, overdue, unwaived bill
  of an open postpaid account, a ``late_fee`` entry of what accrued up to and including
  ``on`` and was not posted yet (``late_fee_unposted_on``: the same number a payment on
  that day posts), key ``late-fee:<bill_id>:<posted total after it, fen>`` (the posted
  total only grows, so the key names one posting), ref ``bill:<id>``. Set-based: the
  accounts are locked in id order (``ledger.lock_accounts``), then their bills ``FOR
  UPDATE`` in id order, as payments lock them, so the two never deadlock. A second run
  for the same day finds nothing unposted and writes nothing. The scheduled job
  (``post_late_fees``, 00:05 UTC on the 1st = 08:05 in Shanghai) posts as of the last
  day of the month that just ended in the utility's zone: that day's fee included, so a
  month's postings cover the whole month; a payment made before the job ran has already
  posted past it, and the job then posts nothing for that bill.
- **Waiver** (减免, :func:`waive_late_fee`, ``bills:waive``): stops the bill's fee where it
  stands on the waiver's day: ``late_fee_waived_fen`` is the fee then owed (not paid);
  the part of it already posted (and unpaid) is written off by one ``write_off`` credit
  (key ``late-fee-waive:<bill_id>``), the unposted part is never posted. A bill whose
  principal is paid becomes ``paid``. Refusals: NOT_FOUND (unknown or outside the
  scope), BILL_VOIDED, LATE_FEE_NOTHING_TO_WAIVE (waived already, or nothing owed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import CustomerType
from backend.billing.accounts import account_in_scope
from backend.billing.bills_models import (
    DEFAULT_LATE_FEE_CAP_PERCENT,
    DEFAULT_LATE_FEE_DAILY_RATE,
    DEFAULT_LATE_FEE_GRACE_DAYS,
)
from backend.billing.errors import BillVoided, LateFeeNothingToWaive
from backend.billing.ledger import EntryIn, lock_accounts, post_entries, post_entry
from backend.billing.models import BillingMode, EntryKind
from backend.db import raw_connection, transaction
from backend.errors import DomainError, ErrorCode, NotFound
from backend.readings.partitions import as_zone
from backend.runtime import Runtime

__all__ = [
    "BILL_STATE_COLUMNS", "LateFeePosting", "LateFeeRuleView", "LateFeeState", "LateFeeWaiver", "accrued_exact",
    "carry_to", "late_fee_key", "late_fee_on", "late_fee_owed", "late_fee_owed_on", "late_fee_rules",
    "late_fee_terms", "late_fee_unposted_on", "month_end_before", "overdue_account_ids", "owed_on", "post_late_fees",
    "post_month_end_late_fees", "set_late_fee_rule", "waive_late_fee",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LateFeeState:
    """The columns of a bill the arithmetic reads (``backend.billing.bills_models.Bill``)."""

    amount_fen: int
    principal_paid_fen: int
    due_date: date
    late_fee_rate: Decimal
    late_fee_cap_fen: int
    late_fee_carried: Decimal
    late_fee_from: date | None
    late_fee_posted_fen: int
    late_fee_paid_fen: int
    late_fee_waived_fen: int
    waived: bool
    voided: bool = False

    @classmethod
    def of(cls, bill: Any) -> LateFeeState:
        """The state of a bill: a model, or a database record with the same names."""
        get = bill.__getitem__ if hasattr(bill, "keys") else (lambda name: getattr(bill, name))
        return cls(
            amount_fen=int(get("amount_fen")),
            principal_paid_fen=int(get("principal_paid_fen")),
            due_date=get("due_date"),
            late_fee_rate=Decimal(get("late_fee_rate")),
            late_fee_cap_fen=int(get("late_fee_cap_fen")),
            late_fee_carried=Decimal(get("late_fee_carried")),
            late_fee_from=get("late_fee_from"),
            late_fee_posted_fen=int(get("late_fee_posted_fen")),
            late_fee_paid_fen=int(get("late_fee_paid_fen")),
            late_fee_waived_fen=int(get("late_fee_waived_fen")),
            waived=get("late_fee_waived_at") is not None,
            voided=str(get("status")) in {"voided", "BillStatus.voided"},
        )


def accrued_exact(state: LateFeeState, day: date) -> Decimal:
    """The fee accrued by the end of ``day`` in exact fen, before the cap and rounding."""
    start = max(state.due_date, state.late_fee_from) if state.late_fee_from else state.due_date
    days = max(0, (day - start).days)
    owed = state.amount_fen - state.principal_paid_fen
    return state.late_fee_carried + owed * state.late_fee_rate * days


def late_fee_on(state: LateFeeState, day: date) -> int:
    """The bill's whole late fee on ``day`` in fen (paid, posted or not): capped, rounded
    half up once; frozen at what was paid and waived once waived; 0 for a voided bill."""
    if state.voided:
        return 0
    if state.waived:
        return state.late_fee_paid_fen + state.late_fee_waived_fen
    exact = accrued_exact(state, day).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return min(state.late_fee_cap_fen, int(exact))


def late_fee_owed_on(state: LateFeeState, day: date) -> int:
    """What the customer still owes of the late fee on ``day``."""
    if state.voided or state.waived:
        return 0
    return late_fee_on(state, day) - state.late_fee_paid_fen


def late_fee_unposted_on(state: LateFeeState, day: date) -> int:
    """What a posting on ``day`` writes as a ``late_fee`` entry: accrued and not posted."""
    if state.voided or state.waived:
        return 0
    return max(0, late_fee_on(state, day) - state.late_fee_posted_fen)


def owed_on(state: LateFeeState, day: date) -> int:
    """What the bill owes on ``day``: its unpaid principal plus the late fee still owed
    (0 for a voided bill)."""
    if state.voided:
        return 0
    return state.amount_fen - state.principal_paid_fen + late_fee_owed_on(state, day)


def carry_to(state: LateFeeState, day: date) -> tuple[Decimal, date]:
    """``(late_fee_carried, late_fee_from)`` to store before the owed principal changes on
    ``day`` (an allocation, or its undoing), so later days accrue on the new amount."""
    if day <= state.due_date and state.late_fee_from is None:
        return state.late_fee_carried, state.due_date
    start = max(state.due_date, state.late_fee_from) if state.late_fee_from else state.due_date
    if day <= start:
        return state.late_fee_carried, start
    return accrued_exact(state, day), day


# --------------------------------------------------------------------------- services

# The bill columns LateFeeState reads, for raw SQL over ``bills`` (allocations use it too).
BILL_STATE_COLUMNS = (
    "id, account_id, period, status, amount_fen, principal_paid_fen, due_date, late_fee_rate, late_fee_cap_fen, "
    "late_fee_carried, late_fee_from, late_fee_posted_fen, late_fee_paid_fen, late_fee_waived_fen, "
    "late_fee_waived_at"
)


def late_fee_key(bill_id: int, posted_after_fen: int) -> str:
    """The idempotency key of a ``late_fee`` posting that brings bill ``bill_id``'s posted
    fee to ``posted_after_fen`` (it only grows: one key per posting)."""
    return f"late-fee:{bill_id}:{posted_after_fen}"


@dataclass(frozen=True, slots=True)
class LateFeeRuleView:
    """A customer type's rule as it applies (``updated_at`` None: the defaults, no row)."""

    customer_type: CustomerType
    enabled: bool
    daily_rate: Decimal
    grace_days: int
    cap_percent: int
    updated_by: str | None = None
    updated_at: datetime | None = None


def _default_rule(customer_type: CustomerType) -> LateFeeRuleView:
    return LateFeeRuleView(customer_type, True, DEFAULT_LATE_FEE_DAILY_RATE, DEFAULT_LATE_FEE_GRACE_DAYS,
                           DEFAULT_LATE_FEE_CAP_PERCENT)


async def late_fee_rules(session: AsyncSession) -> dict[CustomerType, LateFeeRuleView]:
    """Every customer type's rule, in the enum's order; a type without a row: the defaults."""
    driver = await raw_connection(session)
    rows = {row["customer_type"]: row for row in await driver.fetch(
        "SELECT customer_type, enabled, daily_rate, grace_days, cap_percent, updated_by, updated_at "
        "FROM late_fee_rules")}
    rules = {}
    for customer_type in CustomerType:
        row = rows.get(customer_type.value)
        rules[customer_type] = _default_rule(customer_type) if row is None else LateFeeRuleView(
            customer_type, row["enabled"], Decimal(row["daily_rate"]).normalize(), row["grace_days"],
            row["cap_percent"], row["updated_by"], row["updated_at"])
    return rules


def late_fee_terms(rule: LateFeeRuleView, amount_fen: int) -> tuple[Decimal, int]:
    """``(late_fee_rate, late_fee_cap_fen)`` a bill of ``amount_fen`` copies from ``rule``
    when it is issued: rate 0 when the rule is off; cap = amount × cap percent, half up."""
    if not rule.enabled:
        return Decimal(0), 0
    cap = (Decimal(amount_fen) * rule.cap_percent / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return rule.daily_rate, int(cap)


def _bad(field: str, message: str, message_en: str) -> DomainError:
    return DomainError(message, message_en, field=field, code=ErrorCode.INVALID)


async def set_late_fee_rule(
    session: AsyncSession,
    *,
    customer_type: CustomerType,
    enabled: bool,
    daily_rate: Decimal,
    grace_days: int,
    cap_percent: int,
    by: str,
    now: datetime,
) -> LateFeeRuleView:
    """Store ``customer_type``'s rule (insert or replace). It applies to bills issued from
    now on; sent bills keep the terms they were issued with. Refused (INVALID, with the
    field): a daily rate outside 0–0.01 or with more than 8 places, grace days outside
    0–365, a cap outside 0–1000 %."""
    customer_type = CustomerType(customer_type)
    try:
        rate = Decimal(daily_rate)
        exponent = rate.as_tuple().exponent
    except (InvalidOperation, TypeError, ValueError):
        raise _bad("dailyRate", "日滞纳金率须为 0 至 0.01 之间的小数", "The daily rate must be 0 to 0.01") from None
    if not rate.is_finite() or not (0 <= rate <= Decimal("0.01")) or not isinstance(exponent, int) or exponent < -8:
        raise _bad("dailyRate", "日滞纳金率须为 0 至 0.01 之间的小数, 最多八位小数",
                   "The daily rate must be 0 to 0.01 with at most 8 places")
    if isinstance(grace_days, bool) or not isinstance(grace_days, int) or not 0 <= grace_days <= 365:
        raise _bad("graceDays", "宽限天数须为 0 至 365", "Grace days must be 0 to 365")
    if isinstance(cap_percent, bool) or not isinstance(cap_percent, int) or not 0 <= cap_percent <= 1000:
        raise _bad("capPercent", "封顶比例须为 0 至 1000 (%)", "The cap must be 0 to 1000 %")
    driver = await raw_connection(session)
    await driver.execute("""
        INSERT INTO late_fee_rules (customer_type, enabled, daily_rate, grace_days, cap_percent, updated_by, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (customer_type) DO UPDATE SET enabled = excluded.enabled, daily_rate = excluded.daily_rate,
            grace_days = excluded.grace_days, cap_percent = excluded.cap_percent, updated_by = excluded.updated_by,
            updated_at = excluded.updated_at""",
        customer_type.value, bool(enabled), rate, grace_days, cap_percent, by[:100], now)
    return LateFeeRuleView(customer_type, bool(enabled), rate.normalize(), grace_days, cap_percent, by[:100], now)


async def late_fee_owed(session: AsyncSession, *, bill_ids: Sequence[int], on: date) -> dict[int, int]:
    """The late fee each of ``bill_ids`` still owes on ``on`` (fen; unknown ids left out):
    exactly what a payment that day would post and collect."""
    driver = await raw_connection(session)
    rows = await driver.fetch(f"SELECT {BILL_STATE_COLUMNS} FROM bills WHERE id = ANY($1::bigint[])",
                              sorted(set(bill_ids)))
    return {row["id"]: late_fee_owed_on(LateFeeState.of(row), on) for row in rows}


@dataclass(frozen=True, slots=True)
class LateFeePosting:
    """What a month-end posting wrote: bills posted, accounts touched, fen in all."""

    bills: int
    accounts: int
    amount_fen: int


_OVERDUE = """
FROM bills b JOIN accounts a ON a.id = b.account_id
WHERE b.status = 'open' AND b.due_date < $1 AND b.late_fee_waived_at IS NULL AND b.late_fee_rate > 0
  AND a.mode = 'postpaid' AND a.status = 'open'
  AND ($2::bigint[] IS NULL OR b.account_id = ANY($2::bigint[]))
"""

_SET_POSTED = """
UPDATE bills b SET late_fee_posted_fen = v.posted
FROM unnest($1::bigint[], $2::bigint[]) AS v(id, posted) WHERE b.id = v.id
"""


async def overdue_account_ids(session: AsyncSession, *, on: date, account_ids: Sequence[int] | None = None) -> list[int]:
    """The open postpaid accounts with an open, overdue, unwaived bill on ``on``, by id
    (the month-end job posts them in batches)."""
    driver = await raw_connection(session)
    rows = await driver.fetch(f"SELECT DISTINCT b.account_id {_OVERDUE} ORDER BY 1", on,
                              None if account_ids is None else list(account_ids))
    return [row[0] for row in rows]


async def post_late_fees(
    session: AsyncSession,
    *,
    on: date,
    account_ids: Sequence[int] | None = None,
    now: datetime | None = None,
    by: str = "系统",
) -> LateFeePosting:
    """Post, for every open overdue bill (of ``account_ids``, default all), the late fee
    accrued up to and including ``on`` and not posted yet (module docstring). Idempotent
    for a day; the caller commits."""
    ids = await overdue_account_ids(session, on=on, account_ids=account_ids)
    if not ids:
        return LateFeePosting(0, 0, 0)
    accounts = await lock_accounts(session, ids)
    driver = await raw_connection(session)
    rows = await driver.fetch(
        f"SELECT {', '.join('b.' + c.strip() for c in BILL_STATE_COLUMNS.split(','))} {_OVERDUE} "
        "ORDER BY b.id FOR UPDATE OF b", on, ids)
    entries: list[EntryIn] = []
    posted: dict[int, int] = {}
    for row in rows:
        account = accounts.get(row["account_id"])
        if account is None or account.mode is not BillingMode.postpaid:
            continue
        unposted = late_fee_unposted_on(LateFeeState.of(row), on)
        if unposted <= 0:
            continue
        total = row["late_fee_posted_fen"] + unposted
        posted[row["id"]] = total
        entries.append(EntryIn(account_id=row["account_id"], kind=EntryKind.late_fee, amount_fen=-unposted,
                               idempotency_key=late_fee_key(row["id"], total), ref=f"bill:{row['id']}",
                               note=f"滞纳金 {row['period']:%Y-%m} 至 {on.isoformat()}"))
    if not entries:
        return LateFeePosting(0, 0, 0)
    await post_entries(session, entries, posted_by=by, posted_at=now)
    await driver.execute(_SET_POSTED, list(posted), list(posted.values()))
    return LateFeePosting(len(entries), len({e.account_id for e in entries}), -sum(e.amount_fen for e in entries))


@dataclass(frozen=True, slots=True)
class LateFeeWaiver:
    """A waiver done: the bill, the fee waived (fen) and the posted part written off."""

    bill_id: int
    account_id: int
    waived_fen: int
    written_off_fen: int
    waived_at: datetime
    waived_by: str
    reason: str
    paid: bool  # the waiver settled the bill (its principal was paid)


async def waive_late_fee(
    session: AsyncSession,
    *,
    bill_id: int,
    reason: str,
    by: str,
    now: datetime,
    tz: str | tzinfo = "Asia/Shanghai",
    scope_patterns: Sequence[str] | None = None,
) -> LateFeeWaiver:
    """减免滞纳金 of bill ``bill_id`` as of ``now``'s day in ``tz`` (module docstring). The
    caller checks ``bills:waive`` and commits."""
    reason = (reason or "").strip()
    if not reason:
        raise DomainError("请填写减免原因", "Give the waiver's reason", field="reason", code=ErrorCode.REQUIRED)
    if len(reason) > 200:
        raise DomainError("减免原因不能超过 200 个字符", "A reason is at most 200 characters", field="reason",
                          code=ErrorCode.TOO_LONG)
    driver = await raw_connection(session)
    account_id = await driver.fetchval("SELECT account_id FROM bills WHERE id = $1", bill_id)
    if account_id is None:
        raise NotFound(field="billId")
    # The account first (every writer locks accounts, then bills), then the bill.
    await account_in_scope(session, account_id, scope_patterns, lock=True, field="billId")
    row = await driver.fetchrow(f"SELECT {BILL_STATE_COLUMNS} FROM bills WHERE id = $1 FOR UPDATE", bill_id)
    state = LateFeeState.of(row)
    if state.voided:
        raise BillVoided(field="billId")
    day = now.astimezone(as_zone(tz)).date()
    owed = late_fee_owed_on(state, day)
    if state.waived or owed <= 0:
        raise LateFeeNothingToWaive(field="billId")
    written_off = state.late_fee_posted_fen - state.late_fee_paid_fen
    paid = state.principal_paid_fen == state.amount_fen
    await driver.execute("""
        UPDATE bills SET late_fee_waived_fen = $2, late_fee_waived_at = $3, late_fee_waived_by = $4,
            late_fee_waiver_reason = $5, status = CASE WHEN $6 THEN 'paid' ELSE status END,
            paid_at = CASE WHEN $6 THEN $3 ELSE paid_at END
        WHERE id = $1""", bill_id, owed, now, by[:100], reason, paid)
    if written_off > 0:
        await post_entry(session, account_id=account_id, kind=EntryKind.write_off, amount_fen=written_off,
                         ref=f"bill:{bill_id}", idempotency_key=f"late-fee-waive:{bill_id}",
                         note=f"减免滞纳金 {row['period']:%Y-%m}", posted_by=by, posted_at=now)
    return LateFeeWaiver(bill_id, account_id, owed, written_off, now, by[:100], reason, paid)


# --------------------------------------------------------------------------- the month-end job

MONTH_END_BATCH = 2000  # accounts per transaction: a city's month-end never holds one lock set for long


def month_end_before(now: datetime, tz: str | tzinfo) -> date:
    """The last day of the month before ``now``'s month in ``tz``: what the job posts as of."""
    return now.astimezone(as_zone(tz)).date().replace(day=1) - timedelta(days=1)


async def post_month_end_late_fees(runtime: Runtime, payload: Mapping[str, Any]) -> LateFeePosting:
    """The ``post_late_fees`` job: post every overdue bill's late fee as of the last day of
    the month that just ended (``payload["on"]``, ``YYYY-MM-DD``, overrides it), a batch of
    accounts per transaction (each batch locks its accounts in id order)."""
    on = date.fromisoformat(payload["on"]) if payload.get("on") else month_end_before(runtime.now(), runtime.tz)
    async with transaction(runtime.sessions) as session:
        ids = await overdue_account_ids(session, on=on)
    bills = accounts = amount = 0
    for start in range(0, len(ids), MONTH_END_BATCH):
        async with transaction(runtime.sessions) as session:
            done = await post_late_fees(session, on=on, account_ids=ids[start:start + MONTH_END_BATCH],
                                        now=runtime.now(), by=runtime.actor.name)
        bills, accounts, amount = bills + done.bills, accounts + done.accounts, amount + done.amount_fen
    log.info("late fees as of %s: %d bills of %d accounts, %d fen", on, bills, accounts, amount)
    return LateFeePosting(bills, accounts, amount)
