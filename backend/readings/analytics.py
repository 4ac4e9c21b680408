"""Usage statistics (用水统计), usage ledgers (用水台账) and comparisons (同期/环期对比).

Every figure here is read from the daily rollup ``daily_usage`` (never from raw readings):
summing ``usage_m3`` over whole days equals ``usage.usage_between`` over the same instants
(backend.readings.rollup). Only hourly statistics of a small scope (one meter or one
household, at most 31 days) go to the readings, through ``usage.usage_by_interval``, and
a household's ledger reads the start and end reading of a meter's row from them when an
assignment starts or ends inside a day (one primary-key probe each).

A request names one **object** (:class:`Scope`: an area, a household, a concentrator or a
meter) and the rows are its **child units**:

- an area: each child area (aggregating its whole subtree), plus each household meter
  hanging directly on the area itself;
- a household: each meter that served it during the window (``meter_assignments``; a
  meter's days count only while it served the household, so a replacement shows as two
  meters that split the replacement day at the assignment boundary);
- a concentrator: each of its household meters;
- a meter: the meter itself.

Data scope is applied inside the SQL: the object must lie in the caller's area path
patterns (``scope_patterns``; ``None`` = unrestricted, for system callers), otherwise it
is NOT_FOUND; a resident (``household_ids`` given) may only name one of their own
households or a meter that served one of them, and sees that meter's usage only on the
days it served them.

Days, months and years are the utility's (``tz``); ``start_day``/``end_day`` are inclusive.
Plain async functions over a session; nothing here writes.
"""

from __future__ import annotations

import calendar
import math
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth.scope import Reach
from backend.clock import check_day
from backend.errors import DomainError, ErrorCode, NotFound
from backend.readings.partitions import as_zone
from backend.readings.rollup import day_start
from backend.readings.usage import interval_boundaries, usage_by_interval

FOUR_PLACES = Decimal("0.0001")
MAX_RANGE_DAYS = 3700  # about ten years of days
# Daily rows are units x days and an export holds them all: a year of days per request.
MAX_DAILY_RANGE_DAYS = 366
MAX_HOURLY_DAYS = 31
DEFAULT_OUTLIER_PERCENT = Decimal(30)
OUTLIER_Z = 2.0
# With population stddev the largest |z| among n values is sqrt(n - 1): below 6 units a
# z-score above 2 is impossible, so smaller groups fall back to the percent threshold.
MIN_UNITS_FOR_Z = 6


class ScopeKind(StrEnum):
    area = "area"
    household = "household"
    concentrator = "concentrator"
    meter = "meter"


class Granularity(StrEnum):
    hour = "hour"
    day = "day"
    month = "month"
    year = "year"
    period = "period"


class ComparisonBasis(StrEnum):
    year_on_year = "year_on_year"  # 同比: the same period a year earlier
    period_on_period = "period_on_period"  # 环比: the period just before


class ComparisonOrder(StrEnum):
    unit = "unit"
    change_percent_desc = "change_percent_desc"
    change_percent_asc = "change_percent_asc"
    change_desc = "change_desc"
    change_asc = "change_asc"
    z_score_desc = "z_score_desc"


@dataclass(frozen=True, slots=True)
class Scope:
    kind: ScopeKind
    id: int


@dataclass(frozen=True, slots=True)
class Target:
    """The object a request named, as found within the caller's scope."""

    kind: ScopeKind
    id: int
    name: str
    path: str  # the area path of the object (an area's own)


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


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    label: str
    at: datetime
    value: Decimal


