"""Comparisons (同期/环期对比): current vs previous per child unit and period, % change,
outliers (z-score across units, or the percent threshold for few units), ordering."""

from __future__ import annotations

from datetime import date, datetime, time
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import AreaKind, MeterStatus
from backend.archives.service import create_area
from backend.readings import analytics
from backend.readings.analytics import ComparisonBasis, ComparisonOrder, Scope, ScopeKind
from backend.readings.service import ReadingIn, ingest_readings
from tests.factories import unique
from tests.graphql.client import GraphQLClient
from tests.readings.test_browse import statements_at_two_sizes
from tests.readings.test_statistics import (  # noqa: F401  (api_world, client: fixtures)
    NOW,
    TZ,
    ZONE,
    ApiWorld,
    _meter,
    api_world,
    client,
    gid,
)


async def put_usage(session: AsyncSession, meter_id: int, usages: list[tuple[date, Decimal]]) -> None:
    """Readings that give the meter exactly these days' usage (a zero reading at 00:30 of
    the first day, then the running total at noon of each day)."""
    days = sorted(usages)
    readings = [ReadingIn(meter_id=meter_id, read_at=datetime.combine(days[0][0], time(0, 30), tzinfo=ZONE),
                          total_m3=Decimal(0))]
    total = Decimal(0)
    for day, usage in days:
        total += usage
        readings.append(ReadingIn(meter_id=meter_id, read_at=datetime.combine(day, time(12), tzinfo=ZONE), total_m3=total))
    result = await ingest_readings(session, readings=readings, source="test", now=NOW, tz=TZ)
    assert not result.rejected


async def compare(session: AsyncSession, area_id: int, basis: ComparisonBasis, **kwargs: object) -> analytics.ComparisonPage:
    options: dict[str, object] = {"scope_patterns": None, "tz": TZ, "quarterly": False, "limit": None,
                                  "start_month": date(2026, 3, 1), "end_month": date(2026, 3, 1), **kwargs}
    return await analytics.usage_comparison(session, scope=Scope(ScopeKind.area, area_id), basis=basis,
                                            **options)  # type: ignore[arg-type]


async def area_with_buildings(session: AsyncSession, count: int) -> tuple[int, list[int]]:
    """A community with ``count`` buildings of one meter each; returns (area id, meter ids)."""
    company = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    meters = []
    for index in range(count):
        building = await create_area(session, name=f"{index + 1:02d}栋", kind=AreaKind.building, parent_id=company.id)
        meters.append((await _meter(session, building.id, None, MeterStatus.installed, date(2025, 1, 1))).id)
    assert company.id is not None
    return company.id, meters


async def test_year_on_year_and_period_on_period_change_and_percent(session: AsyncSession) -> None:
    area_id, (first, second) = await area_with_buildings(session, 2)
    await put_usage(session, first, [
        (date(2025, 3, 10), Decimal(100)),  # same month last year
        (date(2026, 2, 10), Decimal(80)),  # the month before
        (date(2026, 3, 5), Decimal(60)),
        (date(2026, 3, 25), Decimal(60)),
    ])
    await put_usage(session, second, [(date(2026, 3, 5), Decimal(10))])  # nothing to compare with

    yoy = await compare(session, area_id, ComparisonBasis.year_on_year)
    mom = await compare(session, area_id, ComparisonBasis.period_on_period)

    one, two = yoy.rows
    assert (one.unit_name, one.label, one.current_m3, one.previous_m3, one.change_m3, one.change_percent) == (
        "01栋", "2026-03", Decimal(120), Decimal(100), Decimal(20), Decimal("20.00"))
    assert (one.previous_start, one.previous_end) == (date(2025, 3, 1), date(2025, 3, 31))
    assert (two.change_m3, two.change_percent, two.outlier) == (Decimal(10), None, False)
    assert mom.rows[0].previous_m3 == Decimal(80) and mom.rows[0].change_percent == Decimal("50.00")
    assert mom.rows[0].previous_start == date(2026, 2, 1)
    # Two units: too few for a z-score, so the 30% threshold decides.
    assert [row.outlier for row in yoy.rows] == [False, False]
    assert [row.outlier for row in mom.rows] == [True, False]
    assert [row.outlier for row in (await compare(session, area_id, ComparisonBasis.year_on_year,
                                                  outlier_percent=Decimal(10))).rows] == [True, False]


