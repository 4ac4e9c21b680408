"""GraphQL for abnormal meters: the scoped list with a constant statement count, the
acknowledge / close mutations, and the alarm rules."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import openpyxl
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.archives.models import Area, Meter, MeterStatus, MeterType
from backend.archives.service import MeterChanges, assign_meter, create_meter
from backend.auth.system import system_actor
from backend.clock import utcnow
from backend.db import session_factory
from backend.graphql.relay import encode_id
from backend.readings.alarms.service import evaluate_alarms
from tests.factories import Staff, make_staff, unique
from tests.graphql import conftest as graphql_fixtures
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World
from tests.graphql.test_dataloaders import counted_statements

world = graphql_fixtures.world
engine_for_module = graphql_fixtures.engine_for_module
client = graphql_fixtures.client

ALARMS = """
query($first: Int, $filter: MeterAlarmFilter) {
  meterAlarms(first: $first, filter: $filter) {
    totalCount
    edges { node { id kind status severity value threshold detail openedAt lastSeenAt acknowledgedBy closedBy
                   meterId meterCode meterName areaName householdName householdAddress accountNo } }
  }
}
"""
ACKNOWLEDGE = """
mutation($id: ID!, $note: String) {
  acknowledgeMeterAlarm(id: $id, note: $note) { alarm { id status acknowledgedBy acknowledgeNote } errors { field code } }
}
"""
CLOSE = """
mutation($id: ID!, $reason: String) {
  closeMeterAlarm(id: $id, reason: $reason) { alarm { id status closedBy closeReason } errors { field code } }
}
"""
SET_RULE = """
mutation($input: AlarmRuleInput!) {
  setAlarmRule(input: $input) { rule { id kind threshold enabled severity areaId areaName } errors { field code } }
}
"""
DELETE_RULE = "mutation($id: ID!) { deleteAlarmRule(id: $id) { deletedId errors { field code } } }"
RULES = "query($kind: AlarmKind) { alarmRules(kind: $kind, first: 100) { totalCount edges { node { id kind threshold areaName } } } }"


@dataclass
class Alarms:
    east_meters: list[Meter]
    west_meter: Meter
    east_manager: Staff
    reader: Staff


async def _meter(session: Any, area: Area) -> Meter:
    code = unique("A")
    return await create_meter(session, fields=MeterChanges(
        name=f"表{code}", code=code, address=f"{abs(hash(code)) % 10**14:014d}", meter_type=MeterType.cold_water,
        area_id=area.id, initial_reading=Decimal(0), status=MeterStatus.installed,
    ))


@pytest.fixture(scope="module")
async def alarms(world: World, engine_for_module: AsyncEngine) -> Alarms:
    """Six east meters and one west meter with a low battery, their alarms opened; a
    manager over 城东 and a reader over everything."""
    now = utcnow()
    async with session_factory(engine_for_module)() as session, session.begin():
        east = [await _meter(session, world.tree.east_community) for _ in range(6)]
        west = await _meter(session, world.tree.west_community)
        await assign_meter(session, meter_id=east[0].id, household_id=world.east_household.id,  # type: ignore[arg-type]
                           valid_from=now - timedelta(days=1))
        # Only the newest reading matters to the battery rule; written directly so this
        # module does not depend on the rollup that ingest maintains.
        await session.execute(text(
            "INSERT INTO latest_readings (meter_id, read_at, total_m3, battery, quality, source, received_at)"
            " SELECT id, :at, 1, 3.0, 'actual', 'test', :at FROM unnest(CAST(:ids AS bigint[])) AS m(id)"
            " ON CONFLICT (meter_id) DO UPDATE SET read_at = EXCLUDED.read_at, total_m3 = EXCLUDED.total_m3,"
            " battery = EXCLUDED.battery, quality = EXCLUDED.quality, source = EXCLUDED.source, received_at = EXCLUDED.received_at"),
            {"ids": [m.id for m in [*east, west]], "at": now - timedelta(hours=1)})
        await evaluate_alarms(session, actor=system_actor({"alarms:manage"}), now=now, tz="Asia/Shanghai",  # type: ignore[misc]
                              meter_ids=[m.id for m in [*east, west]])
        manager = await make_staff(session, permissions={"alarms:read", "alarms:manage"}, areas=[world.tree.east])
        reader = await make_staff(session, permissions={"alarms:read"}, areas=[world.tree.company])
    return Alarms(east, west, manager, reader)


def _alarm_ids(result: dict[str, Any]) -> dict[str, str]:
    """meter code -> alarm global id."""
    return {edge["node"]["meterCode"]: edge["node"]["id"] for edge in result["data"]["meterAlarms"]["edges"]}


async def test_the_list_is_scoped_and_carries_meter_area_and_household(
    client: GraphQLClient, world: World, alarms: Alarms
) -> None:
    manager = await client.login(alarms.east_manager.username, alarms.east_manager.password)
    reader = await client.login(alarms.reader.username, alarms.reader.password)
    codes = {m.code for m in alarms.east_meters}

    east = await client.execute(ALARMS, {"first": 100, "filter": {"kinds": ["battery_low"]}}, token=manager)
    everywhere = await client.execute(ALARMS, {"first": 100, "filter": {"kinds": ["battery_low"]}}, token=reader)

    assert "errors" not in east, east
    assert set(_alarm_ids(east)) == codes
    assert set(_alarm_ids(everywhere)) == codes | {alarms.west_meter.code}
    served = next(e["node"] for e in east["data"]["meterAlarms"]["edges"]
                  if e["node"]["meterCode"] == alarms.east_meters[0].code)
    assert (served["householdName"], served["areaName"], served["status"], served["value"], served["threshold"]) == (
        "张伟", "翠湖小区", "open", "3.0000", "3.3000")
    one_meter = await client.execute(ALARMS, {"filter": {"meterId": encode_id("Meter", alarms.west_meter.id),  # type: ignore[arg-type]
                                                         "status": ["open", "acknowledged"]}}, token=reader)
    assert one_meter["data"]["meterAlarms"]["totalCount"] == 1
    in_west = await client.execute(ALARMS, {"filter": {"areaId": encode_id("Area", world.tree.west.id)}},  # type: ignore[arg-type]
                                   token=reader)
    assert set(_alarm_ids(in_west)) == {alarms.west_meter.code}


async def test_the_list_statement_count_does_not_grow_with_page_size(
    client: GraphQLClient, alarms: Alarms, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await client.login(alarms.reader.username, alarms.reader.password)
    state = client.http._transport.app.state  # type: ignore[attr-defined]
    await client.execute(ALARMS, {"first": 1}, token=token)  # pool connections opened before counting

    with counted_statements(monkeypatch, state.engine, state.read_engine) as small:
        two = await client.execute(ALARMS, {"first": 2}, token=token)
    with counted_statements(monkeypatch, state.engine, state.read_engine) as large:
        six = await client.execute(ALARMS, {"first": 6}, token=token)

    assert len(two["data"]["meterAlarms"]["edges"]) == 2
    assert len(six["data"]["meterAlarms"]["edges"]) == 6
    # Authentication, then the page with its count: whatever the size.
    assert len(small) == len(large) == 2


async def test_acknowledge_and_close_within_scope_and_refusals(
    client: GraphQLClient, world: World, alarms: Alarms, engine_for_module: AsyncEngine
) -> None:
    manager = await client.login(alarms.east_manager.username, alarms.east_manager.password)
    reader = await client.login(alarms.reader.username, alarms.reader.password)
    ids = _alarm_ids(await client.execute(ALARMS, {"first": 100}, token=reader))
    east_id, west_id = ids[alarms.east_meters[1].code], ids[alarms.west_meter.code]

    acknowledged = await client.execute(ACKNOWLEDGE, {"id": east_id, "note": "已通知"}, token=manager)
    closed = await client.execute(CLOSE, {"id": east_id, "reason": "已更换电池"}, token=manager)
    again = await client.execute(CLOSE, {"id": east_id}, token=manager)
    outside = await client.execute(CLOSE, {"id": west_id}, token=manager)
    not_allowed = await client.execute(ACKNOWLEDGE, {"id": west_id}, token=reader)

    assert acknowledged["data"]["acknowledgeMeterAlarm"] == {"alarm": {
        "id": east_id, "status": "acknowledged", "acknowledgedBy": alarms.east_manager.user.full_name,
        "acknowledgeNote": "已通知"}, "errors": []}
    assert closed["data"]["closeMeterAlarm"]["alarm"]["status"] == "closed"
    assert closed["data"]["closeMeterAlarm"]["alarm"]["closeReason"] == "已更换电池"
    assert again["data"]["closeMeterAlarm"] == {"alarm": None, "errors": [{"field": "id", "code": "ALARM_ALREADY_CLOSED"}]}
    assert outside["data"]["closeMeterAlarm"] == {"alarm": None, "errors": [{"field": "id", "code": "NOT_FOUND"}]}
    assert [e["extensions"]["code"] for e in not_allowed["errors"]] == ["FORBIDDEN"]
    async with engine_for_module.connect() as connection:
        west_status = (await connection.execute(
            text("SELECT status FROM meter_alarms WHERE meter_id = :m"), {"m": alarms.west_meter.id})).scalar_one()
    assert west_status == "open"
    # An alarm outside the scope does not exist for node(id:) either.
    hidden = await client.execute("query($id: ID!) { node(id: $id) { id } }", {"id": west_id}, token=manager)
    assert [e["extensions"]["code"] for e in hidden["errors"]] == ["NOT_FOUND"]


async def test_rules_are_set_listed_and_deleted_in_scope(client: GraphQLClient, world: World, alarms: Alarms) -> None:
    manager = await client.login(alarms.east_manager.username, alarms.east_manager.password)
    east_area = encode_id("Area", world.tree.east.id)  # type: ignore[arg-type]

    created = await client.execute(SET_RULE, {"input": {"kind": "silent", "threshold": "24", "areaId": east_area}},
                                   token=manager)
    global_rule = await client.execute(SET_RULE, {"input": {"kind": "silent", "threshold": "24"}}, token=manager)
    bad = await client.execute(SET_RULE, {"input": {"kind": "zero_use", "threshold": "1.5", "areaId": east_area}},
                               token=manager)
    listed = await client.execute(RULES, {"kind": "silent"}, token=manager)

    rule = created["data"]["setAlarmRule"]["rule"]
    assert (rule["kind"], rule["threshold"], rule["areaId"], rule["enabled"]) == ("silent", "24.0000", east_area, True)
    assert rule["areaName"] == "城东片区"
    assert global_rule["data"]["setAlarmRule"]["errors"] == [{"field": "areaId", "code": "UNKNOWN_AREA"}]
    assert bad["data"]["setAlarmRule"]["errors"] == [{"field": "threshold", "code": "INVALID"}]
    names = [edge["node"]["areaName"] for edge in listed["data"]["alarmRules"]["edges"]]
    assert names == [None, "城东片区"]

    deleted = await client.execute(DELETE_RULE, {"id": rule["id"]}, token=manager)
    default_id = listed["data"]["alarmRules"]["edges"][0]["node"]["id"]
    kept = await client.execute(DELETE_RULE, {"id": default_id}, token=manager)

    assert deleted["data"]["deleteAlarmRule"] == {"deletedId": rule["id"], "errors": []}
    assert kept["data"]["deleteAlarmRule"]["errors"] == [{"field": "id", "code": "ALARM_RULE_DEFAULT"}]


EXPORT_URL = "query($filters: JSON) { readingsExportUrl(screen: alarms, filters: $filters) }"


async def test_the_export_holds_the_alarms_in_scope(client: GraphQLClient, alarms: Alarms) -> None:
    manager = await client.login(alarms.east_manager.username, alarms.east_manager.password)

    url = await client.execute(EXPORT_URL, {"filters": {"kinds": ["battery_low"]}}, token=manager)
    assert "errors" not in url, url
    response = await client.http.get(url["data"]["readingsExportUrl"])

    assert response.status_code == 200, response.text
    sheet = openpyxl.load_workbook(io.BytesIO(response.content)).active
    rows = list(sheet.iter_rows(values_only=True))  # type: ignore[union-attr]
    assert rows[0][:6] == ("单位名称", "户名", "表计名称", "表计编码", "异常类型", "状态")
    codes = {row[3] for row in rows[2:]}
    assert codes == {m.code for m in alarms.east_meters}
    assert {row[4] for row in rows[2:]} == {"电池欠压"}


# --------------------------------------------------------------------------- periods (docs/periods.md)

OPENED_IN = """
query($meterId: ID!, $subjectId: ID!, $from: DateTime!, $to: DateTime!) {
  meterAlarms(filter: {meterId: $meterId, kinds: [battery_low], openedFrom: $from, openedTo: $to}) { totalCount }
  alarms(filter: {subjectId: $subjectId, kinds: [battery_low], openedFrom: $from, openedTo: $to}) { totalCount }
}
"""


async def test_opened_from_holds_an_alarm_opened_exactly_then_and_opened_to_does_not(
    client: GraphQLClient, alarms: Alarms
) -> None:
    reader = await client.login(alarms.reader.username, alarms.reader.password)
    meter = encode_id("Meter", alarms.west_meter.id)  # type: ignore[arg-type]
    listed = await client.execute(ALARMS, {"filter": {"meterId": meter, "kinds": ["battery_low"]}}, token=reader)
    opened_at = listed["data"]["meterAlarms"]["edges"][0]["node"]["openedAt"]
    ids = {"meterId": meter, "subjectId": meter}

    from_it = await client.execute(OPENED_IN, {**ids, "from": opened_at, "to": _later(opened_at)}, token=reader)
    up_to_it = await client.execute(OPENED_IN, {**ids, "from": _later(opened_at, hours=-1), "to": opened_at},
                                    token=reader)

    assert "errors" not in from_it, from_it
    assert (from_it["data"]["meterAlarms"]["totalCount"], from_it["data"]["alarms"]["totalCount"]) == (1, 1)
    assert (up_to_it["data"]["meterAlarms"]["totalCount"], up_to_it["data"]["alarms"]["totalCount"]) == (0, 0)


def _later(instant: str, *, hours: int = 1) -> str:
    return (datetime.fromisoformat(instant) + timedelta(hours=hours)).isoformat()
