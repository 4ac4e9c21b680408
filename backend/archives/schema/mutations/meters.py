"""Meter mutations: create, update, retire, delete."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.archives import service
from backend.archives.models import MeterStatus
from backend.archives.schema.mutations.common import MANAGE, _keep, _opt_id, _run, _scope
from backend.archives.schema.types import (
    MeterKindEnum,
    MeterType_,
    MeterTypeEnum,
)
from backend.graphql.errors import UserError
from backend.graphql.relay import decode_id


@strawberry.type
class MeterPayload:
    meter: MeterType_ | None
    errors: list[UserError]


def _meter(m: Any, errors: list[UserError]) -> MeterPayload:
    return MeterPayload(meter=MeterType_.from_row(m) if m else None, errors=errors)


@strawberry.input
class MeterInput:
    name: str | None = strawberry.UNSET
    code: str | None = strawberry.UNSET
    address: str | None = strawberry.UNSET
    meter_type: MeterTypeEnum | None = strawberry.UNSET  # type: ignore[valid-type]
    area_id: strawberry.ID | None = strawberry.UNSET
    kind: MeterKindEnum | None = strawberry.UNSET  # type: ignore[valid-type]
    model_id: strawberry.ID | None = strawberry.UNSET
    protocol: str | None = strawberry.UNSET
    install_date: date | None = strawberry.UNSET
    initial_reading: Decimal | None = strawberry.UNSET
    location: str | None = strawberry.UNSET
    concentrator_id: strawberry.ID | None = strawberry.UNSET
    collector_id: strawberry.ID | None = strawberry.UNSET
    port: int | None = strawberry.UNSET
    measurement_point: int | None = strawberry.UNSET
    mqtt_topic: str | None = strawberry.UNSET

    def changes(self) -> service.MeterChanges:
        return service.MeterChanges(
            name=_keep(self.name), code=_keep(self.code), address=_keep(self.address), meter_type=_keep(self.meter_type),
            area_id=_opt_id(self.area_id, "Area", "areaId"), kind=_keep(self.kind) or service.KEEP,
            model_id=_opt_id(self.model_id, "MeterModel", "modelId"), protocol=_keep(self.protocol),
            install_date=_keep(self.install_date),
            initial_reading=service.KEEP if self.initial_reading in (None, strawberry.UNSET) else self.initial_reading,
            location=_keep(self.location), concentrator_id=_opt_id(self.concentrator_id, "Concentrator", "concentratorId"),
            collector_id=_opt_id(self.collector_id, "Collector", "collectorId"), port=_keep(self.port),
            measurement_point=_keep(self.measurement_point), mqtt_topic=_keep(self.mqtt_topic),
        )


@strawberry.type
class MeterMutations:
    @strawberry.mutation(permission_classes=MANAGE, description="Register a meter or monitoring point.")
    async def create_meter(self, info: Info, input: MeterInput) -> MeterPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.create_meter(session, fields=input.changes(), scope_patterns=_scope(info))

        return await _run(info, "createMeter", lambda m: f"新增水表 {m.code if m else ''}".strip(), _meter, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Change a meter's archive fields.")
    async def update_meter(self, info: Info, id: strawberry.ID, input: MeterInput) -> MeterPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.update_meter(session, meter_id=decode_id(id, "Meter"), changes=input.changes(),
                                              scope_patterns=_scope(info))

        return await _run(info, "updateMeter", lambda m: f"修改水表 {m.code if m else id}", _meter, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Retire (报废) a meter that serves no household.")
    async def retire_meter(self, info: Info, id: strawberry.ID) -> MeterPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.set_meter_status(session, meter_id=decode_id(id, "Meter"), status=MeterStatus.retired,
                                                  scope_patterns=_scope(info), changed_by=info.context.caller.name)

        return await _run(info, "retireMeter", lambda m: f"报废水表 {m.code if m else id}", _meter, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Delete a meter without history (otherwise retire it).")
    async def delete_meter(self, info: Info, id: strawberry.ID) -> MeterPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.delete_meter(session, meter_id=decode_id(id, "Meter"), scope_patterns=_scope(info))

        return await _run(info, "deleteMeter", lambda m: f"删除水表 {m.code if m else id}", _meter, work)
