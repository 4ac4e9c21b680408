"""Abnormal meters (异常水表): evaluating the alarm rules, set-based, and the rules
themselves (thresholds per area / meter model). Readings decides which meters are
abnormal; the alarms domain (``backend.alarms.service``) writes their alarms and emits
``alarm.opened`` / ``alarm.closed``: evaluation's last statement is its sweep. What
people do with alarms (acknowledge, close) and the abnormal-meter list are the alarms
service's, re-exported here under the names this module always had.

Evaluation reads ``latest_readings``, the last few days of ``daily_usage``,
``meter_link_status`` and each meter's cached high-use baseline (raw readings only to
look past an estimate or a manual read, and for failing links), so ingest can run it
after every batch for the meters it wrote. Each kind's condition:

- ``silent``: the newest reading that is not an estimate (or, never read, the install
  day) is older than N hours;
- ``communication_failure``: N or more consecutive failed reads since the last actual
  reading (an estimate or a read by hand does not show the link working);
- ``reverse_flow`` / ``rollover``: a ``daily_usage`` day among the last N local days
  (today included) is flagged so;
- ``zero_use``: a meter serving an active household used nothing over the last N local
  days, had readings in them (the newest today or yesterday) and was read before them.
  A batch evaluates it for its meters whose registers stood still (alarms/batch.py); the
  periodic run for every meter, which also catches the window sliding at midnight;
- ``high_use``: today's or yesterday's usage, per day since the reading before it, is
  above K × the meter's average daily usage over the 30 days before yesterday
  (``meter_usage_baselines``, recomputed once a day per meter), when that is positive;
- ``battery_low``: battery below the threshold (volts) or CJ/T 188 status bit D2 set;
- ``valve_abnormal``: a valved model reports its valve 'unknown', or status bits D0-D1 = 3.

Battery, valve and status bits come from the newest actual reading: manual and
estimated readings carry none, and say nothing about them.

Plain async functions over a session; the caller commits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, TextClause, false, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.alarms.errors import AlarmAlreadyAcknowledged, AlarmAlreadyClosed
from backend.alarms.models import METER_KINDS, AlarmSubjectKind
from backend.alarms.models import AlarmKind as AnyAlarmKind
from backend.alarms.service import (
    CONDITION_CLEARED,
    SYSTEM,
    AlarmSweep,
    acknowledge_alarm,
    close_alarm,
    live_alarms_from,
    run_sweep,
)
from backend.alarms.service import MeterAlarmFilter as AlarmFilter
from backend.alarms.service import meter_alarm_page_query as alarm_page_query
from backend.alarms.service import meter_alarm_view as alarm_view
from backend.archives.models import Area, MeterModel
from backend.auth.errors import UnknownArea
from backend.auth.models import PrincipalKind
from backend.auth.principal import Principal
from backend.auth.scope import covers_whole_tree, in_scope, path_in_scope
from backend.errors import DomainError, ErrorCode, NotFound
from backend.readings.alarms.models import AlarmKind, AlarmRule, AlarmSeverity
from backend.readings.partitions import as_zone
from backend.readings.rollup import zone_name

# The alarm workflow's names, kept importable here for code written against this module.
__all__ = [
    "CONDITION_CLEARED", "SYSTEM", "AlarmAlreadyAcknowledged", "AlarmAlreadyClosed", "AlarmEvaluation", "AlarmFilter",
    "DefaultRuleKept", "acknowledge_alarm", "alarm_page_query", "alarm_rule_view", "alarm_rules_statement",
    "alarm_view", "close_alarm", "delete_alarm_rule", "evaluate_alarms", "evaluate_rules", "record_read_failures",
    "set_alarm_rule",
]

HIGH_USE_BASELINE_DAYS = 30


@dataclass(frozen=True, slots=True)
class AlarmEvaluation:
    opened: int
    closed: int
    refreshed: int


class DefaultRuleKept(DomainError):
    code = ErrorCode.ALARM_RULE_DEFAULT
    message = "全局默认规则不能删除, 可以停用或修改阈值"
    message_en = "A global default rule cannot be deleted; disable it or change its threshold"


# --------------------------------------------------------------------------- evaluation

def _variant_sql(sql: str) -> dict[bool, str]:
    """``sql`` for every installed meter (``True``) and for ``:meter_ids`` (``False``).

    Two texts rather than one with ``:all_meters OR …``: PostgreSQL caches a generic plan
    for a statement run often, and a generic plan cannot tell the two cases apart."""
    every = _IN_BATCH.sub("true", sql).replace("CAST(:all_meters AS boolean)", "true")
    return {True: every, False: sql.replace("CAST(:all_meters AS boolean)", "false")}


def _variants(sql: str) -> dict[bool, TextClause]:
    return {every: text(variant) for every, variant in _variant_sql(sql).items()}


_IN_BATCH = re.compile(r"[\w.]+ = ANY\(CAST\(:meter_ids AS bigint\[\]\)\)")


# A success newer than the last failure ends a run of failures: an actual reading, as
# neither an estimate nor a read by hand shows the link working. (latest_readings first:
# a cheap test that anything at all is newer.)
_RESET_LINKS = _variants("""
WITH ok AS (
    SELECT s.meter_id, x.read_at FROM meter_link_status s
    JOIN latest_readings l ON l.meter_id = s.meter_id
    CROSS JOIN LATERAL (
        SELECT x.read_at FROM readings x WHERE x.meter_id = s.meter_id AND x.quality = 'actual'
        ORDER BY x.read_at DESC LIMIT 1
    ) x
    WHERE s.consecutive_failures > 0
      AND l.read_at > coalesce(s.last_failure_at, '-infinity'::timestamptz)
      AND x.read_at > coalesce(s.last_failure_at, '-infinity'::timestamptz)
      AND s.meter_id = ANY(CAST(:meter_ids AS bigint[]))
)
UPDATE meter_link_status s SET consecutive_failures = 0, last_success_at = ok.read_at
FROM ok WHERE ok.meter_id = s.meter_id
""")

# Each meter's high-use baseline: its average daily usage over the 30 days before
# yesterday, computed once a day per meter (the first evaluation of the day pays it), so
# the per-batch evaluation never reads a month of daily_usage. It is the register's
# growth between the window's first and last day-closing readings over the time between
# them, not a mean of daily_usage rows: a meter's first day (one reading, or the hours
# after it was fitted) and the rows of a meter read every few days would skew a mean.
# Under a day between them (a meter just fitted or swapped) gives no baseline yet.
_REFRESH_BASELINES = _variants("""
INSERT INTO meter_usage_baselines AS b (meter_id, day, average_m3)
SELECT m.id, CAST(:today AS date),
       (SELECT CASE WHEN max(d.last_at) - min(d.last_at) >= interval '1 day' THEN
                   round((max(d.effective_total) - min(d.effective_total)) * coalesce(mm.multiplier, 1)
                         / (CAST(extract(epoch FROM max(d.last_at) - min(d.last_at)) AS numeric) / 86400), 4) END
        FROM daily_usage d
        WHERE d.meter_id = m.id AND d.day >= CAST(:today AS date) - 1 - CAST(:baseline_days AS integer)
          AND d.day < CAST(:today AS date) - 1)
