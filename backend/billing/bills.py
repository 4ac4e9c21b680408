"""The postpaid billing run (出账), final bills, void and re-issue (issue 17, item 3).

Decisions (the tables are ``backend.billing.bills_models``):

**Periods.** A period is named by the first day of its first month ('2026-10' →
2026-10-01). An area's period length comes from ``area_billing_cycles``: the nearest
ancestor (by ``areas.path``) with a row decides, none means monthly. A bimonthly cycle's
periods start in odd months (``first_month`` 1: Jan–Feb, Mar–Apr, …) or even ones (2). A
period's instants are ``[first day 00:00, the first day after its months 00:00)`` in the
utility's zone (:func:`backend.billing.review.period_bounds`). A period is billed only
once it has ended (BILLING_PERIOD_NOT_ENDED).

**Which accounts** (:func:`run_billing`). The open postpaid accounts of the area's
subtree (default: every area of the caller's scope) whose own cycle makes ``period`` a
start month; the others (a differently-cycled subarea, or a bimonthly period not ended
yet) are counted ``skipped``, and so are accounts opened after the period or on a tariff
with no version in force in it. Given an area whose own cycle does not start in
``period``, the run is refused (BILLING_PERIOD_MISALIGNED). The run prepares the reading
review first (:func:`backend.billing.review.prepare_review`, per cycle length), so
accounts with a flagged meter or a missing reading are ``held`` (reported, not billed)
until a reviewer decides. A review pending for an *earlier* period holds the account too
(the reviewer decides first): billed now, the later bill would take the earlier period's
usage and the earlier bill, once approved, would bill it again. Accounts with a live bill
for the period, or whose latest live bill ends at or after this period's end (a later or
overlapping bill covers it: see spans), are ``already_billed``: re-running changes
nothing. A review pending for a period a live bill already covers holds nothing, and none
is prepared for such a period (a re-run after a meter was replaced would judge today's
meter on a month already billed). A scoped caller's run without an area is recorded as
its one subtree's run (``area_id`` the scope's area) so it is listed to them; a run over
several subtrees or the whole utility has no area and is listed to callers whose scope
covers every root area.

**Spans.** A bill covers ``[period_start, period_end)``: it starts where the account's
latest live bill ended (its ``period_end``), or at the account's opening when it has
none (or, if prepaid settlement priced it, where that pricing reached: ``prepaid_cycles``'
``settled_to``), and ends at the period end (a final bill: the final instant). An empty
span is already billed. ``months`` is the number of calendar months (utility zone) the
span touches, from the month holding its start to the one holding its end − 1 µs, less
the start's month when the span continues an earlier bill that ended inside that month
(the earlier bill counted its tiers and minimum charge), at least 1: a regular
monthly bill 1, bimonthly 2, a final bill over an unbilled October and 1–3 November 2,
an account opened long ago and never billed every month since. So a final bill does not
lump an unbilled month into one month's tiers, and an area switched from bimonthly to
monthly does not bill the second month of a billed bimonthly period again.

**Volumes, the cumulative rule.** ``measured`` is the household's usage from the
account's opening to the period end, as known when the bill is made
(:func:`backend.readings.usage.usage_between`: the one definition of usage). A bill's
volume is ``measured`` minus what is priced already: Σ ``volume_m3 − credited_m3`` of the
account's live bills, plus Σ ``prepaid_cycles.volume_m3`` of the account (usage a
settlement cycle charged: a legacy postpaid transfer or final charge, or the account's
prepaid_station past before a switch to postpaid). So a late or corrected reading of an
earlier period lands in the next bill and a sent bill never changes; the sum counts the
whole span. :func:`unbilled_m3` (and the close check) uses the same sum. A correction
downwards can make the volume negative: a bill cannot be a debit below 0
(``amount_fen >= 0``), so the volume is ``max(0, …)``; a regular bill never credits (the
next bill, which subtracts what earlier bills *billed*, absorbs it); a final bill credits
it (below).
``start_readings`` are the previous live bill's ``end_readings`` (``[]`` for the first);
``end_readings`` are, for each meter serving the household at the period end, its last
reading at or before it — what the bill prints, not what it is priced from.

**Pricing.** The account's tariff (``tariff_code``) over the span's days, versions
prorated by days exactly as :func:`backend.billing.service.price_period` does, with the
minimum monthly charge (a bill's rule). Month-cycle tier limits, the household-size
extension (per tier cycle) and the minimum charge scale by the span's ``months``; annual
tiers are not scaled. The tier cycle (``cycle_start``) is, for annual tiers, the cycle
holding the span's last priced day (a bimonthly Dec–Jan period, or a final bill inside
one, is January's year: its December is an earlier segment, below), and for month-cycle
tiers the cycle holding the period's first day; annual tiers start from ``prior_cycle_m3``, the
in-cycle volumes of the account's earlier live bills of the same cycle (below) and of its
prepaid cycles with that ``cycle_start``, so a year's monthly bills climb the tiers
together. ``persons`` applies the household-size rule. Lines are per component and tier
(the minimum line is tier 0), and ``amount_fen`` their sum. The days priced start at the
span's first day or the tariff's first version, whichever is last.

**Cycles: a span crossing an annual tier cycle's start** (an account not billed in
December and billed with January, a final bill, an account opened long ago and never
billed). Only annual-cycle tariffs (``TariffCycle.year``) split; a month-cycle tariff keeps
scaling by ``months``. The span is cut at every cycle start inside it (1 January 00:00 in
the utility's zone) after its first priced day. With M(t) the household's usage from the
account's opening to t (the same definition as ``measured``) and B what is priced already
(``billed``), segment i's volume is clamp(M(cut i+1) − B − Σ earlier segments, 0, volume
left); the last segment takes what is left, so the segments add up to the volume. Each
segment is priced with its own pricer over its own days (first priced day .. its last
day), its ``months`` those it touches (the first keeps the "continued" rule and may count
none; they add up to the bill's ``months``, cuts being month starts), its own minimum
charge (scaled by its months) and its own prior: the first segment's is its cycle's (the
account's live bills and prepaid cycles of that ``cycle_start``, as above), the middle
ones' (whole years never billed) 0, the last one's the bill's cycle's ``prior_cycle_m3``
(normally 0). The bill stores the last segment's part as ``cycle_volume_m3`` and the
earlier ones in ``earlier_cycles`` (``[{"cycle_start", "first_day", "last_day", "months",
"volume_m3", "prior_m3"}]``, strings, oldest first; NULL for a bill not split); its lines
are the earlier segments' first, each with its ``cycle_start``. A prior counts a bill's
in-cycle volume only: Σ ``cycle_volume_m3 − credited_m3`` of the cycle's live bills, at
least 0 (only a final bill credits, its own volume being 0: the credit takes back the
newest volume first, its own cycle's part first; what it took from earlier cycles is never
a prior again, a later span starting in the final bill's cycle). The usage up to the cuts
and the first segment's prior (``_EARLIER`` again, with the first segments' cycles) are one
statement each per chunk, only for accounts whose span crosses a cycle start: a regular
monthly run has none.

**Money.** A bill is a ``bill`` ledger entry of −amount (``ref`` ``bill:<id>``,
idempotency key ``bill:<account>:<period>:<n>``, ``n`` counting the period's bills of the
account, voided ones included, so a re-issue is a new entry). A bill of ¥0 writes no
entry (the ledger refuses zero): it is issued ``paid`` at once. ``due_date`` is the
issue day (utility zone) plus the customer type's grace days. Credit already on the
account (paid ahead, or left over) pays the new bills at once
(:func:`backend.billing.allocations.allocate_credit`, as a payment would). A run looks
for it only on the accounts whose balance was positive when it locked them: money that
arrived while bills were open was allocated by its own transaction (a payment's, a
reversal's), so an account at or below zero has none left for new bills, and a city's
run does not read every account's open bills to find that out. ``late_fee_rate`` and
``late_fee_cap_fen`` are copied from its late-fee rule through
:func:`backend.billing.late_fees.late_fee_terms` (the defaults in ``bills_models`` without
a row; the cap is amount × cap percent, half up; rate and cap 0 when the rule is off).

**Set-based, chunked.** The accounts of all cycle lengths are billed in chunks of
:data:`CHUNK` over one list in global id order (each account with its group's period
bounds), never group by group: each chunk locks its accounts ``FOR UPDATE`` in id order
(as settlement and the ledger do, so a run over monthly and bimonthly accounts never
deadlocks with them), reads earlier bills and prepaid cycles in one statement, usage in
one (:func:`backend.readings.usage.household_usage_of_windows`: each account's window
from its own opening), prices with per-(tariff, persons, first day, months)
pricers (:func:`backend.billing.service.period_line_pricer`: each version's rules parsed
once, each distinct (volume, prior) and each full lower tier priced once), posts the
entries through the ledger, and writes bills and lines by COPY into temporary tables
(numbers as text) and one ``INSERT … SELECT`` each. The next chunk's usage is read
while this chunk is drafted and written, on a second connection of the session's engine
(:class:`_UsageReadAhead`) that imports the run transaction's snapshot
(``pg_export_snapshot`` / ``SET TRANSACTION SNAPSHOT``): it sees the readings the run
sees, and the database works on it beside the run's writes. It cannot see the run
transaction's own uncommitted writes, so it is used only when that transaction had
written nothing when the run began (the run itself writes no readings or meter
assignments, which is all usage reads), the session is bound to an engine and the
engine's pool has a connection to spare. Otherwise (a session on one connection, as in
tests, or a caller that wrote first) the next chunk's statement goes out on the run's own
connection just before the pricing loop (which holds the process's CPU, not the
database's), and the chunk waits for it before its first write. Either way a window
read ahead is used only when the locked account still has it (household and opening),
anything else is read then.
``run_billing`` writes in the caller's
transaction; given ``commit``, it commits after each chunk (the CLI and the job do, for
a city), and a re-run completes an interrupted run (the live-bill unique index and the
already-billed check). Every chunk that issued bills emits one ``bill.issued``.

**Final bill** (:func:`final_bill`, from :func:`backend.billing.accounts.final_charge`
for a postpaid account): kind ``final``, the period holding the final instant, its span
ending at it, by the same rule (worked out as if the period's own live bill were not
there). A live bill of that period whose volume would stay the same (and nothing is
over-billed) is left as it is; one that would change and has no money allocated is
voided (``销户重算``) and replaced; with money allocated the final charge is refused
(ACCOUNT_UNSETTLED). A live bill of a later period, or one ending at or after the
instant, means everything up to it is billed already. So a final instant exactly at the end
of the period's live bill that has money allocated (a month boundary) does not redo it:
as for an instant a moment later, the final bill is the next period's, over the empty span
``[at, at)``, issued only when there is something to credit or late usage L (usage that
reached the instant after that bill P was made); without money allocated P is voided and
redone as above. Either way the money is the same: the empty-span bill is P's
continuation, its amount price(v + L, p) − price(v, p) on P's terms (its tariff versions
over its days, its months, persons and minimum charge), v and p P's own cycle's volume and
prior (a split P: its last segment; late usage is counted in P's own cycle). Its lines
are the difference line by line: L's tier lines continuing from v and, when P's minimum
charge topped it up, a minimum line ≤ 0, the part of the top-up L's charge absorbs (so Σ
lines = amount ≥ 0 and no new minimum charge). It stores P's tariff, persons, months and
``cycle_start``, and the prior L continues from (p + v): at 1 January, late December usage
is priced from December's year-to-date in December's tiers. Without late usage or
anything to credit nothing is issued.

**Over-billed at the final bill.** When the other live bills billed more than
``measured`` (a downward correction after a bill was sent), the final bill has volume 0
and credits the over-billed volume d, priced back at the rates it was billed at: the
live bills newest first each give back ``min(d left, its volume)`` worth
``price(volume, prior) − price(volume − taken, prior)`` on that bill's own terms (tariff
versions over its days, its ``months``, ``persons``, minimum charge). The bill stores
``credited_m3`` and ``credit_fen``; the credit is one ``adjustment`` entry of +credit_fen
(ref ``bill:<final id>``, key ``bill-credit:<final id>``, ``credit_entry_id``), and
credit on the account then pays open bills as a payment would. A final bill with a
credit is never voided or re-done (BILL_PAID; a later ``final_charge`` ACCOUNT_UNSETTLED):
its credit has paid the account's other bills, and undoing it would leave them paid by
money that is gone. A split bill's price as a function of the volume kept is Σ its
segments, each on its own terms (days, months, prior, from ``earlier_cycles``), the volume
given back from its last segment first, then the earlier ones.

**Void and re-issue** (:func:`void_bill`): newest first (BILL_NOT_LATEST), never with
money allocated (BILL_PAID: reverse the payment first), never twice (BILL_VOIDED). A
credit ``reversal`` entry undoes the bill's entry, a posted but unpaid late fee is
written off — unless the fee was waived: the waiver wrote the posted-unpaid fee off
already (and a reversal of a waived fee's payment writes that part off), so a void
writes off nothing more (the ``billing.bills`` check: Σ write-offs of a bill =
posted − paid fee when waived or voided, 0 otherwise) — and with ``reissue`` the
account's period is billed again now (same period end and kind, its span from the then
latest live bill, ``reissue_of_id`` pointing at the voided bill; a re-issued final bill
does not credit again).

**Scheduled** (:func:`scheduled_run`, daily at 02:30): for monthly accounts and each
bimonthly cycle in use, the latest period that ended at least
``MISSING_READING_DAYS + 2`` (5) days ago — late remote readings and the field readers'
catch-up get that long — runs when some account of that cycle is not billed for it
yet, so it is idempotent and picks up accounts approved in review since.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal
from itertools import repeat
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlmodel import col

from backend.billing import review
from backend.billing.allocations import allocate_credit
from backend.billing.bills_models import (
    Bill,
    BillingRun,
    BillingRunStatus,
    BillKind,
    BillStatus,
)
from backend.billing.errors import (
    AccountUnsettled,
    BillingPeriodMisaligned,
    BillingPeriodNotEnded,
    BillNotLatest,
    BillPaid,
    BillVoided,
)
from backend.billing.events import BillIssued
from backend.billing.late_fees import late_fee_rules, late_fee_terms
from backend.billing.ledger import EntryIn, lock_accounts, post_entries
from backend.billing.models import EntryKind, Tariff, TariffCycle
from backend.billing.scope import area_path_in_scope, patterns_param
from backend.billing.service import QuoteLine, period_line_pricer, tariff_versions
from backend.billing.settlement import cycle_of, midnight
from backend.db import copy_into, for_work, raw_connection
from backend.errors import DomainError, ErrorCode, NotFound
from backend.events.service import emit_event
from backend.readings.partitions import as_zone
from backend.readings.rollup import cyclic_gc_paused
from backend.readings.usage import household_usage_of_windows, household_usage_on, usage_between

if TYPE_CHECKING:
    from backend.runtime import Runtime

__all__ = [
    "CHUNK", "MAX_VOID_REASON", "SCHEDULE_DELAY_DAYS", "AreaCycle", "BillingRunResult", "FinalBill", "VoidedBill",
    "billing_cycle_of", "billing_runs", "final_bill", "is_start_month", "latest_ended_period", "period_of",
    "run_billing", "scheduled_run", "set_area_billing_cycle", "unbilled_m3", "void_bill",
]

CHUNK = 5000
MAX_VOID_REASON = 200
# The scheduled run bills a period this many days after it ended (module docstring).
SCHEDULE_DELAY_DAYS = review.MISSING_READING_DAYS + 2
_TICK = timedelta(microseconds=1)
_ZERO = Decimal(0)
_FOUR = Decimal("0.0001")
FINAL_REBILL_REASON = "销户重算"

Progress = Callable[[int, int], None]
_Pricer = Callable[[Decimal, Decimal], tuple[QuoteLine, ...]]


# --------------------------------------------------------------------------- periods and area cycles


def _add_months(first: date, months: int) -> date:
    index = first.year * 12 + first.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def is_start_month(period: date, months: int, first_month: int) -> bool:
    """Whether ``period`` starts a period of a cycle of ``months`` starting in ``first_month``'s parity."""
    return months == 1 or (period.month - first_month) % 2 == 0


