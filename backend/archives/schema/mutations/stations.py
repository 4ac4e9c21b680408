"""Monitoring station mutations: create, update, delete a station (监测站), and attach or
detach an instrument (a flow or pressure monitoring point). The rules are in
backend.archives.service.stations."""

from __future__ import annotations

from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.archives import service
from backend.archives.schema.mutations.common import MANAGE, _keep, _opt_id, _run, _scope
from backend.archives.schema.types import MeterType_, MonitoringStationType, StationKindEnum
from backend.graphql.errors import UserError
from backend.graphql.relay import decode_id


@strawberry.type
class MonitoringStationPayload:
    station: MonitoringStationType | None
    errors: list[UserError]


@strawberry.type
class StationInstrumentPayload:
    station: MonitoringStationType | None = strawberry.field(description="The station the instrument joined or left.")
    meter: MeterType_ | None
    errors: list[UserError]


def _station(s: Any, errors: list[UserError]) -> MonitoringStationPayload:
    return MonitoringStationPayload(station=MonitoringStationType.from_row(s) if s else None, errors=errors)


def _instrument(pair: Any, errors: list[UserError]) -> StationInstrumentPayload:
    station, meter = pair if pair else (None, None)
    return StationInstrumentPayload(station=MonitoringStationType.from_row(station) if station else None,
                                    meter=MeterType_.from_row(meter) if meter else None, errors=errors)


@strawberry.input(description="A station's fields: code, name, kind and areaId required on create; on update only "
                              "those given change (null clears the location).")
class MonitoringStationInput:
    code: str | None = strawberry.UNSET
    name: str | None = strawberry.UNSET
    kind: StationKindEnum | None = strawberry.UNSET  # type: ignore[valid-type]
    area_id: strawberry.ID | None = strawberry.UNSET
    location: str | None = strawberry.UNSET

    def changes(self) -> service.StationChanges:
        return service.StationChanges(code=_keep(self.code), name=_keep(self.name), kind=_keep(self.kind),
                                      area_id=_opt_id(self.area_id, "Area", "areaId"), location=_keep(self.location))


def _named(pair: Any) -> str:
    station, meter = pair
    return f"{meter.code} {'加入' if meter.station_id else '移出'}监测站 {station.code}"


@strawberry.type
class StationMutations:
    @strawberry.mutation(permission_classes=MANAGE, description="Register a monitoring station (监测站) in an area.")
    async def create_monitoring_station(self, info: Info, input: MonitoringStationInput) -> MonitoringStationPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.create_station(session, fields=input.changes(), scope_patterns=_scope(info))

        return await _run(info, "createMonitoringStation", lambda s: f"新增监测站 {s.code if s else ''}".strip(), _station,
                          work)

    @strawberry.mutation(permission_classes=MANAGE, description=(
        "Change a monitoring station; a new area moves its instruments with it."))
    async def update_monitoring_station(self, info: Info, id: strawberry.ID,
                                        input: MonitoringStationInput) -> MonitoringStationPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.update_station(session, station_id=decode_id(id, "MonitoringStation"),
                                                changes=input.changes(), scope_patterns=_scope(info))

        return await _run(info, "updateMonitoringStation", lambda s: f"修改监测站 {s.code if s else id}", _station, work)

    @strawberry.mutation(permission_classes=MANAGE, description=(
        "Delete a monitoring station no instrument belongs to (STATION_NOT_EMPTY otherwise)."))
    async def delete_monitoring_station(self, info: Info, id: strawberry.ID) -> MonitoringStationPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.delete_station(session, station_id=decode_id(id, "MonitoringStation"),
                                                scope_patterns=_scope(info))

        return await _run(info, "deleteMonitoringStation", lambda s: f"删除监测站 {s.code if s else id}", _station, work)

    @strawberry.mutation(permission_classes=MANAGE, description=(
        "Make a flow or pressure monitoring point (meterType flow_monitor / pressure_monitor) an instrument of a station "
        "(NOT_A_STATION_INSTRUMENT for any other meter). The meter moves into the station's area; one of another "
        "station moves over."))
    async def attach_station_instrument(self, info: Info, station_id: strawberry.ID,
                                        meter_id: strawberry.ID) -> StationInstrumentPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.attach_instrument(
                session, station_id=decode_id(station_id, "MonitoringStation", field="stationId"),
                meter_id=decode_id(meter_id, "Meter", field="meterId"), scope_patterns=_scope(info))

        return await _run(info, "attachStationInstrument", lambda p: _named(p) if p else f"监测站添加仪表 {meter_id}",
                          _instrument, work)

    @strawberry.mutation(permission_classes=MANAGE, description=(
        "Take an instrument out of its station (NOT_A_STATION_INSTRUMENT when it belongs to none)."))
    async def detach_station_instrument(self, info: Info, meter_id: strawberry.ID) -> StationInstrumentPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.detach_instrument(session, meter_id=decode_id(meter_id, "Meter", field="meterId"),
                                                   scope_patterns=_scope(info))

        return await _run(info, "detachStationInstrument", lambda p: _named(p) if p else f"监测站移除仪表 {meter_id}",
                          _instrument, work)
