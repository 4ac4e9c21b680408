"""A meter's life cycle: install, uninstall, fault and repair for every kind of meter,
each refusal writing nothing, the caller's scope, the operation log, and alarms that
watch installed meters (a monitoring point installed through the API) and nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from backend.archives import service
from backend.archives.models import Area, Household, Meter, MeterKind, MeterStatus, MeterStatusChange, MeterType
from backend.audit.models import AuditEntry
from backend.auth.system import system_actor
from backend.clock import utcnow
from backend.db import session_factory
from backend.errors import DomainError, ErrorCode, NotFound, ValidationFailed
from backend.graphql.relay import encode_id
from backend.readings.alarms.service import evaluate_alarms
from tests.archives.test_archives_graphql import _refused_writes_only_its_audit_row
from tests.factories import AreaTree, Staff, make_area_tree, make_household, make_staff, unique
from tests.graphql.client import GraphQLClient, graphql_client

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 2, 1, tzinfo=UTC)
SHANGHAI = ZoneInfo("Asia/Shanghai")
_addresses = iter(range(30260000000000, 30269999999999))


async def make_meter(session: AsyncSession, area: Area, *, kind: MeterKind = MeterKind.household) -> Meter:
    assert area.id is not None
    meter_type = MeterType.flow_monitor if kind is MeterKind.monitoring else MeterType.cold_water
    return await service.create_meter(session, fields=service.MeterChanges(
        name="干管流量计" if kind is MeterKind.monitoring else "户表", code=unique("LC"),
        address=f"{next(_addresses):014d}", meter_type=meter_type, area_id=area.id, kind=kind))


async def history(session: AsyncSession, meter: Meter) -> list[tuple[str, str, str, str | None]]:
    rows = (await session.execute(select(MeterStatusChange).where(MeterStatusChange.meter_id == meter.id)  # type: ignore[arg-type]
                                  .order_by(MeterStatusChange.id))).scalars().all()  # type: ignore[arg-type]
    return [(row.from_status.value, row.status.value, row.reason, row.location) for row in rows]


async def refused(session: AsyncSession, meter: Meter, step: Any) -> DomainError:
    """Run ``step``, which must be refused, and check it changed nothing of the meter."""
    before = (meter.status, meter.location, meter.area_id, await history(session, meter))
    with pytest.raises(DomainError) as refusal:
        await step
    await session.refresh(meter)
    assert (meter.status, meter.location, meter.area_id, await history(session, meter)) == before
    return refusal.value


# --------------------------------------------------------------------------- monitoring points


async def test_a_monitoring_point_is_installed_uninstalled_faulted_and_repaired(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    point = await make_meter(session, tree.company, kind=MeterKind.monitoring)
    assert point.id is not None and tree.east.id is not None

    await service.install_meter(session, meter_id=point.id, location=" 东干管 3 号井 ", area_id=tree.east.id,
                                installed_at=T0, changed_by="王磊")
    assert (point.status, point.location, point.area_id, point.install_date) == (
        MeterStatus.installed, "东干管 3 号井", tree.east.id, T0.astimezone(SHANGHAI).date())
    await service.mark_meter_faulty(session, meter_id=point.id, reason="压力传感器无输出", at=T1, changed_by="王磊")
    assert point.status is MeterStatus.faulty
    await service.repair_meter(session, meter_id=point.id, reason="更换传感器", at=T1, changed_by="王磊")
    assert point.status is MeterStatus.installed  # installed when it failed: back in service
    await service.uninstall_meter(session, meter_id=point.id, reason="管网改造", at=T1, changed_by="王磊")
    assert point.status is MeterStatus.in_stock
    await service.mark_meter_faulty(session, meter_id=point.id, reason="检定不合格", at=T1, changed_by="王磊")
    await service.repair_meter(session, meter_id=point.id, at=T1, changed_by="王磊")
    assert point.status is MeterStatus.in_stock  # faulty in stock: back in stock

    assert await history(session, point) == [
        ("in_stock", "installed", "", "东干管 3 号井"),
        ("installed", "faulty", "压力传感器无输出", "东干管 3 号井"),
        ("faulty", "installed", "更换传感器", "东干管 3 号井"),
        ("installed", "in_stock", "管网改造", "东干管 3 号井"),
        ("in_stock", "faulty", "检定不合格", "东干管 3 号井"),
        ("faulty", "in_stock", "", "东干管 3 号井"),
    ]


async def test_illegal_steps_of_a_monitoring_point_are_refused_and_change_nothing(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    point = await make_meter(session, tree.company, kind=MeterKind.monitoring)
    assert point.id is not None
    pk = point.id

    for step in (service.uninstall_meter(session, meter_id=pk, at=T1, changed_by="王磊"),
                 service.repair_meter(session, meter_id=pk, at=T1, changed_by="王磊")):
        refusal = await refused(session, point, step)
        assert (refusal.code, refusal.field) == (ErrorCode.METER_STATE_INVALID, "id")
        assert "库存" in refusal.message and "in_stock" in refusal.message_en
    blank = await refused(session, point, service.install_meter(session, meter_id=pk, location="  ", installed_at=T0,
                                                                changed_by="王磊"))
    assert (blank.code, blank.field) == (ErrorCode.REQUIRED, "location")
    too_long = await refused(session, point, service.install_meter(session, meter_id=pk, location="井" * 201,
                                                                   installed_at=T0, changed_by="王磊"))
    assert (too_long.code, too_long.field) == (ErrorCode.TOO_LONG, "location")
    no_reason = await refused(session, point, service.mark_meter_faulty(session, meter_id=pk, reason="", at=T1,
                                                                        changed_by="王磊"))
    assert (no_reason.code, no_reason.field) == (ErrorCode.REQUIRED, "reason")

    await service.install_meter(session, meter_id=pk, location="南干管", installed_at=T0, changed_by="王磊")
    twice = await refused(session, point, service.install_meter(session, meter_id=pk, location="北干管", installed_at=T1,
                                                                changed_by="王磊"))
    assert (twice.code, twice.field) == (ErrorCode.METER_STATE_INVALID, "id")
    await service.mark_meter_faulty(session, meter_id=pk, reason="无信号", at=T1, changed_by="王磊")
    for step in (service.mark_meter_faulty(session, meter_id=pk, reason="再报", at=T1, changed_by="王磊"),
                 service.uninstall_meter(session, meter_id=pk, at=T1, changed_by="王磊"),
                 service.install_meter(session, meter_id=pk, location="北干管", installed_at=T1, changed_by="王磊")):
        refusal = await refused(session, point, step)
        assert refusal.code is ErrorCode.METER_STATE_INVALID and "故障" in refusal.message

    await service.set_meter_status(session, meter_id=pk, status=MeterStatus.retired, changed_by="王磊", at=T1)
    for step in (service.repair_meter(session, meter_id=pk, at=T1, changed_by="王磊"),
                 service.mark_meter_faulty(session, meter_id=pk, reason="x", at=T1, changed_by="王磊")):
        refusal = await refused(session, point, step)
        assert refusal.code is ErrorCode.METER_STATE_INVALID and "已报废" in refusal.message
    assert (await history(session, point))[-1][:2] == ("faulty", "retired")


async def test_installing_into_an_area_outside_the_scope_is_an_unknown_area(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    point = await make_meter(session, tree.east_community, kind=MeterKind.monitoring)
    assert point.id is not None and tree.west_community.id is not None

    refusal = await refused(session, point, service.install_meter(
        session, meter_id=point.id, location="西干管", area_id=tree.west_community.id, installed_at=T0, changed_by="王磊",
        scope_patterns=[tree.east.path + "%"]))

    assert (refusal.code, refusal.field) == (ErrorCode.UNKNOWN_AREA, "areaId")


async def test_a_meter_outside_the_scope_is_not_found_for_every_step(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    point = await make_meter(session, tree.west_community, kind=MeterKind.monitoring)
    assert point.id is not None
    east = [tree.east.path + "%"]

    for step in (service.install_meter(session, meter_id=point.id, location="西干管", installed_at=T0, changed_by="王磊",
                                       scope_patterns=east),
                 service.uninstall_meter(session, meter_id=point.id, at=T1, changed_by="王磊", scope_patterns=east),
                 service.mark_meter_faulty(session, meter_id=point.id, reason="x", at=T1, changed_by="王磊",
                                           scope_patterns=east),
                 service.repair_meter(session, meter_id=point.id, at=T1, changed_by="王磊", scope_patterns=east)):
        refusal = await refused(session, point, step)
        assert isinstance(refusal, NotFound) and refusal.field == "id"


# --------------------------------------------------------------------------- household meters


async def test_a_household_meter_is_installed_only_by_assignment_and_faults_and_repairs_around_it(
    session: AsyncSession,
) -> None:
    tree = await make_area_tree(session)
    meter = await make_meter(session, tree.east_community)
    household = await make_household(session, area=tree.east_community)
    assert meter.id is not None and household.id is not None

    direct = await refused(session, meter, service.install_meter(session, meter_id=meter.id, location="水表箱",
                                                                 installed_at=T0, changed_by="王磊"))
    assert (direct.code, direct.field) == (ErrorCode.METER_STATE_INVALID, "id")
    assert "assignMeter" in direct.message and "assignMeter" in direct.message_en

    await service.assign_meter(session, meter_id=meter.id, household_id=household.id, valid_from=T0)
    assert meter.status is MeterStatus.installed
    taken_back = await refused(session, meter, service.uninstall_meter(session, meter_id=meter.id, at=T1, changed_by="王磊"))
    assert taken_back.code is ErrorCode.METER_ALREADY_ASSIGNED and "endMeterAssignment" in taken_back.message_en

    await service.mark_meter_faulty(session, meter_id=meter.id, reason="不走字", at=T1, changed_by="王磊")
    assert meter.status is MeterStatus.faulty
    await service.repair_meter(session, meter_id=meter.id, at=T1, changed_by="王磊")
    assert meter.status is MeterStatus.installed  # still serving its household

    # A faulty meter taken back stays faulty; repaired, it goes back in stock.
    await service.mark_meter_faulty(session, meter_id=meter.id, reason="表壳破损", at=T1, changed_by="王磊")
    await service.end_assignment(session, meter_id=meter.id, valid_to=T1, end_reading=service.parse_reading("12.5", field="x"))
    assert meter.status is MeterStatus.faulty
    await service.repair_meter(session, meter_id=meter.id, at=T1, changed_by="王磊")
    assert meter.status is MeterStatus.in_stock
    assert [step[:2] for step in await history(session, meter)] == [
        ("installed", "faulty"), ("faulty", "installed"), ("installed", "faulty"), ("faulty", "in_stock")]


async def test_an_installed_monitoring_point_cannot_become_a_household_meter(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    point = await make_meter(session, tree.company, kind=MeterKind.monitoring)
    assert point.id is not None
    await service.install_meter(session, meter_id=point.id, location="东干管", installed_at=T0, changed_by="王磊")

    refusal = await refused(session, point, service.update_meter(
        session, meter_id=point.id, changes=service.MeterChanges(kind=MeterKind.household)))

    assert (refusal.code, refusal.field) == (ErrorCode.METER_STATE_INVALID, "kind")


async def test_a_meter_with_a_life_cycle_history_is_retired_not_deleted(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    point = await make_meter(session, tree.company, kind=MeterKind.monitoring)
    assert point.id is not None
    await service.mark_meter_faulty(session, meter_id=point.id, reason="到货即损坏", at=T0, changed_by="王磊")

    with pytest.raises(DomainError) as refusal:
        await service.delete_meter(session, meter_id=point.id)

    assert refusal.value.code is ErrorCode.HAS_HISTORY


async def test_several_field_problems_come_back_together(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    point = await make_meter(session, tree.company, kind=MeterKind.monitoring)
    assert point.id is not None

    with pytest.raises(ValidationFailed) as refusal:
        await service.install_meter(session, meter_id=point.id, location="", area_id=10**12, installed_at=T0,
                                    changed_by="王磊")

    assert {(e.field, e.code) for e in refusal.value.errors} == {("location", ErrorCode.REQUIRED),
                                                                 ("areaId", ErrorCode.UNKNOWN_AREA)}


# --------------------------------------------------------------------------- over the API, with the alarms

INSTALL = """
mutation($id: ID!, $location: String!, $area: ID) {
  installMeter(id: $id, location: $location, areaId: $area) {
    meter { code kind status location area { name } statusHistory { fromStatus status location changedBy } }
    errors { field code message messageEn }
  }
}"""
UNINSTALL = "mutation($id: ID!) { uninstallMeter(id: $id) { meter { status } errors { field code } } }"
FAULTY = """
mutation($id: ID!, $reason: String!) {
  markMeterFaulty(id: $id, reason: $reason) { meter { status statusHistory { status reason } } errors { field code } }
}"""
REPAIR = "mutation($id: ID!) { repairMeter(id: $id) { meter { status } errors { field code } } }"
SYSTEM = system_actor({"alarms:manage"})


@dataclass
class World:
    tree: AreaTree
    admin: Staff
    east_manager: Staff
    east_point: Meter
    west_point: Meter
    household_meter: Meter
    spare_point: Meter


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine) -> World:
    """Two monitoring points in stock (城东, 城西), one more in 城东 for refusals, and a
    household meter serving a household in 城东; an admin over everything and a manager
    of 城东's archives."""
    async with session_factory(committed_engine)() as session, session.begin():
        tree = await make_area_tree(session)
        admin = await make_staff(session, areas=[tree.company])
        east_manager = await make_staff(session, permissions={"archives:read", "archives:manage"}, areas=[tree.east])
        east_point = await make_meter(session, tree.east_community, kind=MeterKind.monitoring)
        west_point = await make_meter(session, tree.west_community, kind=MeterKind.monitoring)
        spare_point = await make_meter(session, tree.east_community, kind=MeterKind.monitoring)
        household_meter = await make_meter(session, tree.east_community)
        household: Household = await make_household(session, area=tree.east_community)
        assert household_meter.id is not None and household.id is not None
        await service.assign_meter(session, meter_id=household_meter.id, household_id=household.id, valid_from=utcnow())
    return World(tree, admin, east_manager, east_point, west_point, household_meter, spare_point)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(database_url) as api:
        yield api


