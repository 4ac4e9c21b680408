"""A bill whose span crosses an annual tier cycle's start (issue 17): each year's part is
priced in its own year's tiers, from that year's prior; the next bill's prior is only the
new year's part; a final bill across a year; the over-billed credit of a split bill; a
month-cycle tariff across a year (unchanged); a final reading exactly at a month
boundary credits like one a moment later; a bimonthly Dec–Jan period is split at 1 January;
late usage at a paid bill's end costs what redoing that bill would. Every figure is worked
by hand in the test."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import AreaKind
from backend.archives.service import create_area
from backend.billing import bill_queries, bills
from backend.billing.accounts import final_charge
from backend.billing.ledger import post_entry
from backend.billing.models import EntryKind
from backend.billing.notices import NoticeLine
from backend.billing.schema.bills import BillType
from backend.readings.entry import correct_reading
from tests.billing.factories import Served, at, balance, entries, ingest, tariff
from tests.billing.test_bills_run import ANNUAL, bill_of, ledger_adds_up, month_end, postpaid, run
from tests.billing.test_bills_spans import bills_add_up
from tests.factories import unique

Y2026, Y2027 = date(2026, 1, 1), date(2027, 1, 1)


async def lines_with_cycles(session: AsyncSession, bill_id: int | None) -> list[tuple[str, int, str, int, date]]:
    """(component, tier, m³, fen, cycle_start) of the bill's lines in order."""
    rows = (await session.execute(text("SELECT component, tier, volume_m3, amount_fen, cycle_start FROM bill_lines "
                                       "WHERE bill_id = :b ORDER BY line_no"), {"b": bill_id})).all()
    return [(r.component, r.tier, str(r.volume_m3), r.amount_fen, r.cycle_start) for r in rows]


async def billed_through_november(session: AsyncSession) -> Served:
    """ANNUAL (tiers 0–180 / 180–260 / >260 m³; water ¥2 / ¥3 / ¥5, sewage ¥1 / ¥1.5 / ¥2),
    opened 1 Jan 2026, 20 m³ a month, billed monthly January–November 2026: 220 m³ in
    the year, into tier 2 since October. December is never billed (its run not done)."""
    served = await postpaid(session, raw=ANNUAL, opened_at=at(2026, 1, 1))
    assert served.meter.id is not None
    await ingest(session, served.meter.id, [(month_end(2026, m), str(20 * m)) for m in range(1, 12)],
                 now=at(2026, 12, 1))
    for month in range(1, 12):
        await run(session, date(2026, month, 1), at(2026, month + 1, 5), area_id=served.household.area_id)
    return served