FROM meters m
LEFT JOIN meter_models mm ON mm.id = m.model_id
LEFT JOIN meter_usage_baselines old ON old.meter_id = m.id
WHERE m.status = 'installed' AND m.id = ANY(CAST(:meter_ids AS bigint[]))
  AND (old.day IS NULL OR old.day <> CAST(:today AS date))
ON CONFLICT (meter_id) DO UPDATE SET day = EXCLUDED.day, average_m3 = EXCLUDED.average_m3
""")


def _rule_columns() -> str:
    """Per (model, area) pair, each kind's threshold (null: disabled) and severity."""
    return ",\n".join(
        f"max(threshold) FILTER (WHERE kind = '{kind.value}' AND enabled) AS {kind.value}_t, "
        f"max(severity) FILTER (WHERE kind = '{kind.value}') AS {kind.value}_s"
        for kind in METER_KINDS
    )


# One statement: the meters evaluated, the rule that applies to each (meter, kind), the
# conditions that hold (``hits``, below), then the alarm service's upsert of live alarms
# and closing of cleared ones (backend.alarms.service.AlarmSweep) around them.
# Rules are resolved per distinct (model, area) pair (a few hundred at most) and pivoted
# to one row per meter; daily_usage is read for the last few days only, through its day
# index; with ``meter_ids`` (after an ingest batch: backend.readings.alarms.batch hands
# over only the meters where a rule could change) zero use reads each meter's own window.
_HITS = _variant_sql(f"""
target AS MATERIALIZED (
    SELECT m.id AS meter_id, coalesce(m.model_id, 0) AS model_key, m.area_id, a.path,
           coalesce(mm.has_valve, false) AS has_valve, m.install_date
    FROM meters m
    JOIN areas a ON a.id = m.area_id
    LEFT JOIN meter_models mm ON mm.id = m.model_id
    WHERE m.status = 'installed'
      AND m.id = ANY(CAST(:meter_ids AS bigint[]))
), pairs AS (
    SELECT DISTINCT model_key, area_id, path FROM target
), applied AS (
    SELECT DISTINCT ON (p.model_key, p.area_id, r.kind)
           p.model_key, p.area_id, r.kind, r.enabled, r.threshold, r.severity
    FROM pairs p
    JOIN alarm_rules r ON r.meter_model_id IS NULL OR r.meter_model_id = p.model_key
    LEFT JOIN areas ra ON ra.id = r.area_id
    WHERE r.area_id IS NULL OR p.path LIKE ra.path || '%'
    ORDER BY p.model_key, p.area_id, r.kind,
             (r.meter_model_id IS NOT NULL) DESC, length(ra.path) DESC NULLS LAST
), pair_rules AS (
    SELECT model_key, area_id, {_rule_columns()}
    FROM applied GROUP BY model_key, area_id
), rules AS MATERIALIZED (
    SELECT t.meter_id, t.has_valve, t.install_date, r.*
    FROM target t JOIN pair_rules r ON r.model_key = t.model_key AND r.area_id = t.area_id
), heard AS (
    -- An estimate is no sign of life, and a manual read reports no battery, valve or
    -- status bits: when the newest reading is one, the point rules look back to the
    -- newest one that is. The look-back for battery and valve only keeps a live alarm
    -- from closing (its reading opened it), so meters read by hand that have none, many
    -- at some utilities, cost one alarm probe rather than one per readings partition.
    SELECT r.meter_id, r.silent_s, r.silent_t, r.communication_failure_s, r.communication_failure_t,
           r.battery_low_s, r.battery_low_t, r.valve_abnormal_s, r.valve_abnormal_t, r.has_valve,
           CASE WHEN l.quality = 'estimated' THEN lh.read_at ELSE l.read_at END AS read_at,
           CASE WHEN l.quality = 'actual' THEN l.battery ELSE la.battery END AS battery,
           CASE WHEN l.quality = 'actual' THEN l.status_bits ELSE la.status_bits END AS status_bits,
           CASE WHEN l.quality = 'actual' THEN l.valve_state ELSE la.valve_state END AS valve_state,
           s.consecutive_failures, s.last_failure_reason,
           CAST(r.install_date AS timestamp) AT TIME ZONE :tz AS installed_at
    FROM rules r
    LEFT JOIN latest_readings l ON l.meter_id = r.meter_id
    LEFT JOIN LATERAL (
        SELECT x.read_at FROM readings x
        WHERE l.quality = 'estimated' AND x.meter_id = r.meter_id AND x.quality <> 'estimated'
        ORDER BY x.read_at DESC LIMIT 1
    ) lh ON true
    LEFT JOIN LATERAL (
        SELECT x.battery, x.status_bits, x.valve_state FROM readings x
        WHERE l.quality <> 'actual' AND x.meter_id = r.meter_id AND x.quality = 'actual'
          AND EXISTS (SELECT FROM {live_alarms_from(AlarmSubjectKind.meter,
                                                    kinds=(AnyAlarmKind.battery_low, AnyAlarmKind.valve_abnormal))}
                      AND a.subject_id = r.meter_id)
        ORDER BY x.read_at DESC LIMIT 1
    ) la ON true
    LEFT JOIN meter_link_status s ON s.meter_id = r.meter_id
), point_flags AS (
    SELECT h.*,
           coalesce(coalesce(h.read_at, h.installed_at)
                    < CAST(:now AS timestamptz) - h.silent_t * interval '1 hour', false) AS is_silent,
           coalesce(h.consecutive_failures >= h.communication_failure_t, false) AS is_failing,
           coalesce(h.battery_low_t IS NOT NULL AND (h.battery < h.battery_low_t OR h.status_bits & 4 <> 0),
                    false) AS is_battery_low,
           coalesce(h.valve_abnormal_t IS NOT NULL
                    AND ((h.has_valve AND h.valve_state = 'unknown') OR h.status_bits & 3 = 3), false) AS is_valve_abnormal
    FROM heard h
), point AS (
    -- Abnormal meters are few: the per-kind rows are only made for them.
    SELECT p.meter_id, k.kind, k.severity, k.threshold, p.read_at, p.battery, p.status_bits, p.valve_state,
           p.consecutive_failures, p.last_failure_reason, p.installed_at
    FROM point_flags p
    CROSS JOIN LATERAL (VALUES
        ('silent', p.silent_s, p.silent_t, p.is_silent),
        ('communication_failure', p.communication_failure_s, p.communication_failure_t, p.is_failing),
        ('battery_low', p.battery_low_s, p.battery_low_t, p.is_battery_low),
        ('valve_abnormal', p.valve_abnormal_s, p.valve_abnormal_t, p.is_valve_abnormal)
    ) AS k(kind, severity, threshold, holds)
    WHERE (p.is_silent OR p.is_failing OR p.is_battery_low OR p.is_valve_abnormal) AND k.holds
), point_hits AS (
    SELECT meter_id, kind, severity, threshold,
           CASE kind
               WHEN 'silent' THEN round(CAST(extract(epoch FROM CAST(:now AS timestamptz)
                                        - coalesce(read_at, installed_at)) / 3600 AS numeric), 4)
               WHEN 'communication_failure' THEN consecutive_failures
               WHEN 'battery_low' THEN battery
               ELSE status_bits
           END AS value,
           CASE kind
               WHEN 'silent' THEN coalesce('最后读数 ' || to_char(read_at AT TIME ZONE :tz, 'YYYY-MM-DD HH24:MI'),
                                           '从未读数')
               WHEN 'communication_failure' THEN coalesce(last_failure_reason, '')
               WHEN 'battery_low' THEN concat_ws(' ', '电池电压 ' || battery || 'V',
                                                 CASE WHEN status_bits & 4 <> 0 THEN '状态位 D2 欠压' END)
               ELSE concat_ws(' ', '阀门状态 ' || valve_state, '状态位 ' || status_bits)
           END AS detail
    FROM point
), recent AS (
    SELECT d.meter_id, d.day, d.last_at, d.usage_m3, d.reverse_flow, d.rollover
    FROM daily_usage d
    WHERE d.day <= CAST(:today AS date)
      AND d.day > CAST(:today AS date) - (
          SELECT CAST(greatest(2, max(reverse_flow_t), max(rollover_t),
                               CASE WHEN CAST(:all_meters AS boolean) THEN max(zero_use_t) END) AS integer)
          FROM pair_rules)
), flagged AS (
    -- Flagged days are rare: only those rows are grouped.
    SELECT r.meter_id, k.kind, k.severity, k.threshold, count(*) AS flagged_days,
           string_agg(to_char(d.day, 'YYYY-MM-DD'), ', ' ORDER BY d.day) AS days
    FROM recent d
    JOIN rules r ON r.meter_id = d.meter_id
    CROSS JOIN LATERAL (VALUES
        ('reverse_flow', r.reverse_flow_s, r.reverse_flow_t, d.reverse_flow),
        ('rollover', r.rollover_s, r.rollover_t, d.rollover)
    ) AS k(kind, severity, threshold, flagged)
    WHERE (d.reverse_flow OR d.rollover) AND k.flagged
      AND d.day > CAST(:today AS date) - CAST(k.threshold AS integer)
    GROUP BY r.meter_id, k.kind, k.severity, k.threshold
), high AS (
    -- A day's usage runs from the previous reading, which for a meter read every few days
    -- is days back: it is compared per day (never over less than one). Only the rare
    -- rows above K x the average at all look the previous reading up.
    SELECT DISTINCT ON (c.meter_id) c.meter_id, c.severity, c.k, c.average_m3, c.usage, c.days
    FROM (
        SELECT r.meter_id, r.high_use_s AS severity, r.high_use_t AS k, b.average_m3, per.days,
               round(d.usage_m3 / per.days, 4) AS usage
        FROM recent d
        JOIN rules r ON r.meter_id = d.meter_id
        JOIN meter_usage_baselines b ON b.meter_id = d.meter_id
        LEFT JOIN LATERAL (
            SELECT p.last_at FROM daily_usage p WHERE p.meter_id = d.meter_id AND p.day < d.day
            ORDER BY p.day DESC LIMIT 1
        ) previous ON true
        CROSS JOIN LATERAL (
            SELECT greatest(1, coalesce(CAST(extract(epoch FROM d.last_at - previous.last_at) AS numeric) / 86400, 1))
                AS days
        ) per
        WHERE d.day >= CAST(:today AS date) - 1 AND b.average_m3 > 0 AND d.usage_m3 > r.high_use_t * b.average_m3
    ) c
    WHERE c.usage > c.k * c.average_m3
    ORDER BY c.meter_id, c.usage DESC
), zero_days AS (
    -- Every meter: the window's days are in ``recent``. A batch's few meters: each one's
    -- own days through the rollup's primary key (``recent`` spans only the point kinds'
    -- few days, read for every meter; widening it to N days would cost every batch).
    SELECT d.meter_id, d.day, d.usage_m3 FROM recent d WHERE CAST(:all_meters AS boolean)
    UNION ALL
    SELECT d.meter_id, d.day, d.usage_m3
    FROM rules r JOIN daily_usage d ON d.meter_id = r.meter_id
    WHERE NOT CAST(:all_meters AS boolean) AND r.zero_use_t IS NOT NULL
      AND d.day <= CAST(:today AS date) AND d.day > CAST(:today AS date) - CAST(r.zero_use_t AS integer)
), zero AS (
    SELECT r.meter_id, max(r.zero_use_s) AS severity, max(r.zero_use_t) AS threshold, sum(d.usage_m3) AS total
    FROM rules r
    JOIN zero_days d ON d.meter_id = r.meter_id
    WHERE d.day > CAST(:today AS date) - CAST(r.zero_use_t AS integer)
    GROUP BY r.meter_id
    HAVING sum(d.usage_m3) = 0 AND max(d.day) >= CAST(:today AS date) - 1
), usage_hits AS (
    SELECT meter_id, kind, severity, threshold, CAST(flagged_days AS numeric) AS value,
           (CASE kind WHEN 'reverse_flow' THEN '倒流日期 ' ELSE '翻转日期 ' END) || days AS detail
    FROM flagged
    UNION ALL
    SELECT meter_id, 'high_use', severity, round(k * average_m3, 4), usage,
           '日用量 ' || usage || CASE WHEN days > 1 THEN ' (' || round(days, 1) || ' 天平均)' ELSE '' END
           || ' > ' || k || ' × 日均 ' || average_m3
    FROM high
    UNION ALL
    SELECT z.meter_id, 'zero_use', z.severity, z.threshold, z.total, CAST(z.threshold AS integer) || ' 天用量为 0'
    FROM zero z
    WHERE EXISTS (SELECT FROM meter_assignments ma JOIN households h ON h.id = ma.household_id
                  WHERE ma.meter_id = z.meter_id AND ma.valid_to IS NULL AND h.status = 'active')
      -- Only for a meter read before the window (a new meter has nothing to compare with).
      AND EXISTS (SELECT FROM daily_usage b WHERE b.meter_id = z.meter_id
                  AND b.day <= CAST(:today AS date) - CAST(z.threshold AS integer))
), hits AS (
    SELECT meter_id AS subject_id, kind, severity, value, threshold, detail, CAST(NULL AS bigint) AS area_id,
           '' AS subject_name
    FROM point_hits
    UNION ALL
    SELECT meter_id, kind, severity, value, threshold, detail, NULL, '' FROM usage_hits
)
""")
_DECIDES = _variant_sql("a.subject_id = ANY(CAST(:meter_ids AS bigint[]))")
_EVALUATE = {
    every: AlarmSweep(subject_kind=AlarmSubjectKind.meter, kinds=METER_KINDS, hits=_HITS[every], decides=_DECIDES[every])
    for every in (True, False)
}


