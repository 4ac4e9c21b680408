"""Which meters served a person's households while the household was theirs: the
periods a privacy export (``shuiwu privacy export``, docs/privacy.md) reports the
readings of. Owners are found by phone in ``household_owners`` (past and present);
a household's own phones say who to reach now, not whose the water was."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# An assignment's range cut to the owner's: dates start at the utility's midnight, and
# PostgreSQL's LEAST/GREATEST skip NULLs, so an open end stays open only when both are.
_PERIODS = text("""
    SELECT a.id AS assignment_id, o.household_id, h.account_no, a.meter_id, m.code AS meter_code,
           a.valid_from, a.valid_to, a.start_reading, a.end_reading,
           GREATEST(a.valid_from, o.valid_from::timestamp AT TIME ZONE :tz) AS start,
           LEAST(a.valid_to, o.valid_to::timestamp AT TIME ZONE :tz) AS "end"
    FROM household_owners o
    JOIN households h ON h.id = o.household_id
    JOIN meter_assignments a ON a.household_id = o.household_id
    JOIN meters m ON m.id = a.meter_id
    WHERE o.phone = :phone
      AND a.valid_from < COALESCE(o.valid_to::timestamp AT TIME ZONE :tz, 'infinity')
      AND COALESCE(a.valid_to, 'infinity') > o.valid_from::timestamp AT TIME ZONE :tz
    ORDER BY o.household_id, a.valid_from, a.id
""")


@dataclass(frozen=True, slots=True)
class OwnedMeterPeriod:
    """Meter ``meter_id`` served household ``household_id`` (assignment ``assignment_id``,
    its whole range and registers) and the household was the owner's from ``start``
    until ``end`` (None: still) within that assignment."""

    assignment_id: int
    household_id: int
    account_no: str
    meter_id: int
    meter_code: str
    valid_from: datetime
    valid_to: datetime | None
    start_reading: Decimal
    end_reading: Decimal | None
    start: datetime
    end: datetime | None


async def owned_meter_periods(session: AsyncSession, *, phone: str, timezone: str) -> list[OwnedMeterPeriod]:
    """Every (assignment × ownership) overlap of the owners registered with ``phone``."""
    rows = await session.execute(_PERIODS, {"phone": phone, "tz": timezone})
    return [OwnedMeterPeriod(**row) for row in rows.mappings()]
