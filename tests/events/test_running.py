"""run_handler: one handler, one event, its own transaction, its effect at most once; and
the retention purge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.auth.models import PrincipalKind
from backend.auth.principal import Principal
from backend.events.relay import relay_pending
from backend.events.retention import purge_events, purge_expired_events
from backend.events.running import HandlerOutcome, run_handler
from backend.events.service import Event, Handler, HandlerRegistry, payload_of
from backend.runtime import Runtime
from backend.settings import Settings
from tests.events.factories import committing_sessions, emit_committed, raw_connection
from tests.events.payloads import BillIssued, NoticePublished

NOW = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
async def factory(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with committing_sessions(database_url) as sessions:
        yield sessions


def runtime_on(factory: async_sessionmaker[AsyncSession]) -> Runtime:
    return Runtime(settings=Settings(), sessions=factory, actor=Principal(PrincipalKind.staff, 0, "system"),
                   clock=lambda: NOW)


class PrintedBills:
    """A handler whose effect is a row written in the handler's transaction."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail_next = False
        self.gate: asyncio.Event | None = None

    async def __call__(self, runtime: Runtime, session: AsyncSession, event: Event) -> None:
        self.calls += 1
        bill = payload_of(event, BillIssued)
        await session.execute(text("INSERT INTO printed_bills (bill_id) VALUES (:bill_id)"), {"bill_id": bill.bill_id})
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("printer jammed")


@pytest.fixture(scope="module")
async def printed_bills_table(database_url: str) -> None:
    async with raw_connection(database_url) as connection:
        await connection.execute("CREATE TABLE printed_bills (bill_id bigint NOT NULL)")


async def printed(factory: async_sessionmaker[AsyncSession], bill_id: int) -> int:
    async with factory() as session:
        count = await session.execute(text("SELECT count(*) FROM printed_bills WHERE bill_id = :b"), {"b": bill_id})
        return int(count.scalar_one())


async def handled_by(factory: async_sessionmaker[AsyncSession], event_id: int) -> list[tuple[str, datetime]]:
    async with factory() as session:
        rows = await session.execute(
            text("SELECT handler, handled_at FROM handled_events WHERE event_id = :id ORDER BY handler"), {"id": event_id}
        )
        return [(row.handler, row.handled_at) for row in rows]


@pytest.mark.usefixtures("printed_bills_table")
async def test_a_handler_acts_once_for_an_event_however_often_its_job_runs(
    factory: async_sessionmaker[AsyncSession],
) -> None:
    print_bill = PrintedBills()
    handler = Handler("tests.bill_issued", "print", print_bill)
    event_id = await emit_committed(factory, "tests.bill_issued", BillIssued(101))

    first = await run_handler(runtime_on(factory), handler, event_id)
    second = await run_handler(runtime_on(factory), handler, event_id)

    assert (first, second) == (HandlerOutcome.handled, HandlerOutcome.already_handled)
    assert (print_bill.calls, await printed(factory, 101)) == (1, 1)
    assert await handled_by(factory, event_id) == [("print", NOW)]


@pytest.mark.usefixtures("printed_bills_table")
async def test_a_failing_handler_leaves_neither_its_effect_nor_its_record_and_runs_again(
    factory: async_sessionmaker[AsyncSession],
) -> None:
    print_bill = PrintedBills()
    print_bill.fail_next = True
    handler = Handler("tests.bill_issued", "print", print_bill)
    event_id = await emit_committed(factory, "tests.bill_issued", BillIssued(102))

    with pytest.raises(RuntimeError, match="jammed"):
        await run_handler(runtime_on(factory), handler, event_id)
    assert (await printed(factory, 102), await handled_by(factory, event_id)) == (0, [])

    assert await run_handler(runtime_on(factory), handler, event_id) == HandlerOutcome.handled
    assert await printed(factory, 102) == 1


async def until_a_statement_waits_on_a_lock(database_url: str) -> None:
    async with raw_connection(database_url) as observer, asyncio.timeout(5):
        while True:
            if await observer.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ):
                return
            await asyncio.sleep(0.01)


