"""Loaders that resolve side by side each use a session of their own, and list screens
issue a number of SQL statements that does not grow with the page size."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

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
def counted_statements(*engines: AsyncEngine) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    for engine in engines:
        event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        for engine in engines:
            event.remove(engine.sync_engine, "before_cursor_execute", record)


async def test_sibling_fields_with_loaders_resolve_concurrently_without_sharing_a_session(
    client: GraphQLClient, world: World
) -> None:
    token = await client.login(world.admin.username, world.admin.password)

    result = await client.execute(TWO_LOADERS, token=token)

    assert "errors" not in result, result.get("errors")
    assert len(result["data"]["areas"]["edges"]) >= 5
    roles = [edge["node"]["roles"] for edge in result["data"]["staffUsers"]["edges"]]
    assert all(len(user_roles) == 1 for user_roles in roles)


async def test_area_list_statement_count_does_not_grow_with_page_size(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    state = client.http._transport.app.state  # type: ignore[attr-defined]

    with counted_statements(state.engine, state.read_engine) as small:
        two = await client.execute(AREAS_PAGE, {"n": 2}, token=token)
    with counted_statements(state.engine, state.read_engine) as large:
        five = await client.execute(AREAS_PAGE, {"n": 5}, token=token)

    assert len(two["data"]["areas"]["edges"]) == 2
    assert len(five["data"]["areas"]["edges"]) == 5
    # Authentication, the count and the page (parents come joined): three, whatever the size.
    assert len(small) == len(large) == 3
