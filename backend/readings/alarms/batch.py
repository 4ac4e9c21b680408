"""The per-batch alarm evaluation behind ingest: only the meters where a rule could change.

After a batch, a rule can only open for a meter whose new readings show something (a
battery under the highest battery threshold in use, status bits, a valve reported
'unknown', a day flagged for rollover or reverse flow, a day's usage above the smallest
high-use factor × its latest baseline, or no baseline yet), and can only refresh or
close an alarm that is live. Every other meter of the batch would come out of
:func:`evaluate_alarms` unchanged, so it is not handed to it: for a normal batch of 20k
meters that is the difference between the full evaluation and one index probe per meter.
Zero use opens with the batch too, for a meter whose newest day came out at zero
(``RolledUp.idle``): :func:`zero_use_candidates` keeps, in one statement of one
index probe per such meter, only those whose register has not moved over the loosest
zero-use window in use, and only those go to the full evaluation. What a batch cannot
see is the window sliding at midnight with no new reading (the last used day leaving
it): the periodic run, every 15 minutes over every meter, opens those, as it finds silent
meters and refreshes the high-use baselines once a day.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.readings.alarms.models import AlarmKind
from backend.readings.alarms.service import AlarmEvaluation, evaluate_rules
from backend.readings.rollup import cyclic_gc_paused

# The loosest threshold of each kind over the enabled rules: a superset test.
_RULE_BOUNDS = text("""
SELECT kind, min(threshold) AS lowest, max(threshold) AS highest FROM alarm_rules WHERE enabled GROUP BY kind
""")

_UNKNOWN_VALVE = "unknown"


@dataclass(frozen=True, slots=True)
class RuleBounds:
    """The loosest thresholds in use: a reading under ``battery_ceiling`` may open a
    battery alarm, a day above ``high_use_factor`` × baseline a high-use one, and nothing
    used over the last ``zero_use_days`` days a zero-use one (None: no such rule enabled)."""

    battery_ceiling: Decimal | None
    high_use_factor: Decimal | None
    zero_use_days: int | None = None


async def rule_bounds(session: AsyncSession) -> RuleBounds:
    bounds = {row.kind: (row.lowest, row.highest) for row in (await session.execute(_RULE_BOUNDS)).all()}
    zero_use_days = bounds.get(AlarmKind.zero_use, (None, None))[0]
    return RuleBounds(bounds.get(AlarmKind.battery_low, (None, None))[1], bounds.get(AlarmKind.high_use, (None, None))[0],
                      None if zero_use_days is None else int(zero_use_days))


def is_suspicious(valve: Any, battery: Any, status_bits: Any, bounds: RuleBounds) -> bool:
    """A new reading that could open a rule: status bits, a valve reported 'unknown' or a
    battery under the highest battery threshold in use."""
    return bool(status_bits) or valve == _UNKNOWN_VALVE or (
        isinstance(battery, Decimal | int | float) and bounds.battery_ceiling is not None
        and battery < bounds.battery_ceiling
    )


def suspicious_meters(rows: Iterable[Sequence[Any]], bounds: RuleBounds) -> set[int]:
    """The meters of ``rows`` (ingest's COPY column order) with a suspicious reading."""
    with cyclic_gc_paused():
        return {row[0] for row in rows if is_suspicious(row[5], row[6], row[7], bounds)}


def candidates_from_facts(
    facts: Iterable[Any], *, today: date, day_usage: Mapping[int, Decimal], bounds: RuleBounds
) -> set[int]:
    """Meters of ``facts`` (ingest's batch-state rows: ``meter_id``, ``baseline_day``,
    ``baseline_m3`` as text, ``alarm_live``) with a live alarm, no baseline yet, or a
    day above the loosest high-use factor × its baseline. A baseline from an earlier day
    serves until the periodic run refreshes it (refreshing it here would make the first
    batch after midnight evaluate every meter it carries), so where today's baseline
    would be lower, or a meter's first one appears today, a high-use alarm opens at the
    next periodic run (within 15 minutes) rather than with the batch."""
    factor = bounds.high_use_factor
    found: set[int] = set()
    for fact in facts:
        if fact["alarm_live"] or fact["baseline_day"] is None:
            found.add(fact["meter_id"])
            continue
        baseline_text = fact["baseline_m3"]  # text (see service._BATCH_STATE)
        usage = day_usage.get(fact["meter_id"])
        if factor is None or baseline_text is None or usage is None:
            continue
        baseline = Decimal(baseline_text)
        if baseline > 0 and usage > factor * baseline:
            found.add(fact["meter_id"])
    return found


# A meter can only hold zero use over N >= :days days if its register has not moved over
# the last :days: its effective register now (the open day, which the rule needs to be
# today or yesterday) is the one at the close of the last day before them, give or take
# what rounds to zero on each of at most :days days (usage_m3 is rounded to 4 places after
# the multiplier). The rule also needs that earlier day (read before the window): the
# probe finds it. One primary-key row and one backward index probe per meter.
_STILL_REGISTERS = text("""
SELECT l.meter_id FROM latest_readings l
JOIN meters m ON m.id = l.meter_id
LEFT JOIN meter_models mm ON mm.id = m.model_id
CROSS JOIN LATERAL (
    SELECT c.effective_total FROM daily_usage_closed c
    WHERE c.meter_id = l.meter_id AND c.day <= CAST(:today AS date) - CAST(:days AS integer)
    ORDER BY c.day DESC LIMIT 1
) before
WHERE l.meter_id = ANY(CAST(:meter_ids AS bigint[])) AND l.day >= CAST(:today AS date) - 1
  AND (l.effective_total - before.effective_total) * coalesce(mm.multiplier, 1) < 0.00005 * CAST(:days AS integer)
  -- The rule is for a meter serving an active household (a pressure gauge's register is
  -- always 0, and would otherwise go to the full evaluation with every batch).
  AND EXISTS (SELECT FROM meter_assignments ma JOIN households h ON h.id = ma.household_id
              WHERE ma.meter_id = l.meter_id AND ma.valid_to IS NULL AND h.status = 'active')
""")


async def zero_use_candidates(
    session: AsyncSession, *, idle: Iterable[int], today: date, bounds: RuleBounds, already: set[int],
) -> set[int]:
    """The meters of a batch that may now hold zero use: their newest day came out at
    zero (``idle``, the batch's ``RolledUp.idle``; the rule needs that day, today or
    yesterday, in its window) and the register stood still over the loosest zero-use
    window in use (:data:`_STILL_REGISTERS`), leaving out those in ``already`` (evaluated
    anyway). No statement when no meter's day is at zero."""
    days = bounds.zero_use_days
    ids = sorted(set(idle) - already)
    if days is None or not ids:
        return set()
    rows = await session.execute(_STILL_REGISTERS, {"meter_ids": ids, "today": today, "days": days})
    return {row.meter_id for row in rows}


async def evaluate_after_batch(
    session: AsyncSession,
    *,
    now: datetime,
    tz: str | tzinfo,
    candidates: Iterable[int],
) -> AlarmEvaluation:
    """Evaluate the alarm rules for the meters of an ingest batch where one could change:
    ``candidates`` is the union of the batch's flagged or recomputed meters, its
    :func:`suspicious_meters`, :func:`candidates_from_facts` and
    :func:`zero_use_candidates`."""
    chosen = sorted(set(candidates))
    if not chosen:
        return AlarmEvaluation(0, 0, 0)
    return await evaluate_rules(session, now=now, tz=tz, meter_ids=chosen)
