"""Usage: the one definition (DESIGN.md, "Contracts": ``usage_between``).

The usage of a meter over a window ``(start, end]`` is read off its register:

- the **start reading** is the last reading at or before ``start``, else the first one
  after it (a meter installed mid-window counts from its first reading); the **end
  reading** is the last reading at or before ``end``;
- between them the register is walked reading by reading: a drop of more than half the
  register's range (10^register_digits of its model) is a **rollover** and adds the range;
  any other drop is **reverse flow**, which counts nothing, and the register has to climb
  back above its high-water mark before usage counts again;
- the result is the growth of that unwrapped, high-water register, times the meter
  model's **multiplier** (倍率), rounded to 4 places.

A **replacement** needs no special case: the old meter's final reading and the new
meter's initial reading are stored as readings at the replacement instant
(``archives.service.replace_meter`` writes them through ingest), so a household's usage
is the sum over the meters that served it, each within its assignment.

The walk starts from the meter's stored state at the close of the day before the start
reading (the daily rollup, ``backend.readings.rollup``, which walks the same readings by
the same rule), so consecutive windows add up and statistics summed from the rollup
equal this over whole days.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from itertools import pairwise
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from backend.db import raw_connection
from backend.readings.partitions import DEFAULT_TIMEZONE, as_zone

ZERO = Decimal("0.0000")

def window_usage_ctes(windows: str) -> str:
    """The walk of :func:`usage_between` as CTEs to put in a statement's ``WITH`` (after a
    comma): for the relation ``windows`` (columns ``ord``, unique, ``meter_id``,
    ``start_at``, ``end_at``) they end in ``walk_usage(ord, usage_m3)``, each window's
    usage over ``(start_at, end_at]``; a window with no reading to go on has no row.

    The one text of the rule: :func:`usage_of_windows` runs it on windows passed in, the
    analytics on the part-days of an assignment that starts or ends inside a day
    (backend.readings.analytics.units), so both count a handover day alike.

    The walk starts from the meter's stored state at the close of the last day before its
    start reading (``daily_usage``: raw total, wraps, high-water mark), so the high-water
    mark at the start reading is the meter's own, not the window's: water that flowed back
    before the window is not billed again inside it."""
    return f"""
