"""Monitoring stations (监测站): created, changed and deleted within the scope, their
instruments attached and detached (flow and pressure monitoring points only), an
instrument standing in its station's area, refusals that change nothing, and the
mutations' operation log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from backend.archives import service
from backend.archives.models import Area, Meter, MeterKind, MeterStatus, MeterType, MonitoringStation, StationKind
from backend.audit.models import AuditEntry
from backend.db import session_factory
from backend.errors import DomainError, ErrorCode, NotFound
from backend.graphql.relay import encode_id
from tests.archives.test_archives_graphql import _refused_writes_only_its_audit_row
from tests.factories import AreaTree, Staff, make_area_tree, make_staff, unique
from tests.graphql.client import GraphQLClient, graphql_client

_addresses = iter(range(30270000000000, 30279999999999))


async def make_point(session: AsyncSession, area: Area, meter_type: MeterType = MeterType.flow_monitor, *,
                     kind: MeterKind = MeterKind.monitoring) -> Meter:
    assert area.id is not None
    return await service.create_meter(session, fields=service.MeterChanges(
        name="干管仪表", code=unique("ST"), address=f"{next(_addresses):014d}", meter_type=meter_type,
        area_id=area.id, kind=kind))


async def make_station(session: AsyncSession, area: Area, **fields: Any) -> MonitoringStation:
    return await service.create_station(session, fields=service.StationChanges(**{
        "code": unique("JCZ"), "name": "东干管", "kind": StationKind.trunk_main, "area_id": area.id, **fields}))


async def test_a_station_groups_a_flow_meter_and_a_pressure_gauge(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    station = await make_station(session, tree.east, location=" 东环路 12 号井 ")
    flow = await make_point(session, tree.company)
    pressure = await make_point(session, tree.east, MeterType.pressure_monitor)
    assert station.id is not None and flow.id is not None and pressure.id is not None

    await service.attach_instrument(session, station_id=station.id, meter_id=flow.id)
    await service.attach_instrument(session, station_id=station.id, meter_id=pressure.id)

    assert station.location == "东环路 12 号井" and station.kind is StationKind.trunk_main
    # The flow meter was registered at the company: it now stands in the station's area.
    assert (flow.station_id, flow.area_id) == (station.id, tree.east.id)
    instruments = await service.instruments_by_station_ids(session, [station.id])
    assert [m.id for m in instruments[station.id]] == [flow.id, pressure.id]  # flow first


async def test_only_flow_and_pressure_monitoring_points_join_a_station(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    station = await make_station(session, tree.east)
    household_meter = await make_point(session, tree.east, MeterType.cold_water, kind=MeterKind.household)
    cold_point = await make_point(session, tree.east, MeterType.cold_water)
    retired = await make_point(session, tree.east)
    await service.set_meter_status(session, meter_id=retired.id, status=MeterStatus.retired)  # type: ignore[arg-type]
    assert station.id is not None

    for meter, code in ((household_meter, ErrorCode.NOT_A_STATION_INSTRUMENT), (cold_point, ErrorCode.NOT_A_STATION_INSTRUMENT),
                        (retired, ErrorCode.METER_STATE_INVALID)):
        with pytest.raises(DomainError) as refusal:
            await service.attach_instrument(session, station_id=station.id, meter_id=meter.id)  # type: ignore[arg-type]
        assert (refusal.value.code, refusal.value.field) == (code, "meterId")
        await session.refresh(meter)
        assert meter.station_id is None


async def test_a_station_with_instruments_is_not_deleted_until_they_are_detached(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    station = await make_station(session, tree.east)
    flow = await make_point(session, tree.east)
    assert station.id is not None and flow.id is not None
    await service.attach_instrument(session, station_id=station.id, meter_id=flow.id)

    with pytest.raises(DomainError) as refusal:
        await service.delete_station(session, station_id=station.id)
    assert (refusal.value.code, refusal.value.field) == (ErrorCode.STATION_NOT_EMPTY, "id")
    assert await session.get(MonitoringStation, station.id) is not None

    left, meter = await service.detach_instrument(session, meter_id=flow.id)
    await service.delete_station(session, station_id=station.id)

    assert (left.id, meter.station_id) == (station.id, None)
    assert (await session.execute(select(MonitoringStation).where(MonitoringStation.id == station.id))).first() is None  # type: ignore[arg-type]
    with pytest.raises(DomainError) as again:
        await service.detach_instrument(session, meter_id=flow.id)
    assert again.value.code is ErrorCode.NOT_A_STATION_INSTRUMENT


async def test_an_instrument_stands_in_its_stations_area(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    station = await make_station(session, tree.east)
    flow = await make_point(session, tree.east)
    assert station.id is not None and flow.id is not None and tree.west.id is not None
    await service.attach_instrument(session, station_id=station.id, meter_id=flow.id)

    with pytest.raises(DomainError) as moved:
        await service.update_meter(session, meter_id=flow.id, changes=service.MeterChanges(area_id=tree.west.id))
    with pytest.raises(DomainError) as installed_elsewhere:
        await service.install_meter(session, meter_id=flow.id, location="西干管", area_id=tree.west.id,
                                    installed_at=flow.created_at, changed_by="王磊")  # type: ignore[arg-type]
    with pytest.raises(DomainError) as retyped:
        await service.update_meter(session, meter_id=flow.id, changes=service.MeterChanges(meter_type=MeterType.cold_water))
    await session.refresh(flow)
    assert (moved.value.code, moved.value.field) == (ErrorCode.INSTRUMENT_AREA_FIXED, "areaId")
    assert (installed_elsewhere.value.code, installed_elsewhere.value.field) == (ErrorCode.INSTRUMENT_AREA_FIXED, "areaId")
    assert (retyped.value.code, retyped.value.field) == (ErrorCode.NOT_A_STATION_INSTRUMENT, "meterType")
    assert (flow.area_id, flow.meter_type, flow.status) == (tree.east.id, MeterType.flow_monitor, MeterStatus.in_stock)

    # Moving the station moves its instruments.
    await service.update_station(session, station_id=station.id, changes=service.StationChanges(area_id=tree.west.id))
    await session.refresh(flow)
    assert (station.area_id, flow.area_id) == (tree.west.id, tree.west.id)


async def test_station_codes_are_unique_and_fields_are_checked_together(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    station = await make_station(session, tree.east)

    with pytest.raises(DomainError) as duplicate:
        await make_station(session, tree.east, code=station.code)
    with pytest.raises(DomainError) as several:
        await service.create_station(session, fields=service.StationChanges(code="带空格 的编码", name=" ", kind=None,
                                                                            area_id=tree.east.id))

    assert (duplicate.value.code, duplicate.value.field) == (ErrorCode.DUPLICATE, "code")
    assert sorted((p.field, p.code) for p in several.value.errors) == [  # type: ignore[attr-defined]
        ("code", ErrorCode.INVALID), ("kind", ErrorCode.REQUIRED), ("name", ErrorCode.REQUIRED)]


async def test_a_station_or_area_outside_the_scope_is_not_found_or_unknown(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    west_station = await make_station(session, tree.west)
    east_point = await make_point(session, tree.east)
    east_scope = [f"{tree.east.path}%"]
    assert west_station.id is not None and east_point.id is not None

    with pytest.raises(NotFound) as foreign_station:
        await service.attach_instrument(session, station_id=west_station.id, meter_id=east_point.id,
                                        scope_patterns=east_scope)
    with pytest.raises(DomainError) as foreign_area:
        await service.create_station(session, fields=service.StationChanges(
            code=unique("JCZ"), name="西干管", kind=StationKind.trunk_main, area_id=tree.west.id), scope_patterns=east_scope)
    with pytest.raises(NotFound):
        await service.delete_station(session, station_id=west_station.id, scope_patterns=east_scope)

    assert foreign_station.value.field == "stationId"
    assert (foreign_area.value.code, foreign_area.value.field) == (ErrorCode.UNKNOWN_AREA, "areaId")


async def test_an_area_with_a_station_is_not_empty(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    await make_station(session, tree.west_community)

    with pytest.raises(DomainError) as refusal:
        await service.delete_area(session, area_id=tree.west_community.id)  # type: ignore[arg-type]

    assert refusal.value.code is ErrorCode.AREA_NOT_EMPTY


# --------------------------------------------------------------------------- GraphQL

CREATE = """
mutation($input: MonitoringStationInput!) {
  createMonitoringStation(input: $input) { station { id code name kind location area { name } } errors { field code } }
}"""
ATTACH = """
mutation($station: ID!, $meter: ID!) {
  attachStationInstrument(stationId: $station, meterId: $meter) {
    station { code instruments { code meterType } } meter { code station { code } } errors { field code }
  }
}"""
DETACH = "mutation($meter: ID!) { detachStationInstrument(meterId: $meter) { meter { station { code } } errors { field code } } }"
UPDATE = """
mutation($id: ID!, $input: MonitoringStationInput!) {
  updateMonitoringStation(id: $id, input: $input) {
    station { name location area { name } updatedAt instruments { code area { name } } } errors { field code }
  }
}"""
DELETE = "mutation($id: ID!) { deleteMonitoringStation(id: $id) { station { code } errors { field code } } }"


@dataclass
class World:
    tree: AreaTree
    admin: Staff
    east_manager: Staff
    west_station: MonitoringStation
    points: list[Meter]


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine) -> World:
    async with session_factory(committed_engine)() as session, session.begin():
        tree = await make_area_tree(session)
        admin = await make_staff(session, areas=[tree.company])
        east_manager = await make_staff(session, permissions={"archives:read", "archives:manage"}, areas=[tree.east])
        west_station = await make_station(session, tree.west)
        points = [await make_point(session, tree.east), await make_point(session, tree.east, MeterType.pressure_monitor),
                  await make_point(session, tree.east, MeterType.cold_water, kind=MeterKind.household),
                  await make_point(session, tree.west)]
    return World(tree, admin, east_manager, west_station, points)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(database_url) as api:
        yield api


async def _last_entry(engine: AsyncEngine) -> AuditEntry:
    async with session_factory(engine)() as session:
        return (await session.execute(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1))).scalars().one()  # type: ignore[attr-defined]


async def test_a_station_built_over_the_api_is_logged_step_by_step(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine
) -> None:
    token = await client.login(world.east_manager.username, world.east_manager.password)
    flow, pressure, *_ = world.points
    code = unique("EAST")

    created = await client.execute(CREATE, {"input": {"code": code, "name": "东干管网", "kind": "trunk_main",
                                                      "areaId": encode_id("Area", world.tree.east.id),  # type: ignore[arg-type]
                                                      "location": "东环路"}}, token=token)
    station = created["data"]["createMonitoringStation"]["station"]
    assert (await _last_entry(committed_engine)).summary.startswith(f"新增监测站 {code}")
    for point in (pressure, flow):
        attached = await client.execute(ATTACH, {"station": station["id"], "meter": encode_id("Meter", point.id)},  # type: ignore[arg-type]
                                        token=token)
        assert attached["data"]["attachStationInstrument"]["errors"] == []
    entry = await _last_entry(committed_engine)
    detached = await client.execute(DETACH, {"meter": encode_id("Meter", pressure.id)}, token=token)  # type: ignore[arg-type]

    assert created["data"]["createMonitoringStation"]["errors"] == []
    assert (station["name"], station["kind"], station["location"], station["area"]) == (
        "东干管网", "trunk_main", "东环路", {"name": "城东片区"})
    assert attached["data"]["attachStationInstrument"]["station"]["instruments"] == [
        {"code": flow.code, "meterType": "flow_monitor"}, {"code": pressure.code, "meterType": "pressure_monitor"}]
    assert attached["data"]["attachStationInstrument"]["meter"]["station"] == {"code": code}
    assert (entry.action, entry.success, entry.summary) == ("attachStationInstrument", True, f"{flow.code} 加入监测站 {code}: 成功")
    assert detached["data"]["detachStationInstrument"] == {"meter": {"station": None}, "errors": []}
    assert (await _last_entry(committed_engine)).summary == f"{pressure.code} 移出监测站 {code}: 成功"


async def test_refusals_over_the_api_write_only_their_audit_row(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine
) -> None:
    token = await client.login(world.east_manager.username, world.east_manager.password)
    admin = await client.login(world.admin.username, world.admin.password)
    household_meter = world.points[2]
    west = encode_id("MonitoringStation", world.west_station.id)  # type: ignore[arg-type]
    flow = await client.execute(ATTACH, {"station": west, "meter": encode_id("Meter", world.points[3].id)},  # type: ignore[arg-type]
                                token=admin)

    foreign = await _refused_writes_only_its_audit_row(
        client, committed_engine, token, DELETE, {"id": west}, "deleteMonitoringStation")
    not_empty = await _refused_writes_only_its_audit_row(
        client, committed_engine, admin, DELETE, {"id": west}, "deleteMonitoringStation")
    not_instrument = await _refused_writes_only_its_audit_row(
        client, committed_engine, admin, ATTACH, {"station": west, "meter": encode_id("Meter", household_meter.id)},  # type: ignore[arg-type]
        "attachStationInstrument")

    assert flow["data"]["attachStationInstrument"]["errors"] == []
    assert foreign == [{"field": "id", "code": "NOT_FOUND"}]
    assert not_empty == [{"field": "id", "code": "STATION_NOT_EMPTY"}]
    assert not_instrument == [{"field": "meterId", "code": "NOT_A_STATION_INSTRUMENT"}]


async def test_a_station_moved_over_the_api_takes_its_instruments_along(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine
) -> None:
    admin = await client.login(world.admin.username, world.admin.password)
    async with session_factory(committed_engine)() as session, session.begin():
        station = await make_station(session, world.tree.east_community, name="东二干管")
        gauge = await make_point(session, world.tree.east_community, MeterType.pressure_monitor)
        await service.attach_instrument(session, station_id=station.id, meter_id=gauge.id)  # type: ignore[arg-type]

    moved = await client.execute(UPDATE, {"id": encode_id("MonitoringStation", station.id),  # type: ignore[arg-type]
                                          "input": {"areaId": encode_id("Area", world.tree.east.id), "location": None}},  # type: ignore[arg-type]
                                 token=admin)

    payload = moved["data"]["updateMonitoringStation"]
    assert payload["errors"] == []
    assert {key: payload["station"][key] for key in ("name", "location", "area", "instruments")} == {
        "name": "东二干管", "location": None, "area": {"name": "城东片区"},
        "instruments": [{"code": gauge.code, "area": {"name": "城东片区"}}]}
    assert payload["station"]["updatedAt"] is not None
    assert (await _last_entry(committed_engine)).summary == f"修改监测站 {station.code}: 成功"
