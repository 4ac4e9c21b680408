"""Two writers of the same dedupe key at once (committed transactions, a database of
this module's own): the one that finds the key new inserts without ON CONFLICT, meets
the other's committed rows on the unique index, and falls back to ON CONFLICT DO
NOTHING: nothing is written or sent twice, and its transaction survives."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.notifications.kinds import MessageKind, Recipient
from backend.notifications.service import notify_many
from tests.notifications.factories import add_devices, make_home

NOON = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)


async def test_a_concurrent_writer_of_a_new_key_writes_and_sends_nothing_twice(
    committed_sessions: async_sessionmaker[AsyncSession], committed_engine: AsyncEngine,
) -> None:
    async with committed_sessions() as session, session.begin():
        home = await make_home(session, residents=3)
        await add_devices(session, user_kind="resident", user_ids=list(home.resident_ids))

    async def write(session: AsyncSession) -> int:
        return await notify_many(session, kind=MessageKind.NOTICE, recipients=[Recipient.household(home.household_id)],
                                 title="停水通知", body="明日停水", data={"screen": "notice", "id": 7},
                                 dedupe_key="race:7", now=NOON)

    first = committed_sessions()
    second = committed_sessions()
    try:
        await first.begin()
        assert await write(first) == 3  # uncommitted: the second writer still finds the key new
        await second.begin()
        later = asyncio.create_task(write(second))
        async with committed_engine.connect() as watcher:
            for _ in range(200):  # until the second writer waits on the first's index entries
                waiting = (await watcher.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"))).scalar_one()
                if waiting or later.done():
                    break
                await asyncio.sleep(0.02)
            assert waiting == 1
        await first.commit()
        assert await later == 0
        await second.commit()
    finally:
        await first.close()
        await second.close()

    async with committed_sessions() as session:
        messages = (await session.execute(text(
            "SELECT count(*) FROM messages WHERE dedupe_key = 'race:7'"))).scalar_one()
        pushes = (await session.execute(text(
            "SELECT coalesce(sum(cardinality(registration_ids)), 0) FROM push_deliveries "
            "WHERE message_ids && (SELECT array_agg(id) FROM messages WHERE dedupe_key = 'race:7')"))).scalar_one()
        events = (await session.execute(text(
            "SELECT count(*) FROM domain_events WHERE kind = 'message.created' AND payload->'recipient_ids' ? :r"),
            {"r": f"resident:{home.resident_ids[0]}"})).scalar_one()
    assert (messages, pushes, events) == (3, 3, 1)
