"""Usage ledgers (用水台账): start and end readings by the ledger rules, the multiplier,
usage equal to ``usage_between`` on raw readings, per-area totals, and pagination."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from openpyxl import load_workbook
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import MeterStatus
from backend.errors import DomainError, NotFound
from backend.readings import analytics
from backend.readings.analytics import Granularity, Scope, ScopeKind
from backend.readings.screens import ExportRequest, ScreenKind, SummaryLine, choose_columns, get_screen, write_screen
from backend.readings.service import ReadingIn, ingest_readings
from backend.readings.usage import usage_between
from tests.factories import make_area_tree
from tests.graphql.client import GraphQLClient
from tests.readings.test_browse import statements_at_two_sizes
from tests.readings.test_statistics import (  # noqa: F401  (api_world, client: fixtures)
    MONTH_ENDS,
    NOV,
    NOW,
    OCT,
    REPLACED_AT,
    START,
    TZ,
    ZONE,
    ApiWorld,
    Utility,
    _meter,
    api_world,
    build_utility,
    client,
    day_start,
    gid,
    lend_doubled_meter,
    raw_usage,
)


async def ledger(session: AsyncSession, scope: Scope, granularity: Granularity, start: date, end: date,
                 **kwargs: object) -> analytics.LedgerPage:
    options: dict[str, object] = {"scope_patterns": None, "tz": TZ, "limit": None, **kwargs}
    return await analytics.usage_ledger(session, scope=scope, granularity=granularity, start_day=start, end_day=end,
                                        **options)  # type: ignore[arg-type]


def by_meter(page: analytics.LedgerPage) -> dict[tuple[int, str], analytics.LedgerRow]:
    return {(row.meter_id, row.label): row for row in page.rows}


async def test_start_reading_is_the_last_one_before_the_period_and_end_the_last_one_in_it(session: AsyncSession) -> None:
    utility = await build_utility(session)

    page = await ledger(session, Scope(ScopeKind.meter, utility.doubled.id), Granularity.period,
                        date(2026, 10, 15), date(2026, 10, 20))

    (row,) = page.rows
    assert row.start_at == datetime(2026, 10, 14, 23, 30, tzinfo=ZONE)
    assert row.end_at == datetime(2026, 10, 20, 23, 30, tzinfo=ZONE)
    assert row.multiplier == Decimal(2)
    # 统计值 = (止码 - 起码) x 倍率 when nothing rolled over.
    assert row.usage_m3 == (row.end_reading - row.start_reading) * 2  # type: ignore[operator]
    raw = await raw_usage(session, [utility.doubled.id], date(2026, 10, 15), date(2026, 10, 20))
    assert row.usage_m3 == raw[utility.doubled.id]
    assert row.label == "2026-10-15~2026-10-20"


async def test_without_an_earlier_reading_the_start_is_the_first_reading_in_the_period(session: AsyncSession) -> None:
    utility = await build_utility(session)

    page = await ledger(session, Scope(ScopeKind.meter, utility.rolling.id), Granularity.month, OCT, MONTH_ENDS[OCT])

    (row,) = page.rows
    assert (row.start_at, row.start_reading) == (START, Decimal(9900))
    assert row.end_at == datetime(2026, 10, 31, 23, 30, tzinfo=ZONE)
    assert row.end_reading is not None and row.end_reading < row.start_reading  # the register rolled over
    assert row.usage_m3 == row.end_reading + Decimal(10000) - row.start_reading
    assert row.multiplier == Decimal(1)


async def test_monthly_ledger_equals_usage_between_and_shows_a_replacement_as_two_meters(session: AsyncSession) -> None:
    utility = await build_utility(session)

    page = await ledger(session, Scope(ScopeKind.area, utility.tree.company.id), Granularity.month, OCT,
                        MONTH_ENDS[NOV])

    rows = by_meter(page)
    # The retired meter has no November row; every other meter has both months.
    assert set(rows) == {(m.id, label) for m in utility.meters for label in ("2026-10", "2026-11")} - {
        (utility.old.id, "2026-11")}
    for meter_id, label in rows:
        month = OCT if label == "2026-10" else NOV
        raw = await raw_usage(session, [meter_id], month, MONTH_ENDS[month])
        assert rows[(meter_id, label)].usage_m3 == raw[meter_id], (meter_id, label)
    old, new = rows[(utility.old.id, "2026-10")], rows[(utility.new.id, "2026-10")]
    assert old.end_at == REPLACED_AT and new.start_at == REPLACED_AT
    assert new.start_reading == Decimal(0)
    assert old.household_name == new.household_name == utility.household.name
    assert rows[(utility.rolling.id, "2026-10")].household_id is None
    assert page.total_count == 7


async def test_area_totals_are_per_child_area_and_add_up(session: AsyncSession) -> None:
    utility = await build_utility(session)
    tree = utility.tree

    page = await ledger(session, Scope(ScopeKind.area, tree.company.id), Granularity.period, OCT, MONTH_ENDS[NOV],
                        limit=2)

    raw = await raw_usage(session, [m.id for m in utility.meters], OCT, MONTH_ENDS[NOV])
    assert [(t.area_id, t.meter_rows, t.usage_m3) for t in page.area_totals] == [
        (tree.east.id, 3, raw[utility.rolling.id] + raw[utility.old.id] + raw[utility.new.id]),
        (tree.west.id, 1, raw[utility.doubled.id]),
    ]
    assert page.total == sum(raw.values())
    assert page.total_count == 4 and len(page.rows) == 2
    assert [row.meter_code for row in page.rows] == sorted(m.code for m in utility.meters)[:2]


async def test_yearly_ledger_clips_the_year_to_the_range(session: AsyncSession) -> None:
    utility = await build_utility(session)

    page = await ledger(session, Scope(ScopeKind.meter, utility.doubled.id), Granularity.year, date(2026, 10, 20),
                        date(2027, 1, 31))

    assert [(row.label, row.period_start, row.period_end) for row in page.rows] == [
        ("2026", date(2026, 10, 20), date(2026, 12, 31)), ("2027", date(2027, 1, 1), date(2027, 1, 31))]
    assert page.rows[1].usage_m3 == 0
    assert page.rows[1].start_at == page.rows[0].end_at  # nothing read since: both are the last reading


async def test_readings_at_midnight_close_the_month_before(session: AsyncSession) -> None:
    """A day is (00:00, 24:00]: the reading at 1 Nov 00:00 is October's 止码 and
    November's 起码 (the last reading at or before the period's start)."""
    tree = await make_area_tree(session)
    meter = await _meter(session, tree.east_community.id, None, MeterStatus.installed)
    at = [(datetime(2026, 9, 30, 12, tzinfo=ZONE), 5), (datetime(2026, 10, 1, tzinfo=ZONE), 10),
          (datetime(2026, 10, 1, 12, tzinfo=ZONE), 15), (datetime(2026, 11, 1, tzinfo=ZONE), 30),
          (datetime(2026, 11, 1, 12, tzinfo=ZONE), 40)]
    result = await ingest_readings(session, readings=[
        ReadingIn(meter_id=meter.id, read_at=read_at, total_m3=Decimal(total)) for read_at, total in at
    ], source="test", now=NOW, tz=TZ)
    assert not result.rejected

    page = await ledger(session, Scope(ScopeKind.meter, meter.id), Granularity.month, OCT, MONTH_ENDS[NOV])

    october, november = page.rows
    assert (october.start_at, october.start_reading, october.end_at, october.end_reading, october.usage_m3) == (
        at[1][0], Decimal(10), at[3][0], Decimal(30), Decimal(20))
    assert (november.start_at, november.start_reading, november.end_at, november.end_reading, november.usage_m3) == (
        at[3][0], Decimal(30), at[4][0], Decimal(40), Decimal(10))
    for row in page.rows:
        raw = await raw_usage(session, [meter.id], row.period_start, row.period_end)
        assert row.usage_m3 == raw[meter.id]
    monthly = await analytics.usage_statistics(session, scope=Scope(ScopeKind.meter, meter.id),
                                               granularity=Granularity.month, start_day=OCT, end_day=MONTH_ENDS[NOV],
                                               scope_patterns=None, tz=TZ)
    assert [(row.label, row.usage_m3) for row in monthly.rows] == [("2026-10", Decimal(20)), ("2026-11", Decimal(10))]


async def test_the_household_column_ends_with_an_assignment_ended_at_midnight(session: AsyncSession) -> None:
    utility = await build_utility(session)
    await lend_doubled_meter(session, utility)
    meter = Scope(ScopeKind.meter, utility.doubled.id)

    during = await ledger(session, meter, Granularity.period, date(2026, 10, 15), date(2026, 10, 19))
    after = await ledger(session, meter, Granularity.period, date(2026, 10, 20), date(2026, 10, 25))

    assert during.rows[0].household_id == utility.household.id
    assert after.rows[0].household_id is None


async def test_a_household_ledger_clips_each_meter_to_the_days_it_served_the_household(session: AsyncSession) -> None:
    """Both meters of a mid-month replacement were read outside their assignment: the new
    one on a bench ten days before, the retired old one a week after. The household's
    rows stop and start at the replacement and add up to the household's usage."""
    utility = await build_utility(session)
    bench = [datetime(2026, 10, 20, 10, tzinfo=ZONE), datetime(2026, 10, 20, 11, tzinfo=ZONE)]
    later = [datetime(2026, 11, 5, 10, tzinfo=ZONE), datetime(2026, 11, 5, 11, tzinfo=ZONE)]
    result = await ingest_readings(session, readings=[
        *(ReadingIn(meter_id=utility.new.id, read_at=at, total_m3=Decimal(0)) for at in bench),
        *(ReadingIn(meter_id=utility.old.id, read_at=at, total_m3=Decimal(1000 + i)) for i, at in enumerate(later)),
    ], source="test", now=NOW, tz=TZ)
    assert not result.rejected
    household = Scope(ScopeKind.household, utility.household.id)

    whole = await ledger(session, household, Granularity.period, OCT, MONTH_ENDS[NOV])
    monthly = await ledger(session, household, Granularity.month, OCT, MONTH_ENDS[NOV])

    rows = {row.meter_id: row for row in whole.rows}
    old, new = rows[utility.old.id], rows[utility.new.id]
    # The old meter's start is its initial reading, stored when it was assigned.
    assert (old.start_at, old.start_reading, old.end_at) == (START - timedelta(days=1), Decimal(0), REPLACED_AT)
    assert (new.start_at, new.start_reading) == (REPLACED_AT, Decimal(0))
    assert old.usage_m3 == old.end_reading - old.start_reading  # type: ignore[operator]  (none of November's)
    assert old.household_id == new.household_id == utility.household.id
    expected = await usage_between(session, household_ids=[utility.household.id], start=day_start(OCT),
                                   end=day_start(date(2026, 12, 1)))
    assert old.usage_m3 + new.usage_m3 == whole.total == expected[utility.household.id]
    statistics = await analytics.usage_statistics(session, scope=household, granularity=Granularity.period,
                                                  start_day=OCT, end_day=MONTH_ENDS[NOV], scope_patterns=None, tz=TZ)
    assert {(row.unit_id, row.usage_m3) for row in statistics.rows} == {(r.meter_id, r.usage_m3) for r in (old, new)}
    # By month: the retired meter has no November row, though it was read then.
    assert {(row.meter_id, row.label) for row in monthly.rows} == {
        (utility.old.id, "2026-10"), (utility.new.id, "2026-10"), (utility.new.id, "2026-11")}
    for month in (OCT, NOV):
        served = await usage_between(session, household_ids=[utility.household.id], start=day_start(month),
                                     end=day_start(MONTH_ENDS[month] + timedelta(days=1)))
        label = month.strftime("%Y-%m")
        assert sum(row.usage_m3 for row in monthly.rows if row.label == label) == served[utility.household.id]
    assert [(t.meter_rows, t.usage_m3) for t in monthly.area_totals] == [(3, expected[utility.household.id])]