def period_of(day: date, months: int, first_month: int) -> date:
    """The first day of the cycle's period holding ``day``."""
    first = day.replace(day=1)
    return first if is_start_month(first, months, first_month) else _add_months(first, -1)


def _checked_period(period: date) -> date:
    if period.day != 1:
        raise DomainError("账期须为某月 1 日", "A period is given as its month's first day", field="period",
                          code=ErrorCode.INVALID)
    return period


@dataclass(frozen=True, slots=True)
class AreaCycle:
    """An area's billing period length: ``months`` 1 or 2, ``first_month`` 1 (odd months
    start) or 2 (even), and the area whose row decides it (None: no row up the tree, monthly)."""

    area_id: int
    months: int
    first_month: int
    set_on_area_id: int | None


# The nearest ancestor-or-self of each area with a cycle row (longest matching path).
_AREA_CYCLE = """
SELECT c.area_id, c.months, c.first_month FROM area_billing_cycles c JOIN areas anc ON anc.id = c.area_id
WHERE $1 LIKE anc.path || '%' ORDER BY length(anc.path) DESC LIMIT 1
"""


async def billing_cycle_of(session: AsyncSession, *, area_id: int,
                           scope_patterns: Sequence[str] | None = None) -> AreaCycle:
    """The billing cycle area ``area_id`` bills in (its own row or its nearest ancestor's;
    monthly without any). NOT_FOUND outside the scope."""
    path = await area_path_in_scope(session, area_id, scope_patterns)
    driver = await raw_connection(session)
    row = await driver.fetchrow(_AREA_CYCLE, path)
    if row is None:
        return AreaCycle(area_id, 1, 1, None)
    return AreaCycle(area_id, row["months"], row["first_month"], row["area_id"])


async def set_area_billing_cycle(session: AsyncSession, *, area_id: int, months: int, first_month: int = 1, by: str,
                                 now: datetime, scope_patterns: Sequence[str] | None = None) -> AreaCycle:
    """设置抄表周期: area ``area_id`` and its subtree (down to areas with their own row) bill
    every ``months`` (1 or 2) months, bimonthly periods starting in odd (``first_month``
    1) or even (2) months. Monthly keeps ``first_month`` 1. Bills already issued keep
    their periods. INVALID (``months`` / ``firstMonth``); NOT_FOUND outside the scope. The
    caller commits."""
    await area_path_in_scope(session, area_id, scope_patterns)
    if isinstance(months, bool) or months not in (1, 2):
        raise DomainError("抄表周期须为 1 或 2 个月", "A billing period is 1 or 2 months", field="months",
                          code=ErrorCode.INVALID)
    if isinstance(first_month, bool) or first_month not in (1, 2):
        raise DomainError("首月须为 1 (单月起) 或 2 (双月起)", "The first month is 1 (odd months) or 2 (even months)",
                          field="firstMonth", code=ErrorCode.INVALID)
    first_month = first_month if months == 2 else 1
    await session.execute(text("""
        INSERT INTO area_billing_cycles (area_id, months, first_month, updated_by, updated_at)
        VALUES (:area_id, :months, :first_month, :by, :now)
        ON CONFLICT (area_id) DO UPDATE SET months = excluded.months, first_month = excluded.first_month,
            updated_by = excluded.updated_by, updated_at = excluded.updated_at
    """), {"area_id": area_id, "months": months, "first_month": first_month, "by": by[:100], "now": now})
    return AreaCycle(area_id, months, first_month, area_id)


# --------------------------------------------------------------------------- what a bill is made of


@dataclass(slots=True)
class _Account:
    id: int
    household_id: int
    tariff_code: str
    persons: int | None
    opened_at: datetime
    customer_type: str
    balance_fen: int  # when locked, before the bills: only a positive one can pay them (``_write``)


@dataclass(frozen=True, slots=True)
class _Segment:
    """An earlier tier cycle's part of a bill whose span crosses an annual cycle's start
    (module docstring, "Cycles"): priced on its own over its own days."""

    cycle_start: date
    first_day: date
    last_day: date
    months: int
    volume: Decimal
    prior: Decimal
    lines: tuple[QuoteLine, ...]

    def stored(self) -> dict[str, str]:
        """The segment as ``bills.earlier_cycles`` keeps it (strings)."""
        return {"cycle_start": self.cycle_start.isoformat(), "first_day": self.first_day.isoformat(),
                "last_day": self.last_day.isoformat(), "months": str(self.months), "volume_m3": str(self.volume),
                "prior_m3": str(self.prior)}