async def evaluate_alarms(
    session: AsyncSession,
    *,
    actor: Principal,
    now: datetime,
    tz: str | tzinfo,
    meter_ids: Sequence[int] | None = None,
) -> AlarmEvaluation:
    """The periodic sweep (``evaluate_alarms`` job, the demo): :func:`evaluate_rules` for
    ``meter_ids`` (every installed meter when ``None``, the only way silent meters are
    found), acting as ``actor``, who needs ``alarms:manage`` (the system actor holds it).
    Alarms it closes are closed by ``system`` for the system actor, else by the actor's name."""
    actor.require("alarms:manage")
    closed_by = SYSTEM if actor.kind is PrincipalKind.system else actor.name
    return await evaluate_rules(session, now=now, tz=tz, meter_ids=meter_ids, closed_by=closed_by)


async def evaluate_rules(
    session: AsyncSession,
    *,
    now: datetime,
    tz: str | tzinfo,
    meter_ids: Sequence[int] | None = None,
    closed_by: str = SYSTEM,
) -> AlarmEvaluation:
    """Open, refresh and auto-close alarms for ``meter_ids`` (every installed meter when
    ``None``).

    Inside another service's unit of work (ingest, a correction) the alarms follow the
    readings whoever wrote them, so this takes no principal: entry points call
    :func:`evaluate_alarms` with one. Three statements whatever the number of meters,
    the last one the alarm service's sweep (backend.alarms.service.run_sweep), which
    writes the alarms and emits one ``alarm.opened`` and one ``alarm.closed`` event
    carrying the alarm ids when any changed. Acknowledged alarms close too when their condition clears. The caller
    commits.
    """
    if meter_ids is not None and not meter_ids:
        return AlarmEvaluation(0, 0, 0)
    zone = as_zone(tz)
    every = meter_ids is None
    ids = [] if meter_ids is None else list(meter_ids)
    today = now.astimezone(zone).date()
    scope = {"meter_ids": ids}
    await session.execute(_RESET_LINKS[every], scope)
    await session.execute(_REFRESH_BASELINES[every], {**scope, "today": today, "baseline_days": HIGH_USE_BASELINE_DAYS})
    # The alarm service writes what the rules found and emits the events.
    changes = await run_sweep(session, _EVALUATE[every], params={**scope, "tz": zone_name(zone), "today": today},
                              now=now, closed_by=closed_by)
    return AlarmEvaluation(opened=len(changes.opened), closed=len(changes.closed), refreshed=changes.refreshed)


