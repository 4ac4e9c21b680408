"""The billing run's money fixes from review (issue 17): a bill covers the span from the
account's previous live bill to the period end, so nothing is billed twice or lumped at
one month's tiers; an earlier period waits for its review before a later one is billed;
a run locks monthly and bimonthly accounts in one id order; a final bill credits
over-billed volume at the rates it was billed at; a prepaid settlement's charge counts as
priced; a void after a waiver writes the fee off once; runs over the whole utility are
for callers whose scope covers the whole utility. Every figure is worked by hand in the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.alarms.models import Alarm, AlarmKind, AlarmStatus, AlarmSubjectKind
from backend.archives.models import AreaKind
from backend.archives.service import create_area
from backend.archives.service.assignments import replace_meter
from backend.billing import bills, review
from backend.billing.accounts import CHARGEABLE_MODES, final_charge
from backend.billing.bills_models import BillingRun
from backend.billing.checks import _BILLS_DISAGREEING
from backend.billing.errors import AccountUnsettled, BillPaid
from backend.billing.late_fees import post_late_fees, waive_late_fee
from backend.billing.ledger import lock_accounts, post_entry
from backend.billing.models import EntryKind
from backend.billing.settlement import settle_accounts
from backend.db import create_engine, session_factory
from backend.readings.entry import correct_reading
from tests.billing.bill_factory import make_bill, postpaid_account
from tests.billing.factories import at, balance, entries, ingest, tariff
from tests.billing.test_bills_run import bill_of, ledger_adds_up, lines_of, month_end, postpaid, run
from tests.factories import unique
from tests.readings.factories import make_meter


async def live_bills(session: AsyncSession, account_id: int) -> list[tuple[str, str, int, str, int]]:
    """(period, kind, months, volume, amount) of the account's live bills, oldest first."""
    rows = (await session.execute(text(
        "SELECT period, kind, months, volume_m3, amount_fen FROM bills WHERE account_id = :a AND status <> 'voided' "
        "ORDER BY period_end"), {"a": account_id})).all()
    return [(str(r.period), r.kind, r.months, str(r.volume_m3), r.amount_fen) for r in rows]


async def bills_add_up(session: AsyncSession) -> None:
    """``shuiwu check``'s billing.bills statement, in the test's transaction."""
    assert (await session.execute(_BILLS_DISAGREEING)).one().wrong == 0


# --------------------------------------------------------------------------- periods billed out of order


async def test_a_later_period_waits_for_an_earlier_ones_review_and_each_m3_is_billed_once(
        session: AsyncSession) -> None:
    # ¥2/m³. The register reads 10 on 31 Oct and 25 on 30 Nov; a high-use alarm open in October.
    raw = tariff(prices=["2.00"], valid_from=date(2025, 1, 1))
    served = await postpaid(session, raw=raw, opened_at=at(2026, 10, 1))
    area_id = served.household.area_id
    await ingest(session, served.meter.id, [(month_end(2026, 10), "10"), (month_end(2026, 11), "25")],  # type: ignore[arg-type]
                 now=at(2026, 12, 5))
    session.add(Alarm(subject_kind=AlarmSubjectKind.meter, subject_id=served.meter.id, kind=AlarmKind.high_use,
                      status=AlarmStatus.closed, opened_at=at(2026, 10, 10), last_seen_at=at(2026, 10, 10),
                      closed_at=at(2026, 10, 20)))
    await session.flush()
    october = await run(session, date(2026, 10, 1), at(2026, 11, 5), area_id=area_id)
    assert (october.issued, [h.account_id for h in october.held]) == (0, [served.account_id])

    # November is clean, but October's review is pending: November is held by it too
    # (billed now, it would take October's 10 m³ and October's bill would bill them again).
    november = await run(session, date(2026, 11, 1), at(2026, 12, 5), area_id=area_id)
    assert (november.issued, [h.review_id for h in november.held]) == (0, [october.held[0].review_id])

    await review.approve_review(session, review_id=october.held[0].review_id, reason="核实无误", by="审核员",
                                now=at(2026, 12, 6), scope_patterns=None)
    await run(session, date(2026, 10, 1), at(2026, 12, 6), area_id=area_id)
    await run(session, date(2026, 11, 1), at(2026, 12, 6), area_id=area_id)
    # October 10 m³ × ¥2 = ¥20; November 25 − 10 = 15 m³ × ¥2 = ¥30: 25 m³ billed once.
    assert await live_bills(session, served.account_id) == [
        ("2026-10-01", "regular", 1, "10.0000", 2000), ("2026-11-01", "regular", 1, "15.0000", 3000)]


