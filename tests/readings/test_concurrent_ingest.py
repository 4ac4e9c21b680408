"""Two ingests of the same meter at once: the second waits for the first (the meter rows
are locked in id order), so the rollup chain is never continued from a stale state."""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.db import session_factory
from backend.readings.service import ReadingIn, ingest_readings
from backend.readings.usage import usage_between
from tests.readings.factories import make_meter

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 25, 12, tzinfo=SHANGHAI)


def at(day: int, hour: int) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=SHANGHAI)


async def test_concurrent_batches_of_one_meter_chain_in_commit_order(committed_engine: AsyncEngine) -> None:
    sessions = session_factory(committed_engine)
    async with sessions() as session, session.begin():
        meter = await make_meter(session)
        other = await make_meter(session)
        assert meter.id is not None and other.id is not None
        await ingest_readings(session, readings=[ReadingIn(meter.id, at(1, 10), Decimal(10))], source="t", now=NOW)

    first_wrote = asyncio.Event()
    release_first = asyncio.Event()

    async def first() -> None:
        async with sessions() as session, session.begin():
            await ingest_readings(session, readings=[ReadingIn(meter.id, at(2, 10), Decimal(12)),  # type: ignore[arg-type]
                                                     ReadingIn(other.id, at(2, 10), Decimal(1))],  # type: ignore[arg-type]
                                  source="t", now=NOW)
            first_wrote.set()
            await release_first.wait()

    async def second() -> None:
        await first_wrote.wait()
        async with sessions() as session, session.begin():
            await ingest_readings(session, readings=[ReadingIn(meter.id, at(3, 10), Decimal(15))],  # type: ignore[arg-type]
                                  source="t", now=NOW)

    first_task = asyncio.create_task(first())
    second_task = asyncio.create_task(second())
    await first_wrote.wait()
    await asyncio.sleep(0.3)
    assert not second_task.done()  # waiting on the meter's lock
    release_first.set()
    await asyncio.gather(first_task, second_task)

    async with sessions() as session:
        rows = (await session.execute(text(
            "SELECT day, usage_m3 FROM daily_usage WHERE meter_id = :m ORDER BY day"), {"m": meter.id})).all()
        total = await usage_between(session, meter_ids=[meter.id], start=at(1, 0), end=at(4, 0))
    assert [(row.day, row.usage_m3) for row in rows] == [
        (date(2026, 11, 1), Decimal("0.0000")), (date(2026, 11, 2), Decimal("2.0000")),
        (date(2026, 11, 3), Decimal("3.0000")),
    ]
    assert total == {meter.id: Decimal("5.0000")}