@dataclass(slots=True)
class _Draft:
    """One bill worked out and not written yet."""

    account: _Account
    start: datetime  # the span: where the previous live bill ended (or the opening) …
    end: datetime  # … to the period end (a final bill: the final instant)
    months: int
    start_readings: str  # JSON: the previous live bill's end readings, as stored
    end_readings: list[dict[str, Any]]
    measured: Decimal
    billed: Decimal  # priced already: earlier live bills net of credits, and prepaid cycles
    volume: Decimal
    cycle_start: date
    prior: Decimal
    lines: tuple[QuoteLine, ...]  # the cycle_start cycle's lines (after the earlier segments')
    due_date: date
    late_fee_rate: Decimal
    late_fee_cap_fen: int
    amount_fen: int
    reissue_of_id: int | None = None
    # A span crossing an annual cycle's start: the earlier cycles' segments, oldest first,
    # and the part of ``volume`` in ``cycle_start``'s cycle (None: all of it).
    earlier: tuple[_Segment, ...] = ()
    cycle_volume: Decimal | None = None


@dataclass(frozen=True, slots=True)
class _Issued:
    bill_id: int
    account_id: int
    amount_fen: int


_LOCK = """
SELECT acc.id, acc.household_id, acc.tariff_code, acc.persons, acc.opened_at, h.customer_type, acc.balance_fen
FROM accounts acc JOIN households h ON h.id = acc.household_id
WHERE acc.id = ANY($1::bigint[]) AND acc.status = 'open' AND acc.mode = 'postpaid'
ORDER BY acc.id FOR UPDATE OF acc
"""

_LIVE_OF_PERIOD = """
SELECT account_id FROM bills WHERE period = $1 AND status <> 'voided' AND account_id = ANY($2::bigint[])
"""

# Per account (bills ``$3`` left out: the one a final bill may replace): the volume its
# live bills billed net of what they credited back, plus what prepaid settlement cycles
# priced (a legacy postpaid charge, or the account's prepaid past); the prior of the tier
# cycle ``$2`` (bills: their in-cycle volume net of credits, module docstring "Cycles";
# prepaid cycles of that cycle_start); where its newest live bill ended (without one:
# where prepaid settlement priced it to, if it ever did) and that bill's end readings.
# Called again for the accounts whose span crosses an annual cycle's start, with their
# first segment's cycle: its prior_m3 is that segment's prior.
_EARLIER = """
SELECT k.account_id,
       coalesce(b.billed, 0) + coalesce(p.charged, 0) AS billed_m3,
       coalesce(b.prior, 0) + coalesce(p.prior, 0) AS prior_m3,
       coalesce(b.last_end_at, p.charged_to) AS last_end_at, CAST(b.last_end AS text) AS last_end
FROM unnest($1::bigint[], $2::date[]) AS k(account_id, cycle_start)
LEFT JOIN LATERAL (
    SELECT sum(volume_m3 - credited_m3) AS billed,
           greatest(0, sum(cycle_volume_m3 - credited_m3) FILTER (WHERE cycle_start = k.cycle_start)) AS prior,
           max(period_end) AS last_end_at,
           (array_agg(end_readings ORDER BY period_end DESC, id DESC))[1] AS last_end
    FROM bills WHERE account_id = k.account_id AND status <> 'voided' AND id <> ALL($3::bigint[])
) b ON true
LEFT JOIN LATERAL (
    SELECT sum(volume_m3) AS charged, sum(volume_m3) FILTER (WHERE cycle_start = k.cycle_start) AS prior,
           max(settled_to) AS charged_to
    FROM prepaid_cycles WHERE account_id = k.account_id
) p ON true
"""

# Each meter serving the household at the instant, with its last reading up to it.
_END_READINGS = """
SELECT ma.household_id, ma.meter_id, r.read_at, r.total_m3
FROM meter_assignments ma
JOIN LATERAL (SELECT read_at, total_m3 FROM readings WHERE meter_id = ma.meter_id AND read_at <= $2
              ORDER BY read_at DESC LIMIT 1) r ON true
WHERE ma.household_id = ANY($1::bigint[]) AND ma.valid_from < $2 AND (ma.valid_to IS NULL OR ma.valid_to >= $2)
ORDER BY ma.household_id, ma.meter_id
"""



def _scaled(version: Tariff, months: int) -> Tariff:
    """``version`` for a ``months``-month bill: monthly tier limits and the household-size
    extension × months, the minimum monthly charge × months (module docstring)."""
    if months == 1:
        return version
    rules = dict(version.rules)
    if rules["cycle"] == TariffCycle.month.value:
        rules["tier_limits"] = [str(Decimal(limit) * months) for limit in rules["tier_limits"]]
        if rules.get("household_size"):
            household = dict(rules["household_size"])
            household["extra_m3_per_person"] = str(Decimal(household["extra_m3_per_person"]) * months)
            rules["household_size"] = household
    if rules.get("minimum_monthly_charge_fen") is not None:
        rules["minimum_monthly_charge_fen"] = rules["minimum_monthly_charge_fen"] * months
    return Tariff(id=version.id, code=version.code, name=version.name, customer_type=version.customer_type,
                  valid_from=version.valid_from, rules=rules)


def _line_pricer(versions: list[Tariff], *, persons: int | None, start: date, end: date,
                 months: int) -> Callable[[Decimal, Decimal], tuple[QuoteLine, ...]]:
    """``price_period(…, minimum=True)`` of ``(volume, prior)`` for a ``months``-month bill,
    the days' segments and rates worked out once for every account sharing them
    (:func:`backend.billing.service.period_line_pricer`)."""
    return period_line_pricer([_scaled(version, months) for version in versions], persons=persons, start=start,
                              end=end)


def _day(instant: datetime, zone: tzinfo) -> date:
    return instant.astimezone(zone).date()


def _months_touched(start: datetime, end: datetime, zone: tzinfo, *, continued: bool = False, least: int = 1) -> int:
    """The calendar months (in ``zone``) the span ``[start, end)`` touches: from the month
    holding ``start`` to the one holding its last instant. A span ``continued`` from an
    earlier bill (or prepaid settlement) that ended inside a month leaves that month out:
    the earlier bill counted it (its tiers and minimum charge); at least ``least`` (a
    bill: one; a split bill's first segment may count none, its month counted already)."""
    first, last = start.astimezone(zone), (end - _TICK).astimezone(zone)
    months = (last.year - first.year) * 12 + last.month - first.month + 1
    if continued and first != first.replace(day=1, hour=0, minute=0, second=0, microsecond=0):
        months -= 1
    return max(least, months)


def _cycle_cuts(first_day: date, cycle_start: date) -> list[date]:
    """The annual tier cycles' first days after ``first_day`` up to ``cycle_start`` (the
    period's cycle): where a span starting on ``first_day`` is cut (module docstring)."""
    cuts = []
    start = cycle_of(first_day, TariffCycle.year)[1]
    while start <= cycle_start:
        cuts.append(start)
        start = cycle_of(start, TariffCycle.year)[1]
    return cuts


def _readings(rows: Sequence[Any], zone: tzinfo, shown: dict[datetime, str]) -> list[dict[str, Any]]:
    """Readings as a bill stores them; instants in the utility's zone, as the bill prints
    them (``shown`` memoizes the text of an instant: a city's meters share a few)."""
    readings = []
    for row in rows:
        instant = shown.get(row["read_at"])
        if instant is None:
            instant = shown[row["read_at"]] = row["read_at"].astimezone(zone).isoformat()
        readings.append({"meter_id": row["meter_id"], "read_at": instant, "total_m3": str(row["total_m3"])})
    return readings


@dataclass(slots=True)
class _Drafted:
    """What :func:`_drafts` made of some accounts: the bills, the accounts passed over
    (opened after the end, or no tariff version in force) and those whose live bills
    already reach the end (a later or overlapping bill covers the span)."""

    drafts: list[_Draft]
    skipped: list[int]
    covered: list[int]
    # The usage read started while pricing (``prefetch``), for the caller to await.
    prefetched: asyncio.Task[dict[_Window, Decimal]] | None = None


# A usage window: household, from (the account's opening), to (the period's end).
_Window = tuple[int, datetime, datetime]


async def _usage_of(driver: Any, windows: Sequence[_Window]) -> dict[_Window, Decimal]:
    return dict(zip(windows, await household_usage_on(driver, windows), strict=True))


_WROTE_NOTHING = "SELECT pg_current_xact_id_if_assigned() IS NULL"
_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")


class _UsageReadAhead:
    """A connection of its own, beside the run's, on which the next chunk's usage is read
    while the chunk in hand is drafted and written (module docstring). Each read is a
    read-only transaction on the run transaction's snapshot, exported by the run just
    before; the run waits for the import (:meth:`imported`) before it commits, since an
    exported snapshot lives only as long as its transaction."""

    def __init__(self, pooled: Any) -> None:
        self._pooled = pooled
        self._imported: asyncio.Future[None] | None = None
        self._reading: asyncio.Task[dict[_Window, Decimal]] | None = None

    @staticmethod
    async def would_see(session: AsyncSession) -> bool:
        """Whether a reader on the snapshot of ``session``'s transaction would see what
        the run sees: the session is bound to an engine (not one connection) and its
        transaction has written nothing yet. Asked before the run writes."""
        return isinstance(session.bind, AsyncEngine) and bool(
            await (await raw_connection(session)).fetchval(_WROTE_NOTHING))

    @classmethod
    async def open(cls, session: AsyncSession) -> _UsageReadAhead | None:
        """A read-ahead for the run in ``session``'s transaction (:meth:`would_see` said
        yes), or None when the engine's pool has no connection to spare."""
        assert isinstance(session.bind, AsyncEngine)
        await raw_connection(session)  # the run's own connection first (a commit gave it back)
        engine = for_work(session.bind)
        pool: Any = engine.sync_engine.pool
        if not hasattr(pool, "checkedout") or pool.checkedout() >= pool.size():
            return None
        return cls(await engine.raw_connection())

    async def start(self, session: AsyncSession, windows: Sequence[_Window]) -> asyncio.Task[dict[_Window, Decimal]]:
        """Begin reading ``windows``' usage on the run transaction's current snapshot."""
        assert self._reading is None or self._reading.done(), "one read at a time"
        snapshot = await (await raw_connection(session)).fetchval("SELECT pg_export_snapshot()")
        if not _SNAPSHOT_ID.fullmatch(snapshot):
            raise ValueError(f"unexpected snapshot id {snapshot!r}")
        self._imported = asyncio.get_running_loop().create_future()
        self._reading = asyncio.ensure_future(self._read(snapshot, windows, self._imported))
        return self._reading

    async def _read(self, snapshot: str, windows: Sequence[_Window],
                    imported: asyncio.Future[None]) -> dict[_Window, Decimal]:
        driver = self._pooled.driver_connection
        try:
            await driver.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
                                 f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        except BaseException as failure:
            imported.set_exception(failure)
            raise
        imported.set_result(None)
        try:
            return await _usage_of(driver, windows)
        finally:
            await driver.execute("ROLLBACK")

    async def imported(self) -> None:
        """Wait until the read in flight holds its snapshot (before the run commits);
        a read that failed to begin raises its failure here."""
        if self._imported is not None:
            await asyncio.shield(self._imported)

    async def close(self) -> None:
        """Drop a read still in flight (a failed run) and give the connection back; one
        whose read did not end cleanly is discarded, not pooled."""
        clean = True
        if self._reading is not None and not self._reading.done():
            self._reading.cancel()
        if self._reading is not None:
            with contextlib.suppress(BaseException):
                await self._reading
            clean = not self._reading.cancelled() and self._reading.exception() is None
        if self._imported is not None and not self._imported.done():
            self._imported.cancel()
        if clean:
            self._pooled.close()
        else:
            self._pooled.invalidate()