async def test_quarters_compare_three_months_with_the_quarter_before(session: AsyncSession) -> None:
    area_id, (meter,) = await area_with_buildings(session, 1)
    await put_usage(session, meter, [(date(2026, month, 2), Decimal(10 if month <= 3 else 20)) for month in range(1, 7)])

    page = await compare(session, area_id, ComparisonBasis.period_on_period, quarterly=True,
                         start_month=date(2026, 5, 1), end_month=date(2026, 6, 1))

    (row,) = page.rows
    assert (row.label, row.period_start, row.period_end) == ("2026-Q2", date(2026, 4, 1), date(2026, 6, 30))
    assert (row.current_m3, row.previous_m3, row.change_percent) == (Decimal(60), Decimal(30), Decimal("100.00"))


async def test_outlier_is_the_unit_whose_change_stands_out_among_many_units(session: AsyncSession) -> None:
    area_id, meters = await area_with_buildings(session, 8)
    for index, meter in enumerate(meters):
        # Changes of +3%..+10%, except one unit at +90%: with 8 units the z-score decides.
        current = Decimal(190) if index == 5 else Decimal(103 + index)
        await put_usage(session, meter, [(date(2025, 3, 3), Decimal(100)), (date(2026, 3, 3), current)])

    page = await compare(session, area_id, ComparisonBasis.year_on_year, order=ComparisonOrder.change_percent_desc)

    assert page.total_count == 8
    assert [row.unit_name for row in page.rows if row.outlier] == ["06栋"]
    assert page.rows[0].unit_name == "06栋" and page.rows[0].z_score is not None and page.rows[0].z_score > 2
    assert [row.change_percent for row in page.rows] == sorted((row.change_percent for row in page.rows), reverse=True)
    # A lower threshold does not matter once there are enough units for a z-score.
    strict = await compare(session, area_id, ComparisonBasis.year_on_year, outlier_percent=Decimal(1))
    assert [row.unit_name for row in strict.rows if row.outlier] == ["06栋"]
    ascending = await compare(session, area_id, ComparisonBasis.year_on_year, order=ComparisonOrder.change_asc,
                              offset=2, limit=3)
    assert [row.change_m3 for row in ascending.rows] == [Decimal(5), Decimal(6), Decimal(7)]
    assert ascending.total_count == 8


COMPARISON = """
query($scope: UsageObjectInput!, $n: Int) {
  usageComparison(scope: $scope, basis: YEAR_ON_YEAR, granularity: MONTH, from: "2026-10-01", to: "2026-11-01",
                  orderBy: CHANGE_PERCENT_DESC, first: $n) {
    totalCount edges { node { unitName label currentM3 previousM3 changeM3 changePercent zScore outlier } }
  }
}
"""


async def test_graphql_comparison_statement_count_does_not_grow_with_page_size(
    client: GraphQLClient, api_world: ApiWorld, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    token = await client.login(api_world.admin.username, api_world.admin.password)
    variables = {"scope": {"areaId": gid("Area", api_world.utility.tree.east_community.id)}}

    one, every, small, large = await statements_at_two_sizes(client, monkeypatch, COMPARISON, variables, token=token,
                                                             size="n", small=1, large=10)

    assert "errors" not in every, every
    assert len(one["data"]["usageComparison"]["edges"]) == 1
    found = every["data"]["usageComparison"]
    assert found["totalCount"] == 6  # three meters x two months
    assert len(found["edges"]) == 6
    assert len(small) == len(large)
    nothing_last_year = [edge["node"] for edge in found["edges"]]
    assert all(node["changePercent"] is None and node["outlier"] is False for node in nothing_last_year)


async def test_graphql_comparison_needs_the_comparison_permission(client: GraphQLClient, api_world: ApiWorld) -> None:  # noqa: F811
    west = await client.login(api_world.west_operator.username, api_world.west_operator.password)
    refused = await client.execute(COMPARISON, {"scope": {"areaId": gid("Area", api_world.utility.tree.west.id)}},
                                   token=west)
    assert [e["extensions"]["code"] for e in refused["errors"]] == ["FORBIDDEN"]