async def test_a_final_bill_covers_an_unbilled_month_at_two_months_of_tiers_and_the_month_is_not_billed_again(
        session: AsyncSession) -> None:
    # Monthly tiers 0–10 m³ at ¥2, above at ¥4; minimum ¥5 a month. Opened 1 Oct; reads 10
    # on 31 Oct and 12 when the account closes on 3 Nov 09:00, October never billed.
    raw = tariff(limits=["10"], prices=["2.00", "4.00"], valid_from=date(2025, 1, 1), minimum_monthly_charge="5.00")
    served = await postpaid(session, raw=raw, opened_at=at(2026, 10, 1))
    await ingest(session, served.meter.id, [(month_end(2026, 10), "10"), (at(2026, 11, 3, 9), "12")],  # type: ignore[arg-type]
                 now=at(2026, 11, 3, 10))

    await final_charge(session, account_id=served.account_id, at=at(2026, 11, 3, 9), now=at(2026, 11, 3, 10))

    # The span 1 Oct – 3 Nov 09:00 touches 2 months: tier limit 2 × 10 = 20 m³, minimum 2 × ¥5.
    # 12 m³ × ¥2 = ¥24 (one month's tiers would say 10 × ¥2 + 2 × ¥4 = ¥28).
    final = await bill_of(session, served.account_id, date(2026, 11, 1))
    assert (final.kind, final.months, final.period_start, final.period_end) == (
        "final", 2, at(2026, 10, 1), at(2026, 11, 3, 9))
    assert await lines_of(session, final.id) == [("water", 1, "12.0000", "2.0000", 2400)]

    # October's run afterwards finds it covered by the final bill.
    october = await run(session, date(2026, 10, 1), at(2026, 11, 5), area_id=served.household.area_id)
    assert (october.issued, october.already_billed) == (0, 1)
    assert await live_bills(session, served.account_id) == [("2026-11-01", "final", 2, "12.0000", 2400)]


async def test_switching_a_bimonthly_area_to_monthly_does_not_bill_the_second_month_again(
        session: AsyncSession) -> None:
    raw = tariff(limits=["10"], prices=["2.00", "4.00"], valid_from=date(2025, 1, 1), minimum_monthly_charge="30.00")
    company = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    served = await postpaid(session, raw=raw, opened_at=at(2026, 1, 1), area_id=company.id)
    await ingest(session, served.meter.id, [(month_end(2026, 1), "2"), (month_end(2026, 2), "5")],  # type: ignore[arg-type]
                 now=at(2026, 3, 5))
    await bills.set_area_billing_cycle(session, area_id=company.id, months=2, first_month=1, by="主管",
                                       now=at(2026, 1, 1))
    await run(session, date(2026, 1, 1), at(2026, 3, 5), area_id=company.id)
    await bills.set_area_billing_cycle(session, area_id=company.id, months=1, by="主管", now=at(2026, 3, 6))

    february = await run(session, date(2026, 2, 1), at(2026, 3, 6), area_id=company.id)

    # Jan–Feb: 5 m³ × ¥2 = ¥10, below the minimum 2 × ¥30 = ¥60. February is inside it.
    assert (february.issued, february.already_billed) == (0, 1)
    assert await live_bills(session, served.account_id) == [("2026-01-01", "regular", 2, "5.0000", 6000)]


