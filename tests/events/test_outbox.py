"""The outbox: emit_event in the business transaction, and the relay's once-only hand-off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.events.relay import dedupe_key, job_payload, relay_pending
from backend.events.service import (
    EVENTS_CHANNEL,
    Event,
    EventPayloadError,
    Handler,
    HandlerRegistry,
    UnknownEventKindError,
    emit_event,
    load_event,
)
from backend.runtime import Runtime
from tests.events.factories import committing_sessions, emit_committed, raw_connection
from tests.events.payloads import BillIssued, NoticePublished, WorkorderChanged


@pytest.fixture(scope="module")
async def factory(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with committing_sessions(database_url) as sessions:
        yield sessions


async def _nothing(runtime: Runtime, session: AsyncSession, event: Event) -> None:
    return None


def _registry() -> HandlerRegistry:
    """Two handlers of tests.notice_published, one of tests.workorder_changed."""
    return HandlerRegistry([
        Handler("tests.notice_published", "push", _nothing),
        Handler("tests.notice_published", "inbox", _nothing),
        Handler("tests.workorder_changed", "notify_resident", _nothing),
    ])


# --------------------------------------------------------------------------- emit


async def test_emit_event_writes_the_event_in_the_callers_transaction(session: AsyncSession) -> None:
    event_id = await emit_event(session, "tests.bill_issued", BillIssued(bill_id=7), key="account:3")

    event = await load_event(session, event_id)
    assert event is not None
    assert (event.kind, event.key, event.payload, event.typed_payload) == (
        "tests.bill_issued",
        "account:3",
        {"bill_id": 7},
        BillIssued(bill_id=7),
    )
    relayed_at = (
        await session.execute(text("SELECT relayed_at FROM domain_events WHERE id = :id"), {"id": event_id})
    ).scalar_one()
    assert relayed_at is None


async def test_emit_event_refuses_an_unknown_kind_a_dict_and_another_kinds_payload_and_writes_nothing(
    session: AsyncSession,
) -> None:
    before = (await session.execute(text("SELECT count(*) FROM domain_events"))).scalar_one()

    with pytest.raises(UnknownEventKindError):
        await emit_event(session, "tests.bill_isued", BillIssued(1))
    with pytest.raises(EventPayloadError, match="carries a BillIssued, not a dict"):
        await emit_event(session, "tests.bill_issued", {"bill_id": 1})
    with pytest.raises(EventPayloadError, match="carries a BillIssued, not a NoticePublished"):
        await emit_event(session, "tests.bill_issued", NoticePublished(1))
    with pytest.raises(EventPayloadError, match=r"BillIssued.bill_id: expected int, got str"):
        await emit_event(session, "tests.bill_issued", BillIssued("1"))  # type: ignore[arg-type]

    assert (await session.execute(text("SELECT count(*) FROM domain_events"))).scalar_one() == before


def test_a_registry_refuses_an_unknown_kind_and_a_second_handler_of_the_same_kind_and_name() -> None:
    with pytest.raises(UnknownEventKindError):
        HandlerRegistry([Handler("tests.bill_isued", "print", _nothing)])
    with pytest.raises(ValueError, match="already handles"):
        HandlerRegistry([Handler("tests.bill_issued", "print", _nothing), Handler("tests.bill_issued", "print", _nothing)])
    with pytest.raises(ValueError, match="handler name"):
        HandlerRegistry([Handler("tests.bill_issued", "", _nothing)])
    # The same name under another kind is another handler.
    handlers = HandlerRegistry([Handler("tests.bill_issued", "print", _nothing),
                                Handler("tests.notice_published", "print", _nothing)])
    assert [handler.entrypoint for handler in handlers] == [
        "event:tests.bill_issued:print", "event:tests.notice_published:print"]


def test_a_handler_is_found_by_its_name_or_by_kind_and_name_when_the_name_is_shared() -> None:
    handlers = HandlerRegistry([Handler("tests.bill_issued", "print", _nothing),
                                Handler("tests.notice_published", "print", _nothing),
                                Handler("tests.notice_published", "push", _nothing)])

    assert handlers.named("push").kind == "tests.notice_published"
    assert handlers.named("tests.bill_issued:print").kind == "tests.bill_issued"
    with pytest.raises(KeyError, match="several handlers"):
        handlers.named("print")
    with pytest.raises(KeyError, match="no handler named 'pusj'"):
        handlers.named("pusj")


async def test_emit_in_a_rolled_back_transaction_leaves_no_event_and_no_notification(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    notifications: asyncio.Queue[str] = asyncio.Queue()
    async with raw_connection(database_url) as listening:
        await listening.add_listener(EVENTS_CHANNEL, lambda *args: notifications.put_nowait(args[-1]))
        async with factory() as session, session.begin():
            event_id = await emit_event(session, "tests.workorder_changed", WorkorderChanged(1))
            await session.rollback()

        committed_id = await emit_committed(factory, "tests.workorder_changed", WorkorderChanged(2))
        # NOTIFYs arrive in commit order: the committed event's comes first if the other ever would.
        assert await asyncio.wait_for(notifications.get(), 2) == str(committed_id)
        assert notifications.empty()
        assert await listening.fetchval("SELECT count(*) FROM domain_events WHERE id = $1", event_id) == 0


# --------------------------------------------------------------------------- relay


async def _jobs_for(connection: asyncpg.Connection, event_ids: list[int]) -> list[tuple[str, bytes]]:
    rows = await connection.fetch(
        "SELECT entrypoint, payload FROM pgqueuer WHERE payload = ANY($1::bytea[]) ORDER BY id",
        [job_payload(event_id) for event_id in event_ids],
    )
    return [(row["entrypoint"], row["payload"]) for row in rows]


async def test_relay_enqueues_one_job_per_handler_and_marks_the_event_relayed(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    notice = await emit_committed(factory, "tests.notice_published", NoticePublished(1))
    workorder = await emit_committed(factory, "tests.workorder_changed", WorkorderChanged(2))
    unhandled = await emit_committed(factory, "tests.bill_issued", BillIssued(3))

    async with raw_connection(database_url) as connection:
        assert await relay_pending(connection, handlers=_registry()) >= 3

        assert sorted(await _jobs_for(connection, [notice, workorder, unhandled])) == sorted(
            [
                ("event:tests.notice_published:inbox", job_payload(notice)),
                ("event:tests.notice_published:push", job_payload(notice)),
                ("event:tests.workorder_changed:notify_resident", job_payload(workorder)),
            ]
        )
        unrelayed = await connection.fetchval(
            "SELECT count(*) FROM domain_events WHERE id = ANY($1::bigint[]) AND relayed_at IS NULL",
            [notice, workorder, unhandled],
        )
        assert unrelayed == 0
        # A second pass finds nothing left to hand off.
        assert await relay_pending(connection, handlers=_registry()) == 0
        assert len(await _jobs_for(connection, [notice, workorder, unhandled])) == 3


async def test_two_racing_relays_hand_each_event_to_each_handler_exactly_once(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    async with factory() as session, session.begin():
        event_ids = [await emit_event(session, "tests.notice_published", NoticePublished(n)) for n in range(60)]

    async with raw_connection(database_url) as first, raw_connection(database_url) as second:
        relayed = await asyncio.gather(
            relay_pending(first, handlers=_registry(), batch_size=7),
            relay_pending(second, handlers=_registry(), batch_size=7),
        )
        jobs = await _jobs_for(first, event_ids)

    assert sum(relayed) >= 60
    assert len(jobs) == 2 * 60
    assert len(set(jobs)) == len(jobs)
    assert {payload for _, payload in jobs} == {job_payload(event_id) for event_id in event_ids}


async def test_a_relay_that_fails_midway_hands_off_nothing(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    event_id = await emit_committed(factory, "tests.workorder_changed", WorkorderChanged(9))
    handlers = _registry()
    (handler,) = handlers.for_kind("tests.workorder_changed")

    async with raw_connection(database_url) as connection:
        # Given a trigger that fails the relay's UPDATE, after its enqueue ran:
        await connection.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE 'refused'; END $$"
        )
        await connection.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE ON domain_events FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
        try:
            with pytest.raises(asyncpg.RaiseError):
                await relay_pending(connection, handlers=handlers)
        finally:
            await connection.execute("DROP TRIGGER refuse ON domain_events; DROP FUNCTION refuse()")

        assert await _jobs_for(connection, [event_id]) == []
        assert await connection.fetchval("SELECT relayed_at FROM domain_events WHERE id = $1", event_id) is None

        await relay_pending(connection, handlers=handlers)
        assert await _jobs_for(connection, [event_id]) == [(handler.entrypoint, job_payload(event_id))]
        assert await connection.fetchval(
            "SELECT dedupe_key FROM pgqueuer WHERE payload = $1", job_payload(event_id)
        ) == dedupe_key(event_id, handler)