async def test_an_unbilled_december_billed_with_january_is_priced_in_its_own_years_tiers(
        session: AsyncSession) -> None:
    served = await billed_through_november(session)
    assert served.meter.id is not None
    await ingest(session, served.meter.id, [(month_end(2026, 12), "265"), (month_end(2027, 1), "295"),
                                            (at(2027, 2, 27, 12), "325")], now=at(2027, 2, 28))

    await run(session, date(2027, 1, 1), at(2027, 2, 5), area_id=served.household.area_id)

    # The span 1 Dec 2026 – 1 Feb 2027: 295 − 220 = 75 m³, cut at 1 Jan 2027 00:00, where
    # the register had reached 265 (the reading at 31 Dec 12:00).
    # December: 265 − 220 = 45 m³ from 2026's prior 220 (Jan–Nov bills): 220 → 260 in
    # tier 2 (40 m³), 260 → 265 in tier 3 (5 m³):
    #   water 40 × ¥3 = ¥120, 5 × ¥5 = ¥25; sewage 40 × ¥1.5 = ¥60, 5 × ¥2 = ¥10  = ¥215
    # January: the other 30 m³ from 2027's prior 0, tier 1:
    #   water 30 × ¥2 = ¥60; sewage 30 × ¥1 = ¥30                                = ¥90
    # ¥305. (Priced all in January's year, as before: 75 m³ in tier 1 = 75 × ¥3 = ¥225.)
    january = await bill_of(session, served.account_id, date(2027, 1, 1))
    assert (january.months, january.volume_m3, january.cycle_volume_m3, january.prior_cycle_m3,
            january.cycle_start, january.amount_fen) == (
        2, Decimal("75.0000"), Decimal("30.0000"), Decimal("0.0000"), Y2027, 30500)
    assert january.earlier_cycles == [{"cycle_start": "2026-01-01", "first_day": "2026-12-01",
                                       "last_day": "2026-12-31", "months": "1", "volume_m3": "45.0000",
                                       "prior_m3": "220.0000"}]
    assert await lines_with_cycles(session, january.id) == [
        ("water", 2, "40.0000", 12000, Y2026), ("water", 3, "5.0000", 2500, Y2026),
        ("sewage", 2, "40.0000", 6000, Y2026), ("sewage", 3, "5.0000", 1000, Y2026),
        ("water", 1, "30.0000", 6000, Y2027), ("sewage", 1, "30.0000", 3000, Y2027)]

    # As the API shows it, and a notice prints the earlier year's lines with the year.
    assert january.id is not None
    shown = BillType.of((await bill_queries.bill_rows_by_ids(session, [january.id]))[january.id], date(2027, 2, 5))
    assert (shown.cycle_volume_m3, [(c.cycle_start, c.months, c.volume_m3, c.prior_m3) for c in shown.earlier_cycles]
            ) == (Decimal("30.0000"), [(Y2026, 1, Decimal("45.0000"), Decimal("220.0000"))])
    assert [(row.line.cycle_start, row.line.tier) for row in (await bill_queries.lines_by_bill_ids(
        session, [january.id]))[january.id]][3:5] == [(Y2026, 3), (Y2027, 1)]
    assert [NoticeLine("自来水费", 2, Decimal(40), Decimal(3), 12000, 2026).tier_label,
            NoticeLine("自来水费", 1, Decimal(30), Decimal(2), 6000).tier_label] == ["2026年 第2阶梯", "第1阶梯"]

    await run(session, date(2027, 2, 1), at(2027, 3, 5), area_id=served.household.area_id)

    # February: 325 − 295 = 30 m³ from 2027's prior, January's in-cycle 30 m³ only
    # (not its 75): 30 → 60, tier 1: water 30 × ¥2 + sewage 30 × ¥1 = ¥90.
    february = await bill_of(session, served.account_id, date(2027, 2, 1))
    assert (february.volume_m3, february.prior_cycle_m3, february.amount_fen, february.earlier_cycles) == (
        Decimal("30.0000"), Decimal("30.0000"), 9000, None)
    await ledger_adds_up(session)
    await bills_add_up(session)


async def test_a_final_bill_across_a_year_prices_each_years_part_in_its_own_tiers(session: AsyncSession) -> None:
    # ANNUAL, opened 1 Oct 2026; October billed at 190 m³ (180 in tier 1, 10 in tier 2).
    # November and December never billed; the account closes on 10 Jan 2027 09:00.
    served = await postpaid(session, raw=ANNUAL, opened_at=at(2026, 10, 1))
    assert served.meter.id is not None
    await ingest(session, served.meter.id, [(month_end(2026, 10), "190")], now=at(2026, 11, 1))
    await run(session, date(2026, 10, 1), at(2026, 11, 5), area_id=served.household.area_id)
    await ingest(session, served.meter.id, [(month_end(2026, 11), "200"), (month_end(2026, 12), "210"),
                                            (at(2027, 1, 10, 9), "220")], now=at(2027, 1, 10, 10))

    await final_charge(session, account_id=served.account_id, at=at(2027, 1, 10, 9), now=at(2027, 1, 10, 10))

    # The span 1 Nov 2026 – 10 Jan 2027 09:00 (3 months), cut at 1 Jan 2027 (register 210).
    # Nov–Dec (2 months): 210 − 190 = 20 m³ from 2026's prior 190, tier 2:
    #   water 20 × ¥3 = ¥60, sewage 20 × ¥1.5 = ¥30                    = ¥90
    # 1–10 Jan (1 month): 10 m³ from 0, tier 1: water ¥20, sewage ¥10 = ¥30
    final = await bill_of(session, served.account_id, date(2027, 1, 1))
    assert (final.kind, final.months, final.volume_m3, final.cycle_volume_m3, final.amount_fen) == (
        "final", 3, Decimal("30.0000"), Decimal("10.0000"), 12000)
    assert final.earlier_cycles == [{"cycle_start": "2026-01-01", "first_day": "2026-11-01", "last_day": "2026-12-31",
                                     "months": "2", "volume_m3": "20.0000", "prior_m3": "190.0000"}]
    assert await lines_with_cycles(session, final.id) == [
        ("water", 2, "20.0000", 6000, Y2026), ("sewage", 2, "20.0000", 3000, Y2026),
        ("water", 1, "10.0000", 2000, Y2027), ("sewage", 1, "10.0000", 1000, Y2027)]
    await ledger_adds_up(session)
    await bills_add_up(session)


