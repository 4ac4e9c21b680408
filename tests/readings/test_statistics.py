"""Usage statistics (用水统计) read from the daily rollup agree with ``usage_between`` on
the raw readings, group rows by the object's child units, summarise every row in SQL,
and stay within the caller's scope.

The utility built here (also used by the ledger and comparison tests): an area tree with
four meters over ~40 days of hourly readings at HH:30 (so no reading sits on a day
boundary): one whose 4-digit register rolls over, one with multiplier 2 in the west, and
a household whose meter is replaced halfway through.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.archives.models import ConnectionKind, Household, Meter, MeterStatus, MeterType
from backend.archives.service import (
    ConcentratorChanges,
    MeterChanges,
    MeterModelFields,
    TerminalPasswordCipher,
    assign_meter,
    create_concentrator,
    create_meter,
    end_assignment,
    replace_meter,
    save_meter_model,
    update_meter,
)
from backend.auth.service import login_resident, request_login_code
from backend.clock import utcnow
from backend.errors import NotFound
from backend.readings import analytics
from backend.readings.analytics import Granularity, HourlyNotSupported, Scope, ScopeKind
from backend.readings.service import ReadingIn, ingest_readings
from backend.readings.usage import usage_between
from tests.factories import (
    AreaTree,
    Staff,
    auth_policy,
    bind_at_counter,
    insert_legacy_assignment,
    make_area_tree,
    make_household,
    make_staff,
    unique,
)
from tests.graphql.client import TEST_SECRET, GraphQLClient, graphql_client
from tests.graphql.test_dataloaders import counted_statements

TZ = "Asia/Shanghai"
ZONE = ZoneInfo(TZ)
START = datetime(2026, 10, 10, 0, 30, tzinfo=ZONE)
HOURS = 40 * 24
REPLACED_AT = datetime(2026, 10, 30, 12, 0, tzinfo=ZONE)
NOW = datetime(2026, 11, 26, tzinfo=ZONE)
OCT, NOV = date(2026, 10, 1), date(2026, 11, 1)
MONTH_ENDS = {OCT: date(2026, 10, 31), NOV: date(2026, 11, 30)}


@dataclass
class Utility:
    tree: AreaTree
    rolling: Meter  # 城东 community, 4-digit register starting at 9,900: rolls over
    doubled: Meter  # 城西 community, multiplier 2
    old: Meter  # 城东 household's meter until REPLACED_AT
    new: Meter  # ... and from REPLACED_AT
    household: Household

    @property
    def meters(self) -> list[Meter]:
        return [self.rolling, self.doubled, self.old, self.new]


def day_start(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), tzinfo=ZONE)


def hourly_use(hour: int) -> Decimal:
    """m³ in the hour ending at reading ``hour`` (a daily rhythm, never negative)."""
    return Decimal(hour % 24 % 7 + 1) / Decimal(10)


async def _meter(session: AsyncSession, area_id: int, model_id: int | None, status: MeterStatus,
                 installed: date = date(2026, 1, 1)) -> Meter:
    code = unique("ST")
    return await create_meter(session, fields=MeterChanges(
        name=f"表{code}", code=code, address=f"{abs(hash(code)) % 10**14:014d}", meter_type=MeterType.cold_water,
        area_id=area_id, model_id=model_id, install_date=installed, initial_reading=Decimal(0), status=status,
    ))


def _series(meter_id: int, first: datetime, count: int, start_total: Decimal, wrap: int | None = None) -> list[ReadingIn]:
    readings = []
    total = start_total
    for hour in range(count):
        if hour:
            total += hourly_use(hour)
        shown = total % wrap if wrap else total
        readings.append(ReadingIn(meter_id=meter_id, read_at=first + timedelta(hours=hour), total_m3=shown))
    return readings


async def build_utility(session: AsyncSession) -> Utility:
    tree = await make_area_tree(session)
    small = await save_meter_model(session, fields=MeterModelFields(vendor=unique("V"), name="4位", caliber=15,
                                                                    register_digits=4))
    double = await save_meter_model(session, fields=MeterModelFields(vendor=unique("V"), name="x2", caliber=20,
                                                                     multiplier=Decimal(2)))
    rolling = await _meter(session, tree.east_community.id, small.id, MeterStatus.installed)
    doubled = await _meter(session, tree.west_community.id, double.id, MeterStatus.installed)
    old = await _meter(session, tree.east_community.id, None, MeterStatus.in_stock)
    new = await _meter(session, tree.east_community.id, None, MeterStatus.in_stock)
    household = await make_household(session, area=tree.east_community)
    await assign_meter(session, meter_id=old.id, household_id=household.id, valid_from=START - timedelta(days=1))

    before = int((REPLACED_AT - START).total_seconds() // 3600) + 1  # old meter's readings before the swap
    old_readings = _series(old.id, START, before, Decimal(100))
    readings = [
        *_series(rolling.id, START, HOURS, Decimal(9900), wrap=10000),
        *_series(doubled.id, START, HOURS, Decimal(50)),
        *old_readings,
    ]
    result = await ingest_readings(session, readings=readings, source="test", now=NOW, tz=TZ)
    assert not result.rejected
    old_final = old_readings[-1].total_m3 + Decimal("0.25")
    await replace_meter(session, old_meter_id=old.id, new_meter_id=new.id, replaced_at=REPLACED_AT,
                        old_final_reading=old_final, new_initial_reading=Decimal(0), replaced_by="test")
    after = HOURS - before
    result = await ingest_readings(session, readings=_series(new.id, REPLACED_AT + timedelta(minutes=30), after,
                                                             Decimal("0.5")), source="test", now=NOW, tz=TZ)
    assert not result.rejected
    for meter in (rolling, doubled, old, new):
        await session.refresh(meter)
    return Utility(tree, rolling, doubled, old, new, household)


async def statistics(session: AsyncSession, scope: Scope, granularity: Granularity, start: date, end: date,
                     **kwargs: object) -> analytics.StatisticsPage:
    options: dict[str, object] = {"scope_patterns": None, "tz": TZ, "limit": None, **kwargs}
    return await analytics.usage_statistics(session, scope=scope, granularity=granularity, start_day=start,
                                            end_day=end, **options)  # type: ignore[arg-type]


async def raw_usage(session: AsyncSession, meter_ids: list[int], start: date, end: date) -> dict[int, Decimal]:
    """``usage_between`` over whole days ``start``..``end`` (inclusive), on raw readings."""
    return await usage_between(session, meter_ids=meter_ids, start=day_start(start), end=day_start(end + timedelta(days=1)))


# --------------------------------------------------------------------------- service


async def test_monthly_statistics_of_each_meter_equal_usage_between_on_raw_readings(session: AsyncSession) -> None:
    utility = await build_utility(session)

    for meter in utility.meters:
        page = await statistics(session, Scope(ScopeKind.meter, meter.id), Granularity.month, OCT, MONTH_ENDS[NOV])
        by_label = {row.label: row.usage_m3 for row in page.rows}
        expected = {
            month.strftime("%Y-%m"): (await raw_usage(session, [meter.id], month, MONTH_ENDS[month]))[meter.id]
            for month in (OCT, NOV)
        }
        assert by_label == expected, meter.code
    # The rollover and the multiplier really are in play.
    rolling = (await raw_usage(session, [utility.rolling.id], OCT, MONTH_ENDS[NOV]))[utility.rolling.id]
    assert rolling > Decimal(200)


async def test_household_statistics_show_both_meters_of_a_replacement_and_add_up_to_the_household(
    session: AsyncSession,
) -> None:
    utility = await build_utility(session)

    page = await statistics(session, Scope(ScopeKind.household, utility.household.id), Granularity.period, OCT,
                            MONTH_ENDS[NOV])

    assert {(row.unit_kind, row.unit_id) for row in page.rows} == {
        (ScopeKind.meter, utility.old.id), (ScopeKind.meter, utility.new.id)}
    assert all(row.parent_name == utility.household.name for row in page.rows)
    expected = await usage_between(session, household_ids=[utility.household.id], start=day_start(OCT),
                                   end=day_start(date(2026, 12, 1)))
    assert page.summary.total == expected[utility.household.id]
    # Per month too: the replacement day is split at the assignment boundary.
    monthly = await statistics(session, Scope(ScopeKind.household, utility.household.id), Granularity.month, OCT,
                               MONTH_ENDS[NOV])
    for month in (OCT, NOV):
        household = await usage_between(session, household_ids=[utility.household.id], start=day_start(month),
                                        end=day_start(MONTH_ENDS[month] + timedelta(days=1)))
        label = month.strftime("%Y-%m")
        assert sum(row.usage_m3 for row in monthly.rows if row.label == label) == household[utility.household.id]


async def test_area_statistics_have_one_row_per_child_area_aggregating_its_subtree(session: AsyncSession) -> None:
    utility = await build_utility(session)
    tree = utility.tree

    page = await statistics(session, Scope(ScopeKind.area, tree.company.id), Granularity.period, OCT, MONTH_ENDS[NOV])

    raw = await raw_usage(session, [m.id for m in utility.meters], OCT, MONTH_ENDS[NOV])
    assert [(row.unit_name, row.parent_name, row.label, row.usage_m3) for row in page.rows] == [
        ("城东片区", tree.company.name, "2026-10-01~2026-11-30",
         raw[utility.rolling.id] + raw[utility.old.id] + raw[utility.new.id]),
        ("城西片区", tree.company.name, "2026-10-01~2026-11-30", raw[utility.doubled.id]),
    ]
    assert [row.unit_id for row in page.rows] == [tree.east.id, tree.west.id]
    # A leaf area's units are the meters hanging on it.
    leaf = await statistics(session, Scope(ScopeKind.area, tree.east_community.id), Granularity.period, OCT,
                            MONTH_ENDS[NOV])
    assert {row.unit_id for row in leaf.rows} == {utility.rolling.id, utility.old.id, utility.new.id}
    assert all(row.unit_kind is ScopeKind.meter for row in leaf.rows)


async def test_summary_covers_every_row_and_page_summary_only_the_page(session: AsyncSession) -> None:
    utility = await build_utility(session)
    scope = Scope(ScopeKind.area, utility.tree.company.id)
    first, last = date(2026, 10, 8), date(2026, 10, 17)  # two days before the first reading: zero rows

    everything = await statistics(session, scope, Granularity.day, first, last)
    page = await statistics(session, scope, Granularity.day, first, last, offset=3, limit=4)

    values = [row.usage_m3 for row in everything.rows]
    assert everything.total_count == page.total_count == 20  # 2 child areas x 10 days, zero-filled
    assert [row.label for row in everything.rows[:3]] == ["2026-10-08", "2026-10-09", "2026-10-10"]
    assert page.summary == everything.summary
    assert page.summary.total == sum(values)
    assert page.summary.maximum == max(values)
    assert page.summary.minimum == Decimal(0)
    assert page.summary.mean == (sum(values) / 20).quantize(Decimal("0.0001"))
    assert [row.usage_m3 for row in page.rows] == values[3:7]
    assert page.page_summary.count == 4
    assert page.page_summary.total == sum(values[3:7])
    assert page.page_summary.maximum == max(values[3:7])


async def test_yearly_and_daily_figures_add_up_to_the_same_total(session: AsyncSession) -> None:
    utility = await build_utility(session)
    scope = Scope(ScopeKind.meter, utility.rolling.id)

    daily = await statistics(session, scope, Granularity.day, OCT, MONTH_ENDS[NOV])
    yearly = await statistics(session, scope, Granularity.year, OCT, MONTH_ENDS[NOV])

    assert [row.label for row in yearly.rows] == ["2026"]
    assert yearly.rows[0].usage_m3 == daily.summary.total
    assert daily.total_count == 61


async def test_hourly_statistics_of_a_meter_add_up_to_its_day(session: AsyncSession) -> None:
    utility = await build_utility(session)
    scope = Scope(ScopeKind.meter, utility.doubled.id)
    day = date(2026, 10, 12)

    hourly = await statistics(session, scope, Granularity.hour, day, day)
    daily = await statistics(session, scope, Granularity.day, day, day)

    assert hourly.total_count == 24
    assert hourly.rows[0].label == "2026-10-12 00:00"
    assert hourly.summary.total == daily.rows[0].usage_m3
    assert all(row.usage_m3 > 0 for row in hourly.rows)


async def test_hourly_statistics_of_a_household_split_the_replacement_day_between_its_meters(
    session: AsyncSession,
) -> None:
    utility = await build_utility(session)
    day = REPLACED_AT.date()

    hourly = await statistics(session, Scope(ScopeKind.household, utility.household.id), Granularity.hour, day, day)

    assert hourly.total_count == 48  # two meters x 24 hours
    by_meter = {meter_id: sum(row.usage_m3 or 0 for row in hourly.rows if row.unit_id == meter_id)
                for meter_id in (utility.old.id, utility.new.id)}
    assert by_meter[utility.old.id] > 0 and by_meter[utility.new.id] > 0
    # Each meter counts only in the hours it served the household: the swap at 12:00
    # closes the old meter's 11:00 hour and is the new meter's seed for its 12:00 hour.
    # In the other hours the meter counts for nothing (no meter, no figure).
    figures = {(row.unit_id, row.label[-5:]): (row.meters, row.usage_m3) for row in hourly.rows}
    assert [hour for hour in range(24) if figures[(utility.old.id, f"{hour:02}:00")] == (0, None)] == list(range(12, 24))
    assert [hour for hour in range(24) if figures[(utility.new.id, f"{hour:02}:00")] == (0, None)] == list(range(12))
    assert hourly.summary.count == 12 + 12
    household = await usage_between(session, household_ids=[utility.household.id], start=day_start(day),
                                    end=day_start(day + timedelta(days=1)))
    assert hourly.summary.total == household[utility.household.id]


async def test_concentrator_statistics_have_one_row_per_meter_it_reads(session: AsyncSession) -> None:
    utility = await build_utility(session)
    concentrator = await create_concentrator(session, fields=ConcentratorChanges(
        name=unique("集中器"), region_code="3301", terminal_address=int(unique("")) % 60000 + 1,
        area_id=utility.tree.east.id, connection=ConnectionKind.tcp_login,
    ), cipher=TerminalPasswordCipher(TEST_SECRET))
    for meter in (utility.rolling, utility.doubled):
        await update_meter(session, meter_id=meter.id, changes=MeterChanges(concentrator_id=concentrator.id))

    page = await statistics(session, Scope(ScopeKind.concentrator, concentrator.id), Granularity.month, OCT,
                            MONTH_ENDS[OCT])

    raw = await raw_usage(session, [utility.rolling.id, utility.doubled.id], OCT, MONTH_ENDS[OCT])
    assert {(row.unit_id, row.parent_name, row.usage_m3) for row in page.rows} == {
        (utility.rolling.id, concentrator.name, raw[utility.rolling.id]),
        (utility.doubled.id, concentrator.name, raw[utility.doubled.id]),
    }
    # An operator of 城东 sees the concentrator, but only its meters in 城东.
    east = await statistics(session, Scope(ScopeKind.concentrator, concentrator.id), Granularity.month, OCT,
                            MONTH_ENDS[OCT], scope_patterns=[utility.tree.east.path + "%"])
    assert [row.unit_id for row in east.rows] == [utility.rolling.id]


async def test_hourly_statistics_are_refused_beyond_31_days(session: AsyncSession) -> None:
    utility = await build_utility(session)
    with pytest.raises(HourlyNotSupported) as refused:
        await statistics(session, Scope(ScopeKind.meter, utility.rolling.id), Granularity.hour, OCT, date(2026, 11, 1))
    assert (refused.value.code, refused.value.field) == ("HOURLY_SCOPE_UNSUPPORTED", "to")


async def test_daily_statistics_are_refused_beyond_a_year_but_monthly_ones_are_not(session: AsyncSession) -> None:
    utility = await build_utility(session)
    scope = Scope(ScopeKind.area, utility.tree.company.id)
    first, last = date(2025, 11, 30), date(2026, 11, 30)  # 366 days, then one more

    with pytest.raises(analytics.RangeTooLong) as refused:
        await statistics(session, scope, Granularity.day, first - timedelta(days=1), last)
    daily = await statistics(session, scope, Granularity.day, first, last, limit=1)
    monthly = await statistics(session, scope, Granularity.month, first - timedelta(days=1), last, limit=1)

    assert (refused.value.code, refused.value.field) == ("RANGE_TOO_LONG", "to")
    assert daily.total_count == 2 * 366
    assert monthly.summary.total == daily.summary.total


async def test_objects_outside_the_scope_are_not_found(session: AsyncSession) -> None:
    utility = await build_utility(session)
    tree = utility.tree
    east_only = [f"{tree.east.path}%"]

    with pytest.raises(NotFound):
        await statistics(session, Scope(ScopeKind.area, tree.west.id), Granularity.day, OCT, OCT, scope_patterns=east_only)
    with pytest.raises(NotFound):
        await statistics(session, Scope(ScopeKind.meter, utility.doubled.id), Granularity.day, OCT, OCT,
                         scope_patterns=east_only)
    # A resident: their own household and its meters only, never an area.
    own = await statistics(session, Scope(ScopeKind.household, utility.household.id), Granularity.day,
                           date(2026, 10, 30), date(2026, 10, 30), scope_patterns=[], household_ids=[utility.household.id])
    assert own.total_count == 2  # the replacement day: both meters
    with pytest.raises(NotFound):
        await statistics(session, Scope(ScopeKind.area, tree.east_community.id), Granularity.day, OCT, OCT,
                         scope_patterns=[], household_ids=[utility.household.id])
    with pytest.raises(NotFound):
        await statistics(session, Scope(ScopeKind.meter, utility.rolling.id), Granularity.day, OCT, OCT,
                         scope_patterns=[], household_ids=[utility.household.id])


async def test_chart_series_share_labels_and_last_year_overlays_on_them(session: AsyncSession) -> None:
    utility = await build_utility(session)
    scopes = [Scope(ScopeKind.household, utility.household.id), Scope(ScopeKind.meter, utility.doubled.id)]

    series = await analytics.usage_series(session, scopes=scopes, granularity=Granularity.day, start_day=date(2026, 10, 8),
                                          end_day=date(2026, 10, 14), scope_patterns=None, tz=TZ, with_last_year=True)

    assert [(s.name, s.last_year) for s in series] == [
        (utility.household.name, False), (f"{utility.household.name} (去年同期)", True),
        (utility.doubled.name, False), (f"{utility.doubled.name} (去年同期)", True),
    ]
    labels = [p.label for p in series[0].points]
    assert labels[0] == "2026-10-08" and len(labels) == 7
    assert all([p.label for p in s.points] == labels for s in series)
    assert series[0].points[0].value == 0  # zero-filled before the first reading
    assert all(p.value == 0 for p in series[1].points)  # nothing a year earlier
    assert series[1].points[0].at == day_start(date(2025, 10, 8))
    daily = await statistics(session, scopes[1], Granularity.day, date(2026, 10, 8), date(2026, 10, 14))
    assert [p.value for p in series[2].points] == [row.usage_m3 for row in daily.rows]


# --------------------------------------------------------------------------- GraphQL

STATISTICS = """
query($scope: UsageObjectInput!, $g: UsageGranularity!, $from: Date!, $to: Date!, $n: Int, $after: String) {
  usageStatistics(scope: $scope, granularity: $g, from: $from, to: $to, first: $n, after: $after) {
    rows { totalCount edges { node { unitId unitKind unitName parentName label usageM3 } } }
    pageSummary { count total mean maximum minimum }
    summary { count total mean maximum minimum }
  }
}
"""
SERIES = """
query($objects: [UsageObjectInput!]!) {
  usageSeries(objects: $objects, granularity: MONTH, from: "2026-10-01", to: "2026-11-30", chart: BAR, withLastYear: true) {
    chart labels series { name lastYear points { label value } }
  }
}
"""


@dataclass
class ApiWorld:
    utility: Utility
    admin: Staff
    west_operator: Staff
    no_statistics: Staff
    resident_token: str


class _CodeCatcher:
    code = ""

    async def send_login_code(self, phone: str, code: str) -> None:
        self.code = code


@pytest.fixture(scope="module")
async def api_world(committed_sessions: async_sessionmaker[AsyncSession]) -> ApiWorld:
    async with committed_sessions() as session, session.begin():
        utility = await build_utility(session)
        admin = await make_staff(session, areas=[utility.tree.company])
        west = await make_staff(session, permissions={"statistics:read"}, areas=[utility.tree.west])
        nobody = await make_staff(session, permissions={"archives:read"}, areas=[utility.tree.company])
        policy = auth_policy(TEST_SECRET)
        catcher = _CodeCatcher()
        phone = "13900000077"
        await request_login_code(session, phone=phone, now=utcnow(), policy=policy, sender=catcher)
        pair = await login_resident(session, phone=phone, code=catcher.code, now=utcnow(), policy=policy)
        await bind_at_counter(session, resident=pair.principal, household=utility.household)
    return ApiWorld(utility, admin, west, nobody, pair.access_token)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(database_url) as api:
        yield api


def _scope(**ids: str) -> dict[str, str]:
    return ids


def gid(type_name: str, pk: int | None) -> str:
    from backend.graphql.relay import encode_id

    assert pk is not None
    return str(encode_id(type_name, pk))


async def test_graphql_statistics_page_with_summaries(client: GraphQLClient, api_world: ApiWorld) -> None:
    token = await client.login(api_world.admin.username, api_world.admin.password)
    variables = {"scope": {"areaId": gid("Area", api_world.utility.tree.company.id)}, "g": "DAY",
                 "from": "2026-10-10", "to": "2026-10-19", "n": 5}

    result = await client.execute(STATISTICS, variables, token=token)

    assert "errors" not in result, result
    found = result["data"]["usageStatistics"]
    assert found["rows"]["totalCount"] == 20
    nodes = [edge["node"] for edge in found["rows"]["edges"]]
    assert [n["label"] for n in nodes] == ["2026-10-10", "2026-10-11", "2026-10-12", "2026-10-13", "2026-10-14"]
    assert {n["unitName"] for n in nodes} == {"城东片区"}
    assert nodes[0]["unitKind"] == "AREA" and nodes[0]["unitId"] == gid("Area", api_world.utility.tree.east.id)
    assert found["pageSummary"]["count"] == 5
    assert Decimal(found["pageSummary"]["total"]) == sum(Decimal(n["usageM3"]) for n in nodes)
    assert found["summary"]["count"] == 20
    assert Decimal(found["summary"]["total"]) > Decimal(found["pageSummary"]["total"])


async def test_graphql_statistics_statement_count_does_not_grow_with_page_size(
    client: GraphQLClient, api_world: ApiWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await client.login(api_world.admin.username, api_world.admin.password)
    state = client.http._transport.app.state  # type: ignore[attr-defined]
    variables = {"scope": {"areaId": gid("Area", api_world.utility.tree.company.id)}, "g": "DAY",
                 "from": "2026-10-01", "to": "2026-11-30"}
    await client.execute(STATISTICS, {**variables, "n": 1}, token=token)  # pool warmed up

    with counted_statements(monkeypatch, state.engine, state.read_engine) as small:
        two = await client.execute(STATISTICS, {**variables, "n": 2}, token=token)
    with counted_statements(monkeypatch, state.engine, state.read_engine) as large:
        many = await client.execute(STATISTICS, {**variables, "n": 100}, token=token)

    assert len(two["data"]["usageStatistics"]["rows"]["edges"]) == 2
    assert len(many["data"]["usageStatistics"]["rows"]["edges"]) == 100
    assert len(small) == len(large)
    assert len([s for s in large if "daily_usage" in s]) == 1


async def test_graphql_statistics_refusals(client: GraphQLClient, api_world: ApiWorld) -> None:
    utility = api_world.utility
    company = {"areaId": gid("Area", utility.tree.company.id)}
    base = {"g": "DAY", "from": "2026-10-10", "to": "2026-10-19"}

    west_token = await client.login(api_world.west_operator.username, api_world.west_operator.password)
    outside = await client.execute(STATISTICS, {**base, "scope": company}, token=west_token)
    assert [e["extensions"]["code"] for e in outside["errors"]] == ["NOT_FOUND"]
    assert outside["errors"][0]["extensions"]["field"] == "areaId"

    plain_token = await client.login(api_world.no_statistics.username, api_world.no_statistics.password)
    forbidden = await client.execute(STATISTICS, {**base, "scope": company}, token=plain_token)
    assert [e["extensions"]["code"] for e in forbidden["errors"]] == ["FORBIDDEN"]

    admin_token = await client.login(api_world.admin.username, api_world.admin.password)
    hourly = await client.execute(STATISTICS, {**base, "g": "HOUR", "from": "2026-09-18", "scope": company},
                                  token=admin_token)  # 32 days
    assert [(e["extensions"]["code"], e["extensions"]["field"]) for e in hourly["errors"]] == [
        ("HOURLY_SCOPE_UNSUPPORTED", "to")]
    two = await client.execute(STATISTICS, {**base, "scope": {**company, "meterId": gid("Meter", utility.rolling.id)}},
                               token=admin_token)
    assert [e["extensions"]["code"] for e in two["errors"]] == ["BAD_USER_INPUT"]
    backwards = await client.execute(STATISTICS, {**base, "from": "2026-10-20", "scope": company}, token=admin_token)
    assert [(e["extensions"]["code"], e["extensions"]["field"]) for e in backwards["errors"]] == [("INVALID", "from")]

    household = {"householdId": gid("Household", utility.household.id)}
    mine = await client.execute(STATISTICS, {**base, "scope": household}, token=api_world.resident_token)
    assert "errors" not in mine, mine
    assert mine["data"]["usageStatistics"]["rows"]["totalCount"] == 10  # the old meter x 10 days (new from 30th)
    area = await client.execute(STATISTICS, {**base, "scope": company}, token=api_world.resident_token)
    assert [e["extensions"]["code"] for e in area["errors"]] == ["NOT_FOUND"]


async def test_graphql_resident_usage_chart_with_last_year(client: GraphQLClient, api_world: ApiWorld) -> None:
    household = {"householdId": gid("Household", api_world.utility.household.id)}

    result = await client.execute(SERIES, {"objects": [household]}, token=api_world.resident_token)

    assert "errors" not in result, result
    chart = result["data"]["usageSeries"]
    assert chart["chart"] == "BAR"
    assert chart["labels"] == ["2026-10", "2026-11"]
    assert [s["lastYear"] for s in chart["series"]] == [False, True]
    assert Decimal(chart["series"][0]["points"][0]["value"]) > 0
    assert all(Decimal(p["value"]) == 0 for p in chart["series"][1]["points"])


async def lend_doubled_meter(session: AsyncSession, utility: Utility) -> tuple[datetime, datetime]:
    """The doubled meter serves the household from 15 Oct 00:00 until 20 Oct 00:00 (both
    midnights), reading all along; returns the assignment's bounds."""
    served_from, served_to = day_start(date(2026, 10, 15)), day_start(date(2026, 10, 20))
    # A west meter serving an east household: a row from before the same-subtree rule.
    await insert_legacy_assignment(session, meter_id=utility.doubled.id, household_id=utility.household.id,
                                   valid_from=served_from)
    await end_assignment(session, meter_id=utility.doubled.id, valid_to=served_to, end_reading=Decimal(0))
    return served_from, served_to