async def _drafts(session: AsyncSession, accounts: Sequence[_Account], *, period: date, end: datetime, now: datetime,
                  zone: tzinfo, replacing: Sequence[int] = (), empty_span: bool = False,
                  usage: Mapping[_Window, Decimal] | None = None,
                  prefetch: Sequence[_Window] = ()) -> _Drafted:
    """The bills of ``accounts`` for ``period`` up to ``end`` (module docstring), each over
    its span; the live bills ``replacing`` (a final bill's same-period bill) left out.
    ``empty_span`` (a final bill at the end of its period's bill): a span ``[end, end)``
    is drafted too, unpriced (no lines): :func:`_continued` prices its volume (usage not
    billed yet) on the terms of the bill ending at ``end``. ``usage`` holds windows read
    ahead; ``prefetch`` windows are read while this call prices (``prefetched``)."""
    done = _Drafted([], [], [])
    if not accounts:
        return done
    driver = await raw_connection(session)
    versions = {code: await tariff_versions(session, code=code) for code in sorted({a.tariff_code for a in accounts})}
    rules = await late_fee_rules(session)
    last_day = _day(end, zone) if empty_span else _day(end - _TICK, zone)
    priced: list[tuple[_Account, date]] = []  # account, tier cycle start
    annual: set[int] = set()  # accounts on annual tiers: a span crossing a year is split
    for account in accounts:
        tariff = versions[account.tariff_code]
        if not tariff or account.opened_at >= end:
            done.skipped.append(account.id)
            continue
        cycle = TariffCycle(tariff[-1].rules["cycle"])  # a code keeps its cycle (save_tariff)
        if cycle is TariffCycle.year:
            annual.add(account.id)
        # Annual tiers: the cycle of the span's last priced day (a Dec–Jan bimonthly period
        # is its January's year, its December a segment); a month cycle: the period's.
        priced.append((account, cycle_of(last_day if cycle is TariffCycle.year else period, cycle)[0]))
    if not priced:
        return done

    earlier = {row["account_id"]: row for row in await driver.fetch(
        _EARLIER, [a.id for a, _ in priced], [c for _, c in priced], list(replacing))}
    billable: list[tuple[_Account, datetime, date, date]] = []  # account, span start, first priced day, cycle start
    days: dict[datetime, date] = {}  # most spans start at one instant (the last period's end)
    for account, cycle_start in priced:
        span_start = max(earlier[account.id]["last_end_at"] or account.opened_at, account.opened_at)
        if span_start > end or (span_start == end and not empty_span):
            done.covered.append(account.id)
            continue
        start_day = days.get(span_start)
        if start_day is None:
            start_day = days[span_start] = _day(span_start, zone)
        first_day = max(start_day, versions[account.tariff_code][0].valid_from)
        if first_day > last_day:
            done.skipped.append(account.id)
            continue
        billable.append((account, span_start, first_day, cycle_start))
    if not billable:
        return done
    # Each account's window starts at its own opening: one statement for all of them.
    spans = [(a.household_id, a.opened_at, end) for a, _, _, _ in billable]
    known_usage = usage or {}
    missing = [window for window in spans if window not in known_usage]
    read_now = dict(zip(missing, await household_usage_of_windows(session, missing), strict=True)) if missing else {}
    measured = [known_usage[window] if window in known_usage else read_now[window] for window in spans]
    # Spans crossing an annual cycle's start (none in a regular monthly run): the usage up
    # to each cut, and the prior of the first segment's cycle, one statement each.
    cuts_of = {a.id: cuts for a, _, first_day, cycle_start in billable
               if a.id in annual and (cuts := _cycle_cuts(first_day, cycle_start))}
    used_to: dict[tuple[int, date], Decimal] = {}
    first_prior: dict[int, Decimal] = {}
    if cuts_of:
        windows = [(a, cut) for a, _, _, _ in billable for cut in cuts_of.get(a.id, ())]
        used_to = dict(zip(((a.id, cut) for a, cut in windows), await household_usage_of_windows(
            session, [(a.household_id, a.opened_at, midnight(cut, zone)) for a, cut in windows]), strict=True))
        split = [(a.id, cycle_of(first_day, TariffCycle.year)[0]) for a, _, first_day, _ in billable
                 if a.id in cuts_of]
        first_prior = {row["account_id"]: row["prior_m3"] for row in await driver.fetch(
            _EARLIER, [i for i, _ in split], [c for _, c in split], list(replacing))}
    end_rows: dict[int, list[Any]] = defaultdict(list)
    for row in await driver.fetch(_END_READINGS, sorted({a.household_id for a, _, _, _ in billable}), end):
        end_rows[row["household_id"]].append(row)

    if prefetch:
        # The next chunk's usage goes out now, and the database works on it while the
        # loop below holds this process; one turn of the loop sends the statement.
        done.prefetched = asyncio.ensure_future(_usage_of(driver, prefetch))
        await asyncio.sleep(0)
    issue_day = _day(now, zone)
    shown: dict[datetime, str] = {}
    # What a city's accounts share is worked out once: the pricers, the spans' months
    # (most accounts' spans start at one instant), each customer type's rule and due date.
    pricers: dict[tuple[str, int | None, date, date, int], _Pricer] = {}
    months_of: dict[tuple[datetime, bool], int] = {}
    terms = {kind.value: (rule, issue_day + timedelta(days=rule.grace_days)) for kind, rule in rules.items()}
    # Pure computation over the chunk (no await): the collector would rescan the chunk's
    # rows and drafts many times over for nothing (cyclic_gc_paused's docstring).
    try:
        with cyclic_gc_paused():
            for (account, span_start, first_day, cycle_start), used in zip(billable, measured, strict=True):
                known = earlier[account.id]
                billed = known["billed_m3"]
                volume = max(_ZERO, used - billed).quantize(_FOUR)
                prior = known["prior_m3"]
                continued = known["last_end_at"] is not None
                months = months_of.get((span_start, continued))
                if months is None:
                    months = months_of[(span_start, continued)] = _months_touched(span_start, end, zone,
                                                                                  continued=continued)
                segments: tuple[_Segment, ...] = ()
                cycle_volume = None
                lines: tuple[QuoteLine, ...]
                if empty_span and span_start == end:
                    lines = ()  # no time: final_bill prices the volume as the bill ending at end's continuation
                elif account.id not in cuts_of:
                    key = (account.tariff_code, account.persons, first_day, last_day, months)
                    pricer = pricers.get(key)
                    if pricer is None:
                        pricer = pricers[key] = _line_pricer(versions[account.tariff_code], persons=account.persons,
                                                             start=first_day, end=last_day, months=months)
                    lines = pricer(volume, prior)
                else:
                    segments, cycle_volume, lines = _split(
                        account, versions[account.tariff_code], pricers, cuts=cuts_of[account.id], used_to=used_to,
                        billed=billed, volume=volume, first_prior=first_prior[account.id], prior=prior, span_start=span_start,
                        first_day=first_day, last_day=last_day, months=months, continued=continued, zone=zone)
                rule, due_date = terms[account.customer_type]
                amount_fen = sum(line.amount_fen for line in lines)
                if segments:
                    amount_fen += sum(line.amount_fen for segment in segments for line in segment.lines)
                rate, cap_fen = late_fee_terms(rule, amount_fen)
                done.drafts.append(_Draft(
                    account=account, start=span_start, end=end, months=months,
                    start_readings=known["last_end"] or "[]",
                    end_readings=_readings(end_rows.get(account.household_id, []), zone, shown), measured=used,
                    billed=billed, volume=volume, cycle_start=cycle_start, prior=prior, lines=lines, due_date=due_date,
                    late_fee_rate=rate, late_fee_cap_fen=cap_fen, amount_fen=amount_fen, earlier=segments,
                    cycle_volume=cycle_volume))
    except BaseException:
        if done.prefetched is not None:  # the run fails: the read ahead is dropped with it
            done.prefetched.cancel()
            with contextlib.suppress(BaseException):
                await done.prefetched
        raise
    return done


def _split(account: _Account, versions: list[Tariff], pricers: dict[tuple[str, int | None, date, date, int], _Pricer],
           *, cuts: Sequence[date], used_to: Mapping[tuple[int, date], Decimal], billed: Decimal, volume: Decimal,
           first_prior: Decimal, prior: Decimal, span_start: datetime, first_day: date, last_day: date,
           months: int, continued: bool, zone: tzinfo) -> tuple[tuple[_Segment, ...], Decimal, tuple[QuoteLine, ...]]:
    """A span crossing the annual cycle starts ``cuts`` priced a segment per cycle (module
    docstring, "Cycles"): the earlier segments, the volume in the period's cycle and its
    lines. Segment i's volume is clamp(M(cut i) − billed − earlier segments, 0, what is
    left), the last one's what is left."""

    def priced(start: date, last: date, segment_months: int, segment_volume: Decimal,
               segment_prior: Decimal) -> tuple[QuoteLine, ...]:
        key = (account.tariff_code, account.persons, start, last, segment_months)
        pricer = pricers.get(key)
        if pricer is None:
            pricer = pricers[key] = _line_pricer(versions, persons=account.persons, start=start, end=last,
                                                 months=segment_months)
        return pricer(segment_volume, segment_prior)

    segments: list[_Segment] = []
    left, start_day, start_at, counted = volume, first_day, span_start, 0
    for index, cut in enumerate(cuts):
        cut_at = midnight(cut, zone)
        part = min(max(_ZERO, used_to[(account.id, cut)] - billed - (volume - left)), left).quantize(_FOUR)
        # The first segment keeps the "continued" rule (its month may be counted already).
        segment_months = _months_touched(start_at, cut_at, zone, continued=continued and index == 0, least=0)
        segment_prior = first_prior if index == 0 else _ZERO
        segments.append(_Segment(cycle_of(start_day, TariffCycle.year)[0], start_day, cut - timedelta(days=1),
                                 segment_months, part, segment_prior,
                                 priced(start_day, cut - timedelta(days=1), segment_months, part, segment_prior)))
        left -= part
        counted += segment_months
        start_day, start_at = cut, cut_at
    return tuple(segments), left, priced(start_day, last_day, months - counted, left, prior)


