"""The object a request names (:class:`Scope`), found within the caller's scope, and its
child units: the SQL of which meters count for which unit on which days, and the binds
every query over them takes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth.scope import Reach
from backend.errors import NotFound
from backend.readings.usage import window_usage_ctes


class ScopeKind(StrEnum):
    area = "area"
    household = "household"
    concentrator = "concentrator"
    meter = "meter"


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


# An assignment covers (valid_from, valid_to]; under the (00:00, 24:00] day rule its days
# run from the day of valid_from to the day just before valid_to: a meter unassigned at
# midnight does not serve the day that midnight starts.
_ASSIGNED_FROM_DAY = "(ma.valid_from AT TIME ZONE :tz)::date"
_ASSIGNED_TO_DAY = "((ma.valid_to - interval '1 microsecond') AT TIME ZONE :tz)::date"
_ASSIGNED_IN_WINDOW = f"""{_ASSIGNED_FROM_DAY} <= CAST(:end_day AS date)
          AND (ma.valid_to IS NULL OR {_ASSIGNED_TO_DAY} >= CAST(:start_day AS date))"""

# ``units``: the object's child units (unit_kind, unit_id, unit_name, unit_code, parent_name);
# ``unit_meters``: which meters count for which unit, on which days (from_day/to_day inclusive,
# NULL = open) and from which instant to which (start_at/end_at: an assignment's
# valid_from/valid_to, NULL = open). Binds: :target_id, :patterns, :resident, :household_ids, :tz, :start_day, :end_day.
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
               m.id AS meter_id, NULL::date AS from_day, NULL::date AS to_day,
               NULL::timestamptz AS start_at, NULL::timestamptz AS end_at
        FROM areas s JOIN meters m ON m.area_id = s.id AND m.kind = 'household'
        WHERE s.path LIKE CAST(:target_prefix AS text)
    )""",
    ScopeKind.household: f"""
    unit_meters AS (
        SELECT 'meter' AS unit_kind, ma.meter_id AS unit_id, ma.meter_id,
               {_ASSIGNED_FROM_DAY} AS from_day, {_ASSIGNED_TO_DAY} AS to_day,
               ma.valid_from AS start_at, ma.valid_to AS end_at
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
        SELECT unit_kind, unit_id, unit_id AS meter_id, NULL::date AS from_day, NULL::date AS to_day,
               NULL::timestamptz AS start_at, NULL::timestamptz AS end_at
        FROM units
    )""",
    ScopeKind.meter: f"""
    units AS (
        SELECT 'meter' AS unit_kind, m.id AS unit_id, m.name AS unit_name, m.code AS unit_code, a.name AS parent_name
        FROM meters m JOIN areas a ON a.id = m.area_id WHERE m.id = :target_id
    ), unit_meters AS (
        SELECT unit_kind, unit_id, unit_id AS meter_id, NULL::date AS from_day, NULL::date AS to_day,
               NULL::timestamptz AS start_at, NULL::timestamptz AS end_at
        FROM units WHERE NOT :resident
        UNION ALL
        -- A resident sees a meter only on the days it served one of their households,
        -- never while it served someone else.
        SELECT u.unit_kind, u.unit_id, u.unit_id, {_ASSIGNED_FROM_DAY}, {_ASSIGNED_TO_DAY}, ma.valid_from, ma.valid_to
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

_DAYS_IN_WINDOW = "d.day BETWEEN CAST(:start_day AS date) AND CAST(:end_day AS date)"

# ``unit_days``: each unit's usage per meter per day of the window, counted over exactly
# the instants the meter served the unit, as ``usage_between`` counts them. A meter's
# span (``unit_spans``: its assignment's instants, or the window for NULL bounds,
# clipped to the window) brings the rollup of its whole days; a day it starts or ends
# inside (a handover at 10:00) is counted from the readings over the span's part of that
# day (``window_usage_ctes``: the walk of usage_between), so on a handover day the two
# households' figures add up to the meter's day instead of both counting all of it.
# Spans of one meter never overlap (one household at a time), so nothing counts twice.
# Needs ``unit_meters`` (with start_at / end_at) and the binds of _UNITS_SQL.
_UNIT_DAYS_CTES = f"""
    unit_spans AS (
        SELECT unit_kind, unit_id, meter_id,
               greatest(start_at, CAST(CAST(:start_day AS date) AS timestamp) AT TIME ZONE :tz) AS start_at,
               least(end_at, CAST(CAST(:end_day AS date) + 1 AS timestamp) AT TIME ZONE :tz) AS end_at
        FROM unit_meters
    ), unit_whole_days AS (
        -- From the first midnight at or after the span's start to the last one at or
        -- before its end (a day is (00:00, 24:00]).
        SELECT unit_kind, unit_id, meter_id,
               CAST((start_at AT TIME ZONE :tz) - interval '1 microsecond' AS date) + 1 AS first_day,
               CAST(end_at AT TIME ZONE :tz AS date) - 1 AS last_day
        FROM unit_spans
    ), unit_part_days AS (
        -- The day a span starts in after its midnight and the one it ends in before its
        -- closing midnight (one day when both are the same), each clipped to the span.
        SELECT DISTINCT s.unit_kind, s.unit_id, s.meter_id, x.day,
               greatest(s.start_at, CAST(x.day AS timestamp) AT TIME ZONE :tz) AS start_at,
               least(s.end_at, CAST(x.day + 1 AS timestamp) AT TIME ZONE :tz) AS end_at
        FROM unit_spans s CROSS JOIN LATERAL (VALUES
            (CAST(s.start_at AT TIME ZONE :tz AS date), CAST(s.start_at AT TIME ZONE :tz AS time) <> time '00:00'),
            (CAST((s.end_at AT TIME ZONE :tz) - interval '1 microsecond' AS date),
             CAST(s.end_at AT TIME ZONE :tz AS time) <> time '00:00')
        ) AS x(day, part)
        WHERE x.part AND s.start_at < s.end_at
    ), unit_part_windows AS (
        SELECT row_number() OVER () AS ord, p.* FROM unit_part_days p
    ), {window_usage_ctes("unit_part_windows")},
    unit_days AS (
        SELECT s.unit_kind, s.unit_id, s.meter_id, d.day, d.usage_m3
        FROM unit_whole_days s JOIN daily_usage d ON d.meter_id = s.meter_id
        WHERE {_DAYS_IN_WINDOW} AND d.day BETWEEN s.first_day AND s.last_day
        UNION ALL
        SELECT p.unit_kind, p.unit_id, p.meter_id, p.day, coalesce(u.usage_m3, 0)
        FROM unit_part_windows p LEFT JOIN walk_usage u USING (ord)
    )"""


def _unit_usage_sql(kind: ScopeKind, bucket: str) -> str:
    """A SELECT of (unit_kind, unit_id, period_start, usage_m3): each unit's usage per
    period, ``bucket`` being the period of ``d.day``. A household's (or a resident's)
    meters count over the instants they served it (:data:`_UNIT_DAYS_CTES`); an area's
    and a concentrator's meters count every day, so their figures stay one pass over
    the rollup.

    An area aggregates per (subtree area, period) first, on plain columns the planner has
    statistics for (a hash aggregate of a few thousand groups, as the bare SQL would), and
    only then folds subtree areas into child units: grouping 100k meters' days straight by
    the computed unit is estimated at ~1M groups and sorted on disk instead."""
    if kind is ScopeKind.concentrator:
        # Every meter of a concentrator counts on every day (no assignments to clip at).
        return f"""
        SELECT um.unit_kind, um.unit_id, {bucket} AS period_start, sum(d.usage_m3) AS usage_m3
        FROM unit_meters um JOIN daily_usage d ON d.meter_id = um.meter_id
        WHERE {_DAYS_IN_WINDOW}
        GROUP BY 1, 2, 3"""
    if kind is not ScopeKind.area:
        return f"""
        WITH {_UNIT_DAYS_CTES}
        SELECT d.unit_kind, d.unit_id, {bucket} AS period_start, sum(d.usage_m3) AS usage_m3
        FROM unit_days d
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


def page_with_summary(rows: str, *, order: str, counted: str = "*") -> str:
    """The tail of a statistics statement: the summary (合计 / 均值 / 最大 / 最小) over every
    row of the CTE ``rows`` beside one page of them in ``order`` (``:offset``, ``:limit``).
    ``counted`` names the rows with a figure: all (``*``), or ``usage_m3`` where an hour
    may have none (hourly statistics)."""
    return f"""summary AS (
        SELECT count(*) AS row_count, count({counted}) AS n, coalesce(sum(usage_m3), 0) AS total,
               round(avg(usage_m3), 4) AS mean, max(usage_m3) AS maximum, min(usage_m3) AS minimum
        FROM {rows}
    )
    SELECT s.row_count, s.n, s.total, s.mean, s.maximum, s.minimum, r.*
    FROM summary s LEFT JOIN LATERAL (
        SELECT * FROM {rows} ORDER BY {order}
        OFFSET :offset LIMIT :limit
    ) r ON true
    """
