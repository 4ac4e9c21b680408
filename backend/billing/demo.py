"""Billing's demo step (backend.billing.domain): the example tariffs, an account for every
demo household and 13 months of master-station prepaid history, settled through the
same code the ``readings.ingested`` handler runs.

**Tariffs.** Every file of ``tariffs/examples/`` is saved through
:func:`backend.billing.service.save_tariff` (identical content again: unchanged). The demo
prices residential households with ``SH-RES`` (annual tiers, a household-size rule),
non-residential ones with ``HZ-NR`` (a flat monthly price, sewage on 90 % of the volume)
and special trades with ``HZ-SP``.

**Accounts** open at the first instant of the readings' 13 months
(:func:`backend.readings.demo.window_start`), so no usage is priced before an account
existed. Each household's terms follow from a hash of the seed and its id: residential
households are 55 % master-station prepaid (主站预付费), 15 % IC-card prepaid, 10 % meter
prepaid and 20 % postpaid; businesses 40 % master-station prepaid and 60 % postpaid.
About 1.5 % of residential households are ``vulnerable`` (低保 / 医疗: never closed for
money; at least one of them master-station prepaid), and most households of five or six
have their registered persons (户籍人数) set, which grows their tiers. Residential
thresholds are the defaults (alert ¥20, close ¥0); a business is alerted at ¥100. Only
households without an open account are opened (one ``INSERT … SELECT``, as
:func:`backend.billing.accounts.open_accounts` does, but with terms per household).

**History.** The master-station prepaid accounts are settled month by month with
:func:`backend.billing.settlement.settle_prepaid` (``as_of`` the month's end, ``posted_at``
the second before it; then the current month to ``now``), one call per month for all of them, so the
charges, the cycle rows and the threshold crossings are exactly what the handler would
have written had it run every month. Between settlements the residents recharge through
:func:`backend.billing.ledger.post_entries` (kind ``recharge``, idempotency key
``demo:recharge:<account>:<n>``, backdated into the month; one call per day that has
recharges). The behaviour, deterministic from the seed:

- at opening, and whenever the balance left after the month's expected use (last month's
  rate) would fall below the alert threshold plus a personal margin (¥10–¥50), a resident
  tops up a habitual ¥100, ¥200 or ¥300 (a business ¥500–¥2,000), more if that would not
  last the month, on the day the balance would reach that margin, at the time of day the
  demo gives that day (08:00–20:59);
- a few residents (1 % of the master-station accounts, at least three) stopped topping up
  in time and stand in ``alert`` at ``now`` (¥5–¥15 with the default thresholds), and two
  (one vulnerable) ran out and stand in ``close`` (−¥15 to −¥5). Their last top-up is the
  amount that brings them there, found by a dry run: the months are settled once in a
  savepoint that is rolled back, which gives every account's exact monthly charges.

**Events.** The ``readings.ingested`` events this transaction emitted are recorded as
handled by ``billing.settle`` (``handled_events``, as ``backend.events.running`` does):
they are settled through the same code to ``now``; the handler's replay would find
nothing to charge. The ``account.threshold_crossed`` events the history emitted are
history too: each gets the instant of the posting that crossed (its entries'
``posted_at``) as ``created_at`` and ``relayed_at``, as if the relay had handed them off
then. So ``demo run``'s relay never hands 13 months of alerts to a handler, and ``events
replay`` with a handler's horizon (DESIGN.md "Events") skips them as old; a handler that
keeps history in the database can still replay them with ``--since``.

**Again.** Loading again with the same ``now`` writes nothing (every account is settled
to ``now``; opening skips households with an open account); a later ``now`` continues
each account from where it was settled.

**Postpaid.** After the prepaid history, :mod:`backend.billing.demo_bills` bills the
postpaid accounts month by month through the real billing run (backdated to the 3rd,
02:30), lets their residents pay (through the ledger and ``allocate_credit``, with this
module's channels and counter times) and posts the month-end late fees.
"""

from __future__ import annotations

import math
import tomllib
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.accounts import DEFAULT_ALERT_FEN, DEFAULT_CLOSE_FEN
from backend.billing.ledger import EntryIn, opening_state, post_entries
from backend.billing.models import BillingMode, EntryKind
from backend.billing.service import save_tariff
from backend.billing.settlement import settle_prepaid
from backend.db import raw_connection
from backend.readings.demo import window_start
from backend.readings.partitions import as_zone

