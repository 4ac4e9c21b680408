"""Comparisons (同比 / 环比): each child unit's usage per month or quarter against the
previous period or the same period a year earlier, with the outliers among them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.readings.analytics.periods import _BUCKET, Granularity, _check_range, add_months
from backend.readings.analytics.units import _UNITS_SQL, Scope, ScopeKind, _find_with_params, _unit_usage_sql

DEFAULT_OUTLIER_PERCENT = Decimal(30)
OUTLIER_Z = 2.0
# With population stddev the largest |z| among n values is sqrt(n - 1): below 6 units a
# z-score above 2 is impossible, so smaller groups fall back to the percent threshold.
MIN_UNITS_FOR_Z = 6


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