_RECORD_FAILURES = text("""
INSERT INTO meter_link_status AS s (meter_id, consecutive_failures, last_failure_at, last_failure_reason)
SELECT DISTINCT id, 1, CAST(:failed_at AS timestamptz), :reason FROM unnest(CAST(:meter_ids AS bigint[])) AS m(id)
ON CONFLICT (meter_id) DO UPDATE
SET consecutive_failures = CASE
        -- An actual reading newer than the last failure means the link worked in between.
        WHEN EXISTS (SELECT FROM readings x WHERE x.meter_id = s.meter_id AND x.quality = 'actual'
                     AND x.read_at > coalesce(s.last_failure_at, '-infinity'::timestamptz)) THEN 1
        ELSE s.consecutive_failures + 1 END,
    last_failure_at = EXCLUDED.last_failure_at, last_failure_reason = EXCLUDED.last_failure_reason
WHERE s.last_failure_at IS NULL OR EXCLUDED.last_failure_at > s.last_failure_at
""")


async def record_read_failures(
    session: AsyncSession, *, meter_ids: Sequence[int], failed_at: datetime, reason: str
) -> None:
    """Count one failed read of each of ``meter_ids`` at ``failed_at`` (one statement).

    A report no newer than the last one recorded is ignored, so a retried report does not
    count twice. The caller commits; evaluation opens ``communication_failure`` alarms.
    """
    if meter_ids:
        await session.execute(_RECORD_FAILURES, {"meter_ids": list(meter_ids), "failed_at": failed_at, "reason": reason})