if TYPE_CHECKING:
    from backend.domain import DemoPlan

TARIFF_DIR = Path(__file__).resolve().parents[2] / "tariffs" / "examples"
TARIFF_BY_CUSTOMER = {"residential": "SH-RES", "non_residential": "HZ-NR", "special": "HZ-SP"}
DEMO_ACCOUNT_PREFIX = "01"  # the archives demo's household numbers
OPENED_BY = "示范数据"
RECHARGE_KEY = "demo:recharge:{account}:{n}"

# (mode, share in %) by customer kind.
_RESIDENTIAL_MIX = ((BillingMode.prepaid_station, 55), (BillingMode.prepaid_card, 15),
                    (BillingMode.prepaid_meter, 10), (BillingMode.postpaid, 20))
_BUSINESS_MIX = ((BillingMode.prepaid_station, 40), (BillingMode.postpaid, 60))
_VULNERABLE_PER_MILLE = 15
_BUSINESS_ALERT_FEN = 10_000
# Habitual top-ups (fen) and the margin above the alert threshold a resident acts at.
_RESIDENT_TOP_UPS = (10_000, 10_000, 20_000, 20_000, 20_000, 30_000)
_BUSINESS_TOP_UPS = (50_000, 100_000, 200_000)
_RESIDENT_MARGINS = (1_000, 2_000, 3_000, 5_000)
_BUSINESS_MARGINS = (5_000, 10_000)
_CHANNELS = ("营业厅现金", "支付宝", "微信支付", "银行代扣")
ALERT_SHARE, ALERT_MINIMUM = 0.01, 3
# Where the planted accounts stand at ``now``: the top of a ¥10 band under a threshold.
_BAND_BELOW_FEN = 500
_BAND_WIDTH_FEN = 1_000


def _hash(seed: int, *parts: object) -> int:
    return zlib.crc32(":".join(str(p) for p in (seed, *parts)).encode())


def _pick(mix: Sequence[tuple[BillingMode, int]], roll: int) -> BillingMode:
    for mode, share in mix:
        if roll < share:
            return mode
        roll -= share
    return mix[-1][0]


# --------------------------------------------------------------------------- tariffs


async def load_example_tariffs(session: AsyncSession) -> dict[str, bool]:
    """Save every ``tariffs/examples/*.toml``; returns code -> whether it was new."""
    saved = {}
    for path in sorted(TARIFF_DIR.glob("*.toml")):
        result = await save_tariff(session, raw=tomllib.loads(path.read_text(encoding="utf-8")))
        saved[result.tariff.code] = not result.unchanged
    return saved


# --------------------------------------------------------------------------- accounts

_UNOPENED = """
SELECT h.id, h.customer_type, h.population FROM households h
WHERE h.account_no LIKE $1 AND h.status <> 'closed'
  AND NOT EXISTS (SELECT FROM accounts a WHERE a.household_id = h.id AND a.status = 'open')
ORDER BY h.id
"""