@dataclass(frozen=True, slots=True)
class UsageSeries:
    target: Target
    name: str
    last_year: bool
    points: list[SeriesPoint]


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One meter over one ledger period: 起码时间 / 止码时间 / 倍率 / 起码 / 止码 / 统计值."""

    meter_id: int
    meter_code: str
    meter_name: str
    area_id: int
    area_name: str
    household_id: int | None
    household_name: str | None
    account_no: str | None
    period_start: date
    period_end: date
    label: str
    start_at: datetime | None
    start_reading: Decimal | None
    end_at: datetime | None
    end_reading: Decimal | None
    multiplier: Decimal
    usage_m3: Decimal


@dataclass(frozen=True, slots=True)
class AreaTotal:
    area_id: int
    area_name: str
    meter_rows: int
    usage_m3: Decimal


@dataclass(frozen=True, slots=True)
class LedgerPage:
    rows: list[LedgerRow]
    total_count: int
    area_totals: list[AreaTotal]
    total: Decimal


@dataclass(frozen=True, slots=True)
class ComparisonRow:
    unit_kind: ScopeKind
    unit_id: int
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
    change_percent: Decimal | None
    z_score: float | None
    outlier: bool


@dataclass(frozen=True, slots=True)
class ComparisonPage:
    rows: list[ComparisonRow]
    total_count: int


# --------------------------------------------------------------------------- errors


class InvalidRange(DomainError):
    code = ErrorCode.INVALID
    message = "开始日期不能晚于结束日期"
    message_en = "The start date must not be after the end date"


class RangeTooLong(DomainError):
    code = ErrorCode.RANGE_TOO_LONG
    message = "查询时间范围过长"
    message_en = "The date range is too long"


class HourlyNotSupported(DomainError):
    code = ErrorCode.HOURLY_SCOPE_UNSUPPORTED
    message = "按小时统计仅支持单个表计或住户, 且不超过 31 天"
    message_en = "Hourly statistics are for one meter or one household over at most 31 days"


# --------------------------------------------------------------------------- helpers


def _q4(value: Decimal) -> Decimal:
    return value.quantize(FOUR_PLACES)


def add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    year = day.year + month // 12
    month = month % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def bucket_start(day: date, granularity: Granularity, start_day: date) -> date:
    """The first day of the period of ``granularity`` that holds ``day``."""
    if granularity is Granularity.month:
        return day.replace(day=1)
    if granularity is Granularity.year:
        return day.replace(month=1, day=1)
    if granularity is Granularity.period:
        return start_day
    return day


def period_label(start: date | datetime, granularity: Granularity, *, end_day: date | None = None) -> str:
    if granularity is Granularity.hour:
        assert isinstance(start, datetime)
        return start.strftime("%Y-%m-%d %H:00")
    if isinstance(start, datetime):
        start = start.date()
    if granularity is Granularity.month:
        return start.strftime("%Y-%m")
    if granularity is Granularity.year:
        return start.strftime("%Y")
    if granularity is Granularity.period:
        return f"{start.isoformat()}~{end_day.isoformat() if end_day else start.isoformat()}"
    return start.isoformat()


def _check_range(start_day: date, end_day: date, granularity: Granularity | None = None) -> None:
    # The scalar bounds every API input; services are also called by exports and the CLI.
    check_day(start_day, field="from")
    check_day(end_day, field="to")
    if start_day > end_day:
        raise InvalidRange(field="from")
    max_days = MAX_DAILY_RANGE_DAYS if granularity is Granularity.day else MAX_RANGE_DAYS
    if (end_day - start_day).days + 1 > max_days:
        raise RangeTooLong(field="to")


_STEP = {Granularity.day: "1 day", Granularity.month: "1 month", Granularity.year: "1 year", Granularity.period: "1 day"}
_BUCKET = {
    Granularity.day: "d.day",
    Granularity.month: "date_trunc('month', d.day)::date",
    Granularity.year: "date_trunc('year', d.day)::date",
    Granularity.period: "CAST(:start_day AS date)",
}


def _periods_params(granularity: Granularity, start_day: date, end_day: date) -> dict[str, Any]:
    first = bucket_start(start_day, granularity, start_day)
    last = first if granularity is Granularity.period else end_day
    return {"first_bucket": first, "last_bucket": last, "step": _STEP[granularity]}


def reach_arguments(reach: Reach) -> dict[str, Any]:
    """The data scope keyword arguments (``scope_patterns``, ``household_ids``) of the
    analytics queries for ``reach``."""
    household_ids = None if reach.household_ids is None else list(reach.household_ids)
    return {"scope_patterns": None if reach.scope_patterns is None else list(reach.scope_patterns),
            "household_ids": household_ids}


def _patterns(scope_patterns: Sequence[str] | None, household_ids: Sequence[int] | None) -> list[str]:
    # A resident reaches meters through their household (checked on the target), not by area.
    patterns = Reach(scope_patterns=scope_patterns, household_ids=household_ids).area_patterns()
    return ["%"] if patterns is None else patterns


# --------------------------------------------------------------------------- the target


_TARGET_SQL = {
    ScopeKind.area: """
        SELECT t.id, t.name, t.path FROM areas t
        WHERE t.id = :target_id AND t.path LIKE ANY(CAST(:patterns AS text[])) AND NOT :resident
    """,
    ScopeKind.household: """
        SELECT t.id, t.name, a.path FROM households t JOIN areas a ON a.id = t.area_id
        WHERE t.id = :target_id
          AND CASE WHEN :resident THEN t.id = ANY(CAST(:household_ids AS bigint[]))
                   ELSE a.path LIKE ANY(CAST(:patterns AS text[])) END
    """,
    ScopeKind.concentrator: """
        SELECT t.id, t.name, a.path FROM concentrators t JOIN areas a ON a.id = t.area_id
        WHERE t.id = :target_id AND a.path LIKE ANY(CAST(:patterns AS text[])) AND NOT :resident
    """,
    ScopeKind.meter: """
        SELECT t.id, t.name, a.path FROM meters t JOIN areas a ON a.id = t.area_id
        WHERE t.id = :target_id
          AND CASE WHEN :resident THEN EXISTS (
                  SELECT FROM meter_assignments ma
                  WHERE ma.meter_id = t.id AND ma.household_id = ANY(CAST(:household_ids AS bigint[])))
                   ELSE a.path LIKE ANY(CAST(:patterns AS text[])) END
    """,
}
_FIELD = {ScopeKind.area: "areaId", ScopeKind.household: "householdId", ScopeKind.concentrator: "concentratorId",
          ScopeKind.meter: "meterId"}


async def find_target(
    session: AsyncSession, *, scope: Scope, scope_patterns: Sequence[str] | None, household_ids: Sequence[int] | None = None
) -> Target:
    """The object ``scope`` names, when the caller may see it; NOT_FOUND otherwise."""
    params = {
        "target_id": scope.id,
        "patterns": list(scope_patterns) if scope_patterns is not None else ["%"],
        "resident": household_ids is not None,
        "household_ids": list(household_ids or ()),
    }
    row = (await session.execute(text(_TARGET_SQL[scope.kind]), params)).first()
    if row is None:
        raise NotFound(field=_FIELD[scope.kind])
    return Target(scope.kind, row.id, row.name, row.path)


# --------------------------------------------------------------------------- child units

# An assignment covers (valid_from, valid_to]; under the (00:00, 24:00] day rule its days
# run from the day of valid_from to the day just before valid_to: a meter unassigned at
# midnight does not serve the day that midnight starts.
_ASSIGNED_FROM_DAY = "(ma.valid_from AT TIME ZONE :tz)::date"
_ASSIGNED_TO_DAY = "((ma.valid_to - interval '1 microsecond') AT TIME ZONE :tz)::date"
_ASSIGNED_IN_WINDOW = f"""{_ASSIGNED_FROM_DAY} <= CAST(:end_day AS date)
          AND (ma.valid_to IS NULL OR {_ASSIGNED_TO_DAY} >= CAST(:start_day AS date))"""

# ``units``: the object's child units (unit_kind, unit_id, unit_name, unit_code, parent_name);
# ``unit_meters``: which meters count for which unit, on which days (from_day/to_day inclusive,
# NULL = open). Binds: :target_id, :patterns, :resident, :household_ids, :tz, :start_day, :end_day.
_UNITS_SQL = {
    # A meter's unit is the child area named by the next segment of its area's path after
    # the target's (paths are "/1/5/9/"), or the meter itself when it hangs on the target.
    # The subtree is a constant-prefix LIKE so the planner estimates it from the path
    # statistics (a join on "c.path || '%'" is estimated at a handful of rows, which turns
    # a 100k-meter aggregate into nested loops); the target is in scope, so is its subtree.
    ScopeKind.area: """
    units AS (
        SELECT 'area' AS unit_kind, c.id AS unit_id, c.name AS unit_name, c.code AS unit_code, t.name AS parent_name
        FROM areas t JOIN areas c ON c.parent_id = t.id
        WHERE t.id = :target_id AND c.path LIKE ANY(CAST(:patterns AS text[]))
        UNION ALL
        SELECT 'meter', m.id, m.name, m.code, t.name
        FROM areas t JOIN meters m ON m.area_id = t.id AND m.kind = 'household'
        WHERE t.id = :target_id
    ), unit_meters AS (
        SELECT CASE WHEN s.id = :target_id THEN 'meter' ELSE 'area' END AS unit_kind,
               CASE WHEN s.id = :target_id THEN m.id
                    ELSE split_part(substr(s.path, length(CAST(:target_path AS text)) + 1), '/', 1)::bigint
               END AS unit_id,
               m.id AS meter_id, NULL::date AS from_day, NULL::date AS to_day
        FROM areas s JOIN meters m ON m.area_id = s.id AND m.kind = 'household'
        WHERE s.path LIKE CAST(:target_prefix AS text)
    )""",
    ScopeKind.household: f"""
    unit_meters AS (
        SELECT 'meter' AS unit_kind, ma.meter_id AS unit_id, ma.meter_id,
               {_ASSIGNED_FROM_DAY} AS from_day, {_ASSIGNED_TO_DAY} AS to_day
        FROM meter_assignments ma
        WHERE ma.household_id = :target_id AND {_ASSIGNED_IN_WINDOW}
    ), units AS (
        SELECT DISTINCT 'meter' AS unit_kind, m.id AS unit_id, m.name AS unit_name, m.code AS unit_code,
               h.name AS parent_name
        FROM unit_meters um JOIN meters m ON m.id = um.meter_id JOIN households h ON h.id = :target_id
    )""",
    ScopeKind.concentrator: """
    units AS (
        SELECT 'meter' AS unit_kind, m.id AS unit_id, m.name AS unit_name, m.code AS unit_code, t.name AS parent_name
        FROM concentrators t JOIN meters m ON m.concentrator_id = t.id AND m.kind = 'household'
        JOIN areas a ON a.id = m.area_id
        WHERE t.id = :target_id AND a.path LIKE ANY(CAST(:patterns AS text[]))
    ), unit_meters AS (
        SELECT unit_kind, unit_id, unit_id AS meter_id, NULL::date AS from_day, NULL::date AS to_day FROM units
    )""",
    ScopeKind.meter: f"""
    units AS (
        SELECT 'meter' AS unit_kind, m.id AS unit_id, m.name AS unit_name, m.code AS unit_code, a.name AS parent_name
        FROM meters m JOIN areas a ON a.id = m.area_id WHERE m.id = :target_id
    ), unit_meters AS (
        SELECT unit_kind, unit_id, unit_id AS meter_id, NULL::date AS from_day, NULL::date AS to_day
        FROM units WHERE NOT :resident
        UNION ALL
        -- A resident sees a meter only on the days it served one of their households,
        -- never while it served someone else.
        SELECT u.unit_kind, u.unit_id, u.unit_id, {_ASSIGNED_FROM_DAY}, {_ASSIGNED_TO_DAY}
        FROM units u JOIN meter_assignments ma ON ma.meter_id = u.unit_id
        WHERE :resident AND ma.household_id = ANY(CAST(:household_ids AS bigint[])) AND {_ASSIGNED_IN_WINDOW}
    )""",
}

# The days each meter counts for each unit, merged: two assignments of one meter to one
# household that touch the same day (moved out and back in that day) count the day once.
# A NULL bound is open; an assignment ended at the instant it began serves no day.
_SERVED_DAYS = """
    SELECT unit_kind, unit_id, meter_id, range_agg(daterange(from_day, to_day, '[]')) AS days
    FROM unit_meters
    WHERE from_day IS NULL OR to_day IS NULL OR from_day <= to_day
    GROUP BY unit_kind, unit_id, meter_id"""

# One unit's daily rows within the window, on the days the meter counts for the unit.
_UNIT_DAYS = f"""
    FROM ({_SERVED_DAYS}) um JOIN daily_usage d ON d.meter_id = um.meter_id
    WHERE d.day BETWEEN CAST(:start_day AS date) AND CAST(:end_day AS date) AND d.day <@ um.days
