"""Loaders that resolve side by side each use a session of their own, and list screens
issue a number of SQL statements that does not grow with the page size."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from backend import db
from backend.graphql import context as graphql_context
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World

# Two root fields whose nodes go through four different loaders at the same time.
TWO_LOADERS = """
{
  areas(first: 50) { edges { node { name parent { name parent { name } } } } }
  staffUsers(first: 50) { edges { node { username roles { name permissions parent { name } areas { name } } } } }
}
"""
AREAS_PAGE = "query($n: Int) { areas(first: $n) { totalCount edges { node { name kind level parent { name } } } } }"


@contextmanager
def counted_statements(monkeypatch: pytest.MonkeyPatch, *engines: AsyncEngine) -> Iterator[list[str]]:
    """Every statement sent, through SQLAlchemy or on a raw asyncpg connection."""
    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    @asynccontextmanager
    async def logged_raw_read(engine: AsyncEngine) -> AsyncIterator[Any]:
        async with original_raw_read(engine) as connection:
            def log(query: Any) -> None:
                statements.append(query.query)

            connection.add_query_logger(log)
            try:
                yield connection
            finally:
                await asyncio.sleep(0)  # asyncpg calls loggers with call_soon
                connection.remove_query_logger(log)

    original_raw_read = graphql_context.raw_read
    # Expensive fields run admitted, on the engines' twins (backend.db.route_admitted).
    engines = (*engines, *(twin for engine in engines if (twin := db.admitted_twin(engine)) is not None))
    for engine in engines:
        event.listen(engine.sync_engine, "before_cursor_execute", record)
    with monkeypatch.context() as patched:
        patched.setattr(graphql_context, "raw_read", logged_raw_read)
        patched.setattr(db, "raw_read", logged_raw_read)
        try:
            yield statements
        finally:
            for engine in engines:
                event.remove(engine.sync_engine, "before_cursor_execute", record)


async def test_sibling_fields_with_loaders_resolve_concurrently_without_sharing_a_session(
    client: GraphQLClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    open_sessions: list[int] = []
    most_open = 0
    original_read = graphql_context.Context.read

    @asynccontextmanager
    async def tracked_read(self: graphql_context.Context) -> AsyncIterator[Any]:
        nonlocal most_open
        async with original_read(self) as session:
            open_sessions.append(id(session))
            most_open = max(most_open, len(open_sessions))
            try:
                await asyncio.sleep(0.005)  # hold it a moment, as a slow query would
                yield session
            finally:
                open_sessions.remove(id(session))

    monkeypatch.setattr(graphql_context.Context, "read", tracked_read)

    result = await client.execute(TWO_LOADERS, token=token)

    assert "errors" not in result, result.get("errors")
    # Loader batches really ran side by side, each in a session of its own.
    assert most_open >= 2
    assert len(result["data"]["areas"]["edges"]) >= 5
    roles = [edge["node"]["roles"] for edge in result["data"]["staffUsers"]["edges"]]
    assert all(len(user_roles) == 1 for user_roles in roles)


async def test_area_list_statement_count_does_not_grow_with_page_size(
    client: GraphQLClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    state = client.http._transport.app.state  # type: ignore[attr-defined]
    await client.execute(AREAS_PAGE, {"n": 1}, token=token)  # pool connections opened before counting

    with counted_statements(monkeypatch, state.engine, state.read_engine) as small:
        two = await client.execute(AREAS_PAGE, {"n": 2}, token=token)
    with counted_statements(monkeypatch, state.engine, state.read_engine) as large:
        five = await client.execute(AREAS_PAGE, {"n": 5}, token=token)

    assert len(two["data"]["areas"]["edges"]) == 2
    assert len(five["data"]["areas"]["edges"]) == 5
    # Authentication, then the page with its count (parents come joined): two, whatever the size.
    assert len(small) == len(large) == 2