async def test_a_split_bill_gives_over_billed_volume_back_from_its_own_year_first_then_the_earlier(
        session: AsyncSession) -> None:
    # The first test's January bill (December 45 m³ from 220, January 30 m³ from 0: ¥305).
    served = await billed_through_november(session)
    meter_id = served.meter.id
    assert meter_id is not None
    await ingest(session, meter_id, [(month_end(2026, 12), "265"), (month_end(2027, 1), "295")], now=at(2027, 2, 1))
    await run(session, date(2027, 1, 1), at(2027, 2, 5), area_id=served.household.area_id)
    # Both readings then corrected down (265 → 250, 295 → 255); the account closes on
    # 3 Feb 09:00 reading 256: 220 + 75 = 295 m³ billed, 256 measured, 39 m³ over-billed.
    for read_at, corrected in ((month_end(2026, 12), "250"), (month_end(2027, 1), "255")):
        await correct_reading(session, meter_id=meter_id, read_at=read_at, total_m3=Decimal(corrected), reason="抄错",
                              by="审核员", now=at(2027, 2, 6), scope_patterns=None)
    await ingest(session, meter_id, [(at(2027, 2, 3, 9), "256")], now=at(2027, 2, 6, 1))

    charged = await final_charge(session, account_id=served.account_id, at=at(2027, 2, 3, 9), now=at(2027, 2, 6, 2))

    # January's bill gives back its 2027 part first: all 30 m³, price(30, 0) − price(0, 0)
    # = ¥90; then 9 m³ of its December part: price(45, 220) − price(36, 220) = (40 × ¥4.5
    # + 5 × ¥7) − 36 × ¥4.5 = ¥215 − ¥162 = ¥53. Credit ¥143.
    final = await bill_of(session, served.account_id, date(2027, 2, 1))
    assert (final.volume_m3, final.credited_m3, final.credit_fen, final.amount_fen) == (
        Decimal("0.0000"), Decimal("39.0000"), 14300, 0)
    assert charged.charged_fen == -14300
    assert [(str(e.kind), e.amount_fen, e.ref) for e in await entries(session, served.account_id)
            if str(e.kind) == "adjustment"] == [("adjustment", 14300, f"bill:{final.id}")]
    await ledger_adds_up(session)
    await bills_add_up(session)


async def test_a_month_cycle_tariff_across_a_year_keeps_scaling_by_months(session: AsyncSession) -> None:
    # Monthly tiers 0–10 m³ at ¥2, above at ¥4. November billed (5 m³); December never
    # billed; January's run bills 1 Dec – 1 Feb: 30 − 5 = 25 m³ over 2 months, tier limit
    # 2 × 10 = 20: 20 × ¥2 + 5 × ¥4 = ¥60, not split (only annual tiers are).
    raw = tariff(limits=["10"], prices=["2.00", "4.00"], valid_from=date(2025, 1, 1))
    served = await postpaid(session, raw=raw, opened_at=at(2026, 11, 1))
    assert served.meter.id is not None
    await ingest(session, served.meter.id, [(month_end(2026, 11), "5"), (month_end(2026, 12), "20"),
                                            (month_end(2027, 1), "30")], now=at(2027, 2, 1))
    await run(session, date(2026, 11, 1), at(2026, 12, 5), area_id=served.household.area_id)

    await run(session, date(2027, 1, 1), at(2027, 2, 5), area_id=served.household.area_id)

    january = await bill_of(session, served.account_id, date(2027, 1, 1))
    assert (january.months, january.volume_m3, january.cycle_volume_m3, january.earlier_cycles,
            january.cycle_start, january.amount_fen) == (2, Decimal("25.0000"), Decimal("25.0000"), None, Y2027, 6000)
    assert await lines_with_cycles(session, january.id) == [
        ("water", 1, "20.0000", 4000, Y2027), ("water", 2, "5.0000", 2000, Y2027)]


