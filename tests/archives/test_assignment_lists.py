"""The 配表管理 screen over GraphQL: lists of assignments and replacements across an area
with their filters, in the caller's data scope, one page query whatever the page size, and
the "not assigned" / "without a meter" worklists as filters of ``meters`` and ``households``."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import openpyxl
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.archives import service
from backend.archives.models import Household, Meter, MeterKind, MeterStatus, MeterType
from backend.db import session_factory
from backend.graphql.relay import encode_id
from tests.factories import AreaTree, Staff, make_area_tree, make_staff, unique
from tests.graphql.client import GraphQLClient, graphql_client
from tests.graphql.test_dataloaders import counted_statements

T0 = "2026-02-01T08:00:00+08:00"
T1 = "2026-05-01T08:00:00+08:00"

ASSIGNMENTS = """
query($area: ID, $from: DateTime, $to: DateTime, $code: String, $household: ID, $account: String,
      $kind: AssignmentKind, $n: Int = 50) {
  meterAssignments(areaId: $area, from: $from, to: $to, meterCode: $code, householdId: $household,
                   accountNo: $account, kind: $kind, first: $n) {
    totalCount
    edges { node { meter { code } household { name } validFrom validTo startReading endReading } }
  }
}"""
REPLACEMENTS = """
query($area: ID, $from: DateTime, $to: DateTime, $code: String, $household: ID, $account: String, $n: Int = 50) {
  meterReplacements(areaId: $area, from: $from, to: $to, meterCode: $code, householdId: $household,
                    accountNo: $account, first: $n) {
    totalCount
    edges { node { household { name } oldMeter { code } newMeter { code } replacedAt oldFinalReading reason } }
  }
}"""
UNASSIGNED_METERS = """
query($area: ID, $assigned: Boolean) {
  meters(areaId: $area, assigned: $assigned, first: 50) { totalCount edges { node { code status } } }
}"""
HOUSEHOLDS_WITHOUT_METER = """
query($area: ID, $hasMeter: Boolean) {
  households(areaId: $area, hasMeter: $hasMeter, first: 50) { totalCount edges { node { name status } } }
}"""


@dataclass
class World:
    tree: AreaTree
    admin: Staff
    east_operator: Staff
    households: dict[str, Household]
    meters: dict[str, Meter]


_addresses = iter(range(20270000000000, 20279999999999))


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine) -> World:
    """翠湖 (东): 张伟 served by A since T0; 王芳 served by B from T0 to T1 (拆表); 刘洋
    served by C from T0, replaced by D at T1; 赵敏 never served. E is in stock, F retired
    unassigned, P a monitoring point. 西山 (西): 李娜 served by W from T0, replaced by X at T1."""
    t0, t1 = datetime.fromisoformat(T0), datetime.fromisoformat(T1)
    async with session_factory(committed_engine)() as session, session.begin():
        tree = await make_area_tree(session)
        admin = await make_staff(session, areas=[tree.company])
        east_operator = await make_staff(session, permissions={"areas:read", "archives:read"}, areas=[tree.east])
        households = {}
        prefix = unique("CFG")  # account numbers in the order of the names, as README shows them
        for number, (name, area) in enumerate((("张伟", tree.east_community), ("王芳", tree.east_community),
                                               ("刘洋", tree.east_community), ("赵敏", tree.east_community),
                                               ("李娜", tree.west_community)), 1):
            households[name] = await service.create_household(session, account_no=f"{prefix}{number}", name=name,
                                                              area_id=area.id)  # type: ignore[arg-type]
        meters = {}
        for letter, area in (("A", tree.east_community), ("B", tree.east_community), ("C", tree.east_community),
                             ("D", tree.east_community), ("E", tree.east_community), ("F", tree.east_community),
                             ("P", tree.east_community), ("W", tree.west_community), ("X", tree.west_community)):
            meters[letter] = await service.create_meter(session, fields=service.MeterChanges(
                name="户表", code=unique(f"CFG{letter}"), address=f"{next(_addresses):014d}", meter_type=MeterType.cold_water,
                area_id=area.id, kind=MeterKind.monitoring if letter == "P" else MeterKind.household,
            ))
        for letter, name in (("A", "张伟"), ("B", "王芳"), ("C", "刘洋"), ("W", "李娜")):
            await service.assign_meter(session, meter_id=meters[letter].id, household_id=households[name].id,  # type: ignore[arg-type]
                                       valid_from=t0, start_reading=Decimal("1"))
        await service.end_assignment(session, meter_id=meters["B"].id, valid_to=t1, end_reading=Decimal("20"))  # type: ignore[arg-type]
        await service.replace_meter(session, old_meter_id=meters["C"].id, new_meter_id=meters["D"].id,  # type: ignore[arg-type]
                                    replaced_at=t1, old_final_reading=Decimal("30"), new_initial_reading=Decimal("0"),
                                    reason="表坏了", replaced_by="测试")
        await service.replace_meter(session, old_meter_id=meters["W"].id, new_meter_id=meters["X"].id,  # type: ignore[arg-type]
                                    replaced_at=t1, old_final_reading=Decimal("9"), new_initial_reading=Decimal("0"),
                                    reason="", replaced_by="测试")
        await service.set_meter_status(session, meter_id=meters["F"].id, status=MeterStatus.retired)  # type: ignore[arg-type]
    return World(tree, admin, east_operator, households, meters)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(database_url) as api:
        yield api


def gid(type_name: str, row: Any) -> str:
    return encode_id(type_name, row.id)


async def page(client: GraphQLClient, token: str, document: str, field: str, **variables: Any) -> tuple[int, list[Any]]:
    result = await client.execute(document, variables, token=token)
    assert "errors" not in result, result["errors"]
    connection = result["data"][field]
    return connection["totalCount"], [edge["node"] for edge in connection["edges"]]


def pairs(world: World, found: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(meter letter, household name) of assignment nodes, in list order."""
    letters = {meter.code: letter for letter, meter in world.meters.items()}
    return [(letters[node["meter"]["code"]], node["household"]["name"]) for node in found]


