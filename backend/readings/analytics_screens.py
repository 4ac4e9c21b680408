"""The Excel exports of 用水统计, 用水台账 and 同期/环期对比 (:mod:`backend.readings.screens`).

Each screen's JSON filters use the GraphQL argument names: exactly one of ``areaId``,
``householdId``, ``concentratorId``, ``meterId`` (global ids), ``granularity`` (the
service's lower-case values), ``from`` and ``to`` (``YYYY-MM-DD``); comparisons also take
``basis``, ``orderBy`` and ``outlierPercent``. Rows are the same rows the GraphQL queries
page through, in the same order, for the caller's scope. Below the rows, the statistics
export writes the summary lines the screen shows (合计 / 均值 / 最大 / 最小, the query's
``summary``) and the ledger export the area totals and their 合计 (``areaTotals``,
``total``), each with a bilingual label (:class:`~backend.readings.screens.SummaryLine`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from backend.clock import parse_day
from backend.errors import DomainError, ErrorCode
from backend.readings import analytics
from backend.readings.analytics import ComparisonBasis, ComparisonOrder, Granularity, Scope, ScopeKind
from backend.readings.screens import (
    FOUR_PLACES_FORMAT,
    TIME_FORMAT,
    ExportRequest,
    Screen,
    ScreenColumn,
    ScreenKind,
    SummaryLine,
    filter_choice,
    filter_id,
    local_time,
    register_screen,
)

_SCOPE_KEYS = (("areaId", "Area", ScopeKind.area), ("householdId", "Household", ScopeKind.household),
               ("concentratorId", "Concentrator", ScopeKind.concentrator), ("meterId", "Meter", ScopeKind.meter))


def scope_from(filters: Mapping[str, Any]) -> Scope:
    """The one object the filters name."""
    found = [(kind, pk) for key, type_name, kind in _SCOPE_KEYS
             if (pk := filter_id(filters, key, type_name)) is not None]
    if len(found) != 1:
        raise DomainError("请选择且仅选择一个对象 (区域/住户/集中器/表计)",
                          "Give exactly one of areaId, householdId, concentratorId, meterId",
                          field="areaId", code=ErrorCode.REQUIRED if not found else ErrorCode.INVALID)
    kind, pk = found[0]
    return Scope(kind, pk)


def day_from(filters: Mapping[str, Any], key: str) -> date:
    value = filters.get(key)
    if value in (None, ""):
        raise DomainError("请填写日期", "A date is required", field=key, code=ErrorCode.REQUIRED)
    return parse_day(value, field=key)


def _granularity(filters: Mapping[str, Any], allowed: tuple[str, ...], default: str) -> str:
    return filter_choice(filters, "granularity", allowed) or default


def _reach(request: ExportRequest) -> dict[str, Any]:
    return {**analytics.reach_arguments(request.reach), "tz": request.tz}


# --------------------------------------------------------------------------- 用水统计

STATISTICS_COLUMNS = (
    ScreenColumn("parent_name", "上级单位", "Parent unit", 18),
    ScreenColumn("unit_name", "单位名称", "Unit", 20),
    ScreenColumn("unit_code", "编码", "Code", 14),
    ScreenColumn("label", "日期", "Period", 18),
    ScreenColumn("usage_m3", "用水量(m³)", "Usage (m³)", 14, FOUR_PLACES_FORMAT),
    # Hourly rows only (empty otherwise): usage_m3 is then the covered meters' and empty
    # when no meter has an hourly figure (backend/readings/analytics/hourly.py).
    ScreenColumn("meters", "表数", "Meters", 10),
    ScreenColumn("covered_meters", "覆盖表数", "Covered meters", 12),
    ScreenColumn("coverage_percent", "覆盖率(%)", "Coverage (%)", 12, "0.00"),
)


# The summary lines below the rows, as the screen shows them under the list.
SUMMARY_LABELS = (("total", "合计", "Total"), ("mean", "均值", "Mean"), ("maximum", "最大", "Maximum"),
                  ("minimum", "最小", "Minimum"))


def summary_lines(summary: analytics.UsageSummary) -> list[SummaryLine]:
    """合计 / 均值 / 最大 / 最小 in the usage column (empty when there are no rows, but 合计 0)."""
    return [SummaryLine(label, label_en, {"usage_m3": getattr(summary, field)}) for field, label, label_en in SUMMARY_LABELS]


async def _statistics_rows(session: AsyncSession, request: ExportRequest) -> AsyncIterator[Mapping[str, Any] | SummaryLine]:
    filters = request.filters
    granularity = _granularity(filters, tuple(g.value for g in Granularity), Granularity.day.value)
    async for row in analytics.all_statistics_rows(
        session, scope=scope_from(filters), granularity=Granularity(granularity), start_day=day_from(filters, "from"),
        end_day=day_from(filters, "to"), **_reach(request),
    ):
        if isinstance(row, analytics.UsageSummary):
            for line in summary_lines(row):
                yield line
            continue
        yield {"parent_name": row.parent_name, "unit_name": row.unit_name, "unit_code": row.unit_code,
               "label": row.label, "usage_m3": row.usage_m3, "meters": row.meters,
               "covered_meters": row.covered_meters, "coverage_percent": row.coverage_percent}


# --------------------------------------------------------------------------- 用水台账

LEDGER_COLUMNS = (
    ScreenColumn("area_name", "区域", "Area", 16),
    ScreenColumn("household_name", "住户", "Household", 14),
    ScreenColumn("account_no", "户号", "Account no.", 14),
    ScreenColumn("meter_code", "表计编码", "Meter code", 14),
    ScreenColumn("meter_name", "表计名称", "Meter name", 16),
    ScreenColumn("label", "期间", "Period", 22),
    ScreenColumn("start_at", "起码时间", "Start time", 20, TIME_FORMAT),
    ScreenColumn("end_at", "止码时间", "End time", 20, TIME_FORMAT),
    ScreenColumn("multiplier", "倍率", "Multiplier", 8, "0.####"),
    ScreenColumn("start_reading", "起码", "Start reading", 14, FOUR_PLACES_FORMAT),
    ScreenColumn("end_reading", "止码", "End reading", 14, FOUR_PLACES_FORMAT),
    ScreenColumn("usage_m3", "统计值(m³)", "Usage (m³)", 14, FOUR_PLACES_FORMAT),
)


def ledger_total_lines(totals: analytics.LedgerPage) -> list[SummaryLine]:
    """One line per area total ("城东片区 合计 / Area total", its usage in 统计值), then the
    合计 over them: the screen's ``areaTotals`` and ``total``. The area's name is in the
    label, so the line names its area whichever columns were chosen."""
    return [
        *(SummaryLine(f"{total.area_name} 合计", "Area total", {"usage_m3": total.usage_m3})
          for total in totals.area_totals),
        SummaryLine("合计", "Total", {"usage_m3": totals.total}),
    ]


async def _ledger_rows(session: AsyncSession, request: ExportRequest) -> AsyncIterator[Mapping[str, Any] | SummaryLine]:
    filters = request.filters
    granularity = _granularity(filters, ("period", "month", "year"), Granularity.period.value)
    async for row in analytics.all_ledger_rows(
        session, scope=scope_from(filters), granularity=Granularity(granularity), start_day=day_from(filters, "from"),
        end_day=day_from(filters, "to"), **_reach(request),
    ):
        if isinstance(row, analytics.LedgerPage):
            for line in ledger_total_lines(row):
                yield line
            continue
        yield {
            "area_name": row.area_name, "household_name": row.household_name, "account_no": row.account_no,
            "meter_code": row.meter_code, "meter_name": row.meter_name, "label": row.label,
            "start_at": local_time(row.start_at, request.tz), "end_at": local_time(row.end_at, request.tz),
            "multiplier": row.multiplier, "start_reading": row.start_reading, "end_reading": row.end_reading,
            "usage_m3": row.usage_m3,
        }


# --------------------------------------------------------------------------- 同期/环期对比

COMPARISON_COLUMNS = (
    ScreenColumn("parent_name", "上级单位", "Parent unit", 18),
    ScreenColumn("unit_name", "单位名称", "Unit", 20),
    ScreenColumn("label", "期间", "Period", 12),
    ScreenColumn("current_m3", "本期用水量(m³)", "Current (m³)", 14, FOUR_PLACES_FORMAT),
    ScreenColumn("previous_m3", "对比期用水量(m³)", "Previous (m³)", 14, FOUR_PLACES_FORMAT),
    ScreenColumn("change_m3", "变化量(m³)", "Change (m³)", 14, FOUR_PLACES_FORMAT),
    ScreenColumn("change_percent", "变化率(%)", "Change (%)", 12, "0.00"),
    ScreenColumn("z_score", "Z 值", "z-score", 10, "0.00"),
    ScreenColumn("outlier", "异常", "Outlier", 8),
)


async def _comparison_rows(session: AsyncSession, request: ExportRequest) -> AsyncIterator[Mapping[str, Any]]:
    filters = request.filters
    basis = filter_choice(filters, "basis", [b.value for b in ComparisonBasis]) or ComparisonBasis.year_on_year.value
    order = filter_choice(filters, "orderBy", [o.value for o in ComparisonOrder]) or ComparisonOrder.unit.value
    granularity = _granularity(filters, ("month", "quarter"), "month")
    outlier_percent = analytics.DEFAULT_OUTLIER_PERCENT
    if filters.get("outlierPercent") not in (None, ""):
        try:
            outlier_percent = Decimal(str(filters["outlierPercent"]))
        except InvalidOperation:
            raise DomainError("阈值无效", "Invalid threshold", field="outlierPercent", code=ErrorCode.INVALID) from None
    async for row in analytics.all_comparison_rows(
        session, scope=scope_from(filters), basis=ComparisonBasis(basis), quarterly=granularity == "quarter",
        start_month=day_from(filters, "from"), end_month=day_from(filters, "to"), order=ComparisonOrder(order),
        outlier_percent=outlier_percent, **_reach(request),
    ):
        yield {"parent_name": row.parent_name, "unit_name": row.unit_name, "label": row.label,
               "current_m3": row.current_m3, "previous_m3": row.previous_m3, "change_m3": row.change_m3,
               "change_percent": row.change_percent, "z_score": row.z_score, "outlier": "是" if row.outlier else ""}


register_screen(Screen(ScreenKind.statistics, "用水统计", STATISTICS_COLUMNS,
                       ("parent_name", "unit_name", "label", "usage_m3"), _statistics_rows, "statistics:read"))
register_screen(Screen(ScreenKind.ledger, "用水台账", LEDGER_COLUMNS,
                       tuple(column.key for column in LEDGER_COLUMNS), _ledger_rows, "ledgers:read"))
register_screen(Screen(ScreenKind.comparison, "同期环期对比", COMPARISON_COLUMNS,
                       tuple(column.key for column in COMPARISON_COLUMNS), _comparison_rows, "comparisons:read"))
