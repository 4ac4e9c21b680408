"""The job worker: event handlers run as PgQueuer jobs, and the scheduled jobs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.auth.catalog import all_permissions
from backend.auth.jobs import purge_expired_auth
from backend.auth.models import PrincipalKind
from backend.domain import Domain, Job
from backend.domains import DOMAINS, extended, installed
from backend.events.listener import Backoff
from backend.events.service import Event, Handler, HandlerRegistry
from backend.jobs import build_queuer, declared_jobs, defer_job, run_worker, runtime_for, system_principal
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


def _schedules(factory: async_sessionmaker[AsyncSession], connection: object) -> dict[str, str]:
    runtime = runtime_for(Settings(), factory, domains=DOMAINS, clock=lambda: NOW)
    queuer = build_queuer(connection, runtime, handlers=HandlerRegistry(), jobs=declared_jobs(DOMAINS))  # type: ignore[arg-type]
    return {key.entrypoint: key.expression for key in queuer.sm.registry}


async def test_the_worker_schedules_every_declared_job(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    async with raw_connection(database_url) as connection:
        schedules = _schedules(factory, connection)

    # Expired logins go hourly; partitions are attached and the log purged daily; alarms
    # are evaluated every quarter hour.
    assert schedules["purge_expired_auth"].split()[1:] == ["*", "*", "*", "*"]
    assert schedules["ensure_reading_partitions"].split()[2:] == ["*", "*", "*"]
    assert schedules["purge_operation_log"].split()[2:] == ["*", "*", "*"]
    assert schedules["evaluate_alarms"] == "*/15 * * * *"
    assert set(schedules) == {job.name for job in declared_jobs(DOMAINS) if job.cron}


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

    purged = await purge_expired_auth(runtime_for(Settings(), factory, clock=lambda: NOW), {})

    async with factory() as session:
        sessions = set((await session.execute(text("SELECT id FROM auth_sessions"))).scalars())
        codes = set((await session.execute(text("SELECT id FROM one_time_codes"))).scalars())
    assert purged == 2
    assert sessions == {live_session}
    assert codes == {code_ids["live"]}




# --------------------------------------------------------------------------- deferred jobs and the system actor

DEFERRED_RUNS: asyncio.Queue[tuple[str, dict[str, object]]] = asyncio.Queue()


async def _remember_run(runtime: Runtime, payload: Mapping[str, object]) -> None:
    DEFERRED_RUNS.put_nowait((runtime.actor.name, dict(payload)))


REMINDER = Domain(name="reminders", title="提醒", jobs=(
    Job("remind", _remember_run, permissions=frozenset({"readings:read"})),
    Job("recount", _remember_run),
))


async def test_a_deferred_job_exists_only_if_its_caller_commits_and_once_per_dedupe_key(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    with extended(REMINDER):
        async with factory() as session, session.begin():
            assert await defer_job(session, job="remind", dedupe_key="household:1", now=NOW, payload={"household_id": 1})
            # Same key while the first is queued: skipped.
            assert not await defer_job(session, job="remind", dedupe_key="household:1", now=NOW, payload={"household_id": 1})
            # Same key for another job: its own.
            assert await defer_job(session, job="recount", dedupe_key="household:1", now=NOW, at=NOW + timedelta(days=1))
        async with factory() as session, session.begin():
            await defer_job(session, job="remind", dedupe_key="household:2", now=NOW, payload={"household_id": 2})
            await session.rollback()

        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(Settings(), database_url, stop=stop, clock=lambda: NOW))
        try:
            actor, payload = await asyncio.wait_for(DEFERRED_RUNS.get(), WAIT)
            await asyncio.sleep(0.3)  # a second run would be picked within this
        finally:
            stop.set()
            await asyncio.wait_for(worker, WAIT)

    # The recount waits for tomorrow; the rolled-back deferral never existed.
    assert (actor, payload) == ("系统", {"household_id": 1})
    assert DEFERRED_RUNS.empty()


async def test_a_job_no_installed_domain_declares_is_refused(factory: async_sessionmaker[AsyncSession]) -> None:
    async with factory() as session, session.begin():
        with pytest.raises(ValueError, match="remind"):
            await defer_job(session, job="remind", dedupe_key="household:1", now=NOW)


def test_what_jobs_and_handlers_declare_are_permissions_of_the_catalog() -> None:
    assert system_principal(installed()).permissions <= all_permissions()


def test_the_system_actor_holds_exactly_what_the_jobs_and_handlers_declare() -> None:
    actor = system_principal((*DOMAINS, REMINDER))

    declared = {p for domain in (*DOMAINS, REMINDER) for item in (*domain.jobs, *domain.handlers) for p in item.permissions}
    assert actor.kind is PrincipalKind.system
    assert actor.name == "系统"
    assert actor.permissions == declared
    assert "readings:read" in actor.permissions
    assert "users:manage" not in actor.permissions  # never a blanket superuser
