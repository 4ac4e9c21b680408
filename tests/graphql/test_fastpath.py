"""The compiled list path answers exactly what graphql-core answers, and is really used."""

from __future__ import annotations

import pytest

from backend import slicing
from backend.graphql import fastpath
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World

QUERIES = [
    "{ areas(first: 50) { totalCount edges { cursor node { id name kind level createdAt parent { id name kind } } } } }",
    "{ areas(first: 50) { edges { node { __typename n: name ...F } } } } fragment F on Area { kind level }",
    "{ areas(first: 50) { edges { node { name parent { name parent { name } } } } } }",
    "{ staffUsers(first: 50) { edges { node { username isActive roles { name permissions } } } } }",
    "{ menus { code name permissions { code name } } }",
    "{ menuCatalog { code apps permissions { code nameEn } } }",
]


@pytest.mark.parametrize("query", QUERIES)
async def test_compiled_lists_answer_exactly_like_graphql_core(
    query: str, client: GraphQLClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await client.login(world.admin.username, world.admin.password)

    fast = await client.execute(query, token=token)
    with monkeypatch.context() as patched:
        patched.setattr(fastpath.PlanCompiler, "value", lambda *args, **kwargs: None)
        # Another document (whitespace alone would find the cached one and its plans).
        slow = await client.execute("query Slow " + query, token=token)

    assert "errors" not in fast
    assert fast == slow


async def test_the_area_list_is_completed_by_a_compiled_plan(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    query = "{ areas(first: 10) { edges { node { id name kind level parent { name } } } } }"

    await client.execute(query, token=token)

    endpoint = client.http._transport.app.state.graphql  # type: ignore[attr-defined]
    plans = (await endpoint.documents.get(query)).plans
    assert plans
    assert all(plan is not fastpath._UNCOMPILABLE for plan in plans.values())


async def test_a_relation_that_was_not_prefetched_falls_back_to_the_resolver(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)

    # parent.parent is not prefetched: the list goes the generic way and still answers.
    result = await client.execute("{ areas(first: 50) { edges { node { name parent { parent { name } } } } } }", token=token)

    grandparents = [edge["node"]["parent"]["parent"] for edge in result["data"]["areas"]["edges"] if edge["node"]["parent"]]
    assert {"name": world.tree.company.name} in grandparents


async def test_lists_completed_in_slices_answer_exactly_like_graphql_core(
    client: GraphQLClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every list is "long" and every item ends a slice: the sliced paths, compiled and
    # generic, yield to the loop between every two items.
    token = await client.login(world.admin.username, world.admin.password)
    stock_completion = fastpath.StrawberryGraphQLCoreExecutionContext.complete_iterable_value
    for query in QUERIES:
        with monkeypatch.context() as patched:
            patched.setattr(fastpath.PlanCompiler, "value", lambda *args, **kwargs: None)
            patched.setattr(fastpath.FastExecutionContext, "complete_iterable_value", stock_completion)
            stock = await client.execute(query + "  ", token=token)
        with monkeypatch.context() as patched:
            patched.setattr(fastpath, "LONG_LIST", 0)
            patched.setattr(slicing, "SLICE_S", 0.0)
            compiled = await client.execute(query, token=token)
            patched.setattr(fastpath.PlanCompiler, "value", lambda *args, **kwargs: None)
            generic = await client.execute(query + " ", token=token)

        assert "errors" not in stock
        assert compiled == stock, query
        assert generic == stock, query
