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
never given the whole gap's usage.

**Households.** A household's meters (and a meter a resident asks for: the kinds of
:data:`_BY_ASSIGNMENT`) count only over the instants they served it, ``(start_at, end_at]``
of each assignment, as ``usage_between`` clips them. The hour that holds a handover
splits at it: the old household's part ``(h, t]`` is the register at the handover
reading minus the register at the close of the hour before, the new household's part
``(t, h + 1h]`` the register at the last reading in the hour minus the handover reading
(its seed); each part is exactly ``usage_between`` over it. The registers are the walk's
effective ones, per meter across the handover (rollovers, reverse flow held at the
high-water mark), never the raw totals. A part is covered when it is bracketed: the
meter's last reading at or before the part's start is in the hour before, or in the
hour itself for a part that starts at a handover (the handover reading, when one was
stored), and the meter has a reading inside the part closing it (the handover reading
closes the old household's part). A part after a handover without a reading of its own until the
next hour is not available; the next hour then counts from the handover reading. A
meter's hour is covered for the household when every part of it that the meter served
is (moved out and back in within one hour: both parts).

Per unit and hour:

- ``meters``: the unit's meters that count for it in the hour (an area's or a
  concentrator's: all of them, on every day; a household's: those that served it for at
  least part of the hour) and have at least one reading in the window (a meter read daily
  is counted; a meter with no reading at all in the window is not);
- ``covered_meters``: those of them with an hourly figure for the hour;
- ``usage_m3``: the sum of those figures, ``None`` when there is none (not available; an
  hour in which no meter served a household has ``meters`` 0 and no figure either);
- ``coverage_percent``: ``covered_meters / meters`` in percent, 2 places, ``None`` when
  ``meters`` is 0.

