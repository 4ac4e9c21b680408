"""Meter, concentrator and assignment Excel over HTTP: templates, whole-file validation,
all-or-nothing idempotent imports, scoped and filtered exports that round-trip."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import openpyxl
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.app import create_app
from backend.archives import http as archives_http
from backend.archives.models import Area, Household, StationKind
from backend.archives.service import (
    MeterModelFields,
    StationChanges,
    TerminalPasswordCipher,
    attach_instrument,
    create_station,
    save_meter_model,
)
from backend.db import create_engine, session_factory
from backend.graphql.relay import encode_id
from tests.factories import AreaTree, Staff, make_area_tree, make_household, make_staff
from tests.graphql.client import GraphQLClient, api_settings

CONCENTRATOR_HEADER = ("行政区划码", "终端地址", "名称", "区域编码", "连接方式", "串口地址", "主机", "端口", "终端密码")
METER_HEADER = ("表计编码", "表计名称", "表地址", "表类型", "类别", "厂家", "型号", "区域编码", "初始读数", "集中器地址", "测量点号")
ASSIGNMENT_HEADER = ("表计编码", "户号", "起始时间", "结束时间", "起始读数", "结束读数")


@dataclass
class World:
    tree: AreaTree
    admin: Staff
    east_operator: Staff
    east_households: list[Household]
    west_household: Household


@pytest.fixture(scope="module")
async def module_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=2, max_overflow=2)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
async def world(module_engine: AsyncEngine) -> World:
    async with session_factory(module_engine)() as session, session.begin():
        tree = await make_area_tree(session)
        admin = await make_staff(session, areas=[tree.company])
        east = await make_staff(session, permissions={"archives:read", "archives:manage"}, areas=[tree.east])
        east_households = [await make_household(session, area=tree.east_community, name=n) for n in ("张伟", "李娜", "王芳")]
        west_household = await make_household(session, area=tree.west_community, name="赵强")
        await save_meter_model(session, fields=MeterModelFields(vendor="宁波水表", name="LXSY-15E", caliber=15))
    return World(tree, admin, east, east_households, west_household)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    app = create_app(api_settings(), database_url)
    if not any(getattr(route, "path", None) == archives_http.METERS.import_path for route in app.router.routes):
        app.router.routes.extend(archives_http.routes(app.state.sessions, app.state.read_engine, app.state.settings))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        yield GraphQLClient(http)
    await app.state.engine.dispose()
    await app.state.read_engine.dispose()


def _ref(area: Area) -> str:
    return f"#{area.id}"


def _workbook(header: tuple[str, ...], *rows: tuple[Any, ...]) -> bytes:
    workbook = openpyxl.Workbook()
    sheet: Any = workbook.active
    sheet.append(list(header))
    for row in rows:
        sheet.append(list(row))
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def _rows(content: bytes) -> list[tuple[Any, ...]]:
    return list(openpyxl.load_workbook(io.BytesIO(content)).active.iter_rows(values_only=True))  # type: ignore[union-attr]


async def _import(client: GraphQLClient, token: str, sheet: archives_http.DeviceSheet, content: bytes, *,
                  update: bool = False) -> httpx.Response:
    return await client.http.post(
        sheet.import_path, headers={"Authorization": f"Bearer {token}"},
        files={"file": (f"{sheet.kind}.xlsx", content)}, data={"updateExisting": "true" if update else "false"},
    )


async def _export(client: GraphQLClient, token: str, sheet: archives_http.DeviceSheet, **params: str) -> httpx.Response:
    return await client.http.get(sheet.export_path, params=params, headers={"Authorization": f"Bearer {token}"})


async def _scalar(engine: AsyncEngine, statement: str, **params: Any) -> Any:
    async with session_factory(engine)() as session:
        return (await session.execute(text(statement), params)).scalar_one()


async def test_templates_read_back_as_the_import_sheets(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.east_operator.username, world.east_operator.password)
    for sheet, first in ((archives_http.METERS, ("表计编码", "Meter code")), (archives_http.CONCENTRATORS, ("行政区划码", "Region code")),
                         (archives_http.ASSIGNMENTS, ("表计编码", "Meter code"))):
        response = await client.http.get(sheet.template_path, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        workbook = openpyxl.load_workbook(io.BytesIO(response.content))
        assert workbook.sheetnames == [sheet.import_sheet.name, "说明"]
        rows = list(workbook[sheet.import_sheet.name].iter_rows(values_only=True))
        assert (rows[0][0], rows[1][0]) == first
        # The template's own example row imports as far as the file checks go (headers recognised).
        assert len(rows) == 3


async def test_devices_round_trip_unchanged_and_an_edit_updates_one_row(
    client: GraphQLClient, world: World, module_engine: AsyncEngine
) -> None:
    admin = await client.login(world.admin.username, world.admin.password)
    east_c, west_c = _ref(world.tree.east_community), _ref(world.tree.west_community)
    concentrators = _workbook(
        CONCENTRATOR_HEADER,
        ("3301", 901, "翠湖集中器01", east_c, "TCP登录", None, None, None, "pw-901"),
        ("3301", 902, "翠湖集中器02", east_c, "串口", "/dev/ttyUSB0", None, None, None),
        ("3301", 903, "西山集中器01", west_c, "DTU透传", "socket://10.0.0.9:9001", "10.0.0.9", 9001, None),
    )
    first = await _import(client, admin, archives_http.CONCENTRATORS, concentrators)
    assert first.json() == {"inserted": 3, "updated": 0, "unchanged": 0, "skipped": 0, "errors": [], "errorCount": 0}, first.text
    meters = _workbook(
        METER_HEADER,
        ("RT0001", "翠湖1号楼101", "20269000000001", "冷水表", "户表", "宁波水表", "LXSY-15E", east_c, 0, "3301-901", 1),
        ("RT0002", "翠湖1号楼102", "20269000000002", "冷水表", None, None, None, east_c, 12.5, "3301-901", 2),
        ("RT0003", "西山2号楼201", "20269000000003", "热水表", "户表", None, None, west_c, None, "3301-903", 1),
        ("RT0004", "东干管流量计", "20269000000004", "流量计", "监测点", None, None, east_c, None, None, None),
    )
    assert (await _import(client, admin, archives_http.METERS, meters)).json()["inserted"] == 4
    accounts = [h.account_no for h in world.east_households]
    assignments = _workbook(
        ASSIGNMENT_HEADER,
        ("RT0001", accounts[0], "2025-01-01 08:00:00", "2025-06-30 18:00:00", 0, 50.25),
        ("RT0001", accounts[1], "2025-07-01", None, 50.25, None),
        ("RT0002", accounts[2], "2025-03-15 09:30:00", None, None, None),
        ("RT0003", world.west_household.account_no, "2024-12-01", None, 0, None),
    )
    response = await _import(client, admin, archives_http.ASSIGNMENTS, assignments)
    assert response.json() == {"inserted": 4, "updated": 0, "unchanged": 0, "skipped": 0, "errors": [], "errorCount": 0}, response.text
    assert await _scalar(module_engine, "SELECT string_agg(status, ',' ORDER BY code) FROM meters WHERE code LIKE 'RT%'") == \
        "installed,installed,installed,in_stock"
    assert await _scalar(module_engine, "SELECT start_reading FROM meter_assignments s JOIN meters m ON m.id = s.meter_id "
                                        "WHERE m.code = 'RT0002'") == Decimal("12.5")

    # Export → import of the same files changes nothing.
    for sheet, search in ((archives_http.CONCENTRATORS, "集中器0"), (archives_http.METERS, "RT"), (archives_http.ASSIGNMENTS, "RT")):
        exported = await _export(client, admin, sheet, search=search)
        assert exported.status_code == 200, exported.text
        again = await _import(client, admin, sheet, exported.content, update=True)
        assert again.status_code == 200, again.text
        assert again.json()["inserted"] == 0 and again.json()["updated"] == 0, (sheet.kind, again.json())
        kept = (await _import(client, admin, sheet, exported.content)).json()
        assert kept["unchanged"] > 0 and kept["skipped"] == 0, (sheet.kind, kept)  # identical rows are not "skipped"
    # The terminal password is stored encrypted, never exported, and survives re-imports.
    exported = _rows((await _export(client, admin, archives_http.CONCENTRATORS, search="集中器0")).content)
    assert "终端密码" not in exported[0] and not any("pw-901" in str(cell) for row in exported for cell in row)
    assert [row[:2] for row in exported[2:]] == [("3301", 901), ("3301", 902), ("3301", 903)]
    stored = await _scalar(module_engine, "SELECT terminal_password_encrypted FROM concentrators WHERE terminal_address = 901")
    assert stored != "pw-901" and TerminalPasswordCipher(api_settings().secret()).decrypt(stored) == "pw-901"
    assert (await _import(client, admin, archives_http.CONCENTRATORS, concentrators, update=True)).json()["unchanged"] == 3
    # The password cell is not compared (stored with a fresh nonce): the same file is unchanged.
    assert (await _import(client, admin, archives_http.CONCENTRATORS, concentrators)).json()["unchanged"] == 3

    # One edited cell updates one row.
    meter_rows = _rows((await _export(client, admin, archives_http.METERS, search="RT")).content)
    header = list(meter_rows[0])
    assert [row[0] for row in meter_rows[2:]] == ["RT0001", "RT0002", "RT0003", "RT0004"]
    assert meter_rows[2][header.index("型号")] == "LXSY-15E" and meter_rows[2][header.index("集中器地址")] == "3301-901"
    edited = [list(row) for row in meter_rows]
    edited[3][header.index("表计名称")] = "翠湖1号楼102 (改)"
    workbook = openpyxl.Workbook()
    sheet: Any = workbook.active
    for row in edited:
        sheet.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    # Without updateExisting the edited row is skipped, not counted as unchanged, and stays as stored.
    skipped = await _import(client, admin, archives_http.METERS, buffer.getvalue())
    assert skipped.json() == {"inserted": 0, "updated": 0, "unchanged": 3, "skipped": 1, "errors": [], "errorCount": 0}
    assert await _scalar(module_engine, "SELECT name FROM meters WHERE code = 'RT0002'") == "翠湖1号楼102"
    result = await _import(client, admin, archives_http.METERS, buffer.getvalue(), update=True)
    assert result.json() == {"inserted": 0, "updated": 1, "unchanged": 3, "skipped": 0, "errors": [], "errorCount": 0}
    assert await _scalar(module_engine, "SELECT name FROM meters WHERE code = 'RT0002'") == "翠湖1号楼102 (改)"

    assignment_rows = _rows((await _export(client, admin, archives_http.ASSIGNMENTS, search="RT", current="false")).content)
    assert [(row[0], row[2]) for row in assignment_rows[2:]] == [("RT0001", accounts[0])]


async def test_bad_rows_are_listed_and_nothing_is_written(
    client: GraphQLClient, world: World, module_engine: AsyncEngine
) -> None:
    admin = await client.login(world.admin.username, world.admin.password)
    east_c = _ref(world.tree.east_community)
    await _import(client, admin, archives_http.METERS, _workbook(
        METER_HEADER, ("BD0001", "已有水表", "20268000000001", "冷水表", None, None, None, east_c, None, None, None),
    ))
    meters = _workbook(
        METER_HEADER,
        ("BD0002", "好的一行", "20268000000002", "冷水表", None, None, None, east_c, None, None, None),
        ("BD0003", "非 BCD", "2026800000000A", "冷水表", None, None, None, east_c, None, None, None),
        ("BD0004", "太短", "123", "冷水表", None, None, None, east_c, None, None, None),
        ("BD0005", "地址已被占用", "20268000000001", "冷水表", None, None, None, east_c, None, None, None),
        ("BD0006", "未知集中器", "20268000000006", "冷水表", None, None, None, east_c, None, "3301-60000", 1),
        ("BD0007", "文件内重复地址", "20268000000002", "冷水表", None, None, None, east_c, None, None, None),
        ("BD0008", "未知型号", "20268000000008", "冷水表", None, "某厂", "X1", east_c, None, None, None),
        ("BD0009", "测量点无集中器", "20268000000009", "冷水表", None, None, None, east_c, None, None, 3),
    )
    response = await _import(client, admin, archives_http.METERS, meters)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "IMPORT_ROWS_INVALID"
    assert sorted((e["row"], e["column"]) for e in body["errors"]) == [
        (3, "表地址"), (4, "表地址"), (5, "表地址"), (6, "集中器地址"), (7, "表地址"), (8, "型号"), (9, "测量点号"),
    ]
    assert body["errorCount"] == 7
    assert await _scalar(module_engine, "SELECT count(*) FROM meters WHERE code LIKE 'BD%'") == 1

    # A meter serves one household at a time: in the file, and against the database.
    await _import(client, admin, archives_http.METERS, _workbook(
        METER_HEADER, ("BD0010", "分配用", "20268000000010", "冷水表", None, None, None, east_c, None, None, None),
    ))
    accounts = [h.account_no for h in world.east_households]
    assert (await _import(client, admin, archives_http.ASSIGNMENTS, _workbook(
        ASSIGNMENT_HEADER, ("BD0001", accounts[0], "2026-01-01", None, None, None),
    ))).json()["inserted"] == 1
    response = await _import(client, admin, archives_http.ASSIGNMENTS, _workbook(
        ASSIGNMENT_HEADER,
        ("BD0001", accounts[1], "2026-02-01", None, None, None),  # BD0001 already serves accounts[0]
        ("BD0010", accounts[1], "2026-01-01", None, None, None),  # fine alone …
        ("BD0010", accounts[2], "2026-03-01", None, None, None),  # … but overlaps the row above
        ("BD0010", accounts[2], "2025-01-01", "2025-02-01", None, None),  # ended without its end reading
        ("NOPE", "NOPE", "2026-01-01", None, None, None),
        ("BD0010", world.west_household.account_no, "2020-01-01", "2020-02-01", 0, 1),  # an east meter, a west household
    ))
    body = response.json()
    assert response.status_code == 422
    assert sorted((e["row"], e["column"]) for e in body["errors"]) == [
        (2, "起始时间"), (4, "起始时间"), (5, "结束读数"), (6, "户号"), (6, "表计编码"), (7, "户号"),
    ]
    assert [e["message"] for e in body["errors"] if e["row"] == 7] == ["水表只能服务其所在区域 (含下级区域) 内的住户"]
    assert await _scalar(module_engine, "SELECT count(*) FROM meter_assignments s JOIN meters m ON m.id = s.meter_id "
                                        "WHERE m.code LIKE 'BD%'") == 1


async def test_scope_limits_exports_and_imports(client: GraphQLClient, world: World, module_engine: AsyncEngine) -> None:
    admin = await client.login(world.admin.username, world.admin.password)
    east = await client.login(world.east_operator.username, world.east_operator.password)
    east_c, west_c = _ref(world.tree.east_community), _ref(world.tree.west_community)
    await _import(client, admin, archives_http.METERS, _workbook(
        METER_HEADER,
        ("SC0001", "东", "20267000000001", "冷水表", None, None, None, east_c, None, None, None),
        ("SC0002", "西", "20267000000002", "冷水表", None, None, None, west_c, None, None, None),
    ))

    scoped = _rows((await _export(client, east, archives_http.METERS, search="SC")).content)
    everything = _rows((await _export(client, admin, archives_http.METERS, search="SC")).content)
    west_only = _rows((await _export(client, admin, archives_http.METERS, search="SC",
                                     areaId=encode_id("Area", world.tree.west.id))).content)
    assert [row[0] for row in scoped[2:]] == ["SC0001"]
    assert [row[0] for row in everything[2:]] == ["SC0001", "SC0002"]
    assert [row[0] for row in west_only[2:]] == ["SC0002"]
    assert scoped[2][scoped[0].index("所属区域")] == "城东片区 / 翠湖小区"

    refused = await _import(client, east, archives_http.METERS, _workbook(
        METER_HEADER,
        ("SC0002", "西 (改)", "20267000000002", "冷水表", None, None, None, east_c, None, None, None),  # exists outside
        ("SC0003", "新西", "20267000000003", "冷水表", None, None, None, west_c, None, None, None),  # area outside
    ), update=True)
    assert refused.status_code == 422
    assert sorted((e["row"], e["column"]) for e in refused.json()["errors"]) == [(2, "表计编码"), (3, "区域编码")]
    assert await _scalar(module_engine, "SELECT name FROM meters WHERE code = 'SC0002'") == "西"
    bad_filter = await _export(client, admin, archives_http.METERS, status="nope")
    assert bad_filter.status_code == 400


async def test_an_import_cannot_move_or_retype_a_station_instrument(
    client: GraphQLClient, world: World, module_engine: AsyncEngine
) -> None:
    admin = await client.login(world.admin.username, world.admin.password)
    east_c, west_c = _ref(world.tree.east_community), _ref(world.tree.west_community)
    await _import(client, admin, archives_http.METERS, _workbook(
        METER_HEADER,
        ("GZ0001", "东干管流量计", "20266000000001", "流量计", "监测点", None, None, east_c, None, None, None),
        ("GZ0002", "东干管压力计", "20266000000002", "压力计", "监测点", None, None, east_c, None, None, None),
    ))
    async with session_factory(module_engine)() as session, session.begin():
        station = await create_station(session, fields=StationChanges(code="GZ-EAST", name="东干管网",
                                                                      kind=StationKind.trunk_main,
                                                                      area_id=world.tree.east_community.id))
        for code in ("GZ0001", "GZ0002"):
            meter_id = (await session.execute(text("SELECT id FROM meters WHERE code = :c"), {"c": code})).scalar_one()
            await attach_instrument(session, station_id=station.id, meter_id=meter_id)  # type: ignore[arg-type]

    refused = await _import(client, admin, archives_http.METERS, _workbook(
        METER_HEADER,
        ("GZ0001", "东干管流量计", "20266000000001", "流量计", "监测点", None, None, west_c, None, None, None),
        ("GZ0002", "东干管压力计", "20266000000002", "冷水表", "监测点", None, None, east_c, None, None, None),
    ), update=True)

    assert refused.status_code == 422, refused.text
    assert sorted((e["row"], e["column"]) for e in refused.json()["errors"]) == [(2, "区域编码"), (3, "表类型")]
    assert await _scalar(module_engine, "SELECT string_agg(m.meter_type || '@' || a.name, ',' ORDER BY m.code) "
                                        "FROM meters m JOIN areas a ON a.id = m.area_id WHERE m.code LIKE 'GZ%'") == (
        "flow_monitor@翠湖小区,pressure_monitor@翠湖小区")