# --------------------------------------------------------------------------- rules


def _meter_kind(kind: AnyAlarmKind | AlarmKind) -> AlarmKind:
    """A kind the rules hold; the kinds of other subjects are refused (their owners decide them)."""
    if kind not in METER_KINDS:
        raise DomainError("该类告警不按水表规则评估", "Alarms of this kind are not raised by meter rules",
                          field="kind", code=ErrorCode.INVALID)
    return AlarmKind(kind)


def _check_threshold(kind: AlarmKind, threshold: Decimal) -> Decimal:
    if not threshold.is_finite() or threshold < 0 or threshold >= Decimal(10) ** 8:
        raise DomainError("阈值须为 0 到 99999999 之间的数", "The threshold must be a number from 0 to 99999999",
                          field="threshold", code=ErrorCode.INVALID)
    whole = kind in (AlarmKind.silent, AlarmKind.communication_failure, AlarmKind.zero_use,
                     AlarmKind.reverse_flow, AlarmKind.rollover)
    if whole and (threshold != threshold.to_integral_value() or threshold < 1):
        raise DomainError("该类告警的阈值须为正整数", "This kind's threshold must be a whole number of at least 1",
                          field="threshold", code=ErrorCode.INVALID)
    if threshold.as_tuple().exponent < -4:  # type: ignore[operator]
        raise DomainError("阈值最多 4 位小数", "At most 4 decimal places", field="threshold", code=ErrorCode.INVALID)
    return threshold.quantize(Decimal("0.0001"))  # as the column holds it, so answers read like later queries


