"""Usage statistics (用水统计): each child unit's usage per period, zero-filled, with its
summary; hourly statistics of one meter or household from the readings."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.errors import DomainError, ErrorCode
from backend.readings.analytics.periods import _BUCKET, _PERIODS, Granularity, _check_range, _periods_params, period_label
from backend.readings.analytics.units import _UNITS_SQL, Scope, ScopeKind, Target, _find_with_params, _unit_usage_sql
from backend.readings.partitions import as_zone
from backend.readings.rollup import day_start
from backend.readings.usage import MAX_WINDOWS, interval_boundaries, usage_of_windows

FOUR_PLACES = Decimal("0.0001")
MAX_HOURLY_DAYS = 31


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
    usage_m3: Decimal


@dataclass(frozen=True, slots=True)
class StatisticsPage:
    rows: list[StatisticsRow]
    total_count: int
    summary: UsageSummary
    page_summary: UsageSummary


class HourlyNotSupported(DomainError):
    code = ErrorCode.HOURLY_SCOPE_UNSUPPORTED
    message = "按小时统计仅支持单个表计或住户, 且不超过 31 天"
    message_en = "Hourly statistics are for one meter or one household over at most 31 days"


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
    ), summary AS (
        SELECT count(*) AS n, coalesce(sum(usage_m3), 0) AS total, round(avg(usage_m3), 4) AS mean,
               max(usage_m3) AS maximum, min(usage_m3) AS minimum
        FROM stat_rows
    )
    SELECT s.n, s.total, s.mean, s.maximum, s.minimum, r.*
    FROM summary s LEFT JOIN LATERAL (
        SELECT * FROM stat_rows ORDER BY unit_name, unit_kind, unit_id, period_start
        OFFSET :offset LIMIT :limit
    ) r ON true
    """


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

    ``granularity=hour`` is for a meter or a household over at most 31 days (refused
    otherwise, HOURLY_SCOPE_UNSUPPORTED) and reads readings through ``usage_of_windows``.
    ``limit=None`` returns every row (exports stream them: :func:`all_statistics_rows`).
    A daily range is at most :data:`MAX_DAILY_RANGE_DAYS` days (RANGE_TOO_LONG)."""
    target, params = await _statistics_target(
        session, scope=scope, granularity=granularity, start_day=start_day, end_day=end_day,
        scope_patterns=scope_patterns, household_ids=household_ids, tz=tz)
    if granularity is Granularity.hour:
        return await _hourly_statistics(session, target, params, offset=offset, limit=limit)
    params.update(offset=offset, limit=limit)
    result = (await session.execute(text(_statistics_sql(target.kind, granularity)), params)).all()
    first = result[0]
    summary = UsageSummary(int(first.n), first.total, first.mean, first.maximum, first.minimum)
    rows = [_statistics_row(row, granularity, end_day, tz) for row in result if row.unit_id is not None]
    return StatisticsPage(rows, summary.count, summary, UsageSummary.of([row.usage_m3 for row in rows]))


async def _statistics_target(
    session: AsyncSession, *, scope: Scope, granularity: Granularity, start_day: date, end_day: date,
    scope_patterns: Sequence[str] | None, household_ids: Sequence[int] | None, tz: str,
) -> tuple[Target, dict[str, Any]]:
    """The checked request's target and the binds of :func:`_statistics_sql` (but the page)."""
    _check_range(start_day, end_day, granularity)
    if granularity is Granularity.hour:
        _check_hourly(scope, start_day, end_day)
    target, params = await _find_with_params(session, scope=scope, scope_patterns=scope_patterns,
                                             household_ids=household_ids, start_day=start_day, end_day=end_day, tz=tz)
    if granularity is not Granularity.hour:
        params.update(_periods_params(granularity, start_day, end_day))
    return target, params


def _statistics_row(row: Any, granularity: Granularity, end_day: date, tz: str) -> StatisticsRow:
    return StatisticsRow(ScopeKind(row.unit_kind), row.unit_id, row.unit_name, row.unit_code, row.parent_name,
                         day_start(row.period_start, tz), period_label(row.period_start, granularity, end_day=end_day),
                         row.usage_m3)


def _check_hourly(scope: Scope, start_day: date, end_day: date) -> None:
    if scope.kind not in (ScopeKind.meter, ScopeKind.household):
        raise HourlyNotSupported(field="scope")
    if (end_day - start_day).days + 1 > MAX_HOURLY_DAYS:
        raise HourlyNotSupported(field="to")


_HOURLY_UNITS = """
    WITH {units}
    SELECT u.unit_kind, u.unit_id, u.unit_name, u.unit_code, u.parent_name, um.meter_id, um.start_at, um.end_at
    FROM (SELECT DISTINCT * FROM units) u JOIN unit_meters um ON um.unit_kind = u.unit_kind AND um.unit_id = u.unit_id
    ORDER BY u.unit_name, u.unit_kind, u.unit_id
"""


async def _hourly_usage(
    session: AsyncSession, target: Target, params: dict[str, Any]
) -> tuple[list[Any], list[datetime], dict[tuple[int, datetime], Decimal]]:
    """Units and their meters, the window's hours (as UTC instants: the two 02:00s of a
    DST autumn night are different hours), and usage per (unit, hour): each meter over
    the part of each hour it served the unit (an assignment's instants, as the daily
    figures count them), so the hour of a handover splits at it."""
    tz = params["tz"]
    unit_rows = (await session.execute(text(_HOURLY_UNITS.format(units=_UNITS_SQL[target.kind])), params)).all()
    start = day_start(params["start_day"], tz).astimezone(UTC)
    end = day_start(params["end_day"] + timedelta(days=1), tz).astimezone(UTC)
    boundaries = interval_boundaries(start=start, end=end, interval="hour", tz=tz)
    windows: list[tuple[int, datetime, datetime]] = []
    labels: list[tuple[int, datetime]] = []
    for row in unit_rows:
        served_from = start if row.start_at is None else max(start, row.start_at)
        served_to = end if row.end_at is None else min(end, row.end_at)
        for low, high in pairwise(boundaries):
            if low < served_to and high > served_from:
                windows.append((row.meter_id, max(low, served_from), min(high, served_to)))
                labels.append((row.unit_id, low))
    if len(windows) > MAX_WINDOWS:
        raise ValueError("too many intervals: narrow the range or the meters")
    usage: dict[tuple[int, datetime], Decimal] = defaultdict(Decimal)
    for label, value in zip(labels, await usage_of_windows(session, windows), strict=True):
        usage[label] += value
    units = list({row.unit_id: row for row in unit_rows}.values())
    return units, boundaries[:-1], usage


async def _hourly_statistics(
    session: AsyncSession, target: Target, params: dict[str, Any], *, offset: int, limit: int | None
) -> StatisticsPage:
    units, hours, usage = await _hourly_usage(session, target, params)
    zone = as_zone(params["tz"])
    everything = [
        StatisticsRow(ScopeKind(unit.unit_kind), unit.unit_id, unit.unit_name, unit.unit_code, unit.parent_name,
                      hour.astimezone(zone), period_label(hour.astimezone(zone), Granularity.hour),
                      _q4(usage.get((unit.unit_id, hour), Decimal(0))))
        for unit in units for hour in hours
    ]
    page = everything[offset:] if limit is None else everything[offset:offset + limit]
    return StatisticsPage(page, len(everything), UsageSummary.of([row.usage_m3 for row in everything]),
                          UsageSummary.of([row.usage_m3 for row in page]))