async def test_a_meter_unassigned_at_midnight_does_not_count_for_the_household_the_day_after(
    session: AsyncSession,
) -> None:
    utility = await build_utility(session)
    await lend_doubled_meter(session, utility)
    household = Scope(ScopeKind.household, utility.household.id)

    after = await statistics(session, household, Granularity.period, date(2026, 10, 20), date(2026, 10, 25))
    during = await statistics(session, household, Granularity.period, date(2026, 10, 15), date(2026, 10, 19))

    # 20 Oct 00:00 closes 19 Oct: from the 20th on the meter is no longer the household's.
    assert utility.doubled.id not in {row.unit_id for row in after.rows}
    for page, first, last in ((after, date(2026, 10, 20), date(2026, 10, 25)),
                              (during, date(2026, 10, 15), date(2026, 10, 19))):
        expected = await usage_between(session, household_ids=[utility.household.id], start=day_start(first),
                                       end=day_start(last + timedelta(days=1)))
        assert page.summary.total == expected[utility.household.id], (first, last)
    assert {row.unit_id for row in during.rows} == {utility.doubled.id, utility.old.id}


async def test_a_resident_sees_a_meter_only_on_the_days_it_served_their_household(session: AsyncSession) -> None:
    utility = await build_utility(session)
    await lend_doubled_meter(session, utility)
    meter = Scope(ScopeKind.meter, utility.doubled.id)
    resident = {"scope_patterns": [], "household_ids": [utility.household.id]}

    mine = await statistics(session, meter, Granularity.day, date(2026, 10, 10), date(2026, 10, 25), **resident)
    staff = await statistics(session, meter, Granularity.day, date(2026, 10, 10), date(2026, 10, 25))

    served = {row.label for row in mine.rows if row.usage_m3}
    assert served == {f"2026-10-{day}" for day in range(15, 20)}
    assert mine.summary.total == (await raw_usage(session, [utility.doubled.id], date(2026, 10, 15),
                                                  date(2026, 10, 19)))[utility.doubled.id]
    assert staff.summary.total > mine.summary.total  # the same meter, unclipped, for staff
    series = await analytics.usage_series(session, scopes=[meter], granularity=Granularity.month, start_day=OCT,
                                          end_day=MONTH_ENDS[OCT], tz=TZ, **resident)  # type: ignore[arg-type]
    assert series[0].points[0].value == mine.summary.total