# --------------------------------------------------------------------------- money already priced, or over-billed


async def test_usage_charged_by_a_settlement_cycle_is_not_billed_again(session: AsyncSession) -> None:
    raw = tariff(prices=["2.00"], valid_from=date(2026, 1, 1))
    served = await postpaid(session, raw=raw, opened_at=at(2026, 9, 1))
    await ingest(session, served.meter.id, [(at(2026, 10, 10), "8"), (month_end(2026, 10), "12")],  # type: ignore[arg-type]
                 now=at(2026, 11, 1))
    # A legacy postpaid transfer settled 8 m³ × ¥2 = ¥16 by a prepaid cycle (kind charge).
    await settle_accounts(session, account_ids=[served.account_id], as_of=at(2026, 10, 10, 1), modes=CHARGEABLE_MODES,
                          tz="Asia/Shanghai", posted_by="过户结算")

    await run(session, date(2026, 10, 1), at(2026, 11, 5), area_id=served.household.area_id)

    # The bill prices only 12 − 8 = 4 m³ × ¥2 = ¥8: ¥16 + ¥8 = 12 m³ × ¥2.
    assert [(str(e.kind), e.amount_fen) for e in await entries(session, served.account_id)] == [
        ("charge", -1600), ("bill", -800)]


async def over_billed_october(session: AsyncSession) -> Any:
    """Monthly tiers 0–10 m³ at ¥2, above at ¥4; October billed at 20 m³ (¥60), its reading
    then corrected to 15, and a reading of 16 on 3 Nov 09:00 (the closing)."""
    raw = tariff(limits=["10"], prices=["2.00", "4.00"], valid_from=date(2025, 1, 1))
    served = await postpaid(session, raw=raw, opened_at=at(2026, 10, 1))
    await ingest(session, served.meter.id, [(month_end(2026, 10), "20")], now=at(2026, 11, 1))  # type: ignore[arg-type]
    await run(session, date(2026, 10, 1), at(2026, 11, 5), area_id=served.household.area_id)
    await correct_reading(session, meter_id=served.meter.id, read_at=month_end(2026, 10), total_m3=Decimal("15"),
                          reason="抄错", by="审核员", now=at(2026, 11, 6), scope_patterns=None)
    await ingest(session, served.meter.id, [(at(2026, 11, 3, 9), "16")], now=at(2026, 11, 6, 1))  # type: ignore[arg-type]
    return served


async def test_a_final_bill_credits_over_billed_volume_at_the_rates_it_was_billed_at(session: AsyncSession) -> None:
    # Monthly tiers 0–10 m³ at ¥2, above at ¥4. October billed at 20 m³:
    # 10 × ¥2 + 10 × ¥4 = ¥60. Its reading is then corrected to 15, and the account closes
    # on 3 Nov 09:00 reading 16: 4 m³ were over-billed, all in October's tier 2.
    served = await over_billed_october(session)

    charged = await final_charge(session, account_id=served.account_id, at=at(2026, 11, 3, 9), now=at(2026, 11, 6, 2))

    # Credit: price(20) − price(16) = ¥60 − (10 × ¥2 + 6 × ¥4 = ¥44) = ¥16.
    final = await bill_of(session, served.account_id, date(2026, 11, 1))
    assert (final.volume_m3, final.credited_m3, final.credit_fen, final.amount_fen) == (
        Decimal("0.0000"), Decimal("4.0000"), 1600, 0)
    assert charged.charged_fen == -1600
    assert [(str(e.kind), e.amount_fen, e.ref) for e in await entries(session, served.account_id)] == [
        ("bill", -6000, f"bill:{(await bill_of(session, served.account_id, date(2026, 10, 1))).id}"),
        ("adjustment", 1600, f"bill:{final.id}")]
    # Net ¥44: 16 m³ as one month's tiers price them; nothing is left unbilled.
    assert await balance(session, served.account_id) == -4400
    assert await bills.unbilled_m3(session, account_id=served.account_id, household_id=served.household.id,  # type: ignore[arg-type]
                                   opened_at=at(2026, 10, 1), to=at(2026, 11, 3, 9)) == 0
    await ledger_adds_up(session)
    await bills_add_up(session)
    # Again: nothing changes.
    again = await final_charge(session, account_id=served.account_id, at=at(2026, 11, 3, 9), now=at(2026, 11, 6, 3))
    assert (again.charged, await balance(session, served.account_id)) == (0, -4400)


