"""Hourly statistics (小时用水统计) of buildings and areas: each hour's usage is that of the
meters read in the hour and the hour before, as ``usage_between`` computes it, and the
rest are counted as not covered instead of being given a share of a day's water.

The building built here: 1号楼 with 1单元 (meter A read every hour on the hour; meter B
every hour at :20, a 4-digit register x10 that rolls over on the day looked at and misses
its 01:20 reading; meter C read daily at 23:40) and 2单元 (meter D every hour at :10,
whose register falls back 0.3 m³ at 05:10). Readings from 1 November; the day looked at
is 3 November, so every meter starts from its stored rollup state.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.archives.models import Area, AreaKind, Meter, MeterStatus, MeterType
from backend.archives.service import MeterChanges, MeterModelFields, create_area, create_meter, save_meter_model
from backend.errors import NotFound
from backend.graphql.relay import encode_id
from backend.readings import analytics
from backend.readings.analytics import Granularity, HourlyNotSupported, Scope, ScopeKind
from backend.readings.screens import ExportRequest, ScreenKind, SummaryLine, get_screen
from backend.readings.service import ReadingIn, ingest_readings
from backend.readings.usage import usage_by_interval
from tests.doc_examples import examples
from tests.factories import AreaTree, Staff, make_area_tree, make_staff, unique
from tests.graphql.client import GraphQLClient, graphql_client

TZ = "Asia/Shanghai"
ZONE = ZoneInfo(TZ)
DAY = date(2026, 11, 3)
FIRST_HOUR = datetime(2026, 11, 1, tzinfo=ZONE)
HOURS = 3 * 24  # 1 Nov 01:00 .. 4 Nov 00:00 for the hourly meters
NOW = datetime(2026, 11, 26, tzinfo=ZONE)
PAGE = "docs/screens/hourly.md"


@dataclass
class Building:
    tree: AreaTree
    building: Area
    first_unit: Area
    second_unit: Area
    a: Meter  # 1单元, hourly on the hour
    b: Meter  # 1单元, hourly at :20, rolls over, no 01:20 reading on DAY
    c: Meter  # 1单元, daily at 23:40
    d: Meter  # 2单元, hourly at :10, falls back at 05:10 on DAY


def use(meter: int, hour: int) -> Decimal:
    """m³ in the hour before reading ``hour`` (0.05 to 0.20, by turns)."""
    return Decimal((hour + 2 * meter) % 4 + 1) / 20


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=ZONE) + timedelta(hours=hour, minutes=minute)


def _hourly(meter: Meter, index: int, minute: int, start: Decimal, *, wrap: int | None = None,
            skip: datetime | None = None, fall_back_at: datetime | None = None) -> list[ReadingIn]:
    readings, total = [], start
    for hour in range(1, HOURS + 1):
        read_at = FIRST_HOUR + timedelta(hours=hour, minutes=minute - 60 if minute else 0)
        total += Decimal("-0.3") if read_at == fall_back_at else use(index, hour)
        if read_at != skip:
            readings.append(ReadingIn(meter_id=meter.id, read_at=read_at,  # type: ignore[arg-type]
                                      total_m3=total % wrap if wrap else total))
    return readings


async def _meter(session: AsyncSession, area: Area, model_id: int | None = None) -> Meter:
    code = unique("HS")
    assert area.id is not None
    return await create_meter(session, fields=MeterChanges(
        name=f"表{code}", code=code, address=f"{abs(hash(code)) % 10**14:014d}", meter_type=MeterType.cold_water,
        area_id=area.id, model_id=model_id, install_date=date(2026, 1, 1), initial_reading=Decimal(0),
        status=MeterStatus.installed))


async def build_building(session: AsyncSession) -> Building:
    tree = await make_area_tree(session)
    building = await create_area(session, name="1号楼", kind=AreaKind.building, parent_id=tree.east_community.id)
    first = await create_area(session, name="1单元", kind=AreaKind.unit, parent_id=building.id)
    second = await create_area(session, name="2单元", kind=AreaKind.unit, parent_id=building.id)
    small = await save_meter_model(session, fields=MeterModelFields(vendor=unique("V"), name="4位x10", caliber=20,
                                                                    register_digits=4, multiplier=Decimal(10)))
    a, b, c = await _meter(session, first), await _meter(session, first, small.id), await _meter(session, first)
    d = await _meter(session, second)
    daily = [ReadingIn(meter_id=c.id, read_at=at(FIRST_HOUR.date() + timedelta(days=n), 23, 40),  # type: ignore[arg-type]
                       total_m3=Decimal(50) + Decimal("1.7") * n) for n in range(3)]
    readings = [*_hourly(a, 0, 0, Decimal(10)), *_hourly(b, 1, 20, Decimal("9993.5"), wrap=10_000, skip=at(DAY, 1, 20)),
                *daily, *_hourly(d, 2, 10, Decimal(300), fall_back_at=at(DAY, 5, 10))]
    result = await ingest_readings(session, readings=readings, source="test", now=NOW, tz=TZ)
    assert not result.rejected
    return Building(tree, building, first, second, a, b, c, d)


async def hourly(session: AsyncSession, scope: Scope, first: date = DAY, last: date = DAY,
                 **kwargs: object) -> analytics.StatisticsPage:
    options: dict[str, object] = {"scope_patterns": None, "tz": TZ, "limit": None, **kwargs}
    return await analytics.usage_statistics(session, scope=scope, granularity=Granularity.hour, start_day=first,
                                            end_day=last, **options)  # type: ignore[arg-type]


async def reference(session: AsyncSession, meters: list[Meter]) -> dict[tuple[int, str], Decimal]:
    """``usage_between`` of each meter over each hour of DAY, by (meter id, "HH:00")."""
    found = await usage_by_interval(session, meter_ids=[m.id for m in meters if m.id is not None], start=at(DAY, 0),
                                    end=at(DAY, 24), interval="hour", tz=TZ)
    return {(meter_id, start.strftime("%H:00")): usage for start, meter_id, usage in found}


# Hours of DAY a meter has a figure for: B misses 01:20, so neither 01:00 nor 02:00 is bracketed.
B_GAP = {"01:00", "02:00"}
LABELS = [f"{hour:02}:00" for hour in range(24)]


# --------------------------------------------------------------------------- service


async def test_building_hours_add_up_the_meters_read_hourly_and_count_the_others_as_not_covered(
    session: AsyncSession,
) -> None:
    world = await build_building(session)
    expected = await reference(session, [world.a, world.b, world.d])

    page = await hourly(session, Scope(ScopeKind.area, world.building.id))

    assert page.total_count == 48 and len(page.rows) == 48
    rows = {(row.unit_name, row.label[-5:]): row for row in page.rows}
    for label in LABELS:
        first, second = rows[("1单元", label)], rows[("2单元", label)]
        covered = [world.a] if label in B_GAP else [world.a, world.b]
        assert first.usage_m3 == sum(expected[(m.id, label)] for m in covered), label
        assert (first.meters, first.covered_meters) == (3, len(covered)), label
        assert first.coverage_percent == (Decimal("33.33") if label in B_GAP else Decimal("66.67"))
        assert (second.usage_m3, second.meters, second.covered_meters, second.coverage_percent) == (
            expected[(world.d.id, label)], 1, 1, Decimal("100.00"))
    assert first.parent_name == "1号楼" and first.unit_kind is ScopeKind.area and first.unit_id == world.first_unit.id
    # B's register rolls over and D's falls back that day, and their hours agree with usage_between.
    flags = (await session.execute(text(
        "SELECT meter_id, rollover, reverse_flow FROM daily_usage WHERE day = :day AND meter_id IN (:b, :d)"),
        {"day": DAY, "b": world.b.id, "d": world.d.id})).all()
    assert {tuple(flag) for flag in flags} == {(world.b.id, True, False), (world.d.id, False, True)}
    assert rows[("2单元", "05:00")].usage_m3 == 0 and rows[("2单元", "04:00")].usage_m3 > 0


async def test_a_unit_read_hourly_adds_up_to_its_day_and_the_summary_covers_the_rows_with_figures(
    session: AsyncSession,
) -> None:
    world = await build_building(session)

    page = await hourly(session, Scope(ScopeKind.area, world.building.id))
    daily = await analytics.usage_statistics(session, scope=Scope(ScopeKind.area, world.building.id),
                                             granularity=Granularity.day, start_day=DAY, end_day=DAY,
                                             scope_patterns=None, tz=TZ)

    second = [row.usage_m3 for row in page.rows if row.unit_name == "2单元"]
    assert sum(second) == {row.unit_name: row.usage_m3 for row in daily.rows}["2单元"]
    figures = [row.usage_m3 for row in page.rows if row.usage_m3 is not None]
    assert page.summary == analytics.UsageSummary.of(figures)
    assert page.summary.count == 48


async def test_a_meter_read_daily_has_no_hourly_figures(session: AsyncSession) -> None:
    world = await build_building(session)

    page = await hourly(session, Scope(ScopeKind.meter, world.c.id))
    daily = await analytics.usage_statistics(session, scope=Scope(ScopeKind.meter, world.c.id),
                                             granularity=Granularity.day, start_day=DAY, end_day=DAY,
                                             scope_patterns=None, tz=TZ)

    assert daily.rows[0].usage_m3 == Decimal("1.7000")  # it did use water that day
    assert page.total_count == 24
    assert {(row.usage_m3, row.meters, row.covered_meters, row.coverage_percent) for row in page.rows} == {
        (None, 1, 0, Decimal("0.00"))}
    assert page.summary == analytics.UsageSummary(0, Decimal(0), None, None, None)


async def test_an_area_without_meters_reporting_has_no_coverage_and_the_series_adds_the_units_up(
    session: AsyncSession,
) -> None:
    world = await build_building(session)

    company = await hourly(session, Scope(ScopeKind.area, world.tree.company.id))
    building = await hourly(session, Scope(ScopeKind.area, world.building.id))
    (series,) = await analytics.usage_series(session, scopes=[Scope(ScopeKind.area, world.building.id)],
                                             granularity=Granularity.hour, start_day=DAY, end_day=DAY,
                                             scope_patterns=None, tz=TZ)

    west = [row for row in company.rows if row.unit_name == "城西片区"]
    assert len(west) == 24
    assert {(row.usage_m3, row.meters, row.covered_meters, row.coverage_percent) for row in west} == {
        (None, 0, 0, None)}
    east = {row.label: row for row in company.rows if row.unit_name == "城东片区"}
    assert [point.label for point in series.points] == [f"2026-11-03 {label}" for label in LABELS]
    for point in series.points:
        units = [row for row in building.rows if row.label == point.label]
        assert point.value == sum(row.usage_m3 for row in units)
        assert (point.meters, point.covered_meters) == (4, 2 if point.label[-5:] in B_GAP else 3)
        assert point.coverage_percent == (Decimal("50.00") if point.label[-5:] in B_GAP else Decimal("75.00"))
        assert (east[point.label].usage_m3, east[point.label].covered_meters) == (point.value, point.covered_meters)


async def test_hourly_statistics_stay_within_the_callers_scope(session: AsyncSession) -> None:
    world = await build_building(session)
    building = Scope(ScopeKind.area, world.building.id)

    with pytest.raises(NotFound):
        await hourly(session, building, scope_patterns=[f"{world.tree.west.path}%"])
    with pytest.raises(NotFound):
        await hourly(session, building, scope_patterns=[], household_ids=[0])  # a resident: never an area
    with pytest.raises(NotFound):
        await analytics.usage_series(session, scopes=[building], granularity=Granularity.hour, start_day=DAY,
                                     end_day=DAY, scope_patterns=[f"{world.tree.west.path}%"], tz=TZ)
    east = await hourly(session, building, scope_patterns=[f"{world.tree.east.path}%"])
    assert east.total_count == 48


async def test_hourly_statistics_of_an_area_cover_at_most_31_days(session: AsyncSession) -> None:
    world = await build_building(session)
    building = Scope(ScopeKind.area, world.building.id)
    first = date(2026, 10, 4)

    month = await hourly(session, building, first, DAY, limit=1)
    with pytest.raises(HourlyNotSupported) as refused:
        await hourly(session, building, first - timedelta(days=1), DAY)
    with pytest.raises(HourlyNotSupported):
        await analytics.usage_series(session, scopes=[building], granularity=Granularity.hour,
                                     start_day=first - timedelta(days=1), end_day=DAY, scope_patterns=None, tz=TZ)

    assert month.total_count == 2 * 31 * 24
    assert (refused.value.code, refused.value.field) == ("HOURLY_SCOPE_UNSUPPORTED", "to")


async def test_statistics_export_writes_hourly_area_rows_with_their_coverage(session: AsyncSession) -> None:
    import backend.readings.analytics_screens  # noqa: F401  (registers the screens)

    world = await build_building(session)
    request = ExportRequest(filters={"areaId": str(encode_id("Area", world.building.id)), "granularity": "hour",
                                     "from": DAY.isoformat(), "to": DAY.isoformat()},
                            scope_patterns=None, household_ids=None, tz=TZ, now=NOW)

    written = [row async for row in get_screen(ScreenKind.statistics).rows(session, request)]

    page = await hourly(session, Scope(ScopeKind.area, world.building.id))
    rows, lines = written[:-4], written[-4:]
    assert [(r["unit_name"], r["label"], r["usage_m3"], r["meters"], r["covered_meters"], r["coverage_percent"])
            for r in rows] == [
        (row.unit_name, row.label, row.usage_m3, row.meters, row.covered_meters, row.coverage_percent)
        for row in page.rows]
    assert all(isinstance(line, SummaryLine) for line in lines)
    assert [line.values["usage_m3"] for line in lines] == [
        page.summary.total, page.summary.mean, page.summary.maximum, page.summary.minimum]


async def test_an_autumn_dst_day_has_25_hours_that_add_up_to_it(session: AsyncSession) -> None:
    berlin, day = "Europe/Berlin", date(2026, 10, 25)  # 03:00 CEST turns back into 02:00 CET
    tree = await make_area_tree(session)
    meter = await _meter(session, tree.east_community)
    start = datetime(2026, 10, 24, tzinfo=ZoneInfo(berlin)).astimezone(UTC)  # steps of real hours
    readings = [ReadingIn(meter_id=meter.id, read_at=start + timedelta(hours=n, minutes=30),  # type: ignore[arg-type]
                          total_m3=Decimal(n) / 10) for n in range(3 * 24)]
    assert not (await ingest_readings(session, readings=readings, source="test", now=NOW, tz=berlin)).rejected
    scope = Scope(ScopeKind.meter, meter.id)  # type: ignore[arg-type]

    hours = await hourly(session, scope, day, day, tz=berlin)
    daily = await analytics.usage_statistics(session, scope=scope, granularity=Granularity.day, start_day=day,
                                             end_day=day, scope_patterns=None, tz=berlin)

    assert hours.total_count == 25
    assert [row.label[-5:] for row in hours.rows[:4]] == ["00:00", "01:00", "02:00", "02:00"]
    assert {row.usage_m3 for row in hours.rows} == {Decimal("0.1000")}
    assert hours.summary.total == daily.rows[0].usage_m3 == Decimal("2.5000")


# --------------------------------------------------------------------------- the screen page


@dataclass
class ScreenWorld:
    building: Building
    staff: Staff


@pytest.fixture(scope="module")
async def screen_world(committed_sessions: async_sessionmaker[AsyncSession]) -> ScreenWorld:
    async with committed_sessions() as session, session.begin():
        building = await build_building(session)
        staff = await make_staff(session, permissions={"statistics:read"}, areas=[building.tree.east])
    return ScreenWorld(building, staff)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(database_url) as api:
        yield api


async def test_the_hourly_screen_page_shows_what_the_api_answers(client: GraphQLClient, screen_world: ScreenWorld) -> None:
    (example,) = examples(PAGE)
    token = await client.login(screen_world.staff.username, screen_world.staff.password)
    variables = {"building": str(encode_id("Area", screen_world.building.building.id)), "day": DAY.isoformat()}

    result = await client.execute(example.query, variables, token=token)

    assert result.pop("_status") == 200
    assert result == example.output, json.dumps(result, ensure_ascii=False)


# Three aliases of a month of a building: fine by day, past the cost limit (50,000) by hour.
THREE_MONTHS_OF_A_BUILDING = "query($scope: UsageObjectInput!, $g: UsageGranularity!) { " + " ".join(
    f'm{i}: usageStatistics(scope: $scope, granularity: $g, from: "2026-10-01", to: "2026-10-31", first: 1) '
    "{ summary { count } }" for i in range(3)) + " }"


async def test_hourly_figures_weigh_24_times_a_days_in_the_query_cost(client: GraphQLClient,
                                                                      screen_world: ScreenWorld) -> None:
    token = await client.login(screen_world.staff.username, screen_world.staff.password)
    scope = {"areaId": str(encode_id("Area", screen_world.building.building.id))}

    daily = await client.execute(THREE_MONTHS_OF_A_BUILDING, {"scope": scope, "g": "DAY"}, token=token)
    hourly = await client.execute(THREE_MONTHS_OF_A_BUILDING, {"scope": scope, "g": "HOUR"}, token=token)

    assert "errors" not in daily, daily
    assert hourly["data"] is None
    assert [error["extensions"]["code"] for error in hourly["errors"]] == ["QUERY_TOO_COMPLEX"]


HOURLY_CHART = """query($building: ID!) {
  usageSeries(objects: [{areaId: $building}], granularity: HOUR, from: "2026-11-03", to: "2026-11-03") {
    labels series { name points { label value meters coveredMeters coveragePercent } } } }"""


async def test_the_hourly_chart_of_a_building_carries_each_hours_coverage(client: GraphQLClient,
                                                                          screen_world: ScreenWorld) -> None:
    token = await client.login(screen_world.staff.username, screen_world.staff.password)

    result = await client.execute(HOURLY_CHART, {"building": str(encode_id("Area", screen_world.building.building.id))},
                                  token=token)

    assert "errors" not in result, result
    (series,) = result["data"]["usageSeries"]["series"]
    assert series["name"] == "1号楼" and len(series["points"]) == 24
    night = {point["label"][-5:]: point for point in series["points"]}
    assert {key: night["02:00"][key] for key in ("meters", "coveredMeters", "coveragePercent")} == {
        "meters": 4, "coveredMeters": 2, "coveragePercent": "50.00"}
    assert night["03:00"]["coveragePercent"] == "75.00"
    assert Decimal(night["03:00"]["value"]) > 0