@pytest.mark.parametrize("closing", [at(2026, 12, 1), at(2026, 12, 1) + timedelta(microseconds=1)],
                         ids=["at-the-boundary", "1us-later"])
async def test_a_final_reading_at_a_month_boundary_credits_over_billed_volume_like_one_a_moment_later(
        session: AsyncSession, closing: datetime) -> None:
    # Monthly tiers 0–10 m³ at ¥2, above at ¥4. October billed at 20 m³ (¥60), November
    # at 22 − 20 = 2 m³ (¥4), both paid. Both readings are then corrected down (20 → 15,
    # 22 → 18) and the account closes at 1 Dec 00:00 (or 1 µs later), reading 18.
    raw = tariff(limits=["10"], prices=["2.00", "4.00"], valid_from=date(2025, 1, 1))
    served = await postpaid(session, raw=raw, opened_at=at(2026, 10, 1))
    meter_id = served.meter.id
    assert meter_id is not None
    await ingest(session, meter_id, [(month_end(2026, 10), "20"), (month_end(2026, 11), "22")], now=at(2026, 12, 1))
    await post_entry(session, account_id=served.account_id, kind=EntryKind.payment, amount_fen=6400,
                     ref="payment:1", idempotency_key=unique("ahead"))
    for month in (10, 11):
        await run(session, date(2026, month, 1), at(2026, month + 1, 5), area_id=served.household.area_id)
    november = await bill_of(session, served.account_id, date(2026, 11, 1))
    assert (november.amount_fen, november.status) == (400, "paid")
    for month, corrected in ((10, "15"), (11, "18")):
        await correct_reading(session, meter_id=meter_id, read_at=month_end(2026, month), total_m3=Decimal(corrected),
                              reason="抄错", by="审核员", now=at(2026, 12, 6), scope_patterns=None)

    charged = await final_charge(session, account_id=served.account_id, at=closing, now=at(2026, 12, 6, 1))

    # November's bill, which reaches the closing instant, is left as it is; a final bill
    # of December gives back the 22 − 18 = 4 m³ over-billed, newest first: November's 2 m³
    # (price(2) − price(0) = ¥4), then 2 of October's (price(20) − price(18) = 2 × ¥4 = ¥8).
    final = await bill_of(session, served.account_id, date(2026, 12, 1))
    assert (final.kind, final.volume_m3, final.credited_m3, final.credit_fen, final.amount_fen) == (
        "final", Decimal("0.0000"), Decimal("4.0000"), 1200, 0)
    assert (charged.charged_fen, await balance(session, served.account_id)) == (-1200, 1200)
    assert (await bill_of(session, served.account_id, date(2026, 11, 1))).id == november.id
    await ledger_adds_up(session)
    await bills_add_up(session)
    # Again: nothing changes.
    again = await final_charge(session, account_id=served.account_id, at=closing, now=at(2026, 12, 6, 2))
    assert (again.charged, await balance(session, served.account_id)) == (0, 1200)


# --------------------------------------------------------------------------- a bimonthly Dec–Jan period


async def even_bimonthly(session: AsyncSession, *, opened_at: datetime) -> Served:
    """An ANNUAL account in a company billing bimonthly from even months (Dec–Jan, Feb–Mar, …)."""
    company = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    assert company.id is not None
    await bills.set_area_billing_cycle(session, area_id=company.id, months=2, first_month=2, by="主管",
                                       now=at(2026, 11, 1))
    served = await postpaid(session, raw=ANNUAL, opened_at=opened_at, area_id=company.id)
    assert served.meter.id is not None
    return served