At most :data:`MAX_HOURLY_DAYS` days (``HOURLY_SCOPE_UNSUPPORTED``, the code kept from
when hours were for one meter or household only).
"""

from __future__ import annotations

from datetime import UTC, date, timedelta
from typing import Any

from backend.errors import DomainError, ErrorCode
from backend.readings.analytics.units import _SERVED_DAYS, _UNITS_SQL, ScopeKind, page_with_summary
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


def _closing_hours(source: str, effective: str, seed_effective: str, first_effective: str, *,
                   split: bool = False) -> str:
    """Per meter, the reading that closes each hour of ``source`` (readings with their
    ``hour`` and the register ``effective`` by the usage rule), then its usage: the
    register there minus at the close of the meter's hour before (the seed's when it is
    the first), an hourly figure only when that is the hour just before (or there is none
    at all: the meter's first reading ever).

    ``split``: hours are cut further at the meter's service bounds (``seg``, see
    :data:`_SPLIT_POINTS`), so a reading closes each *piece* of an hour, the previous
    piece's closing reading is the last one at or before the piece's start (the handover
    reading, for the piece after a handover), and a piece that starts inside the hour
    is bracketed by one in that hour or the hour before. Each row carries its
    ``read_at``, which the served parts of hours pick their pieces by."""
    key = "lead(hour) OVER w IS DISTINCT FROM hour"
    after = "= hour - interval '1 hour'"
    if split:
        key += " OR lead(seg) OVER w IS DISTINCT FROM seg"
        after = ">= hour - interval '1 hour'"
    return f"""
        SELECT meter_id, unit_no, every_day, hour,{" read_at," if split else ""}
               (effective - coalesce(lag(effective) OVER w, seed_effective, first_effective)) * multiplier AS usage_m3,
               CASE WHEN lag(hour) OVER w IS NOT NULL THEN lag(hour) OVER w {after}
                    WHEN seed_hour IS NOT NULL THEN seed_hour {after} ELSE true END AS covered
        FROM (
            SELECT meter_id, unit_no, every_day, read_at, hour, multiplier, seed_hour,
                   {seed_effective} AS seed_effective,
                   {effective} AS effective, {key} AS closes_hour,
                   first_value({first_effective}) OVER w AS first_effective
            FROM {source}
            WINDOW w AS (PARTITION BY meter_id ORDER BY read_at ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
        ) x
        WHERE closes_hour
        WINDOW w AS (PARTITION BY meter_id ORDER BY read_at)"""


# A household's meters (and a meter a resident asks for) count only over the instants
# they served the unit; an area's or a concentrator's count all the time, and their plan
# stays the plain aggregate's without any of this.
_BY_ASSIGNMENT = (ScopeKind.household, ScopeKind.meter)

# Each meter's service of its unit as instants, ``(start_at, end_at]`` per assignment
# (NULL = open), merged: moving out and back in at one instant is one span. In these
# kinds every meter counts for exactly one unit (itself), so spans are per meter.
_SPANS = """
    spans AS (
        SELECT meter_id, range_agg(tstzrange(start_at, end_at, '(]')) AS spans
        FROM unit_meters
        WHERE start_at IS NULL OR end_at IS NULL OR start_at < end_at
        GROUP BY meter_id
    ), """

# ``seg`` of a reading: how many of its meter's service bounds lie before it, so the
# readings of one piece of time between two bounds share it. A reading at a bound (the
# handover reading) closes the piece that ends there: (start_at, end_at] as usage counts.
_SEG = """,
               (SELECT count(*) FILTER (WHERE lower(x.span) < r.read_at) + count(*) FILTER (WHERE upper(x.span) < r.read_at)
                FROM spans s CROSS JOIN unnest(s.spans) AS x(span) WHERE s.meter_id = l.meter_id) AS seg"""

# The served parts of each hour per reporting meter (the whole hour, or the part before
# or after a handover, or both sides of an absence), their pieces' figures, and per unit
# and hour: the meters serving it in the hour, and those whose every served part is
# covered, with their usage.
_SERVED_UNIT_HOURS = """
    unit_parts AS (
        SELECT l.unit_no, l.meter_id, h.hour_start, p.part
        FROM meter_list l JOIN spans s ON s.meter_id = l.meter_id
        CROSS JOIN hours h
        CROSS JOIN LATERAL unnest(s.spans * tstzmultirange(
            tstzrange(h.hour_start, h.hour_start + interval '1 hour', '(]'))) AS p(part)
        WHERE l.reporting
    ), unit_meter_hours AS (
        SELECT p.unit_no, p.meter_id, p.hour_start, sum(mh.usage_m3) AS usage_m3,
               bool_and(coalesce(mh.covered, false)) AS covered
        FROM unit_parts p
        LEFT JOIN meter_hours mh ON mh.meter_id = p.meter_id AND mh.hour = p.hour_start AND p.part @> mh.read_at
        GROUP BY 1, 2, 3
    ), unit_hours AS (
        SELECT unit_no, hour_start, sum(usage_m3) FILTER (WHERE covered) AS usage_m3,
               count(*) FILTER (WHERE covered) AS covered_meters, count(*) AS meters
        FROM unit_meter_hours
        GROUP BY 1, 2
    )"""

# The others' covered hours summed ...
_ALL_UNIT_HOURS = """
    unit_hours AS (
        SELECT mh.unit_no, mh.hour AS hour_start, sum(mh.usage_m3) AS usage_m3, count(*) AS covered_meters
        FROM meter_hours mh
        WHERE mh.covered AND mh.hour >= CAST(:start_at AS timestamptz)
        GROUP BY 1, 2
    )"""

# ... and their meters per day (after ``unit_numbers``).
_UNIT_DAY_METERS = """,
    unit_day_meters AS (
        SELECT g.unit_kind, g.unit_id, d.day, sum(g.meters) AS meters
        FROM (
            SELECT sv.unit_kind, sv.unit_id, sv.days, count(*) AS meters
            FROM served sv JOIN meter_list l ON l.meter_id = sv.meter_id AND l.reporting
            GROUP BY 1, 2, 3
        ) g JOIN (SELECT DISTINCT day FROM hours) d ON d.day <@ g.days
        GROUP BY 1, 2, 3
    )"""


def _hourly_ctes(kind: ScopeKind) -> str:
    """``units`` and ``hours`` (k, hour_start, day), and per unit: ``unit_hours`` (by the
    unit's number in ``unit_numbers``: hour_start, usage of the covered meters, how many;
    and ``meters`` for the kinds of :data:`_BY_ASSIGNMENT`) and, for the others,
    ``unit_day_meters`` (day, meters counted).

    Most meters' registers only grow: the rollup flags every day with a rollover or a
    reverse flow, so a meter without one since its seed (which stood at its high-water
    mark) is its own effective register up to a constant, and only the differences
    count. Those meters skip the walk's running wraps and high-water mark; the others
    take it, reading by reading.

    Every meter counts for one unit of the object (a child area, or itself), so the walk
    carries the unit's number and the sums group by it without joining back per hour.

    A household's (or a resident's) meters are cut at their service bounds: the walk's
    hours split into pieces at each bound (``seg``), the effective register per reading
    staying the meter's own (wraps and high-water mark run across the bound), and each
    served part of an hour takes its piece's figure (:data:`_SERVED_UNIT_HOURS`)."""
    split = kind in _BY_ASSIGNMENT
    return f"""
    WITH {_UNITS_SQL[kind]},
    served AS (
        SELECT *, days = datemultirange(daterange(NULL, NULL)) AS every_day,
               dense_rank() OVER (ORDER BY unit_kind, unit_id)::int AS unit_no
        FROM ({_SERVED_DAYS}) s
    ), {_SPANS if split else ""}hours AS (
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
               {_HOUR.format(instant="r.read_at")} AS hour{_SEG if split else ""}
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
        {_closing_hours("points WHERE growing", "total_m3", "seed_total", "total_m3", split=split)}
        UNION ALL
        {_closing_hours("walked", "greatest(seed_effective, max(unwrapped) OVER w)", "seed_effective", "unwrapped",
                        split=split)}
    ), {_SERVED_UNIT_HOURS if split else _ALL_UNIT_HOURS}, unit_numbers AS (
        SELECT DISTINCT unit_kind, unit_id, unit_no FROM served
    ){"" if split else _UNIT_DAY_METERS}"""


