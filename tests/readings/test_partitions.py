"""ensure_partitions: monthly partitions in the utility's zone, attached, idempotent."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from backend.db import session_factory
from backend.readings.partitions import _ADVISORY_KEY, ensure_partitions, ensure_partitions_ahead

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


async def test_a_creator_waiting_for_another_to_create_the_month_finds_it_created(committed_engine: AsyncEngine) -> None:
    # Two buses' first readings of a month, ingested at once: the second transaction
    # found the partition missing and waits for the first, which creates it and commits.
    month = datetime(2033, 5, 10, tzinfo=SHANGHAI)
    sessions = session_factory(committed_engine)
    async with sessions() as first, sessions() as second:
        await first.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": _ADVISORY_KEY})
        waiting = asyncio.create_task(ensure_partitions(second, start=month, end=month))
        deadline = time.monotonic() + 5
        while not (await first.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"))).scalar_one():
            assert time.monotonic() < deadline, "the second creator never waited"
            await asyncio.sleep(0.02)
        assert await ensure_partitions(first, start=month, end=month) == ["readings_p203305"]
        await first.commit()

        assert await asyncio.wait_for(waiting, timeout=5) == []
        await second.commit()
