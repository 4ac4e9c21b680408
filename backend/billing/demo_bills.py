"""Billing's demo step, postpaid part (backend.billing.demo): the bills of the demo's
postpaid accounts (20 % of residential households, 60 % of businesses) for every ended
month of the readings' window, and their residents paying them, through the real
services, backdated, deterministic from the seed.

**Bills.** Every period (monthly: the demo's areas keep the default cycle) from the
month the accounts opened in is billed by :func:`backend.billing.bills.run_billing` as
the scheduled job would: issued on the 3rd of the next month at 02:30 in the demo's zone
(``now`` of the run is that instant, so the bills' ``issued_at``, the ``bill`` entries'
``posted_at``, the due dates and any credit paid at issue all fall then), by 系统 (the
system actor, as the job), for the demo's postpaid accounts. A period whose issue instant
is after ``now`` is left to the job. Accounts the run holds for reading review (an alarm
in the period, a missing month-end reading) are approved
(:func:`backend.billing.review.approve_review`, by 系统: the demo has no reviewer login)
a day later and billed then by a run for them alone; in the latest period two stay
pending, so 抄表审核 has work. (The demo's readings are complete and its alarms open at
``now``, so usually nobody is held: see the report of issue 17's demo.)

**Payments.** Money comes in as ``payment`` ledger entries (ref :data:`PAYMENT_REF`, note
``缴费 (<channel>)`` with the channels of the prepaid recharges, key
``demo:bills:<account>:<period>``; payments' demo step records each as the payment it
was), one ``post_entries`` per day at the demo's counter time of that day, then
:func:`backend.billing.allocations.allocate_credit` as of that day with each account's
entry, so fees post and bills settle exactly as at the counter. A payment pays what the
account owes that day (its open bills' principal and late fee,
:func:`backend.billing.late_fees.owed_on`): no amount is written by hand.

- most bills are paid on a day between their issue and their due date (a few days a
  month: :data:`_PAY_DAYS` after the issue);
- about :data:`LATE_PERCENT` % of bills are paid 3–27 days after the due date (the late
  fee is posted at payment by the allocation);
- about :data:`UNPAID_PERCENT` % of the accounts (at least one) leave their last two or
  three bills unpaid: they stand overdue at ``now`` (催缴单);
- one business pays a round sum ahead with its bill three periods back (the owed amount
  plus two bills, rounded up to ¥1,000): its credit pays the next bills at their issue.

**Month-end late fees.** For every month that ended, :func:`backend.billing.late_fees.post_late_fees`
posts as of its last day, at 00:05 UTC on the 1st, as the ``post_late_fees`` job does.

Everything runs in one timeline in order of its instants (the fee job, the runs, the
approvals, each day's payments), so every account's entries are posted in the order of
their ``posted_at``.

**Events.** The ``bill.issued`` events the runs emit are history: each gets its run's
instant as ``created_at`` and ``relayed_at`` (as the prepaid history's crossings), so
``demo run``'s relay never hands a year of bills to a 缴费通知 handler. Payments emit
nothing here (payments' demo step says why).

**Again.** A period is run only while one of its accounts has neither a bill nor a
review row; a payment is made only once (its key) and never before the account's newest
entry; fee postings are idempotent for their day. Loading again with the same ``now``
writes nothing; a later ``now`` bills the new periods and pays what falls due.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing import review
from backend.billing.allocations import allocate_credit
from backend.billing.bills import run_billing
from backend.billing.demo import _CHANNELS, DEMO_ACCOUNT_PREFIX, OPENED_BY, _counter_time, _hash
from backend.billing.late_fees import BILL_STATE_COLUMNS, LateFeeState, owed_on, post_late_fees
from backend.billing.ledger import EntryIn, post_entries
from backend.billing.models import EntryKind
from backend.db import raw_connection

__all__ = ["LATE_PERCENT", "PAYMENT_REF", "UNPAID_PERCENT", "DemoBills", "bill_demo_history", "issue_instant"]

PAYMENT_REF = "demo:bills"
PAYMENT_KEY = "demo:bills:{account}:{period}"
ISSUE_DAY, ISSUE_TIME = 3, time(2, 30)
FEE_JOB_TIME = time(0, 5, tzinfo=UTC)  # the post_late_fees job's cron, 5 0 1 * *
LATE_PERCENT = 8
UNPAID_PERCENT, UNPAID_MINIMUM = 3, 1
PENDING_KEPT = 2  # reviews of the latest period left for 抄表审核
APPROVAL_REASON = "示范数据: 读数已核实"
_AHEAD_ROUND_FEN = 100_000
# Days after the issue a bill is paid on, and after the due date a late one.
_PAY_DAYS = (0, 1, 4, 8, 12, 15)
_LATE_DAYS = (3, 8, 16, 27)

# The order of steps at one instant.
_FEES, _RUN, _APPROVE, _PAY = range(4)

_ACCOUNTS = """
SELECT a.id, a.household_id, h.customer_type, a.opened_at FROM accounts a JOIN households h ON h.id = a.household_id
WHERE a.status = 'open' AND a.mode = 'postpaid' AND h.account_no LIKE $1 ORDER BY a.id
"""
# The accounts (opened before the period's end) with neither a live bill nor a review row.
_UNBILLED = """
SELECT count(*) FROM unnest($1::bigint[], $2::timestamptz[]) AS a(id, opened_at)
WHERE a.opened_at < $4
  AND NOT EXISTS (SELECT FROM bills b WHERE b.account_id = a.id AND b.period = $3 AND b.status <> 'voided')
  AND NOT EXISTS (SELECT FROM reading_reviews r WHERE r.account_id = a.id AND r.period = $3)