_COUNT_OF_PERIOD = """
SELECT account_id, count(*) AS bills FROM bills WHERE period = $1 AND account_id = ANY($2::bigint[]) GROUP BY account_id
"""

# Bill ids are taken first, so the entries can name their bill and each bill row is
# written once, with its entry.
_NEXT_BILL_IDS = "SELECT nextval(pg_get_serial_sequence('bills', 'id')) AS id FROM generate_series(1, $1)"

# The bills and their lines go in by binary COPY into temporary tables, numbers as text,
# then one INSERT … SELECT each: a few round trips for a city's bills, and asyncpg's binary
# encoding of a Decimal (~1 µs each, two or four a row) is left to the server's numeric
# input (measured, 149k lines: 0.29 s of client CPU copied straight, 0.09 s staged, and
# less wall time). The staged rows are in bill and line order already: no ORDER BY.
_STAGE = """
CREATE TEMP TABLE staged_bills (
    id bigint, account_id bigint, household_id bigint, months smallint, status text, period_start timestamptz,
    period_end timestamptz, tariff_code text, persons int, start_readings text, end_readings text, measured_m3 text,
    volume_m3 text, cycle_start date, prior_cycle_m3 text, amount_fen bigint, due_date date, late_fee_rate text,
    late_fee_cap_fen bigint, paid_at timestamptz, reissue_of_id bigint, entry_id bigint, cycle_volume_m3 text,
    earlier_cycles text
) ON COMMIT DROP;
CREATE TEMP TABLE staged_bill_lines (
    bill_id bigint, line_no smallint, component text, tier smallint, volume_m3 text, price text, amount_fen bigint,
    valid_from date, cycle_start date
) ON COMMIT DROP
"""
_STAGED_BILL_COLUMNS = (
    "id", "account_id", "household_id", "months", "status", "period_start", "period_end", "tariff_code", "persons",
    "start_readings", "end_readings", "measured_m3", "volume_m3", "cycle_start", "prior_cycle_m3", "amount_fen",
    "due_date", "late_fee_rate", "late_fee_cap_fen", "paid_at", "reissue_of_id", "entry_id", "cycle_volume_m3",
    "earlier_cycles",
)
_STAGED_LINE_COLUMNS = ("bill_id", "line_no", "component", "tier", "volume_m3", "price", "amount_fen", "valid_from",
                        "cycle_start")
_INSERT_STAGED_BILLS = """
INSERT INTO bills (id, account_id, household_id, period, months, kind, status, run_id, period_start, period_end,
                   tariff_code, persons, start_readings, end_readings, measured_m3, volume_m3, cycle_start,
                   prior_cycle_m3, amount_fen, due_date, late_fee_rate, late_fee_cap_fen, issued_at, issued_by,
                   paid_at, reissue_of_id, entry_id, cycle_volume_m3, earlier_cycles)
SELECT id, account_id, household_id, $1::date, months, $2::text, status, $3::bigint, period_start, period_end,
       tariff_code, persons, CAST(start_readings AS jsonb), CAST(end_readings AS jsonb), CAST(measured_m3 AS numeric),
       CAST(volume_m3 AS numeric), cycle_start, CAST(prior_cycle_m3 AS numeric), amount_fen, due_date,
       CAST(late_fee_rate AS numeric), late_fee_cap_fen, $4::timestamptz, $5::text, paid_at, reissue_of_id, entry_id,
       CAST(coalesce(cycle_volume_m3, volume_m3) AS numeric), CAST(earlier_cycles AS jsonb)
FROM staged_bills
"""
_INSERT_STAGED_LINES = """
INSERT INTO bill_lines (bill_id, line_no, component, tier, volume_m3, price, amount_fen, valid_from, cycle_start)
SELECT bill_id, line_no, component, tier, CAST(volume_m3 AS numeric), CAST(price AS numeric), amount_fen, valid_from,
       cycle_start
FROM staged_bill_lines;
DROP TABLE staged_bills, staged_bill_lines
"""


async def _write(session: AsyncSession, drafts: Sequence[_Draft], *, period: date, kind: BillKind, run_id: int | None,
                 by: str, now: datetime, zone: tzinfo, credit_of: Sequence[int] | None = None) -> list[_Issued]:
    """Post the drafts' entries and insert their bills and lines, then let credit already
    on the accounts pay the new bills (``allocations.allocate_credit``: a payment made
    ahead of its bill, or left over) — on the accounts ``credit_of`` when given (the run:
    those whose balance was positive when locked, the only ones with money for new bills,
    since credit that arrived while bills were open was allocated by its own
    transaction), else on all of them. The callers hold the accounts' locks and checked
    that no live bill of the period exists, and every writer of bills locks the account
    first, so the live-bill unique index never refuses here (if it did, the statement
    fails and the transaction rolls back: nothing half-written)."""
    if not drafts:
        return []
    driver = await raw_connection(session)
    ids = [d.account.id for d in drafts]
    counts = {row["account_id"]: row["bills"] for row in await driver.fetch(_COUNT_OF_PERIOD, period, ids)}
    bill_ids = [row["id"] for row in await driver.fetch(_NEXT_BILL_IDS, len(drafts))]
    entries: list[EntryIn] = []
    day = period.isoformat()
    with cyclic_gc_paused():
        for draft, bill_id in zip(drafts, bill_ids, strict=True):
            if draft.amount_fen:
                entries.append(EntryIn(
                    account_id=draft.account.id, kind=EntryKind.bill, amount_fen=-draft.amount_fen,
                    ref=f"bill:{bill_id}", idempotency_key=f"bill:{draft.account.id}:{day}:"
                                                           f"{counts.get(draft.account.id, 0) + 1}"))
    posted = iter(await post_entries(session, entries, posted_by=by, posted_at=now))
    with cyclic_gc_paused():  # pure computation, as in _drafts
        # A bill of ¥0 writes no entry and is issued paid (module docstring).
        bills = [(
            bill_id, d.account.id, d.account.household_id, d.months, "open" if d.amount_fen else "paid", d.start, d.end,
            d.account.tariff_code, d.account.persons, d.start_readings, json.dumps(d.end_readings), str(d.measured),
            str(d.volume), d.cycle_start, str(d.prior), d.amount_fen, d.due_date, str(d.late_fee_rate),
            d.late_fee_cap_fen, None if d.amount_fen else now, d.reissue_of_id,
            next(posted).id if d.amount_fen else None,
            # A bill not split: its cycle volume is its volume (the INSERT's coalesce).
            None if d.cycle_volume is None else str(d.cycle_volume),
            json.dumps([segment.stored() for segment in d.earlier]) if d.earlier else None,
        ) for d, bill_id in zip(drafts, bill_ids, strict=True)]
        lines = [(bill_id, number, line.component, line.tier, str(line.volume), str(line.price), line.amount_fen,
                  line.valid_from, cycle_start)
                 for draft, bill_id in zip(drafts, bill_ids, strict=True)
                 for number, (cycle_start, line) in enumerate(
                     _cycle_lines(draft) if draft.earlier else zip(repeat(draft.cycle_start), draft.lines), start=1)]
    await driver.execute(_STAGE)
    await copy_into(session, "staged_bills", columns=_STAGED_BILL_COLUMNS, records=bills)
    await copy_into(session, "staged_bill_lines", columns=_STAGED_LINE_COLUMNS, records=lines)
    await driver.execute(_INSERT_STAGED_BILLS, period, kind.value, run_id, now, by[:100])
    await driver.execute(_INSERT_STAGED_LINES)
    credited = ids if credit_of is None else credit_of
    if credited:
        await allocate_credit(session, account_ids=credited, on=_day(now, zone), now=now, by=by)
    return [_Issued(bill_id, draft.account.id, draft.amount_fen) for draft, bill_id in zip(drafts, bill_ids, strict=True)]


def _cycle_lines(draft: _Draft) -> Iterator[tuple[date, QuoteLine]]:
    """The draft's lines in bill order, each with its tier cycle: the earlier segments'
    first (oldest first), then the period cycle's."""
    for segment in draft.earlier:
        for line in segment.lines:
            yield segment.cycle_start, line
    for line in draft.lines:
        yield draft.cycle_start, line


async def _lock(session: AsyncSession, account_ids: Sequence[int]) -> list[_Account]:
    driver = await raw_connection(session)
    return [_Account(row["id"], row["household_id"], row["tariff_code"], row["persons"], row["opened_at"],
                     row["customer_type"], row["balance_fen"])
            for row in await driver.fetch(_LOCK, sorted(set(account_ids)))]


async def _emit(session: AsyncSession, issued: Sequence[_Issued], period: date) -> None:
    if issued:
        await emit_event(session, "bill.issued", BillIssued(
            bill_ids=tuple(i.bill_id for i in issued), account_ids=tuple(i.account_id for i in issued), period=period),
            key=f"account:{issued[0].account_id}" if len(issued) == 1 else None)


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True, slots=True)
class BillingRunResult:
    """What a run did: the bills it issued (``bill_ids`` and ``account_ids`` parallel),
    the accounts held for review with why, and the run row's counts."""

    run_id: int
    period: date
    bill_ids: tuple[int, ...]
    account_ids: tuple[int, ...]
    held: tuple[review.HeldAccount, ...]
    accounts: int
    issued: int
    already_billed: int
    skipped: int
    amount_fen: int


