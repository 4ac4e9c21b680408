"""What readings holds about a resident, for ``shuiwu privacy export`` (docs/privacy.md).

A meter's readings become personal when it serves someone's home: the export holds
every stored reading of the meters that served a household while it was the subject's
(``backend.archives.service.owned_meter_periods``), the handover readings at both ends
included. The rollups (``daily_usage_closed``, ``latest_readings``) are computed from
these readings and hold nothing more, so they are not repeated.

Erasure keeps the readings: water history belongs to the meter and the household, and
bills are priced from it; once the household's identity is erased they name nobody.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Text, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, TIMESTAMP
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.service import owned_meter_periods
from backend.auth.privacy import rows_of
from backend.domain import DataSubject, PersonalSection

_READINGS = text("""
    SELECT p.household_id, p.meter_code, r.read_at, r.total_m3, r.flow_rate, r.pressure, r.valve_state,
           r.battery, r.status_bits, r.quality, r.source, r.received_at
    FROM unnest(:meter_ids, :meter_codes, :household_ids, :starts, :ends)
         AS p(meter_id, meter_code, household_id, start, "end")
    JOIN readings r ON r.meter_id = p.meter_id AND r.read_at >= p.start AND (p."end" IS NULL OR r.read_at <= p."end")
    ORDER BY p.household_id, p.meter_code, r.read_at
""").bindparams(
    bindparam("meter_ids", type_=ARRAY(BigInteger)), bindparam("meter_codes", type_=ARRAY(Text)),
    bindparam("household_ids", type_=ARRAY(BigInteger)), bindparam("starts", type_=ARRAY(TIMESTAMP(timezone=True))),
    bindparam("ends", type_=ARRAY(TIMESTAMP(timezone=True))),
)


async def export(session: AsyncSession, subject: DataSubject) -> list[PersonalSection]:
    periods = await owned_meter_periods(session, phone=subject.phone, timezone=subject.timezone)
    readings = rows_of(await session.execute(_READINGS, {
        "meter_ids": [p.meter_id for p in periods], "meter_codes": [p.meter_code for p in periods],
        "household_ids": [p.household_id for p in periods], "starts": [p.start for p in periods],
        "ends": [p.end for p in periods],
    })) if periods else []
    return [PersonalSection("readings", "本人为户主期间其水表的读数", readings)]