_COVERAGE = "CASE WHEN {meters} > 0 THEN round(100.0 * {covered} / {meters}, 2) END"


def _meters_of(kind: ScopeKind, *, by_unit: bool) -> tuple[str, str]:
    """The join that brings the meters counted in an hour (``h``: hours; per unit ``u``,
    or the whole object) and the expression of their number: per hour for the kinds of
    :data:`_BY_ASSIGNMENT` (``x``, the unit_hours row), per day for the others."""
    if kind in _BY_ASSIGNMENT:
        return "", "x.meters"
    if by_unit:
        return "LEFT JOIN unit_day_meters m ON m.unit_kind = u.unit_kind AND m.unit_id = u.unit_id AND m.day = h.day", "m.meters"
    return "LEFT JOIN (SELECT day, sum(meters) AS meters FROM unit_day_meters GROUP BY day) m ON m.day = h.day", "m.meters"


def hourly_statistics_sql(kind: ScopeKind) -> str:
    """Per child unit and hour (zero meters filled in), one page ordered as the other
    statistics, each row carrying the summary over every row with a figure (in SQL)."""
    join, meters = _meters_of(kind, by_unit=True)
    return f"""
    {_hourly_ctes(kind)},
    hour_rows AS (
        SELECT u.unit_kind, u.unit_id, u.unit_name, u.unit_code, u.parent_name, h.k, h.hour_start AS period_start,
               coalesce({meters}, 0)::int AS meters, coalesce(x.covered_meters, 0)::int AS covered_meters,
               round(x.usage_m3, 4) AS usage_m3,
               {_COVERAGE.format(meters=meters, covered="coalesce(x.covered_meters, 0)")} AS coverage_percent
        FROM (SELECT DISTINCT * FROM units) u CROSS JOIN hours h
        {join}
        LEFT JOIN unit_numbers n ON n.unit_kind = u.unit_kind AND n.unit_id = u.unit_id
        LEFT JOIN unit_hours x ON x.unit_no = n.unit_no AND x.hour_start = h.hour_start
    ), {page_with_summary("hour_rows", order="unit_name, unit_kind, unit_id, k", counted="usage_m3")}"""


def hourly_series_sql(kind: ScopeKind) -> str:
    """The whole object per hour: every unit's covered usage and meters added up."""
    join, meters = _meters_of(kind, by_unit=False)
    counted = ", sum(meters) AS meters" if kind in _BY_ASSIGNMENT else ""
    return f"""
    {_hourly_ctes(kind)}
    SELECT h.k, h.hour_start, coalesce({meters}, 0)::int AS meters, coalesce(x.covered_meters, 0)::int AS covered_meters,
           round(x.usage_m3, 4) AS usage_m3,
           {_COVERAGE.format(meters=meters, covered="coalesce(x.covered_meters, 0)")} AS coverage_percent
    FROM hours h
    LEFT JOIN (SELECT hour_start, sum(usage_m3) AS usage_m3, sum(covered_meters) AS covered_meters{counted}
               FROM unit_hours GROUP BY hour_start) x ON x.hour_start = h.hour_start
    {join}
    ORDER BY h.k
    """
