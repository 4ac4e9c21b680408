"""Requests that once ended in INTERNAL or an HTTP 500 (issue 10, class 7): each answers
with data or a typed error now, on the paths a served request takes."""

from __future__ import annotations

from backend.graphql.relay import encode_id
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World

HOUSEHOLDS_IN_AREA = """
query($area: ID) {
  households(first: 20, search: "张", status: active, areaId: $area) { totalCount edges { node { name } } }
}"""
METERS_IN_AREA = "query($area: ID) { meters(first: 20, areaId: $area) { totalCount } }"


async def test_households_and_meters_filter_by_area_on_the_raw_read_path(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    east, west = encode_id("Area", world.tree.east.id), encode_id("Area", world.tree.west.id)

    in_east = await client.execute(HOUSEHOLDS_IN_AREA, {"area": east}, token=token)
    in_west = await client.execute(HOUSEHOLDS_IN_AREA, {"area": west}, token=token)
    meters = await client.execute(METERS_IN_AREA, {"area": east}, token=token)

    assert in_east == {"data": {"households": {"totalCount": 1, "edges": [{"node": {"name": "张伟"}}]}}, "_status": 200}
    assert in_west["data"]["households"]["totalCount"] == 0
    assert meters == {"data": {"meters": {"totalCount": 0}}, "_status": 200}