_OPEN = """
INSERT INTO accounts (household_id, mode, tariff_code, persons, balance_fen, alert_threshold_fen,
                      close_threshold_fen, grace_fen, vulnerable, status, alert_state, opened_at, opened_by)
SELECT o.household_id, o.mode, o.tariff_code, o.persons, 0, o.alert, o.close, 0, o.vulnerable, 'open', o.state, $9, $10
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::bigint[], $6::bigint[], $7::bool[], $8::text[])
     AS o(household_id, mode, tariff_code, persons, alert, close, vulnerable, state)
ORDER BY o.household_id
ON CONFLICT (household_id) WHERE status = 'open' DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class _Terms:
    household_id: int
    mode: BillingMode
    tariff_code: str
    persons: int | None
    alert_fen: int
    close_fen: int
    vulnerable: bool


def account_terms(seed: int, households: Sequence[tuple[int, str, int | None]]) -> list[_Terms]:
    """The demo's terms for ``(household id, customer type, population)`` rows (module
    docstring): a pure function of the seed and the ids."""
    terms = []
    for household_id, customer_type, population in households:
        roll = _hash(seed, "billing", household_id)
        residential = customer_type == "residential"
        mode = _pick(_RESIDENTIAL_MIX if residential else _BUSINESS_MIX, roll % 100)
        vulnerable = residential and (roll // 100) % 1000 < _VULNERABLE_PER_MILLE
        persons = population if residential and population is not None and population >= 5 and (roll // 100_000) % 10 < 7 \
            else None
        terms.append(_Terms(household_id, mode, TARIFF_BY_CUSTOMER.get(customer_type, TARIFF_BY_CUSTOMER["residential"]),
                            persons, DEFAULT_ALERT_FEN if residential else _BUSINESS_ALERT_FEN, DEFAULT_CLOSE_FEN,
                            vulnerable))
    station = [t for t in terms if t.mode is BillingMode.prepaid_station and t.tariff_code == TARIFF_BY_CUSTOMER["residential"]]
    if station and not any(t.vulnerable for t in station):
        # A vulnerable master-station household shows that money never closes its valve.
        first = min(station, key=lambda t: _hash(seed, "vulnerable", t.household_id))
        terms[terms.index(first)] = _Terms(first.household_id, first.mode, first.tariff_code, first.persons,
                                           first.alert_fen, first.close_fen, True)
    return terms


async def open_demo_accounts(session: AsyncSession, *, seed: int, opened_at: datetime) -> int:
    """Open an account for every demo household without an open account (closed ones
    aside); returns how many were opened."""
    driver = await raw_connection(session)
    rows = await driver.fetch(_UNOPENED, DEMO_ACCOUNT_PREFIX + "%")
    if not rows:
        return 0
    # Whether the demo's households all open with the whole set: decided in one pass so the
    # vulnerable fallback sees every household of this run.
    terms = account_terms(seed, [(row["id"], row["customer_type"], row["population"]) for row in rows])
    states = [opening_state(t.mode, alert_threshold_fen=t.alert_fen, close_threshold_fen=t.close_fen, grace_fen=0).value
              for t in terms]
    status = await driver.execute(
        _OPEN, [t.household_id for t in terms], [t.mode.value for t in terms], [t.tariff_code for t in terms],
        [t.persons for t in terms], [t.alert_fen for t in terms], [t.close_fen for t in terms],
        [t.vulnerable for t in terms], states, opened_at, OPENED_BY,
    )
    return int(status.split()[-1])


# --------------------------------------------------------------------------- history

_STATION = """
SELECT a.id, a.household_id, a.balance_fen, a.alert_threshold_fen, a.close_threshold_fen, a.grace_fen, a.vulnerable,
       a.tariff_code, coalesce(a.settled_to, a.opened_at) AS start,
       (SELECT count(*) FROM ledger_entries e WHERE e.account_id = a.id AND e.kind = 'recharge'
          AND e.idempotency_key LIKE 'demo:recharge:%') AS recharges
FROM accounts a JOIN households h ON h.id = a.household_id
WHERE a.status = 'open' AND a.mode = 'prepaid_station' AND h.account_no LIKE $1
  AND coalesce(a.settled_to, a.opened_at) < $2
ORDER BY a.id
"""
# Each account's charges and adjustments posted at a settlement's instant after its start.
_CHARGES = """
SELECT e.account_id, e.posted_at, (-sum(e.amount_fen))::bigint AS charged
FROM ledger_entries e JOIN unnest($1::bigint[], $2::timestamptz[]) AS a(id, start) ON a.id = e.account_id
WHERE e.kind IN ('charge', 'adjustment') AND e.posted_at > a.start AND e.posted_at = ANY($3::timestamptz[])
GROUP BY e.account_id, e.posted_at
"""
_WATERMARK = "SELECT coalesce(max(id), 0) FROM domain_events"
_BACKDATE_CROSSINGS = """
WITH moved AS (
    UPDATE domain_events SET created_at = $2, relayed_at = $2
    WHERE id > $1 AND kind = 'account.threshold_crossed' RETURNING id
)
SELECT coalesce(max(id), $1) FROM moved
"""
_SETTLED_BY_DEMO = """
INSERT INTO handled_events (event_id, handler, handled_at)
SELECT id, $1, now() FROM domain_events WHERE kind = 'readings.ingested' AND created_at = now()
ON CONFLICT DO NOTHING
"""
SETTLE_HANDLER = "billing.settle"


@dataclass(slots=True)
class _Resident:
    """A master-station account as the history plans it: its habit, and as the months
    go, its balance, last month's rate of charge and its top-ups by month index."""

    id: int
    household_id: int
    balance_fen: int
    alert_fen: int
    close_fen: int  # the close threshold minus the grace amount
    vulnerable: bool
    residential: bool
    start: datetime
    recharges: int
    top_up_fen: int = 0
    act_at_fen: int = 0
    rate: float = 0.0  # fen a second, last month's
    top_ups: dict[int, tuple[datetime, int]] = field(default_factory=dict)
    planned: bool = False  # top-ups fixed in advance (a planted account), not decided month by month