"""

_DAYS_IN_WINDOW = "d.day BETWEEN CAST(:start_day AS date) AND CAST(:end_day AS date)"


def _unit_usage_sql(kind: ScopeKind, bucket: str) -> str:
    """A SELECT of (unit_kind, unit_id, period_start, usage_m3): each unit's usage per
    period, ``bucket`` being the period of ``d.day``.

    An area aggregates per (subtree area, period) first, on plain columns the planner has
    statistics for (a hash aggregate of a few thousand groups, as the bare SQL would), and
    only then folds subtree areas into child units: grouping 100k meters' days straight by
    the computed unit is estimated at ~1M groups and sorted on disk instead."""
    if kind is not ScopeKind.area:
        return f"""
        SELECT um.unit_kind, um.unit_id, {bucket} AS period_start, sum(d.usage_m3) AS usage_m3
        {_UNIT_DAYS}
        GROUP BY 1, 2, 3"""
    return f"""
        SELECT 'area' AS unit_kind,
               split_part(substr(x.path, length(CAST(:target_path AS text)) + 1), '/', 1)::bigint AS unit_id,
               x.period_start, sum(x.usage_m3) AS usage_m3
        FROM (
            SELECT s.id, s.path, {bucket} AS period_start, sum(d.usage_m3) AS usage_m3
            FROM areas s JOIN meters m ON m.area_id = s.id AND m.kind = 'household'
            JOIN daily_usage d ON d.meter_id = m.id
            WHERE s.path LIKE CAST(:target_prefix AS text) AND s.id <> :target_id AND {_DAYS_IN_WINDOW}
            GROUP BY s.id, 3
        ) x
        GROUP BY 1, 2, 3
        UNION ALL
        SELECT 'meter', m.id, {bucket}, sum(d.usage_m3)
        FROM meters m JOIN daily_usage d ON d.meter_id = m.id
        WHERE m.area_id = :target_id AND m.kind = 'household' AND {_DAYS_IN_WINDOW}
        GROUP BY 2, 3"""


_PERIODS = """
    periods AS (
        SELECT p::date AS period_start
        FROM generate_series(CAST(:first_bucket AS timestamp), CAST(:last_bucket AS timestamp),
                             CAST(CAST(:step AS text) AS interval)) AS p
    )"""


def _base_params(
    target: Target, *, scope_patterns: Sequence[str] | None, household_ids: Sequence[int] | None,
    start_day: date, end_day: date, tz: str,
) -> dict[str, Any]:
    # Area paths are digits and slashes only, so the prefix needs no LIKE escaping.
    return {"target_id": target.id, "target_path": target.path, "target_prefix": target.path + "%",
            "patterns": _patterns(scope_patterns, household_ids), "resident": household_ids is not None,
            "household_ids": list(household_ids or ()), "tz": tz, "start_day": start_day, "end_day": end_day}


async def _find_with_params(
    session: AsyncSession, *, scope: Scope, scope_patterns: Sequence[str] | None, household_ids: Sequence[int] | None,
    start_day: date, end_day: date, tz: str,
) -> tuple[Target, dict[str, Any]]:
    """The object ``scope`` names (:func:`find_target`) and the binds every query of its
    child units over ``start_day``..``end_day`` takes (:func:`_base_params`)."""
    target = await find_target(session, scope=scope, scope_patterns=scope_patterns, household_ids=household_ids)
    return target, _base_params(target, scope_patterns=scope_patterns, household_ids=household_ids,
                                start_day=start_day, end_day=end_day, tz=tz)


# --------------------------------------------------------------------------- statistics


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
    otherwise, HOURLY_SCOPE_UNSUPPORTED) and reads readings through ``usage_by_interval``.
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
    SELECT u.unit_kind, u.unit_id, u.unit_name, u.unit_code, u.parent_name, um.meter_id, um.from_day, um.to_day
    FROM (SELECT DISTINCT * FROM units) u JOIN unit_meters um ON um.unit_kind = u.unit_kind AND um.unit_id = u.unit_id
    ORDER BY u.unit_name, u.unit_kind, u.unit_id
"""


