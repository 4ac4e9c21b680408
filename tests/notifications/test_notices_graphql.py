"""Notices through GraphQL: staff write and publish, the public reads notices to everyone
without login, a resident sees only what is addressed to them and marks it read, staff
see the read count; a writer outside the audience's scope gets the typed error."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.db import session_factory
from backend.graphql.relay import encode_id
from tests.factories import make_staff
from tests.graphql import conftest as graphql_fixtures
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World

world = graphql_fixtures.world
engine_for_module = graphql_fixtures.engine_for_module
client = graphql_fixtures.client

CREATE = """
mutation($input: NoticeInput!) {
  createNotice(input: $input) { notice { id state audience areaIds } errors { field code } }
}
"""
PUBLISH = """
mutation($id: ID!) { publishNotice(id: $id) { notice { id state publishedAt } errors { field code } } }
"""
PUBLIC = "{ publicNotices { id title body } }"
MINE = """
{ myNotices(first: 50) { totalCount edges { node { id title body readAt } } } }
"""
READ = "mutation($id: ID!) { markNoticeRead(id: $id) { notice { id readAt } errors { field code } } }"
STAFF = """
{ notices(first: 100) { edges { node { id title state readStats { readers audience } } } } }
"""


async def publish(client: GraphQLClient, token: str, **input: Any) -> str:
    created = await client.execute(CREATE, {"input": {"body": "正文 <script>alert(1)</script>", **input}}, token=token)
    assert created.get("data") and created["data"]["createNotice"]["errors"] == [], created
    notice_id: str = created["data"]["createNotice"]["notice"]["id"]
    done = await client.execute(PUBLISH, {"id": notice_id}, token=token)
    assert done["data"]["publishNotice"]["errors"] == [] and done["data"]["publishNotice"]["notice"]["state"] == "published"
    return notice_id


async def test_public_resident_and_staff_views_of_notices(client: GraphQLClient, world: World) -> None:
    admin = await client.login(world.admin.username, world.admin.password)
    to_all = await publish(client, admin, title="全市停水公告", audience="all")
    to_west = await publish(client, admin, title="西区通知", audience="areas",
                            areaIds=[encode_id("Area", world.tree.west.id)])  # type: ignore[arg-type]
    to_east_home = await publish(client, admin, title="致您家", audience="households",
                                 householdIds=[encode_id("Household", world.east_household.id)])  # type: ignore[arg-type]

    # Without login: the notices to everyone only, body as written (plain text).
    public = await client.execute(PUBLIC, token="")
    assert public["_status"] == 200 and "errors" not in public, public
    shown = {notice["id"]: notice for notice in public["data"]["publicNotices"]}
    assert to_all in shown and to_west not in shown and to_east_home not in shown
    assert shown[to_all]["body"] == "正文 <script>alert(1)</script>"
    # Anonymous callers get nothing else about notices.
    assert (await client.execute(MINE, token=""))["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert (await client.execute(STAFF, token=""))["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"

    # The resident (bound in the east): the one to all and the one to their household, unread.
    mine = await client.execute(MINE, token=world.resident_token)
    seen = {edge["node"]["id"]: edge["node"] for edge in mine["data"]["myNotices"]["edges"]}
    assert to_all in seen and to_east_home in seen and to_west not in seen
    assert seen[to_all]["readAt"] is None
    read = await client.execute(READ, {"id": to_all}, token=world.resident_token)
    assert read["data"]["markNoticeRead"]["errors"] == [] and read["data"]["markNoticeRead"]["notice"]["readAt"]
    refused = await client.execute(READ, {"id": to_west}, token=world.resident_token)
    assert refused["data"]["markNoticeRead"] == {"notice": None, "errors": [{"field": "id", "code": "NOT_FOUND"}]}, refused

    # Staff: the read count against the audience's residents.
    staff = await client.execute(STAFF, token=admin)
    stats = {edge["node"]["id"]: edge["node"]["readStats"] for edge in staff["data"]["notices"]["edges"]}
    assert stats[to_all]["readers"] == 1 and stats[to_all]["audience"] >= 1
    assert stats[to_east_home] == {"readers": 0, "audience": 1}


async def test_a_writer_outside_the_audience_gets_the_typed_error(
    client: GraphQLClient, world: World, engine_for_module: AsyncEngine,
) -> None:
    async with session_factory(engine_for_module)() as session, session.begin():
        east_writer = await make_staff(session, permissions={"notices:read", "notices:publish"}, areas=[world.tree.east])
    token = await client.login(east_writer.username, east_writer.password)
    before = await notice_count(engine_for_module)
    outside = await client.execute(CREATE, {"input": {
        "title": "越权", "body": "x", "audience": "households",
        "householdIds": [encode_id("Household", world.west_household.id)]}}, token=token)  # type: ignore[arg-type]
    everyone = await client.execute(CREATE, {"input": {"title": "越权", "body": "x", "audience": "all"}}, token=token)
    assert outside["data"]["createNotice"] == {"notice": None, "errors": [
        {"field": "householdIds", "code": "NOTICE_AUDIENCE_OUT_OF_SCOPE"}]}
    assert everyone["data"]["createNotice"]["errors"] == [{"field": "audience", "code": "NOTICE_AUDIENCE_OUT_OF_SCOPE"}]
    assert await notice_count(engine_for_module) == before
    # A resident may not write at all.
    resident = await client.execute(CREATE, {"input": {"title": "x", "body": "x", "audience": "all"}},
                                    token=world.resident_token)
    assert resident["errors"][0]["extensions"]["code"] == "FORBIDDEN"


async def notice_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("SELECT count(*) FROM notices"))).scalar_one())