async def set_alarm_rule(
    session: AsyncSession, *, kind: AnyAlarmKind | AlarmKind, area_id: int | None, meter_model_id: int | None, enabled: bool,
    threshold: Decimal, severity: AlarmSeverity, by: str, now: datetime, scope_patterns: Sequence[str] | None,
) -> AlarmRule:
    """Create or replace the rule of ``kind`` for this area subtree and/or meter model
    (both ``None``: the global default). An area must lie in the scope; rules that reach
    beyond one area (global or per model) are shared by the whole company and need
    whole-tree scope (backend.auth.scope). Only meter kinds have rules (INVALID on ``kind``)."""
    kind = _meter_kind(kind)
    threshold = _check_threshold(kind, threshold)
    if area_id is not None:
        area = await session.get(Area, area_id)
        if area is None or not path_in_scope(area.path, scope_patterns):
            raise UnknownArea(field="areaId")
    elif not await covers_whole_tree(session, scope_patterns):
        raise UnknownArea("全局或按型号的规则需要全部区域的权限", "A rule beyond one area needs a scope over every area",
                          field="areaId")
    if meter_model_id is not None and await session.get(MeterModel, meter_model_id) is None:
        raise NotFound(field="meterModelId")
    statement = (
        select(AlarmRule).where(
            AlarmRule.kind == kind,  # type: ignore[arg-type]
            AlarmRule.area_id.is_not_distinct_from(area_id),  # type: ignore[union-attr]
            AlarmRule.meter_model_id.is_not_distinct_from(meter_model_id),  # type: ignore[union-attr]
        ).with_for_update()
    )
    rule = (await session.execute(statement)).scalars().first()
    if rule is None:
        rule = AlarmRule(kind=kind, area_id=area_id, meter_model_id=meter_model_id, threshold=threshold)
        session.add(rule)
    rule.enabled = enabled
    rule.threshold = threshold
    rule.severity = severity
    rule.updated_at = now
    rule.updated_by = by
    await session.flush()
    return rule


