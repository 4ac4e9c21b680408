"""Usage statistics (用水统计): each child unit's usage per period, zero-filled, with its
summary; hourly statistics of any object from the readings, with their coverage
(:mod:`.hourly`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.readings.analytics.hourly import check_hourly, hourly_params, hourly_statistics_sql
from backend.readings.analytics.periods import _BUCKET, _PERIODS, Granularity, _check_range, _periods_params, period_label
from backend.readings.analytics.units import (
    _UNITS_SQL,
    Scope,
    ScopeKind,
    Target,
    _find_with_params,
    _unit_usage_sql,
    page_with_summary,
)
from backend.readings.partitions import as_zone
from backend.readings.rollup import day_start

FOUR_PLACES = Decimal("0.0001")


@dataclass(frozen=True, slots=True)
class UsageSummary:
    """合计 / 均值 / 最大值 / 最小值 over ``count`` rows (all None but the total when empty)."""

    count: int
    total: Decimal
    mean: Decimal | None
    maximum: Decimal | None
    minimum: Decimal | None

    @classmethod
    def of(cls, values: Sequence[Decimal]) -> UsageSummary:
        if not values:
            return cls(0, Decimal("0.0000"), None, None, None)
        total = sum(values, Decimal(0))
        return cls(len(values), _q4(total), _q4(total / len(values)), max(values), min(values))


@dataclass(frozen=True, slots=True)
class StatisticsRow:
    """One child unit's usage in one period: 上级单位 / 单位名称 / 日期 / 用水量."""

    unit_kind: ScopeKind
    unit_id: int
    unit_name: str
    unit_code: str | None
    parent_name: str
    period_start: datetime  # the period's first instant in the utility's zone
    label: str
    usage_m3: Decimal | None  # None only in hourly rows: no meter of the unit has a figure for the hour
    # Hourly rows only (None otherwise), see backend.readings.analytics.hourly:
    meters: int | None = None  # the unit's meters that count in the hour's day and report in the window
    covered_meters: int | None = None  # those with an hourly figure for the hour
    coverage_percent: Decimal | None = None  # covered_meters / meters in %, None when meters is 0


@dataclass(frozen=True, slots=True)
class StatisticsPage:
    rows: list[StatisticsRow]
    total_count: int
    summary: UsageSummary
    page_summary: UsageSummary


def _q4(value: Decimal) -> Decimal:
    return value.quantize(FOUR_PLACES)


def _statistics_sql(kind: ScopeKind, granularity: Granularity) -> str:
    return f"""
    WITH {_UNITS_SQL[kind]}, {_PERIODS},
    usage AS ({_unit_usage_sql(kind, _BUCKET[granularity])}
    ), stat_rows AS (
        SELECT u.unit_kind, u.unit_id, u.unit_name, u.unit_code, u.parent_name, p.period_start,
               coalesce(x.usage_m3, 0) AS usage_m3
        FROM (SELECT DISTINCT * FROM units) u CROSS JOIN periods p
        LEFT JOIN usage x ON x.unit_kind = u.unit_kind AND x.unit_id = u.unit_id AND x.period_start = p.period_start
    ), {page_with_summary("stat_rows", order="unit_name, unit_kind, unit_id, period_start")}"""


def statistics_sql(kind: ScopeKind, granularity: Granularity) -> str:
    """The statement of :func:`usage_statistics`: one page of rows, each carrying the
    summary over every row (``row_count`` rows, ``n`` of them with a figure)."""
    if granularity is Granularity.hour:
        return hourly_statistics_sql(kind)
    return _statistics_sql(kind, granularity)


async def usage_statistics(
    session: AsyncSession,
    *,
    scope: Scope,
    granularity: Granularity,
    start_day: date,
    end_day: date,
    scope_patterns: Sequence[str] | None,
    household_ids: Sequence[int] | None = None,
    tz: str,
    offset: int = 0,
    limit: int | None = 20,
) -> StatisticsPage:
    """Usage per child unit of ``scope`` per period (zero-filled), ordered by unit name
    then period, one page of it, with the summary over every row (in SQL) and over the page.

    ``granularity=hour`` works for every kind of object over at most 31 days (refused
    beyond, HOURLY_SCOPE_UNSUPPORTED) and reads the readings (:mod:`.hourly`): a row's
    usage is that of the unit's meters with an hourly figure for the hour (None when
    none has one), with ``meters``, ``covered_meters`` and ``coverage_percent``; the
    summaries cover the rows with a figure (``count`` is how many).
    ``limit=None`` returns every row (exports stream them: :func:`all_statistics_rows`).
    A daily range is at most :data:`MAX_DAILY_RANGE_DAYS` days (RANGE_TOO_LONG)."""
    target, params = await _statistics_target(
        session, scope=scope, granularity=granularity, start_day=start_day, end_day=end_day,
        scope_patterns=scope_patterns, household_ids=household_ids, tz=tz)
    params.update(offset=offset, limit=limit)
    result = (await session.execute(text(statistics_sql(target.kind, granularity)), params)).all()
    summary = statement_summary(result[0])
    rows = [_statistics_row(row, granularity, end_day, tz) for row in result if row.unit_id is not None]
    return StatisticsPage(rows, int(result[0].row_count), summary,
                          UsageSummary.of([row.usage_m3 for row in rows if row.usage_m3 is not None]))


def statement_summary(row: Any) -> UsageSummary:
    """The summary columns every row of :func:`statistics_sql` carries."""
    return UsageSummary(int(row.n), row.total, row.mean, row.maximum, row.minimum)


async def _statistics_target(
    session: AsyncSession, *, scope: Scope, granularity: Granularity, start_day: date, end_day: date,
    scope_patterns: Sequence[str] | None, household_ids: Sequence[int] | None, tz: str,
) -> tuple[Target, dict[str, Any]]:
    """The checked request's target and the binds of :func:`statistics_sql` (but the page)."""
    _check_range(start_day, end_day, granularity)
    if granularity is Granularity.hour:
        check_hourly(start_day, end_day)
    target, params = await _find_with_params(session, scope=scope, scope_patterns=scope_patterns,
                                             household_ids=household_ids, start_day=start_day, end_day=end_day, tz=tz)
    if granularity is Granularity.hour:
        params.update(hourly_params(start_day, end_day, tz))
    else:
        params.update(_periods_params(granularity, start_day, end_day))
    return target, params


def _statistics_row(row: Any, granularity: Granularity, end_day: date, tz: str) -> StatisticsRow:
    if granularity is Granularity.hour:
        start = row.period_start.astimezone(as_zone(tz))
        return StatisticsRow(ScopeKind(row.unit_kind), row.unit_id, row.unit_name, row.unit_code, row.parent_name,
                             start, period_label(start, granularity), row.usage_m3, row.meters, row.covered_meters,
                             row.coverage_percent)
    return StatisticsRow(ScopeKind(row.unit_kind), row.unit_id, row.unit_name, row.unit_code, row.parent_name,
                         day_start(row.period_start, tz), period_label(row.period_start, granularity, end_day=end_day),
                         row.usage_m3)
