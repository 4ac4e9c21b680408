"""Chart series: each object's whole usage per period, optionally overlaid with the same
window a year earlier."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.errors import DomainError, ErrorCode
from backend.readings.analytics.hourly import check_hourly, hourly_params, hourly_series_sql
from backend.readings.analytics.periods import _BUCKET, _PERIODS, Granularity, _check_range, _periods_params, add_months, period_label
from backend.readings.analytics.units import _UNITS_SQL, Scope, ScopeKind, Target, _base_params, _unit_usage_sql, find_target
from backend.readings.partitions import as_zone
from backend.readings.rollup import day_start


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    label: str
    at: datetime
    value: Decimal | None  # None only for an hour no meter of the object has a figure for
    # Hourly points only (None otherwise), as in StatisticsRow (backend.readings.analytics.hourly):
    meters: int | None = None
    covered_meters: int | None = None
    coverage_percent: Decimal | None = None


@dataclass(frozen=True, slots=True)
class UsageSeries:
    target: Target
    name: str
    last_year: bool
    points: list[SeriesPoint]


def _series_sql(kind: ScopeKind, granularity: Granularity) -> str:
    return f"""
    WITH {_UNITS_SQL[kind]}, {_PERIODS},
    usage AS (
        SELECT period_start, sum(usage_m3) AS usage_m3 FROM ({_unit_usage_sql(kind, _BUCKET[granularity])}) u
        GROUP BY 1
    )
    SELECT p.period_start, coalesce(x.usage_m3, 0) AS usage_m3
    FROM periods p LEFT JOIN usage x USING (period_start)
    ORDER BY p.period_start
    """


MAX_SERIES_OBJECTS = 10


async def usage_series(
    session: AsyncSession,
    *,
    scopes: Sequence[Scope],
    granularity: Granularity,
    start_day: date,
    end_day: date,
    scope_patterns: Sequence[str] | None,
    household_ids: Sequence[int] | None = None,
    tz: str,
    with_last_year: bool = False,
) -> list[UsageSeries]:
    """One series per object (its whole usage per period, zero-filled, the same x labels
    for every series); with ``with_last_year`` each object is followed by its series for
    the same window a year earlier, labelled with this window's x labels so it overlays.

    One statement per object (at most :data:`MAX_SERIES_OBJECTS`) plus its scope check."""
    _check_range(start_day, end_day, granularity)
    if not scopes:
        return []
    if len(scopes) > MAX_SERIES_OBJECTS:
        raise DomainError(f"最多 {MAX_SERIES_OBJECTS} 个对象", f"At most {MAX_SERIES_OBJECTS} objects",
                          field="objects", code=ErrorCode.INVALID)
    if granularity is Granularity.hour:
        check_hourly(start_day, end_day)
    series: list[UsageSeries] = []
    for scope in scopes:
        target = await find_target(session, scope=scope, scope_patterns=scope_patterns, household_ids=household_ids)
        windows = [(start_day, end_day, False)]
        if with_last_year:
            windows.append((add_months(start_day, -12), add_months(end_day, -12), True))
        labels: list[str] = []
        for window_start, window_end, last_year in windows:
            params = _base_params(target, scope_patterns=scope_patterns, household_ids=household_ids,
                                  start_day=window_start, end_day=window_end, tz=tz)
            points = await _series_points(session, target, granularity, params, window_end)
            if not last_year:
                labels = [point.label for point in points]
            else:
                # Overlay on this year's axis: same labels, as many points (29 Feb has no twin).
                points = [SeriesPoint(label, point.at, point.value, point.meters, point.covered_meters,
                                      point.coverage_percent) for label, point in zip(labels, points, strict=False)]
                # An hour has no figure without readings; a day, month or year is 0.
                missing = None if granularity is Granularity.hour else Decimal("0.0000")
                points += [SeriesPoint(label, day_start(start_day, tz), missing) for label in labels[len(points):]]
            name = f"{target.name} (去年同期)" if last_year else target.name
            series.append(UsageSeries(target, name, last_year, points))
    return series


async def _series_points(
    session: AsyncSession, target: Target, granularity: Granularity, params: dict[str, Any], end_day: date
) -> list[SeriesPoint]:
    if granularity is Granularity.hour:
        params.update(hourly_params(params["start_day"], end_day, params["tz"]))
        zone = as_zone(params["tz"])
        rows = (await session.execute(text(hourly_series_sql(target.kind)), params)).all()
        return [SeriesPoint(period_label(row.hour_start.astimezone(zone), granularity), row.hour_start.astimezone(zone),
                            row.usage_m3, row.meters, row.covered_meters, row.coverage_percent) for row in rows]
    params.update(_periods_params(granularity, params["start_day"], end_day))
    rows = (await session.execute(text(_series_sql(target.kind, granularity)), params)).all()
    return [SeriesPoint(period_label(row.period_start, granularity, end_day=end_day),
                        day_start(row.period_start, params["tz"]), row.usage_m3) for row in rows]
