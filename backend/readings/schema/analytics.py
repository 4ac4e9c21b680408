"""用水统计 / 用水台账 / 同期环期对比 and the usage chart: GraphQL over
:mod:`backend.readings.analytics`.

Staff and API clients read within their area scope; a resident may ask for statistics
and the chart of their own household (or a meter that served it) only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, TypeVar

import strawberry
from strawberry.types import Info

from backend.auth.principal import Principal
from backend.auth.scope import reach_of
from backend.errors import BadUserInput
from backend.graphql.limits import Expensive
from backend.graphql.pagination import Connection, PageRequest
from backend.graphql.periods import FROM_DAY, FROM_MONTH, TO_DAY, TO_MONTH
from backend.graphql.permissions import Requires, RequiresAny
from backend.graphql.relay import decode_id, encode_id
from backend.readings import analytics
from backend.readings.analytics import ComparisonBasis, ComparisonOrder, Granularity, Scope, ScopeKind
from backend.readings.schema import costs

_T = TypeVar("_T")


@strawberry.enum(name="UsageGranularity", description="小时 / 日 / 月 / 年 / 时段 (one total for the range)")
class UsageGranularityEnum(Enum):
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"
    YEAR = "year"
    PERIOD = "period"


@strawberry.enum(name="LedgerGranularity", description="时段 / 月 / 年度台账")
class LedgerGranularityEnum(Enum):
    PERIOD = "period"
    MONTH = "month"
    YEAR = "year"


@strawberry.enum(name="ComparisonBasis", description="同比 (same period last year) / 环比 (the period before)")
class ComparisonBasisEnum(Enum):
    YEAR_ON_YEAR = "year_on_year"
    PERIOD_ON_PERIOD = "period_on_period"


@strawberry.enum(name="ComparisonGranularity")
class ComparisonGranularityEnum(Enum):
    MONTH = "month"
    QUARTER = "quarter"


@strawberry.enum(name="ComparisonOrder")
class ComparisonOrderEnum(Enum):
    UNIT = "unit"
    CHANGE_PERCENT_DESC = "change_percent_desc"
    CHANGE_PERCENT_ASC = "change_percent_asc"
    CHANGE_DESC = "change_desc"
    CHANGE_ASC = "change_asc"
    Z_SCORE_DESC = "z_score_desc"


@strawberry.enum(name="ChartKind")
class ChartKindEnum(Enum):
    LINE = "line"
    BAR = "bar"


@strawberry.enum(name="UsageUnitKind", description="The kind of a statistics row's unit: a child area or a meter.")
class UsageUnitKindEnum(Enum):
    AREA = "area"
    HOUSEHOLD = "household"
    CONCENTRATOR = "concentrator"
    METER = "meter"


_NODE_TYPE = {ScopeKind.area: "Area", ScopeKind.household: "Household", ScopeKind.concentrator: "Concentrator",
              ScopeKind.meter: "Meter"}


def _unit_fields(row: analytics.StatisticsRow | analytics.ComparisonRow) -> dict[str, Any]:
    """The child-unit fields a statistics row and a comparison row share."""
    return {"unit_id": encode_id(_NODE_TYPE[row.unit_kind], row.unit_id),
            "unit_kind": UsageUnitKindEnum(row.unit_kind.value), "unit_name": row.unit_name,
            "unit_code": row.unit_code, "parent_name": row.parent_name}


@strawberry.input(description="Exactly one of the four: the object whose usage is asked for.")
class UsageObjectInput:
    area_id: strawberry.ID | None = None
    household_id: strawberry.ID | None = None
    concentrator_id: strawberry.ID | None = None
    meter_id: strawberry.ID | None = None

    def to_scope(self, field: str = "scope") -> Scope:
        given = [(kind, value) for kind, value in (
            (ScopeKind.area, self.area_id), (ScopeKind.household, self.household_id),
            (ScopeKind.concentrator, self.concentrator_id), (ScopeKind.meter, self.meter_id),
        ) if value]
        if len(given) != 1:
            raise BadUserInput("请选择且仅选择一个对象 (区域/住户/集中器/表计)",
                               "Give exactly one of areaId, householdId, concentratorId, meterId", field=field)
        kind, value = given[0]
        return Scope(kind, decode_id(value, _NODE_TYPE[kind], field=f"{field}.{kind.value}Id"))


@strawberry.type(description="合计 / 均值 / 最大值 / 最小值 of usage rows (m³), over the rows with a figure (an hour "
                  "that is not available is left out, as an empty cell).")
class UsageSummaryType:
    count: int = strawberry.field(description="The rows summarised: every row, but hourly rows without a figure.")
    total: Decimal
    mean: Decimal | None
    maximum: Decimal | None
    minimum: Decimal | None

    @classmethod
    def of(cls, summary: analytics.UsageSummary) -> UsageSummaryType:
        return cls(count=summary.count, total=summary.total, mean=summary.mean, maximum=summary.maximum,
                   minimum=summary.minimum)


# Hourly figures come from the readings, and only meters read at least hourly have them
# (backend/readings/analytics/hourly.py); the same words on statistics rows and chart points.
_USAGE = ("用水量 (m³, 4 places). HOUR: the usage of the meters with an hourly figure for the hour (a reading in "
          "the hour and in the hour before), never estimated for the others; null when no meter has one (不可用). "
          "Never null for other granularities.")
_METERS = ("HOUR only (null otherwise): the meters counted in the hour, those that count for the unit (object) on "
           "its day and have a reading in the window, whether read hourly or not.")
_COVERED = "HOUR only (null otherwise): how many of `meters` have an hourly figure for the hour (所覆盖表数)."
_COVERAGE = ("HOUR only (null otherwise): coveredMeters / meters in percent, 2 places (覆盖率); null when meters is 0. "
             "Below 100 the usage is partial.")


@strawberry.type(name="UsageStatisticsRow", description="One child unit's usage in one period.")
class UsageStatisticsRowType:
    unit_id: strawberry.ID = strawberry.field(description="Global id of the unit (an Area or a Meter).")
    unit_kind: UsageUnitKindEnum
    unit_name: str = strawberry.field(description="单位名称")
    unit_code: str | None
    parent_name: str = strawberry.field(description="上级单位")
    period_start: datetime
    label: str = strawberry.field(description="日期: 2026-11-03 / 2026-11 / 2026 / 2026-11-03 08:00 / from~to")
    usage_m3: Decimal | None = strawberry.field(description=_USAGE)
    meters: int | None = strawberry.field(description=_METERS)
    covered_meters: int | None = strawberry.field(description=_COVERED)
    coverage_percent: Decimal | None = strawberry.field(description=_COVERAGE)

    @classmethod
    def of(cls, row: analytics.StatisticsRow) -> UsageStatisticsRowType:
        return cls(**_unit_fields(row), period_start=row.period_start, label=row.label, usage_m3=row.usage_m3,
                   meters=row.meters, covered_meters=row.covered_meters, coverage_percent=row.coverage_percent)


@strawberry.type(name="UsageStatistics")
class UsageStatisticsType:
    rows: Connection[UsageStatisticsRowType]
    page_summary: UsageSummaryType = strawberry.field(description="Summary of this page's rows.")
    summary: UsageSummaryType = strawberry.field(description="Summary of every row of the query (all pages).")


@strawberry.type(name="UsagePoint")
class UsagePointType:
    label: str
    at: datetime
    value: Decimal | None = strawberry.field(description=_USAGE.replace("用水量", "The object's usage"))
    meters: int | None = strawberry.field(description=_METERS)
    covered_meters: int | None = strawberry.field(description=_COVERED)
    coverage_percent: Decimal | None = strawberry.field(description=_COVERAGE)


@strawberry.type(name="UsageSeries")
class UsageSeriesType:
    name: str
    object_id: strawberry.ID
    last_year: bool = strawberry.field(description="This object's same window a year earlier, on this year's labels.")
    points: list[UsagePointType]


@strawberry.type(name="UsageChart")
class UsageChartType:
    chart: ChartKindEnum
    labels: list[str] = strawberry.field(description="The x axis shared by every series.")
    series: list[UsageSeriesType]


@strawberry.type(name="UsageLedgerRow", description="台账: one meter over one period.")
class UsageLedgerRowType:
    meter_id: strawberry.ID
    meter_code: str
    meter_name: str
    area_id: strawberry.ID
    area_name: str
    household_id: strawberry.ID | None
    household_name: str | None
    account_no: str | None
    period_start: date
    period_end: date
    label: str
    start_at: datetime | None = strawberry.field(description="起码时间")
    start_reading: Decimal | None = strawberry.field(description="起码")
    end_at: datetime | None = strawberry.field(description="止码时间")
    end_reading: Decimal | None = strawberry.field(description="止码")
    multiplier: Decimal = strawberry.field(description="倍率")
    usage_m3: Decimal = strawberry.field(description="统计值 (m³, multiplier applied, rollovers unwrapped)")

    @classmethod
    def of(cls, row: analytics.LedgerRow) -> UsageLedgerRowType:
        return cls(
            meter_id=encode_id("Meter", row.meter_id), meter_code=row.meter_code, meter_name=row.meter_name,
            area_id=encode_id("Area", row.area_id), area_name=row.area_name,
            household_id=encode_id("Household", row.household_id) if row.household_id is not None else None,
            household_name=row.household_name, account_no=row.account_no, period_start=row.period_start,
            period_end=row.period_end, label=row.label, start_at=row.start_at, start_reading=row.start_reading,
            end_at=row.end_at, end_reading=row.end_reading, multiplier=row.multiplier, usage_m3=row.usage_m3,
        )


@strawberry.type(name="LedgerAreaTotal")
class LedgerAreaTotalType:
    area_id: strawberry.ID
    area_name: str
    rows: int
    usage_m3: Decimal


@strawberry.type(name="UsageLedger")
class UsageLedgerType:
    rows: Connection[UsageLedgerRowType]
    area_totals: list[LedgerAreaTotalType] = strawberry.field(
        description="Per child area of an area object (its subtree), else per meter area; over all pages.")
    total: Decimal


@strawberry.type(name="UsageComparisonRow")
class UsageComparisonRowType:
    unit_id: strawberry.ID
    unit_kind: UsageUnitKindEnum
    unit_name: str
    unit_code: str | None
    parent_name: str
    period_start: date
    period_end: date
    label: str
    previous_start: date
    previous_end: date
    current_m3: Decimal
    previous_m3: Decimal
    change_m3: Decimal
    change_percent: Decimal | None = strawberry.field(description="null when the previous figure is 0")
    z_score: float | None = strawberry.field(description="z-score of changePercent among the period's units")
    outlier: bool = strawberry.field(
        description="|zScore| > 2 when the period has >= 6 units with a percent change, else "
        "|changePercent| > outlierPercent.")

    @classmethod
    def of(cls, row: analytics.ComparisonRow) -> UsageComparisonRowType:
        return cls(
            **_unit_fields(row), period_start=row.period_start, period_end=row.period_end, label=row.label,
            previous_start=row.previous_start, previous_end=row.previous_end, current_m3=row.current_m3,
            previous_m3=row.previous_m3, change_m3=row.change_m3, change_percent=row.change_percent,
            z_score=row.z_score, outlier=row.outlier,
        )


def reach(principal: Principal) -> dict[str, Any]:
    """The data scope keyword arguments of the analytics service for ``principal``."""
    return analytics.reach_arguments(reach_of(principal))


def _page(first: int | None, after: str | None) -> PageRequest:
    return PageRequest.from_args(first, after)


async def _ask(info: Info, query: Callable[..., Awaitable[_T]], page: PageRequest | None = None, **arguments: Any) -> _T:
    """``query`` (an :mod:`~backend.readings.analytics` function) in a read session, in the
    utility's zone, within the caller's reach, for ``page`` when it pages."""
    context = info.context
    if page is not None:
        arguments.update(offset=page.offset, limit=page.limit)
    async with context.read() as session:
        return await query(session, tz=context.settings.timezone, **arguments, **reach(context.caller))


@strawberry.type
class Query:
    @strawberry.field(
        permission_classes=[RequiresAny("statistics:read", "resident:self")],
        description="用水统计: usage per child unit of the object per period, paginated, with the page's and "
        "the whole query's sum / mean / max / min. HOUR for any object over <= 31 days (HOURLY_SCOPE_UNSUPPORTED), "
        "with each row's coverage; DAY over <= 366 days (RANGE_TOO_LONG).",
        extensions=[Expensive(weight=costs.over_scope)],
    )
    async def usage_statistics(
        self, info: Info, scope: UsageObjectInput, granularity: UsageGranularityEnum,
        from_: Annotated[date, strawberry.argument(name="from", description=FROM_DAY)],
        to: Annotated[date, strawberry.argument(description=TO_DAY)],
        first: int | None = None, after: str | None = None,
    ) -> UsageStatisticsType:
        page = _page(first, after)
        found = await _ask(info, analytics.usage_statistics, page, scope=scope.to_scope(),
                           granularity=Granularity(granularity.value), start_day=from_, end_day=to)
        rows = Connection.from_page([UsageStatisticsRowType.of(row) for row in found.rows], total=found.total_count,
                                    offset=page.offset)
        return UsageStatisticsType(rows=rows, page_summary=UsageSummaryType.of(found.page_summary),
                                   summary=UsageSummaryType.of(found.summary))

    @strawberry.field(
        permission_classes=[RequiresAny("statistics:read", "resident:self")],
        description="Chart series: one per object (zero-filled, same labels), optionally each with last year's "
        "same window; `chart` is echoed for the client. HOUR for any object over <= 31 days, each point with its "
        "coverage (an hour no meter has a figure for is null, not 0).",
        extensions=[Expensive(weight=costs.series)],
    )
    async def usage_series(
        self, info: Info, objects: list[UsageObjectInput], granularity: UsageGranularityEnum,
        from_: Annotated[date, strawberry.argument(name="from", description=FROM_DAY)],
        to: Annotated[date, strawberry.argument(description=TO_DAY)],
        chart: ChartKindEnum = ChartKindEnum.LINE, with_last_year: bool = False,
    ) -> UsageChartType:
        scopes = [item.to_scope(f"objects.{index}") for index, item in enumerate(objects)]
        found = await _ask(info, analytics.usage_series, scopes=scopes, granularity=Granularity(granularity.value),
                           start_day=from_, end_day=to, with_last_year=with_last_year)
        labels = [point.label for point in found[0].points] if found else []
        return UsageChartType(chart=chart, labels=labels, series=[
            UsageSeriesType(name=s.name, object_id=encode_id(_NODE_TYPE[s.target.kind], s.target.id), last_year=s.last_year,
                            points=[UsagePointType(label=p.label, at=p.at, value=p.value, meters=p.meters,
                                                  covered_meters=p.covered_meters, coverage_percent=p.coverage_percent)
                                   for p in s.points])
            for s in found
        ])

    @strawberry.field(
        permission_classes=[Requires("ledgers:read")],
        description="用水台账: per meter per period (or month / year) start and end readings, multiplier and usage, "
        "with totals per area and overall.",
        extensions=[Expensive(weight=costs.over_scope)],
    )
    async def usage_ledger(
        self, info: Info, scope: UsageObjectInput, granularity: LedgerGranularityEnum,
        from_: Annotated[date, strawberry.argument(name="from", description=FROM_DAY)],
        to: Annotated[date, strawberry.argument(description=TO_DAY)],
        first: int | None = None, after: str | None = None,
    ) -> UsageLedgerType:
        page = _page(first, after)
        found = await _ask(info, analytics.usage_ledger, page, scope=scope.to_scope(),
                           granularity=Granularity(granularity.value), start_day=from_, end_day=to)
        rows = Connection.from_page([UsageLedgerRowType.of(row) for row in found.rows], total=found.total_count,
                                    offset=page.offset)
        return UsageLedgerType(rows=rows, total=found.total, area_totals=[
            LedgerAreaTotalType(area_id=encode_id("Area", t.area_id), area_name=t.area_name, rows=t.meter_rows,
                                usage_m3=t.usage_m3)
            for t in found.area_totals
        ])

    @strawberry.field(
        permission_classes=[Requires("comparisons:read")],
        description="同比 / 环比 per child unit per month or quarter from `from` to `to` (months), with the "
        "change, % change and an outlier flag; sortable so outliers come first.",
        extensions=[Expensive(weight=costs.comparison)],
    )
    async def usage_comparison(
        self, info: Info, scope: UsageObjectInput, basis: ComparisonBasisEnum, granularity: ComparisonGranularityEnum,
        from_: Annotated[date, strawberry.argument(name="from", description=FROM_MONTH)],
        to: Annotated[date, strawberry.argument(description=TO_MONTH)],
        order_by: ComparisonOrderEnum = ComparisonOrderEnum.UNIT, outlier_percent: Decimal | None = None,
        first: int | None = None, after: str | None = None,
    ) -> Connection[UsageComparisonRowType]:
        page = _page(first, after)
        found = await _ask(
            info, analytics.usage_comparison, page, scope=scope.to_scope(), basis=ComparisonBasis(basis.value),
            quarterly=granularity is ComparisonGranularityEnum.QUARTER, start_month=from_, end_month=to,
            order=ComparisonOrder(order_by.value),
            outlier_percent=outlier_percent if outlier_percent is not None else analytics.DEFAULT_OUTLIER_PERCENT,
        )
        return Connection.from_page([UsageComparisonRowType.of(row) for row in found.rows], total=found.total_count,
                                    offset=page.offset)
