"""Households' room (房间号) and its labels: 1-1-0101 (楼-单元-房间) and 翠湖小区1-1-0101, the
单位名称 of 实时数据, derived from the area tree by one rule, on the household, in the
households sheet, and in 实时数据's rows and search."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import openpyxl
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from backend.archives import excel as archive_excel
from backend.archives import service
from backend.archives.errors import InvalidRoom
from backend.archives.models import Area, AreaKind, Household, MeterType
from backend.auth.scope import Reach
from backend.db import session_factory
from backend.errors import ErrorCode
from backend.exports.excel import ImportRowsInvalid, read_rows
from backend.graphql.relay import encode_id
from backend.readings import browse
from tests.factories import AreaTree, Staff, make_area_tree, make_staff, unique
from tests.graphql.client import GraphQLClient, graphql_client


@dataclass
class World:
    tree: AreaTree
    unit: Area
    building_without_units: Area
    admin: Staff
    households: dict[str, Household]


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine) -> World:
    """翠湖小区: 1号楼 1单元 holds 张伟 (0101, served by a meter) and 王芳 (no room); 2栋 has
    no units and holds 李娜 (0203)."""
    async with session_factory(committed_engine)() as session, session.begin():
        tree = await make_area_tree(session)
        building = await service.create_area(session, name="1号楼", kind=AreaKind.building, parent_id=tree.east_community.id)
        unit = await service.create_area(session, name="1单元", kind=AreaKind.unit, parent_id=building.id)
        flat = await service.create_area(session, name="2栋", kind=AreaKind.building, parent_id=tree.east_community.id)
        admin = await make_staff(session, areas=[tree.company])
        households = {
            name: await service.create_household(session, account_no=unique("RM"), name=name, area_id=area.id, room=room)  # type: ignore[arg-type]
            for name, area, room in (("张伟", unit, "0101"), ("王芳", unit, None), ("李娜", flat, "0203"))
        }
        meter = await service.create_meter(session, fields=service.MeterChanges(
            name="户表", code=unique("RM-M"), address=f"{abs(hash(unique('RM'))) % 10**14:014d}",
            meter_type=MeterType.cold_water, area_id=tree.east_community.id))
        await service.assign_meter(session, meter_id=meter.id, household_id=households["张伟"].id,  # type: ignore[arg-type]
                                   valid_from=datetime(2026, 1, 1, tzinfo=UTC), start_reading=Decimal(0))
    return World(tree, unit, flat, admin, households)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(database_url) as api:
        yield api


async def test_labels_name_building_unit_and_room_after_the_community(committed_engine: AsyncEngine, world: World) -> None:
    ids = {name: household.id for name, household in world.households.items()}
    async with session_factory(committed_engine)() as session:
        labels = await service.room_labels_by_household_ids(session, list(ids.values()))  # type: ignore[arg-type]

    assert {name: labels[pk] for name, pk in ids.items()} == {
        "张伟": service.RoomLabels("1-1-0101", "翠湖小区1-1-0101"),
        "王芳": service.RoomLabels(None, None),
        "李娜": service.RoomLabels("2-0203", "翠湖小区2-0203"),  # a building without units
    }


HOUSEHOLD = "query($id: ID!) { node(id: $id) { ... on Household { room roomLabel unitName } } }"
CREATE = """
mutation($input: HouseholdInput!) {
  createHousehold(input: $input) { household { room roomLabel unitName } errors { field code } }
}"""
UPDATE = """
mutation($id: ID!, $input: UpdateHouseholdInput!) {
  updateHousehold(id: $id, input: $input) { household { room roomLabel unitName } errors { field code } }
}"""


async def test_household_shows_its_room_and_labels(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    found = await client.execute(HOUSEHOLD, {"id": encode_id("Household", world.households["张伟"].id)}, token=token)  # type: ignore[arg-type]

    assert found["data"] == {"node": {"room": "0101", "roomLabel": "1-1-0101", "unitName": "翠湖小区1-1-0101"}}


async def test_a_room_is_set_changed_and_cleared_through_the_forms(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    created = await client.execute(CREATE, {"input": {
        "accountNo": unique("RM"), "name": "赵敏", "areaId": encode_id("Area", world.unit.id), "room": "0302"}}, token=token)  # type: ignore[arg-type]
    assert created["data"]["createHousehold"] == {
        "household": {"room": "0302", "roomLabel": "1-1-0302", "unitName": "翠湖小区1-1-0302"}, "errors": []}

    household_id = encode_id("Household", world.households["王芳"].id)  # type: ignore[arg-type]
    changed = await client.execute(UPDATE, {"id": household_id, "input": {"room": "0102"}}, token=token)
    assert changed["data"]["updateHousehold"]["household"] == {
        "room": "0102", "roomLabel": "1-1-0102", "unitName": "翠湖小区1-1-0102"}
    cleared = await client.execute(UPDATE, {"id": household_id, "input": {"room": " "}}, token=token)
    assert cleared["data"]["updateHousehold"]["household"] == {"room": None, "roomLabel": None, "unitName": None}


async def test_a_malformed_room_is_a_field_error_on_the_form(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    refused = await client.execute(CREATE, {"input": {
        "accountNo": unique("RM"), "name": "钱进", "areaId": encode_id("Area", world.unit.id), "room": "01 01"}}, token=token)  # type: ignore[arg-type]

    assert refused["data"]["createHousehold"] == {"household": None, "errors": [{"field": "room", "code": "INVALID_ROOM"}]}


@pytest.mark.parametrize("room", ["01 01", "-0101", "0101-", "０１０１", "0101\n", "室0101", "A" * 17])
async def test_create_household_refuses_a_malformed_room_and_writes_nothing(session: AsyncSession, room: str) -> None:
    tree = await make_area_tree(session)
    before = (await session.execute(select(func.count()).select_from(Household))).scalar_one()

    with pytest.raises(InvalidRoom) as refused:
        await service.create_household(session, account_no=unique("RM"), name="孙丽", area_id=tree.east_community.id,  # type: ignore[arg-type]
                                       room=room)

    assert (refused.value.code, refused.value.field) == (ErrorCode.INVALID_ROOM, "room")
    assert (await session.execute(select(func.count()).select_from(Household))).scalar_one() == before


def _sheet(*rows: tuple[Any, ...]) -> bytes:
    book = openpyxl.Workbook()
    sheet: Any = book.active
    sheet.append(["户号", "户名", "区域编码", "房间号"])
    for row in rows:
        sheet.append(list(row))
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


async def test_the_households_sheet_imports_rooms_and_refuses_malformed_ones(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    area = f"#{tree.east_community.id}"
    first, second = unique("RM"), unique("RM")
    refused = read_rows(archive_excel.HOUSEHOLD_SHEET, _sheet((first, "甲", area, "0101"), (second, "乙", area, "01 02")))
    assert [(error.row, error.column) for error in refused.errors] == [(3, "房间号")]
    with pytest.raises(ImportRowsInvalid):
        refused.raise_if_invalid()

    sheet = read_rows(archive_excel.HOUSEHOLD_SHEET, _sheet((first, "甲", area, "0101"), (second, "乙", area, None)))
    result = await archive_excel.import_households(session, sheet=sheet, scope_patterns=["/%"], update_existing=False,
                                                   today=datetime(2026, 1, 1).date())

    assert result.inserted == 2
    stored = dict((await session.execute(select(Household.account_no, Household.room).where(
        Household.account_no.in_([first, second])))).all())  # type: ignore[attr-defined]
    assert stored == {first: "0101", second: None}


async def test_the_households_export_writes_the_room(committed_engine: AsyncEngine, world: World) -> None:
    keys = archive_excel.HOUSEHOLD_EXPORT_SHEET.keys
    raw = await committed_engine.raw_connection()
    try:
        rows = [row async for row in archive_excel.household_export_rows(
            raw.driver_connection, scope_patterns=[world.tree.east_community.path + "%"],
            export_filter=archive_excel.HouseholdExportFilter())]
    finally:
        raw.close()

    rooms = {row[keys.index("name")]: row[keys.index("room")] for row in rows}
    assert (rooms["张伟"], rooms["李娜"]) == ("0101", "0203")
    assert archive_excel.HOUSEHOLD_EXPORT_SHEET.columns[keys.index("room")].header == "房间号"


async def test_realtime_rows_carry_the_unit_name_and_are_found_by_it(committed_engine: AsyncEngine, world: World) -> None:
    reach = Reach(scope_patterns=[world.tree.company.path + "%"])
    async with session_factory(committed_engine)() as session:
        pages = {search: await browse.realtime_page(
            session, flt=browse.RealtimeFilter(search=search), reach=reach, now=datetime(2026, 2, 1, tzinfo=UTC),
            offset=0, limit=10) for search in ("1-1-0101", "翠湖小区1-1", "1-1-0102")}

    (row,) = pages["1-1-0101"].rows
    assert (row["household_name"], row["room_label"], row["unit_name"]) == ("张伟", "1-1-0101", "翠湖小区1-1-0101")
    assert [r["household_name"] for r in pages["翠湖小区1-1"].rows] == ["张伟"]
    assert pages["1-1-0102"].rows == []