async def test_a_final_bill_whose_credit_paid_other_bills_cannot_be_voided_or_redone(session: AsyncSession) -> None:
    # October billed 20 m³ (¥60), corrected to 15; the final bill at 16 credits ¥16, which
    # pays ¥16 of October. Undoing that credit would leave October paid by money that is gone.
    served = await over_billed_october(session)
    await final_charge(session, account_id=served.account_id, at=at(2026, 11, 3, 9), now=at(2026, 11, 6, 2))
    final = await bill_of(session, served.account_id, date(2026, 11, 1))
    assert final.credit_fen == 1600 and final.id is not None

    with pytest.raises(BillPaid):
        await bills.void_bill(session, bill_id=final.id, reason="重算", by="主管", now=at(2026, 11, 7), reissue=True)
    await ingest(session, served.meter.id, [(at(2026, 11, 8, 9), "17")], now=at(2026, 11, 8, 10))  # type: ignore[arg-type]
    with pytest.raises(AccountUnsettled):
        await final_charge(session, account_id=served.account_id, at=at(2026, 11, 8, 9), now=at(2026, 11, 8, 11))

    assert await balance(session, served.account_id) == -4400
    await ledger_adds_up(session)
    await bills_add_up(session)


async def test_a_bill_after_a_final_bill_does_not_count_the_final_bills_month_again(session: AsyncSession) -> None:
    # Minimum ¥30 a month. A final bill on 3 Nov 09:00 charged November's minimum; the
    # account stayed open (its final bill unpaid), the meter showed no more use. December's
    # bill spans 3 Nov 09:00 – 1 Jan but counts December alone: one minimum, ¥30.
    raw = tariff(limits=["10"], prices=["2.00", "4.00"], valid_from=date(2025, 1, 1), minimum_monthly_charge="30.00")
    served = await postpaid(session, raw=raw, opened_at=at(2026, 10, 1))
    await ingest(session, served.meter.id, [(month_end(2026, 10), "20")], now=at(2026, 11, 1))  # type: ignore[arg-type]
    await run(session, date(2026, 10, 1), at(2026, 11, 5), area_id=served.household.area_id)
    await ingest(session, served.meter.id, [(at(2026, 11, 3, 9), "21")], now=at(2026, 11, 3, 10))  # type: ignore[arg-type]
    await final_charge(session, account_id=served.account_id, at=at(2026, 11, 3, 9), now=at(2026, 11, 5, 10))
    await ingest(session, served.meter.id, [(month_end(2026, 11), "21"), (month_end(2026, 12), "21")],  # type: ignore[arg-type]
                 now=at(2027, 1, 1))

    await run(session, date(2026, 11, 1), at(2026, 12, 5), area_id=served.household.area_id)
    await run(session, date(2026, 12, 1), at(2027, 1, 5), area_id=served.household.area_id)

    december = await bill_of(session, served.account_id, date(2026, 12, 1))
    assert (december.months, december.volume_m3, december.amount_fen) == (1, Decimal("0.0000"), 3000)


