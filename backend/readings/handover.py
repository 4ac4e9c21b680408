"""Readings' side of archives' handovers (``backend.archives.handover``): the register
readings of a move-in, move-out, replacement or assignment import go through ingest."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, tzinfo

from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.handover import HandoverReading
from backend.readings.models import ReadingQuality
from backend.readings.service import ReadingIn, Rejection, ingest_readings


async def store_handover_readings(session: AsyncSession, *, readings: Sequence[HandoverReading], source: str,
                                  now: datetime, tz: str | tzinfo) -> list[Rejection]:
    """Ingest ``readings`` as manual readings in one batch; the rejected ones."""
    batch = [ReadingIn(reading.meter_id, reading.read_at, reading.total_m3, quality=ReadingQuality.manual)
             for reading in readings]
    return (await ingest_readings(session, readings=batch, source=source, now=now, tz=tz)).rejected