def months_between(start: datetime, now: datetime, zone: tzinfo) -> list[tuple[datetime, datetime]]:
    """``(start, end]`` of each calendar month (in ``zone``) from ``start`` to ``now``: the
    first from ``start``, the last ending at ``now``."""
    months = []
    begin = start
    while begin < now:
        end = min(_month_end(begin, zone), now)
        months.append((begin, end))
        begin = end
    return months


def _month_end(instant: datetime, zone: tzinfo) -> datetime:
    first = instant.astimezone(zone).date().replace(day=1)
    return datetime.combine((first + timedelta(days=32)).replace(day=1), time(), tzinfo=zone)


def _counter_time(seed: int, day: date, zone: tzinfo) -> datetime:
    """The instant the demo's recharges of ``day`` are posted at (08:00–20:59): one per
    day, so a month's recharges are a post_entries call per day."""
    minute = _hash(seed, "recharge-time", day.isoformat()) % (13 * 60)
    return datetime.combine(day, time(8 + minute // 60, minute % 60), tzinfo=zone)


def _decide(resident: _Resident, index: int, month: tuple[datetime, datetime], *, seed: int, zone: tzinfo) -> None:
    """The resident's top-up in month ``index`` (module docstring), if any, from what the
    resident knows at the month's start: the balance and last month's rate."""
    begin, end = max(month[0], resident.start), month[1]
    if begin >= end:
        return
    month_end = _month_end(begin, zone)
    expected = resident.rate * (month_end - begin).total_seconds()
    if resident.balance_fen - expected >= resident.act_at_fen:
        return
    share = 0.0 if expected <= 0 else min(0.9, max(0.0, (resident.balance_fen - resident.act_at_fen) / expected))
    day = (begin + (month_end - begin) * share).astimezone(zone).date()
    instant = _counter_time(seed, day, zone)
    if instant <= begin:
        instant = _counter_time(seed, day + timedelta(days=1), zone)
    fen = resident.top_up_fen
    while resident.balance_fen + fen - expected < resident.act_at_fen and fen < 20 * resident.top_up_fen:
        fen += resident.top_up_fen
    if instant < end:  # otherwise still to come at ``now``
        resident.top_ups[index] = (instant, fen)


def _charged(resident: _Resident, index: int, month: tuple[datetime, datetime], fen: int) -> None:
    """Month ``index`` is settled: its top-up and its charge ``fen`` move the balance."""
    resident.balance_fen += resident.top_ups[index][1] if index in resident.top_ups else 0
    resident.balance_fen -= fen
    begin = max(month[0], resident.start)
    if fen > 0 and month[1] > begin:
        resident.rate = fen / (month[1] - begin).total_seconds()


def _land_below(resident: _Resident, final: int, ceiling: int) -> bool:
    """Make the resident (whose top-ups leave ``final`` at ``now``) stop topping up in
    time to stand in ``(ceiling − ¥10, ceiling]`` at ``now``: from the latest month after
    which the balance falls under ``ceiling`` without top-ups, that month's top-up shrinks
    to what lands there and later ones go. False when no month can."""
    if final <= ceiling:
        return True
    for index in sorted(resident.top_ups, reverse=True):
        instant, fen = resident.top_ups[index]
        if final - fen <= ceiling:
            cut = math.ceil((final - ceiling) / _BAND_WIDTH_FEN) * _BAND_WIDTH_FEN
            for later in [i for i in resident.top_ups if i > index]:
                del resident.top_ups[later]
            if fen > cut:
                resident.top_ups[index] = (instant, fen - cut)
            else:
                del resident.top_ups[index]
            return True
        final -= fen
    return False


def _posting(end: datetime) -> datetime:
    """When a settlement to ``end`` is posted: the second before it, so a month's charges
    fall in that month's statement (which groups entries by when they were posted), as the
    live handler's do when it settles the month's last readings within the month."""
    return end - timedelta(seconds=1)


async def _monthly_charges(session: AsyncSession, residents: Sequence[_Resident],
                           ends: Sequence[datetime]) -> dict[tuple[int, datetime], int]:
    """(account, settlement instant) -> fen charged net, for settlements to ``ends``."""
    driver = await raw_connection(session)
    rows = await driver.fetch(_CHARGES, [r.id for r in residents], [r.start for r in residents],
                              [_posting(end) for end in ends])
    return {(row["account_id"], row["posted_at"] + timedelta(seconds=1)): row["charged"] for row in rows}


async def _plant(session: AsyncSession, residents: list[_Resident], months: list[tuple[datetime, datetime]], *,
                 seed: int, zone: tzinfo) -> tuple[list[int], list[int]]:
    """Choose and place the accounts that stand near the thresholds at ``now`` (module
    docstring); returns the ids planted in alert and in close. Their whole history is
    planned in advance from their exact monthly charges, found by settling the months for
    them alone in a savepoint that is rolled back (settlement prices readings, not
    balances, so top-ups would change nothing)."""
    wanted = max(ALERT_MINIMUM, round(ALERT_SHARE * len(residents)))
    ranked = sorted((r for r in residents if r.residential), key=lambda r: (_hash(seed, "plant", r.household_id), r.id))
    candidates = [r for r in ranked if r.vulnerable][:3] + [r for r in ranked if not r.vulnerable][:3 * wanted + 3]
    if not candidates:
        return [], []
    ends = [end for _, end in months]
    async with session.begin_nested() as savepoint:
        for _, end in months:
            await settle_prepaid(session, account_ids=[r.id for r in candidates if r.start < end], as_of=end, tz=zone,
                                 posted_at=_posting(end))
        charges = await _monthly_charges(session, candidates, ends)
        await savepoint.rollback()
    finals: dict[int, int] = {}
    for resident in candidates:
        opening = resident.balance_fen
        for index, month in enumerate(months):
            _decide(resident, index, month, seed=seed, zone=zone)
            _charged(resident, index, month, charges.get((resident.id, month[1]), 0))
        finals[resident.id], resident.balance_fen, resident.rate = resident.balance_fen, opening, 0.0
        resident.planned = True
    closing: list[int] = []
    for want_vulnerable in (True, False):
        found = next((r for r in candidates if r.vulnerable is want_vulnerable and r.top_ups
                      and _land_below(r, finals[r.id], r.close_fen - _BAND_BELOW_FEN)), None)
        if found is not None:
            closing.append(found.id)
    alerting: list[int] = []
    for resident in candidates:
        if len(alerting) >= wanted:
            break
        if resident.id not in closing and not resident.vulnerable and resident.top_ups and _land_below(
                resident, finals[resident.id], resident.alert_fen - _BAND_BELOW_FEN):
            alerting.append(resident.id)
    return alerting, closing


@dataclass(frozen=True, slots=True)
class DemoHistory:
    """What the history of one run wrote."""

    accounts: int
    months: int
    recharges: int
    alert: tuple[int, ...]
    close: tuple[int, ...]


async def settle_demo_history(session: AsyncSession, *, seed: int, now: datetime, tz: str | tzinfo,
                              progress: Callable[[str], None] = lambda _: None) -> DemoHistory:
    """Plan and post the master-station accounts' recharges and monthly settlements up to
    ``now`` (module docstring). The caller commits."""
    zone = as_zone(tz)
    driver = await raw_connection(session)
    rows = await driver.fetch(_STATION, DEMO_ACCOUNT_PREFIX + "%", now)
    if not rows:
        return DemoHistory(0, 0, 0, (), ())
    residents = []
    for row in rows:
        residential = row["tariff_code"] == TARIFF_BY_CUSTOMER["residential"]
        habit = _hash(seed, "habit", row["household_id"])
        top_ups, margins = (_RESIDENT_TOP_UPS, _RESIDENT_MARGINS) if residential else (_BUSINESS_TOP_UPS,
                                                                                      _BUSINESS_MARGINS)
        residents.append(_Resident(
            id=row["id"], household_id=row["household_id"], balance_fen=row["balance_fen"],
            alert_fen=row["alert_threshold_fen"], close_fen=row["close_threshold_fen"] - row["grace_fen"],
            vulnerable=row["vulnerable"], residential=residential, start=row["start"], recharges=row["recharges"],
            top_up_fen=top_ups[habit % len(top_ups)],
            act_at_fen=row["alert_threshold_fen"] + margins[(habit // 7) % len(margins)],
        ))
    months = months_between(min(r.start for r in residents), now, zone)
    # The readings were just bulk-loaded in this transaction: without statistics the
    # usage walk of each settlement took a plan ~1.6x slower (22 s of history instead of 14).
    await driver.execute("ANALYZE readings, daily_usage, meter_assignments, accounts")
    alert, close = await _plant(session, residents, months, seed=seed, zone=zone)

    watermark = await driver.fetchval(_WATERMARK)
    recharges = 0
    for index, month in enumerate(months):
        end = month[1]
        by_instant: dict[datetime, list[EntryIn]] = defaultdict(list)
        for resident in residents:
            if not resident.planned:
                _decide(resident, index, month, seed=seed, zone=zone)
            top_up = resident.top_ups.get(index)
            if top_up is not None:
                resident.recharges += 1
                channel = _CHANNELS[_hash(seed, "channel", resident.id, resident.recharges) % len(_CHANNELS)]
                by_instant[top_up[0]].append(EntryIn(
                    account_id=resident.id, kind=EntryKind.recharge, amount_fen=top_up[1],
                    idempotency_key=RECHARGE_KEY.format(account=resident.id, n=resident.recharges),
                    ref="demo:recharge", note=f"充值 ({channel})",
                ))
        for instant in sorted(by_instant):
            await post_entries(session, by_instant[instant], posted_by=OPENED_BY, posted_at=instant)
            watermark = await driver.fetchval(_BACKDATE_CROSSINGS, watermark, instant)
            recharges += len(by_instant[instant])
        settling = [r for r in residents if r.start < end]
        await settle_prepaid(session, account_ids=[r.id for r in settling], as_of=end, tz=zone, posted_at=_posting(end))
        watermark = await driver.fetchval(_BACKDATE_CROSSINGS, watermark, _posting(end))
        charges = await _monthly_charges(session, settling, [end])
        for resident in settling:
            _charged(resident, index, month, charges.get((resident.id, end), 0))
        progress(f"预付费账户: 结算至 {end.astimezone(zone):%Y-%m-%d %H:%M}")
    await driver.execute(_SETTLED_BY_DEMO, SETTLE_HANDLER)
    return DemoHistory(len(residents), len(months), recharges, tuple(alert), tuple(close))


async def demo_step(session: AsyncSession, plan: DemoPlan) -> None:
    """Billing's demo step (module docstring): tariffs, accounts from the readings' first
    day, and with the readings, the master-station prepaid history and the postpaid
    bills and payments (backend.billing.demo_bills) up to ``plan.now``."""
    plan.progress("水价")
    await load_example_tariffs(session)
    zone = as_zone(plan.timezone)
    plan.progress("开户")
    await open_demo_accounts(session, seed=plan.seed, opened_at=window_start(plan.now, zone))
    if plan.readings:
        await settle_demo_history(session, seed=plan.seed, now=plan.now, tz=zone, progress=plan.progress)
        # The postpaid accounts' bills and payments (backend.billing.demo_bills, which
        # uses this module's habits: imported here).
        from backend.billing.demo_bills import bill_demo_history

        await bill_demo_history(session, seed=plan.seed, now=plan.now, zone=zone, by=plan.actor.name,
                                progress=plan.progress)
