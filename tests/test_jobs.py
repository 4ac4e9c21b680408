"""The job worker: event handlers run as PgQueuer jobs, and the scheduled jobs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.events.listener import Backoff
from backend.events.service import Event, Handler, HandlerRegistry
from backend.jobs import (
    ENSURE_PARTITIONS,
    EVALUATE_ALARMS,
    PURGE_EXPIRED_AUTH,
    PURGE_OPERATION_LOG,
    build_queuer,
    purge_expired_auth,
    run_worker,
)
from backend.observability import JOBS
from backend.runtime import Runtime
from backend.settings import Settings
from tests.events.factories import committing_sessions, emit_committed, raw_connection
from tests.events.payloads import BillIssued, CommandFinished

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
WAIT = 3.0


@pytest.fixture(scope="module")
async def factory(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with committing_sessions(database_url) as sessions:
        yield sessions


async def test_the_worker_runs_a_handler_once_for_an_emitted_event(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    handled: list[int] = []
    done = asyncio.Event()

    async def settle(runtime: Runtime, session: AsyncSession, event: Event) -> None:
        # The handler's session is in a transaction of its own; the runtime is the worker's.
        assert session.in_transaction()
        assert runtime.now() == NOW
        handled.append(event.id)
        done.set()

    handlers = HandlerRegistry([Handler("tests.bill_issued", "settle", settle)])
    entrypoint = "event:tests.bill_issued:settle"
    ok_before = JOBS.labels(entrypoint, "ok")._value.get()
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(Settings(), database_url, stop=stop, handlers=handlers, clock=lambda: NOW))
    try:
        event_id = await emit_committed(factory, "tests.bill_issued", BillIssued(1))
        await asyncio.wait_for(done.wait(), WAIT)
    finally:
        stop.set()
        await asyncio.wait_for(worker, WAIT)

    assert handled == [event_id]
    assert JOBS.labels(entrypoint, "ok")._value.get() == ok_before + 1
    async with raw_connection(database_url) as connection:
        assert await connection.fetchval("SELECT count(*) FROM pgqueuer WHERE entrypoint = $1", entrypoint) == 0
        statuses = await connection.fetch("SELECT status FROM pgqueuer_log WHERE entrypoint = $1", entrypoint)
        assert [row["status"] for row in statuses].count("successful") == 1
        assert await connection.fetchval("SELECT relayed_at IS NOT NULL FROM domain_events WHERE id = $1", event_id)


async def test_the_worker_carries_on_after_its_connections_are_killed(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    handled: asyncio.Queue[int] = asyncio.Queue()

    async def record(runtime: Runtime, session: AsyncSession, event: Event) -> None:
        handled.put_nowait(event.id)

    handlers = HandlerRegistry([Handler("tests.command_finished", "record", record)])

    stop = asyncio.Event()
    worker = asyncio.create_task(
        run_worker(Settings(), database_url, stop=stop, handlers=handlers, backoff=Backoff(initial=0.1))
    )
    try:
        first = await emit_committed(factory, "tests.command_finished", CommandFinished(1))
        assert await asyncio.wait_for(handled.get(), WAIT) == first

        async with raw_connection(database_url) as admin:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name IN ('shuiwu-jobs', 'shuiwu-relay')"
            )
        second = await emit_committed(factory, "tests.command_finished", CommandFinished(2))

        assert killed == 2
        assert await asyncio.wait_for(handled.get(), WAIT) == second
    finally:
        stop.set()
        await asyncio.wait_for(worker, WAIT)
    assert not worker.exception()
    assert handled.empty()


async def test_the_worker_schedules_the_auth_purge_hourly(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    async with raw_connection(database_url) as connection:
        queuer = build_queuer(connection, factory, handlers=HandlerRegistry())

    entrypoint, expression = PURGE_EXPIRED_AUTH
    schedules = {key.entrypoint: key.expression for key in queuer.sm.registry}
    assert schedules[entrypoint] == expression
    assert expression.split()[1:] == ["*", "*", "*", "*"]
    # Readings partitions are attached daily, alarms evaluated every quarter hour.
    assert schedules[ENSURE_PARTITIONS[0]].split()[2:] == ["*", "*", "*"]
    assert schedules[EVALUATE_ALARMS[0]] == "*/15 * * * *"


async def test_the_purge_job_deletes_only_expired_sessions_and_codes(
    factory: async_sessionmaker[AsyncSession],
) -> None:
    expired_session, live_session = uuid.uuid4(), uuid.uuid4()
    async with factory() as session, session.begin():
        for session_id, expires_at in (
            (expired_session, NOW - timedelta(seconds=1)),
            (live_session, NOW + timedelta(hours=1)),
        ):
            await session.execute(
                text(
                    "INSERT INTO auth_sessions (id, principal_kind, principal_id, created_at, expires_at)"
                    " VALUES (:id, 'staff', 1, :created_at, :expires_at)"
                ),
                {"id": session_id, "created_at": NOW - timedelta(days=1), "expires_at": expires_at},
            )
        code_ids = {}
        for label, expires_at in (("expired", NOW - timedelta(seconds=1)), ("live", NOW + timedelta(minutes=5))):
            code_ids[label] = (
                await session.execute(
                    text(
                        "INSERT INTO one_time_codes (phone, code_hash, created_at, expires_at)"
                        " VALUES ('13800000000', :hash, :created_at, :expires_at) RETURNING id"
                    ),
                    {"hash": label, "created_at": NOW - timedelta(minutes=5), "expires_at": expires_at},
                )
            ).scalar_one()

    purged = await purge_expired_auth(factory, now=NOW)

    async with factory() as session:
        sessions = set((await session.execute(text("SELECT id FROM auth_sessions"))).scalars())
        codes = set((await session.execute(text("SELECT id FROM one_time_codes"))).scalars())
    assert purged == 2
    assert sessions == {live_session}
    assert codes == {code_ids["live"]}


async def test_the_worker_purges_the_operation_log_daily(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    async with raw_connection(database_url) as connection:
        queuer = build_queuer(connection, factory, handlers=HandlerRegistry(), audit_retention_days=30)

    schedules = {key.entrypoint: key.expression for key in queuer.sm.registry}
    assert schedules[PURGE_OPERATION_LOG[0]] == PURGE_OPERATION_LOG[1]
    assert PURGE_OPERATION_LOG[1].split()[2:] == ["*", "*", "*"]
