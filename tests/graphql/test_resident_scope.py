"""A resident sees their own households and nothing else."""

from __future__ import annotations

import pytest

from backend.graphql.relay import encode_id
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World

pytestmark = pytest.mark.smoke

HOUSEHOLD = "query($id: ID!) { household(id: $id) { id accountNo name area { name } } }"
NODE = "query($id: ID!) { node(id: $id) { id ... on Household { accountNo } } }"
MY_HOUSEHOLDS = "{ myHouseholds { accountNo name } viewer { kind households { accountNo } } }"


async def test_resident_reads_own_household(client: GraphQLClient, world: World) -> None:
    assert world.east_household.id is not None
    result = await client.execute(HOUSEHOLD, {"id": encode_id("Household", world.east_household.id)}, token=world.resident_token)

    assert "errors" not in result
    assert result["data"]["household"]["accountNo"] == world.east_household.account_no
    assert result["data"]["household"]["area"]["name"] == "翠湖小区"


async def test_resident_asking_for_another_household_gets_not_found_and_no_data(client: GraphQLClient, world: World) -> None:
    assert world.west_household.id is not None
    other = encode_id("Household", world.west_household.id)

    by_field = await client.execute(HOUSEHOLD, {"id": other}, token=world.resident_token)
    by_node = await client.execute(NODE, {"id": other}, token=world.resident_token)

    for result in (by_field, by_node):
        assert result["data"] is None
        assert [e["extensions"]["code"] for e in result["errors"]] == ["NOT_FOUND"]
        assert world.west_household.account_no not in str(result)


async def test_resident_lists_only_bound_households(client: GraphQLClient, world: World) -> None:
    result = await client.execute(MY_HOUSEHOLDS, token=world.resident_token)

    assert result["data"]["myHouseholds"] == [{"accountNo": world.east_household.account_no, "name": "张伟"}]
    assert result["data"]["viewer"]["kind"] == "resident"


async def test_scoped_operator_sees_households_in_scope_only(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.east_operator.username, world.east_operator.password)
    assert world.east_household.id is not None and world.west_household.id is not None

    east = await client.execute(HOUSEHOLD, {"id": encode_id("Household", world.east_household.id)}, token=token)
    west = await client.execute(HOUSEHOLD, {"id": encode_id("Household", world.west_household.id)}, token=token)

    assert east["data"]["household"]["name"] == "张伟"
    assert west["data"] is None
    assert west["errors"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_scoped_operator_lists_only_areas_in_scope(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.east_operator.username, world.east_operator.password)

    result = await client.execute("{ areas(first: 100) { totalCount edges { node { name parent { name } } } } }", token=token)

    names = [edge["node"]["name"] for edge in result["data"]["areas"]["edges"]]
    assert names == ["城东片区", "翠湖小区"]
    assert result["data"]["areas"]["totalCount"] == 2
    # The company above the scope is not revealed through `parent`.
    assert result["data"]["areas"]["edges"][0]["node"]["parent"] is None
