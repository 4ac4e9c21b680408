"""Hourly usage (小时用水) of any object, from the raw readings, with its coverage.

The rollup holds days, so hours come from the readings: one statement walks the readings
of every meter of the object (the usage rule of ``backend.readings.usage``: rollovers
unwrapped, reverse flow held at the high-water mark, the multiplier applied, from the
meter's stored state at the close of an earlier day), keeps each meter's register as it
stood at the end of each hour of the utility's calendar, and takes the difference with
the hour before (``lag`` over hourly buckets per meter), then sums per unit and hour.

**Coverage.** An hour ``(h, h + 1h]`` is a meter's *hourly figure* only when the meter has
a reading in that hour and one in the hour before it (or the hour holds the meter's first
reading ever: nothing before it is counted by the usage rule). Then the figure is exactly
``usage_between(h, h + 1h)``. A meter read daily, every two hours or with a gap has no
figure for the hours it did not bracket: they are *not available*, never interpolated and
never given the whole gap's usage. Per unit and hour:

- ``meters``: the unit's meters that count for it on the hour's day and have at least one
  reading in the window (a meter read daily is counted; a meter with no reading at all in
  the window is not);
- ``covered_meters``: those of them with an hourly figure for the hour;
- ``usage_m3``: the sum of those figures, ``None`` when there is none (not available);
- ``coverage_percent``: ``covered_meters / meters`` in percent, 2 places, ``None`` when
  ``meters`` is 0.

At most :data:`MAX_HOURLY_DAYS` days (``HOURLY_SCOPE_UNSUPPORTED``, the code kept from
when hours were for one meter or household only).
"""

from __future__ import annotations

from datetime import UTC, date, timedelta
from typing import Any

from backend.errors import DomainError, ErrorCode
from backend.readings.analytics.units import _SERVED_DAYS, _UNITS_SQL, ScopeKind
from backend.readings.rollup import day_start

MAX_HOURLY_DAYS = 31


class HourlyNotSupported(DomainError):
    code = ErrorCode.HOURLY_SCOPE_UNSUPPORTED
    message = "按小时统计的时间范围不能超过 31 天"
    message_en = "Hourly statistics cover at most 31 days"


def check_hourly(start_day: date, end_day: date) -> None:
    """Refuse an hourly window longer than :data:`MAX_HOURLY_DAYS` days."""
    if (end_day - start_day).days + 1 > MAX_HOURLY_DAYS:
        raise HourlyNotSupported(field="to")


def hourly_params(start_day: date, end_day: date, tz: str) -> dict[str, Any]:
    """The binds of the hourly statements beyond the units' (``_base_params``).

    Hours are counted in real time from the first day's local midnight (a DST day has 23
    or 25), so hour ``k`` is ``(start_at + k h, start_at + (k + 1) h]``."""
    # In UTC: two instants of one zone subtract by wall clock, which loses a DST hour.
    start_at = day_start(start_day, tz).astimezone(UTC)
    end_at = day_start(end_day + timedelta(days=1), tz).astimezone(UTC)
    return {
        "start_at": start_at, "end_at": end_at, "hour_count": int((end_at - start_at) / timedelta(hours=1)),
        # The state the walk starts from is a day closed at or before the hour before the
        # first one (its register closes that hour's predecessor); every reading after
        # such a day's last one lies in the day before the window or later.
        "seed_before": start_at - timedelta(hours=1),
        "walk_from": day_start(start_day - timedelta(days=1), tz).astimezone(UTC),
    }


# The hour a reading closes, as the instant it starts: hours are (h, h + 1 h], counted in
# real time from the window's first local midnight.
_HOUR = "date_bin('1 hour', {instant} - interval '1 microsecond', CAST(:start_at AS timestamptz))"


def _closing_hours(source: str, effective: str, seed_effective: str, first_effective: str) -> str:
    """Per meter, the reading that closes each hour of ``source`` (readings with their
    ``hour`` and the register ``effective`` by the usage rule), then its usage: the
    register there minus at the close of the meter's hour before (the seed's when it is
    the first), an hourly figure only when that is the hour just before (or there is none
    at all: the meter's first reading ever)."""
    return f"""
        SELECT meter_id, unit_no, every_day, hour,
               (effective - coalesce(lag(effective) OVER w, seed_effective, first_effective)) * multiplier AS usage_m3,
               CASE WHEN lag(hour) OVER w IS NOT NULL THEN lag(hour) OVER w = hour - interval '1 hour'
                    WHEN seed_hour IS NOT NULL THEN seed_hour = hour - interval '1 hour' ELSE true END AS covered
        FROM (
            SELECT meter_id, unit_no, every_day, read_at, hour, multiplier, seed_hour,
                   {seed_effective} AS seed_effective,
                   {effective} AS effective, lead(hour) OVER w IS DISTINCT FROM hour AS closes_hour,
                   first_value({first_effective}) OVER w AS first_effective
            FROM {source}
            WINDOW w AS (PARTITION BY meter_id ORDER BY read_at ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
        ) x
        WHERE closes_hour
        WINDOW w AS (PARTITION BY meter_id ORDER BY read_at)"""