async def test_a_household_ledger_starts_and_ends_a_lent_meter_at_its_midnight_handovers(
    session: AsyncSession,
) -> None:
    utility = await build_utility(session)
    served_from, served_to = await lend_doubled_meter(session, utility)

    page = await ledger(session, Scope(ScopeKind.household, utility.household.id), Granularity.period, OCT,
                        MONTH_ENDS[OCT])

    row = by_meter(page)[(utility.doubled.id, "2026-10-01~2026-10-31")]
    # 15 Oct 00:00 closes the 14th (the reading at 23:30 is the last at or before it);
    # the move-out reading at 20 Oct 00:00 is the 19th's, the last day it served.
    assert row.start_at == served_from - timedelta(minutes=30)
    assert row.end_at == served_to
    raw = await raw_usage(session, [utility.doubled.id], date(2026, 10, 15), date(2026, 10, 19))
    assert row.usage_m3 == raw[utility.doubled.id]


async def test_ledger_of_an_area_outside_the_scope_is_not_found(session: AsyncSession) -> None:
    utility = await build_utility(session)
    with pytest.raises(NotFound):
        await ledger(session, Scope(ScopeKind.area, utility.tree.west.id), Granularity.period, OCT, OCT,
                     scope_patterns=[f"{utility.tree.east.path}%"])


