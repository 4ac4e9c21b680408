"""Alarms of subjects other than meters go through the one workflow: a concentrator's
offline alarm opens, refreshes, is acknowledged and auto-closes, emitting the same
events as meter alarms; the general ``alarms`` list and the mutations keep to the
caller's scope (an alarm without an area only for whole-tree scope)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from backend.alarms.models import AlarmKind, AlarmSeverity, AlarmStatus, AlarmSubjectKind
from backend.alarms.service import (
    AlarmSubject,
    acknowledge_alarm,
    alarm_view,
    alarms_visible_to,
    close_alarm,
    close_cleared_alarms,
    open_alarms,
    reconcile_alarms,
)
from backend.archives.models import Area, Concentrator, ConnectionKind, MeterStatus, MeterType
from backend.archives.service import MeterChanges, create_meter
from backend.auth.system import system_actor
from backend.clock import utcnow
from backend.db import session_factory
from backend.errors import ErrorCode, NotFound
from backend.graphql.relay import decode_id, encode_id
from backend.readings.alarms.service import evaluate_alarms
from tests.factories import AreaTree, Staff, make_area_tree, make_staff, unique
from tests.graphql import conftest as graphql_fixtures
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World
from tests.graphql.test_dataloaders import counted_statements

world = graphql_fixtures.world
engine_for_module = graphql_fixtures.engine_for_module
client = graphql_fixtures.client

NOW = utcnow().replace(microsecond=0)
OFFLINE_MINUTES = Decimal(30)

ALARMS = """
query($filter: AlarmFilter) {
  alarms(first: 100, filter: $filter) {
    totalCount
    edges { node { id subjectKind subjectId subjectName kind status severity value threshold detail meterCode
                   areaName acknowledgedBy } }
  }
}
"""
ACKNOWLEDGE = """
mutation($id: ID!, $note: String) {
  acknowledgeAlarm(id: $id, note: $note) { alarm { id status acknowledgedBy acknowledgeNote } errors { field code } }
}
"""
CLOSE = """
mutation($id: ID!, $reason: String) {
  closeAlarm(id: $id, reason: $reason) { alarm { id status closedBy closeReason } errors { field code } }
}
"""
ACKNOWLEDGE_METER_ALARM = """
mutation($id: ID!) { acknowledgeMeterAlarm(id: $id) { alarm { id } errors { field code } } }
"""


async def make_concentrator(session: AsyncSession, area: Area) -> Concentrator:
    concentrator = Concentrator(name=unique("集中器"), region_code="3301", terminal_address=abs(hash(unique("T"))) % 60000,
                                connection=ConnectionKind.tcp_login, area_id=area.id)
    session.add(concentrator)
    await session.flush()
    return concentrator


def offline(concentrator: Concentrator, minutes: int) -> AlarmSubject:
    assert concentrator.id is not None
    return AlarmSubject(concentrator.id, severity=AlarmSeverity.critical, value=Decimal(minutes),
                        threshold=OFFLINE_MINUTES, detail=f"{minutes} 分钟无心跳", area_id=concentrator.area_id,
                        name=concentrator.name)


async def events(session: AsyncSession, kind: str) -> list[dict[str, Any]]:
    rows = await session.execute(text("SELECT payload FROM domain_events WHERE kind = :k ORDER BY id"), {"k": kind})
    return [row.payload for row in rows]


# --------------------------------------------------------------------------- the workflow (service)


async def test_a_concentrator_alarm_opens_refreshes_is_acknowledged_and_auto_closes(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    down, up = await make_concentrator(session, tree.east_community), await make_concentrator(session, tree.east)
    opened_before, closed_before = len(await events(session, "alarm.opened")), len(await events(session, "alarm.closed"))

    # A check of both finds one offline: one alarm opens, one event names it.
    first = await reconcile_alarms(session, subject_kind=AlarmSubjectKind.concentrator, kind=AlarmKind.offline,
                                   holding=[offline(down, 45)], checked_ids=[down.id, up.id], now=NOW)  # type: ignore[list-item]
    # Still down at the next check: refreshed, nothing new opened.
    again = await reconcile_alarms(session, subject_kind=AlarmSubjectKind.concentrator, kind=AlarmKind.offline,
                                   holding=[offline(down, 60)], checked_ids=[down.id, up.id],  # type: ignore[list-item]
                                   now=NOW + timedelta(minutes=15))
    alarm_id = first.opened[0]
    acknowledged = await acknowledge_alarm(session, alarm_id=alarm_id, by="王工", note="已派人", now=NOW,
                                           scope_patterns=[tree.east.path + "%"])
    # Back online: the next check closes it as cleared, acknowledged or not.
    cleared = await reconcile_alarms(session, subject_kind=AlarmSubjectKind.concentrator, kind=AlarmKind.offline,
                                     holding=[], checked_ids=[down.id, up.id], now=NOW + timedelta(minutes=30))  # type: ignore[list-item]

    assert (len(first.opened), first.closed, again.opened, again.refreshed) == (1, (), (), 1)
    assert acknowledged.status is AlarmStatus.acknowledged
    assert cleared.closed == (alarm_id,)
    row = await alarm_view(session, alarm_id=alarm_id, scope_patterns=None)
    assert (row.subject_kind, row.subject_id, row.subject_name, row.kind, row.severity, row.value) == (
        "concentrator", down.id, down.name, "offline", "critical", Decimal(60))
    assert (row.status, row.closed_by, row.close_reason, row.acknowledged_by, row.area_name) == (
        "closed", "system", "condition cleared", "王工", "翠湖小区")
    assert row.last_seen_at == NOW + timedelta(minutes=15)
    assert (await events(session, "alarm.opened"))[opened_before:] == [{"alarm_ids": [alarm_id]}]
    assert (await events(session, "alarm.closed"))[closed_before:] == [{"alarm_ids": [alarm_id], "by": "system"}]


async def test_open_and_close_cleared_by_subject_and_a_closed_alarm_reopens_as_a_new_one(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    terminal = await make_concentrator(session, tree.west)

    opened = await open_alarms(session, subject_kind=AlarmSubjectKind.terminal, kind=AlarmKind.offline,
                               subjects=[offline(terminal, 40), offline(terminal, 41)], now=NOW)
    closed_by_hand = await close_alarm(session, alarm_id=opened.opened[0], by="李工", reason="已重启", now=NOW,
                                       scope_patterns=None)
    reopened = await open_alarms(session, subject_kind=AlarmSubjectKind.terminal, kind=AlarmKind.offline,
                                 subjects=[offline(terminal, 50)], now=NOW + timedelta(minutes=5))
    cleared = await close_cleared_alarms(session, subject_kind=AlarmSubjectKind.terminal, kind=AlarmKind.offline,
                                         subject_ids=[terminal.id], now=NOW + timedelta(minutes=10))  # type: ignore[list-item]
    nothing_left = await close_cleared_alarms(session, subject_kind=AlarmSubjectKind.terminal, kind=AlarmKind.offline,
                                              subject_ids=[terminal.id], now=NOW + timedelta(minutes=10))  # type: ignore[list-item]

    assert len(opened.opened) == 1  # one row per subject, the last report winning
    assert closed_by_hand.closed_by == "李工"
    assert len(reopened.opened) == 1 and reopened.opened != opened.opened
    assert cleared == reopened.opened and nothing_left == ()
    assert (await events(session, "alarm.closed"))[-1] == {"alarm_ids": list(cleared), "by": "system"}


async def test_outside_the_area_an_alarm_is_not_found_and_without_an_area_only_whole_tree_scope_sees_it(
    session: AsyncSession,
) -> None:
    tree = await make_area_tree(session)
    east_box = await make_concentrator(session, tree.east_community)
    in_east = await open_alarms(session, subject_kind=AlarmSubjectKind.concentrator, kind=AlarmKind.offline,
                                subjects=[offline(east_box, 31)], now=NOW)
    company_wide = await open_alarms(
        session, subject_kind=AlarmSubjectKind.gateway, kind=AlarmKind.delivery_failing, now=NOW,
        subjects=[AlarmSubject(7, value=Decimal(5), threshold=Decimal(3), detail="连续 5 次发送失败", name="短信网关")])
    west, east = [tree.west.path + "%"], [tree.east.path + "%"]
    roots = await session.execute(text("SELECT path FROM areas WHERE parent_id IS NULL"))
    everything = [path + "%" for path, in roots]  # whole-tree scope: every root area

    for attempt in (
        acknowledge_alarm(session, alarm_id=in_east.opened[0], by="x", note=None, now=NOW, scope_patterns=west),
        close_alarm(session, alarm_id=in_east.opened[0], by="x", reason=None, now=NOW, scope_patterns=west),
        alarm_view(session, alarm_id=in_east.opened[0], scope_patterns=west),
        acknowledge_alarm(session, alarm_id=company_wide.opened[0], by="x", note=None, now=NOW, scope_patterns=east),
    ):
        with pytest.raises(NotFound):
            await attempt

    ids = [*in_east.opened, *company_wide.opened]
    assert [row.id for row in await alarms_visible_to(session, alarm_ids=ids, scope_patterns=east)] == list(in_east.opened)
    assert await alarms_visible_to(session, alarm_ids=ids, scope_patterns=west) == []
    assert await alarms_visible_to(session, alarm_ids=ids, scope_patterns=[]) == []
    assert [row.id for row in await alarms_visible_to(session, alarm_ids=ids, scope_patterns=everything)] == sorted(ids)
    gateway = (await alarms_visible_to(session, alarm_ids=company_wide.opened, scope_patterns=None))[0]
    assert (gateway.subject_kind, gateway.subject_name, gateway.area_id, gateway.meter_code) == (
        "gateway", "短信网关", None, None)


# --------------------------------------------------------------------------- the general list (GraphQL)


@dataclass
class Subjects:
    tree: AreaTree
    east_box: Concentrator
    west_box: Concentrator
    meter_alarm_id: int
    east_manager: Staff
    west_manager: Staff
    reader: Staff


@pytest.fixture(scope="module")
async def subjects(world: World, engine_for_module: AsyncEngine) -> Subjects:
    """An offline concentrator in each district, a gateway alarm of the whole company and
    a meter with a low battery in the east; managers of each district and a reader over
    the company (the only root: whole-tree scope)."""
    tree = world.tree
    async with session_factory(engine_for_module)() as session, session.begin():
        east_box, west_box = await make_concentrator(session, tree.east_community), await make_concentrator(session, tree.west)
        await open_alarms(session, subject_kind=AlarmSubjectKind.concentrator, kind=AlarmKind.offline,
                          subjects=[offline(east_box, 35), offline(west_box, 90)], now=NOW)
        await open_alarms(session, subject_kind=AlarmSubjectKind.gateway, kind=AlarmKind.delivery_failing, now=NOW,
                          subjects=[AlarmSubject(1, detail="连续 4 次发送失败", name="推送网关")])
        code = unique("SM")
        meter = await create_meter(session, fields=MeterChanges(
            name=f"表{code}", code=code, address=f"{abs(hash(code)) % 10**14:014d}", meter_type=MeterType.cold_water,
            area_id=tree.east_community.id, initial_reading=Decimal(0), status=MeterStatus.installed))
        await session.execute(text(
            "INSERT INTO latest_readings (meter_id, read_at, total_m3, battery, quality, source, received_at)"
            " VALUES (:id, :at, 1, 3.0, 'actual', 'test', :at)"), {"id": meter.id, "at": NOW - timedelta(hours=1)})
        await evaluate_alarms(session, actor=system_actor({"alarms:manage"}), now=NOW, tz="Asia/Shanghai",
                              meter_ids=[meter.id])  # type: ignore[list-item]
        meter_alarm_id = (await session.execute(text(
            "SELECT id FROM alarms WHERE subject_kind = 'meter' AND subject_id = :m AND kind = 'battery_low'"),
            {"m": meter.id})).scalar_one()
        east_manager = await make_staff(session, permissions={"alarms:read", "alarms:manage"}, areas=[tree.east])
        west_manager = await make_staff(session, permissions={"alarms:read", "alarms:manage"}, areas=[tree.west])
        reader = await make_staff(session, permissions={"alarms:read"}, areas=[tree.company])
    return Subjects(tree, east_box, west_box, meter_alarm_id, east_manager, west_manager, reader)


def _nodes(result: dict[str, Any]) -> list[dict[str, Any]]:
    assert "errors" not in result, result
    return [edge["node"] for edge in result["data"]["alarms"]["edges"]]


async def test_the_list_shows_every_subject_in_scope_and_filters_by_subject_kind(
    client: GraphQLClient, subjects: Subjects
) -> None:
    east = await client.login(subjects.east_manager.username, subjects.east_manager.password)
    reader = await client.login(subjects.reader.username, subjects.reader.password)

    in_east = _nodes(await client.execute(ALARMS, {}, token=east))
    everywhere = _nodes(await client.execute(ALARMS, {}, token=reader))
    boxes = _nodes(await client.execute(ALARMS, {"filter": {"subjectKinds": ["concentrator"]}}, token=reader))
    one_box = _nodes(await client.execute(ALARMS, {"filter": {
        "subjectId": encode_id("Concentrator", subjects.west_box.id)}}, token=reader))  # type: ignore[arg-type]
    critical_in_west = _nodes(await client.execute(ALARMS, {"filter": {
        "severities": ["critical"], "areaId": encode_id("Area", subjects.tree.west.id)}}, token=reader))  # type: ignore[arg-type]

    assert sorted((n["subjectKind"], n["kind"]) for n in in_east) == [
        ("concentrator", "offline"), ("meter", "battery_low")]
    assert sorted(n["subjectKind"] for n in everywhere) == ["concentrator", "concentrator", "gateway", "meter"]
    assert {n["subjectName"] for n in boxes} == {subjects.east_box.name, subjects.west_box.name}
    assert [n["subjectId"] for n in one_box] == [encode_id("Concentrator", subjects.west_box.id)]  # type: ignore[arg-type]
    assert [(n["subjectName"], n["value"], n["threshold"]) for n in critical_in_west] == [
        (subjects.west_box.name, "90.0000", "30.0000")]
    meter = next(n for n in everywhere if n["subjectKind"] == "meter")
    assert (meter["id"], meter["areaName"], meter["meterCode"] is not None) == (
        encode_id("Alarm", subjects.meter_alarm_id), "翠湖小区", True)
    gateway = next(n for n in everywhere if n["subjectKind"] == "gateway")
    assert (gateway["areaName"], gateway["subjectName"], gateway["kind"]) == (None, "推送网关", "delivery_failing")


async def test_acknowledge_and_close_any_subject_in_scope_and_not_found_outside(
    client: GraphQLClient, subjects: Subjects
) -> None:
    east = await client.login(subjects.east_manager.username, subjects.east_manager.password)
    west = await client.login(subjects.west_manager.username, subjects.west_manager.password)
    box = _nodes(await client.execute(ALARMS, {"filter": {"subjectId": encode_id(
        "Concentrator", subjects.east_box.id)}}, token=east))[0]  # type: ignore[arg-type]

    outside = await client.execute(ACKNOWLEDGE, {"id": box["id"]}, token=west)
    node = "query($id: ID!) { node(id: $id) { ... on Alarm { subjectName } } }"
    seen, hidden = [await client.execute(node, {"id": box["id"]}, token=token) for token in (east, west)]
    unseen = _nodes(await client.execute(ALARMS, {"filter": {"subjectKinds": ["concentrator"]}}, token=west))
    acknowledged = await client.execute(ACKNOWLEDGE, {"id": box["id"], "note": "已派人"}, token=east)
    twice = await client.execute(ACKNOWLEDGE, {"id": box["id"]}, token=east)
    as_meter_alarm = await client.execute(ACKNOWLEDGE_METER_ALARM,
                                          {"id": encode_id("MeterAlarm", decode_id(box["id"], "Alarm"))}, token=east)
    closed = await client.execute(CLOSE, {"id": box["id"], "reason": "已更换电源"}, token=east)

    assert outside["data"]["acknowledgeAlarm"] == {"alarm": None, "errors": [{"field": "id", "code": "NOT_FOUND"}]}
    assert [n["subjectName"] for n in unseen] == [subjects.west_box.name]
    assert seen["data"]["node"] == {"subjectName": subjects.east_box.name}
    assert [error["extensions"]["code"] for error in hidden["errors"]] == ["NOT_FOUND"]
    assert acknowledged["data"]["acknowledgeAlarm"] == {"alarm": {
        "id": box["id"], "status": "acknowledged", "acknowledgedBy": subjects.east_manager.user.full_name,
        "acknowledgeNote": "已派人"}, "errors": []}
    assert twice["data"]["acknowledgeAlarm"]["errors"] == [{"field": "id", "code": ErrorCode.ALARM_ALREADY_ACKNOWLEDGED.value}]
    # The abnormal-meter mutation knows meter alarms only.
    assert as_meter_alarm["data"]["acknowledgeMeterAlarm"] == {"alarm": None, "errors": [{"field": "id", "code": "NOT_FOUND"}]}
    assert closed["data"]["closeAlarm"] == {"alarm": {
        "id": box["id"], "status": "closed", "closedBy": subjects.east_manager.user.full_name,
        "closeReason": "已更换电源"}, "errors": []}


async def test_the_list_statement_count_does_not_grow_with_page_size(
    client: GraphQLClient, subjects: Subjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await client.login(subjects.reader.username, subjects.reader.password)
    state = client.http._transport.app.state  # type: ignore[attr-defined]
    page = "query($first: Int) { alarms(first: $first) { totalCount edges { node { id subjectName areaName } } } }"
    await client.execute(page, {"first": 1}, token=token)  # pool connections opened before counting

    with counted_statements(monkeypatch, state.engine, state.read_engine) as small:
        one = await client.execute(page, {"first": 1}, token=token)
    with counted_statements(monkeypatch, state.engine, state.read_engine) as large:
        four = await client.execute(page, {"first": 4}, token=token)

    assert (len(one["data"]["alarms"]["edges"]), len(four["data"]["alarms"]["edges"])) == (1, 4)
    # Authentication, then the page with its count: whatever the size.
    assert len(small) == len(large) == 2
