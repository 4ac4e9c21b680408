"""Prepaid settlement (主站预付费结算, DESIGN.md "Contracts": ``settle_prepaid``).

A master-station prepaid account (``prepaid_station``) pays for water as readings arrive.
For every **tier cycle** (the month or the calendar year of its tariff, in the utility's
zone) a settlement prices the account's cycle-to-date usage and charges the difference:

    charge = round(price of the cycle-to-date volume) − what this cycle was charged so far

so rounding never drifts however often it runs, hourly settlements of a month add up to
exactly the month's quote, and running one twice charges nothing the second time.

- **Usage** is ``backend.readings.usage.usage_between`` over the account's household, the
  window ``(start, end]`` from the cycle's start (or the account's opening, if later) to
  the cycle's end or ``as_of``, whichever comes first (docs/periods.md).
- **Price** is the tariff's quote of that volume over the window's days
  (:func:`backend.billing.service.price_period`, prior volume 0: the whole cycle is in the
  window, unless a tariff changed inside it), with the account's household size;
  :func:`period_pricer` computes its total with the period's segments and rules worked
  out once per group of windows. The minimum monthly charge is a bill's
  rule and does not apply to prepaid deductions (docs/billing.md).
- **Cycles touched.** A settlement settles every cycle from the one holding the earliest
  reading that changed (``since``: the ``readings.ingested`` batch's ``first_read_at``) or
  the account's ``settled_to``, whichever is earlier, through the one holding ``as_of``.
- **Late readings.** A debit is a ``charge`` until the cycle has been priced to its end
  (the run that first reaches the end, minutes after midnight, is still on time); a
  difference found after that (a late, backfilled, estimated-then-actual or corrected
  reading) and any credit is an ``adjustment`` referencing the cycle
  (``ref = cycle:<start>``). No old entry changes, and a cycle is never priced to an
  earlier end than it was (a final charge or a transfer dated before the last settlement
  changes nothing already charged).
- **A tariff change** (:func:`backend.billing.accounts.update_account`) settles the
  account under the old tariff first and freezes what the running cycle was charged and
  used (``prepaid_cycles.base_fen`` / ``base_volume_m3``); the new tariff prices only the
  volume after the change, continuing the cycle's tiers from the frozen volume. Cycles
  before a change are not re-priced (a correction there is a hand adjustment). A code
  keeps its tier cycle across versions, and an account only changes to a tariff of the
  same cycle, so cycles never overlap.
- **Which accounts.** Only open ``prepaid_station`` accounts are debited; ``prepaid_card``
  and ``prepaid_meter`` balances live on the card or the meter, so their readings feed
  statistics only. :func:`backend.billing.accounts.final_charge` settles a postpaid
  account the same way.

It is set-based: one lock statement, one usage statement per distinct window (a batch
of accounts opened long ago shares one or two), one read of the cycles, and the ledger's
few statements, for any number of accounts. What a cycle was charged so far lives in
``prepaid_cycles`` beside the entries (its ``charged_fen`` is the sum of the cycle's
entries; ``shuiwu check`` verifies it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.ledger import ALERT_STATES, EntryIn, post_entries
from backend.billing.models import AlertState, BillingMode, EntryKind, Tariff, TariffCycle
from backend.billing.service import FOUR, line_fen, period_segments, split_into_tiers, tariff_versions, version_rates
from backend.db import raw_connection
from backend.readings.partitions import as_zone
from backend.readings.usage import usage_between

if TYPE_CHECKING:
    from backend.events.service import Event
    from backend.runtime import Runtime

__all__ = [
    "PrepaidSettlement", "cycle_of", "midnight", "period_pricer", "settle_accounts", "settle_ingested", "settle_prepaid",
]

_TICK = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class PrepaidSettlement:
    """What one settlement did. ``charged``: accounts that got an entry; ``charged_fen``:
    the fen they were debited net (credits subtracted); ``adjustments``: entries for cycles
    already ended or crediting back; ``alerted`` / ``to_close``: accounts this settlement
    moved into ``alert`` / ``close`` (``to_close`` leaves out vulnerable accounts, whose
    valve is never closed for money)."""

    accounts: int
    charged: int
    charged_fen: int
    adjustments: int
    alerted: tuple[int, ...]
    to_close: tuple[int, ...]


def cycle_of(day: date, cycle: TariffCycle) -> tuple[date, date]:
    """The tier cycle holding ``day``: its first day and the first day after it."""
    if cycle is TariffCycle.year:
        return date(day.year, 1, 1), date(day.year + 1, 1, 1)
    start = day.replace(day=1)
    return start, (start + timedelta(days=32)).replace(day=1)


def midnight(day: date, zone: tzinfo) -> datetime:
    """The instant ``day`` starts in ``zone`` (cycles, months and day ranges begin there)."""
    return datetime.combine(day, time(), tzinfo=zone)


def _day(instant: datetime, zone: tzinfo) -> date:
    return instant.astimezone(zone).date()


_LOCK = """
SELECT id, household_id, tariff_code, persons, opened_at, settled_to, tariff_since, alert_state, vulnerable
FROM accounts
WHERE id = ANY($1::bigint[]) AND status = 'open' AND mode = ANY($2::text[])
ORDER BY id FOR UPDATE
"""
_CYCLES = """
SELECT c.account_id, c.cycle_start, c.charged_fen, c.entries, c.settled_to, c.base_fen, c.base_volume_m3
FROM prepaid_cycles c JOIN unnest($1::bigint[], $2::date[]) AS k(account_id, cycle_start)
    ON c.account_id = k.account_id AND c.cycle_start = k.cycle_start
