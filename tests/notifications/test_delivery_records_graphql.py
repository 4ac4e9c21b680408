"""The delivery records (消息管理) over GraphQL keep to the caller's area scope: an SMS is
seen through its household's area, a push record (a JPush call to devices of any area)
only with whole-tree scope; API clients cannot be granted ``messages:read``."""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from backend.archives.models import Area
from backend.auth.catalog import client_scopes
from backend.db import session_factory
from tests.factories import make_staff
from tests.graphql import conftest as graphql_fixtures
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World

world = graphql_fixtures.world
engine_for_module = graphql_fixtures.engine_for_module
client = graphql_fixtures.client

SMS = "{ smsDeliveries(first: 50) { edges { node { text phone } } } }"
PUSH = "{ pushDeliveries(first: 50) { edges { node { title } } } }"


async def test_sms_records_by_household_area_and_push_records_for_whole_tree_scope_only(
        client: GraphQLClient, world: World, engine_for_module: AsyncEngine) -> None:
    async with session_factory(engine_for_module)() as session, session.begin():
        east_staff = await make_staff(session, permissions={"messages:read"}, areas=[world.tree.east])
        roots = list((await session.execute(select(Area).where(col(Area.parent_id).is_(None)))).scalars())
        head_office = await make_staff(session, permissions={"messages:read"}, areas=roots)
        for household, words in ((world.east_household, "张伟您好, 东边的账单"), (world.west_household, "李娜您好, 西边的欠费")):
            await session.execute(text(
                "INSERT INTO sms_deliveries (household_id, kind, text, dedupe_key, state, phone, attempts,"
                " next_attempt_at, created_at) VALUES (:h, 'arrears', :t, :k, 'sent', '13700009999', 1, now(), now())"),
                {"h": household.id, "t": words, "k": f"scope-test:{household.id}"})
        await session.execute(text(
            "INSERT INTO push_deliveries (kind, title, body, registration_ids, message_ids, state, attempts,"
            " next_attempt_at, created_at) VALUES ('notice', '停水通知', '明天停水', ARRAY['r1'], ARRAY[1], 'sent', 1,"
            " now(), now())"))
    east = await client.login(east_staff.username, east_staff.password)
    whole = await client.login(head_office.username, head_office.password)

    east_sms = await client.execute(SMS, token=east)
    east_push = await client.execute(PUSH, token=east)
    whole_sms = await client.execute(SMS, token=whole)
    whole_push = await client.execute(PUSH, token=whole)

    assert [e["node"]["text"] for e in east_sms["data"]["smsDeliveries"]["edges"]] == ["张伟您好, 东边的账单"]
    assert east_push["data"]["pushDeliveries"]["edges"] == []
    assert sorted(e["node"]["text"] for e in whole_sms["data"]["smsDeliveries"]["edges"]) == [
        "张伟您好, 东边的账单", "李娜您好, 西边的欠费"]
    assert [e["node"]["title"] for e in whole_push["data"]["pushDeliveries"]["edges"]] == ["停水通知"]


def test_messages_read_is_not_an_api_client_scope() -> None:
    assert "messages:read" not in client_scopes()
    assert "notices:read" in client_scopes()