async def test_assignments_of_an_area_newest_first_current_and_ended(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    east = gid("Area", world.tree.east)

    total, every = await page(client, token, ASSIGNMENTS, "meterAssignments", area=east)
    _, current = await page(client, token, ASSIGNMENTS, "meterAssignments", area=east, kind="current")
    _, ended = await page(client, token, ASSIGNMENTS, "meterAssignments", area=east, kind="ended")

    assert total == 4
    # Newest first: D opened at T1, then the three opened at T0 (newest id first).
    assert pairs(world, every) == [("D", "刘洋"), ("C", "刘洋"), ("B", "王芳"), ("A", "张伟")]
    assert every[0] == {"meter": {"code": world.meters["D"].code}, "household": {"name": "刘洋"}, "validFrom": T1,
                        "validTo": None, "startReading": "0.0000", "endReading": None}
    assert every[2]["validTo"] == T1 and every[2]["endReading"] == "20.0000"
    assert pairs(world, current) == [("D", "刘洋"), ("A", "张伟")]
    assert pairs(world, ended) == [("C", "刘洋"), ("B", "王芳")]


async def test_assignment_period_is_half_open_on_start_and_end(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    east = gid("Area", world.tree.east)

    _, up_to_t1 = await page(client, token, ASSIGNMENTS, "meterAssignments", area=east, to=T1)
    _, from_t1 = await page(client, token, ASSIGNMENTS, "meterAssignments", area=east, **{"from": T1})
    _, after_t0 = await page(client, token, ASSIGNMENTS, "meterAssignments", area=east,
                             **{"from": "2026-02-01T08:00:01+08:00", "to": "2026-12-01T00:00:00+08:00"})

    # to is exclusive: what happened at T1 (B and C ended, D opened) is not before T1.
    assert pairs(world, up_to_t1) == [("C", "刘洋"), ("B", "王芳"), ("A", "张伟")]
    # from is inclusive: ended at T1 or opened at T1.
    assert pairs(world, from_t1) == [("D", "刘洋"), ("C", "刘洋"), ("B", "王芳")]
    assert pairs(world, after_t0) == pairs(world, from_t1)


async def test_assignments_by_meter_code_and_household(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    liu = world.households["刘洋"]

    _, by_code = await page(client, token, ASSIGNMENTS, "meterAssignments", code=world.meters["C"].code)
    _, by_id = await page(client, token, ASSIGNMENTS, "meterAssignments", household=gid("Household", liu))
    _, by_account = await page(client, token, ASSIGNMENTS, "meterAssignments", account=liu.account_no, kind="current")
    unknown_total, unknown = await page(client, token, ASSIGNMENTS, "meterAssignments", code="NO-SUCH-METER")

    assert pairs(world, by_code) == [("C", "刘洋")]
    assert pairs(world, by_id) == [("D", "刘洋"), ("C", "刘洋")]
    assert pairs(world, by_account) == [("D", "刘洋")]
    assert (unknown_total, unknown) == (0, [])


async def test_scoped_operator_sees_only_assignments_and_replacements_in_scope(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.east_operator.username, world.east_operator.password)
    west = world.households["李娜"]

    _, everything = await page(client, token, ASSIGNMENTS, "meterAssignments")
    west_total, by_west_household = await page(client, token, ASSIGNMENTS, "meterAssignments",
                                               account=west.account_no)
    west_area = await client.execute(ASSIGNMENTS, {"area": gid("Area", world.tree.west)}, token=token)
    _, replacements = await page(client, token, REPLACEMENTS, "meterReplacements")

    assert ("W", "李娜") not in pairs(world, [n for n in everything if n["meter"] and n["household"]])
    assert all(node["household"] is not None for node in everything)
    assert {node["household"]["name"] for node in everything} <= {"张伟", "王芳", "刘洋"}
    assert (west_total, by_west_household) == (0, [])
    assert west_area["data"]["meterAssignments"]["totalCount"] == 0
    assert [node["household"]["name"] for node in replacements] == ["刘洋"]


async def test_replacements_with_their_filters(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    east = gid("Area", world.tree.east)
    expected = [{"household": {"name": "刘洋"}, "oldMeter": {"code": world.meters["C"].code},
                 "newMeter": {"code": world.meters["D"].code}, "replacedAt": T1, "oldFinalReading": "30.0000",
                 "reason": "表坏了"}]

    total, in_area = await page(client, token, REPLACEMENTS, "meterReplacements", area=east)
    _, by_old = await page(client, token, REPLACEMENTS, "meterReplacements", code=world.meters["C"].code)
    _, by_new = await page(client, token, REPLACEMENTS, "meterReplacements", code=world.meters["D"].code)
    _, by_account = await page(client, token, REPLACEMENTS, "meterReplacements",
                               account=world.households["刘洋"].account_no)
    _, at_t1 = await page(client, token, REPLACEMENTS, "meterReplacements", area=east, **{"from": T1})
    _, before_t1 = await page(client, token, REPLACEMENTS, "meterReplacements", area=east, to=T1)
    _, west = await page(client, token, REPLACEMENTS, "meterReplacements", area=gid("Area", world.tree.west))

    assert (total, in_area) == (1, expected)
    assert by_old == by_new == by_account == at_t1 == expected
    assert before_t1 == []
    assert [(node["household"]["name"], node["newMeter"]["code"]) for node in west] == [("李娜", world.meters["X"].code)]


@pytest.mark.parametrize(("variables", "field"), [
    ({"from": T1, "to": T1}, "to"),
    ({"from": T1, "to": T0}, "to"),
    ({"household": "SG91c2Vob2xkOjE=", "account": "A001"}, "accountNo"),
])
@pytest.mark.parametrize(("document", "name"), [(ASSIGNMENTS, "meterAssignments"), (REPLACEMENTS, "meterReplacements")])
async def test_empty_period_and_two_household_filters_are_bad_user_input(
    client: GraphQLClient, world: World, variables: dict[str, str], field: str, document: str, name: str,
) -> None:
    token = await client.login(world.admin.username, world.admin.password)

    result = await client.execute(document, variables, token=token)

    assert result["data"] is None
    assert [(error["extensions"]["code"], error["extensions"].get("field")) for error in result["errors"]] == [
        ("BAD_USER_INPUT", field)]


async def test_meters_not_assigned_and_households_without_a_meter(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.east_operator.username, world.east_operator.password)
    area = gid("Area", world.tree.east_community)
    code = {meter.code: letter for letter, meter in world.meters.items()}

    unassigned_total, unassigned = await page(client, token, UNASSIGNED_METERS, "meters", area=area, assigned=False)
    _, assigned = await page(client, token, UNASSIGNED_METERS, "meters", area=area, assigned=True)
    without_total, without = await page(client, token, HOUSEHOLDS_WITHOUT_METER, "households", area=area, hasMeter=False)
    _, served = await page(client, token, HOUSEHOLDS_WITHOUT_METER, "households", area=area, hasMeter=True)
    _, west = await page(client, token, HOUSEHOLDS_WITHOUT_METER, "households", hasMeter=True)

    # B went back in stock at its move-out, E never left it; C and F are retired, P a monitoring point.
    assert unassigned_total == 2
    assert sorted((code[node["code"]], node["status"]) for node in unassigned) == [("B", "in_stock"), ("E", "in_stock")]
    assert sorted(code[node["code"]] for node in assigned) == ["A", "D"]
    assert without_total == 2
    assert sorted(node["name"] for node in without) == ["王芳", "赵敏"]
    assert sorted(node["name"] for node in served) == ["刘洋", "张伟"]
    assert "李娜" not in {node["name"] for node in west}


@pytest.mark.parametrize(("document", "field"), [(ASSIGNMENTS, "meterAssignments"), (REPLACEMENTS, "meterReplacements")])
async def test_list_statement_count_does_not_grow_with_page_size(
    client: GraphQLClient, world: World, monkeypatch: pytest.MonkeyPatch, document: str, field: str,
) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    state = client.http._transport.app.state  # type: ignore[attr-defined]
    for _ in range(2):  # every pool connection the loaders use is opened before counting
        await client.execute(document, {"n": 4}, token=token)

    with counted_statements(monkeypatch, state.engine, state.read_engine) as small:
        one = await client.execute(document, {"n": 1}, token=token)
    with counted_statements(monkeypatch, state.engine, state.read_engine) as large:
        more = await client.execute(document, {"n": 4}, token=token)

    assert "errors" not in one and "errors" not in more
    sizes = (len(one["data"][field]["edges"]), len(more["data"][field]["edges"]))
    assert sizes[0] == 1 and sizes[1] > 1
    assert len(_work(small)) == len(_work(large))


def _work(statements: list[str]) -> list[str]:
    """The statements a request issues, without asyncpg's setup of a fresh pool connection."""
    return [s for s in statements if "current_setting('jit')" not in s and "typeinfo_tree" not in s]


# The 配表 screen of README.md ("Archives") in one query, on a world where every panel has rows
# (README runs it on the demo, tests/test_docs_examples.py).
SCREEN = """
query($area: ID!, $from: DateTime, $to: DateTime) {
  current: meterAssignments(areaId: $area, kind: current, first: 20) {
    totalCount edges { node { meter { code } household { accountNo name } validFrom startReading } } }
  changes: meterAssignments(areaId: $area, from: $from, to: $to, kind: ended, first: 20) {
    totalCount edges { node { meter { code } household { name } validTo endReading } } }
  replacements: meterReplacements(areaId: $area, from: $from, to: $to, first: 20) {
    totalCount edges { node { household { name } oldMeter { code } newMeter { code } replacedAt reason } } }
  notAssigned: meters(areaId: $area, assigned: false, first: 20) { totalCount edges { node { code status } } }
  withoutMeter: households(areaId: $area, hasMeter: false, first: 20) { totalCount edges { node { accountNo name } } }
}"""


async def test_the_readme_screen_query_answers_every_panel_at_once(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.east_operator.username, world.east_operator.password)

    result = await client.execute(SCREEN, {"area": gid("Area", world.tree.east_community), "from": T1,
                                           "to": "2026-06-01T00:00:00+08:00"}, token=token)

    assert "errors" not in result, result["errors"]
    data = result["data"]
    assert {name: data[name]["totalCount"] for name in data} == {
        "current": 2, "changes": 2, "replacements": 1, "notAssigned": 2, "withoutMeter": 2}
    assert [edge["node"]["household"]["name"] for edge in data["changes"]["edges"]] == ["刘洋", "王芳"]
    assert [(edge["node"]["household"]["name"], edge["node"]["validFrom"], edge["node"]["startReading"])
            for edge in data["current"]["edges"]] == [("刘洋", T1, "0.0000"), ("张伟", T0, "1.0000")]
    assert [edge["node"]["endReading"] for edge in data["changes"]["edges"]] == ["30.0000", "20.0000"]
    assert data["replacements"]["edges"][0]["node"]["reason"] == "表坏了"
    assert [edge["node"]["status"] for edge in data["notAssigned"]["edges"]] == ["in_stock", "in_stock"]
    assert [edge["node"]["name"] for edge in data["withoutMeter"]["edges"]] == ["王芳", "赵敏"]


async def test_the_worklist_filters_export_the_rows_the_lists_show(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.east_operator.username, world.east_operator.password)
    headers = {"Authorization": f"Bearer {token}"}
    area = gid("Area", world.tree.east_community)

    meters = await client.http.get("/exports/meters.xlsx", params={"areaId": area, "assigned": "false"}, headers=headers)
    households = await client.http.get("/exports/households.xlsx", params={"areaId": area, "hasMeter": "false"},
                                       headers=headers)
    bad = await client.http.get("/exports/households.xlsx", params={"hasMeter": "maybe"}, headers=headers)
    link = await client.execute("query($a: ID) { meterExportUrl(areaId: $a, assigned: false) "
                                "householdExportUrl(areaId: $a, hasMeter: false) }", {"a": area}, token=token)

    assert meters.status_code == 200 and households.status_code == 200
    meter_rows = list(openpyxl.load_workbook(io.BytesIO(meters.content)).active.iter_rows(values_only=True))[2:]  # type: ignore[union-attr]
    household_rows = list(openpyxl.load_workbook(io.BytesIO(households.content)).active.iter_rows(values_only=True))[2:]  # type: ignore[union-attr]
    assert sorted(row[0] for row in meter_rows) == sorted([world.meters["B"].code, world.meters["E"].code])
    assert sorted(row[1] for row in household_rows) == ["王芳", "赵敏"]
    assert bad.status_code == 400
    assert "assigned=false" in link["data"]["meterExportUrl"]
    assert "hasMeter=false" in link["data"]["householdExportUrl"]