async def test_a_review_is_not_prepared_for_a_period_already_billed(session: AsyncSession) -> None:
    # A billed October, then its meter replaced on 10 Nov: the scheduled job's re-run of
    # October (another account is still held) must not hold it on its new meter's
    # missing October reading, which would hold November too.
    raw = tariff(prices=["2.00"], valid_from=date(2025, 1, 1))
    company = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    billed = await postpaid(session, raw=raw, opened_at=at(2026, 10, 1), area_id=company.id)
    held = await postpaid(session, raw=raw, opened_at=at(2026, 10, 1), area_id=company.id)
    await ingest(session, billed.meter.id, [(month_end(2026, 10), "10")], now=at(2026, 11, 1))  # type: ignore[arg-type]
    await ingest(session, held.meter.id, [(at(2026, 10, 15), "5")], now=at(2026, 11, 1))  # type: ignore[arg-type]
    october = await run(session, date(2026, 10, 1), at(2026, 11, 5), area_id=company.id)
    assert october.issued == 1 and [h.account_id for h in october.held] == [held.account_id]
    new = await make_meter(session, area_id=company.id, install_date=None)
    await replace_meter(session, old_meter_id=billed.meter.id, new_meter_id=new.id, replaced_at=at(2026, 11, 10, 10),
                        old_final_reading=Decimal("13"), new_initial_reading=Decimal("0"), replaced_by="维修",
                        now=at(2026, 11, 10, 11))

    again = await run(session, date(2026, 10, 1), at(2026, 11, 11), area_id=company.id)
    await ingest(session, new.id, [(month_end(2026, 11), "7")], now=at(2026, 12, 1))  # type: ignore[arg-type]
    november = await run(session, date(2026, 11, 1), at(2026, 12, 5), area_id=company.id,
                         account_ids=[billed.account_id])

    assert [h.account_id for h in again.held] == [held.account_id]
    assert (november.issued, november.held) == (1, ())
    # 13 − 10 on the old meter and 7 on the new one.
    assert (await bill_of(session, billed.account_id, date(2026, 11, 1))).volume_m3 == Decimal("10.0000")


async def test_a_scoped_callers_run_without_an_area_is_recorded_as_their_subtrees(session: AsyncSession) -> None:
    company = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    await create_area(session, name=unique("另一公司"), kind=AreaKind.company)
    scope = [company.path + "%"]

    done = await bills.run_billing(session, period=date(2019, 3, 1), now=at(2019, 4, 5), by="片区", scope_patterns=scope)

    runs, total = await bills.billing_runs(session, period=None, run_id=done.run_id, scope_patterns=scope, offset=0,
                                           limit=5)
    assert ([r.area_id for r in runs], total) == ([company.id], 1)


# --------------------------------------------------------------------------- void after a waiver


async def test_voiding_a_bill_whose_late_fee_was_waived_writes_the_fee_off_once(session: AsyncSession) -> None:
    served = await postpaid_account(session, opened_at=at(2026, 1, 1))
    bill = await make_bill(session, served, period=date(2026, 10, 1), amount_fen=10000, due_date=date(2026, 11, 20))
    # 10 days overdue × 0.5‰ × ¥100 = ¥0.50 posted, then waived (written off).
    await post_late_fees(session, on=date(2026, 11, 30), account_ids=[served.account_id], now=at(2026, 12, 1, 8))
    await waive_late_fee(session, bill_id=bill.id, reason="困难户", by="主管", now=at(2026, 12, 2, 10))

    await bills.void_bill(session, bill_id=bill.id, reason="读数错误", by="主管", now=at(2026, 12, 3, 10))

    assert [(str(e.kind), e.amount_fen) for e in await entries(session, served.account_id)] == [
        ("bill", -10000), ("late_fee", -50), ("write_off", 50), ("reversal", 10000)]
    assert await balance(session, served.account_id) == 0
    await bills_add_up(session)
    # A second write-off of the fee is what the check catches.
    await post_entry(session, account_id=served.account_id, kind=EntryKind.write_off, amount_fen=50,
                     ref=f"bill:{bill.id}", idempotency_key=unique("twice"))
    assert (await session.execute(_BILLS_DISAGREEING)).one().wrong == 1


