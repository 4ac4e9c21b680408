"""The 数据监测 screen over GraphQL: docs/screens/monitoring.md's query answers exactly the
page's output on the page's world, the station list is one statement however many
stations it holds, and stations and trends keep to the caller's scope and permission."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.archives import service
from backend.archives.models import MeterKind, MeterType, MonitoringStation, StationKind
from backend.db import session_factory
from backend.graphql.relay import encode_id
from backend.readings.schema import stations as stations_schema
from backend.readings.service import ReadingIn, ingest_readings
from tests.doc_examples import examples
from tests.factories import AreaTree, Staff, make_area_tree, make_staff
from tests.graphql.client import GraphQLClient, graphql_client
from tests.graphql.test_dataloaders import counted_statements

PAGE = "docs/screens/monitoring.md"
SHANGHAI = ZoneInfo("Asia/Shanghai")
# The page's "now": 本年累计 counts 2026 from 1 January to this day.
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=SHANGHAI)
_addresses = iter(range(30290000000000, 30299999999999))


def _at(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=SHANGHAI)


# (station code, name, district; flow meter readings (time, register, m³/h); gauge readings (time, MPa))
TRUNK_MAINS = (
    ("GG-EAST", "东干管网", "east",
     [(_at(1, 1, 0), "1000000.00", None), (_at(3, 10, 8), "1360800.00", "210.50"),
      (_at(3, 10, 8, 30), "1360912.50", "236.00"), (_at(3, 10, 9), "1361036.40", "251.20"),
      (_at(3, 10, 9, 30), "1361158.80", "244.80"), (_at(3, 10, 10), "1361273.90", "230.10"),
      (_at(3, 10, 10, 30), "1361386.60", "225.40")],
     [(_at(3, 10, 8), "0.352"), (_at(3, 10, 8, 30), "0.341"), (_at(3, 10, 9), "0.336"), (_at(3, 10, 9, 30), "0.338"),
      (_at(3, 10, 10), "0.344"), (_at(3, 10, 10, 30), "0.347")]),
    ("GG-SOUTH", "南干管网", "east",
     [(_at(1, 1, 0), "500000.00", None), (_at(3, 10, 10), "795102.30", "181.60"), (_at(3, 10, 10, 30), "795193.10", "176.90")],
     [(_at(3, 10, 10), "0.331"), (_at(3, 10, 10, 30), "0.329")]),
    ("GG-WEST", "西干管网", "west",
     [(_at(1, 1, 0), "200000.00", None), (_at(3, 10, 10), "446500.00", "150.00")],
     [(_at(3, 10, 10), "0.325")]),
)


@dataclass
class World:
    tree: AreaTree
    admin: Staff
    east_reader: Staff
    archivist: Staff  # archives only, no 数据监测
    stations: dict[str, MonitoringStation]


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine) -> World:
    """Three trunk mains, each a station of a flow meter and a pressure gauge installed on
    it and read through ingest: 东 and 南 in 城东片区, 西 in 城西片区."""
    async with session_factory(committed_engine)() as session, session.begin():
        tree = await make_area_tree(session)
        admin = await make_staff(session, areas=[tree.company])
        east_reader = await make_staff(session, permissions={"monitoring:read"}, areas=[tree.east])
        archivist = await make_staff(session, permissions={"archives:read"}, areas=[tree.company])
        stations: dict[str, MonitoringStation] = {}
        readings: list[ReadingIn] = []
        for code, name, district, flows, pressures in TRUNK_MAINS:
            area = tree.east if district == "east" else tree.west
            label = name[0]
            station = await service.create_station(session, fields=service.StationChanges(
                code=code, name=name, kind=StationKind.trunk_main, area_id=area.id, location=f"{label}干管监测井"))
            stations[code] = station
            for suffix, meter_type, kind_name in (("F", MeterType.flow_monitor, "流量计"),
                                                  ("P", MeterType.pressure_monitor, "压力计")):
                meter = await service.create_meter(session, fields=service.MeterChanges(
                    name=f"{label}干管{kind_name}", code=f"{code.replace('GG', 'JC')}-{suffix}",
                    address=f"{next(_addresses):014d}", meter_type=meter_type, area_id=tree.company.id,
                    kind=MeterKind.monitoring))
                assert meter.id is not None and station.id is not None
                await service.install_meter(session, meter_id=meter.id, location=f"{label}干管监测井",
                                            installed_at=_at(1, 1, 0) - timedelta(days=1), changed_by="王磊")
                await service.attach_instrument(session, station_id=station.id, meter_id=meter.id)
                if meter_type is MeterType.flow_monitor:
                    readings += [ReadingIn(meter.id, read_at, Decimal(total), flow_rate=Decimal(rate) if rate else None)
                                 for read_at, total, rate in flows]
                else:
                    readings += [ReadingIn(meter.id, read_at, Decimal(0), pressure=Decimal(mpa)) for read_at, mpa in pressures]
        result = await ingest_readings(session, readings=readings, source="test", now=NOW, tz="Asia/Shanghai")
        assert result.rejected == []
    return World(tree, admin, east_reader, archivist, stations)


@pytest.fixture
async def client(database_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[GraphQLClient]:
    # 本年累计 is "this year" as the page's world has it, whatever year the tests run in.
    monkeypatch.setattr(stations_schema, "utcnow", lambda: NOW)
    async with graphql_client(database_url) as api:
        yield api


def _variables(world: World) -> dict[str, Any]:
    return {"areaId": encode_id("Area", world.tree.east.id),  # type: ignore[arg-type]
            "stationId": encode_id("MonitoringStation", world.stations["GG-EAST"].id),  # type: ignore[arg-type]
            "from": "2026-03-10T08:00:00+08:00", "to": "2026-03-10T12:00:00+08:00"}


async def test_the_pages_query_answers_the_pages_output(client: GraphQLClient, world: World) -> None:
    (example,) = examples(PAGE)
    token = await client.login(world.east_reader.username, world.east_reader.password)

    result = await client.execute(example.query, _variables(world), token=token)

    assert "errors" not in result, result["errors"]
    assert result["data"] == example.output


STATIONS = "query($areaId: ID) { monitoringStations(areaId: $areaId) { code yearVolumeM3 flowRate pressure " \
           "instruments { code meterType stationName dailyFlow(days: 3) { volumeM3 } } } }"
TREND = """
query($station: ID!, $grain: TrendGrain!, $from: DateTime!, $to: DateTime!) {
  stationTrend(stationId: $station, measure: FLOW, grain: $grain, from: $from, to: $to) { buckets { samples } }
}"""


async def test_the_station_list_is_the_same_few_statements_for_two_stations_or_three(
    client: GraphQLClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    state = client.http._transport.app.state  # type: ignore[attr-defined]
    await client.execute(STATIONS, {}, token=token)  # pool connections opened before counting

    with counted_statements(monkeypatch, state.engine, state.read_engine) as two_statements:
        two = await client.execute(STATIONS, {"areaId": encode_id("Area", world.tree.east.id)}, token=token)  # type: ignore[arg-type]
    with counted_statements(monkeypatch, state.engine, state.read_engine) as three_statements:
        three = await client.execute(STATIONS, {"areaId": encode_id("Area", world.tree.company.id)}, token=token)  # type: ignore[arg-type]

    assert [s["code"] for s in two["data"]["monitoringStations"]] == ["GG-EAST", "GG-SOUTH"]
    assert [s["code"] for s in three["data"]["monitoringStations"]] == ["GG-EAST", "GG-SOUTH", "GG-WEST"]
    assert three["data"]["monitoringStations"][2]["instruments"][0]["stationName"] == "西干管网"
    # Authentication, the area check, the stations with their instruments, and one
    # batch of daily volumes for every instrument: whatever the number of stations.
    assert len(two_statements) == len(three_statements) == 4


async def test_stations_and_trends_keep_to_the_scope_and_need_monitoring(client: GraphQLClient, world: World) -> None:
    east = await client.login(world.east_reader.username, world.east_reader.password)
    archivist = await client.login(world.archivist.username, world.archivist.password)
    west_station = encode_id("MonitoringStation", world.stations["GG-WEST"].id)  # type: ignore[arg-type]
    window = {"from": "2026-03-10T00:00:00+08:00", "to": "2026-03-11T00:00:00+08:00"}

    listed = await client.execute(STATIONS, {}, token=east)
    foreign_trend = await client.execute(TREND, {"station": west_station, "grain": "HOUR", **window}, token=east)
    too_long = await client.execute(TREND, {"station": encode_id("MonitoringStation", world.stations["GG-EAST"].id),  # type: ignore[arg-type]
                                            "grain": "HOUR", "from": "2026-01-01T00:00:00+08:00",
                                            "to": "2026-02-01T00:00:01+08:00"}, token=east)
    refused = await client.execute(STATIONS, {}, token=archivist)
    archive_view = await client.execute("query($id: ID!) { node(id: $id) { ... on MonitoringStation { code kind "
                                        "instruments { code station { name } } } } }", {"id": west_station},
                                        token=archivist)

    assert [s["code"] for s in listed["data"]["monitoringStations"]] == ["GG-EAST", "GG-SOUTH"]
    assert [(e["extensions"]["code"], e["extensions"].get("field")) for e in foreign_trend["errors"]] == [
        ("NOT_FOUND", "stationId")]
    assert [(e["extensions"]["code"], e["extensions"].get("field")) for e in too_long["errors"]] == [
        ("RANGE_TOO_LONG", "to")]
    assert [e["extensions"]["code"] for e in refused["errors"]] == ["FORBIDDEN"]
    assert archive_view["data"]["node"] == {"code": "GG-WEST", "kind": "trunk_main", "instruments": [
        {"code": "JC-WEST-F", "station": {"name": "西干管网"}}, {"code": "JC-WEST-P", "station": {"name": "西干管网"}}]}