async def test_a_dec_jan_bimonthly_bill_is_split_at_1_january_and_the_next_counts_january_in_its_prior(
        session: AsyncSession) -> None:
    served = await even_bimonthly(session, opened_at=at(2026, 12, 1))
    assert served.meter.id is not None
    area_id = served.household.area_id
    # December 200 m³, January 50 m³, February–March 20 m³.
    await ingest(session, served.meter.id, [(month_end(2026, 12), "200"), (month_end(2027, 1), "250"),
                                            (month_end(2027, 3), "270")], now=at(2027, 4, 1))

    await run(session, date(2026, 12, 1), at(2027, 2, 5), area_id=area_id)

    # The period 1 Dec 2026 – 1 Feb 2027 is January's year (its last day's), cut at 1 Jan:
    #   Dec (2026, prior 0): 180 t1 + 20 t2: water 360 + 60, sewage 180 + 30       = ¥630
    #   Jan (2027, prior 0): 50 t1: water 100, sewage 50                           = ¥150
    # ¥780 (priced all in 2026, as before: 180 t1 + 70 t2 = ¥855).
    bill = await bill_of(session, served.account_id, date(2026, 12, 1))
    assert (bill.months, bill.volume_m3, bill.cycle_start, bill.cycle_volume_m3, bill.prior_cycle_m3,
            bill.amount_fen) == (2, Decimal("250.0000"), Y2027, Decimal("50.0000"), Decimal("0.0000"), 78000)
    assert bill.earlier_cycles == [{"cycle_start": "2026-01-01", "first_day": "2026-12-01", "last_day": "2026-12-31",
                                    "months": "1", "volume_m3": "200.0000", "prior_m3": "0"}]
    assert await lines_with_cycles(session, bill.id) == [
        ("water", 1, "180.0000", 36000, Y2026), ("water", 2, "20.0000", 6000, Y2026),
        ("sewage", 1, "180.0000", 18000, Y2026), ("sewage", 2, "20.0000", 3000, Y2026),
        ("water", 1, "50.0000", 10000, Y2027), ("sewage", 1, "50.0000", 5000, Y2027)]

    await run(session, date(2027, 2, 1), at(2027, 4, 5), area_id=area_id)

    # Feb–Mar: 20 m³ from 2027's prior 50 (January's part only), tier 1: ¥60.
    february = await bill_of(session, served.account_id, date(2027, 2, 1))
    assert (february.cycle_start, february.prior_cycle_m3, february.amount_fen) == (Y2027, Decimal("50.0000"), 6000)
    await ledger_adds_up(session)
    await bills_add_up(session)


async def test_the_bill_after_a_dec_jan_bimonthly_bill_climbs_2027s_tiers_from_january(session: AsyncSession) -> None:
    served = await even_bimonthly(session, opened_at=at(2026, 12, 1))
    assert served.meter.id is not None
    # December 10 m³, January 170 m³, February–March 20 m³.
    await ingest(session, served.meter.id, [(month_end(2026, 12), "10"), (month_end(2027, 1), "180"),
                                            (month_end(2027, 2), "190"), (month_end(2027, 3), "200")],
                 now=at(2027, 4, 1))
    await run(session, date(2026, 12, 1), at(2027, 2, 5), area_id=served.household.area_id)
    await run(session, date(2027, 2, 1), at(2027, 4, 5), area_id=served.household.area_id)

    # Feb–Mar: 20 m³ from 2027's prior 170 (January): 10 t1, 10 t2:
    #   water 20 + 30, sewage 10 + 15 = ¥75 (with prior 0, as before: 20 t1 = ¥60).
    february = await bill_of(session, served.account_id, date(2027, 2, 1))
    assert (february.prior_cycle_m3, february.amount_fen) == (Decimal("170.0000"), 7500)


async def test_a_final_bill_in_a_dec_jan_bimonthly_period_is_split_at_1_january(session: AsyncSession) -> None:
    served = await even_bimonthly(session, opened_at=at(2026, 12, 1))
    assert served.meter.id is not None
    await ingest(session, served.meter.id, [(month_end(2026, 12), "200"), (at(2027, 1, 20, 9), "250")],
                 now=at(2027, 1, 20, 10))

    await final_charge(session, account_id=served.account_id, at=at(2027, 1, 20, 9), now=at(2027, 1, 20, 10))

    # 1 Dec 2026 – 20 Jan 2027 09:00: December 200 m³ in 2026 (¥630 as above), 1–20 January
    # 50 m³ in 2027, tier 1 (¥150): ¥780.
    final = await bill_of(session, served.account_id, date(2026, 12, 1))
    assert (final.kind, final.cycle_start, final.cycle_volume_m3, final.amount_fen) == (
        "final", Y2027, Decimal("50.0000"), 78000)
    await ledger_adds_up(session)
    await bills_add_up(session)