# The open postpaid accounts in reach with the cycle of their household's area.
_CANDIDATES = """
WITH reach AS (
    SELECT a.id, a.path FROM areas a
    WHERE ($1::text IS NULL OR a.path LIKE $1 || '%') AND ($2::text[] IS NULL OR a.path LIKE ANY($2::text[]))
), cycles AS (
    SELECT r.id AS area_id, coalesce(c.months, 1) AS months, coalesce(c.first_month, 1) AS first_month
    FROM reach r LEFT JOIN LATERAL (
        SELECT c.months, c.first_month FROM area_billing_cycles c JOIN areas anc ON anc.id = c.area_id
        WHERE r.path LIKE anc.path || '%' ORDER BY length(anc.path) DESC LIMIT 1
    ) c ON true
)
SELECT acc.id, acc.household_id, acc.opened_at, cy.months, cy.first_month
FROM accounts acc JOIN households h ON h.id = acc.household_id JOIN cycles cy ON cy.area_id = h.area_id
WHERE acc.status = 'open' AND acc.mode = 'postpaid' AND ($3::bigint[] IS NULL OR acc.id = ANY($3::bigint[]))
ORDER BY acc.id
"""


async def _candidates(session: AsyncSession, *, area_path: str | None, scope_patterns: Sequence[str] | None,
                      account_ids: Sequence[int] | None) -> list[Any]:
    driver = await raw_connection(session)
    return list(await driver.fetch(_CANDIDATES, area_path, patterns_param(scope_patterns),
                                   None if account_ids is None else sorted(set(account_ids))))


async def _live_of_period(session: AsyncSession, period: date, account_ids: Sequence[int]) -> set[int]:
    driver = await raw_connection(session)
    return {row["account_id"] for row in await driver.fetch(_LIVE_OF_PERIOD, period, list(account_ids))}


_RUN_COUNTS = text("""
UPDATE billing_runs SET accounts = :accounts, issued = :issued, held = :held, already_billed = :already_billed,
    skipped = :skipped, amount_fen = :amount_fen, status = :status, finished_at = :finished_at, error = :error
WHERE id = :id
""")


async def run_billing(
    session: AsyncSession,
    *,
    period: date,
    area_id: int | None = None,
    account_ids: Sequence[int] | None = None,
    now: datetime,
    by: str,
    tz: str | tzinfo = "Asia/Shanghai",
    scope_patterns: Sequence[str] | None = None,
    progress: Progress | None = None,
    commit: Callable[[], Awaitable[None]] | None = None,
    months: int | None = None,
) -> BillingRunResult:
    """出账: bill ``period`` for the open postpaid accounts of the area's subtree (default:
    the scope; ``account_ids`` narrows it) as the module docstring says, and record the
    run. ``progress(done, total)`` is called after each chunk; ``commit`` (given) commits
    after each chunk, and a failure then marks the run ``failed`` and re-raises. ``months``
    bills only accounts of that cycle length (the scheduled job). Refusals (nothing
    written): INVALID (a period not a first day), NOT_FOUND (an area outside the scope),
    BILLING_PERIOD_MISALIGNED, BILLING_PERIOD_NOT_ENDED. Without ``commit`` the caller commits."""
    period = _checked_period(period)
    zone = as_zone(tz)
    area_path = await area_path_in_scope(session, area_id, scope_patterns) if area_id is not None else None
    run_months = months or 1
    if area_id is not None:
        cycle = await billing_cycle_of(session, area_id=area_id)
        if months is None and not is_start_month(period, cycle.months, cycle.first_month):
            raise BillingPeriodMisaligned(field="period")
        run_months = months or cycle.months
    if review.period_bounds(period, zone, months=run_months)[1] > now:
        raise BillingPeriodNotEnded(field="period")

    # Asked before the run writes anything (its run row, the review's rows).
    reader_sees_run = await _UsageReadAhead.would_see(session)
    groups: dict[int, list[int]] = {1: [], 2: []}
    skipped = 0
    considered = 0
    window_from: dict[int, tuple[int, datetime]] = {}  # account → household, opening: its usage window's
    ended = {cycle: review.period_bounds(period, zone, months=cycle)[1] <= now for cycle in (1, 2)}
    for row in await _candidates(session, area_path=area_path, scope_patterns=scope_patterns, account_ids=account_ids):
        if months is not None and row["months"] != months:
            continue
        considered += 1
        window_from[row["id"]] = (row["household_id"], row["opened_at"])
        if not is_start_month(period, row["months"], row["first_month"]) or not ended[row["months"]]:
            skipped += 1
        else:
            groups[row["months"]].append(row["id"])

    # A scoped caller's run over "everything" covers their one subtree: it is recorded as
    # that area's run, so they (and whoever may see that area) find it in billingRuns.
    recorded_area = area_id if area_id is not None else _scope_root(scope_patterns)
    run = BillingRun(period=period, area_id=recorded_area, started_by=by[:100], started_at=now)
    session.add(run)
    await session.flush()
    assert run.id is not None
    run_id = run.id
    if commit is not None:
        await commit()

    held: list[review.HeldAccount] = []
    bill_ids: list[int] = []
    billed_accounts: list[int] = []
    already = amount = 0

    async def record(status: BillingRunStatus, error: str | None = None) -> None:
        await session.execute(_RUN_COUNTS, {
            "id": run_id, "accounts": considered, "issued": len(bill_ids), "held": len(held),
            "already_billed": already, "skipped": skipped, "amount_fen": amount, "status": status.value,
            "finished_at": now if status is not BillingRunStatus.running else None, "error": error})

    reader: _UsageReadAhead | None = None
    try:
        reader = await _UsageReadAhead.open(session) if reader_sees_run else None
        # Review per cycle length (a group's own period bounds), then one list of the
        # accounts to bill in global id order: a chunk locks its accounts in id order
        # whatever their cycle, as every other writer does, so a run over monthly and
        # bimonthly accounts never deadlocks with them.
        cycle_months: dict[int, int] = {}
        for group_months, ids in groups.items():
            if not ids:
                continue
            await review.prepare_review(session, period=period, now=now, tz=zone, months=group_months, account_ids=ids)
            held.extend(await review.held_accounts(session, period=period, account_ids=ids))
            for account_id in await review.billable_accounts(session, period=period, account_ids=ids):
                cycle_months[account_id] = group_months
        held.sort(key=lambda one: one.account_id)
        live = await _live_of_period(session, period, list(cycle_months))
        already += len(live)
        to_bill = sorted(set(cycle_months) - live)
        ends = {group_months: review.period_bounds(period, zone, months=group_months)[1] for group_months in groups}

        def windows_of(ids: Sequence[int]) -> list[_Window]:
            return [(*window_from[i], ends[cycle_months[i]]) for i in ids]

        read_ahead: dict[_Window, Decimal] = {}
        in_flight: asyncio.Task[dict[_Window, Decimal]] | None = None
        for offset in range(0, len(to_bill), CHUNK):
            chunk = to_bill[offset:offset + CHUNK]
            accounts = await _lock(session, chunk)
            # Billed meanwhile by a concurrent run: counted, not billed again.
            live = await _live_of_period(session, period, [a.id for a in accounts])
            already += len(live)
            skipped += len(chunk) - len(accounts)  # closed or changed mode meanwhile
            following = windows_of(to_bill[offset + CHUNK:offset + 2 * CHUNK])
            if reader is not None:
                # This chunk's usage (read during the last one), then the next chunk's
                # read starts beside this one's drafts and writes.
                read_ahead = await in_flight if in_flight is not None else {}
                in_flight = await reader.start(session, following) if following else None
            drafts: list[_Draft] = []
            prefetched: asyncio.Task[dict[_Window, Decimal]] | None = None
            last_group = max((m for m, _ in ends.items() if any(cycle_months[a.id] == m for a in accounts)), default=0)
            for group_months, end in ends.items():
                drafted = await _drafts(session, [a for a in accounts if a.id not in live
                                                  and cycle_months[a.id] == group_months],
                                        period=period, end=end, now=now, zone=zone, usage=read_ahead,
                                        # Without a reader the next chunk's usage is read on
                                        # this connection while the last group prices.
                                        prefetch=following if reader is None and group_months == last_group else ())
                prefetched = drafted.prefetched or prefetched
                drafts.extend(drafted.drafts)
                skipped += len(drafted.skipped)
                already += len(drafted.covered)  # a later or overlapping bill covers the span
            if reader is None:
                read_ahead = await prefetched if prefetched is not None else {}
            drafts.sort(key=lambda draft: draft.account.id)
            issued = await _write(session, drafts, period=period, kind=BillKind.regular, run_id=run_id, by=by,
                                  now=now, zone=zone, credit_of=[d.account.id for d in drafts
                                                                 if d.account.balance_fen > 0])
            bill_ids.extend(i.bill_id for i in issued)
            billed_accounts.extend(i.account_id for i in issued)
            amount += sum(i.amount_fen for i in issued)
            await _emit(session, issued, period)
            if commit is not None:
                await record(BillingRunStatus.running)
                if reader is not None:
                    await reader.imported()  # the snapshot it reads outlives this transaction
                await commit()
            if progress is not None:
                progress(min(offset + CHUNK, len(to_bill)), len(to_bill))
        await record(BillingRunStatus.finished)
    except Exception as failure:
        if reader is not None:
            await reader.close()
            reader = None
        if commit is None:
            raise
        await session.rollback()
        await record(BillingRunStatus.failed, f"{type(failure).__name__}: {failure}"[:1000])
        await commit()
        raise
    finally:
        if reader is not None:
            await reader.close()
    return BillingRunResult(run_id=run_id, period=period, bill_ids=tuple(bill_ids), account_ids=tuple(billed_accounts),
                            held=tuple(held), accounts=considered, issued=len(bill_ids), already_billed=already,
                            skipped=skipped, amount_fen=amount)


def _scope_root(scope_patterns: Sequence[str] | None) -> int | None:
    """The area of a scope that is one subtree (``/1/4/%`` → 4); None otherwise."""
    if scope_patterns is None or len(scope_patterns) != 1:
        return None
    path = scope_patterns[0].removesuffix("%").strip("/")
    last = path.rsplit("/", 1)[-1]
    return int(last) if last.isdigit() else None


async def billing_runs(session: AsyncSession, *, period: date | None, scope_patterns: Sequence[str] | None,
                       offset: int, limit: int, run_id: int | None = None) -> tuple[list[BillingRun], int]:
    """Runs (of ``period``; or the one ``run_id``), newest first, with their total: runs
    over an area in the scope. A run without an area (the whole utility) is listed only to
    a caller whose scope covers the whole utility (no restriction, or every root area, as a
    company-wide administrator's): its counts are the whole utility's."""
    rows = (await session.execute(text("""
        SELECT r.id, count(*) OVER () AS total FROM billing_runs r LEFT JOIN areas a ON a.id = r.area_id
        WHERE (CAST(:period AS date) IS NULL OR r.period = CAST(:period AS date))
          AND (CAST(:run_id AS bigint) IS NULL OR r.id = CAST(:run_id AS bigint))
          AND (CAST(:patterns AS text[]) IS NULL OR a.path LIKE ANY(CAST(:patterns AS text[]))
               OR (r.area_id IS NULL AND NOT EXISTS (
                   SELECT FROM areas root WHERE root.parent_id IS NULL
                     AND NOT root.path LIKE ANY(CAST(:patterns AS text[])))))
        ORDER BY r.id DESC OFFSET :offset LIMIT :limit
    """), {"period": period, "run_id": run_id, "patterns": patterns_param(scope_patterns), "offset": offset,
           "limit": limit})).all()
    found = {run.id: run for run in (await session.execute(
        select(BillingRun).where(col(BillingRun.id).in_([row.id for row in rows]))
        .execution_options(populate_existing=True))).scalars()}
    return [found[row.id] for row in rows], int(rows[0].total) if rows else 0


