"""Replay for late handlers: past events reach a handler declared after they were relayed,
through real PgQueuer jobs run by the job worker, each exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.events.relay import relay_pending
from backend.events.replay import ReplayResult, replay_events
from backend.events.service import EFFECT_HORIZON, Event, Handler, HandlerRegistry, payload_of
from backend.jobs import run_worker
from backend.runtime import Runtime
from backend.settings import Settings
from tests.events.factories import committing_sessions, emit_committed, raw_connection
from tests.events.payloads import NoticePublished

WAIT = 5.0
KIND = "tests.notice_published"


@pytest.fixture(scope="module")
async def factory(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with committing_sessions(database_url) as sessions:
        yield sessions


class Recorder:
    """Handlers that note which notice each of them handled, and say when all are in."""

    def __init__(self, expected: int) -> None:
        self.handled: Counter[tuple[str, int]] = Counter()
        self.expected = expected
        self.all_in = asyncio.Event()

    def handler(self, name: str, horizon: timedelta | None = None) -> Handler:
        async def run(runtime: Runtime, session: AsyncSession, event: Event) -> None:
            self.handled[name, payload_of(event, NoticePublished).notice_id] += 1
            if sum(self.handled.values()) >= self.expected:
                self.all_in.set()

        return Handler(KIND, name, run, horizon=horizon)


async def queued_jobs(database_url: str, *handlers: Handler) -> int:
    async with raw_connection(database_url) as connection:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pgqueuer WHERE entrypoint = ANY($1::text[])", [h.entrypoint for h in handlers]
        )
        return count


async def test_a_late_handler_processes_past_events_exactly_once_after_a_replay(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    # Given three notices relayed while no handler covered them, the first two days ago:
    first, second, third = [await emit_committed(factory, KIND, NoticePublished(n)) for n in (1, 2, 3)]
    async with raw_connection(database_url) as connection:
        await relay_pending(connection, handlers=HandlerRegistry())
        await connection.execute("UPDATE domain_events SET created_at = now() - interval '2 days' WHERE id = $1", first)
    assert await queued_jobs(database_url, *HandlerRegistry().for_kind(KIND)) == 0

    # When two handlers are declared later, one of them with a horizon, and replayed:
    recorder = Recorder(expected=5)
    archive, push = recorder.handler("archive"), recorder.handler("push", horizon=EFFECT_HORIZON)
    now = datetime.now(UTC)
    async with raw_connection(database_url) as connection:
        archived = await replay_events(connection, handler=archive, from_id=first, now=now)
        pushed = await replay_events(connection, handler=push, from_id=first, now=now)
        while_queued = await replay_events(connection, handler=archive, from_id=first, now=now)

    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(Settings(), database_url, stop=stop, handlers=HandlerRegistry([archive, push])))
    try:
        await asyncio.wait_for(recorder.all_in.wait(), WAIT)
    finally:
        stop.set()
        await asyncio.wait_for(worker, WAIT)

    # Then each handler processed each event it should, exactly once:
    assert archived == ReplayResult(archive.entrypoint, enqueued=3, already_handled=0, already_queued=0, beyond_horizon=0)
    assert pushed == ReplayResult(push.entrypoint, enqueued=2, already_handled=0, already_queued=0, beyond_horizon=1)
    assert (while_queued.enqueued, while_queued.already_queued) == (0, 3)
    assert recorder.handled == {("archive", 1): 1, ("archive", 2): 1, ("archive", 3): 1, ("push", 2): 1, ("push", 3): 1}
    assert await queued_jobs(database_url, archive, push) == 0

    # and a second replay adds nothing.
    async with raw_connection(database_url) as connection:
        archived_again = await replay_events(connection, handler=archive, from_id=first, now=now)
        pushed_again = await replay_events(connection, handler=push, from_id=first, now=now)
        handled = await connection.fetch(
            "SELECT event_id, handler FROM handled_events WHERE event_id = ANY($1::bigint[]) ORDER BY handler, event_id",
            [first, second, third],
        )
    assert archived_again == ReplayResult(archive.entrypoint, enqueued=0, already_handled=3, already_queued=0,
                                          beyond_horizon=0)
    assert pushed_again == ReplayResult(push.entrypoint, enqueued=0, already_handled=2, already_queued=0,
                                        beyond_horizon=1)
    assert await queued_jobs(database_url, archive, push) == 0
    assert [(row["handler"], row["event_id"]) for row in handled] == [
        ("archive", first), ("archive", second), ("archive", third), ("push", second), ("push", third)]


async def test_a_replay_horizon_given_for_the_run_replaces_the_declared_one(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    old = await emit_committed(factory, KIND, NoticePublished(10))
    recent = await emit_committed(factory, KIND, NoticePublished(11))
    async with raw_connection(database_url) as connection:
        await connection.execute("UPDATE domain_events SET created_at = now() - interval '5 days' WHERE id = $1", old)
        push = Recorder(expected=0).handler("remind", horizon=EFFECT_HORIZON)
        now = datetime.now(UTC)

        declared = await replay_events(connection, handler=push, from_id=old, now=now)
        wider = await replay_events(connection, handler=push, from_id=old, now=now, horizon=timedelta(days=7))
        jobs = await connection.fetch("SELECT payload FROM pgqueuer WHERE entrypoint = $1 ORDER BY id", push.entrypoint)

    assert (declared.enqueued, declared.beyond_horizon) == (1, 1)
    assert (wider.enqueued, wider.already_queued, wider.beyond_horizon) == (1, 1, 0)
    assert [int(row["payload"]) for row in jobs] == [recent, old]


async def test_a_replay_needs_a_start(database_url: str) -> None:
    async with raw_connection(database_url) as connection:
        with pytest.raises(ValueError, match="where the replay starts"):
            await replay_events(connection, handler=Recorder(0).handler("archive"), now=datetime.now(UTC))