async def _hourly_usage(
    session: AsyncSession, target: Target, params: dict[str, Any]
) -> tuple[list[Any], list[datetime], dict[tuple[int, datetime], Decimal]]:
    """Units and their meters, the window's hours (as UTC instants: the two 02:00s of a
    DST autumn night are different hours), and usage per (unit, hour)."""
    tz = params["tz"]
    unit_rows = (await session.execute(text(_HOURLY_UNITS.format(units=_UNITS_SQL[target.kind])), params)).all()
    start = day_start(params["start_day"], tz)
    end = day_start(params["end_day"] + timedelta(days=1), tz)
    hours = interval_boundaries(start=start, end=end, interval="hour", tz=tz)[:-1]
    meter_ids = sorted({row.meter_id for row in unit_rows})
    intervals = await usage_by_interval(session, meter_ids=meter_ids, start=start, end=end, interval="hour", tz=tz) \
        if meter_ids else []
    validity = defaultdict(list)
    for row in unit_rows:
        validity[row.meter_id].append((row.unit_id, row.from_day, row.to_day))
    usage: dict[tuple[int, datetime], Decimal] = defaultdict(Decimal)
    for interval_start, meter_id, value in intervals:
        day = interval_start.date()  # labelled in the utility's zone
        # Once per unit, however many of its assignments cover the day (as _SERVED_DAYS).
        units_served = {unit_id for unit_id, from_day, to_day in validity.get(meter_id, ())
                        if (from_day is None or day >= from_day) and (to_day is None or day <= to_day)}
        for unit_id in units_served:
            usage[(unit_id, interval_start.astimezone(UTC))] += value
    units = list({row.unit_id: row for row in unit_rows}.values())
    return units, hours, usage


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


# --------------------------------------------------------------------------- chart series


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
        for scope in scopes:
            _check_hourly(scope, start_day, end_day)
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
                points = [SeriesPoint(label, point.at, point.value) for label, point in zip(labels, points, strict=False)]
                points += [SeriesPoint(label, day_start(start_day, tz), Decimal("0.0000")) for label in labels[len(points):]]
            name = f"{target.name} (去年同期)" if last_year else target.name
            series.append(UsageSeries(target, name, last_year, points))
    return series


async def _series_points(
    session: AsyncSession, target: Target, granularity: Granularity, params: dict[str, Any], end_day: date
) -> list[SeriesPoint]:
    if granularity is Granularity.hour:
        _, hours, usage = await _hourly_usage(session, target, params)
        totals: dict[datetime, Decimal] = defaultdict(Decimal)
        for (_, hour), value in usage.items():
            totals[hour] += value
        zone = as_zone(params["tz"])
        return [SeriesPoint(period_label(hour.astimezone(zone), granularity), hour.astimezone(zone),
                            _q4(totals.get(hour, Decimal(0)))) for hour in hours]
    params.update(_periods_params(granularity, params["start_day"], end_day))
    rows = (await session.execute(text(_series_sql(target.kind, granularity)), params)).all()
    return [SeriesPoint(period_label(row.period_start, granularity, end_day=end_day),
                        day_start(row.period_start, params["tz"]), row.usage_m3) for row in rows]