# --------------------------------------------------------------------------- late usage at a paid bill's end


@pytest.mark.parametrize("paid", [False, True], ids=["unpaid", "paid"])
async def test_late_usage_at_a_month_boundary_costs_the_same_whether_the_bill_is_redone_or_continued(
        session: AsyncSession, paid: bool) -> None:
    # Monthly tiers 0–10 m³ at ¥2, above ¥4; minimum ¥30 a month. December: 20 m³ =
    # 10 × ¥2 + 10 × ¥4 = ¥60. A reading of 31 Dec 23:00 (21) arrives late; the account
    # closes at 1 Jan 00:00.
    raw = tariff(limits=["10"], prices=["2.00", "4.00"], valid_from=date(2025, 1, 1), minimum_monthly_charge="30.00")
    served = await postpaid(session, raw=raw, opened_at=at(2026, 12, 1))
    assert served.meter.id is not None
    await ingest(session, served.meter.id, [(month_end(2026, 12), "20")], now=at(2027, 1, 1))
    if paid:
        await post_entry(session, account_id=served.account_id, kind=EntryKind.payment, amount_fen=6000,
                         ref="payment:1", idempotency_key=unique("ahead"))
    await run(session, date(2026, 12, 1), at(2027, 1, 5), area_id=served.household.area_id)
    december = await bill_of(session, served.account_id, date(2026, 12, 1))
    await ingest(session, served.meter.id, [(at(2026, 12, 31, 23), "21")], now=at(2027, 1, 6))
    before = await balance(session, served.account_id)

    await final_charge(session, account_id=served.account_id, at=at(2027, 1, 1), now=at(2027, 1, 6, 1))

    # Unpaid: December redone at 21 m³, 10 × ¥2 + 11 × ¥4 = ¥64: net ¥4. Paid: December
    # stays, a final bill of January over [1 Jan, 1 Jan) prices the 1 m³ as December's
    # continuation: price(21) − price(20) = ¥4 (not a whole January's ¥30 minimum).
    assert before - await balance(session, served.account_id) == 400
    if paid:
        final = await bill_of(session, served.account_id, date(2027, 1, 1))
        assert (final.kind, final.months, final.volume_m3, final.cycle_start, final.prior_cycle_m3,
                final.amount_fen) == ("final", 1, Decimal("1.0000"), december.cycle_start, Decimal("20.0000"), 400)
        assert await lines_with_cycles(session, final.id) == [("water", 2, "1.0000", 400, date(2026, 12, 1))]
    await ledger_adds_up(session)
    await bills_add_up(session)


@pytest.mark.parametrize("paid", [False, True], ids=["unpaid", "paid"])
async def test_late_usage_absorbs_the_minimum_top_up_the_same_way_redone_or_continued(
        session: AsyncSession, paid: bool) -> None:
    # As above; December 5 m³ = ¥10, topped up to the ¥30 minimum (a ¥20 minimum line).
    # 12 m³ more arrive late (31 Dec 23:00, 17).
    raw = tariff(limits=["10"], prices=["2.00", "4.00"], valid_from=date(2025, 1, 1), minimum_monthly_charge="30.00")
    served = await postpaid(session, raw=raw, opened_at=at(2026, 12, 1))
    assert served.meter.id is not None
    await ingest(session, served.meter.id, [(month_end(2026, 12), "5")], now=at(2027, 1, 1))
    if paid:
        await post_entry(session, account_id=served.account_id, kind=EntryKind.payment, amount_fen=3000,
                         ref="payment:1", idempotency_key=unique("ahead"))
    await run(session, date(2026, 12, 1), at(2027, 1, 5), area_id=served.household.area_id)
    await ingest(session, served.meter.id, [(at(2026, 12, 31, 23), "17")], now=at(2027, 1, 6))
    before = await balance(session, served.account_id)

    await final_charge(session, account_id=served.account_id, at=at(2027, 1, 1), now=at(2027, 1, 6, 1))

    # December at 17 m³: 10 × ¥2 + 7 × ¥4 = ¥48, no top-up: ¥18 more than ¥30 either way.
    assert before - await balance(session, served.account_id) == 1800
    if paid:
        # The continuation's lines: tier 1 5 → 10 m³ (+¥10), tier 2 7 m³ (+¥28), and the
        # ¥20 top-up the late water's charge absorbs (−¥20): ¥18, no minimum of its own.
        final = await bill_of(session, served.account_id, date(2027, 1, 1))
        assert (final.volume_m3, final.amount_fen) == (Decimal("12.0000"), 1800)
        assert await lines_with_cycles(session, final.id) == [
            ("water", 1, "5.0000", 1000, date(2026, 12, 1)), ("water", 2, "7.0000", 2800, date(2026, 12, 1)),
            ("minimum", 0, "0.0000", -2000, date(2026, 12, 1))]
    await ledger_adds_up(session)
    await bills_add_up(session)


