"""The postpaid billing run (出账, issue 17 item 3): the hand-worked example (annual tiers
carried across monthly bills, a late reading landing in the next bill), holding a flagged
meter until review, re-running, unended and misaligned periods, a bimonthly area, void
and re-issue with their refusals, the final bill at closing, and a run beside concurrent
payments."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.alarms.models import Alarm, AlarmKind, AlarmStatus, AlarmSubjectKind
from backend.archives.models import AreaKind
from backend.archives.service import assign_meter, create_area, create_household
from backend.billing import bills, review
from backend.billing import service as tariffs
from backend.billing.accounts import AccountTerms, close_settled_account, final_charge, open_account
from backend.billing.bills_models import Bill
from backend.billing.checks import _DISAGREEING
from backend.billing.ledger import EntryIn, post_entries, post_entry
from backend.billing.models import BillingMode, EntryKind
from backend.db import create_engine, session_factory
from backend.errors import DomainError, ErrorCode
from tests.billing.factories import SHANGHAI, Served, at, entries, ingest, tariff
from tests.factories import unique
from tests.readings.factories import make_meter

# The hand-worked tariff: annual tiers 0–180 / 180–260 / >260 m³, water and sewage.
ANNUAL = {**tariff(cycle="year", limits=["180", "260"], valid_from=date(2025, 1, 1)),
          "components": [{"code": "water", "name": "自来水费", "prices": ["2.00", "3.00", "5.00"]},
                         {"code": "sewage", "name": "污水处理费", "prices": ["1.00", "1.50", "2.00"]}]}


def month_end(year: int, month: int, hour: int = 12) -> datetime:
    """The last day of the month at ``hour`` (inside the review's last-3-days window)."""
    first_next = date(year + month // 12, month % 12 + 1, 1)
    return datetime.fromordinal(first_next.toordinal() - 1).replace(hour=hour, tzinfo=SHANGHAI)


async def postpaid(session: AsyncSession, *, raw: dict[str, Any], opened_at: datetime, area_id: int | None = None,
                   persons: int | None = None) -> Served:
    """A postpaid household served by one meter (register 0) from ``opened_at``, in
    ``area_id`` (default: a company of its own), its account on ``raw``."""
    await tariffs.save_tariff(session, raw=raw)
    if area_id is None:
        area_id = (await create_area(session, name=unique("公司"), kind=AreaKind.company)).id
    assert area_id is not None
    household = await create_household(session, account_no=unique("H"), name="李娜", area_id=area_id)
    meter = await make_meter(session, area_id=area_id, install_date=None)
    assert household.id is not None and meter.id is not None
    await assign_meter(session, meter_id=meter.id, household_id=household.id, valid_from=opened_at,
                       start_reading=Decimal(0))
    account = await open_account(session, household_id=household.id, mode=BillingMode.postpaid,
                                 terms=AccountTerms(tariff_code=raw["code"], persons=persons), now=opened_at, by="测试")
    return Served(household, meter, account)


async def run(session: AsyncSession, period: date, now: datetime, **kwargs: Any) -> bills.BillingRunResult:
    return await bills.run_billing(session, period=period, now=now, by="出账员", **kwargs)


async def bill_of(session: AsyncSession, account_id: int, period: date) -> Bill:
    found = (await session.execute(text("SELECT id FROM bills WHERE account_id = :a AND period = :p "
                                        "AND status <> 'voided'"), {"a": account_id, "p": period})).scalar_one()
    bill = await session.get(Bill, found, populate_existing=True)
    assert bill is not None
    return bill


async def lines_of(session: AsyncSession, bill_id: int | None) -> list[tuple[str, int, str, str, int]]:
    rows = (await session.execute(text("SELECT component, tier, volume_m3, price, amount_fen FROM bill_lines "
                                       "WHERE bill_id = :b ORDER BY line_no"), {"b": bill_id})).all()
    return [(r.component, r.tier, str(r.volume_m3), str(r.price), r.amount_fen) for r in rows]


async def ledger_adds_up(session: AsyncSession) -> None:
    """``shuiwu check``'s billing.ledger statement, in the test's transaction."""
    row = (await session.execute(_DISAGREEING)).one()
    assert (row.balances, row.cycles) == (0, 0)


async def refused(code: ErrorCode, call: Any) -> None:
    with pytest.raises(DomainError) as caught:
        await call
    assert caught.value.code is code, caught.value


# --------------------------------------------------------------------------- the hand-worked example

# Register at each month's last day 12:00, 2026 (m³), and the bills by hand. Each bill's
# prior is what the year's earlier bills billed; water ¥2 / ¥3 / ¥5, sewage ¥1 / ¥1.5 / ¥2.
REGISTER = {1: "40", 2: "80", 3: "130", 4: "170", 5: "200"}
HAND_WORKED = {
    # month: (volume, prior, [(component, tier, m³, price, fen)], amount)
    1: ("40.0000", "0.0000", [("water", 1, "40.0000", "2.0000", 8000), ("sewage", 1, "40.0000", "1.0000", 4000)],
        12000),
    2: ("40.0000", "40.0000", [("water", 1, "40.0000", "2.0000", 8000), ("sewage", 1, "40.0000", "1.0000", 4000)],
        12000),
    3: ("50.0000", "80.0000", [("water", 1, "50.0000", "2.0000", 10000), ("sewage", 1, "50.0000", "1.0000", 5000)],
        15000),
    4: ("40.0000", "130.0000", [("water", 1, "40.0000", "2.0000", 8000), ("sewage", 1, "40.0000", "1.0000", 4000)],
        12000),
    # May crosses the first annual limit: 170 → 180 in tier 1, 180 → 200 in tier 2.
    5: ("30.0000", "170.0000", [("water", 1, "10.0000", "2.0000", 2000), ("water", 2, "20.0000", "3.0000", 6000),
                                ("sewage", 1, "10.0000", "1.0000", 1000), ("sewage", 2, "20.0000", "1.5000", 3000)],
        12000),
    # June: the register reads 270 on 30 June, and a late reading of 204 at 31 May 22:00
    # arrived after May was billed. May's bill stays 30 m³; June bills 270 − 200 = 70 m³
    # (its own 66 m³ and May's late 4 m³), 200 → 260 in tier 2 and 260 → 270 in tier 3.
    6: ("70.0000", "200.0000", [("water", 2, "60.0000", "3.0000", 18000), ("water", 3, "10.0000", "5.0000", 5000),
                                ("sewage", 2, "60.0000", "1.5000", 9000), ("sewage", 3, "10.0000", "2.0000", 2000)],
        34000),
}


async def test_the_hand_worked_example_carries_annual_tiers_across_monthly_bills_and_a_late_reading_into_the_next(
        session: AsyncSession) -> None:
    served = await postpaid(session, raw=ANNUAL, opened_at=at(2026, 1, 1))
    area_id = served.household.area_id
    meter_id = served.meter.id
    assert meter_id is not None
    await ingest(session, meter_id, [(month_end(2026, m), total) for m, total in REGISTER.items()], now=at(2026, 6, 5))

    # Not ended yet: refused, nothing written.
    await refused(ErrorCode.BILLING_PERIOD_NOT_ENDED, run(session, date(2026, 1, 1), at(2026, 1, 31, 23),
                                                          area_id=area_id))
    for month in range(1, 6):
        result = await run(session, date(2026, month, 1), at(2026, month + 1, 5), area_id=area_id)
        assert (result.issued, result.held, result.already_billed, result.skipped) == (1, (), 0, 0)
    may = await bill_of(session, served.account_id, date(2026, 5, 1))
    # Re-running May changes nothing.
    again = await run(session, date(2026, 5, 1), at(2026, 6, 6), area_id=area_id)
    assert (again.issued, again.already_billed, again.amount_fen) == (0, 1, 0)

    await ingest(session, meter_id, [(month_end(2026, 5, 22), "204"), (month_end(2026, 6), "270")], now=at(2026, 7, 5))
    await run(session, date(2026, 6, 1), at(2026, 7, 5), area_id=area_id)

    for month, (volume, prior, lines, amount) in HAND_WORKED.items():
        bill = await bill_of(session, served.account_id, date(2026, month, 1))
        assert (str(bill.volume_m3), str(bill.prior_cycle_m3), bill.amount_fen, bill.cycle_start) == (
            volume, prior, amount, date(2026, 1, 1)), month
        assert await lines_of(session, bill.id) == lines, month
        assert bill.status == "open" and bill.due_date == date(2026, month + 1, 5 + 15)  # issued on the 5th, 15 days
        assert (bill.late_fee_rate, bill.late_fee_cap_fen) == (Decimal("0.0005"), amount)
    june = await bill_of(session, served.account_id, date(2026, 6, 1))
    may_after = await bill_of(session, served.account_id, date(2026, 5, 1))
    assert (may_after.volume_m3, may_after.amount_fen, may_after.end_readings) == (
        may.volume_m3, may.amount_fen, may.end_readings)  # the sent bill is unchanged
    assert june.start_readings == may.end_readings == [
        {"meter_id": meter_id, "read_at": month_end(2026, 5).isoformat(), "total_m3": "200.0000"}]
    assert june.end_readings == [{"meter_id": meter_id, "read_at": month_end(2026, 6).isoformat(),
                                  "total_m3": "270.0000"}]
    assert june.measured_m3 == Decimal(270)
    assert [(e.kind, e.amount_fen, e.ref) for e in await entries(session, served.account_id)] == [
        (EntryKind.bill, -HAND_WORKED[m][3], f"bill:{(await bill_of(session, served.account_id, date(2026, m, 1))).id}")
        for m in range(1, 7)]
    assert sum(v[3] for v in HAND_WORKED.values()) == 97000
    await ledger_adds_up(session)


# --------------------------------------------------------------------------- review, cycles


async def test_a_flagged_meter_is_held_and_billed_after_approval(session: AsyncSession) -> None:
    raw = tariff(prices=["2.00"], valid_from=date(2025, 1, 1))
    clean = await postpaid(session, raw=raw, opened_at=at(2026, 9, 1))
    area_id = clean.household.area_id
    flagged = await postpaid(session, raw=raw, opened_at=at(2026, 9, 1), area_id=area_id)
    for served in (clean, flagged):
        await ingest(session, served.meter.id, [(month_end(2026, 10), "12")], now=at(2026, 11, 5))  # type: ignore[arg-type]
    assert flagged.meter.id is not None
    session.add(Alarm(subject_kind=AlarmSubjectKind.meter, subject_id=flagged.meter.id, kind=AlarmKind.high_use,
                      status=AlarmStatus.open, opened_at=at(2026, 10, 10), last_seen_at=at(2026, 10, 10)))
    await session.flush()

    result = await run(session, date(2026, 10, 1), at(2026, 11, 5), area_id=area_id)

    assert result.account_ids == (clean.account_id,)
    issued = (await session.execute(text("SELECT payload FROM domain_events WHERE kind = 'bill.issued' "
                                         "ORDER BY id DESC LIMIT 1"))).scalar_one()
    assert (issued["bill_ids"], issued["account_ids"], issued["period"]) == (
        list(result.bill_ids), [clean.account_id], "2026-10-01")
    assert [(h.account_id, h.alarm_kinds) for h in result.held] == [(flagged.account_id, ["high_use"])]
    assert await entries(session, flagged.account_id) == []
    (held,) = result.held
    await review.approve_review(session, review_id=held.review_id, reason="已核实", by="审核员", now=at(2026, 11, 6),
                                scope_patterns=None)
    after = await run(session, date(2026, 10, 1), at(2026, 11, 6), area_id=area_id)
    assert (after.account_ids, after.held, after.already_billed) == ((flagged.account_id,), (), 1)
    # September and October: 12 m³ at ¥2.00 in the flagged account's first bill.
    assert (await bill_of(session, flagged.account_id, date(2026, 10, 1))).amount_fen == 2400


async def test_a_bimonthly_area_bills_two_months_with_doubled_monthly_tiers_and_minimum(session: AsyncSession) -> None:
    # Monthly tiers 0–10 / >10 m³ at ¥2 / ¥4, minimum ¥30.00 a month.
    raw = tariff(limits=["10"], prices=["2.00", "4.00"], valid_from=date(2025, 1, 1), minimum_monthly_charge="30.00")
    company = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    estate = await create_area(session, name=unique("小区"), kind=AreaKind.community, parent_id=company.id)
    assert company.id is not None and estate.id is not None
    monthly = await postpaid(session, raw=raw, opened_at=at(2026, 1, 1), area_id=company.id)
    heavy = await postpaid(session, raw=raw, opened_at=at(2026, 1, 1), area_id=estate.id)
    light = await postpaid(session, raw=raw, opened_at=at(2026, 1, 1), area_id=estate.id)
    for served, first, second in ((monthly, "5", "9"), (heavy, "12", "30"), (light, "2", "5")):
        await ingest(session, served.meter.id, [(month_end(2026, 1), first), (month_end(2026, 2), second)],  # type: ignore[arg-type]
                     now=at(2026, 3, 5))
    cycle = await bills.set_area_billing_cycle(session, area_id=estate.id, months=2, first_month=1, by="主管",
                                               now=at(2026, 1, 1))
    assert (await bills.billing_cycle_of(session, area_id=estate.id)) == cycle
    assert (await bills.billing_cycle_of(session, area_id=company.id)).months == 1

    await refused(ErrorCode.BILLING_PERIOD_MISALIGNED, run(session, date(2026, 2, 1), at(2026, 3, 5),
                                                           area_id=estate.id))
    await refused(ErrorCode.BILLING_PERIOD_NOT_ENDED, run(session, date(2026, 1, 1), at(2026, 2, 5),
                                                          area_id=estate.id))
    february = await run(session, date(2026, 2, 1), at(2026, 3, 5), area_id=company.id)
    # The company's February bills the monthly household; the estate's periods start in January.
    assert (february.account_ids, february.skipped) == ((monthly.account_id,), 2)
    both = await run(session, date(2026, 1, 1), at(2026, 3, 5), area_id=estate.id)
    assert set(both.account_ids) == {heavy.account_id, light.account_id}

    heavy_bill = await bill_of(session, heavy.account_id, date(2026, 1, 1))
    assert (heavy_bill.months, heavy_bill.period_end) == (2, at(2026, 3, 1))
    # 30 m³ over two months: the monthly 10 m³ limit doubled to 20: 20 × ¥2 + 10 × ¥4 = ¥80.00.
    assert await lines_of(session, heavy_bill.id) == [("water", 1, "20.0000", "2.0000", 4000),
                                                      ("water", 2, "10.0000", "4.0000", 4000)]
    # 5 m³ is ¥10.00, below the two months' minimum of ¥60.00: a minimum line tops it up.
    light_bill = await bill_of(session, light.account_id, date(2026, 1, 1))
    assert await lines_of(session, light_bill.id) == [("water", 1, "5.0000", "2.0000", 1000),
                                                      ("minimum", 0, "0.0000", "0.0000", 5000)]
    await refused(ErrorCode.INVALID, bills.set_area_billing_cycle(session, area_id=estate.id, months=3, by="主管",
                                                                  now=at(2026, 1, 1)))


async def test_credit_paid_ahead_pays_the_new_bill_at_once(session: AsyncSession) -> None:
    served = await postpaid(session, raw=tariff(prices=["2.00"], valid_from=date(2025, 1, 1)), opened_at=at(2026, 1, 1))
    await ingest(session, served.meter.id, [(month_end(2026, 1), "12")], now=at(2026, 2, 5))  # type: ignore[arg-type]
    await post_entry(session, account_id=served.account_id, kind=EntryKind.payment, amount_fen=5000, ref="payment:1",
                     idempotency_key=unique("ahead"))

    await run(session, date(2026, 1, 1), at(2026, 2, 5), area_id=served.household.area_id)

    bill = await bill_of(session, served.account_id, date(2026, 1, 1))
    assert (bill.amount_fen, bill.principal_paid_fen, bill.status, bill.paid_at) == (2400, 2400, "paid", at(2026, 2, 5))
    assert (await session.execute(text("SELECT balance_fen FROM accounts WHERE id = :a"),
                                  {"a": served.account_id})).scalar_one() == 2600


# --------------------------------------------------------------------------- void and re-issue


async def test_void_refusals_and_a_reissue_reverse_the_bill_and_keep_the_ledger(session: AsyncSession) -> None:
    raw = tariff(prices=["2.00"], valid_from=date(2025, 1, 1))
    served = await postpaid(session, raw=raw, opened_at=at(2026, 1, 1))
    area_id = served.household.area_id
    await ingest(session, served.meter.id, [(month_end(2026, 1), "10"), (month_end(2026, 2), "25")],  # type: ignore[arg-type]
                 now=at(2026, 3, 5))
    await run(session, date(2026, 1, 1), at(2026, 2, 5), area_id=area_id)
    await run(session, date(2026, 2, 1), at(2026, 3, 5), area_id=area_id)
    january = await bill_of(session, served.account_id, date(2026, 1, 1))
    february = await bill_of(session, served.account_id, date(2026, 2, 1))
    now = at(2026, 3, 6)

    def void(bill: Bill, **kwargs: Any) -> Any:
        assert bill.id is not None
        return bills.void_bill(session, bill_id=bill.id, by="主管", now=now, **{"reason": "读数错误", **kwargs})

    await refused(ErrorCode.REQUIRED, void(february, reason="  "))
    await refused(ErrorCode.TOO_LONG, void(february, reason="长" * 201))
    await refused(ErrorCode.BILL_NOT_LATEST, void(january))
    await session.execute(text("UPDATE bills SET principal_paid_fen = 100 WHERE id = :b"), {"b": february.id})
    await refused(ErrorCode.BILL_PAID, void(february))
    await session.execute(text("UPDATE bills SET principal_paid_fen = 0 WHERE id = :b"), {"b": february.id})
    await refused(ErrorCode.NOT_FOUND, bills.void_bill(session, bill_id=february.id or 0, reason="x", by="主管",
                                                       now=now, scope_patterns=["/no-such/%"]))
    assert len(await entries(session, served.account_id)) == 2  # the refusals wrote nothing

    # A corrected February reading, then void with re-issue: the new bill prices 28 m³ − 10.
    await session.execute(text("UPDATE readings SET total_m3 = 28 WHERE meter_id = :m AND read_at = :t"),
                          {"m": served.meter.id, "t": month_end(2026, 2)})
    done = await void(february, reissue=True)
    assert done.voided.status == "voided" and done.voided.void_reason == "读数错误"
    reissued = await bill_of(session, served.account_id, date(2026, 2, 1))
    assert (reissued.id, reissued.reissue_of_id, reissued.amount_fen) == (done.reissued_bill_id, february.id, 3600)
    assert [(e.kind, e.amount_fen, e.ref) for e in await entries(session, served.account_id)] == [
        (EntryKind.bill, -2000, f"bill:{january.id}"), (EntryKind.bill, -3000, f"bill:{february.id}"),
        (EntryKind.reversal, 3000, f"bill:{february.id}"), (EntryKind.bill, -3600, f"bill:{reissued.id}")]
    await refused(ErrorCode.BILL_VOIDED, void(february))
    await ledger_adds_up(session)


# --------------------------------------------------------------------------- the final bill


async def test_closing_a_postpaid_account_issues_a_final_bill_that_replaces_an_unpaid_one(
        session: AsyncSession) -> None:
    raw = tariff(prices=["2.00"], valid_from=date(2025, 1, 1))
    served = await postpaid(session, raw=raw, opened_at=at(2026, 1, 1))
    area_id = served.household.area_id
    await ingest(session, served.meter.id, [(month_end(2026, 1), "10"), (month_end(2026, 2), "20")],  # type: ignore[arg-type]
                 now=at(2026, 3, 5))
    await run(session, date(2026, 1, 1), at(2026, 2, 5), area_id=area_id)
    await run(session, date(2026, 2, 1), at(2026, 3, 5), area_id=area_id)
    february = await bill_of(session, served.account_id, date(2026, 2, 1))
    # The final reading at the counter, 1 March 00:00, reads 22: February's usage was 12 m³, not 10.
    await ingest(session, served.meter.id, [(at(2026, 3, 1), "22")], now=at(2026, 3, 6))  # type: ignore[arg-type]

    charged = await final_charge(session, account_id=served.account_id, at=at(2026, 3, 1), now=at(2026, 3, 6))

    # February's unpaid bill is voided and replaced by the final bill of the period.
    final = await bill_of(session, served.account_id, date(2026, 2, 1))
    assert (final.kind, final.period_end, str(final.volume_m3), final.amount_fen) == (
        "final", at(2026, 3, 1), "12.0000", 2400)
    assert (charged.charged, charged.charged_fen) == (1, 2400 - 2000)
    voided = await session.get(Bill, february.id, populate_existing=True)
    assert voided is not None and (voided.status, voided.void_reason) == ("voided", "销户重算")
    # Again: nothing changes.
    again = await final_charge(session, account_id=served.account_id, at=at(2026, 3, 1), now=at(2026, 3, 6))
    assert again.charged == 0

    await refused(ErrorCode.BALANCE_OUTSTANDING, close_settled_account(session, account_id=served.account_id,
                                                                       now=at(2026, 3, 6), by="柜员"))
    await post_entry(session, account_id=served.account_id, kind=EntryKind.payment, amount_fen=4400, ref="payment:1",
                     idempotency_key=unique("pay"))
    closed = await close_settled_account(session, account_id=served.account_id, now=at(2026, 3, 6), by="柜员")
    assert closed.status == "closed"
    await ledger_adds_up(session)


async def test_a_final_bill_with_no_bill_yet_bills_from_the_opening(session: AsyncSession) -> None:
    raw = tariff(prices=["2.00"], valid_from=date(2025, 1, 1))
    served = await postpaid(session, raw=raw, opened_at=at(2026, 1, 1))
    await ingest(session, served.meter.id, [(at(2026, 1, 20), "7")], now=at(2026, 1, 25))  # type: ignore[arg-type]
    await refused(ErrorCode.ACCOUNT_UNSETTLED, close_settled_account(session, account_id=served.account_id,
                                                                     now=at(2026, 1, 25), by="柜员"))
    await final_charge(session, account_id=served.account_id, at=at(2026, 1, 20), now=at(2026, 1, 25))
    final = await bill_of(session, served.account_id, date(2026, 1, 1))
    assert (final.kind, final.amount_fen, final.end_readings[0]["total_m3"]) == ("final", 1400, "7.0000")


# --------------------------------------------------------------------------- concurrency


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url, pool_size=6, max_overflow=0)
    yield session_factory(engine)
    await engine.dispose()


async def test_a_run_and_payments_on_the_same_accounts_in_opposite_order_never_deadlock(
        committed_sessions: async_sessionmaker[AsyncSession], pool: async_sessionmaker[AsyncSession]) -> None:
    raw = tariff(prices=["2.00"], valid_from=date(2025, 1, 1))
    async with committed_sessions() as session, session.begin():
        company = await create_area(session, name=unique("公司"), kind=AreaKind.company)
        served = [await postpaid(session, raw=raw, opened_at=at(2026, 1, 1), area_id=company.id) for _ in range(6)]
        for one in served:
            await ingest(session, one.meter.id, [(month_end(2026, 1), "10")], now=at(2026, 2, 5))  # type: ignore[arg-type]
    ids = [one.account_id for one in served]

    async def pay(round_: int) -> None:
        async with pool() as session, session.begin():
            await post_entries(session, [EntryIn(account_id=i, kind=EntryKind.payment, amount_fen=100,
                                                 idempotency_key=f"run-pay:{round_}:{i}") for i in reversed(ids)])

    async def bill() -> Any:
        async with pool() as session, session.begin():
            return await bills.run_billing(session, period=date(2026, 1, 1), area_id=company.id, now=at(2026, 2, 5),
                                           by="出账员")

    results = await asyncio.wait_for(asyncio.gather(pay(0), bill(), pay(1), bill(), pay(2)), timeout=30)
    runs = [r for r in results if isinstance(r, bills.BillingRunResult)]
    assert sorted(r.issued for r in runs) == [0, 6] and sorted(r.already_billed for r in runs) == [0, 6]
    async with committed_sessions() as session:
        await ledger_adds_up(session)
        balances = (await session.execute(text("SELECT balance_fen FROM accounts WHERE id = ANY(:ids)"),
                                          {"ids": ids})).scalars().all()
    assert balances == [300 - 2000] * 6


# --------------------------------------------------------------------------- chunks


async def test_a_run_in_chunks_reads_each_next_chunks_usage_while_pricing_the_one_before(
        session: AsyncSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of two over five accounts, monthly and bimonthly mixed: the first chunk reads
    its usage itself, every later one has it read ahead, and each bill is what its usage
    costs."""
    raw = tariff(prices=["2.00"], valid_from=date(2025, 1, 1))
    company = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    estate = await create_area(session, name=unique("小区"), kind=AreaKind.community, parent_id=company.id)
    assert company.id is not None and estate.id is not None
    used = {"5": company.id, "12": estate.id, "20": company.id, "7": estate.id, "30": company.id}
    served = {}
    for m3, area_id in used.items():
        served[m3] = await postpaid(session, raw=raw, opened_at=at(2026, 1, 1), area_id=area_id)
        await ingest(session, served[m3].meter.id, [(month_end(2026, 1), "1"), (month_end(2026, 2), m3)],  # type: ignore[arg-type]
                     now=at(2026, 3, 5))
    await bills.set_area_billing_cycle(session, area_id=estate.id, months=2, first_month=1, by="主管",
                                       now=at(2026, 1, 1))
    monkeypatch.setattr(bills, "CHUNK", 2)
    reads: list[str] = []

    def counted(name: str, real: Any) -> Any:
        async def call(*args: Any) -> Any:
            reads.append(name)
            return await real(*args)
        return call

    monkeypatch.setattr(bills, "household_usage_of_windows", counted("in turn", bills.household_usage_of_windows))
    monkeypatch.setattr(bills, "household_usage_on", counted("ahead", bills.household_usage_on))

    result = await run(session, date(2026, 1, 1), at(2026, 3, 5), area_id=company.id)
    assert sorted(result.account_ids) == sorted(s.account_id for s in served.values())
    # Three chunks (1 2 | 3 4 | 5): the first reads its own usage, once per cycle group;
    # the next two had theirs read ahead, while the group priced last before them.
    assert reads == ["in turn", "in turn", "ahead", "ahead"]
    for m3, one in served.items():
        bill = await bill_of(session, one.account_id, date(2026, 1, 1))
        # January alone is 1 m³; the bimonthly estate's January and February all of it.
        expected = int(m3) * 200 if used[m3] == estate.id else 200
        assert (bill.months, bill.amount_fen) == (2 if used[m3] == estate.id else 1, expected), m3
    await ledger_adds_up(session)


async def test_a_committing_run_reads_the_next_chunks_usage_on_a_second_connection_on_its_snapshot(
        committed_sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch) -> None:
    """A run the way the CLI makes it (its session on an engine, a commit after each
    chunk): the first chunk reads its usage in turn, every later one had it read on the
    second connection on the run's snapshot, and the bills are what the usage costs."""
    raw = tariff(prices=["2.00"], valid_from=date(2025, 1, 1))
    async with committed_sessions() as session, session.begin():
        company = await create_area(session, name=unique("公司"), kind=AreaKind.company)
        served = {m3: await postpaid(session, raw=raw, opened_at=at(2026, 1, 1), area_id=company.id)
                  for m3 in ("5", "12", "20", "7", "30")}
        for m3, one in served.items():
            await ingest(session, one.meter.id, [(month_end(2026, 1), m3)], now=at(2026, 2, 5))  # type: ignore[arg-type]
    monkeypatch.setattr(bills, "CHUNK", 2)
    reads: list[tuple[str, int]] = []

    def counted(name: str, real: Any) -> Any:
        async def call(first: Any, windows: Any) -> Any:
            driver = first if name == "ahead" else await bills.raw_connection(first)
            reads.append((name, driver.get_server_pid()))
            return await real(first, windows)
        return call

    monkeypatch.setattr(bills, "household_usage_of_windows", counted("in turn", bills.household_usage_of_windows))
    monkeypatch.setattr(bills, "household_usage_on", counted("ahead", bills.household_usage_on))
    async with committed_sessions() as session:
        result = await run(session, date(2026, 1, 1), at(2026, 2, 5), area_id=company.id, commit=session.commit)
        await session.commit()
    assert result.issued == 5
    # The second chunk's read starts before the first chunk reads its own.
    assert [name for name, _ in reads] == ["ahead", "in turn", "ahead"]
    # Read beside the run, on a connection of its own (the session's may change at each commit).
    assert {pid for name, pid in reads if name == "ahead"}.isdisjoint(pid for name, pid in reads if name == "in turn")
    async with committed_sessions() as session:
        for m3, one in served.items():
            assert (await bill_of(session, one.account_id, date(2026, 1, 1))).amount_fen == int(m3) * 200, m3
        await ledger_adds_up(session)
        # The reader's connection went back to the pool clean.
        assert (await session.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                           "AND state = 'idle in transaction'"))).scalar_one() == 0


async def test_a_run_after_its_caller_wrote_reads_ahead_on_its_own_connection(
        committed_sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader on the run's snapshot would not see what the caller wrote uncommitted in
    the same transaction (here: the readings themselves), so the run reads ahead on its
    own connection and every bill has its usage."""
    raw = tariff(prices=["2.00"], valid_from=date(2025, 1, 1))
    monkeypatch.setattr(bills, "CHUNK", 2)
    async with committed_sessions() as session, session.begin():
        company = await create_area(session, name=unique("公司"), kind=AreaKind.company)
        served = {m3: await postpaid(session, raw=raw, opened_at=at(2026, 1, 1), area_id=company.id)
                  for m3 in ("4", "9", "15")}
        for m3, one in served.items():
            await ingest(session, one.meter.id, [(month_end(2026, 1), m3)], now=at(2026, 2, 5))  # type: ignore[arg-type]
        assert not await bills._UsageReadAhead.would_see(session)
        result = await run(session, date(2026, 1, 1), at(2026, 2, 5), area_id=company.id)
        assert result.issued == 3
        for m3, one in served.items():
            assert (await bill_of(session, one.account_id, date(2026, 1, 1))).amount_fen == int(m3) * 200, m3
