"""The area tree over Excel (区域导入/导出): rows naming their parent by code, in any order,
inserted all at once with their paths; refusals listed per row with nothing written; a
scoped export that re-imports unchanged; stored areas renamed but never moved."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

import openpyxl
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.archives import http as archives_http
from backend.db import session_factory
from backend.graphql.relay import encode_id
from tests.archives.test_devices_excel import _export, _import, _rows, _scalar, _workbook
from tests.factories import AreaTree, Staff, make_area_tree, make_staff, unique
from tests.graphql.client import GraphQLClient, graphql_client

AREAS = archives_http.AREAS
HEADER = ("区域编码", "区域名称", "类型", "上级区域编码", "地址")


@dataclass
class World:
    tree: AreaTree
    admin: Staff
    east_operator: Staff
    prefix: str


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine) -> World:
    async with session_factory(committed_engine)() as session, session.begin():
        tree = await make_area_tree(session)
        admin = await make_staff(session, areas=[tree.company])
        east = await make_staff(session, permissions={"archives:read", "archives:manage"}, areas=[tree.east])
    return World(tree, admin, east, unique("AX"))


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(database_url) as api:
        yield api


def ref(area: object) -> str:
    return f"#{area.id}"  # type: ignore[attr-defined]


async def test_template_is_the_import_sheet(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.east_operator.username, world.east_operator.password)

    response = await client.http.get(AREAS.template_path, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200, response.text
    workbook = openpyxl.load_workbook(io.BytesIO(response.content))
    rows = list(workbook[AREAS.import_sheet.name].iter_rows(values_only=True))
    assert rows[0][:4] == ("区域编码", "区域名称", "类型", "上级区域编码")
    assert rows[1][:4] == ("Area code", "Area name", "Kind", "Parent code")


async def test_a_building_and_its_units_import_in_any_order_and_round_trip(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine,
) -> None:
    token = await client.login(world.east_operator.username, world.east_operator.password)
    p = world.prefix
    content = _workbook(HEADER,
                        (f"{p}B1U2", "2单元", "单元", f"{p}B1", None),  # before its building: order is free
                        (f"{p}B1U1", "1单元", "unit", f"{p}B1", None),
                        (f"{p}B1", "1号楼", "楼栋", ref(world.tree.east_community), "翠湖路 1 号"))

    first = await _import(client, token, AREAS, content)
    again = await _import(client, token, AREAS, content)
    paths = {code: await _scalar(committed_engine, "SELECT path FROM areas WHERE code = :code", code=code)
             for code in (f"{p}B1", f"{p}B1U1", f"{p}B1U2")}
    exported = await _export(client, token, AREAS, areaId=encode_id("Area", world.tree.east_community.id))
    rows = _rows(exported.content)
    back = await _import(client, token, AREAS, _workbook(rows[0][:5], *(row[:5] for row in rows[2:])))

    assert first.status_code == 200, first.text
    assert first.json() == {"inserted": 3, "updated": 0, "unchanged": 0, "skipped": 0, "errors": [], "errorCount": 0}
    assert again.json()["inserted"] == 0 and again.json()["unchanged"] == 3
    building = paths[f"{p}B1"]
    assert building.startswith(world.tree.east_community.path) and building.count("/") == world.tree.east_community.path.count("/") + 1
    assert paths[f"{p}B1U1"].startswith(building) and paths[f"{p}B1U2"].startswith(building)
    assert exported.status_code == 200
    # Parents before children (the units' order between them is their ids').
    assert [row[:4] for row in rows[2:4]] == [
        (ref(world.tree.east_community), "翠湖小区", "小区", ref(world.tree.east)),
        (f"{p}B1", "1号楼", "楼栋", ref(world.tree.east_community)),
    ]
    assert sorted(row[:4] for row in rows[4:]) == [(f"{p}B1U1", "1单元", "单元", f"{p}B1"),
                                                   (f"{p}B1U2", "2单元", "单元", f"{p}B1")]
    assert back.json()["unchanged"] == 4, back.text


async def test_bad_rows_are_listed_and_nothing_is_written(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine,
) -> None:
    token = await client.login(world.east_operator.username, world.east_operator.password)
    p = world.prefix
    before = await _scalar(committed_engine, "SELECT count(*) FROM areas")
    content = _workbook(HEADER,
                        (f"{p}OK", "好楼", "楼栋", ref(world.tree.east_community), None),
                        (f"{p}UP", "倒挂", "片区", ref(world.tree.east_community), None),     # a district under a community
                        (f"{p}LOOP1", "环1", "楼栋", f"{p}LOOP2", None),
                        (f"{p}LOOP2", "环2", "楼栋", f"{p}LOOP1", None),
                        (f"{p}WEST", "西楼", "楼栋", ref(world.tree.west_community), None),  # outside the scope
                        (f"{p}OK", "重复", "楼栋", ref(world.tree.east_community), None),
                        ("#999999999", "无编码", "楼栋", ref(world.tree.east_community), None))

    response = await _import(client, token, AREAS, content)

    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "IMPORT_ROWS_INVALID" and body["inserted"] == 0
    found = {(error["row"], error["column"]) for error in body["errors"]}
    # Data rows count from 2 (one header row here). A cycle always breaks the kind order
    # somewhere, so its rows are refused there.
    assert found == {(3, "类型"), (4, "类型"), (5, "类型"), (6, "上级区域编码"), (7, "区域编码"), (8, "区域编码")}
    assert await _scalar(committed_engine, "SELECT count(*) FROM areas") == before


async def test_a_stored_area_is_renamed_with_update_existing_and_never_moved(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine,
) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    code = f"{world.prefix}R"
    await _import(client, token, AREAS, _workbook(HEADER, (code, "旧名", "楼栋", ref(world.tree.east_community), None)))

    renamed = _workbook(HEADER, (code, "新名", "楼栋", ref(world.tree.east_community), None))
    skipped = await _import(client, token, AREAS, renamed)
    updated = await _import(client, token, AREAS, renamed, update=True)
    moved = await _import(client, token, AREAS, _workbook(HEADER, (code, "新名", "楼栋", ref(world.tree.west_community), None)),
                          update=True)

    assert skipped.json()["skipped"] == 1
    assert updated.json()["updated"] == 1
    assert await _scalar(committed_engine, "SELECT name FROM areas WHERE code = :code", code=code) == "新名"
    assert moved.status_code == 422
    assert [error["column"] for error in moved.json()["errors"]] == ["上级区域编码"]


async def test_scoped_export_lists_only_areas_in_scope(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.east_operator.username, world.east_operator.password)

    rows = _rows((await _export(client, token, AREAS)).content)

    names = {row[1] for row in rows[2:]}
    assert "西山名苑" not in names and "城西片区" not in names
    assert {"城东片区", "翠湖小区"} <= names
