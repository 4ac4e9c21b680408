"""The per-batch alarm evaluation behind ingest: only the meters where a rule could change.

After a batch, a rule can only open for a meter whose new readings show something (a
battery under the highest battery threshold in use, status bits, a valve reported
'unknown', a day flagged for rollover or reverse flow, a day's usage above the smallest
high-use factor × its baseline, or a baseline not yet computed today), and can only
refresh or close an alarm that is live. Every other meter of the batch would come out of
:func:`evaluate_alarms` unchanged, so it is not handed to it: for a normal batch of 20k
meters that is the difference between the full evaluation and one index probe per meter.
(Silent meters and zero use are opened by the periodic run over every meter.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, tzinfo
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.readings.alarms.models import AlarmKind
from backend.readings.alarms.service import AlarmEvaluation, evaluate_alarms
from backend.readings.partitions import as_zone
from backend.readings.rollup import cyclic_gc_paused

# The loosest threshold of each kind over the enabled rules: a superset test.
_RULE_BOUNDS = text("""
SELECT kind, min(threshold) AS lowest, max(threshold) AS highest FROM alarm_rules WHERE enabled GROUP BY kind
""")

# Meters of the batch with a live alarm, a stale baseline, or a day above the loosest
# high-use factor × baseline.
_CANDIDATES = text("""
SELECT m.id FROM unnest(CAST(:meter_ids AS bigint[]), CAST(:usages AS numeric[])) AS m(id, usage)
LEFT JOIN meter_usage_baselines b ON b.meter_id = m.id
WHERE b.day IS DISTINCT FROM CAST(:today AS date)
   OR (CAST(:high_use_factor AS numeric) IS NOT NULL AND b.average_m3 > 0
       AND m.usage > CAST(:high_use_factor AS numeric) * b.average_m3)
   OR EXISTS (SELECT FROM meter_alarms a WHERE a.meter_id = m.id AND a.status <> 'closed')
""")

_UNKNOWN_VALVE = "unknown"


def _suspicious(rows: Iterable[Sequence[Any]], battery_ceiling: Decimal | None) -> set[int]:
    """Meters whose new readings show status bits, a valve reported 'unknown' or a battery
    under the highest battery threshold in use."""
    found: set[int] = set()
    for row in rows:
        valve, battery, status_bits = row[5], row[6], row[7]
        if status_bits or valve == _UNKNOWN_VALVE or (
            battery is not None and battery_ceiling is not None and battery < battery_ceiling
        ):
            found.add(row[0])
    return found


async def evaluate_after_batch(
    session: AsyncSession,
    *,
    now: datetime,
    tz: str | tzinfo,
    rows: Iterable[Sequence[Any]],
    meter_ids: Sequence[int],
    flagged: Iterable[int],
    day_usage: Mapping[int, Decimal],
) -> AlarmEvaluation:
    """Evaluate the alarm rules for the meters of an ingest batch where one could change.

    ``rows`` are the batch's written rows in ingest's COPY column order (meter_id,
    read_at, total_m3, flow_rate, pressure, valve_state, battery, status_bits, …);
    ``flagged`` the meters whose roll-up was recomputed or flagged; ``day_usage`` each
    other meter's largest usage among the days the batch touched.
    """
    bounds = {row.kind: (row.lowest, row.highest) for row in (await session.execute(_RULE_BOUNDS)).all()}
    battery_ceiling = bounds.get(AlarmKind.battery_low, (None, None))[1]
    high_use_factor = bounds.get(AlarmKind.high_use, (None, None))[0]

    candidates = set(flagged)
    with cyclic_gc_paused():
        candidates.update(_suspicious(rows, battery_ceiling))

    today = now.astimezone(as_zone(tz)).date()
    ids = list(meter_ids)
    found = await session.execute(_CANDIDATES, {
        "meter_ids": ids, "usages": [day_usage.get(meter_id) for meter_id in ids], "today": today,
        "high_use_factor": high_use_factor,
    })
    candidates.update(found.scalars())
    if not candidates:
        return AlarmEvaluation(0, 0, 0)
    return await evaluate_alarms(session, now=now, tz=tz, meter_ids=sorted(candidates))