@pytest.mark.usefixtures("printed_bills_table")
async def test_two_jobs_running_at_once_for_one_event_act_once(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    print_bill = PrintedBills()
    print_bill.gate = asyncio.Event()
    handler = Handler("tests.bill_issued", "print", print_bill)
    event_id = await emit_committed(factory, "tests.bill_issued", BillIssued(103))

    # The first job is inside the handler; the second waits on the first's record.
    first = asyncio.create_task(run_handler(runtime_on(factory), handler, event_id))
    second = asyncio.create_task(run_handler(runtime_on(factory), handler, event_id))
    await until_a_statement_waits_on_a_lock(database_url)
    print_bill.gate.set()

    assert sorted(await asyncio.gather(first, second)) == [HandlerOutcome.already_handled, HandlerOutcome.handled]
    assert (print_bill.calls, await printed(factory, 103)) == (1, 1)


async def test_a_job_for_a_purged_event_does_nothing(factory: async_sessionmaker[AsyncSession]) -> None:
    print_bill = PrintedBills()

    outcome = await run_handler(runtime_on(factory), Handler("tests.bill_issued", "print", print_bill), 10**12)

    assert (outcome, print_bill.calls) == (HandlerOutcome.event_gone, 0)


async def test_a_handler_refuses_an_event_of_another_kind(factory: async_sessionmaker[AsyncSession]) -> None:
    event_id = await emit_committed(factory, "tests.notice_published", NoticePublished(1))

    with pytest.raises(ValueError, match=r"a tests\.notice_published"):
        await run_handler(runtime_on(factory), Handler("tests.bill_issued", "print", PrintedBills()), event_id)
    assert await handled_by(factory, event_id) == []


async def _archive(runtime: Runtime, session: AsyncSession, event: Event) -> None:
    return None


async def test_the_purge_deletes_relayed_events_past_the_retention_with_their_records_in_batches(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    old = [await emit_committed(factory, "tests.notice_published", NoticePublished(n)) for n in range(3)]
    recent = await emit_committed(factory, "tests.notice_published", NoticePublished(3))
    async with raw_connection(database_url) as connection:
        await relay_pending(connection, handlers=HandlerRegistry())
        unrelayed = await emit_committed(factory, "tests.notice_published", NoticePublished(4))
        await connection.execute(
            "UPDATE domain_events SET created_at = now() - interval '401 days' WHERE id = ANY($1::bigint[])",
            [*old, unrelayed],
        )
    handler = Handler("tests.notice_published", "archive", _archive)
    await run_handler(runtime_on(factory), handler, old[0])
    older_than = datetime.now(UTC) - timedelta(days=400)

    batches = []
    while True:
        async with factory() as session, session.begin():
            batches.append(await purge_events(session, older_than=older_than, batch=2))
        if batches[-1] < 2:
            break

    assert batches == [2, 1]
    async with raw_connection(database_url) as connection:
        left = await connection.fetch("SELECT id FROM domain_events WHERE id = ANY($1::bigint[]) ORDER BY id",
                                      [*old, recent, unrelayed])
        records = await connection.fetchval("SELECT count(*) FROM handled_events WHERE event_id = $1", old[0])
    assert [row["id"] for row in left] == [recent, unrelayed]
    assert records == 0


async def test_the_scheduled_purge_keeps_events_for_the_retention_days(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    kept, purged = [await emit_committed(factory, "tests.notice_published", NoticePublished(n)) for n in (5, 6)]
    async with raw_connection(database_url) as connection:
        for event_id, age in ((kept, "29 days"), (purged, "31 days")):
            await connection.execute(
                f"UPDATE domain_events SET created_at = now() - interval '{age}', relayed_at = now() WHERE id = $1",
                event_id,
            )
    runtime = Runtime(settings=Settings(event_retention_days=30), sessions=factory,
                      actor=Principal(PrincipalKind.staff, 0, "system"), clock=lambda: datetime.now(UTC))

    assert await purge_expired_events(runtime) == 1
    async with raw_connection(database_url) as connection:
        left = await connection.fetch("SELECT id FROM domain_events WHERE id = ANY($1::bigint[])", [kept, purged])
    assert [row["id"] for row in left] == [kept]