# --------------------------------------------------------------------------- ledgers

_LEDGER_STEP = {Granularity.period: None, Granularity.month: "1 month", Granularity.year: "1 year"}


# Objects whose meters count only on some days (``unit_meters`` with from_day/to_day): a
# household's meters while they served it, a resident's meter while it served them.
_ASSIGNED_KINDS = frozenset({ScopeKind.household, ScopeKind.meter})


def _ledger_keys_sql(kind: ScopeKind, granularity: Granularity) -> str:
    if granularity is Granularity.period:
        periods = "SELECT CAST(:start_day AS date) AS period_start, CAST(:end_day AS date) AS period_end"
    else:
        periods = """
        SELECT greatest(p::date, CAST(:start_day AS date)) AS period_start,
               least((p + CAST(CAST(:step AS text) AS interval))::date - 1, CAST(:end_day AS date)) AS period_end
        FROM generate_series(CAST(:first_bucket AS timestamp), CAST(:end_day AS timestamp), CAST(CAST(:step AS text) AS interval)) AS p"""
    if kind in _ASSIGNED_KINDS:
        # A meter's row covers only the period's days it counted for the object (merged
        # over its assignments, as the statistics count them): from_day..to_day with
        # ``days`` the exact set; a period it did not serve at all has no row.
        meters = f"SELECT meter_id, NULL::bigint AS unit_area_id, days FROM ({_SERVED_DAYS}) s"
        clipped = """CROSS JOIN LATERAL (
            SELECT lm.days * datemultirange(daterange(p.period_start, p.period_end, '[]')) AS days) s"""
        served = "s.days, lower(s.days) AS from_day, upper(s.days) - 1 AS to_day"
        in_service = "NOT isempty(s.days) AND "
    else:
        # A meter is in one unit (an area's subtree, or itself) for every day.
        meters = """SELECT x.*, NULL::datemultirange AS days FROM (
            SELECT DISTINCT um.meter_id, CASE WHEN um.unit_kind = 'area' THEN um.unit_id END AS unit_area_id
            FROM unit_meters um) x"""
        clipped = ""
        served = "NULL::datemultirange AS days, p.period_start AS from_day, p.period_end AS to_day"
        in_service = ""
    # Meters that were in service during the period: installed by its end and still in
    # use, or (retired, in stock) with a reading in it.
    return f"""
    WITH {_UNITS_SQL[kind]},
    periods AS ({periods}),
    ledger_meters AS (
        {meters}
    ), ledger_keys AS (
        SELECT m.id AS meter_id, m.code AS meter_code, m.name AS meter_name, m.area_id, a.name AS area_name,
               coalesce(lm.unit_area_id, m.area_id) AS group_id, p.period_start, p.period_end, {served}
        FROM ledger_meters lm JOIN meters m ON m.id = lm.meter_id JOIN areas a ON a.id = m.area_id
        CROSS JOIN periods p {clipped}
        WHERE {in_service}(m.install_date IS NULL OR m.install_date <= p.period_end)
          AND (m.status IN ('installed', 'faulty') OR EXISTS (
                SELECT FROM daily_usage x WHERE x.meter_id = m.id AND x.day BETWEEN p.period_start AND p.period_end))
    )"""


def _ledger_totals_sql(kind: ScopeKind, granularity: Granularity) -> str:
    # The periods partition the window, so an area's usage is its meters' usage over the
    # whole window: one pass over the rollup, no join back to the (meter, period) keys.
    # For an area it is the statistics aggregate over base tables (a parallel hash join);
    # driven from the materialized meter list the planner walks the rollup index meter by
    # meter, ~400 scattered rows each (5x slower for 10k meters x 13 months).
    if kind is ScopeKind.area:
        used = f"""
        SELECT CASE WHEN unit_kind = 'area' THEN unit_id ELSE :target_id END AS group_id, sum(usage_m3) AS usage_m3
        FROM ({_unit_usage_sql(kind, "CAST(:start_day AS date)")}) u
        GROUP BY 1"""
    else:
        used = """
        SELECT coalesce(lm.unit_area_id, m.area_id) AS group_id, sum(d.usage_m3) AS usage_m3
        FROM ledger_meters lm JOIN meters m ON m.id = lm.meter_id
        JOIN daily_usage d ON d.meter_id = lm.meter_id
        WHERE d.day BETWEEN CAST(:start_day AS date) AND CAST(:end_day AS date)
          AND (lm.days IS NULL OR d.day <@ lm.days)
        GROUP BY 1"""
    return f"""{_ledger_keys_sql(kind, granularity)},
    counted AS (SELECT group_id, count(*) AS meter_rows FROM ledger_keys GROUP BY group_id),
    used AS ({used}
    )
    SELECT c.group_id, g.name AS group_name, c.meter_rows, coalesce(u.usage_m3, 0) AS usage_m3
    FROM counted c JOIN areas g ON g.id = c.group_id LEFT JOIN used u ON u.group_id = c.group_id
    ORDER BY g.name, c.group_id
    """