"""
_PENDING = """
SELECT r.id, r.account_id, (SELECT max(e.posted_at) FROM ledger_entries e WHERE e.account_id = r.account_id) AS newest
FROM reading_reviews r WHERE r.period = $1 AND r.state = 'pending' AND r.account_id = ANY($2::bigint[])
ORDER BY r.account_id
"""
_ISSUED = """
SELECT id, account_id, period, issued_at, due_date FROM bills
WHERE account_id = ANY($1::bigint[]) AND status = 'open' AND ($2::bigint[] IS NULL OR id = ANY($2::bigint[]))
ORDER BY id
"""
_OPEN_BILLS = f"SELECT {BILL_STATE_COLUMNS} FROM bills WHERE account_id = ANY($1::bigint[]) AND status = 'open'"
# Per account: whether this payment was made already, and its newest entry.
_PAYERS = """
SELECT a.id, EXISTS (SELECT FROM ledger_entries e WHERE e.account_id = a.id AND e.idempotency_key = a.key) AS made,
       (SELECT max(e.posted_at) FROM ledger_entries e WHERE e.account_id = a.id) AS newest
FROM unnest($1::bigint[], $2::text[]) AS a(id, key)
"""
_ANALYZE = "ANALYZE ledger_entries, bills, bill_allocations"
_WATERMARK = "SELECT coalesce(max(id), 0) FROM domain_events"
_BACKDATE_ISSUED = """
UPDATE domain_events SET created_at = $2, relayed_at = $2 WHERE id > $1 AND kind = 'bill.issued'
"""


def issue_instant(period: date, zone: tzinfo) -> datetime:
    """When the demo's run bills ``period`` (monthly): the 3rd of the next month, 02:30."""
    following = (period.replace(day=28) + timedelta(days=4)).replace(day=ISSUE_DAY)
    return datetime.combine(following, ISSUE_TIME, tzinfo=zone)


def _next_month(first: date) -> date:
    return (first.replace(day=28) + timedelta(days=4)).replace(day=1)


@dataclass(frozen=True, slots=True)
class DemoBills:
    """What the postpaid history of one load wrote."""

    periods: int
    bills: int
    held: int
    approved: int
    payments: int
    late_fee_bills: int
    unpaid_accounts: tuple[int, ...]
    ahead_account: int | None


@dataclass(frozen=True, slots=True)
class _Payer:
    """How an account's household pays (module docstring)."""

    account_id: int
    stops_from: date | None  # its bills of this period and later stay unpaid
    ahead_with: date | None  # pays a round sum ahead with this period's bill


def _payers(seed: int, rows: Sequence[Any], periods: Sequence[date]) -> dict[int, _Payer]:
    ranked = sorted(rows, key=lambda r: (_hash(seed, "unpaid", r["household_id"]), r["id"]))
    businesses = [r for r in ranked if r["customer_type"] != "residential"]
    ahead = min(businesses, key=lambda r: (_hash(seed, "ahead", r["household_id"]), r["id"]), default=None)
    ahead_id = ahead["id"] if ahead is not None else None
    wanted = max(UNPAID_MINIMUM, round(UNPAID_PERCENT * len(rows) / 100))
    stoppers = {r["id"] for r in [r for r in ranked if r["id"] != ahead_id][:wanted]}
    payers = {}
    for row in rows:
        stops = None
        if row["id"] in stoppers:
            bills = 2 + _hash(seed, "unpaid-bills", row["household_id"]) % 2
            stops = periods[max(0, len(periods) - bills)]
        ahead_with = periods[max(0, len(periods) - 3)] if row["id"] == ahead_id else None
        payers[row["id"]] = _Payer(row["id"], stops, ahead_with)
    return payers