def gid(type_name: str, row: Any) -> str:
    assert row.id is not None
    return encode_id(type_name, row.id)


async def live_alarms(engine: AsyncEngine, meter: Meter) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT kind FROM meter_alarms WHERE meter_id = :m AND status <> 'closed' ORDER BY kind"), {"m": meter.id})
        return [row.kind for row in rows]


async def sweep(engine: AsyncEngine, now: datetime) -> None:
    """The periodic sweep over every meter, as the evaluate_alarms job runs it."""
    async with session_factory(engine)() as session, session.begin():
        await evaluate_alarms(session, actor=SYSTEM, now=now, tz="Asia/Shanghai")


async def test_a_point_installed_through_the_api_is_watched_by_the_alarms_until_it_is_faulty(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine
) -> None:
    token = await client.login(world.east_manager.username, world.east_manager.password)
    point = gid("Meter", world.east_point)
    later = utcnow() + timedelta(days=3)  # past the default silent threshold (48 h) of a point never read

    await sweep(committed_engine, later)
    assert await live_alarms(committed_engine, world.east_point) == []  # in stock: not watched

    installed = await client.execute(INSTALL, {"id": point, "location": "东干管 3 号井", "area": gid("Area", world.tree.east)},
                                     token=token)
    assert installed["data"]["installMeter"] == {"meter": {
        "code": world.east_point.code, "kind": "monitoring", "status": "installed", "location": "东干管 3 号井",
        "area": {"name": world.tree.east.name},
        "statusHistory": [{"fromStatus": "in_stock", "status": "installed", "location": "东干管 3 号井",
                           "changedBy": world.east_manager.principal.name}],
    }, "errors": []}
    await sweep(committed_engine, later)
    assert await live_alarms(committed_engine, world.east_point) == ["silent"]

    faulty = await client.execute(FAULTY, {"id": point, "reason": "流量计无脉冲"}, token=token)
    assert faulty["data"]["markMeterFaulty"] == {"meter": {"status": "faulty", "statusHistory": [
        {"status": "installed", "reason": ""}, {"status": "faulty", "reason": "流量计无脉冲"}]}, "errors": []}
    await sweep(committed_engine, later)
    assert await live_alarms(committed_engine, world.east_point) == []  # a faulty meter is not evaluated

    repaired = await client.execute(REPAIR, {"id": point}, token=token)
    assert repaired["data"]["repairMeter"] == {"meter": {"status": "installed"}, "errors": []}
    await sweep(committed_engine, later)
    assert await live_alarms(committed_engine, world.east_point) == ["silent"]

    uninstalled = await client.execute(UNINSTALL, {"id": point}, token=token)
    assert uninstalled["data"]["uninstallMeter"] == {"meter": {"status": "in_stock"}, "errors": []}
    await sweep(committed_engine, later)
    assert await live_alarms(committed_engine, world.east_point) == []

    async with session_factory(committed_engine)() as session:
        logged = (await session.execute(
            select(AuditEntry.action, AuditEntry.summary).where(AuditEntry.summary.like(f"%{world.east_point.code}%"))  # type: ignore[attr-defined]
            .order_by(AuditEntry.id))).all()  # type: ignore[arg-type]
    assert [action for action, _ in logged] == ["installMeter", "markMeterFaulty", "repairMeter", "uninstallMeter"]
    assert all("成功" in summary for _, summary in logged)