# A household's meters (and a meter a resident asks for) count only on the days they
# served the household; an area's or a concentrator's count every day, and their plan
# stays the plain aggregate's without the check.
_BY_ASSIGNMENT = (ScopeKind.household, ScopeKind.meter)
_SERVED_HOUR = """
          AND (mh.every_day OR EXISTS (SELECT FROM served sv WHERE sv.meter_id = mh.meter_id
                                       AND (mh.hour AT TIME ZONE :tz)::date <@ sv.days))"""


def _hourly_ctes(kind: ScopeKind) -> str:
    """``units`` and ``hours`` (k, hour_start, day), and per unit: ``unit_hours`` (by the
    unit's number in ``unit_numbers``: hour_start, usage of the covered meters, how many)
    and ``unit_day_meters`` (day, meters counted).

    Most meters' registers only grow: the rollup flags every day with a rollover or a
    reverse flow, so a meter without one since its seed (which stood at its high-water
    mark) is its own effective register up to a constant, and only the differences
    count. Those meters skip the walk's running wraps and high-water mark; the others
    take it, reading by reading.

    Every meter counts for one unit of the object (a child area, or itself), so the walk
    carries the unit's number and the sums group by it without joining back per hour."""
    return f"""
    WITH {_UNITS_SQL[kind]},
    served AS (
        SELECT *, days = datemultirange(daterange(NULL, NULL)) AS every_day,
               dense_rank() OVER (ORDER BY unit_kind, unit_id)::int AS unit_no
        FROM ({_SERVED_DAYS}) s
    ), hours AS (
        SELECT k, CAST(:start_at AS timestamptz) + k * interval '1 hour' AS hour_start,
               ((CAST(:start_at AS timestamptz) + k * interval '1 hour') AT TIME ZONE :tz)::date AS day
        FROM generate_series(0, CAST(:hour_count AS int) - 1) AS k
    ), meter_list AS (
        SELECT l.meter_id, l.unit_no, l.every_day, l.register_range, l.multiplier, s.last_at AS seed_at,
               s.last_total AS seed_total,
               s.effective_total AS seed_effective, coalesce(s.register_wraps, 0) AS seed_wraps,
               {_HOUR.format(instant="s.last_at")} AS seed_hour,
               EXISTS (SELECT FROM daily_usage d WHERE d.meter_id = l.meter_id
                       AND d.day BETWEEN CAST(:start_day AS date) AND CAST(:end_day AS date)) AS reporting,
               (s.day IS NULL OR s.effective_total = s.last_total + coalesce(l.register_range, 0) * s.register_wraps)
               AND NOT EXISTS (SELECT FROM daily_usage d WHERE d.meter_id = l.meter_id
                               AND d.day > coalesce(s.day, '-infinity') AND d.day <= CAST(:end_day AS date)
                               AND (d.rollover OR d.reverse_flow)) AS growing
        FROM (
            SELECT m.id AS meter_id, sv.unit_no, sv.every_day, power(10::numeric, mm.register_digits) AS register_range,
                   coalesce(mm.multiplier, 1) AS multiplier
            FROM served sv JOIN meters m ON m.id = sv.meter_id
            LEFT JOIN meter_models mm ON mm.id = m.model_id
        ) l
        LEFT JOIN LATERAL (
            SELECT d.day, d.last_at, d.last_total, d.effective_total, d.register_wraps FROM daily_usage d
            WHERE d.meter_id = l.meter_id AND d.day < CAST(:start_day AS date)
              AND d.last_at <= CAST(:seed_before AS timestamptz)
            ORDER BY d.day DESC LIMIT 1
        ) s ON true
    ), points AS NOT MATERIALIZED (
        -- The readings after each reporting meter's seed, in meter order (so the walk's
        -- windows only sort within a meter), with their hour.
        SELECT l.meter_id, l.unit_no, l.every_day, l.growing, l.multiplier, l.seed_hour, l.seed_total, r.read_at,
               r.total_m3,
               {_HOUR.format(instant="r.read_at")} AS hour
        FROM (SELECT * FROM meter_list WHERE reporting ORDER BY meter_id) l
        JOIN readings r ON r.meter_id = l.meter_id
        WHERE r.read_at > CAST(:walk_from AS timestamptz) AND r.read_at <= CAST(:end_at AS timestamptz)
          AND r.read_at > coalesce(l.seed_at, '-infinity')
    ), walked AS (
        -- The usage rule reading by reading, for the meters whose register ever fell.
        SELECT *, total_m3 + coalesce(register_range, 0) * (seed_wraps + count(*) FILTER (WHERE wrapped) OVER w)
                  AS unwrapped
        FROM (
            SELECT p.*, l.register_range, l.seed_effective, l.seed_wraps,
                   coalesce(p.total_m3 - coalesce(lag(p.total_m3) OVER w, l.seed_total) < -l.register_range / 2,
                            false) AS wrapped
            FROM points p JOIN meter_list l ON l.meter_id = p.meter_id
            WHERE NOT p.growing
            WINDOW w AS (PARTITION BY p.meter_id ORDER BY p.read_at)
        ) x
        WINDOW w AS (PARTITION BY meter_id ORDER BY read_at ROWS UNBOUNDED PRECEDING)
    ), meter_hours AS (
        {_closing_hours("points WHERE growing", "total_m3", "seed_total", "total_m3")}
        UNION ALL
        {_closing_hours("walked", "greatest(seed_effective, max(unwrapped) OVER w)", "seed_effective", "unwrapped")}
    ), unit_hours AS (
        SELECT mh.unit_no, mh.hour AS hour_start, sum(mh.usage_m3) AS usage_m3, count(*) AS covered_meters
        FROM meter_hours mh
        WHERE mh.covered AND mh.hour >= CAST(:start_at AS timestamptz){_SERVED_HOUR if kind in _BY_ASSIGNMENT else ""}
        GROUP BY 1, 2
    ), unit_numbers AS (
        SELECT DISTINCT unit_kind, unit_id, unit_no FROM served
    ), unit_day_meters AS (
        SELECT g.unit_kind, g.unit_id, d.day, sum(g.meters) AS meters
        FROM (
            SELECT sv.unit_kind, sv.unit_id, sv.days, count(*) AS meters
            FROM served sv JOIN meter_list l ON l.meter_id = sv.meter_id AND l.reporting
            GROUP BY 1, 2, 3
        ) g JOIN (SELECT DISTINCT day FROM hours) d ON d.day <@ g.days
        GROUP BY 1, 2, 3
    )"""