# 起码 and 止码 of a row of an object with assignments (:data:`_ASSIGNED_KINDS`): the
# readings at its bounds, which may fall inside a day (a handover stores the register at
# that instant as a reading). ``bounds``: the row's first and last instant, the period's
# unless an assignment starts or ends inside it. 起码 is the last reading at or before the
# first instant (on its day from the readings, one primary-key probe; before that day the
# rollup's), else the first one after it; 止码 the last one at or before the last instant.
_ASSIGNED_READINGS = {
    ScopeKind.household: "ma.household_id = :target_id",
    ScopeKind.meter: ":resident AND ma.household_id = ANY(CAST(:household_ids AS bigint[]))",
}
_ASSIGNED_BOUNDS = """
    LEFT JOIN LATERAL (
        -- No assignment (staff on a meter): greatest/least skip the NULLs, the period's bounds.
        SELECT greatest(CAST(page.period_start AS timestamp) AT TIME ZONE :tz, min(ma.valid_from)) AS start_at,
               least(CAST(page.period_end + 1 AS timestamp) AT TIME ZONE :tz,
                     max(coalesce(ma.valid_to, 'infinity'))) AS end_at
        FROM meter_assignments ma
        WHERE {assigned} AND ma.meter_id = page.meter_id
          AND {from_day} <= page.to_day AND (ma.valid_to IS NULL OR {to_day} >= page.from_day)
          AND (ma.valid_to IS NULL OR {to_day} >= {from_day})
    ) bounds ON true
    LEFT JOIN LATERAL (
        SELECT read_at, total_m3 FROM readings
        WHERE meter_id = page.meter_id AND read_at > CAST(page.from_day AS timestamp) AT TIME ZONE :tz
          AND read_at <= bounds.start_at
        ORDER BY read_at DESC LIMIT 1
    ) opening ON true
    LEFT JOIN LATERAL (
        SELECT read_at, total_m3 FROM readings
        WHERE meter_id = page.meter_id AND read_at > CAST(page.to_day AS timestamp) AT TIME ZONE :tz
          AND read_at <= bounds.end_at
        ORDER BY read_at DESC LIMIT 1
    ) ending ON true"""


def _ledger_page_sql(kind: ScopeKind, granularity: Granularity) -> str:
    if kind in _ASSIGNED_KINDS:
        bounds = _ASSIGNED_BOUNDS.format(assigned=_ASSIGNED_READINGS[kind], from_day=_ASSIGNED_FROM_DAY,
                                         to_day=_ASSIGNED_TO_DAY)
        start_at = "coalesce(opening.read_at, before.last_at, after.first_at)"
        start_reading = "coalesce(opening.total_m3, before.last_total, after.first_total)"
        end_at, end_reading = "coalesce(ending.read_at, closing.last_at)", "coalesce(ending.total_m3, closing.last_total)"
        # The last instant's day comes from ``ending``; the rollup gives the days before it.
        closing_days = "day < page.to_day"
    else:
        bounds = ""
        start_at, start_reading = "coalesce(before.last_at, after.first_at)", "coalesce(before.last_total, after.first_total)"
        end_at, end_reading = "closing.last_at", "closing.last_total"
        closing_days = "day <= page.to_day"
    # The holder: for a household its own assignment (the meter may have served another
    # household on the boundary day), for a resident one of theirs.
    holder = "ma.household_id = :target_id AND " if kind is ScopeKind.household else ""
    return f"""{_ledger_keys_sql(kind, granularity)},
    page AS (
        SELECT * FROM ledger_keys ORDER BY meter_code, meter_id, period_start OFFSET :offset LIMIT :limit
    )
    SELECT page.meter_id, page.meter_code, page.meter_name, page.area_id, page.area_name, page.group_id,
           page.period_start, page.period_end, coalesce(mm.multiplier, 1) AS multiplier,
           {start_at} AS start_at, {start_reading} AS start_reading, {end_at} AS end_at, {end_reading} AS end_reading,
           used.usage_m3, holder.household_id, holder.household_name, holder.account_no
    FROM page
    JOIN meters m ON m.id = page.meter_id
    LEFT JOIN meter_models mm ON mm.id = m.model_id{bounds}
    LEFT JOIN LATERAL (
        SELECT last_at, last_total FROM daily_usage
        WHERE meter_id = page.meter_id AND day < page.from_day ORDER BY day DESC LIMIT 1
    ) before ON true
    LEFT JOIN LATERAL (
        SELECT first_at, first_total FROM daily_usage
        WHERE meter_id = page.meter_id AND day BETWEEN page.from_day AND page.to_day ORDER BY day LIMIT 1
    ) after ON true
    LEFT JOIN LATERAL (
        SELECT last_at, last_total FROM daily_usage
        WHERE meter_id = page.meter_id AND {closing_days} ORDER BY day DESC LIMIT 1
    ) closing ON true
    LEFT JOIN LATERAL (
        SELECT coalesce(sum(usage_m3), 0) AS usage_m3 FROM daily_usage
        WHERE meter_id = page.meter_id AND day BETWEEN page.from_day AND page.to_day
          AND (page.days IS NULL OR day <@ page.days)
    ) used ON true
    LEFT JOIN LATERAL (
        -- The holder's columns only for a household whose area lies in the scope (a row
        -- from before the same-subtree rule of backend.archives.service may break it).
        SELECT h.id AS household_id, h.name AS household_name, h.account_no
        FROM meter_assignments ma LEFT JOIN (households h JOIN areas ha ON ha.id = h.area_id
            AND ha.path LIKE ANY(CAST(:patterns AS text[]))) ON h.id = ma.household_id
        WHERE {holder}ma.meter_id = page.meter_id AND {_ASSIGNED_FROM_DAY} <= page.to_day
          AND (ma.valid_to IS NULL OR {_ASSIGNED_TO_DAY} >= page.from_day)
          AND (NOT :resident OR ma.household_id = ANY(CAST(:household_ids AS bigint[])))
        ORDER BY ma.valid_from DESC LIMIT 1
    ) holder ON true
    ORDER BY page.meter_code, page.meter_id, page.period_start
    """


def _add_ledger_params(params: dict[str, Any], granularity: Granularity) -> None:
    if granularity is not Granularity.period:
        params["first_bucket"] = bucket_start(params["start_day"], granularity, params["start_day"])
        params["step"] = _LEDGER_STEP[granularity]


