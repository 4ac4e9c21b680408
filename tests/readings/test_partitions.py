"""ensure_partitions: monthly partitions in the utility's zone, attached, idempotent."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.readings.partitions import ensure_partitions, ensure_partitions_ahead

SHANGHAI = ZoneInfo("Asia/Shanghai")


async def test_partitions_cover_every_month_across_a_year_end_and_a_second_call_adds_none(session: AsyncSession) -> None:
    timeout_before = (await session.execute(text("SELECT current_setting('lock_timeout')"))).scalar_one()

    created = await ensure_partitions(session, start=datetime(2019, 11, 20, tzinfo=SHANGHAI),
                                      end=datetime(2020, 2, 1, tzinfo=SHANGHAI), tz="Asia/Shanghai")

    assert created == ["readings_p201911", "readings_p201912", "readings_p202001", "readings_p202002"]
    attached = await session.execute(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'readings'::regclass AND c.relname LIKE 'readings_p2019%' ORDER BY 1"
    ))
    assert attached.scalars().all() == ["readings_p201911", "readings_p201912"]
    # The attach's lock_timeout does not leak into the rest of the caller's transaction.
    assert (await session.execute(text("SELECT current_setting('lock_timeout')"))).scalar_one() == timeout_before
    assert await ensure_partitions(session, start=datetime(2019, 12, 5, tzinfo=SHANGHAI),
                                   end=datetime(2020, 1, 5, tzinfo=SHANGHAI)) == []


async def test_the_daily_job_attaches_this_month_and_the_next_three(session: AsyncSession) -> None:
    now = datetime(2031, 11, 20, 9, tzinfo=ZoneInfo("Asia/Shanghai"))

    attached = await ensure_partitions_ahead(session, now=now, tz="Asia/Shanghai", months_ahead=3)

    assert attached == ["readings_p203111", "readings_p203112", "readings_p203201", "readings_p203202"]
    assert await ensure_partitions_ahead(session, now=now, tz="Asia/Shanghai", months_ahead=3) == []