async def test_no_late_usage_at_a_paid_bills_end_issues_no_final_bill(session: AsyncSession) -> None:
    raw = tariff(limits=["10"], prices=["2.00", "4.00"], valid_from=date(2025, 1, 1), minimum_monthly_charge="30.00")
    served = await postpaid(session, raw=raw, opened_at=at(2026, 12, 1))
    assert served.meter.id is not None
    await ingest(session, served.meter.id, [(month_end(2026, 12), "20")], now=at(2027, 1, 1))
    await post_entry(session, account_id=served.account_id, kind=EntryKind.payment, amount_fen=6000,
                     ref="payment:1", idempotency_key=unique("ahead"))
    await run(session, date(2026, 12, 1), at(2027, 1, 5), area_id=served.household.area_id)

    charged = await final_charge(session, account_id=served.account_id, at=at(2027, 1, 1), now=at(2027, 1, 6, 1))

    assert (charged.charged_fen, await balance(session, served.account_id)) == (0, 0)
    assert (await session.execute(text("SELECT count(*) FROM bills WHERE account_id = :a AND kind = 'final'"),
                                  {"a": served.account_id})).scalar_one() == 0


@pytest.mark.parametrize("paid", [False, True], ids=["unpaid", "paid"])
async def test_late_december_usage_at_1_january_is_priced_from_decembers_year_to_date(
        session: AsyncSession, paid: bool) -> None:
    # billed_through_november (220 m³ in 2026), December billed at 240: 20 m³ from 220,
    # tier 2: water 20 × ¥3 + sewage 20 × ¥1.5 = ¥90. 30 m³ more arrive late (31 Dec 23:00,
    # 270); the account closes at 1 Jan 2027 00:00.
    served = await billed_through_november(session)
    assert served.meter.id is not None
    await ingest(session, served.meter.id, [(month_end(2026, 12), "240")], now=at(2027, 1, 1))
    if paid:  # Jan–Nov's ¥720, their late fees and December's ¥90 paid ahead
        await post_entry(session, account_id=served.account_id, kind=EntryKind.payment, amount_fen=100000,
                         ref="payment:1", idempotency_key=unique("ahead"))
    await run(session, date(2026, 12, 1), at(2027, 1, 5), area_id=served.household.area_id)
    december = await bill_of(session, served.account_id, date(2026, 12, 1))
    assert (december.amount_fen, december.status) == (9000, "paid" if paid else "open")
    await ingest(session, served.meter.id, [(at(2026, 12, 31, 23), "270")], now=at(2027, 1, 6))
    before = await balance(session, served.account_id)

    await final_charge(session, account_id=served.account_id, at=at(2027, 1, 1), now=at(2027, 1, 6, 1))

    # In 2026's tiers from December's year-to-date 240: 240 → 260 tier 2 (20 m³), 260 → 270
    # tier 3 (10 m³): water 60 + 50, sewage 30 + 20 = ¥160 (redone: ¥250 − ¥90).
    assert before - await balance(session, served.account_id) == 16000
    if paid:
        final = await bill_of(session, served.account_id, Y2027)
        assert (final.cycle_start, final.prior_cycle_m3, final.earlier_cycles, final.amount_fen) == (
            Y2026, Decimal("240.0000"), None, 16000)
        assert await lines_with_cycles(session, final.id) == [
            ("water", 2, "20.0000", 6000, Y2026), ("water", 3, "10.0000", 5000, Y2026),
            ("sewage", 2, "20.0000", 3000, Y2026), ("sewage", 3, "10.0000", 2000, Y2026)]
    await ledger_adds_up(session)
    await bills_add_up(session)