def _ledger_row(row: Any, granularity: Granularity) -> LedgerRow:
    return LedgerRow(
        meter_id=row.meter_id, meter_code=row.meter_code, meter_name=row.meter_name, area_id=row.area_id,
        area_name=row.area_name, household_id=row.household_id, household_name=row.household_name,
        account_no=row.account_no, period_start=row.period_start, period_end=row.period_end,
        label=period_label(row.period_start, granularity, end_day=row.period_end), start_at=row.start_at,
        start_reading=row.start_reading, end_at=row.end_at, end_reading=row.end_reading,
        multiplier=row.multiplier, usage_m3=row.usage_m3,
    )


def _check_ledger_granularity(granularity: Granularity) -> None:
    if granularity not in _LEDGER_STEP:
        raise DomainError("台账仅支持时段、月、年", "Ledgers are by period, month or year",
                          field="granularity", code=ErrorCode.INVALID)


async def usage_ledger(
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
    with_totals: bool = True,
) -> LedgerPage:
    """The ledger (用水台账) of the meters of ``scope``: one row per meter per period
    (the whole window, or each month / year clipped to it), ordered by meter code.

    起码: the last reading at or before the period's first instant, else the first one in
    the period; 止码: the last reading at or before the period's end; 统计值: the period's
    usage from the rollup (multiplier applied, rollovers unwrapped). Totals per area (the
    child areas of an area object, the meters' own areas otherwise) and overall.

    For a household (and a resident's meter) a meter's row covers only the part of the
    period it served them: 起码 is the last reading at or before the later of the period's
    start and the assignment's start (the handover reading a move-in or replacement
    stores), 止码 the last one at or before the earlier of the period's end and the
    assignment's end; 统计值 sums the rollup over the days it served (merged over its
    assignments, each day once), exactly as :func:`usage_statistics` counts them, so the
    rows add up to the household's statistics. Those are whole days: a meter also read
    for someone else on its boundary day brings that whole day, and then 统计值 is not
    止码 - 起码. A period the meter did not serve at all has no row."""
    _check_ledger_granularity(granularity)
    _check_range(start_day, end_day)
    target, params = await _find_with_params(session, scope=scope, scope_patterns=scope_patterns,
                                             household_ids=household_ids, start_day=start_day, end_day=end_day, tz=tz)
    _add_ledger_params(params, granularity)
    area_totals: list[AreaTotal] = []
    if with_totals:
        totals = (await session.execute(text(_ledger_totals_sql(target.kind, granularity)), params)).all()
        area_totals = [AreaTotal(row.group_id, row.group_name, int(row.meter_rows), row.usage_m3) for row in totals]
    page = (await session.execute(text(_ledger_page_sql(target.kind, granularity)),
                                  {**params, "offset": offset, "limit": limit})).all()
    total_count = sum(t.meter_rows for t in area_totals) if with_totals else offset + len(page)
    return LedgerPage([_ledger_row(row, granularity) for row in page], total_count, area_totals,
                      sum((t.usage_m3 for t in area_totals), Decimal("0.0000")))


# --------------------------------------------------------------------------- comparisons


_COMPARISON_ORDER = {
    ComparisonOrder.unit: "unit_name, unit_kind, unit_id, period_start",
    ComparisonOrder.change_percent_desc: "change_percent DESC NULLS LAST, unit_name, unit_id, period_start",
    ComparisonOrder.change_percent_asc: "change_percent ASC NULLS LAST, unit_name, unit_id, period_start",
    ComparisonOrder.change_desc: "change_m3 DESC, unit_name, unit_id, period_start",
    ComparisonOrder.change_asc: "change_m3 ASC, unit_name, unit_id, period_start",
    ComparisonOrder.z_score_desc: "abs(z_score) DESC NULLS LAST, unit_name, unit_id, period_start",
}


def _comparison_sql(kind: ScopeKind, order: ComparisonOrder) -> str:
    return f"""
    WITH {_UNITS_SQL[kind]},
    periods AS (
        SELECT p::date AS period_start, (p + CAST(CAST(:step AS text) AS interval))::date - 1 AS period_end,
               (p - CAST(CAST(:back AS text) AS interval))::date AS previous_start,
               (p - CAST(CAST(:back AS text) AS interval) + CAST(CAST(:step AS text) AS interval))::date - 1 AS previous_end
        FROM generate_series(CAST(:first_bucket AS timestamp), CAST(:last_bucket AS timestamp),
                             CAST(CAST(:step AS text) AS interval)) AS p
    ), monthly AS (
        SELECT unit_kind, unit_id, period_start AS month, usage_m3
        FROM ({_unit_usage_sql(kind, _BUCKET[Granularity.month])}) u
    ), compared AS (
        SELECT u.unit_kind, u.unit_id, u.unit_name, u.unit_code, u.parent_name, p.period_start, p.period_end,
               p.previous_start, p.previous_end,
               coalesce(sum(x.usage_m3) FILTER (WHERE x.month BETWEEN p.period_start AND p.period_end), 0) AS current_m3,
               coalesce(sum(x.usage_m3) FILTER (WHERE x.month BETWEEN p.previous_start AND p.previous_end), 0)
                   AS previous_m3
        FROM (SELECT DISTINCT * FROM units) u CROSS JOIN periods p
        LEFT JOIN monthly x ON x.unit_kind = u.unit_kind AND x.unit_id = u.unit_id
             AND (x.month BETWEEN p.period_start AND p.period_end OR x.month BETWEEN p.previous_start AND p.previous_end)
        GROUP BY u.unit_kind, u.unit_id, u.unit_name, u.unit_code, u.parent_name, p.period_start, p.period_end,
                 p.previous_start, p.previous_end
    ), changed AS (
        SELECT *, current_m3 - previous_m3 AS change_m3,
               CASE WHEN previous_m3 <> 0 THEN round((current_m3 - previous_m3) * 100 / previous_m3, 2) END
                   AS change_percent
        FROM compared
    ), spread AS (
        SELECT *, avg(change_percent) OVER w AS mean_percent, stddev_pop(change_percent) OVER w AS sd_percent,
               count(change_percent) OVER w AS scored_units
        FROM changed WINDOW w AS (PARTITION BY period_start)
    ), scored AS (
        SELECT *, CASE WHEN sd_percent > 0 THEN ((change_percent - mean_percent) / sd_percent)::float8 END AS z_score
        FROM spread
    ), final AS (
        SELECT *, coalesce(CASE WHEN scored_units >= :min_units THEN abs(z_score) > :z_limit
                                ELSE abs(change_percent) > :percent_limit END, false) AS outlier
        FROM scored
    ), summary AS (SELECT count(*) AS n FROM final)
    SELECT s.n, r.* FROM summary s LEFT JOIN LATERAL (
        SELECT * FROM final ORDER BY {_COMPARISON_ORDER[order]} OFFSET :offset LIMIT :limit
    ) r ON true
    """