"""
_SAVE_CYCLES = """
INSERT INTO prepaid_cycles (account_id, cycle_start, cycle_end, volume_m3, charged_fen, settled_to, entries,
                            base_fen, base_volume_m3)
SELECT * FROM unnest($1::bigint[], $2::date[], $3::date[], $4::numeric[], $5::bigint[], $6::timestamptz[], $7::int[],
                     $8::bigint[], $9::numeric[])
ON CONFLICT (account_id, cycle_start) DO UPDATE
SET volume_m3 = excluded.volume_m3, charged_fen = excluded.charged_fen, settled_to = excluded.settled_to,
    entries = excluded.entries
"""
_SETTLED_TO = """
UPDATE accounts SET settled_to = greatest(coalesce(settled_to, $2), $2) WHERE id = ANY($1::bigint[])
"""
_STATES = "SELECT id, alert_state, vulnerable FROM accounts WHERE id = ANY($1::bigint[])"


@dataclass(slots=True)
class _Window:
    account_id: int
    household_id: int
    tariff_code: str
    persons: int | None
    cycle_start: date
    cycle_end: date
    start: datetime
    end: datetime
    cycle_end_at: datetime  # the instant the cycle ends


def period_pricer(versions: list[Tariff], *, persons: int | None, start: date,
                  end: date) -> Callable[[Decimal, Decimal], int]:
    """The total in fen of ``price_period(versions, volume=v, prior=p, persons=persons,
    start=start, end=end, minimum=False)`` as a function of ``(v, p)``: the same segments,
    proration, tiers and per-line rounding, with the period's segments and each version's
    rules worked out once for a batch's whole group of windows sharing them (a 100k-account
    batch has one or two), instead of once per account; equal volumes are priced once."""
    segments = period_segments(versions, start=start, end=end)
    total_days = sum(days for _, days in segments)
    rated = [(version_rates(version, persons), days) for version, days in segments]
    last = len(rated) - 1
    priced: dict[tuple[Decimal, Decimal], int] = {}

    def total(volume: Decimal, prior: Decimal) -> int:
        fen = priced.get((volume, prior))
        if fen is not None:
            return fen
        fen = 0
        used = prior
        left = volume
        for index, (rates, days) in enumerate(rated):
            part = left if index == last else (volume * days / total_days).quantize(FOUR, ROUND_HALF_UP)
            parts = split_into_tiers(rates.limits, prior=used, volume=part)
            for _, sewage, prices in rates.components:
                for tier, m3 in parts:
                    fen += line_fen((m3 * rates.coefficient).quantize(FOUR, rounding=ROUND_HALF_UP) if sewage else m3,
                                    prices[tier - 1])
            used += part
            left -= part
        priced[(volume, prior)] = fen
        return fen

    return total


async def settle_accounts(
    session: AsyncSession,
    *,
    account_ids: Sequence[int],
    as_of: datetime,
    since: datetime | None = None,
    modes: Sequence[BillingMode] = (BillingMode.prepaid_station,),
    tz: str | tzinfo = "Asia/Shanghai",
    posted_by: str = "系统结算",
    posted_at: datetime | None = None,
) -> PrepaidSettlement:
    """Settle the open accounts of ``modes`` among ``account_ids`` to ``as_of`` (module
    docstring): :func:`settle_prepaid` for master-station prepaid accounts,
    :func:`backend.billing.accounts.final_charge` for any chargeable one. ``posted_at``
    backdates the entries (the demo's history; None: the transaction's time)."""
    if as_of.tzinfo is None or (since is not None and since.tzinfo is None):
        raise ValueError("as_of and since must be timezone-aware")
    zone = as_zone(tz)
    driver = await raw_connection(session)
    rows = await driver.fetch(_LOCK, sorted(set(account_ids)), [BillingMode(m).value for m in modes])
    if not rows:
        return PrepaidSettlement(0, 0, 0, 0, (), ())
    versions: dict[str, list[Tariff]] = {}
    for code in sorted({row["tariff_code"] for row in rows}):
        versions[code] = await tariff_versions(session, code=code)
    as_of_day = _day(as_of - _TICK, zone)

    # An account's windows depend on its tariff, the instant its pricing begins and where
    # it was settled to: a batch of accounts shares a few such keys, worked out once each.
    spans: dict[tuple[str, datetime, datetime], list[tuple[date, date, datetime, datetime, datetime]]] = {}
    first_version_at = {code: midnight(tariff[0].valid_from, zone) for code, tariff in versions.items() if tariff}
    windows: list[_Window] = []
    for row in rows:
        code = row["tariff_code"]
        first_at = first_version_at.get(code)
        if first_at is None:
            continue  # a tariff code without versions cannot be priced; opening refuses it
        begin = max(row["opened_at"], row["tariff_since"] or row["opened_at"], first_at)
        start_from = row["settled_to"] or begin
        key = (code, begin, start_from)
        spans_of = spans.get(key)
        if spans_of is None:
            spans_of = spans[key] = []
            first_day = _day(start_from, zone)
            if since is not None:
                first_day = min(first_day, _day(since - _TICK, zone))
            first_day = max(first_day, _day(begin, zone))
            cycle = TariffCycle(versions[code][-1].rules["cycle"])  # a code keeps its cycle (save_tariff)
            cycle_start, cycle_end = cycle_of(first_day, cycle)
            while cycle_start <= as_of_day:
                start = max(midnight(cycle_start, zone), begin)
                end_at = midnight(cycle_end, zone)
                end = min(end_at, as_of)
                if end > start:
                    spans_of.append((cycle_start, cycle_end, start, end, end_at))
                cycle_start, cycle_end = cycle_of(cycle_end, cycle)
        for cycle_start, cycle_end, start, end, end_at in spans_of:
            windows.append(_Window(row["id"], row["household_id"], code, row["persons"], cycle_start, cycle_end,
                                   start, end, end_at))

    stored = {(r["account_id"], r["cycle_start"]): r for r in await driver.fetch(
        _CYCLES, [w.account_id for w in windows], [w.cycle_start for w in windows])}
    for window in windows:
        row = stored.get((window.account_id, window.cycle_start))
        if row is not None and row["settled_to"] > window.end:
            # Never price a cycle to an earlier end than it was priced to (a final charge or
            # a transfer dated before the last settlement): that would credit usage back.
            window.end = row["settled_to"]

    usage: dict[tuple[datetime, datetime], dict[int, Decimal]] = {}
    by_span: dict[tuple[datetime, datetime], list[int]] = defaultdict(list)
    for window in windows:
        by_span[(window.start, window.end)].append(window.household_id)
    for (start, end), household_ids in by_span.items():
        usage[(start, end)] = await usage_between(session, household_ids=household_ids, start=start, end=end)

    entries: list[EntryIn] = []
    saved: list[tuple[Any, ...]] = []
    adjustments = 0
    days: dict[tuple[datetime, datetime], tuple[date, date]] = {}
    pricers: dict[tuple[str, int | None, date, date], Callable[[Decimal, Decimal], int]] = {}
    for window in windows:
        row = stored.get((window.account_id, window.cycle_start))
        charged, count = (row["charged_fen"], row["entries"]) if row is not None else (0, 0)
        base_fen, base_volume = (row["base_fen"], row["base_volume_m3"]) if row is not None else (0, Decimal(0))
        volume = usage[(window.start, window.end)][window.household_id]
        span = days.get((window.start, window.end))
        if span is None:
            span = days[(window.start, window.end)] = (_day(window.start, zone), _day(window.end - _TICK, zone))
        group = (window.tariff_code, window.persons, *span)
        pricer = pricers.get(group)
        if pricer is None:
            pricer = pricers[group] = period_pricer(versions[window.tariff_code], persons=window.persons,
                                                    start=span[0], end=span[1])
        total = base_fen + pricer(volume, base_volume)
        difference = total - charged
        if difference != 0:
            count += 1
            # Late: the cycle had already been priced to its end (a late, backfilled or
            # corrected reading); the run that first reaches the end is on time.
            late = row is not None and row["settled_to"] >= window.cycle_end_at
            kind = EntryKind.charge if difference > 0 and not late else EntryKind.adjustment
            adjustments += kind is EntryKind.adjustment
            entries.append(EntryIn(
                account_id=window.account_id, kind=kind, amount_fen=-difference,
                idempotency_key=f"prepaid:{window.account_id}:{window.cycle_start.isoformat()}:{count}",
                ref=f"cycle:{window.cycle_start.isoformat()}", cycle_start=window.cycle_start,
                volume_m3=base_volume + volume,
            ))
        saved.append((window.account_id, window.cycle_start, window.cycle_end, base_volume + volume, total, window.end,
                      count, base_fen, base_volume))

    before = {row["id"]: ALERT_STATES[row["alert_state"]] for row in rows}
    await post_entries(session, entries, posted_by=posted_by, posted_at=posted_at)
    if saved:
        await driver.execute(_SAVE_CYCLES, *(list(column) for column in zip(*saved, strict=True)))
    await driver.execute(_SETTLED_TO, [row["id"] for row in rows], as_of)
    alerted: list[int] = []
    to_close: list[int] = []
    charged_ids = sorted({entry.account_id for entry in entries})
    if charged_ids:
        for state_row in await driver.fetch(_STATES, charged_ids):
            state, old = ALERT_STATES[state_row["alert_state"]], before[state_row["id"]]
            if state is old:
                continue
            if state is AlertState.alert:
                alerted.append(state_row["id"])
            elif state is AlertState.close and not state_row["vulnerable"]:
                to_close.append(state_row["id"])
    return PrepaidSettlement(
        accounts=len(rows), charged=len(charged_ids), charged_fen=-sum(e.amount_fen for e in entries),
        adjustments=adjustments, alerted=tuple(alerted), to_close=tuple(to_close),
    )


async def settle_prepaid(
    session: AsyncSession,
    *,
    account_ids: Sequence[int],
    as_of: datetime,
    since: datetime | None = None,
    tz: str | tzinfo = "Asia/Shanghai",
    posted_at: datetime | None = None,
) -> PrepaidSettlement:
    """Settle the master-station prepaid accounts among ``account_ids`` to ``as_of``
    (DESIGN.md's signature; the module docstring says how). Accounts of other modes,
    closed ones and unknown ids are passed over. The caller commits."""
    return await settle_accounts(session, account_ids=account_ids, as_of=as_of, since=since, tz=tz,
                                 posted_at=posted_at)


# The open master-station accounts of the households the batch's meters served while the
# batch's readings were taken (a replaced meter's late readings still reach its household).
_ACCOUNTS_OF_METERS = """
SELECT DISTINCT a.id
FROM meter_assignments ma JOIN accounts a ON a.household_id = ma.household_id
WHERE ma.meter_id = ANY($1::bigint[]) AND a.status = 'open' AND a.mode = 'prepaid_station'
  AND ma.valid_from <= $3 AND (ma.valid_to IS NULL OR ma.valid_to >= $2)
"""


async def settle_ingested(runtime: Runtime, session: AsyncSession, event: Event) -> None:
    """The handler of ``readings.ingested`` (``billing.settle``): settle the batch's
    accounts to now, from the cycle holding the batch's earliest reading."""
    from backend.events.service import payload_of
    from backend.readings.events import ReadingsIngested

    batch = payload_of(event, ReadingsIngested)
    driver = await raw_connection(session)
    rows: list[Any] = await driver.fetch(_ACCOUNTS_OF_METERS, list(batch.meter_ids), batch.first_read_at,
                                         batch.last_read_at)
    if rows:
        await settle_prepaid(session, account_ids=[row["id"] for row in rows], as_of=runtime.now(),
                             since=batch.first_read_at, tz=runtime.timezone)