async def delete_alarm_rule(session: AsyncSession, *, rule_id: int, scope_patterns: Sequence[str] | None) -> AlarmRule:
    """Delete an area or model rule (meters fall back to the next most specific one).
    Global defaults are kept (ALARM_RULE_DEFAULT): disable them instead."""
    rule = await _rule_in_scope(session, rule_id, scope_patterns, lock=True)
    if rule.area_id is None and rule.meter_model_id is None:
        raise DefaultRuleKept(field="id")
    if rule.area_id is None and not await covers_whole_tree(session, scope_patterns):
        raise NotFound(field="id")
    await session.delete(rule)
    await session.flush()
    return rule


async def _rule_in_scope(
    session: AsyncSession, rule_id: int, scope_patterns: Sequence[str] | None, *, lock: bool = False
) -> AlarmRule:
    statement: Any = select(AlarmRule).outerjoin(Area, Area.id == AlarmRule.area_id).where(AlarmRule.id == rule_id)  # type: ignore[arg-type]
    if scope_patterns is not None:
        statement = statement.where(or_(AlarmRule.area_id.is_(None), in_scope(Area.path, scope_patterns)))  # type: ignore[union-attr]
    if lock:
        statement = statement.with_for_update(of=AlarmRule)
    rule = (await session.execute(statement)).scalars().first()
    if rule is None:
        raise NotFound(field="id")
    return rule  # type: ignore[no-any-return]