# --------------------------------------------------------------------------- runs listed by scope


async def test_a_whole_utility_run_is_listed_only_to_callers_whose_scope_covers_the_utility(
    session: AsyncSession,
) -> None:
    company = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    other = await create_area(session, name=unique("另一公司"), kind=AreaKind.company)
    roots = [row.path + "%" for row in (await session.execute(text("SELECT path FROM areas WHERE parent_id IS NULL")))]
    period = date(2019, 1, 1)  # a period no other test runs
    whole = BillingRun(period=period, area_id=None, started_by="出账员", started_at=at(2019, 2, 5))
    own = BillingRun(period=period, area_id=company.id, started_by="出账员", started_at=at(2019, 2, 5))
    session.add_all([whole, own])
    await session.flush()

    unscoped, _ = await bills.billing_runs(session, period=period, scope_patterns=None, offset=0, limit=10)
    everywhere, _ = await bills.billing_runs(session, period=period, scope_patterns=roots, offset=0, limit=10)
    scoped, total = await bills.billing_runs(session, period=period, scope_patterns=[company.path + "%"], offset=0,
                                             limit=10)
    elsewhere, _ = await bills.billing_runs(session, period=period, scope_patterns=[other.path + "%"], offset=0,
                                            limit=10)

    assert [r.id for r in unscoped] == [r.id for r in everywhere] == [own.id, whole.id]
    assert ([r.id for r in scoped], total) == ([own.id], 1)
    assert elsewhere == []


# --------------------------------------------------------------------------- lock order


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url, pool_size=4, max_overflow=0)
    yield session_factory(engine)
    await engine.dispose()


async def test_a_run_over_monthly_and_bimonthly_accounts_locks_in_one_id_order(
        committed_sessions: async_sessionmaker[AsyncSession], pool: async_sessionmaker[AsyncSession]) -> None:
    # Accounts monthly m1 < bimonthly b1 < monthly m2. Locking group by group (m1, m2, then
    # b1) while another writer holds b1 and then wants m2 deadlocks; id order never does.
    raw = tariff(prices=["2.00"], valid_from=date(2025, 1, 1))
    async with committed_sessions() as session, session.begin():
        company = await create_area(session, name=unique("公司"), kind=AreaKind.company)
        estate = await create_area(session, name=unique("小区"), kind=AreaKind.community, parent_id=company.id)
        m1 = await postpaid(session, raw=raw, opened_at=at(2026, 1, 1), area_id=company.id)
        b1 = await postpaid(session, raw=raw, opened_at=at(2026, 1, 1), area_id=estate.id)
        m2 = await postpaid(session, raw=raw, opened_at=at(2026, 1, 1), area_id=company.id)
        for one in (m1, b1, m2):
            await ingest(session, one.meter.id, [(month_end(2026, 1), "5"), (month_end(2026, 2), "10")],  # type: ignore[arg-type]
                         now=at(2026, 3, 5))
        await bills.set_area_billing_cycle(session, area_id=estate.id, months=2, first_month=1, by="主管",
                                           now=at(2026, 1, 1))
    holding = asyncio.Event()

    async def other_writer() -> None:
        async with pool() as session, session.begin():
            await lock_accounts(session, [b1.account_id])
            holding.set()
            await asyncio.sleep(1)
            await lock_accounts(session, [m2.account_id])

    async def billing() -> bills.BillingRunResult:
        await holding.wait()
        async with pool() as session, session.begin():
            return await bills.run_billing(session, period=date(2026, 1, 1), area_id=company.id, now=at(2026, 3, 5),
                                           by="出账员")

    _, result = await asyncio.wait_for(asyncio.gather(other_writer(), billing()), timeout=30)
    # January for m1 and m2 (5 m³ × ¥2), January–February for b1 (10 m³ × ¥2).
    assert (result.issued, result.amount_fen) == (3, 1000 + 2000 + 1000)
