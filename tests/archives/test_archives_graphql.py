"""Archives over GraphQL: data scope in lists and detail, the replacement and ownership
histories, typed refusals that write nothing, devices, and the signed export link."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openpyxl
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.archives import service
from backend.archives.models import Concentrator, ConnectionKind, Household, Meter, MeterType
from backend.audit.models import AuditEntry
from backend.db import session_factory
from backend.graphql.relay import encode_id
from tests.factories import AreaTree, Staff, make_area_tree, make_staff, unique
from tests.graphql.client import TEST_SECRET, GraphQLClient, graphql_client
from tests.graphql.test_dataloaders import counted_statements
from tests.graphql.test_permission_walk import row_counts

T0 = "2026-01-01T08:00:00+08:00"
T1 = "2026-06-01T08:00:00+08:00"

HOUSEHOLDS = "{ households(first: 100) { totalCount edges { node { name area { name } } } } }"
METERS = "{ meters(first: 100) { totalCount edges { node { code household { name } } } } }"
CONCENTRATORS = "{ concentrators(first: 100) { totalCount edges { node { name area { name } } } } }"
HOUSEHOLD = "query($id: ID!) { household(id: $id) { name } }"
METER = "query($id: ID!) { meter(id: $id) { code } }"
CONCENTRATOR = "query($id: ID!) { concentrator(id: $id) { name } }"
NODE = "query($id: ID!) { node(id: $id) { id } }"

CREATE_HOUSEHOLD = """
mutation($input: HouseholdInput!) {
  createHousehold(input: $input) { household { id accountNo name } errors { field code message messageEn } }
}"""
CREATE_METER = """
mutation($input: MeterInput!) { createMeter(input: $input) { meter { id code status } errors { field code } } }"""
ASSIGN_METER = """
mutation($meter: ID!, $household: ID!, $from: DateTime, $start: String) {
  assignMeter(meterId: $meter, householdId: $household, validFrom: $from, startReading: $start) {
    assignment { id startReading } errors { field code }
  }
}"""
REPLACE_METER = """
mutation($old: ID!, $new: ID!, $final: String, $initial: String, $at: DateTime) {
  replaceMeter(oldMeterId: $old, newMeterId: $new, oldFinalReading: $final, newInitialReading: $initial,
               replacedAt: $at, reason: "表坏了") {
    replacement { oldFinalReading newInitialReading } errors { field code }
  }
}"""
TRANSFER = """
mutation($id: ID!, $name: String!, $phone: String, $from: DateTime) {
  transferOwnership(id: $id, name: $name, phone: $phone, validFrom: $from) { household { name phone } errors { field code } }
}"""
HOUSEHOLD_HISTORY = """
query($id: ID!) {
  household(id: $id) {
    name
    meters { code status }
    assignments { meter { code status } startReading endReading validFrom validTo }
    replacements { oldMeter { code } newMeter { code } oldFinalReading newInitialReading reason }
    currentOwner { name }
    ownerHistory { name phone validFrom validTo }
  }
}"""
HOUSEHOLDS_PAGE = """
query($n: Int) {
  households(first: $n) {
    totalCount
    edges { node { accountNo name area { name } currentOwner { name } meters { code model { name } } } }
  }
}"""
METERS_PAGE = """
query($n: Int) {
  meters(first: $n) {
    totalCount
    edges { node { code area { name } model { name } concentrator { name } household { name area { name } } } }
  }
}"""
CREATE_CONCENTRATOR = """
mutation($input: ConcentratorInput!) {
  createConcentrator(input: $input) {
    concentrator { id name regionCode terminalAddress connection serialUrl hasTerminalPassword area { name } }
    errors { field code }
  }
}"""
UPDATE_CONCENTRATOR = """
mutation($id: ID!, $input: ConcentratorInput!) {
  updateConcentrator(id: $id, input: $input) { concentrator { name hasTerminalPassword } errors { field code } }
}"""
DELETE_CONCENTRATOR = "mutation($id: ID!) { deleteConcentrator(id: $id) { concentrator { name } errors { field code } } }"
SAVE_COLLECTOR = """
mutation($concentrator: ID!, $address: String!, $name: String!, $id: ID) {
  saveCollector(concentratorId: $concentrator, address: $address, name: $name, id: $id) {
    collector { id address name } errors { field code }
  }
}"""
DELETE_COLLECTOR = "mutation($id: ID!) { deleteCollector(id: $id) { collector { address } errors { field code } } }"
COLLECTORS = "query($id: ID!) { collectors(concentratorId: $id) { address name } }"
SAVE_METER_MODEL = """
mutation($input: MeterModelInput!, $id: ID) {
  saveMeterModel(input: $input, id: $id) { meterModel { id vendor name caliber multiplier } errors { field code } }
}"""
DELETE_METER_MODEL = "mutation($id: ID!) { deleteMeterModel(id: $id) { meterModel { name } errors { field code } } }"
EXPORT_URL = "query($area: ID, $search: String) { householdExportUrl(areaId: $area, search: $search) }"


@dataclass
class World:
    tree: AreaTree
    admin: Staff
    east_operator: Staff
    east_households: list[Household]
    west_households: list[Household]
    east_meters: list[Meter]
    west_meters: list[Meter]
    east_concentrator: Concentrator
    west_concentrator: Concentrator


_addresses = iter(range(20260000000000, 20269999999999))


def next_address() -> str:
    return f"{next(_addresses):014d}"


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine) -> World:
    """城东 has three households (two with a meter), one spare meter and a concentrator;
    城西 has two households, two meters and a concentrator. The operator reads 城东 only."""
    async with session_factory(committed_engine)() as session, session.begin():
        tree = await make_area_tree(session)
        admin = await make_staff(session, areas=[tree.company])
        east_operator = await make_staff(session, permissions={"areas:read", "archives:read"}, areas=[tree.east])
        cipher = service.TerminalPasswordCipher(TEST_SECRET)
        concentrators = []
        for area, name, terminal in ((tree.east_community, "翠湖1号集中器", 1), (tree.west_community, "西山1号集中器", 2)):
            assert area.id is not None
            concentrators.append(await service.create_concentrator(session, cipher=cipher, fields=service.ConcentratorChanges(
                name=name, region_code="3301", terminal_address=terminal, area_id=area.id, connection=ConnectionKind.tcp_login,
            )))
        model = await service.save_meter_model(session, fields=service.MeterModelFields(vendor="宁波水表", name="LXS-15", caliber=15))
        # Account numbers of our own, so list pages come in a known order.
        east_households = [await service.create_household(session, account_no=f"A00{i}", name=name, area_id=tree.east_community.id)
                           for i, name in enumerate(("张伟", "王芳", "刘洋"), 1)]
        west_households = [await service.create_household(session, account_no=f"B00{i}", name=name, area_id=tree.west_community.id)
                           for i, name in enumerate(("李娜", "陈静"), 1)]

        async def meter(area: Any, code: str, concentrator: Concentrator) -> Meter:
            return await service.create_meter(session, fields=service.MeterChanges(
                name="户表", code=code, address=next_address(), meter_type=MeterType.cold_water, area_id=area.id,
                model_id=model.id, concentrator_id=concentrator.id,
            ))

        east_meters = [await meter(tree.east_community, code, concentrators[0]) for code in ("E-001", "E-002", "E-003")]
        west_meters = [await meter(tree.west_community, code, concentrators[1]) for code in ("W-001", "W-002")]
        from backend.clock import utcnow

        for household, meter_row in zip(east_households[:2] + west_households, east_meters[:2] + west_meters, strict=True):
            assert household.id is not None and meter_row.id is not None
            await service.assign_meter(session, meter_id=meter_row.id, household_id=household.id, valid_from=utcnow())
    return World(tree, admin, east_operator, east_households, west_households, east_meters, west_meters, *concentrators)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(database_url) as api:
        yield api


def gid(type_name: str, row: Any) -> str:
    assert row.id is not None
    return encode_id(type_name, row.id)


def nodes(result: dict[str, Any], field: str) -> list[dict[str, Any]]:
    assert "errors" not in result, result["errors"]
    return [edge["node"] for edge in result["data"][field]["edges"]]


async def run(client: GraphQLClient, token: str, document: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    result = await client.execute(document, variables, token=token)
    assert "errors" not in result, result["errors"]
    return result["data"]  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- data scope


async def test_scoped_operator_lists_only_their_areas_archives(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.east_operator.username, world.east_operator.password)

    households = await client.execute(HOUSEHOLDS, token=token)
    meters = await client.execute(METERS, token=token)
    concentrators = await client.execute(CONCENTRATORS, token=token)

    assert sorted(node["name"] for node in nodes(households, "households")) == ["刘洋", "张伟", "王芳"]
    assert households["data"]["households"]["totalCount"] == 3
    assert {node["area"]["name"] for node in nodes(households, "households")} == {"翠湖小区"}
    assert [(node["code"], node["household"]) for node in nodes(meters, "meters")] == [
        ("E-001", {"name": "张伟"}), ("E-002", {"name": "王芳"}), ("E-003", None),
    ]
    assert meters["data"]["meters"]["totalCount"] == 3
    assert nodes(concentrators, "concentrators") == [{"name": "翠湖1号集中器", "area": {"name": "翠湖小区"}}]
    assert concentrators["data"]["concentrators"]["totalCount"] == 1


@pytest.mark.parametrize(("document", "type_name", "field", "attribute", "expected"), [
    (HOUSEHOLD, "Household", "household", "east_households", {"name": "张伟"}),
    (METER, "Meter", "meter", "east_meters", {"code": "E-001"}),
    (CONCENTRATOR, "Concentrator", "concentrator", "east_concentrator", {"name": "翠湖1号集中器"}),
])
async def test_scoped_operator_reads_detail_in_scope_and_gets_not_found_outside(
    client: GraphQLClient, world: World, document: str, type_name: str, field: str, attribute: str, expected: dict[str, str],
) -> None:
    token = await client.login(world.east_operator.username, world.east_operator.password)
    east = getattr(world, attribute)
    west = getattr(world, attribute.replace("east", "west"))
    east, west = (east[0], west[0]) if isinstance(east, list) else (east, west)

    inside = await client.execute(document, {"id": gid(type_name, east)}, token=token)
    inside_node = await client.execute(NODE, {"id": gid(type_name, east)}, token=token)
    outside = await client.execute(document, {"id": gid(type_name, west)}, token=token)
    outside_node = await client.execute(NODE, {"id": gid(type_name, west)}, token=token)

    assert inside["data"][field] == expected
    assert inside_node["data"]["node"] == {"id": gid(type_name, east)}
    for result in (outside, outside_node):
        assert result["data"] is None
        assert [error["extensions"]["code"] for error in result["errors"]] == ["NOT_FOUND"]


# --------------------------------------------------------------------------- histories


async def test_replacement_keeps_both_meters_histories_and_transfer_keeps_the_old_owner(
    client: GraphQLClient, world: World
) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    area = gid("Area", world.tree.west_community)
    created = await run(client, token, CREATE_HOUSEHOLD, {"input": {
        "accountNo": unique("Z"), "name": "赵磊", "areaId": area, "phone": "13812345678", "ownerSince": "2025-12-01",
    }})
    household = created["createHousehold"]["household"]["id"]
    meter_ids = []
    for code in ("R-OLD", "R-NEW"):
        made = await run(client, token, CREATE_METER, {"input": {
            "name": "户表", "code": code, "address": next_address(), "meterType": "cold_water", "areaId": area,
        }})
        assert made["createMeter"]["errors"] == []
        meter_ids.append(made["createMeter"]["meter"]["id"])
    old, new = meter_ids

    assigned = await run(client, token, ASSIGN_METER, {"meter": old, "household": household, "from": T0, "start": "10.5"})
    replaced = await run(client, token, REPLACE_METER, {"old": old, "new": new, "final": "123.4", "initial": "0.2", "at": T1})
    transferred = await run(client, token, TRANSFER, {"id": household, "name": "钱芳", "phone": "13900001111",
                                                      "from": "2026-07-01T08:00:00+08:00"})
    history = (await run(client, token, HOUSEHOLD_HISTORY, {"id": household}))["household"]

    assert assigned["assignMeter"]["errors"] == []
    assert replaced["replaceMeter"] == {
        "replacement": {"oldFinalReading": "123.4000", "newInitialReading": "0.2000"}, "errors": [],
    }
    assert transferred["transferOwnership"] == {"household": {"name": "钱芳", "phone": "13900001111"}, "errors": []}
    assert history["meters"] == [{"code": "R-NEW", "status": "installed"}]
    assert history["assignments"] == [
        {"meter": {"code": "R-OLD", "status": "retired"}, "startReading": "10.5000", "endReading": "123.4000",
         "validFrom": T0, "validTo": T1},
        {"meter": {"code": "R-NEW", "status": "installed"}, "startReading": "0.2000", "endReading": None,
         "validFrom": T1, "validTo": None},
    ]
    assert history["replacements"] == [{"oldMeter": {"code": "R-OLD"}, "newMeter": {"code": "R-NEW"},
                                         "oldFinalReading": "123.4000", "newInitialReading": "0.2000", "reason": "表坏了"}]
    assert history["name"] == "钱芳"
    assert history["currentOwner"] == {"name": "钱芳"}
    assert history["ownerHistory"] == [
        {"name": "赵磊", "phone": "13812345678", "validFrom": "2025-12-01", "validTo": "2026-07-01"},
        {"name": "钱芳", "phone": "13900001111", "validFrom": "2026-07-01", "validTo": None},
    ]


# --------------------------------------------------------------------------- refusals


async def _refused_writes_only_its_audit_row(
    client: GraphQLClient, engine: AsyncEngine, token: str, document: str, variables: dict[str, Any], field: str,
) -> list[dict[str, Any]]:
    before = await row_counts(engine)
    result = await client.execute(document, variables, token=token)
    after = await row_counts(engine)

    assert "errors" not in result, result["errors"]
    payload = result["data"][field]
    assert next(value for key, value in payload.items() if key != "errors") is None
    assert {table: after[table] - before[table] for table in after if after[table] != before[table]} == {"audit_log": 1}
    async with session_factory(engine)() as session:
        entry = (await session.execute(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1))).scalars().one()  # type: ignore[attr-defined]
    assert entry.success is False and entry.action == field and "失败" in entry.summary
    return payload["errors"]  # type: ignore[no-any-return]


async def test_duplicate_account_number_is_refused_on_the_field_and_writes_only_the_refusal(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine
) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    existing = world.east_households[0].account_no

    errors = await _refused_writes_only_its_audit_row(client, committed_engine, token, CREATE_HOUSEHOLD, {"input": {
        "accountNo": existing, "name": "重复户", "areaId": gid("Area", world.tree.east_community),
    }}, "createHousehold")

    assert errors == [{"field": "accountNo", "code": "DUPLICATE", "message": "缴费号已存在",
                       "messageEn": "This account number already exists"}]


async def test_non_bcd_meter_address_is_refused_and_writes_only_the_refusal(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine
) -> None:
    token = await client.login(world.admin.username, world.admin.password)

    errors = await _refused_writes_only_its_audit_row(client, committed_engine, token, CREATE_METER, {"input": {
        "name": "户表", "code": unique("BAD"), "address": "2026000000000A", "meterType": "cold_water",
        "areaId": gid("Area", world.tree.east_community),
    }}, "createMeter")

    assert errors == [{"field": "address", "code": "INVALID_ADDRESS"}]


async def test_meter_assigned_twice_is_refused_and_writes_only_the_refusal(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine
) -> None:
    token = await client.login(world.admin.username, world.admin.password)

    errors = await _refused_writes_only_its_audit_row(client, committed_engine, token, ASSIGN_METER, {
        "meter": gid("Meter", world.east_meters[0]), "household": gid("Household", world.east_households[2]),
    }, "assignMeter")

    assert errors == [{"field": "meterId", "code": "METER_ALREADY_ASSIGNED"}]


# --------------------------------------------------------------------------- statement counts


@pytest.mark.parametrize(("document", "field"), [(HOUSEHOLDS_PAGE, "households"), (METERS_PAGE, "meters")])
async def test_list_statement_count_does_not_grow_with_page_size(
    client: GraphQLClient, world: World, monkeypatch: pytest.MonkeyPatch, document: str, field: str
) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    state = client.http._transport.app.state  # type: ignore[attr-defined]
    for _ in range(2):  # every pool connection the loaders use is opened before counting
        await client.execute(document, {"n": 5}, token=token)

    with counted_statements(monkeypatch, state.engine, state.read_engine) as small:
        two = await client.execute(document, {"n": 2}, token=token)
    with counted_statements(monkeypatch, state.engine, state.read_engine) as large:
        five = await client.execute(document, {"n": 5}, token=token)

    assert len(nodes(two, field)) == 2
    assert len(nodes(five, field)) == 5
    assert len(_work(small)) == len(_work(large))


def _work(statements: list[str]) -> list[str]:
    """The statements a request issues, without asyncpg's setup of a fresh pool connection
    (the loaders run side by side, so how many connections a request opens varies)."""
    return [s for s in statements if "current_setting('jit')" not in s and "typeinfo_tree" not in s]


# --------------------------------------------------------------------------- devices


async def test_concentrator_terminal_password_is_write_only_and_never_audited(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine
) -> None:
    token = await client.login(world.admin.username, world.admin.password)

    created = await run(client, token, CREATE_CONCENTRATOR, {"input": {
        "name": "西山2号集中器", "regionCode": "3301", "terminalAddress": 77, "areaId": gid("Area", world.tree.west_community),
        "connection": "serial", "serialUrl": "/dev/ttyUSB0", "baudrate": 9600, "parity": "E", "terminalPassword": "pw-123456",
    }})
    concentrator = created["createConcentrator"]["concentrator"]
    updated = await run(client, token, UPDATE_CONCENTRATOR, {"id": concentrator["id"], "input": {"name": "西山二号集中器"}})
    cleared = await run(client, token, UPDATE_CONCENTRATOR, {"id": concentrator["id"], "input": {"terminalPassword": ""}})

    assert created["createConcentrator"]["errors"] == []
    assert concentrator["hasTerminalPassword"] is True
    assert concentrator["area"] == {"name": "西山名苑"}
    assert "pw-123456" not in str(created)
    assert updated["updateConcentrator"] == {"concentrator": {"name": "西山二号集中器", "hasTerminalPassword": True}, "errors": []}
    assert cleared["updateConcentrator"]["concentrator"]["hasTerminalPassword"] is False
    async with session_factory(committed_engine)() as session:
        audited = (await session.execute(select(AuditEntry).where(AuditEntry.action == "createConcentrator"))).scalars().all()  # type: ignore[arg-type]
        found = (await session.execute(select(Concentrator).where(Concentrator.terminal_address == 77))).scalars().one()  # type: ignore[arg-type]
    assert [entry.summary for entry in audited] == ["新增集中器 西山2号集中器: 成功"]
    assert "pw-123456" not in str(audited[0].payload)
    assert found.terminal_password_encrypted is None


async def test_concentrator_refusals_come_back_on_their_fields(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    east = gid("Concentrator", world.east_concentrator)

    duplicate = await run(client, token, CREATE_CONCENTRATOR, {"input": {
        "name": "重复", "regionCode": "3301", "terminalAddress": 1, "areaId": gid("Area", world.tree.east), "connection": "tcp_login",
    }})
    missing = await run(client, token, CREATE_CONCENTRATOR, {"input": {"name": "缺项"}})
    nulled = await run(client, token, UPDATE_CONCENTRATOR, {"id": east, "input": {"connection": None, "status": None}})
    in_use = await run(client, token, DELETE_CONCENTRATOR, {"id": east})

    assert duplicate["createConcentrator"]["errors"] == [{"field": "terminalAddress", "code": "DUPLICATE"}]
    assert {(e["field"], e["code"]) for e in missing["createConcentrator"]["errors"]} == {
        ("regionCode", "REQUIRED"), ("terminalAddress", "REQUIRED"), ("areaId", "REQUIRED"), ("connection", "REQUIRED"),
    }
    assert nulled["updateConcentrator"]["errors"] == [{"field": "connection", "code": "REQUIRED"},
                                                      {"field": "status", "code": "REQUIRED"}]
    assert in_use["deleteConcentrator"]["errors"] == [{"field": "id", "code": "DEVICE_IN_USE"}]


async def test_collectors_are_saved_listed_by_concentrator_in_scope_and_deleted(client: GraphQLClient, world: World) -> None:
    admin = await client.login(world.admin.username, world.admin.password)
    operator = await client.login(world.east_operator.username, world.east_operator.password)
    east, west = gid("Concentrator", world.east_concentrator), gid("Concentrator", world.west_concentrator)

    first = await run(client, admin, SAVE_COLLECTOR, {"concentrator": east, "address": "C02", "name": "2号楼采集器"})
    second = await run(client, admin, SAVE_COLLECTOR, {"concentrator": east, "address": "C01", "name": "1号楼"})
    collector = second["saveCollector"]["collector"]
    renamed = await run(client, admin, SAVE_COLLECTOR, {"concentrator": east, "address": "C01", "name": "1号楼采集器",
                                                        "id": collector["id"]})
    duplicate = await run(client, admin, SAVE_COLLECTOR, {"concentrator": east, "address": "C02", "name": "重复"})
    listed = await run(client, operator, COLLECTORS, {"id": east})
    hidden = await client.execute(COLLECTORS, {"id": west}, token=operator)
    as_node = await run(client, operator, "query($id: ID!) { node(id: $id) { ... on Collector { name } } }", {"id": collector["id"]})
    deleted = await run(client, admin, DELETE_COLLECTOR, {"id": first["saveCollector"]["collector"]["id"]})
    after = await run(client, operator, COLLECTORS, {"id": east})

    assert renamed["saveCollector"] == {"collector": {**collector, "name": "1号楼采集器"}, "errors": []}
    assert duplicate["saveCollector"]["errors"] == [{"field": "address", "code": "DUPLICATE"}]
    assert listed["collectors"] == [{"address": "C01", "name": "1号楼采集器"}, {"address": "C02", "name": "2号楼采集器"}]
    assert as_node["node"] == {"name": "1号楼采集器"}
    assert hidden["data"] is None and [e["extensions"]["code"] for e in hidden["errors"]] == ["NOT_FOUND"]
    assert deleted["deleteCollector"] == {"collector": {"address": "C02"}, "errors": []}
    assert after["collectors"] == [{"address": "C01", "name": "1号楼采集器"}]


async def test_meter_models_are_saved_refused_and_deleted(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    model = {"vendor": "三川智慧", "name": "LXSY-20E", "caliber": 20, "multiplier": "1", "hasValve": True}

    created = await run(client, token, SAVE_METER_MODEL, {"input": model})
    model_id = created["saveMeterModel"]["meterModel"]["id"]
    changed = await run(client, token, SAVE_METER_MODEL, {"input": {**model, "caliber": 25}, "id": model_id})
    duplicate = await run(client, token, SAVE_METER_MODEL, {"input": model})
    bad = await run(client, token, SAVE_METER_MODEL, {"input": {**model, "name": "X", "caliber": 17, "multiplier": "0.00001"}})
    assert world.east_meters[0].model_id is not None
    in_use = await run(client, token, DELETE_METER_MODEL, {"id": encode_id("MeterModel", world.east_meters[0].model_id)})
    deleted = await run(client, token, DELETE_METER_MODEL, {"id": model_id})

    assert changed["saveMeterModel"]["meterModel"] == {"id": model_id, "vendor": "三川智慧", "name": "LXSY-20E", "caliber": 25,
                                                       "multiplier": "1.0000"}
    assert duplicate["saveMeterModel"]["errors"] == [{"field": "name", "code": "DUPLICATE"}]
    assert bad["saveMeterModel"]["errors"] == [{"field": "caliber", "code": "INVALID"}, {"field": "multiplier", "code": "INVALID"}]
    assert in_use["deleteMeterModel"]["errors"] == [{"field": "id", "code": "DEVICE_IN_USE"}]
    assert deleted["deleteMeterModel"] == {"meterModel": {"name": "LXSY-20E"}, "errors": []}


# --------------------------------------------------------------------------- export link


async def test_household_export_url_downloads_the_callers_scope_without_a_header(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.east_operator.username, world.east_operator.password)

    url = (await run(client, token, EXPORT_URL, {"area": gid("Area", world.tree.east), "search": "张"}))["householdExportUrl"]
    everything = (await run(client, token, EXPORT_URL))["householdExportUrl"]
    download = await client.http.get(url)
    scoped = await client.http.get(everything)
    tampered = await client.http.get(url.replace("search=", "search=%E7%8E%8B"))

    assert url.startswith("/exports/households.xlsx?areaId=")
    assert download.status_code == 200 and scoped.status_code == 200
    assert [row[1] for row in _rows(download.content)] == ["张伟"]
    assert sorted(row[1] for row in _rows(scoped.content)) == ["刘洋", "张伟", "王芳"]
    assert tampered.status_code == 401


def _rows(content: bytes) -> list[tuple[Any, ...]]:
    sheet = openpyxl.load_workbook(io.BytesIO(content), read_only=True).active
    assert sheet is not None
    return [row for row in sheet.iter_rows(values_only=True) if row and row[0] is not None][2:]


async def test_every_archive_kind_has_a_signed_export_link_that_downloads_without_a_header(
    client: GraphQLClient, world: World
) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    links = await client.execute(
        "{ householdExportUrl meterExportUrl(kind: household) concentratorExportUrl assignmentExportUrl(current: true) }",
        token=token,
    )

    for name, url in links["data"].items():
        download = await client.http.get(url)
        assert download.status_code == 200, (name, download.text[:200])
        assert download.content[:2] == b"PK"  # a zip container: xlsx
        tampered = await client.http.get(url.replace("token=", "token=x"))
        assert tampered.status_code == 401, name