async def alarm_rule_view(session: AsyncSession, *, rule_id: int) -> tuple[AlarmRule, str | None]:
    """A rule with the name of its area (null for a rule over every area), as the list shows it."""
    statement = alarm_rules_statement(scope_patterns=None).where(AlarmRule.id == rule_id)  # type: ignore[arg-type]
    row: Any = (await session.execute(statement)).one()
    return row[0], row[1]


def alarm_rules_statement(
    *, scope_patterns: Sequence[str] | None, kind: AnyAlarmKind | AlarmKind | None = None
) -> Select[Any]:
    """Rules visible in the scope (global and per-model ones, and those of areas in it),
    global first, then by kind and area path; rows are ``(AlarmRule, area_name)``. A kind
    of another subject has no rules: none."""
    statement: Any = select(AlarmRule, Area.name.label("area_name")).outerjoin(Area, Area.id == AlarmRule.area_id)  # type: ignore[attr-defined,arg-type]
    if scope_patterns is not None:
        statement = statement.where(or_(AlarmRule.area_id.is_(None), in_scope(Area.path, scope_patterns)))  # type: ignore[union-attr]
    if kind is not None:
        statement = statement.where(AlarmRule.kind == AlarmKind(kind) if kind in METER_KINDS else false())
    return statement.order_by(AlarmRule.kind, Area.path.nulls_first(), AlarmRule.meter_model_id.nulls_first(),  # type: ignore[union-attr,attr-defined,no-any-return]
                              AlarmRule.id)
