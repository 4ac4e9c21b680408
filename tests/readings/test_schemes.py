"""Query schemes (模板/查询方案): save, list, delete, owner-only changes, validation."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from backend.db import session_factory
from backend.errors import DomainError, ErrorCode, Forbidden, NotFound, ValidationFailed
from backend.graphql.relay import encode_id
from backend.readings import http as readings_http  # noqa: F401  (registers the screens)
from backend.readings.schemes import service
from backend.readings.schemes.models import QueryScheme
from backend.readings.screens import ScreenKind, choose_columns, get_screen
from tests.factories import make_staff
from tests.graphql import conftest as graphql_fixtures
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World

world = graphql_fixtures.world
engine_for_module = graphql_fixtures.engine_for_module
client = graphql_fixtures.client

realtime, history = ScreenKind.realtime, ScreenKind.history

SAVE = """
mutation($input: SaveQuerySchemeInput!) {
  saveQueryScheme(input: $input) {
    scheme { id name screen columns filters isDefault shared mine }
    errors { field code message messageEn }
  }
}
"""
DELETE = "mutation($id: ID!) { deleteQueryScheme(id: $id) { deletedId errors { field code } } }"
LIST = "query($screen: ScreenKind!) { querySchemes(screen: $screen) { id name columns filters shared mine isDefault } }"
COLUMNS = "query($screen: ScreenKind!) { screenColumns(screen: $screen) { key title titleEn default } }"


async def _owner(session: AsyncSession) -> int:
    staff = await make_staff(session)
    assert staff.user.id is not None
    return staff.user.id


async def test_saving_under_the_same_name_updates_the_scheme(session: AsyncSession) -> None:
    owner = await _owner(session)

    first = await service.save_query_scheme(session, owner_user_id=owner, screen=realtime, name="东区在线",
                                            columns=["meter_code", "total_m3"], filters={"status": "online"})
    second = await service.save_query_scheme(session, owner_user_id=owner, screen=realtime, name="东区在线",
                                             columns=["total_m3", "meter_code", "read_at"], filters={})

    assert second.id == first.id
    assert (second.columns, second.filters) == (["total_m3", "meter_code", "read_at"], {})
    count = (await session.execute(select(func.count()).select_from(QueryScheme).where(QueryScheme.owner_user_id == owner))).scalar_one()  # type: ignore[arg-type]
    assert count == 1


async def test_a_default_scheme_clears_the_owners_other_default(session: AsyncSession) -> None:
    owner = await _owner(session)
    first = await service.save_query_scheme(session, owner_user_id=owner, screen=history, name="A", columns=[],
                                            filters={}, is_default=True)

    await service.save_query_scheme(session, owner_user_id=owner, screen=history, name="B", columns=[], filters={},
                                    is_default=True)

    await session.refresh(first)
    schemes = await service.list_query_schemes(session, screen=history, user_id=owner)
    assert [(s.name, s.is_default) for s in schemes] == [("A", False), ("B", True)]


async def test_list_shows_own_schemes_first_then_shared_ones_of_others(session: AsyncSession) -> None:
    me, other = await _owner(session), await _owner(session)
    await service.save_query_scheme(session, owner_user_id=other, screen=realtime, name="甲 shared", columns=[],
                                    filters={}, shared=True)
    await service.save_query_scheme(session, owner_user_id=other, screen=realtime, name="乙 private", columns=[], filters={})
    await service.save_query_scheme(session, owner_user_id=me, screen=realtime, name="丙 mine", columns=[], filters={})
    await service.save_query_scheme(session, owner_user_id=me, screen=history, name="other screen", columns=[], filters={})

    schemes = await service.list_query_schemes(session, screen=realtime, user_id=me)

    names = [s.name for s in schemes]
    assert names[0] == "丙 mine"
    assert "甲 shared" in names and "乙 private" not in names and "other screen" not in names


async def test_only_the_owner_deletes_a_scheme(session: AsyncSession) -> None:
    me, other = await _owner(session), await _owner(session)
    shared = await service.save_query_scheme(session, owner_user_id=other, screen=realtime, name="s", columns=[],
                                             filters={}, shared=True)
    private = await service.save_query_scheme(session, owner_user_id=other, screen=realtime, name="p", columns=[], filters={})
    assert shared.id is not None and private.id is not None

    with pytest.raises(Forbidden):
        await service.delete_query_scheme(session, scheme_id=shared.id, user_id=me)
    with pytest.raises(NotFound):
        await service.delete_query_scheme(session, scheme_id=private.id, user_id=me)
    await service.delete_query_scheme(session, scheme_id=shared.id, user_id=other)

    assert await session.get(QueryScheme, shared.id) is None
    assert await session.get(QueryScheme, private.id) is not None


async def test_unknown_columns_bad_filters_and_a_blank_name_are_refused_together(session: AsyncSession) -> None:
    owner = await _owner(session)

    with pytest.raises(ValidationFailed) as refused:
        await service.save_query_scheme(session, owner_user_id=owner, screen=realtime, name=" ",
                                        columns=["meter_code", "no_such_column"], filters=["not", "a", "dict"])  # type: ignore[arg-type]

    assert [(e.field, e.code) for e in refused.value.errors] == [
        ("name", ErrorCode.REQUIRED), ("columns", ErrorCode.INVALID), ("filters", ErrorCode.INVALID)]
    assert (await service.list_query_schemes(session, screen=realtime, user_id=owner)) == []


def test_choose_columns_keeps_the_saved_order_and_defaults_when_empty() -> None:
    screen = get_screen(realtime)

    assert [c.key for c in choose_columns(screen, ["read_at", "meter_code"])] == ["read_at", "meter_code"]
    assert [c.key for c in choose_columns(screen, None)] == list(screen.default_columns)
    with pytest.raises(DomainError) as refused:
        choose_columns(screen, ["meter_code", "meter_code"])
    assert (refused.value.field, refused.value.code) == ("columns", ErrorCode.INVALID)


# --------------------------------------------------------------------------- GraphQL


async def test_save_list_and_delete_through_graphql(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)

    saved = await client.execute(SAVE, {"input": {"screen": "realtime", "name": "GQL 方案", "columns": ["total_m3", "meter_code"],
                                                  "filters": {"status": "online"}, "shared": True}}, token=token)
    scheme = saved["data"]["saveQueryScheme"]["scheme"]
    listed = await client.execute(LIST, {"screen": "realtime"}, token=token)
    deleted = await client.execute(DELETE, {"id": scheme["id"]}, token=token)
    after = await client.execute(LIST, {"screen": "realtime"}, token=token)

    assert saved["data"]["saveQueryScheme"]["errors"] == []
    assert (scheme["columns"], scheme["filters"], scheme["shared"], scheme["mine"]) == (
        ["total_m3", "meter_code"], {"status": "online"}, True, True)
    assert scheme["id"] in [s["id"] for s in listed["data"]["querySchemes"]]
    assert deleted["data"]["deleteQueryScheme"] == {"deletedId": scheme["id"], "errors": []}
    assert scheme["id"] not in [s["id"] for s in after["data"]["querySchemes"]]


async def test_invalid_scheme_comes_back_as_field_errors(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)

    saved = await client.execute(SAVE, {"input": {"screen": "history", "name": "x", "columns": ["nope"]}}, token=token)

    assert saved["data"]["saveQueryScheme"]["scheme"] is None
    assert [(e["field"], e["code"]) for e in saved["data"]["saveQueryScheme"]["errors"]] == [("columns", "INVALID")]


async def test_another_user_cannot_delete_a_shared_scheme(client: GraphQLClient, world: World, engine_for_module) -> None:  # type: ignore[no-untyped-def]
    from backend.db import session_factory

    async with session_factory(engine_for_module)() as session, session.begin():
        reader = await make_staff(session, permissions={"readings:read"}, areas=[world.tree.east])
    admin = await client.login(world.admin.username, world.admin.password)
    saved = await client.execute(SAVE, {"input": {"screen": "realtime", "name": "共享", "shared": True}}, token=admin)
    scheme_id = saved["data"]["saveQueryScheme"]["scheme"]["id"]
    token = await client.login(reader.username, reader.password)

    listed = await client.execute(LIST, {"screen": "realtime"}, token=token)
    refused = await client.execute(DELETE, {"id": scheme_id}, token=token)

    assert {s["id"]: s["mine"] for s in listed["data"]["querySchemes"]}[scheme_id] is False
    assert [e["extensions"]["code"] for e in refused["errors"]] == ["FORBIDDEN"]


async def test_screen_columns_and_schemes_need_the_screens_permission(client: GraphQLClient, world: World) -> None:
    admin = await client.login(world.admin.username, world.admin.password)
    operator = await client.login(world.east_operator.username, world.east_operator.password)

    columns = await client.execute(COLUMNS, {"screen": "realtime"}, token=admin)
    refused = await client.execute(COLUMNS, {"screen": "realtime"}, token=operator)
    refused_save = await client.execute(SAVE, {"input": {"screen": "realtime", "name": "x"}}, token=operator)

    offered = columns["data"]["screenColumns"]
    assert {"key": "total_m3", "title": "累积流量(t)", "titleEn": "Total (t)", "default": True} in offered
    assert [e["extensions"]["code"] for e in refused["errors"]] == ["FORBIDDEN"]
    assert [e["extensions"]["code"] for e in refused_save["errors"]] == ["FORBIDDEN"]


async def test_a_scheme_is_a_node(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    saved = await client.execute(SAVE, {"input": {"screen": "history", "name": "节点"}}, token=token)
    scheme_id = saved["data"]["saveQueryScheme"]["scheme"]["id"]

    found = await client.execute("query($id: ID!) { node(id: $id) { id ... on QueryScheme { name } } }", {"id": scheme_id},
                                 token=token)
    missing = await client.execute("query($id: ID!) { node(id: $id) { id } }", {"id": encode_id("QueryScheme", 10**9)},
                                   token=token)

    assert found["data"]["node"] == {"id": scheme_id, "name": "节点"}
    assert [e["extensions"]["code"] for e in missing["errors"]] == ["NOT_FOUND"]


async def test_two_saves_of_a_new_name_at_once_both_succeed_with_one_scheme(engine_for_module: AsyncEngine) -> None:
    sessions = session_factory(engine_for_module)
    async with sessions() as session, session.begin():
        owner = await _owner(session)

    async def save(columns: list[str]) -> int:
        async with sessions() as session, session.begin():
            scheme = await service.save_query_scheme(session, owner_user_id=owner, screen=realtime, name="双击保存",
                                                     columns=columns, filters={})
            await asyncio.sleep(0.1)  # both transactions are open at once
            assert scheme.id is not None
            return scheme.id

    first, second = await asyncio.gather(save(["meter_code"]), save(["total_m3"]))

    assert first == second
