"""The per-process event listener: LISTEN as a wake-up, events read by id from the table."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.events.listener import Backoff, EventListener, EventStream, ListenerLaggedError
from backend.events.service import Event, emit_event
from tests.events.factories import committing_sessions, emit_committed, raw_connection
from tests.events.payloads import BillIssued, CommandFinished, NoticePublished, WorkorderChanged

WAIT = 2.0  # seconds: the bound on any NOTIFY round trip in these tests


async def next_event(stream: EventStream) -> Event:
    async with asyncio.timeout(WAIT):
        return await anext(stream)


@pytest.fixture(scope="module")
async def factory(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with committing_sessions(database_url) as sessions:
        yield sessions


async def test_a_listener_receives_an_event_committed_after_it_started(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    async with EventListener(database_url) as listener:
        stream = listener.subscribe()
        await asyncio.wait_for(listener.wait_connected(), WAIT)

        event_id = await emit_committed(factory, "tests.bill_issued", BillIssued(bill_id=5), key="account:1")

        event = await next_event(stream)
        assert (event.id, event.kind, event.key, event.payload, event.typed_payload) == (
            event_id,
            "tests.bill_issued",
            "account:1",
            {"bill_id": 5},
            BillIssued(bill_id=5),
        )


async def test_a_listener_receives_an_event_committed_while_it_was_disconnected(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    async with EventListener(database_url, backoff=Backoff(initial=0.3)) as listener:
        stream = listener.subscribe(kinds={"tests.command_finished"})
        await asyncio.wait_for(listener.wait_connected(), WAIT)
        pid = listener.backend_pid

        # When its connection is killed and an event commits before it reconnects:
        async with raw_connection(database_url) as admin:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        await asyncio.wait_for(listener.wait_disconnected(), WAIT)
        missed = await emit_committed(factory, "tests.command_finished", CommandFinished(77))
        assert not listener.connected

        # Then it reads the event from the table once back.
        event = await next_event(stream)
        assert event.id == missed
        assert listener.connections == 2


async def test_a_listener_started_later_reads_events_committed_while_nobody_listened(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    async with raw_connection(database_url) as connection:
        last = await connection.fetchval("SELECT max(id) FROM domain_events") or 0
    first = await emit_committed(factory, "tests.workorder_changed", WorkorderChanged(1))
    second = await emit_committed(factory, "tests.workorder_changed", WorkorderChanged(1))

    async with EventListener(database_url, after=last) as listener:
        stream = listener.subscribe()
        assert [(await next_event(stream)).id, (await next_event(stream)).id] == [first, second]


async def test_an_event_whose_transaction_commits_after_a_later_one_is_still_delivered(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    async with EventListener(database_url) as listener:
        stream = listener.subscribe()
        await asyncio.wait_for(listener.wait_connected(), WAIT)

        async with factory() as slow, slow.begin():
            earlier = await emit_event(slow, "tests.bill_issued", BillIssued(1))
            later = await emit_committed(factory, "tests.bill_issued", BillIssued(2))
            assert (await next_event(stream)).id == later
        # The slow transaction commits here, after the later id was read.

        assert (await next_event(stream)).id == earlier


async def test_the_position_names_the_last_id_read_and_the_ids_still_awaited(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    async with EventListener(database_url) as listener:
        stream = listener.subscribe()
        await asyncio.wait_for(listener.wait_connected(), WAIT)

        async with factory() as slow, slow.begin():
            earlier = await emit_event(slow, "tests.bill_issued", BillIssued(1))
            later = await emit_committed(factory, "tests.bill_issued", BillIssued(2))
            assert (await next_event(stream)).id == later
            while_open = listener.position()
        assert (await next_event(stream)).id == earlier

        assert (while_open, listener.position()) == ((later, frozenset({earlier})), (later, frozenset()))


async def test_a_hole_is_awaited_while_its_transaction_runs_and_given_up_soon_after_a_rollback(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    # Sweeps every 0.2 s; the hole timeout (300 s) is far beyond the test.
    async with EventListener(database_url, sweep_interval=0.2) as listener:
        stream = listener.subscribe()
        await asyncio.wait_for(listener.wait_connected(), WAIT)

        async with factory() as doomed:
            lost = await emit_event(doomed, "tests.bill_issued", BillIssued(1))
            later = await emit_committed(factory, "tests.bill_issued", BillIssued(2))
            assert (await next_event(stream)).id == later
            # Long enough to settle a hole no running transaction could fill.
            await asyncio.sleep(1.2)
            while_running = listener.lowest_awaited()
            await doomed.rollback()
        async with asyncio.timeout(WAIT):
            nudged = await stream.batch()

        assert (while_running, nudged, listener.lowest_awaited()) == (lost, [], None)


async def test_a_consumer_that_falls_behind_is_told_so_instead_of_losing_events_silently(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    async with EventListener(database_url) as listener:
        slow = listener.subscribe(maxsize=2)
        await asyncio.wait_for(listener.wait_connected(), WAIT)
        async with factory() as session, session.begin():
            for n in range(3):
                await emit_event(session, "tests.notice_published", NoticePublished(n))

        await next_event(slow)
        await next_event(slow)
        with pytest.raises(ListenerLaggedError):
            await next_event(slow)