async def test_installing_a_household_meter_directly_points_to_assign_meter_and_writes_only_the_refusal(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine
) -> None:
    token = await client.login(world.admin.username, world.admin.password)

    errors = await _refused_writes_only_its_audit_row(client, committed_engine, token, INSTALL, {
        "id": gid("Meter", world.household_meter), "location": "水表箱"}, "installMeter")

    assert errors == [{"field": "id", "code": "METER_STATE_INVALID", "message": "住户水表经配表 (assignMeter) 安装到住户",
                       "messageEn": "A household meter is installed by assigning it to a household (assignMeter)"}]


@pytest.mark.parametrize(("document", "variables", "field", "expected"), [
    (UNINSTALL, {}, "uninstallMeter", [{"field": "id", "code": "METER_STATE_INVALID"}]),
    (REPAIR, {}, "repairMeter", [{"field": "id", "code": "METER_STATE_INVALID"}]),
    (FAULTY, {"reason": " "}, "markMeterFaulty", [{"field": "reason", "code": "REQUIRED"}]),
])
async def test_illegal_steps_over_the_api_write_only_the_refusal(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine, document: str, variables: dict[str, Any],
    field: str, expected: list[dict[str, Any]],
) -> None:
    token = await client.login(world.admin.username, world.admin.password)

    errors = await _refused_writes_only_its_audit_row(client, committed_engine, token, document, {
        "id": gid("Meter", world.spare_point), **variables}, field)

    assert errors == expected


async def test_a_point_outside_the_managers_scope_is_not_found_and_writes_only_the_refusal(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine
) -> None:
    token = await client.login(world.east_manager.username, world.east_manager.password)

    errors = await _refused_writes_only_its_audit_row(client, committed_engine, token, INSTALL, {
        "id": gid("Meter", world.west_point), "location": "西干管"}, "installMeter")

    assert [(error["field"], error["code"]) for error in errors] == [("id", "NOT_FOUND")]
    async with session_factory(committed_engine)() as session:
        meter = await session.get(Meter, world.west_point.id)
    assert meter is not None and (meter.status, meter.location) == (MeterStatus.in_stock, None)
