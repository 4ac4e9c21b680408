"""Prepaid settlement: hourly settlements of a month charge exactly the month's quote, a
late batch into a closed cycle posts exactly the difference as an adjustment, annual
tiers carry across months, and only master-station prepaid accounts are debited."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing import service as tariffs
from backend.billing.models import BillingMode, EntryKind
from backend.billing.settlement import period_pricer, settle_prepaid
from backend.errors import DomainError, ErrorCode
from tests.billing.factories import at, balance, entries, ingest, ledger_sum, served_household, tariff

NOW = at(2026, 12, 6, 12)


async def quote_fen(session: AsyncSession, code: str, volume: str | Decimal, start: date, end: date,
                    prior: str = "0") -> int:
    quote = await tariffs.quote(session, code=code, volume=Decimal(volume), prior_volume=Decimal(prior),
                                start=start, end=end)
    return sum(line.amount_fen for line in quote.lines if line.component != "minimum")


async def test_hourly_settlements_over_a_month_charge_exactly_one_monthly_quote(session: AsyncSession) -> None:
    # Tiers at 10 and 20 m³, four-place prices, and a price change on the 16th: every
    # hourly charge is rounded, yet the month adds up to the quote of the month.
    raw = tariff(limits=[10, 20], prices=["3.4567", "4.1234", "5.0001"])
    served = await served_household(session, raw_tariff=raw, opened_at=at(2026, 10, 31, 12))
    await tariffs.save_tariff(session, raw={**raw, "valid_from": date(2026, 11, 16),
                                            "components": [{"code": "water", "name": "自来水费",
                                                            "prices": ["3.8889", "4.5", "5.7777"]}]})
    hours = [at(2026, 11, 1) + timedelta(hours=h) for h in range(30 * 24 + 1)]
    totals = [Decimal("0.0371") * h + (Decimal("0.9") if h > 300 else 0) for h in range(len(hours))]
    await ingest(session, served.meter.id, list(zip(hours, [str(t) for t in totals], strict=True)), now=NOW)

    for instant in hours[1:]:
        await settle_prepaid(session, account_ids=[served.account_id], as_of=instant)

    month = await quote_fen(session, raw["code"], totals[-1] - totals[0], date(2026, 11, 1), date(2026, 11, 30))
    charged = await entries(session, served.account_id)
    assert -sum(e.amount_fen for e in charged) == month
    # The last settlement, as of the month's end, is the cycle's own (on time): a charge.
    assert {e.kind for e in charged} == {EntryKind.charge}
    assert all(e.cycle_start == date(2026, 11, 1) for e in charged)
    assert await balance(session, served.account_id) == await ledger_sum(session, served.account_id) == -month


async def test_settling_twice_charges_nothing_the_second_time(session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
    await ingest(session, served.meter.id, [(at(2026, 11, 10), "12.5")], now=NOW)
    first = await settle_prepaid(session, account_ids=[served.account_id], as_of=at(2026, 11, 20))
    second = await settle_prepaid(session, account_ids=[served.account_id], as_of=at(2026, 11, 20))
    assert (first.charged, first.charged_fen) == (1, 4321)  # 12.5 m³ × 3.4567 = 43.20875 → ¥43.21
    assert (second.charged, second.charged_fen) == (0, 0)


async def test_a_late_batch_into_last_month_posts_exactly_the_difference_as_an_adjustment(
        session: AsyncSession) -> None:
    raw = tariff(limits=[10], prices=["3.00", "5.00"])
    served = await served_household(session, raw_tariff=raw, opened_at=at(2026, 10, 1))
    await ingest(session, served.meter.id, [(at(2026, 10, 20), "8"), (at(2026, 11, 5), "15")], now=NOW)
    await settle_prepaid(session, account_ids=[served.account_id], as_of=at(2026, 11, 10))
    before = await entries(session, served.account_id)

    # A reading of 31 October arrives late: October used 12 m³, not 8 (its end register
    # was the 20 October reading), and November 3, not 7.
    await ingest(session, served.meter.id, [(at(2026, 10, 31, 23), "12")], now=NOW)
    result = await settle_prepaid(session, account_ids=[served.account_id], as_of=at(2026, 11, 10),
                                  since=at(2026, 10, 31, 23))

    after = (await entries(session, served.account_id))[len(before):]
    october = (await quote_fen(session, raw["code"], "12", date(2026, 10, 1), date(2026, 10, 31))
               - await quote_fen(session, raw["code"], "8", date(2026, 10, 1), date(2026, 10, 31)))
    november = (await quote_fen(session, raw["code"], "3", date(2026, 11, 1), date(2026, 11, 9))
                - await quote_fen(session, raw["code"], "7", date(2026, 11, 1), date(2026, 11, 9)))
    assert [(e.kind, e.amount_fen, e.ref) for e in after] == [
        (EntryKind.adjustment, -october, "cycle:2026-10-01"), (EntryKind.adjustment, -november, "cycle:2026-11-01")]
    assert (october, november) == (1600, -1200)  # 2 m³ more at ¥3 and 2 into tier 2 at ¥5; 4 m³ fewer at ¥3
    assert [e.kind for e in before] == [EntryKind.charge, EntryKind.charge]
    assert result.adjustments == 2
    assert await balance(session, served.account_id) == await ledger_sum(session, served.account_id)


async def test_annual_tiers_carry_across_monthly_settlements(session: AsyncSession) -> None:
    # Beijing-style annual tiers: 180 m³ at ¥5, then ¥7. 20 m³ a month for 12 months.
    raw = tariff(cycle="year", limits=[180, 260], prices=["5.00", "7.00", "9.00"])
    served = await served_household(session, raw_tariff=raw, opened_at=at(2025, 1, 1))
    await ingest(session, served.meter.id, [(at(2025, month, 28), str(20 * month)) for month in range(1, 13)]
                 + [(at(2026, 1, 1), "240")], now=NOW)
    monthly = []
    for month in range(1, 13):
        end = at(2025, month + 1, 1) if month < 12 else at(2026, 1, 1)
        result = await settle_prepaid(session, account_ids=[served.account_id], as_of=end)
        monthly.append(result.charged_fen)
    assert monthly == [10000] * 9 + [14000] * 3  # 180 m³ by September at ¥5, then ¥7
    # December, settled as of the year's end, is the cycle's own settlement: a charge, not an adjustment.
    assert {e.kind for e in await entries(session, served.account_id)} == {EntryKind.charge}
    assert sum(monthly) == await quote_fen(session, raw["code"], "240", date(2025, 1, 1), date(2025, 12, 31))


async def test_card_and_meter_prepaid_accounts_are_not_debited(session: AsyncSession) -> None:
    for mode in (BillingMode.prepaid_card, BillingMode.prepaid_meter, BillingMode.postpaid):
        served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1), mode=mode)
        await ingest(session, served.meter.id, [(at(2026, 11, 10), "12.5")], now=NOW)
        result = await settle_prepaid(session, account_ids=[served.account_id], as_of=at(2026, 11, 20))
        assert result.accounts == 0 and await entries(session, served.account_id) == []


async def test_settlement_reports_accounts_it_moved_to_alert_and_close(session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(prices=["10.00"]), opened_at=at(2026, 11, 1))
    vulnerable = await served_household(session, raw_tariff=tariff(prices=["10.00"]), opened_at=at(2026, 11, 1))
    await session.execute(text("UPDATE accounts SET vulnerable = true WHERE id = :a"), {"a": vulnerable.account_id})
    from backend.billing.ledger import post_entry

    for each in (served, vulnerable):
        await post_entry(session, account_id=each.account_id, kind=EntryKind.recharge, amount_fen=5000, ref="",
                         idempotency_key=f"r:{each.account_id}")
        await ingest(session, each.meter.id, [(at(2026, 11, 3), "3"), (at(2026, 11, 5), "6")], now=NOW)
    ids = [served.account_id, vulnerable.account_id]
    alerted = await settle_prepaid(session, account_ids=ids, as_of=at(2026, 11, 4))  # ¥50 − ¥30 = ¥20
    closed = await settle_prepaid(session, account_ids=ids, as_of=at(2026, 11, 6))  # −¥10
    assert set(alerted.alerted) == set(ids) and alerted.to_close == ()
    assert closed.to_close == (served.account_id,)  # the vulnerable account is never closed for money


async def test_the_run_that_first_reaches_a_cycles_end_is_a_charge_even_minutes_after_midnight(
        session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(prices=["2.00"]), opened_at=at(2026, 10, 1))
    await ingest(session, served.meter.id, [(at(2026, 10, 31, 23), "5"), (at(2026, 11, 1), "6")], now=NOW)
    await settle_prepaid(session, account_ids=[served.account_id], as_of=at(2026, 10, 31, 23) + timedelta(minutes=5))
    await settle_prepaid(session, account_ids=[served.account_id], as_of=at(2026, 11, 1) + timedelta(minutes=5),
                         since=at(2026, 11, 1))
    assert [(e.kind, e.amount_fen) for e in await entries(session, served.account_id)] == [
        (EntryKind.charge, -1000), (EntryKind.charge, -200)]


async def test_a_settlement_dated_before_the_last_one_credits_nothing_back(session: AsyncSession) -> None:
    from backend.billing.accounts import final_charge

    served = await served_household(session, raw_tariff=tariff(prices=["2.00"]), opened_at=at(2026, 11, 1))
    await ingest(session, served.meter.id, [(at(2026, 11, 10), "4"), (at(2026, 11, 20), "10")], now=NOW)
    await settle_prepaid(session, account_ids=[served.account_id], as_of=at(2026, 11, 25))
    await final_charge(session, account_id=served.account_id, at=at(2026, 11, 15))
    assert [(e.kind, e.amount_fen) for e in await entries(session, served.account_id)] == [(EntryKind.charge, -2000)]


async def test_a_tariff_change_prices_only_what_follows_it_and_keeps_the_cycles_tiers(session: AsyncSession) -> None:
    from backend.billing.accounts import AccountTerms, update_account

    old = tariff(limits=[10], prices=["2.00", "3.00"])
    served = await served_household(session, raw_tariff=old, opened_at=at(2026, 11, 1))
    new = tariff(limits=[10], prices=["4.00", "5.00"])
    await tariffs.save_tariff(session, raw=new)
    await ingest(session, served.meter.id, [(at(2026, 11, 10), "8"), (at(2026, 11, 20), "14")], now=NOW)
    await update_account(session, account_id=served.account_id, terms=AccountTerms(tariff_code=new["code"]),
                         now=at(2026, 11, 15))  # 8 m³ used under the old tariff: ¥16.00 settled and frozen
    await settle_prepaid(session, account_ids=[served.account_id], as_of=at(2026, 11, 25))
    # 6 m³ more under the new tariff, from 8 m³ into the cycle: 2 m³ in tier 1 at ¥4, 4 m³ at ¥5.
    assert [(e.kind, e.amount_fen) for e in await entries(session, served.account_id)] == [
        (EntryKind.charge, -1600), (EntryKind.charge, -2800)]

    yearly = tariff(cycle="year", prices=["2.00"])
    await tariffs.save_tariff(session, raw=yearly)
    with pytest.raises(DomainError) as refused:
        await update_account(session, account_id=served.account_id, terms=AccountTerms(tariff_code=yearly["code"]),
                             now=at(2026, 11, 26))
    assert refused.value.code is ErrorCode.TARIFF_INVALID
    with pytest.raises(DomainError) as refused:
        await tariffs.save_tariff(session, raw={**new, "cycle": "year", "valid_from": date(2027, 1, 1)})
    assert refused.value.code is ErrorCode.TARIFF_INVALID


async def test_closing_is_refused_while_a_late_reading_waits_for_its_settlement(session: AsyncSession) -> None:
    from backend.billing.accounts import close_settled_account

    served = await served_household(session, raw_tariff=tariff(prices=["2.00"]), opened_at=at(2026, 11, 1))
    await settle_prepaid(session, account_ids=[served.account_id], as_of=at(2026, 11, 25))
    # A reading of the 20th arrives after the account was settled to the 25th; its batch's
    # handler has not run yet. The balance is zero, but the close must wait.
    await ingest(session, served.meter.id, [(at(2026, 11, 20), "3")], now=NOW)
    with pytest.raises(DomainError) as refused:
        await close_settled_account(session, account_id=served.account_id, now=NOW, by="柜员")
    assert refused.value.code is ErrorCode.ACCOUNT_UNSETTLED
    assert await entries(session, served.account_id) == []


async def test_the_batch_pricer_totals_exactly_what_price_period_does(session: AsyncSession) -> None:
    # Settlement prices a batch with period_pricer (segments and rules worked out once per
    # group of windows); it must total price_period's lines to the fen: tiers, household
    # size, the sewage coefficient and a price change inside the period, with 4-place
    # volumes that land on and around tier limits and day shares that round.
    raw = {**tariff(limits=["10.5", 20], prices=["3.4567", "4.1234", "5.0001"]),
           "household_size": {"base_persons": 3, "extra_m3_per_person": "2.5"}, "sewage_coefficient": "0.85"}
    raw["components"] = [*raw["components"], {"code": "sewage", "name": "污水处理费", "prices": ["1.3333"] * 3},
                         {"code": "other:garbage", "name": "垃圾费", "prices": ["0.1", "0.2", "0.3"]}]
    await tariffs.save_tariff(session, raw=raw)
    await tariffs.save_tariff(session, raw={**raw, "valid_from": date(2026, 11, 11),
                                            "tier_limits": [12, 24], "sewage_coefficient": "0.9"})
    versions = await tariffs.tariff_versions(session, code=raw["code"])
    volumes = [Decimal(v) for v in ("0", "0.0001", "10.5", "10.5001", "13", "19.9999", "20", "25.0049", "31.4159",
                                    "123.4567")]
    for persons in (None, 2, 3, 5):
        for start, end in ((date(2026, 11, 1), date(2026, 11, 30)), (date(2026, 11, 3), date(2026, 11, 10)),
                           (date(2026, 11, 7), date(2026, 11, 19)), (date(2026, 11, 11), date(2026, 11, 11))):
            pricer = period_pricer(versions, persons=persons, start=start, end=end)
            for volume in volumes:
                for prior in (Decimal(0), Decimal("8.25")):  # 8.25 m³ frozen by a tariff change
                    lines = tariffs.price_period(versions, volume=volume, prior=prior, persons=persons, start=start,
                                                 end=end, minimum=False)
                    assert pricer(volume, prior) == sum(line.amount_fen for line in lines), (
                        persons, start, end, volume, prior)
