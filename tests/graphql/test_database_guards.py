"""The database protects itself (issue 10, class 1): every connection of the API carries
a statement timeout, an idle-in-transaction timeout and a temp-file limit; a statement cut
by them is a typed error; and a client that goes away cancels its statement.

A statement is made slow by a lock another connection holds on ``households``: waiting
for a lock counts against ``statement_timeout`` and is cancelled like any statement,
without filling the database with rows to make a query slow for real.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from starlette.requests import Request
from starlette.routing import Route

from backend.app import create_app
from backend.db import StatementLimits, create_engine, extend_limits, session_factory, to_libpq_url
from tests.graphql.client import GraphQLClient, api_settings, graphql_client
from tests.graphql.conftest import World
from tests.live import LiveServer, live_server

HOUSEHOLDS = "{ households(first: 5) { totalCount } }"
WAITING_ON_HOUSEHOLDS = """
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()
      AND application_name = 'shuiwu' AND query ILIKE '%FROM households%'
"""


@pytest.fixture(scope="module")
def live(database_url: str) -> Iterator[LiveServer]:
    with live_server(database_url) as server:
        yield server


@asynccontextmanager
async def households_locked(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """Another session holds ``households`` exclusively until the block ends; yields a
    second connection to watch ``pg_stat_activity`` with."""
    holder = await asyncpg.connect(to_libpq_url(database_url))
    watcher = await asyncpg.connect(to_libpq_url(database_url))
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("LOCK TABLE households IN ACCESS EXCLUSIVE MODE")
        try:
            yield watcher
        finally:
            await transaction.rollback()
    finally:
        await holder.close()
        await watcher.close()


async def _wait_until(check: Any, *, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.02)
    return False


async def test_the_apis_connections_carry_the_statement_limits(database_url: str) -> None:
    app = create_app(api_settings(), database_url)
    shown: dict[str, list[str]] = {}

    for engine in (app.state.engine, app.state.read_engine):
        async with engine.connect() as connection:
            for name in ("statement_timeout", "idle_in_transaction_session_timeout", "temp_file_limit"):
                shown.setdefault(name, []).append((await connection.execute(text(f"SHOW {name}"))).scalar_one())
        await engine.dispose()

    assert shown == {"statement_timeout": ["30s", "30s"], "idle_in_transaction_session_timeout": ["1min", "1min"],
                     "temp_file_limit": ["1GB", "1GB"]}


async def test_a_role_that_may_not_set_temp_file_limit_still_connects_with_its_timeouts(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    role = f"shuiwu_app_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(to_libpq_url(database_url))
    await admin.execute(f'CREATE ROLE "{role}" LOGIN')
    head, _, tail = database_url.partition("://")
    as_role = f"{head}://{role}@{tail.split('@', 1)[1]}"
    engine = create_engine(as_role, limits=StatementLimits(5, 10, 256))
    try:
        with caplog.at_level(logging.WARNING, logger="backend.db"):
            async with engine.connect() as connection:
                timeout = (await connection.execute(text("SHOW statement_timeout"))).scalar_one()
                temp_limit = (await connection.execute(text("SHOW temp_file_limit"))).scalar_one()
    finally:
        await engine.dispose()
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()

    assert (timeout, temp_limit) == ("5s", "-1")
    assert any("temp_file_limit not set" in record.getMessage() for record in caplog.records)


async def test_a_statement_cut_by_the_timeout_is_query_timeout_not_internal(database_url: str, world: World) -> None:
    async with graphql_client(database_url, db_statement_timeout_s=0.3) as client:
        token = await client.login(world.admin.username, world.admin.password)
        async with households_locked(database_url):
            listed = await asyncio.wait_for(client.execute(HOUSEHOLDS, token=token), 10)
            exported = await asyncio.wait_for(
                client.http.get("/exports/households.xlsx", headers={"Authorization": f"Bearer {token}"}), 10)
        after = await client.execute(HOUSEHOLDS, token=token)

    assert listed["errors"][0]["extensions"]["code"] == "QUERY_TIMEOUT"
    assert listed["errors"][0]["message"] == "查询超时, 请缩小范围"
    assert exported.status_code == 503
    assert exported.json()["errors"][0]["extensions"]["code"] == "QUERY_TIMEOUT"
    assert after["data"]["households"]["totalCount"] >= 0


async def test_any_unexpected_error_on_a_plain_route_answers_json_internal_with_the_request_id(database_url: str) -> None:
    async def broken(request: Request) -> Any:
        raise RuntimeError("a bug")

    app = create_app(api_settings(), database_url, extra_routes=[Route("/broken", broken)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        answer = await http.get("/broken")
    await app.state.engine.dispose()

    assert answer.status_code == 500
    error = answer.json()["errors"][0]
    assert error["extensions"]["code"] == "INTERNAL"
    assert error["extensions"]["requestId"] == answer.headers["x-request-id"]


async def test_a_client_that_disconnects_mid_query_cancels_its_statement(
    live: LiveServer, database_url: str, world: World, client: GraphQLClient
) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    body = json.dumps({"query": HOUSEHOLDS}).encode()
    request = (f"POST /graphql HTTP/1.1\r\nHost: {live.host}\r\nContent-Type: application/json\r\n"
               f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    async with households_locked(database_url) as watcher:
        async def waiting() -> int:
            return int(await watcher.fetchval(WAITING_ON_HOUSEHOLDS))

        with socket.create_connection((live.host, live.port)) as raw:
            raw.sendall(request)
            assert await _wait_until(lambda: _is(waiting, 1), within_s=5), "the query never started"
        gone = await _wait_until(lambda: _is(waiting, 0), within_s=2)

    assert gone, "the statement kept running after its client went away"
    async with httpx.AsyncClient(base_url=live.url) as http:
        # The pool survived the cancelled connection: every pooled connection still answers.
        answers = await asyncio.gather(*[
            http.post("/graphql", json={"query": HOUSEHOLDS}, headers={"Authorization": f"Bearer {token}"})
            for _ in range(12)
        ])
    assert [answer.json()["data"]["households"]["totalCount"] for answer in answers] == [2] * 12


async def _is(count: Any, expected: int) -> bool:
    return bool(await count() == expected)


SHOW_LIMITS = text("SELECT current_setting('statement_timeout'), current_setting('idle_in_transaction_session_timeout'), "
                   "current_setting('temp_file_limit')")


async def test_a_bulk_path_extends_its_limits_for_its_own_transaction_only(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1, max_overflow=0, limits=StatementLimits(30, 60, 1024))
    try:
        async with session_factory(engine)() as session, session.begin():
            await extend_limits(session, StatementLimits(1800, 600, 16 * 1024))
            inside = tuple((await session.execute(SHOW_LIMITS)).one())
        async with session_factory(engine)() as session:
            after = tuple((await session.execute(SHOW_LIMITS)).one())
    finally:
        await engine.dispose()

    assert inside == ("30min", "10min", "16GB")
    assert after == ("30s", "1min", "1GB")


async def test_a_role_that_may_not_set_temp_file_limit_still_gets_the_bulk_timeouts(database_url: str) -> None:
    role = f"shuiwu_bulk_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(to_libpq_url(database_url))
    await admin.execute(f'CREATE ROLE "{role}" LOGIN')
    head, _, tail = database_url.partition("://")
    engine = create_engine(f"{head}://{role}@{tail.split('@', 1)[1]}", pool_size=1, max_overflow=0,
                           limits=StatementLimits(30, 60, 1024))
    try:
        async with session_factory(engine)() as session, session.begin():
            await extend_limits(session, StatementLimits(1800, 600, 16 * 1024))
            inside = tuple((await session.execute(SHOW_LIMITS)).one())
    finally:
        await engine.dispose()
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()

    assert inside == ("30min", "10min", "-1")  # the server's value, no error


async def test_an_api_statement_runs_on_one_core_and_bulk_work_keeps_the_servers_parallelism(database_url: str) -> None:
    api = create_engine(database_url, pool_size=1, max_overflow=0, limits=StatementLimits.for_api(api_settings()))
    bulk = create_engine(database_url, pool_size=1, max_overflow=0, limits=StatementLimits.for_bulk(api_settings()))
    show = text("SELECT current_setting('max_parallel_workers_per_gather')")
    try:
        async with session_factory(api)() as session:
            on_api = (await session.execute(show)).scalar_one()
        async with session_factory(bulk)() as session:
            on_bulk = (await session.execute(show)).scalar_one()
    finally:
        await api.dispose()
        await bulk.dispose()

    assert on_api == "0"  # admission counts an expensive request as one core
    assert on_bulk == "2"  # PostgreSQL's default
