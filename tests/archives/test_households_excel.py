"""Household Excel over HTTP: template, all-or-nothing idempotent import, scoped export."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import openpyxl
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.app import create_app
from backend.archives import http as archives_http
from backend.archives.models import Area
from backend.audit.models import AuditEntry
from backend.db import create_engine, session_factory
from backend.graphql.relay import encode_id
from tests.factories import AreaTree, Staff, make_area_tree, make_staff
from tests.graphql.client import GraphQLClient, api_settings

HEADER = ("户号", "户名", "区域编码", "地址", "联系电话", "用户类型", "人口数")


@dataclass
class World:
    tree: AreaTree
    admin: Staff
    east_operator: Staff
    reader: Staff


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
        reader = await make_staff(session, permissions={"archives:read"}, areas=[tree.company])
    return World(tree, admin, east, reader)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    app = create_app(api_settings(), database_url)
    if not any(getattr(route, "path", None) == archives_http.IMPORT_PATH for route in app.router.routes):
        app.router.routes.extend(archives_http.routes(app.state.sessions, app.state.read_engine, app.state.settings))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        yield GraphQLClient(http)
    await app.state.engine.dispose()
    await app.state.read_engine.dispose()


def _ref(area: Area) -> str:
    return f"#{area.id}"


def _workbook(*rows: tuple[Any, ...], header: tuple[str, ...] = HEADER) -> bytes:
    workbook = openpyxl.Workbook()
    sheet: Any = workbook.active
    sheet.append(list(header))
    for row in rows:
        sheet.append(list(row))
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


async def _import(client: GraphQLClient, token: str, content: bytes, *, update: bool = False) -> httpx.Response:
    return await client.http.post(
        archives_http.IMPORT_PATH, headers={"Authorization": f"Bearer {token}"},
        files={"file": ("households.xlsx", content)}, data={"updateExisting": "true" if update else "false"},
    )


async def _count(engine: AsyncEngine, prefix: str) -> int:
    async with session_factory(engine)() as session:
        found: int = (await session.execute(
            text("SELECT count(*) FROM households WHERE account_no LIKE :p"), {"p": prefix + "%"}
        )).scalar_one()
        return found


async def test_template_reads_back_as_the_import_sheet(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.reader.username, world.reader.password)

    response = await client.http.get(archives_http.TEMPLATE_PATH, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    workbook = openpyxl.load_workbook(io.BytesIO(response.content))
    assert workbook.sheetnames == ["住户", "说明"]
    rows = list(workbook["住户"].iter_rows(values_only=True))
    assert rows[0][:3] == ("户号", "户名", "区域编码") and rows[1][:3] == ("Account no.", "Name", "Area code")


async def test_import_inserts_then_reimport_changes_nothing_then_an_edit_updates_one_row(
    client: GraphQLClient, world: World, module_engine: AsyncEngine
) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    rows = [
        ("A1001", "张伟", _ref(world.tree.east_community), "翠湖小区1号楼101", "13800000011", "居民", 3),
        ("A1002", "李娜", _ref(world.tree.west_community), "西山名苑2号楼202", "0571-88880000", "非居民", None),
        ("A1003", "王芳", _ref(world.tree.east), "", None, None, 5),
    ]

    first = await _import(client, token, _workbook(*rows))
    again = await _import(client, token, _workbook(*rows), update=True)
    edited = await _import(client, token, _workbook(rows[0], (*rows[1][:1], "李娜娜", *rows[1][2:]), rows[2]), update=True)

    assert first.status_code == 200, first.text
    assert first.json() == {"inserted": 3, "updated": 0, "unchanged": 0, "skipped": 0, "errors": [], "errorCount": 0}
    assert again.json() == {"inserted": 0, "updated": 0, "unchanged": 3, "skipped": 0, "errors": [], "errorCount": 0}
    assert edited.json() == {"inserted": 0, "updated": 1, "unchanged": 2, "skipped": 0, "errors": [], "errorCount": 0}
    async with session_factory(module_engine)() as session:
        stored = (await session.execute(text(
            "SELECT h.account_no, h.name, h.customer_type, h.population, h.phone, o.name AS owner FROM households h "
            "JOIN household_owners o ON o.household_id = h.id AND o.valid_to IS NULL "
            "WHERE account_no LIKE 'A100%' ORDER BY account_no"
        ))).all()
        logged = (await session.execute(
            select(AuditEntry.summary).where(AuditEntry.action == "importHouseholds").order_by(AuditEntry.id)  # type: ignore[arg-type]
        )).scalars().all()
    assert [tuple(row) for row in stored] == [
        ("A1001", "张伟", "residential", 3, "13800000011", "张伟"),
        ("A1002", "李娜娜", "non_residential", 3, "0571-88880000", "李娜娜"),
        ("A1003", "王芳", "residential", 5, None, "王芳"),
    ]
    assert logged[-3:] == ["导入住户: 新增 3, 更新 0, 未变 0, 跳过 0", "导入住户: 新增 0, 更新 0, 未变 3, 跳过 0",
                           "导入住户: 新增 0, 更新 1, 未变 2, 跳过 0"]


async def test_bad_rows_are_all_listed_and_nothing_is_written(
    client: GraphQLClient, world: World, module_engine: AsyncEngine
) -> None:
    token = await client.login(world.east_operator.username, world.east_operator.password)
    content = _workbook(
        ("B2001", "赵强", _ref(world.tree.east_community), "", "13800000012", "居民", 3),  # fine
        ("B2002", "钱军", _ref(world.tree.west_community), "", None, None, None),  # outside the east scope
        ("B2003", "孙丽", "#999999999", "", "12345", "居民", 0),  # bad phone, population 0 (and an unknown area)
        ("B2001", "周杰", _ref(world.tree.east), "", None, "公司", None),  # duplicate, bad type
    )

    response = await _import(client, token, content)

    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "IMPORT_ROWS_INVALID" and body["errorCount"] == 4
    # Row 4's unknown area is not looked up: a row already bad in the sheet skips the database checks.
    assert sorted((e["row"], e["column"]) for e in body["errors"]) == sorted(
        [(3, "区域编码"), (4, "人口数"), (4, "联系电话"), (5, "用户类型")]
    )
    assert [e["row"] for e in body["errors"]] == [3, 4, 4, 5]
    assert all(e["message"] and e["messageEn"] for e in body["errors"])
    assert await _count(module_engine, "B200") == 0


async def test_file_level_refusals(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    reader = await client.login(world.reader.username, world.reader.password)

    not_xlsx = await _import(client, token, b"account_no,name\n1,x\n")
    missing = await _import(client, token, _workbook(("C1", "x"), header=("户号", "户名")))
    forbidden = await _import(client, reader, _workbook())
    anonymous = await client.http.post(archives_http.IMPORT_PATH, files={"file": ("x.xlsx", b"")})

    assert (not_xlsx.status_code, not_xlsx.json()["errors"][0]["extensions"]["code"]) == (400, "NOT_XLSX")
    assert (missing.status_code, missing.json()["errors"][0]["extensions"]["code"]) == (400, "MISSING_COLUMNS")
    assert "区域编码" in missing.json()["errors"][0]["message"]
    assert forbidden.status_code == 403
    assert anonymous.status_code == 401


async def test_without_update_existing_a_differing_row_is_skipped_and_an_identical_one_unchanged(
    client: GraphQLClient, world: World, module_engine: AsyncEngine
) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    rows = [
        ("S2001", "赵敏", _ref(world.tree.east_community), "翠湖小区3号楼301", "13800000031", "居民", 2),
        ("S2002", "钱进", _ref(world.tree.east_community), "翠湖小区3号楼302", None, None, None),
    ]
    assert (await _import(client, token, _workbook(*rows))).json()["inserted"] == 2

    edited = await _import(client, token, _workbook(rows[0], (*rows[1][:1], "钱进进", *rows[1][2:]),
                                                    ("S2003", "孙丽", _ref(world.tree.east), "", None, None, None)))

    assert edited.json() == {"inserted": 1, "updated": 0, "unchanged": 1, "skipped": 1, "errors": [], "errorCount": 0}
    async with session_factory(module_engine)() as session:
        names = (await session.execute(text(
            "SELECT string_agg(name, ',' ORDER BY account_no) FROM households WHERE account_no LIKE 'S200%'"))).scalar_one()
        summary = (await session.execute(select(AuditEntry.summary).where(AuditEntry.action == "importHouseholds")
                                         .order_by(AuditEntry.id.desc()).limit(1))).scalar_one()
    assert names == "赵敏,钱进,孙丽"  # the differing row was left as stored
    assert summary.endswith("未变 1, 跳过 1")


async def test_export_is_scoped_filtered_and_round_trips_unchanged(
    client: GraphQLClient, world: World, module_engine: AsyncEngine
) -> None:
    admin = await client.login(world.admin.username, world.admin.password)
    await _import(client, admin, _workbook(
        ("E3001", "吴磊", _ref(world.tree.east_community), "东1", "13800000013", "特种", 2),
        ("E3002", "郑敏", _ref(world.tree.west_community), "西1", None, "居民", None),
    ))
    east = await client.login(world.east_operator.username, world.east_operator.password)

    scoped = await client.http.get(archives_http.EXPORT_PATH, params={"search": "E300"}, headers={"Authorization": f"Bearer {east}"})
    everything = await client.http.get(archives_http.EXPORT_PATH, params={"search": "E300"}, headers={"Authorization": f"Bearer {admin}"})
    west_only = await client.http.get(
        archives_http.EXPORT_PATH, params={"search": "E300", "areaId": encode_id("Area", world.tree.west.id)},
        headers={"Authorization": f"Bearer {admin}"},
    )

    assert scoped.status_code == 200, scoped.text
    scoped_rows = list(openpyxl.load_workbook(io.BytesIO(scoped.content)).active.iter_rows(values_only=True))  # type: ignore[union-attr]
    assert scoped_rows[0][:4] == ("户号", "户名", "区域编码", "所属区域")
    assert [row[0] for row in scoped_rows[2:]] == ["E3001"]
    assert scoped_rows[2][3] == "城东片区 / 翠湖小区"
    assert "特种" in scoped_rows[2]
    all_rows = list(openpyxl.load_workbook(io.BytesIO(everything.content)).active.iter_rows(values_only=True))  # type: ignore[union-attr]
    assert [row[0] for row in all_rows[2:]] == ["E3001", "E3002"]
    west_rows = list(openpyxl.load_workbook(io.BytesIO(west_only.content)).active.iter_rows(values_only=True))  # type: ignore[union-attr]
    assert [row[0] for row in west_rows[2:]] == ["E3002"]

    reimported = await _import(client, admin, everything.content, update=True)
    assert reimported.json() == {"inserted": 0, "updated": 0, "unchanged": 2, "skipped": 0, "errors": [], "errorCount": 0}
    async with session_factory(module_engine)() as session:
        exports = (await session.execute(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "exportHouseholds")  # type: ignore[arg-type]
        )).scalar_one()
    assert exports == 3


async def test_an_import_past_its_time_budget_is_refused_and_writes_nothing(
    database_url: str, world: World, module_engine: AsyncEngine,
) -> None:
    app = create_app(api_settings(import_time_budget_s=1e-6), database_url)
    content = _workbook(("B5001", "赵强", _ref(world.tree.east_community), "", "13800000051", "居民", 3))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        api = GraphQLClient(http)
        token = await api.login(world.admin.username, world.admin.password)
        response = await _import(api, token, content)
    await app.state.engine.dispose()
    await app.state.read_engine.dispose()

    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "IMPORT_TIME_EXCEEDED"
    assert await _count(module_engine, "B500") == 0