walk_anchored AS (
    SELECT w.ord, w.meter_id, w.end_at, coalesce(
        (SELECT r.read_at FROM readings r WHERE r.meter_id = w.meter_id AND r.read_at <= w.start_at
         ORDER BY r.read_at DESC LIMIT 1),
        (SELECT r.read_at FROM readings r WHERE r.meter_id = w.meter_id AND r.read_at > w.start_at
         AND r.read_at <= w.end_at ORDER BY r.read_at LIMIT 1)) AS from_at,
        power(10::numeric, mm.register_digits) AS register_range, coalesce(mm.multiplier, 1) AS multiplier
    FROM {windows} w
    JOIN meters m ON m.id = w.meter_id
    LEFT JOIN meter_models mm ON mm.id = m.model_id
), walk_seeded AS (
    SELECT a.*, s.last_at AS seed_at, s.last_total AS seed_total, s.effective_total AS seed_effective,
           s.register_wraps AS seed_wraps
    FROM walk_anchored a LEFT JOIN LATERAL (
        SELECT d.last_at, d.last_total, d.effective_total, d.register_wraps FROM daily_usage d
        WHERE d.meter_id = a.meter_id AND d.last_at < a.from_at ORDER BY d.day DESC LIMIT 1
    ) s ON true
    WHERE a.from_at IS NOT NULL
), walk_points AS (
    SELECT ord, seed_at AS read_at, seed_total AS total_m3 FROM walk_seeded WHERE seed_at IS NOT NULL
    UNION ALL
    SELECT s.ord, r.read_at, r.total_m3
    FROM walk_seeded s JOIN readings r ON r.meter_id = s.meter_id
        AND r.read_at > coalesce(s.seed_at, '-infinity') AND r.read_at <= s.end_at
), walk_steps AS (
    SELECT p.ord, p.read_at, s.from_at, s.multiplier, s.seed_effective, s.register_range, s.seed_wraps, p.total_m3,
           coalesce(p.total_m3 - lag(p.total_m3) OVER w < -s.register_range / 2, false) AS wrapped
    FROM walk_points p JOIN walk_seeded s USING (ord)
    WINDOW w AS (PARTITION BY p.ord ORDER BY p.read_at)
), walk_unwrapped AS (
    SELECT ord, read_at, from_at, multiplier, seed_effective,
           total_m3 + coalesce(register_range, 0) * (coalesce(seed_wraps, 0)
               + count(*) FILTER (WHERE wrapped) OVER (PARTITION BY ord ORDER BY read_at)) AS unwrapped
    FROM walk_steps
), walk_high_water AS (
    SELECT ord, read_at, from_at, multiplier,
           greatest(seed_effective, max(unwrapped) OVER (PARTITION BY ord ORDER BY read_at)) AS effective
    FROM walk_unwrapped
), walk_usage AS (
    SELECT ord, coalesce(round((max(effective) - max(effective) FILTER (WHERE read_at <= from_at))
                               * min(multiplier), 4), 0) AS usage_m3
    FROM walk_high_water GROUP BY ord
)"""


# $1 meter ids, $2 starts, $3 ends: one row per window, in order (ord = 1-based position).
_USAGE_OF_WINDOWS = f"""
WITH windows AS (
    SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::timestamptz[]) WITH ORDINALITY
        AS w(meter_id, start_at, end_at, ord)
), {window_usage_ctes("windows")}
SELECT w.ord, coalesce(u.usage_m3, 0) AS usage_m3
FROM windows w LEFT JOIN walk_usage u USING (ord)
ORDER BY w.ord
"""


async def usage_of_windows(session: AsyncSession, windows: Sequence[tuple[int, datetime, datetime]]) -> list[Decimal]:
    """Usage (m³, after the multiplier) of each ``(meter_id, start, end)`` window, in order;
    0 for a window with fewer than one reading to go on. One statement for any number."""
    if not windows:
        return []
    driver = await raw_connection(session)
    rows = await driver.fetch(
        _USAGE_OF_WINDOWS, [w[0] for w in windows], [w[1] for w in windows], [w[2] for w in windows]
    )
    return [Decimal(row["usage_m3"]).quantize(ZERO) for row in rows]


# Per window (household, start, end): the meters that served the household, each clipped
# to its assignment, walked in the same statement and summed (ord = the window's 1-based
# position). Each meter's usage is rounded to 4 places by the walk, so the sum is exact.
_HOUSEHOLD_USAGE_OF_WINDOWS = f"""
WITH households AS (
    SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::timestamptz[]) WITH ORDINALITY
        AS h(household_id, start_at, end_at, ord)
), windows AS (
    SELECT row_number() OVER () AS ord, h.ord AS household_ord, ma.meter_id,
           greatest(ma.valid_from, h.start_at) AS start_at, least(coalesce(ma.valid_to, h.end_at), h.end_at) AS end_at
    FROM households h JOIN meter_assignments ma ON ma.household_id = h.household_id
        AND ma.valid_from < h.end_at AND (ma.valid_to IS NULL OR ma.valid_to > h.start_at)
), {window_usage_ctes("windows")}
SELECT w.household_ord AS ord, sum(u.usage_m3) AS usage_m3
FROM windows w JOIN walk_usage u USING (ord)
GROUP BY w.household_ord
"""


async def household_usage_of_windows(session: AsyncSession,
                                     windows: Sequence[tuple[int, datetime, datetime]]) -> list[Decimal]:
    """Usage of each ``(household_id, start, end)`` window, in order: the sum over the
    meters assigned to the household, each within its assignment (what
    :func:`usage_between` answers per household, for windows that differ by household:
    the billing run's, from each account's opening). One statement for any number: the
    meters' windows never travel to the client and back."""
    if not windows:
        return []
    return await household_usage_on(await raw_connection(session), windows)


async def household_usage_on(driver: Any, windows: Sequence[tuple[int, datetime, datetime]]) -> list[Decimal]:
    """:func:`household_usage_of_windows` on an asyncpg connection (the session's, inside
    its transaction): its first step sends the statement, so a caller can start it as a
    task and let the database work while it computes (the billing run's prefetch)."""
    if not windows:
        return []
    totals = [ZERO] * len(windows)
    for row in await driver.fetch(_HOUSEHOLD_USAGE_OF_WINDOWS, [w[0] for w in windows], [w[1] for w in windows],
                                  [w[2] for w in windows]):
        totals[row["ord"] - 1] = Decimal(row["usage_m3"]).quantize(ZERO)
    return totals