async def usage_comparison(
    session: AsyncSession,
    *,
    scope: Scope,
    basis: ComparisonBasis,
    quarterly: bool,
    start_month: date,
    end_month: date,
    scope_patterns: Sequence[str] | None,
    household_ids: Sequence[int] | None = None,
    tz: str,
    order: ComparisonOrder = ComparisonOrder.unit,
    outlier_percent: Decimal = DEFAULT_OUTLIER_PERCENT,
    offset: int = 0,
    limit: int | None = 20,
) -> ComparisonPage:
    """同比 / 环比 per child unit per month (or quarter) from ``start_month`` to ``end_month``.

    ``change_percent`` is null when the previous figure is 0. ``outlier``: within one
    period, the z-score of the units' percent changes (population stddev) is above 2 in
    absolute value — used when at least :data:`MIN_UNITS_FOR_Z` units have a percent
    change, since with fewer no z-score can pass 2; otherwise ``|change_percent| >
    outlier_percent``. A unit without a percent change is never an outlier."""
    first = start_month.replace(day=1)
    last = end_month.replace(day=1)
    if quarterly:
        first = first.replace(month=(first.month - 1) // 3 * 3 + 1)
        last = last.replace(month=(last.month - 1) // 3 * 3 + 1)
    _check_range(first, last)
    step_months = 3 if quarterly else 1
    back_months = 12 if basis is ComparisonBasis.year_on_year else step_months
    window_start = add_months(first, -back_months)
    window_end = add_months(last, step_months) - timedelta(days=1)
    target, params = await _find_with_params(session, scope=scope, scope_patterns=scope_patterns,
                                             household_ids=household_ids, start_day=window_start, end_day=window_end,
                                             tz=tz)
    params.update(first_bucket=first, last_bucket=last, step=f"{step_months} months", back=f"{back_months} months",
                  min_units=MIN_UNITS_FOR_Z, z_limit=OUTLIER_Z, percent_limit=outlier_percent,
                  offset=offset, limit=limit)
    result = (await session.execute(text(_comparison_sql(target.kind, order)), params)).all()
    rows = [
        ComparisonRow(
            ScopeKind(row.unit_kind), row.unit_id, row.unit_name, row.unit_code, row.parent_name, row.period_start,
            row.period_end, _comparison_label(row.period_start, quarterly), row.previous_start, row.previous_end,
            row.current_m3, row.previous_m3, row.change_m3, row.change_percent,
            None if row.z_score is None or math.isnan(row.z_score) else round(row.z_score, 4), bool(row.outlier),
        )
        for row in result if row.unit_id is not None
    ]
    return ComparisonPage(rows, int(result[0].n))


def _comparison_label(start: date, quarterly: bool) -> str:
    if quarterly:
        return f"{start.year}-Q{(start.month - 1) // 3 + 1}"
    return start.strftime("%Y-%m")


# --------------------------------------------------------------------------- export streams


EXPORT_PAGE = 5000


async def all_statistics_rows(
    session: AsyncSession, *, granularity: Granularity, end_day: date, tz: str, **kwargs: Any
) -> AsyncIterator[StatisticsRow]:
    """Every row of :func:`usage_statistics` (exports): one statement, streamed, so a year
    of days of a large area never sits in memory at once. Hourly rows (one meter or
    household, at most 31 days) come as one page."""
    if granularity is Granularity.hour:
        page = await usage_statistics(session, granularity=granularity, end_day=end_day, tz=tz, offset=0, limit=None,
                                      **kwargs)
        for row in page.rows:
            yield row
        return
    target, params = await _statistics_target(session, granularity=granularity, end_day=end_day, tz=tz, **kwargs)
    statement = text(_statistics_sql(target.kind, granularity)).execution_options(yield_per=EXPORT_PAGE)
    result = await session.stream(statement, {**params, "offset": 0, "limit": None})
    async for found in result:
        if found.unit_id is not None:
            yield _statistics_row(found, granularity, end_day, tz)


async def all_ledger_rows(session: AsyncSession, **kwargs: Any) -> AsyncIterator[LedgerRow]:
    """Every row of :func:`usage_ledger` (exports), in pages of :data:`EXPORT_PAGE` meters."""
    offset = 0
    while True:
        page = await usage_ledger(session, offset=offset, limit=EXPORT_PAGE, with_totals=False, **kwargs)
        for row in page.rows:
            yield row
        if len(page.rows) < EXPORT_PAGE:
            return
        offset += EXPORT_PAGE


async def all_comparison_rows(session: AsyncSession, **kwargs: Any) -> AsyncIterator[ComparisonRow]:
    page = await usage_comparison(session, offset=0, limit=None, **kwargs)
    for row in page.rows:
        yield row