def doubled_total(at: datetime) -> Decimal:
    """The doubled meter's register at its hourly reading ``at`` (build_utility's series)."""
    hours = int((at - START).total_seconds() // 3600)
    return Decimal(50) + sum((hourly_use(hour) for hour in range(1, hours + 1)), Decimal(0))


async def test_a_meter_moved_out_and_back_in_on_one_day_counts_only_while_it_served(session: AsyncSession) -> None:
    """The doubled meter serves the household from 15 Oct, moves out on the 17th at 10:00
    and back in at 14:00, until 20 Oct 00:00: the 17th counts for the household from
    00:00 to 10:00 and from 14:00 on, as usage_between counts the two assignments, in
    every granularity and in the ledger."""
    utility = await build_utility(session)
    meter, household_id = utility.doubled.id, utility.household.id
    out_at, back_at = datetime(2026, 10, 17, 10, tzinfo=ZONE), datetime(2026, 10, 17, 14, tzinfo=ZONE)
    end_at = day_start(date(2026, 10, 20))
    # Handover registers between the meter's own half-hour readings, so usage stays whole.
    half_hour = timedelta(minutes=30)
    # A meter serves only households in its area's subtree: it moves to the household's first.
    await update_meter(session, meter_id=meter, changes=MeterChanges(area_id=utility.tree.east_community.id))
    await assign_meter(session, meter_id=meter, household_id=household_id, valid_from=day_start(date(2026, 10, 15)))
    await end_assignment(session, meter_id=meter, valid_to=out_at, end_reading=doubled_total(out_at - half_hour))
    await assign_meter(session, meter_id=meter, household_id=household_id, valid_from=back_at,
                       start_reading=doubled_total(back_at - half_hour))
    await end_assignment(session, meter_id=meter, valid_to=end_at, end_reading=doubled_total(end_at - half_hour))
    household = Scope(ScopeKind.household, household_id)
    first, last = date(2026, 10, 15), date(2026, 10, 19)

    period = await statistics(session, household, Granularity.period, first, last)
    daily = await statistics(session, household, Granularity.day, first, last)
    hourly = await statistics(session, household, Granularity.hour, first, last)
    ledger = await analytics.usage_ledger(session, scope=household, granularity=Granularity.period, start_day=first,
                                          end_day=last, scope_patterns=None, tz=TZ)

    async def used(start: datetime, end: datetime) -> Decimal:
        return (await usage_between(session, meter_ids=[meter], start=start, end=end))[meter]

    served = await used(day_start(first), out_at) + await used(back_at, end_at)
    the_17th = await used(day_start(date(2026, 10, 17)), out_at) + await used(back_at, day_start(date(2026, 10, 18)))
    # The four hours away are really left out.
    assert the_17th < (await raw_usage(session, [meter], date(2026, 10, 17), date(2026, 10, 17)))[meter]
    assert {row.unit_id: row.usage_m3 for row in period.rows}[meter] == served
    assert {row.label: row.usage_m3 for row in daily.rows if row.unit_id == meter}["2026-10-17"] == the_17th
    assert sum(row.usage_m3 for row in daily.rows if row.unit_id == meter) == served
    # Hourly: the meter serves no part of the four hours away, so they count no meter (no
    # figure, as for a unit without meters); every other hour has its figure.
    hours = {row.period_start: row for row in hourly.rows if row.unit_id == meter}
    away = {out_at + timedelta(hours=k) for k in range(4)}
    assert {(hours[at].meters, hours[at].usage_m3) for at in away} == {(0, None)}
    assert all(row.covered_meters == row.meters == 1 for at, row in hours.items() if at not in away)
    assert sum(row.usage_m3 for at, row in hours.items() if at not in away) == served  # type: ignore[misc]
    (row,) = [row for row in ledger.rows if row.meter_id == meter]
    assert row.usage_m3 == served
    assert (row.start_at, row.end_at) == (day_start(first) - half_hour, end_at)
    assert ledger.total == period.summary.total