def _pay_day(seed: int, account_id: int, period: date, issued: date, due: date) -> date:
    """The day the household pays the bill: one of a few days between its issue and its
    due date, or (``LATE_PERCENT`` %) a few days to a month after it. Payments cluster on
    a few days a month (the bank's debit day, the days before the due date), which also
    keeps the history to a posting and an allocation per such day."""
    roll = _hash(seed, "pay", account_id, period.isoformat())
    if roll % 100 < LATE_PERCENT:
        return due + timedelta(days=_LATE_DAYS[(roll // 100) % len(_LATE_DAYS)])
    return min(due, issued + timedelta(days=_PAY_DAYS[(roll // 100) % len(_PAY_DAYS)]))


async def bill_demo_history(session: AsyncSession, *, seed: int, now: datetime, zone: tzinfo, by: str,
                            progress: Callable[[str], None] = lambda _: None) -> DemoBills:
    """Bill the demo's postpaid accounts for every period ended and issued by ``now``, and
    pay the bills as the module docstring says. ``by`` runs, approves and posts the
    month-end fees (the system actor's name, 系统); the payments are posted by the demo
    (``OPENED_BY``), at its counter time of the day. The caller commits."""
    driver = await raw_connection(session)
    rows = list(await driver.fetch(_ACCOUNTS, DEMO_ACCOUNT_PREFIX + "%"))
    if not rows:
        return DemoBills(0, 0, 0, 0, 0, 0, (), None)
    ids = [row["id"] for row in rows]
    opened = {row["id"]: row["opened_at"] for row in rows}
    first = min(opened.values()).astimezone(zone).date().replace(day=1)
    periods: list[date] = []
    period = first
    while issue_instant(period, zone) <= now:
        periods.append(period)
        period = _next_month(period)
    if not periods:
        return DemoBills(0, 0, 0, 0, 0, 0, (), None)
    latest = periods[-1]
    payers = _payers(seed, rows, periods)

    steps: list[tuple[datetime, int, date]] = []
    month = first
    while (job := datetime.combine(_next_month(month), FEE_JOB_TIME)) <= now:
        steps.append((job, _FEES, _next_month(month) - timedelta(days=1)))
        month = _next_month(month)
    steps.extend((issue_instant(p, zone), _RUN, p) for p in periods)
    heapq.heapify(steps)
    paying: dict[date, list[tuple[int, date]]] = defaultdict(list)

    def plan_payments(issued: Sequence[Any]) -> None:
        for bill in issued:
            account_id, bill_period = bill["account_id"], bill["period"]
            day = _pay_day(seed, account_id, bill_period, bill["issued_at"].astimezone(zone).date(), bill["due_date"])
            if day not in paying:
                heapq.heappush(steps, (_counter_time(seed, day, zone), _PAY, day))
            paying[day].append((account_id, bill_period))

    async def issued_bills(bill_ids: Sequence[int] | None) -> list[Any]:
        return list(await driver.fetch(_ISSUED, ids, None if bill_ids is None else list(bill_ids)))

    async def run(period: date, instant: datetime, account_ids: Sequence[int]) -> int:
        watermark = await driver.fetchval(_WATERMARK)
        result = await run_billing(session, period=period, account_ids=account_ids, now=instant, by=by, tz=zone)
        await driver.execute(_BACKDATE_ISSUED, watermark, instant)
        # The tables grow inside this one transaction, where autovacuum sees nothing: with
        # their statistics kept up, the days' postings and allocations plan for their size.
        await driver.execute(_ANALYZE)
        plan_payments(await issued_bills(result.bill_ids))
        return result.issued

    # Open bills of earlier loads: their payments may fall due by this ``now``.
    plan_payments(await issued_bills(None))
    bills = held = approved = payments = fee_bills = 0
    while steps and steps[0][0] <= now:
        instant, kind, subject = heapq.heappop(steps)
        if kind == _FEES:
            fee_bills += (await post_late_fees(session, on=subject, account_ids=ids, now=instant, by=by)).bills
        elif kind == _RUN:
            end = review.period_bounds(subject, zone)[1]
            if await driver.fetchval(_UNBILLED, ids, [opened[i] for i in ids], subject, end):
                bills += await run(subject, instant, ids)
                progress(f"后付费账单: {subject:%Y-%m}")
            pending = await driver.fetch(_PENDING, subject, ids)
            if pending:
                held += len(pending)
                newest = max((row["newest"] for row in pending if row["newest"] is not None), default=instant)
                # A day later; never before the accounts' newest entry (a later load's catch-up).
                at = max(instant + timedelta(days=1), newest + timedelta(minutes=1))
                heapq.heappush(steps, (at, _APPROVE, subject))
        elif kind == _APPROVE:
            pending = sorted(await driver.fetch(_PENDING, subject, ids),
                             key=lambda row: (_hash(seed, "pending", row["account_id"]), row["account_id"]))
            deciding = pending[PENDING_KEPT:] if subject == latest else pending
            for row in deciding:
                await review.approve_review(session, review_id=row["id"], reason=APPROVAL_REASON, by=by, now=instant,
                                            scope_patterns=None)
            approved += len(deciding)
            if deciding:
                bills += await run(subject, instant, [row["account_id"] for row in deciding])
        else:
            payments += await _pay(session, day=subject, instant=instant, due=paying.pop(subject), payers=payers,
                                   seed=seed)
    unpaid = tuple(sorted(p.account_id for p in payers.values() if p.stops_from is not None))
    ahead = next((p.account_id for p in payers.values() if p.ahead_with is not None), None)
    return DemoBills(len(periods), bills, held, approved, payments, fee_bills, unpaid, ahead)


async def _pay(session: AsyncSession, *, day: date, instant: datetime, due: Sequence[tuple[int, date]],
               payers: dict[int, _Payer], seed: int) -> int:
    """The day's payments: each household pays what its account owes that day (plus, for
    the business paying ahead, a round sum); one posting and one allocation for all."""
    driver = await raw_connection(session)
    wanted: dict[int, date] = {}
    for account_id, period in due:
        payer = payers.get(account_id)
        if payer is None or (payer.stops_from is not None and period >= payer.stops_from):
            continue
        wanted.setdefault(account_id, period)
    if not wanted:
        return 0
    accounts = sorted(wanted)
    keys = [PAYMENT_KEY.format(account=a, period=wanted[a].isoformat()) for a in accounts]
    fresh = [row["id"] for row in await driver.fetch(_PAYERS, accounts, keys)
             if not row["made"] and (row["newest"] is None or row["newest"] <= instant)]
    if not fresh:
        return 0
    owed: dict[int, int] = defaultdict(int)
    newest_bill: dict[int, int] = {}
    for row in await driver.fetch(_OPEN_BILLS, fresh):
        stops = payers[row["account_id"]].stops_from
        if stops is not None and row["period"] >= stops:
            continue  # a household that stopped paying pays only what it owed before
        owed[row["account_id"]] += owed_on(LateFeeState.of(row), day)
        newest_bill[row["account_id"]] = max(newest_bill.get(row["account_id"], 0), int(row["amount_fen"]))
    entries = []
    for account_id in fresh:
        amount = owed.get(account_id, 0)
        if payers[account_id].ahead_with == wanted[account_id] and amount > 0:
            # A round sum: what is owed and two more bills like the newest, up to ¥1,000.
            amount = math.ceil((amount + 2 * newest_bill[account_id]) / _AHEAD_ROUND_FEN) * _AHEAD_ROUND_FEN
        if amount <= 0:
            continue
        channel = _CHANNELS[_hash(seed, "bill-channel", account_id, wanted[account_id].isoformat()) % len(_CHANNELS)]
        entries.append(EntryIn(account_id=account_id, kind=EntryKind.payment, amount_fen=amount,
                               idempotency_key=PAYMENT_KEY.format(account=account_id,
                                                                  period=wanted[account_id].isoformat()),
                               ref=PAYMENT_REF, note=f"缴费 ({channel})"))
    if not entries:
        return 0
    posted = await post_entries(session, entries, posted_by=OPENED_BY, posted_at=instant)
    await allocate_credit(session, account_ids=[e.account_id for e in entries], on=day, now=instant,
                          entry_ids={p.account_id: p.id for p in posted}, by=OPENED_BY)
    return len(entries)
