"""The staff list of work orders over GraphQL: its statement count does not grow with the
page (transitions and photos through DataLoaders), and its filters; an API client reads
only the orders of its areas."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.auth.service import create_api_client
from backend.auth.system import system_actor
from backend.clock import utcnow
from backend.db import session_factory
from backend.graphql.relay import encode_id
from backend.workorders import service
from backend.workorders.models import WorkOrderCategory
from backend.workorders.photos import StoredPhoto
from tests.graphql import conftest as graphql_fixtures
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World
from tests.graphql.test_dataloaders import counted_statements
from tests.workorders.support import TZ

world = graphql_fixtures.world
engine_for_module = graphql_fixtures.engine_for_module
client = graphql_fixtures.client

PAGE = """query($first: Int, $filter: WorkOrderFilter) { workOrders(first: $first, filter: $filter) { totalCount
  edges { node { number category state overdue transitions { toState } photos { stage thumbnailUrl } } } } }"""


@pytest.fixture(scope="module")
async def orders(world: World, engine_for_module: AsyncEngine) -> list[int]:
    """Five orders of the east household (made by the system), each with a photo; one a
    billing query."""
    made = []
    async with session_factory(engine_for_module)() as session, session.begin():
        for index in range(5):
            order = await service.create_work_order(
                session, principal=system_actor(frozenset()), household_id=world.east_household.id or 0,
                category=WorkOrderCategory.billing_query if index == 0 else WorkOrderCategory.leak,
                description=f"第 {index} 单", contact_name=None, contact_phone="13800000000", appointment_at=None,
                now=utcnow(), tz=TZ,
                photos=[StoredPhoto(f"photos/2026/12/07/{index:032x}.jpg", f"photos/2026/12/07/{index:031x}t.jpg", None)])
            made.append(order.id or 0)
    return made


async def test_the_list_statement_count_does_not_grow_with_page_size(
        client: GraphQLClient, world: World, orders: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    state = client.http._transport.app.state  # type: ignore[attr-defined]
    await client.execute(PAGE, {"first": 1}, token=token)  # pool connections opened before counting

    with counted_statements(monkeypatch, state.engine, state.read_engine) as small:
        one = await client.execute(PAGE, {"first": 1}, token=token)
    with counted_statements(monkeypatch, state.engine, state.read_engine) as large:
        four = await client.execute(PAGE, {"first": 4}, token=token)

    assert (len(one["data"]["workOrders"]["edges"]), len(four["data"]["workOrders"]["edges"])) == (1, 4)
    assert all(len(edge["node"]["photos"]) == 1 and edge["node"]["transitions"] == [{"toState": "submitted"}]
               for edge in four["data"]["workOrders"]["edges"])
    # The page with its count, the transitions, the photos: whatever the size. (Counted by
    # the tables they read: a pool connection opened under load adds its own set-up
    # statements to either window.)
    def of_orders(statements: list[str]) -> list[str]:
        return [statement for statement in statements if "work_order" in statement]

    assert len(of_orders(small)) == len(of_orders(large)) == 3


async def test_the_list_filters_by_category_and_a_caller_outside_the_area_sees_none(
        client: GraphQLClient, world: World, orders: list[int]) -> None:
    admin = await client.login(world.admin.username, world.admin.password)

    queries = await client.execute(PAGE, {"filter": {"categories": ["billing_query"]}}, token=admin)
    west = await client.execute(PAGE, {"filter": {"areaId": _area_id(world)}}, token=admin)

    assert queries["data"]["workOrders"]["totalCount"] == 1
    assert west["data"]["workOrders"]["totalCount"] == 0


def _area_id(world: World) -> str:
    return encode_id("Area", world.tree.west.id or 0)


CLIENT_TOKEN = """mutation($id: String!, $secret: String!) {
  issueClientToken(clientId: $id, clientSecret: $secret) { tokens { accessToken } errors { code } } }"""


async def test_an_api_client_scoped_to_west_reads_no_east_order_by_id_or_node(
        client: GraphQLClient, world: World, orders: list[int], engine_for_module: AsyncEngine) -> None:
    async with session_factory(engine_for_module)() as session, session.begin():
        issued = await create_api_client(session, actor=world.admin.principal, name="第三方", scopes=["workorders:read"],
                                         area_ids=[world.tree.west.id or 0], rate_per_minute=1000)
    answer = await client.execute(CLIENT_TOKEN, {"id": issued.client.client_id, "secret": issued.secret})
    token = answer["data"]["issueClientToken"]["tokens"]["accessToken"]
    east_order = encode_id("WorkOrder", orders[0])

    listed = await client.execute("{ workOrders(first: 50) { totalCount } }", token=token)
    one = await client.execute("query($id: ID!) { workOrder(id: $id) { contactPhone } }", {"id": east_order},
                               token=token)
    node = await client.execute("query($id: ID!) { node(id: $id) { ... on WorkOrder { contactPhone } } }",
                                {"id": east_order}, token=token)

    assert listed["data"]["workOrders"]["totalCount"] == 0
    assert one["data"] is None and [e["extensions"]["code"] for e in one["errors"]] == ["NOT_FOUND"], one
    assert (node["data"] or {}).get("node") is None and node["errors"][0]["extensions"]["code"] == "NOT_FOUND", node