# --------------------------------------------------------------------------- one account: final bill, void, re-issue


async def _account_cycle(session: AsyncSession, account_id: int) -> tuple[int, int]:
    """``(months, first_month)`` of the cycle the account's household's area bills in."""
    driver = await raw_connection(session)
    path = await driver.fetchval("SELECT a.path FROM accounts acc JOIN households h ON h.id = acc.household_id "
                                 "JOIN areas a ON a.id = h.area_id WHERE acc.id = $1", account_id)
    row = await driver.fetchrow(_AREA_CYCLE, path)
    return (row["months"], row["first_month"]) if row is not None else (1, 1)


async def _live_bill(session: AsyncSession, account_id: int, period: date) -> Bill | None:
    found = (await session.execute(text(
        "SELECT id FROM bills WHERE account_id = :a AND period = :p AND status <> 'voided' FOR UPDATE"),
        {"a": account_id, "p": period})).scalar_one_or_none()
    return await session.get(Bill, found, populate_existing=True) if found is not None else None


@dataclass(frozen=True, slots=True)
class FinalBill:
    """What a final charge did for a postpaid account: the final bill issued (None: the
    account's bills already cover the final instant), a bill it voided and replaced, and
    the net debit."""

    bill_id: int | None
    voided_bill_id: int | None
    net_fen: int


async def final_bill(session: AsyncSession, *, account_id: int, at: datetime, by: str, now: datetime,
                     tz: str | tzinfo = "Asia/Shanghai") -> FinalBill:
    """The postpaid account's final bill up to ``at`` (module docstring) and its
    ``settled_to`` moved to ``at``. The caller has checked the account is open and in
    scope; ACCOUNT_UNSETTLED when the period's bill has money allocated and would change.
    The caller commits."""
    zone = as_zone(tz)
    months, first_month = await _account_cycle(session, account_id)
    period = period_of(_day(at - _TICK, zone), months, first_month)
    (account,) = await _lock(session, [account_id])
    driver = await raw_connection(session)
    await driver.execute("UPDATE accounts SET settled_to = greatest(coalesce(settled_to, $2), $2) WHERE id = $1",
                         account_id, at)
    later = await driver.fetchval("SELECT EXISTS (SELECT FROM bills WHERE account_id = $1 AND period > $2 "
                                  "AND status <> 'voided')", account_id, period)
    if later:
        return FinalBill(None, None, 0)
    existing = await _live_bill(session, account_id, period)
    empty_span = existing is not None and existing.period_end == at and _has_money(existing)
    continued = None
    if empty_span:
        # The period's bill ends at the instant and cannot be redone (money allocated): it
        # is an earlier bill like any other, as when the account closes a moment later, and
        # the final bill is the next period's over the empty span [at, at), issued only to
        # credit over-billed volume or to bill usage that reached the instant after it was
        # made, priced as that bill's continuation (what redoing it would add).
        period, continued, existing = period_of(_day(at, zone), months, first_month), existing, None
    drafted = await _drafts(session, [account], period=period, end=at, now=now, zone=zone,
                            replacing=[existing.id] if existing is not None and existing.id is not None else [],
                            empty_span=empty_span)
    if not drafted.drafts:
        return FinalBill(None, None, 0)
    (draft,) = drafted.drafts
    # Priced beyond what was measured (a downward correction after a sent bill): credited,
    # as far as the other live bills billed it (prepaid cycles have no bill to give back).
    over_m3 = max(Decimal(0), draft.billed - draft.measured).quantize(Decimal("0.0001"))
    if over_m3 > 0:
        over_m3 = min(over_m3, Decimal(await driver.fetchval(
            "SELECT coalesce(sum(volume_m3), 0) FROM bills WHERE account_id = $1 AND status <> 'voided' "
            "AND id <> $2", account_id, existing.id if existing is not None and existing.id is not None else 0)))
    if continued is not None:
        if draft.volume == 0 and over_m3 == 0:
            return FinalBill(None, None, 0)
        await _continued(session, draft, continued, zone=zone)
    voided_id = None
    net = draft.amount_fen
    if existing is not None:
        if existing.volume_m3 == draft.volume and existing.credited_m3 == over_m3:
            return FinalBill(None, None, 0)
        if _has_money(existing):
            raise AccountUnsettled(field="id")
        voided = await _void(session, existing, reason=FINAL_REBILL_REASON, by=by, now=now)
        voided_id = voided.id
        net -= voided.amount_fen
    issued = await _write(session, drafted.drafts, period=period, kind=BillKind.final, run_id=None, by=by, now=now,
                          zone=zone)
    (final,) = issued
    if over_m3 > 0:
        net -= await _credit_over_billed(session, final.bill_id, account_id, over_m3, by=by, now=now, zone=zone)
    await _emit(session, issued, period)
    return FinalBill(final.bill_id, voided_id, net)


def _has_money(bill: Bill) -> bool:
    """Whether money was allocated to ``bill`` (or its credit paid other bills): it is never redone."""
    return bill.principal_paid_fen > 0 or bill.late_fee_paid_fen > 0 or bill.credit_fen > 0


# A bill's pricing terms for one tier cycle: (first priced day, last day, months, volume, prior).
_Part = tuple[date, date, int, Decimal, Decimal]


def _bill_parts(versions: list[Tariff], *, period_start: datetime, period_end: datetime, opened_at: datetime,
                months: int, cycle_volume: Decimal, prior: Decimal, earlier_cycles: Sequence[Mapping[str, str]],
                zone: tzinfo) -> list[_Part]:
    """The terms a bill was priced on, per segment (``earlier_cycles``, oldest first) and
    its own cycle last: its days, months, volume and prior in each (module docstring,
    "Over-billed" and "Final bill")."""
    first_day = max(_day(period_start, zone), _day(opened_at, zone), versions[0].valid_from)
    parts: list[_Part] = [(date.fromisoformat(one["first_day"]), date.fromisoformat(one["last_day"]),
                           int(one["months"]), Decimal(one["volume_m3"]), Decimal(one["prior_m3"]))
                          for one in earlier_cycles]
    parts.append((parts[-1][1] + timedelta(days=1) if parts else first_day, _day(period_end - _TICK, zone),
                  months - sum(part[2] for part in parts), Decimal(cycle_volume), Decimal(prior)))
    return parts


def _added_lines(before: Sequence[QuoteLine], after: Sequence[QuoteLine]) -> tuple[QuoteLine, ...]:
    """``after`` less ``before`` (one pricer's lines for a larger volume, same prior), in
    ``after``'s order: per component, tier and tariff version the m³ and fen added; the
    minimum line is the change of the top-up, ≤ 0 (the part of it the added water's
    charge absorbs). The lines add up to Σ after − Σ before."""
    had = {(line.component, line.tier, line.valid_from): line for line in before}
    made = []
    for line in after:
        was = had.pop((line.component, line.tier, line.valid_from), None)
        if was is None:
            made.append(line)
        elif line.volume != was.volume or line.amount_fen != was.amount_fen:
            made.append(QuoteLine(line.component, line.tier, line.volume - was.volume, line.price,
                                  line.amount_fen - was.amount_fen, line.valid_from))
    # A line of before's not in after: the minimum line, the top-up absorbed whole.
    made.extend(QuoteLine(was.component, was.tier, -was.volume, was.price, -was.amount_fen, was.valid_from)
                for was in had.values())
    return tuple(made)


async def _continued(session: AsyncSession, draft: _Draft, bill: Bill, *, zone: tzinfo) -> None:
    """Price an empty-span final bill's ``draft`` (``[at, at)``) as the continuation of
    ``bill``, the live bill ending at ``at`` (module docstring, "Final bill"): its volume
    is added to ``bill``'s own cycle's part, on ``bill``'s terms (tariff versions over its
    days, months, persons, minimum charge, prior), and costs price(v + volume, prior) −
    price(v, prior) — what redoing ``bill`` with it would add. The draft takes those
    terms: ``bill``'s tariff, persons, months and cycle, the prior its volume continues
    from, no minimum charge of its own."""
    versions = await tariff_versions(session, code=bill.tariff_code)
    start, last, months, volume, prior = _bill_parts(
        versions, period_start=bill.period_start, period_end=bill.period_end, opened_at=draft.account.opened_at,
        months=bill.months, cycle_volume=bill.cycle_volume_m3 - bill.credited_m3, prior=bill.prior_cycle_m3,
        earlier_cycles=bill.earlier_cycles or [], zone=zone)[-1]
    pricer = _line_pricer(versions, persons=bill.persons, start=start, end=last, months=months)
    draft.account = replace(draft.account, tariff_code=bill.tariff_code, persons=bill.persons)
    draft.lines = _added_lines(pricer(volume, prior), pricer(volume + draft.volume, prior)) if draft.volume else ()
    draft.cycle_start, draft.prior, draft.months = bill.cycle_start, (prior + volume).quantize(_FOUR), max(1, months)
    draft.earlier, draft.cycle_volume = (), None
    draft.amount_fen = sum(line.amount_fen for line in draft.lines)
    rule = {kind.value: rule for kind, rule in (await late_fee_rules(session)).items()}[draft.account.customer_type]
    draft.late_fee_rate, draft.late_fee_cap_fen = late_fee_terms(rule, draft.amount_fen)