async def usage_between(
    session: AsyncSession,
    *,
    meter_ids: Sequence[int] | None = None,
    household_ids: Sequence[int] | None = None,
    start: datetime,
    end: datetime,
) -> dict[int, Decimal]:
    """Usage over ``(start, end]`` per meter (``meter_ids``) or per household
    (``household_ids``: the sum over the meters assigned to it, each within its
    assignment). Every id asked for is in the result. Billing's ``account_ids`` map to
    households (one account per household) in the billing service."""
    if (meter_ids is None) == (household_ids is None):
        raise ValueError("give exactly one of meter_ids or household_ids")
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    if meter_ids is not None:
        ids = list(dict.fromkeys(meter_ids))
        usages = await usage_of_windows(session, [(meter_id, start, end) for meter_id in ids])
        return dict(zip(ids, usages, strict=True))

    assert household_ids is not None
    ids = list(dict.fromkeys(household_ids))
    usages = await household_usage_of_windows(session, [(household_id, start, end) for household_id in ids])
    return dict(zip(ids, usages, strict=True))


Interval = Literal["hour", "day"]
_STEPS: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
MAX_WINDOWS = 200_000


def interval_boundaries(*, start: datetime, end: datetime, interval: Interval, tz: str | tzinfo) -> list[datetime]:
    """The hours or days of the utility's calendar from the one holding ``start`` to the
    one holding ``end``, as UTC instants: each interval's start, then the last one's end.

    In UTC because two local times of one zone compare by wall clock, which would make the
    two 02:00s of a DST autumn night equal. Hours are steps of real time (a DST autumn day
    has 25); days are calendar days."""
    zone = as_zone(tz)
    cursor = start.astimezone(zone).replace(minute=0, second=0, microsecond=0)
    end = end.astimezone(UTC)
    boundaries: list[datetime] = []
    if interval == "hour":
        cursor = cursor.astimezone(UTC)
        while cursor < end:
            boundaries.append(cursor)
            cursor += _STEPS["hour"]
        boundaries.append(cursor)
    else:
        cursor = cursor.replace(hour=0)
        while cursor.astimezone(UTC) < end:
            boundaries.append(cursor.astimezone(UTC))
            cursor = (cursor.replace(tzinfo=None) + _STEPS["day"]).replace(tzinfo=zone)
        boundaries.append(cursor.astimezone(UTC))
    return boundaries


async def usage_by_interval(
    session: AsyncSession,
    *,
    meter_ids: Sequence[int],
    start: datetime,
    end: datetime,
    interval: Interval,
    tz: str | tzinfo = DEFAULT_TIMEZONE,
) -> list[tuple[datetime, int, Decimal]]:
    """Usage of each meter in each hour or day (of the utility's calendar) from ``start``
    to ``end``: ``(interval start, meter_id, m³)`` rows ordered by time then meter, every
    interval present (0 when nothing was used). Built on :func:`usage_of_windows`, so the
    intervals add up to ``usage_between`` over the whole range. Meant for a few meters
    over days (a window per meter and interval); hourly statistics and charts of any
    object take one statement over the readings (``backend.readings.analytics.hourly``,
    whose tests compare with this), and day/month figures read the rollup."""
    zone = as_zone(tz)
    boundaries = interval_boundaries(start=start, end=end, interval=interval, tz=zone)
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    ids = list(dict.fromkeys(meter_ids))
    if (len(boundaries) - 1) * len(ids) > MAX_WINDOWS:
        raise ValueError("too many intervals: narrow the range or the meters")
    windows: list[tuple[int, datetime, datetime]] = []
    labels: list[tuple[datetime, int]] = []
    for low, high in pairwise(boundaries):
        for meter_id in ids:
            windows.append((meter_id, max(low, start), min(high, end)))
            labels.append((low.astimezone(zone), meter_id))
    usages = await usage_of_windows(session, windows)
    return [(at, meter_id, usage) for (at, meter_id), usage in zip(labels, usages, strict=True)]