LEDGER = """
query($scope: UsageObjectInput!, $g: LedgerGranularity!, $n: Int) {
  usageLedger(scope: $scope, granularity: $g, from: "2026-10-01", to: "2026-11-30", first: $n) {
    rows { totalCount edges { node { meterCode meterName householdName areaName label startAt startReading
                                    endAt endReading multiplier usageM3 } } }
    areaTotals { areaName rows usageM3 }
    total
  }
}
"""


async def test_graphql_ledger_statement_count_does_not_grow_with_page_size(
    client: GraphQLClient, api_world: ApiWorld, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    utility: Utility = api_world.utility
    token = await client.login(api_world.admin.username, api_world.admin.password)
    variables = {"scope": {"areaId": gid("Area", utility.tree.company.id)}, "g": "MONTH"}

    one, every, small, large = await statements_at_two_sizes(client, monkeypatch, LEDGER, variables, token=token,
                                                             size="n", small=1, large=50)

    assert "errors" not in every, every
    assert len(one["data"]["usageLedger"]["rows"]["edges"]) == 1
    assert len(every["data"]["usageLedger"]["rows"]["edges"]) == 7
    assert len(small) == len(large)
    found = every["data"]["usageLedger"]
    assert [t["areaName"] for t in found["areaTotals"]] == ["城东片区", "城西片区"]
    assert Decimal(found["total"]) == sum(Decimal(e["node"]["usageM3"]) for e in found["rows"]["edges"])


async def test_graphql_ledger_needs_the_ledger_permission(client: GraphQLClient, api_world: ApiWorld) -> None:  # noqa: F811
    variables = {"scope": {"householdId": gid("Household", api_world.utility.household.id)}, "g": "PERIOD"}
    refused = await client.execute(LEDGER, variables, token=api_world.resident_token)
    assert [e["extensions"]["code"] for e in refused["errors"]] == ["FORBIDDEN"]
    west = await client.login(api_world.west_operator.username, api_world.west_operator.password)
    refused = await client.execute(LEDGER, variables, token=west)
    assert [e["extensions"]["code"] for e in refused["errors"]] == ["FORBIDDEN"]


async def test_export_screens_stream_the_rows_the_queries_page_through(session: AsyncSession) -> None:
    import backend.readings.analytics_screens  # noqa: F401  (registers the screens)

    utility = await build_utility(session)
    area = {"areaId": gid("Area", utility.tree.company.id), "from": "2026-10-01", "to": "2026-11-30"}

    def request(**filters: object) -> ExportRequest:
        return ExportRequest(filters={**area, **filters}, scope_patterns=None, household_ids=None, tz=TZ, now=NOW)

    ledger_rows = [row async for row in get_screen(ScreenKind.ledger).rows(session, request(granularity="month"))
                   if not isinstance(row, SummaryLine)]
    statistics_rows = [row async for row in get_screen(ScreenKind.statistics).rows(session, request(granularity="month"))
                       if not isinstance(row, SummaryLine)]
    comparison_rows = [row async for row in get_screen(ScreenKind.comparison).rows(session, request(basis="period_on_period"))]

    page = await ledger(session, Scope(ScopeKind.area, utility.tree.company.id), Granularity.month, OCT, MONTH_ENDS[NOV])
    assert [(r["meter_code"], r["label"], r["usage_m3"]) for r in ledger_rows] == [
        (row.meter_code, row.label, row.usage_m3) for row in page.rows]
    assert ledger_rows[0]["start_at"].tzinfo is not None  # local wall clock; the sheet writer drops the zone
    assert [(r["unit_name"], r["label"]) for r in statistics_rows] == [
        ("城东片区", "2026-10"), ("城东片区", "2026-11"), ("城西片区", "2026-10"), ("城西片区", "2026-11")]
    assert [(r["unit_name"], r["label"]) for r in comparison_rows] == [
        ("城东片区", "2026-10"), ("城东片区", "2026-11"), ("城西片区", "2026-10"), ("城西片区", "2026-11")]
    screen = get_screen(ScreenKind.ledger)

    async def again() -> AsyncIterator[Mapping[str, Any]]:
        for row in ledger_rows:
            yield row

    path, count = await write_screen(screen, choose_columns(screen, None), again())
    try:
        assert count == len(ledger_rows) == 7
        assert path.stat().st_size > 0
    finally:
        path.unlink()


async def test_export_screen_refuses_filters_without_exactly_one_object(session: AsyncSession) -> None:
    import backend.readings.analytics_screens  # noqa: F401

    request = ExportRequest(filters={"from": "2026-10-01", "to": "2026-10-02"}, scope_patterns=None, household_ids=None,
                            tz=TZ, now=NOW)
    with pytest.raises(DomainError) as refused:
        [row async for row in get_screen(ScreenKind.statistics).rows(session, request)]
    assert (refused.value.code, refused.value.field) == ("REQUIRED", "areaId")


EXPORT_URL = """
query($screen: ScreenKind!, $columns: [String!], $filters: JSON) {
  readingsExportUrl(screen: $screen, columns: $columns, filters: $filters)
}
"""
STATISTICS_PAGE = """
query($scope: UsageObjectInput!) {
  usageStatistics(scope: $scope, granularity: MONTH, from: "2026-10-01", to: "2026-11-30", first: 100) {
    rows { edges { node { unitName label usageM3 } } }
  }
}
"""
COMPARISON_PAGE = """
query($scope: UsageObjectInput!) {
  usageComparison(scope: $scope, basis: PERIOD_ON_PERIOD, granularity: MONTH, from: "2026-10-01", to: "2026-11-30",
                  first: 100) {
    edges { node { unitName label currentM3 previousM3 } }
  }
}
"""


async def _download(api: GraphQLClient, token: str, screen: str, columns: list[str],
                    filters: dict[str, str]) -> httpx.Response:
    found = await api.execute(EXPORT_URL, {"screen": screen, "columns": columns, "filters": filters}, token=token)
    assert "errors" not in found, found
    return await api.http.get(found["data"]["readingsExportUrl"])


def _sheet(response: httpx.Response) -> list[tuple[Any, ...]]:
    assert response.status_code == 200, response.text
    workbook = load_workbook(io.BytesIO(response.content), read_only=True)
    rows = [tuple(row) for row in workbook.worksheets[0].iter_rows(values_only=True)]
    workbook.close()
    return rows[2:]  # below the Chinese and English headers


def _m3(value: Any) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.0001"))


async def test_statistics_ledger_and_comparison_download_through_the_export_url(
    client: GraphQLClient, api_world: ApiWorld  # noqa: F811
) -> None:
    utility = api_world.utility
    token = await client.login(api_world.admin.username, api_world.admin.password)
    area = gid("Area", utility.tree.company.id)
    filters = {"areaId": area, "from": "2026-10-01", "to": "2026-11-30", "granularity": "month"}

    statistics = _sheet(await _download(client, token, "statistics", ["unit_name", "label", "usage_m3"], filters))[:-4]
    ledger_rows = [row for row in _sheet(await _download(client, token, "ledger",
                                                         ["meter_code", "label", "start_at", "usage_m3"], filters))
                   if "合计" not in str(row[0])]
    comparison = _sheet(await _download(client, token, "comparison", ["unit_name", "label", "current_m3", "previous_m3"],
                                        {**filters, "basis": "period_on_period"}))

    scope = {"scope": {"areaId": area}}
    queried = (await client.execute(STATISTICS_PAGE, scope, token=token))["data"]["usageStatistics"]["rows"]["edges"]
    assert [(name, label, _m3(usage)) for name, label, usage in statistics] == [
        (e["node"]["unitName"], e["node"]["label"], Decimal(e["node"]["usageM3"])) for e in queried]
    ledger_page = (await client.execute(LEDGER, {**scope, "g": "MONTH", "n": 100}, token=token))["data"]["usageLedger"]
    assert [(code, label, _m3(usage)) for code, label, _, usage in ledger_rows] == [
        (e["node"]["meterCode"], e["node"]["label"], Decimal(e["node"]["usageM3"])) for e in ledger_page["rows"]["edges"]]
    # 起码时间 is written as the utility's wall clock.
    first_start = datetime.fromisoformat(ledger_page["rows"]["edges"][0]["node"]["startAt"])
    assert ledger_rows[0][2] == first_start.astimezone(ZONE).replace(tzinfo=None)
    compared = (await client.execute(COMPARISON_PAGE, scope, token=token))["data"]["usageComparison"]["edges"]
    assert [(name, label, _m3(now), _m3(before)) for name, label, now, before in comparison] == [
        (e["node"]["unitName"], e["node"]["label"], Decimal(e["node"]["currentM3"]), Decimal(e["node"]["previousM3"]))
        for e in compared]
    assert len(statistics) == 4 and len(ledger_rows) == 7 and len(comparison) == 4


async def test_an_export_of_an_object_outside_the_scope_is_not_found(
    client: GraphQLClient, api_world: ApiWorld  # noqa: F811
) -> None:
    token = await client.login(api_world.west_operator.username, api_world.west_operator.password)
    filters = {"areaId": gid("Area", api_world.utility.tree.company.id), "from": "2026-10-01", "to": "2026-10-31"}

    response = await _download(client, token, "statistics", [], filters)

    assert response.status_code == 404
    assert [e["extensions"]["code"] for e in response.json()["errors"]] == ["NOT_FOUND"]


STATISTICS_SUMMARY = """
query($scope: UsageObjectInput!) {
  usageStatistics(scope: $scope, granularity: DAY, from: "2026-10-30", to: "2026-11-02", first: 1) {
    summary { count total mean maximum minimum }
  }
}
"""
LEDGER_TOTALS = """
query($scope: UsageObjectInput!) {
  usageLedger(scope: $scope, granularity: MONTH, from: "2026-10-01", to: "2026-11-30", first: 1) {
    areaTotals { areaName usageM3 } total
  }
}
"""


def _figure(value: Any) -> Decimal | None:
    return None if value is None else _m3(value)


async def test_statistics_export_ends_with_the_summary_the_query_shows(
    client: GraphQLClient, api_world: ApiWorld  # noqa: F811
) -> None:
    token = await client.login(api_world.admin.username, api_world.admin.password)
    area = gid("Area", api_world.utility.tree.company.id)
    filters = {"areaId": area, "from": "2026-10-30", "to": "2026-11-02", "granularity": "day"}

    sheet = _sheet(await _download(client, token, "statistics", ["parent_name", "unit_name", "label", "usage_m3"],
                                   filters))

    summary = (await client.execute(STATISTICS_SUMMARY, {"scope": {"areaId": area}}, token=token))["data"][
        "usageStatistics"]["summary"]
    body, lines = sheet[:-4], sheet[-4:]
    assert len(body) == summary["count"] == 8  # two child areas x four days
    # The label in the first column, the figure under 用水量, computed by the query's own SQL.
    assert [(label, unit, period, _figure(value)) for label, unit, period, value in lines] == [
        ("合计 / Total", None, None, Decimal(summary["total"])),
        ("均值 / Mean", None, None, Decimal(summary["mean"])),
        ("最大 / Maximum", None, None, Decimal(summary["maximum"])),
        ("最小 / Minimum", None, None, Decimal(summary["minimum"])),
    ]
    assert sum(_m3(row[3]) for row in body) == Decimal(summary["total"]) > 0


async def test_statistics_export_summary_label_moves_past_chosen_figure_columns(
    client: GraphQLClient, api_world: ApiWorld  # noqa: F811
) -> None:
    token = await client.login(api_world.admin.username, api_world.admin.password)
    filters = {"areaId": gid("Area", api_world.utility.tree.company.id), "from": "2026-10-30", "to": "2026-11-02"}

    sheet = _sheet(await _download(client, token, "statistics", ["usage_m3"], filters))

    # Only the figure column was chosen: the label goes into one cell after it.
    assert [row[1] for row in sheet[-4:]] == ["合计 / Total", "均值 / Mean", "最大 / Maximum", "最小 / Minimum"]
    assert all(len(row) == 1 or row[1] is None for row in sheet[:-4])


async def test_ledger_export_ends_with_the_area_totals_the_query_shows(
    client: GraphQLClient, api_world: ApiWorld  # noqa: F811
) -> None:
    token = await client.login(api_world.admin.username, api_world.admin.password)
    area = gid("Area", api_world.utility.tree.company.id)
    filters = {"areaId": area, "from": "2026-10-01", "to": "2026-11-30", "granularity": "month"}

    sheet = _sheet(await _download(client, token, "ledger", [], filters))

    found = (await client.execute(LEDGER_TOTALS, {"scope": {"areaId": area}}, token=token))["data"]["usageLedger"]
    totals = found["areaTotals"]
    assert len(totals) == 2
    lines = sheet[-(len(totals) + 1):]
    assert [(row[0], _figure(row[-1])) for row in lines] == [
        *((f"{t['areaName']} 合计 / Area total", Decimal(t["usageM3"])) for t in totals),
        ("合计 / Total", Decimal(found["total"])),
    ]
    assert all(value is None for row in lines for value in row[1:-1])
    assert len(sheet) - len(lines) == 7  # the rows, as before