async def _credit_over_billed(session: AsyncSession, final_id: int, account_id: int, over_m3: Decimal, *, by: str,
                              now: datetime, zone: tzinfo) -> int:
    """Credit ``over_m3`` on final bill ``final_id`` priced back at the rates it was billed
    at: the live bills newest first each give back min(what is left, its volume), worth
    price(volume, prior) − price(volume − taken, prior) on its own terms (module
    docstring); a split bill's price is its segments' (each on its own days, months and
    prior), the volume given back from its last segment first, then the earlier ones.
    Volume priced by prepaid cycles has no bill to give it back. One ``adjustment`` entry;
    returns the credit in fen."""
    driver = await raw_connection(session)
    rows = await driver.fetch("""
        SELECT b.id, b.tariff_code, b.persons, b.months, b.period_start, b.period_end, b.volume_m3, b.prior_cycle_m3,
               b.cycle_volume_m3, CAST(b.earlier_cycles AS text) AS earlier_cycles, acc.opened_at
        FROM bills b JOIN accounts acc ON acc.id = b.account_id
        WHERE b.account_id = $1 AND b.status <> 'voided' AND b.id <> $2 AND b.volume_m3 > 0
        ORDER BY b.period_end DESC, b.id DESC""", account_id, final_id)
    left, credit_fen = over_m3, 0
    for row in rows:
        if left <= 0:
            break
        versions = await tariff_versions(session, code=row["tariff_code"])
        parts = _bill_parts(versions, period_start=row["period_start"], period_end=row["period_end"],
                            opened_at=row["opened_at"], months=row["months"], cycle_volume=row["cycle_volume_m3"],
                            prior=row["prior_cycle_m3"], earlier_cycles=json.loads(row["earlier_cycles"] or "[]"),
                            zone=zone)
        for start, last, months, volume, prior in reversed(parts):
            taken = min(left, volume)
            if taken <= 0:
                continue
            pricer = _line_pricer(versions, persons=row["persons"], start=start, end=last, months=months)
            credit_fen += (sum(line.amount_fen for line in pricer(volume, prior))
                           - sum(line.amount_fen for line in pricer(volume - taken, prior)))
            left -= taken
    entry_id = None
    if credit_fen > 0:
        (posted,) = await post_entries(session, [EntryIn(
            account_id=account_id, kind=EntryKind.adjustment, amount_fen=credit_fen, ref=f"bill:{final_id}",
            idempotency_key=f"bill-credit:{final_id}", note="销户退还多计水量")], posted_by=by, posted_at=now)
        entry_id = posted.id
    await driver.execute("UPDATE bills SET credited_m3 = $2, credit_fen = $3, credit_entry_id = $4 WHERE id = $1",
                         final_id, over_m3 - left, credit_fen, entry_id)
    if entry_id is not None:
        await allocate_credit(session, account_ids=[account_id], on=_day(now, zone), now=now, by=by)
    return credit_fen


_UNBILLED = """
SELECT coalesce((SELECT sum(volume_m3 - credited_m3) FROM bills WHERE account_id = $1 AND status <> 'voided'), 0)
     + coalesce((SELECT sum(volume_m3) FROM prepaid_cycles WHERE account_id = $1), 0)
"""


async def unbilled_m3(session: AsyncSession, *, account_id: int, household_id: int, opened_at: datetime,
                      to: datetime) -> Decimal:
    """The usage from the account's opening to ``to`` that its live bills (net of what
    they credited back) and its prepaid settlement cycles have not priced (negative when
    they priced more): what a final bill at ``to`` would add up from."""
    measured = (await usage_between(session, household_ids=[household_id], start=opened_at, end=to))[household_id]
    driver = await raw_connection(session)
    return measured - Decimal(await driver.fetchval(_UNBILLED, account_id))


@dataclass(frozen=True, slots=True)
class VoidedBill:
    voided: Bill
    reissued_bill_id: int | None


_BILL_IN_SCOPE = text("""
SELECT b.account_id FROM bills b JOIN households h ON h.id = b.household_id JOIN areas a ON a.id = h.area_id
WHERE b.id = :id AND (CAST(:patterns AS text[]) IS NULL OR a.path LIKE ANY(CAST(:patterns AS text[])))
""")


def _void_reason(reason: str) -> str:
    cleaned = (reason or "").strip()
    if not cleaned:
        raise DomainError("请填写作废原因", "A reason is required", field="reason", code=ErrorCode.REQUIRED)
    if len(cleaned) > MAX_VOID_REASON:
        raise DomainError(f"作废原因不能超过 {MAX_VOID_REASON} 个字符", f"The reason has at most {MAX_VOID_REASON} characters",
                          field="reason", code=ErrorCode.TOO_LONG)
    if "\x00" in cleaned:
        raise DomainError("文本不能包含 NUL 字符", "Text must not contain NUL characters", field="reason",
                          code=ErrorCode.INVALID)
    return cleaned


async def _void(session: AsyncSession, bill: Bill, *, reason: str, by: str, now: datetime) -> Bill:
    """Reverse and mark ``bill`` voided (its account locked by the caller)."""
    assert bill.id is not None
    entries = []
    if bill.entry_id is not None:
        entries.append(EntryIn(account_id=bill.account_id, kind=EntryKind.reversal, amount_fen=bill.amount_fen,
                               ref=f"bill:{bill.id}", idempotency_key=f"bill-void:{bill.id}"))
    # A waived bill's posted-unpaid fee was written off by the waiver (and any fee paid
    # and then reversed since, by the reversal): nothing more to write off.
    unpaid_fee = 0 if bill.late_fee_waived_at is not None else bill.late_fee_posted_fen - bill.late_fee_paid_fen
    if unpaid_fee > 0:
        entries.append(EntryIn(account_id=bill.account_id, kind=EntryKind.write_off, amount_fen=unpaid_fee,
                               ref=f"bill:{bill.id}", idempotency_key=f"bill-void-fee:{bill.id}"))
    if bill.credit_fen > 0:  # a final bill's credit for over-billed volume goes with it
        entries.append(EntryIn(account_id=bill.account_id, kind=EntryKind.reversal, amount_fen=-bill.credit_fen,
                               ref=f"bill:{bill.id}", idempotency_key=f"bill-void-credit:{bill.id}"))
    posted = await post_entries(session, entries, posted_by=by, posted_at=now)
    bill.status = BillStatus.voided
    bill.voided_at, bill.voided_by, bill.void_reason = now, by[:100], reason
    bill.void_entry_id = posted[0].id if posted and bill.entry_id is not None else None
    await session.flush()
    return bill


async def void_bill(session: AsyncSession, *, bill_id: int, reason: str, by: str, now: datetime, reissue: bool = False,
                    tz: str | tzinfo = "Asia/Shanghai", scope_patterns: Sequence[str] | None = None) -> VoidedBill:
    """作废 (and with ``reissue`` 重开) a bill (module docstring). Refusals, nothing written:
    REQUIRED / TOO_LONG (``reason``, at most 200 characters), NOT_FOUND (outside the
    scope), BILL_VOIDED, BILL_PAID, BILL_NOT_LATEST, ACCOUNT_CLOSED (the ledger). The
    caller commits."""
    cleaned = _void_reason(reason)
    account_id = (await session.execute(_BILL_IN_SCOPE, {"id": bill_id, "patterns": patterns_param(scope_patterns)})
                  ).scalar_one_or_none()
    if account_id is None:
        raise NotFound(field="billId")
    await lock_accounts(session, [account_id])  # the account first, as every writer of its money
    await session.execute(text("SELECT id FROM bills WHERE id = :id FOR UPDATE"), {"id": bill_id})
    bill = await session.get(Bill, bill_id, populate_existing=True)
    assert bill is not None
    if bill.status is BillStatus.voided:
        raise BillVoided(field="billId")
    if bill.principal_paid_fen > 0 or bill.late_fee_paid_fen > 0:
        raise BillPaid(field="billId")
    if bill.credit_fen > 0:
        # Its credit for over-billed volume paid the account's other bills: undoing it
        # would leave those bills paid by money that is gone.
        raise BillPaid("该账单的多计水费退还已抵缴其他账单, 不能作废",
                       "This bill's credit for over-billed water has paid other bills; it cannot be voided",
                       field="billId")
    driver = await raw_connection(session)
    if await driver.fetchval("SELECT EXISTS (SELECT FROM bills WHERE account_id = $1 AND period > $2 "
                             "AND status <> 'voided')", account_id, bill.period):
        raise BillNotLatest(field="billId")
    voided = await _void(session, bill, reason=cleaned, by=by, now=now)
    reissued = None
    if reissue:
        zone = as_zone(tz)
        accounts = await _lock(session, [account_id])
        drafts = (await _drafts(session, accounts, period=bill.period, end=bill.period_end, now=now, zone=zone)).drafts
        for draft in drafts:
            draft.reissue_of_id = bill_id
        issued = await _write(session, drafts, period=bill.period, kind=BillKind(bill.kind), run_id=None, by=by,
                              now=now, zone=zone)
        await _emit(session, issued, bill.period)
        reissued = issued[0].bill_id if issued else None
    return VoidedBill(voided, reissued)


# --------------------------------------------------------------------------- the scheduled run


def latest_ended_period(day: date, months: int, first_month: int) -> date:
    """The latest period of the cycle whose end (the first day after it) is on or before ``day``."""
    period = period_of(day, months, first_month)
    while _add_months(period, months) > day:
        period = _add_months(period, -months)
    return period


async def scheduled_run(runtime: Runtime, payload: Mapping[str, Any]) -> list[BillingRunResult]:
    """The daily job ``run_billing`` (module docstring): per cycle in use, the latest
    period ended :data:`SCHEDULE_DELAY_DAYS` ago, when some account of that cycle is not
    billed for it yet; committed per chunk."""
    import logging

    zone = as_zone(runtime.timezone)
    now = runtime.now()
    day = _day(now, zone) - timedelta(days=SCHEDULE_DELAY_DAYS)
    results: list[BillingRunResult] = []
    async with runtime.sessions() as session:
        driver = await raw_connection(session)
        cycles = {(1, 1), *((row["months"], row["first_month"]) for row in await driver.fetch(
            "SELECT DISTINCT months, first_month FROM area_billing_cycles"))}
        for months, first_month in sorted(cycles):
            period = latest_ended_period(day, months, first_month)
            due = [row["id"] for row in await _candidates(session, area_path=None, scope_patterns=None, account_ids=None)
                   if row["months"] == months and is_start_month(period, months, row["first_month"])]
            if not due or not set(due) - await _live_of_period(session, period, due):
                continue
            result = await run_billing(session, period=period, now=now, by=runtime.actor.name, tz=zone, months=months,
                                       commit=session.commit)
            await session.commit()
            logging.getLogger(__name__).info(
                "billing %s (%d months): %d issued, %d held, %d already billed, %d skipped", period, months,
                result.issued, len(result.held), result.already_billed, result.skipped)
            results.append(result)
    return results


