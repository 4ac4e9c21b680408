"""Tariffs (水价) at the service: the two shipped example files, hand-worked quotes
(annual tiers carried across monthly charges, household size, minimum charge, a price
change inside a period, the sewage coefficient, rounding once half-up), validation that
writes nothing, and versions that load once."""

from __future__ import annotations

import tomllib
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing import service
from backend.billing.errors import TariffNotInForce, TariffPricePlaces, TariffTiersMismatch, TariffVersionConflict
from backend.billing.models import Tariff
from backend.errors import DomainError, ErrorCode

EXAMPLES = Path(__file__).resolve().parents[2] / "tariffs" / "examples"


def example(name: str) -> dict[str, Any]:
    return tomllib.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def monthly(code: str, *, valid_from: date = date(2024, 1, 1), limits: list[Any] | None = None,
            prices: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """A one-component monthly tariff (tests write only what they pin down)."""
    return {"code": code, "name": "测试水价", "customer_type": "non_residential", "valid_from": valid_from,
            "cycle": "month", "tier_limits": limits or [], "components": [
                {"code": "water", "name": "自来水费", "prices": prices or ["3.45"]}], **extra}


async def count_tariffs(session: AsyncSession) -> int:
    return (await session.execute(select(func.count()).select_from(Tariff))).scalar_one()


async def test_the_issues_shanghai_example_quotes_exactly_the_issues_json(session: AsyncSession) -> None:
    await service.save_tariff(session, raw=example("sh-res-2024.toml"))
    quote = await service.quote(session, code="SH-RES", volume=Decimal(230), on=date(2024, 6, 1))
    assert quote.as_json() == {"tariff": "SH-RES", "volume": "230.0000", "lines": [
        {"component": "water", "tier": 1, "volume": "220.0000", "price": "1.9200", "amount": "422.40"},
        {"component": "water", "tier": 2, "volume": "10.0000", "price": "3.3000", "amount": "33.00"},
        {"component": "sewage", "tier": 1, "volume": "220.0000", "price": "1.5300", "amount": "336.60"},
        {"component": "sewage", "tier": 2, "volume": "10.0000", "price": "1.5300", "amount": "15.30"}],
        "total": "807.30"}


async def test_beijing_residential_2024_two_hundred_m3_in_a_year_costs_1040_yuan(session: AsyncSession) -> None:
    await service.save_tariff(session, raw=example("bj-res-2024.toml"))
    quote = await service.quote(session, code="BJ-RES", volume=Decimal(200), on=date(2024, 12, 31))
    # 180 m³ at 5.00 (2.07 + 1.57 + 1.36) and 20 m³ at 7.00 (4.07 + 1.57 + 1.36).
    assert [(line["component"], line["tier"], line["amount"]) for line in quote.as_json()["lines"]] == [
        ("water", 1, "372.60"), ("water", 2, "81.40"), ("resource", 1, "282.60"), ("resource", 2, "31.40"),
        ("sewage", 1, "244.80"), ("sewage", 2, "27.20")]
    assert quote.as_json()["total"] == "1040.00"


async def test_annual_tiers_carry_across_monthly_charges_through_the_prior_volume(session: AsyncSession) -> None:
    await service.save_tariff(session, raw=example("bj-res-2024.toml"))
    # Up to November the household used 170 m³ (all tier 1: 170 × 5.00 = 850.00).
    november = await service.quote(session, code="BJ-RES", volume=Decimal(170), on=date(2024, 11, 30))
    # December's 20 m³: 10 left in tier 1 (50.00), 10 in tier 2 (70.00).
    december = await service.quote(session, code="BJ-RES", volume=Decimal(20), prior_volume=Decimal(170),
                                   on=date(2024, 12, 31))
    assert [(line.component, line.tier, str(line.volume)) for line in december.lines] == [
        ("water", 1, "10.0000"), ("water", 2, "10.0000"), ("resource", 1, "10.0000"), ("resource", 2, "10.0000"),
        ("sewage", 1, "10.0000"), ("sewage", 2, "10.0000")]
    assert (november.total_fen, december.total_fen) == (85000, 12000)
    whole_year = await service.quote(session, code="BJ-RES", volume=Decimal(190), on=date(2024, 12, 31))
    assert november.total_fen + december.total_fen == whole_year.total_fen == 97000


async def test_household_size_grows_every_limit_only_for_persons_above_the_base(session: AsyncSession) -> None:
    await service.save_tariff(session, raw=example("bj-res-2024.toml"))

    async def total(persons: int | None) -> str:
        quote = await service.quote(session, code="BJ-RES", volume=Decimal(250), persons=persons, on=date(2024, 7, 1))
        return str(quote.as_json()["total"])

    # 7 persons, base 5: +60 m³ on each limit (240, 320): 240 × 5.00 + 10 × 7.00.
    assert await total(7) == "1270.00"
    # Without persons, or at the base: 180 × 5.00 + 70 × 7.00.
    assert await total(None) == await total(5) == "1390.00"


async def test_a_minimum_monthly_charge_tops_up_a_small_month_only(session: AsyncSession) -> None:
    await service.save_tariff(session, raw=monthly("MIN", minimum_monthly_charge="10.00"))
    small = await service.quote(session, code="MIN", volume=Decimal(2), on=date(2024, 3, 1))
    # 2 × 3.45 = 6.90, topped up by 3.10 to the minimum 10.00.
    assert [(line["component"], line["amount"]) for line in small.as_json()["lines"]] == [
        ("water", "6.90"), ("minimum", "3.10")]
    assert small.as_json()["total"] == "10.00"
    large = await service.quote(session, code="MIN", volume=Decimal(3), on=date(2024, 3, 1))
    assert [line["component"] for line in large.as_json()["lines"]] == ["water"]
    assert large.as_json()["total"] == "10.35"


async def test_a_price_change_inside_a_period_prorates_the_volume_by_days(session: AsyncSession) -> None:
    await service.save_tariff(session, raw=monthly("CHG", limits=[25], prices=["2.00", "4.00"]))
    await service.save_tariff(session, raw=monthly("CHG", valid_from=date(2024, 1, 21), limits=[25],
                                                   prices=["3.00", "5.00"]))
    quote = await service.quote(session, code="CHG", volume=Decimal(31), start=date(2024, 1, 1), end=date(2024, 1, 31))
    # 20 of 31 days under the old prices: 20 m³, all tier 1 (40.00). The last 11 days'
    # 11 m³ continue the cycle at 20 m³: 5 in tier 1 at 3.00 (15.00), 6 in tier 2 at 5.00 (30.00).
    assert quote.as_json() == {"tariff": "CHG", "volume": "31.0000", "lines": [
        {"component": "water", "tier": 1, "volume": "20.0000", "price": "2.0000", "amount": "40.00",
         "valid_from": "2024-01-01"},
        {"component": "water", "tier": 1, "volume": "5.0000", "price": "3.0000", "amount": "15.00",
         "valid_from": "2024-01-21"},
        {"component": "water", "tier": 2, "volume": "6.0000", "price": "5.0000", "amount": "30.00",
         "valid_from": "2024-01-21"}], "total": "85.00"}
    # Before the first version nothing is in force.
    with pytest.raises(TariffNotInForce):
        await service.quote(session, code="CHG", volume=Decimal(1), start=date(2023, 12, 31), end=date(2024, 1, 5))


async def test_the_sewage_coefficient_bills_that_share_of_the_volume_as_sewage(session: AsyncSession) -> None:
    raw = monthly("SEW", sewage_coefficient="0.9")
    raw["components"].append({"code": "sewage", "name": "污水处理费", "prices": ["1.53"]})
    await service.save_tariff(session, raw=raw)
    quote = await service.quote(session, code="SEW", volume=Decimal(10), on=date(2024, 5, 1))
    # Water on 10 m³ (34.50); sewage on 9 m³ × 1.53 = 13.77.
    assert [(line["component"], line["volume"], line["amount"]) for line in quote.as_json()["lines"]] == [
        ("water", "10.0000", "34.50"), ("sewage", "9.0000", "13.77")]


async def test_each_line_is_rounded_once_half_up_to_the_fen(session: AsyncSession) -> None:
    await service.save_tariff(session, raw=monthly("RND", prices=["1.0000"]))
    # 0.0050 m³ × 1.0000 = 0.5 fen: half-up gives 1 fen (banker's rounding would give 0).
    half = await service.quote(session, code="RND", volume=Decimal("0.0050"), on=date(2024, 5, 1))
    assert half.total_fen == 1
    assert service.line_fen(Decimal("0.3333"), Decimal("1.9200")) == 64  # 63.9936 fen


@pytest.mark.parametrize(("change", "error_code", "field"), [
    ({"tier_limits": [220, 300], "components": [{"code": "water", "name": "水费", "prices": ["1.92", "3.30"]}]},
     ErrorCode.TARIFF_TIERS_MISMATCH, "components.prices"),
    ({"components": [{"code": "water", "name": "水费", "prices": ["1.92345"]}]},
     ErrorCode.TARIFF_PRICE_PLACES, "components.prices"),
    ({"components": [{"code": "water", "name": "水费", "prices": [1.92]}]},  # a float cannot carry a price
     ErrorCode.TARIFF_PRICE_PLACES, "components.prices"),
    ({"minimum_monthly_charge": "10.001"}, ErrorCode.INVALID_MONEY, "minimum_monthly_charge"),
    ({"tier_limits": [300, 220], "components": [{"code": "water", "name": "水费", "prices": ["1", "2", "3"]}]},
     ErrorCode.TARIFF_INVALID, "tier_limits"),
    ({"components": [{"code": "gas", "name": "燃气", "prices": ["1"]}]}, ErrorCode.TARIFF_INVALID, "components.code"),
    ({"cycle": "week"}, ErrorCode.TARIFF_INVALID, "cycle"),
    ({"sewage_coefficient": "1.5"}, ErrorCode.TARIFF_INVALID, "sewage_coefficient"),
])
async def test_a_malformed_tariff_is_refused_with_its_code_and_nothing_is_written(
    session: AsyncSession, change: dict[str, Any], error_code: ErrorCode, field: str
) -> None:
    before = await count_tariffs(session)
    with pytest.raises(DomainError) as refused:
        await service.save_tariff(session, raw={**monthly("BAD"), **change})
    assert (refused.value.code, refused.value.field) == (error_code, field)
    assert refused.value.message and refused.value.message_en
    assert await count_tariffs(session) == before


async def test_a_version_loads_once_refuses_other_content_and_a_later_date_is_a_new_version(
    session: AsyncSession
) -> None:
    first = await service.save_tariff(session, raw=example("sh-res-2024.toml"))
    again = await service.save_tariff(session, raw=example("sh-res-2024.toml"))
    assert (first.unchanged, again.unchanged, again.tariff.id) == (False, True, first.tariff.id)
    changed = example("sh-res-2024.toml")
    changed["components"][0]["prices"] = ["1.95", "3.30", "4.30"]
    with pytest.raises(TariffVersionConflict):
        await service.save_tariff(session, raw=changed)
    later = await service.save_tariff(session, raw={**changed, "valid_from": date(2025, 1, 1)})
    assert not later.unchanged
    versions = await service.tariff_versions(session, code="SH-RES")
    assert [(v.valid_from, v.rules["components"][0]["prices"][0]) for v in versions] == [
        (date(2024, 1, 1), "1.9200"), (date(2025, 1, 1), "1.9500")]
    in_force = await service.tariffs_in_force(session, on=date(2024, 12, 31))
    assert [(t.code, t.valid_from) for t in in_force if t.code == "SH-RES"] == [("SH-RES", date(2024, 1, 1))]


async def test_a_tier_count_mismatch_names_the_prices(session: AsyncSession) -> None:
    with pytest.raises(TariffTiersMismatch):
        await service.save_tariff(session, raw=monthly("MIS", limits=[10], prices=["1"]))
    with pytest.raises(TariffPricePlaces):
        await service.save_tariff(session, raw=monthly("NEG", prices=["-1"]))


async def test_a_quoted_period_is_at_most_366_days(session: AsyncSession) -> None:
    await service.save_tariff(session, raw=monthly("LONG"))
    leap_year = await service.quote(session, code="LONG", volume=Decimal(10), start=date(2024, 1, 1),
                                    end=date(2024, 12, 31))
    assert leap_year.total_fen == 3450
    with pytest.raises(DomainError) as refused:
        await service.quote(session, code="LONG", volume=Decimal(10), start=date(2024, 1, 1), end=date(2025, 1, 1))
    assert (refused.value.code, refused.value.field) == (ErrorCode.TARIFF_INVALID, "to")


async def test_the_batch_line_pricer_prices_every_line_exactly_as_price_period_does(session: AsyncSession) -> None:
    # The billing run prices a chunk with period_line_pricer (each version's rules parsed
    # once per group of accounts); its lines must be price_period's, line for line: tiers,
    # household size, the sewage coefficient, a price change inside the period and the
    # minimum charge, with 4-place volumes on and around the limits and day shares that round.
    raw = {**monthly("BATCH", limits=["10.5", 20], prices=["3.4567", "4.1234", "5.0001"]),
           "household_size": {"base_persons": 3, "extra_m3_per_person": "2.5"}, "sewage_coefficient": "0.85",
           "minimum_monthly_charge": "40.00"}
    raw["components"] = [*raw["components"], {"code": "sewage", "name": "污水处理费", "prices": ["1.3333"] * 3}]
    await service.save_tariff(session, raw=raw)
    await service.save_tariff(session, raw={**raw, "valid_from": date(2024, 11, 11), "tier_limits": [12, 24],
                                            "sewage_coefficient": "0.9", "minimum_monthly_charge": "30.00"})
    versions = await service.tariff_versions(session, code="BATCH")
    volumes = [Decimal(v) for v in ("0", "0.0001", "3.3", "10.5", "10.5001", "19.9999", "20", "25.0049", "123.4567")]
    for persons in (None, 3, 5):
        for start, end in ((date(2024, 11, 1), date(2024, 11, 30)), (date(2024, 11, 3), date(2024, 11, 10)),
                           (date(2024, 11, 7), date(2024, 11, 19))):
            for minimum in (True, False):
                pricer = service.period_line_pricer(versions, persons=persons, start=start, end=end, minimum=minimum)
                for volume in volumes:
                    for prior in (Decimal(0), Decimal("8.25")):
                        expected = service.price_period(versions, volume=volume, prior=prior, persons=persons,
                                                        start=start, end=end, minimum=minimum)
                        assert list(pricer(volume, prior)) == expected, (persons, start, end, volume, prior)
                        assert pricer(volume, prior) is pricer(volume, prior)  # priced once
    minimum_lines = service.period_line_pricer(versions, persons=None, start=date(2024, 11, 1),
                                               end=date(2024, 11, 30))(Decimal("0.0001"), Decimal(0))
    assert minimum_lines[-1].component == "minimum"  # the case above did reach the minimum
