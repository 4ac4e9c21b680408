"""Meter model (表型) mutations: save and delete."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.archives import service
from backend.archives.models import DiByteOrder, PayloadFormat
from backend.archives.schema.mutations.common import MANAGE, _run, _scope
from backend.archives.schema.types import (
    DiByteOrderEnum,
    MeterModelType,
    PayloadFormatEnum,
)
from backend.graphql.errors import UserError
from backend.graphql.relay import decode_id


@strawberry.type
class MeterModelPayload:
    meter_model: MeterModelType | None
    errors: list[UserError]


def _meter_model(m: Any, errors: list[UserError]) -> MeterModelPayload:
    return MeterModelPayload(meter_model=MeterModelType.from_row(m) if m else None, errors=errors)


@strawberry.input
class MeterModelInput:
    vendor: str
    name: str
    caliber: int = strawberry.field(description="DN, millimetres: 15, 20, 25 … 300.")
    protocol: str = "cjt188"
    register_digits: int = 5
    register_decimals: int = 3
    multiplier: Decimal | None = strawberry.field(default=None, description="倍率; null: 1.")
    has_valve: bool = False
    has_battery: bool = False
    di_byte_order: DiByteOrderEnum = DiByteOrder.standard  # type: ignore[valid-type]
    payload_format: PayloadFormatEnum = PayloadFormat.cjt188  # type: ignore[valid-type]
    uplink_wait_s: int = strawberry.field(default=86400, description="NB-IoT: seconds a command waits for the "
                                                                      "device's next uplink (1 s … 7 days).")
    preamble_len: int = strawberry.field(default=2, description="FE bytes before each request, 0-16.")
    wire_decimals: int = strawberry.field(default=2, description="Places of the volumes in the model's frames, 0-4 "
                                          "(the standard's XXXXXX.XX: 2; not registerDecimals).")
    response_timeout_ms: int | None = strawberry.field(default=None, description="How long a meter of the model may "
                                                       "take to answer, 50-60000 ms; null: the worker's default.")

    def fields(self) -> service.MeterModelFields:
        return service.MeterModelFields(
            vendor=self.vendor, name=self.name, caliber=self.caliber, protocol=self.protocol,
            register_digits=self.register_digits, register_decimals=self.register_decimals,
            multiplier=Decimal(1) if self.multiplier is None else self.multiplier,
            has_valve=self.has_valve, has_battery=self.has_battery, di_byte_order=DiByteOrder(self.di_byte_order),
            payload_format=PayloadFormat(self.payload_format), uplink_wait_s=self.uplink_wait_s,
            preamble_len=self.preamble_len, wire_decimals=self.wire_decimals, response_timeout_ms=self.response_timeout_ms,
        )


@strawberry.type
class MeterModelMutations:
    @strawberry.mutation(permission_classes=MANAGE, description="Add a meter model (型号), or replace model `id`'s fields. "
                         "The catalog is shared by the whole company: changing it needs a scope over every area.")
    async def save_meter_model(self, info: Info, input: MeterModelInput, id: strawberry.ID | None = None) -> MeterModelPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.save_meter_model(session, fields=input.fields(),
                                                  model_id=decode_id(id, "MeterModel") if id else None,
                                                  scope_patterns=_scope(info))

        verb = "修改" if id else "新增"
        return await _run(info, "saveMeterModel", lambda _: f"{verb}水表型号 {input.vendor[:32]} {input.name[:32]}",
                          _meter_model, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Delete a meter model no meter uses (needs a scope over every area).")
    async def delete_meter_model(self, info: Info, id: strawberry.ID) -> MeterModelPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.delete_meter_model(session, model_id=decode_id(id, "MeterModel"), scope_patterns=_scope(info))

        return await _run(info, "deleteMeterModel", lambda m: f"删除水表型号 {f'{m.vendor} {m.name}' if m else id}",
                          _meter_model, work)