_COVERAGE = "CASE WHEN {meters} > 0 THEN round(100.0 * {covered} / {meters}, 2) END"


def hourly_statistics_sql(kind: ScopeKind) -> str:
    """Per child unit and hour (zero meters filled in), one page ordered as the other
    statistics, each row carrying the summary over every row with a figure (in SQL)."""
    return f"""
    {_hourly_ctes(kind)},
    hour_rows AS (
        SELECT u.unit_kind, u.unit_id, u.unit_name, u.unit_code, u.parent_name, h.k, h.hour_start AS period_start,
               coalesce(m.meters, 0)::int AS meters, coalesce(x.covered_meters, 0)::int AS covered_meters,
               round(x.usage_m3, 4) AS usage_m3,
               {_COVERAGE.format(meters="m.meters", covered="coalesce(x.covered_meters, 0)")} AS coverage_percent
        FROM (SELECT DISTINCT * FROM units) u CROSS JOIN hours h
        LEFT JOIN unit_day_meters m ON m.unit_kind = u.unit_kind AND m.unit_id = u.unit_id AND m.day = h.day
        LEFT JOIN unit_numbers n ON n.unit_kind = u.unit_kind AND n.unit_id = u.unit_id
        LEFT JOIN unit_hours x ON x.unit_no = n.unit_no AND x.hour_start = h.hour_start
    ), summary AS (
        SELECT count(*) AS row_count, count(usage_m3) AS n, coalesce(sum(usage_m3), 0) AS total,
               round(avg(usage_m3), 4) AS mean, max(usage_m3) AS maximum, min(usage_m3) AS minimum
        FROM hour_rows
    )
    SELECT s.row_count, s.n, s.total, s.mean, s.maximum, s.minimum, r.*
    FROM summary s LEFT JOIN LATERAL (
        SELECT * FROM hour_rows ORDER BY unit_name, unit_kind, unit_id, k
        OFFSET :offset LIMIT :limit
    ) r ON true
    """


def hourly_series_sql(kind: ScopeKind) -> str:
    """The whole object per hour: every unit's covered usage and meters added up."""
    return f"""
    {_hourly_ctes(kind)}
    SELECT h.k, h.hour_start, coalesce(m.meters, 0)::int AS meters, coalesce(x.covered_meters, 0)::int AS covered_meters,
           round(x.usage_m3, 4) AS usage_m3,
           {_COVERAGE.format(meters="m.meters", covered="coalesce(x.covered_meters, 0)")} AS coverage_percent
    FROM hours h
    LEFT JOIN (SELECT hour_start, sum(usage_m3) AS usage_m3, sum(covered_meters) AS covered_meters
               FROM unit_hours GROUP BY hour_start) x ON x.hour_start = h.hour_start
    LEFT JOIN (SELECT day, sum(meters) AS meters FROM unit_day_meters GROUP BY day) m ON m.day = h.day
    ORDER BY h.k
    """
