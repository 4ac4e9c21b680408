"""Usage ledgers (用水台账): one row per meter per period with its 起码, 止码 and usage, and
the totals per area."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.errors import DomainError, ErrorCode
from backend.readings.analytics.periods import Granularity, _check_range, bucket_start, period_label
from backend.readings.analytics.units import (
    _ASSIGNED_FROM_DAY,
    _ASSIGNED_TO_DAY,
    _SERVED_DAYS,
    _UNIT_DAYS_CTES,
    _UNITS_SQL,
    Scope,
    ScopeKind,
    _find_with_params,
    _unit_usage_sql,
)


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
    # An object with assignments counts a meter's usage over the instants it served it
    # (``unit_days``), so a row's 统计值 is its 止码 - 起码 on a handover day too.
    unit_days = f"{_UNIT_DAYS_CTES}," if kind in _ASSIGNED_KINDS else ""
    return f"""
    WITH {_UNITS_SQL[kind]}, {unit_days}
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
    elif kind in _ASSIGNED_KINDS:
        used = """
        SELECT m.area_id AS group_id, sum(d.usage_m3) AS usage_m3
        FROM unit_days d JOIN meters m ON m.id = d.meter_id
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
        # The page's meters' counted days, once (each row's lateral sums its period of them).
        page_days = """, page_days AS MATERIALIZED (
        SELECT meter_id, day, usage_m3 FROM unit_days WHERE meter_id IN (SELECT meter_id FROM page)
    )"""
        used_days = "page_days"
    else:
        bounds = ""
        start_at, start_reading = "coalesce(before.last_at, after.first_at)", "coalesce(before.last_total, after.first_total)"
        end_at, end_reading = "closing.last_at", "closing.last_total"
        closing_days = "day <= page.to_day"
        page_days, used_days = "", "daily_usage"
    # The holder: for a household its own assignment (the meter may have served another
    # household on the boundary day), for a resident one of theirs.
    holder = "ma.household_id = :target_id AND " if kind is ScopeKind.household else ""
    return f"""{_ledger_keys_sql(kind, granularity)},
    page AS (
        SELECT * FROM ledger_keys ORDER BY meter_code, meter_id, period_start OFFSET :offset LIMIT :limit
    ){page_days}
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
        SELECT coalesce(sum(usage_m3), 0) AS usage_m3 FROM {used_days}
        WHERE meter_id = page.meter_id AND day BETWEEN page.from_day AND page.to_day
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
    assignment's end; 统计值 is the usage over exactly the instants it served them (the
    rollup for whole days, the readings for the part of a day a handover cuts), as
    :func:`usage_statistics` and ``usage_between`` count it, so the rows add up to the
    household's statistics and 统计值 is (止码 - 起码) x 倍率 unless the register rolled
    over or flowed back. A period the meter did not serve at all has no row."""
    _check_ledger_granularity(granularity)
    _check_range(start_day, end_day)
    target, params = await _find_with_params(session, scope=scope, scope_patterns=scope_patterns,
                                             household_ids=household_ids, start_day=start_day, end_day=end_day, tz=tz)
    _add_ledger_params(params, granularity)
    area_totals: list[AreaTotal] = []
    if with_totals:
        totals = (await session.execute(text(_ledger_totals_sql(target.kind, granularity)), params)).all()
        area_totals = [AreaTotal(row.group_id, row.group_name, int(row.meter_rows), row.usage_m3) for row in totals]
    # limit=0: the totals alone (the export's lines after its rows).
    page = [] if limit == 0 else (await session.execute(text(_ledger_page_sql(target.kind, granularity)),
                                                        {**params, "offset": offset, "limit": limit})).all()
    total_count = sum(t.meter_rows for t in area_totals) if with_totals else offset + len(page)
    return LedgerPage([_ledger_row(row, granularity) for row in page], total_count, area_totals,
                      sum((t.usage_m3 for t in area_totals), Decimal("0.0000")))
