"""Archive mutations: each runs through run_mutation (one transaction, an audit sentence,
typed payload errors) and requires archives:manage; services apply the data scope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.archives import service
from backend.archives.models import AreaKind, CustomerType, DiByteOrder, HouseholdStatus, MeterStatus
from backend.archives.schema.types import (
    AreaKindEnum,
    AreaType,
    CollectorType,
    ConcentratorType,
    ConnectionKindEnum,
    CustomerTypeEnum,
    DeviceStatusEnum,
    DiByteOrderEnum,
    HouseholdStatusEnum,
    HouseholdType,
    MeterAssignmentType,
    MeterKindEnum,
    MeterModelType,
    MeterReplacementType,
    MeterType_,
    MeterTypeEnum,
)
from backend.clock import utcnow
from backend.graphql import scalars
from backend.graphql.context import Context
from backend.graphql.errors import UserError
from backend.graphql.mutations import run_mutation
from backend.graphql.permissions import Requires
from backend.graphql.relay import decode_id

MANAGE = [Requires("archives:manage")]
PayloadT = TypeVar("PayloadT")


def _keep(value: Any) -> Any:
    return service.KEEP if value is strawberry.UNSET else value


def _opt_id(value: Any, type_name: str, field: str) -> Any:
    if value is strawberry.UNSET:
        return service.KEEP
    return decode_id(value, type_name, field=field) if value is not None else None


def _reading(value: str | None, field: str) -> Decimal | None:
    return service.parse_reading(value, field=field) if value is not None else None


def _scope(info: Info) -> list[str]:
    return info.context.caller.scope_patterns()  # type: ignore[no-any-return]


@strawberry.type
class AreaPayload:
    area: AreaType | None
    errors: list[UserError]


@strawberry.type
class HouseholdMutationPayload:
    household: HouseholdType | None
    errors: list[UserError]


@strawberry.type
class MeterPayload:
    meter: MeterType_ | None
    errors: list[UserError]


@strawberry.type
class MeterAssignmentPayload:
    assignment: MeterAssignmentType | None
    errors: list[UserError]


@strawberry.type
class MeterReplacementPayload:
    replacement: MeterReplacementType | None
    errors: list[UserError]


def _area(a: Any, errors: list[UserError]) -> AreaPayload:
    return AreaPayload(area=AreaType.from_row(a) if a else None, errors=errors)


def _household(h: Any, errors: list[UserError]) -> HouseholdMutationPayload:
    return HouseholdMutationPayload(household=HouseholdType.from_row(h) if h else None, errors=errors)


def _meter(m: Any, errors: list[UserError]) -> MeterPayload:
    return MeterPayload(meter=MeterType_.from_row(m) if m else None, errors=errors)


async def _run(info: Info, action: str, describe: Callable[[Any], str], payload: Callable[[Any, list[UserError]], PayloadT],
               work: Callable[[AsyncSession], Awaitable[Any]]) -> PayloadT:
    return await run_mutation(info, module="archives", action=action, describe=describe, payload=payload, work=work)


@strawberry.input
class AreaInput:
    name: str
    kind: AreaKindEnum  # type: ignore[valid-type]
    parent_id: strawberry.ID | None = None
    code: str | None = None
    address: str | None = None
    latitude: Decimal | None = None
    longitude: Decimal | None = None


@strawberry.input
class UpdateAreaInput:
    name: str | None = strawberry.UNSET
    code: str | None = strawberry.UNSET
    address: str | None = strawberry.UNSET
    latitude: Decimal | None = strawberry.UNSET
    longitude: Decimal | None = strawberry.UNSET


@strawberry.input
class HouseholdInput:
    account_no: str
    name: str
    area_id: strawberry.ID
    phone: str | None = None
    phone2: str | None = None
    id_number: str | None = None
    address: str = ""
    customer_type: CustomerTypeEnum = CustomerType.residential  # type: ignore[valid-type]
    sub_type: str | None = None
    population: int = 3
    owner_since: date | None = None


@strawberry.input
class UpdateHouseholdInput:
    account_no: str | None = strawberry.UNSET
    name: str | None = strawberry.UNSET
    area_id: strawberry.ID | None = strawberry.UNSET
    phone: str | None = strawberry.UNSET
    phone2: str | None = strawberry.UNSET
    id_number: str | None = strawberry.UNSET
    address: str | None = strawberry.UNSET
    customer_type: CustomerTypeEnum | None = strawberry.UNSET  # type: ignore[valid-type]
    sub_type: str | None = strawberry.UNSET
    population: int | None = strawberry.UNSET


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
class ConcentratorPayload:
    concentrator: ConcentratorType | None
    errors: list[UserError]


@strawberry.type
class CollectorPayload:
    collector: CollectorType | None
    errors: list[UserError]


@strawberry.type
class MeterModelPayload:
    meter_model: MeterModelType | None
    errors: list[UserError]


def _concentrator(c: Any, errors: list[UserError]) -> ConcentratorPayload:
    return ConcentratorPayload(concentrator=ConcentratorType.from_row(c) if c else None, errors=errors)


def _collector(c: Any, errors: list[UserError]) -> CollectorPayload:
    return CollectorPayload(collector=CollectorType.from_row(c) if c else None, errors=errors)


def _meter_model(m: Any, errors: list[UserError]) -> MeterModelPayload:
    return MeterModelPayload(meter_model=MeterModelType.from_row(m) if m else None, errors=errors)


def _cipher(info: Info) -> service.TerminalPasswordCipher:
    return service.TerminalPasswordCipher(info.context.settings.secret())


@strawberry.input
class ConcentratorInput:
    """A concentrator's fields: required ones on create; on update only those given change
    (null clears an optional one). ``terminalPassword`` is write-only: stored encrypted,
    never returned (``hasTerminalPassword`` tells whether one is set); empty clears it."""

    name: str | None = strawberry.UNSET
    region_code: str | None = strawberry.UNSET
    terminal_address: int | None = strawberry.UNSET
    area_id: strawberry.ID | None = strawberry.UNSET
    connection: ConnectionKindEnum | None = strawberry.UNSET  # type: ignore[valid-type]
    model: str | None = strawberry.UNSET
    protocol: str | None = strawberry.UNSET
    serial_url: str | None = strawberry.UNSET
    baudrate: int | None = strawberry.UNSET
    parity: str | None = strawberry.UNSET
    bytesize: int | None = strawberry.UNSET
    stopbits: str | None = strawberry.UNSET
    host: str | None = strawberry.UNSET
    port: int | None = strawberry.UNSET
    status: DeviceStatusEnum | None = strawberry.UNSET  # type: ignore[valid-type]
    terminal_password: str | None = strawberry.UNSET

    def changes(self) -> service.ConcentratorChanges:
        return service.ConcentratorChanges(
            name=_keep(self.name), region_code=_keep(self.region_code), terminal_address=_keep(self.terminal_address),
            area_id=_opt_id(self.area_id, "Area", "areaId"), connection=_keep(self.connection), model=_keep(self.model),
            protocol=_keep(self.protocol), serial_url=_keep(self.serial_url), baudrate=_keep(self.baudrate),
            parity=_keep(self.parity), bytesize=_keep(self.bytesize), stopbits=_keep(self.stopbits), host=_keep(self.host),
            port=_keep(self.port), status=_keep(self.status), terminal_password=_keep(self.terminal_password),
        )


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

    def fields(self) -> service.MeterModelFields:
        return service.MeterModelFields(
            vendor=self.vendor, name=self.name, caliber=self.caliber, protocol=self.protocol,
            register_digits=self.register_digits, register_decimals=self.register_decimals,
            multiplier=Decimal(1) if self.multiplier is None else self.multiplier,
            has_valve=self.has_valve, has_battery=self.has_battery, di_byte_order=DiByteOrder(self.di_byte_order),
        )


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=MANAGE, description="Add an area (区域).")
    async def create_area(self, info: Info, input: AreaInput) -> AreaPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.create_area(
                session, name=input.name, kind=AreaKind(input.kind),
                parent_id=decode_id(input.parent_id, "Area", field="parentId") if input.parent_id else None,
                code=input.code, address=input.address, latitude=input.latitude, longitude=input.longitude,
                scope_patterns=_scope(info),
            )

        return await _run(info, "createArea", lambda _: f"新增区域 {input.name[:64]}", _area, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Change an area's name, code, address or coordinates.")
    async def update_area(self, info: Info, id: strawberry.ID, input: UpdateAreaInput) -> AreaPayload:
        async def work(session: AsyncSession) -> Any:
            changes = service.AreaChanges(name=_keep(input.name), code=_keep(input.code), address=_keep(input.address),
                                          latitude=_keep(input.latitude), longitude=_keep(input.longitude))
            return await service.update_area(session, area_id=decode_id(id, "Area"), changes=changes, scope_patterns=_scope(info))

        return await _run(info, "updateArea", lambda a: f"修改区域 {a.name if a else id}", _area, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Rename an area.")
    async def rename_area(self, info: Info, id: strawberry.ID, name: str) -> AreaPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.rename_area(session, area_id=decode_id(id, "Area"), name=name, scope_patterns=_scope(info))

        return await _run(info, "renameArea", lambda _: f"区域改名为 {name[:64]}", _area, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Move an area and its subtree under another parent.")
    async def move_area(self, info: Info, id: strawberry.ID, parent_id: strawberry.ID) -> AreaPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.move_area(session, area_id=decode_id(id, "Area"),
                                           new_parent_id=decode_id(parent_id, "Area", field="parentId"), scope_patterns=_scope(info))

        return await _run(info, "moveArea", lambda a: f"移动区域 {a.name if a else id}", _area, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Delete an empty area.")
    async def delete_area(self, info: Info, id: strawberry.ID) -> AreaPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.delete_area(session, area_id=decode_id(id, "Area"), scope_patterns=_scope(info))

        return await _run(info, "deleteArea", lambda a: f"删除区域 {a.name if a else id}", _area, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Register a household (住户).")
    async def create_household(self, info: Info, input: HouseholdInput) -> HouseholdMutationPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.create_household(
                session, account_no=input.account_no, name=input.name, area_id=decode_id(input.area_id, "Area", field="areaId"),
                phone=input.phone, phone2=input.phone2, id_number=input.id_number, address=input.address,
                customer_type=CustomerType(input.customer_type), sub_type=input.sub_type, population=input.population,
                owner_since=input.owner_since, scope_patterns=_scope(info),
            )

        return await _run(info, "createHousehold", lambda _: f"新增住户 {input.account_no[:32]}", _household, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Correct a household's record.")
    async def update_household(self, info: Info, id: strawberry.ID, input: UpdateHouseholdInput) -> HouseholdMutationPayload:
        async def work(session: AsyncSession) -> Any:
            changes = service.HouseholdChanges(
                account_no=_keep(input.account_no), name=_keep(input.name), area_id=_opt_id(input.area_id, "Area", "areaId"),
                phone=_keep(input.phone), phone2=_keep(input.phone2), id_number=_keep(input.id_number),
                address=_keep(input.address), customer_type=_keep(input.customer_type), sub_type=_keep(input.sub_type),
                population=_keep(input.population),
            )
            return await service.update_household(session, household_id=decode_id(id, "Household"), changes=changes,
                                                   scope_patterns=_scope(info))

        return await _run(info, "updateHousehold", lambda h: f"修改住户 {h.account_no if h else id}", _household, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Suspend, close (销户) or reactivate a household.")
    async def set_household_status(
        self, info: Info, id: strawberry.ID, status: HouseholdStatusEnum, reason: str = ""  # type: ignore[valid-type]
    ) -> HouseholdMutationPayload:
        context: Context = info.context
        checker = context.services.get("balance_checker", service.no_balance)

        async def work(session: AsyncSession) -> Any:
            return await service.set_household_status(
                session, household_id=decode_id(id, "Household"), status=status, reason=reason,
                changed_by=context.caller.name, now=utcnow(), scope_patterns=_scope(info), balance_checker=checker,
            )

        def describe(h: Any) -> str:
            return f"住户 {h.account_no if h else id} 状态改为 {HouseholdStatus(status).value}"

        return await _run(info, "setHouseholdStatus", describe, _household, work)

    @strawberry.mutation(permission_classes=MANAGE, description="过户: a new owner from a date; the old one stays in history.")
    async def transfer_ownership(
        self, info: Info, id: strawberry.ID, name: str, phone: str | None = None, id_number: str | None = None,
        valid_from: datetime | None = None,
    ) -> HouseholdMutationPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.transfer_ownership(
                session, household_id=decode_id(id, "Household"), name=name, phone=phone, id_number=id_number,
                valid_from=(valid_from or utcnow()).astimezone(scalars.display_zone).date(), scope_patterns=_scope(info),
            )

        return await _run(info, "transferOwnership", lambda h: f"住户 {h.account_no if h else id} 过户给 {name[:64]}",
                          _household, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Delete a household without history (otherwise close it).")
    async def delete_household(self, info: Info, id: strawberry.ID) -> HouseholdMutationPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.delete_household(session, household_id=decode_id(id, "Household"), scope_patterns=_scope(info))

        return await _run(info, "deleteHousehold", lambda h: f"删除住户 {h.account_no if h else id}", _household, work)

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
                                                  scope_patterns=_scope(info))

        return await _run(info, "retireMeter", lambda m: f"报废水表 {m.code if m else id}", _meter, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Delete a meter without history (otherwise retire it).")
    async def delete_meter(self, info: Info, id: strawberry.ID) -> MeterPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.delete_meter(session, meter_id=decode_id(id, "Meter"), scope_patterns=_scope(info))

        return await _run(info, "deleteMeter", lambda m: f"删除水表 {m.code if m else id}", _meter, work)

    @strawberry.mutation(permission_classes=MANAGE, description="配表: a meter starts serving a household.")
    async def assign_meter(
        self, info: Info, meter_id: strawberry.ID, household_id: strawberry.ID, valid_from: datetime | None = None,
        start_reading: str | None = None,
    ) -> MeterAssignmentPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.assign_meter(
                session, meter_id=decode_id(meter_id, "Meter", field="meterId"),
                household_id=decode_id(household_id, "Household", field="householdId"),
                valid_from=valid_from or utcnow(), start_reading=_reading(start_reading, 'startReading'), scope_patterns=_scope(info),
                now=utcnow(), tz=scalars.display_zone,
            )

        return await _run(info, "assignMeter", lambda _: "水表分配给住户",
                          lambda a, e: MeterAssignmentPayload(assignment=MeterAssignmentType.from_row(a) if a else None, errors=e),
                          work)

    @strawberry.mutation(permission_classes=MANAGE, description="拆表: a meter stops serving its household.")
    async def end_meter_assignment(
        self, info: Info, meter_id: strawberry.ID, end_reading: str | None = None, valid_to: datetime | None = None,
    ) -> MeterAssignmentPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.end_assignment(session, meter_id=decode_id(meter_id, "Meter", field="meterId"),
                                                valid_to=valid_to or utcnow(), end_reading=_reading(end_reading, 'endReading'),
                                                scope_patterns=_scope(info), now=utcnow(), tz=scalars.display_zone)

        return await _run(info, "endMeterAssignment", lambda _: "水表拆表",
                          lambda a, e: MeterAssignmentPayload(assignment=MeterAssignmentType.from_row(a) if a else None, errors=e),
                          work)

    @strawberry.mutation(permission_classes=MANAGE, description="换表: close the old meter with its final reading and open the new one.")
    async def replace_meter(
        self, info: Info, old_meter_id: strawberry.ID, new_meter_id: strawberry.ID,
        old_final_reading: str | None = None, new_initial_reading: str | None = None,
        replaced_at: datetime | None = None, reason: str = "",
    ) -> MeterReplacementPayload:
        context: Context = info.context

        async def work(session: AsyncSession) -> Any:
            return await service.replace_meter(
                session, old_meter_id=decode_id(old_meter_id, "Meter", field="oldMeterId"),
                new_meter_id=decode_id(new_meter_id, "Meter", field="newMeterId"), replaced_at=replaced_at or utcnow(),
                old_final_reading=_reading(old_final_reading, 'oldFinalReading'),
                new_initial_reading=_reading(new_initial_reading, 'newInitialReading'), reason=reason,
                replaced_by=context.caller.name, scope_patterns=_scope(info), now=utcnow(), tz=scalars.display_zone,
            )

        return await _run(info, "replaceMeter", lambda _: "住户换表",
                          lambda r, e: MeterReplacementPayload(replacement=MeterReplacementType.from_row(r) if r else None, errors=e),
                          work)

    @strawberry.mutation(permission_classes=MANAGE, description="Register a concentrator (集中器).")
    async def create_concentrator(self, info: Info, input: ConcentratorInput) -> ConcentratorPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.create_concentrator(session, fields=input.changes(), cipher=_cipher(info),
                                                     scope_patterns=_scope(info))

        return await run_mutation(info, module="archives", action="createConcentrator",
                                  describe=lambda c: f"新增集中器 {c.name if c else ''}".strip(), payload=_concentrator,
                                  work=work)

    @strawberry.mutation(permission_classes=MANAGE,
                         description="Change a concentrator: connection, serial settings, status or terminal password.")
    async def update_concentrator(self, info: Info, id: strawberry.ID, input: ConcentratorInput) -> ConcentratorPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.update_concentrator(session, concentrator_id=decode_id(id, "Concentrator"),
                                                     changes=input.changes(), cipher=_cipher(info), scope_patterns=_scope(info))

        return await run_mutation(info, module="archives", action="updateConcentrator",
                                  describe=lambda c: f"修改集中器 {c.name if c else id}", payload=_concentrator,
                                  work=work)

    @strawberry.mutation(permission_classes=MANAGE, description="Delete a concentrator with no collector or meter under it.")
    async def delete_concentrator(self, info: Info, id: strawberry.ID) -> ConcentratorPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.delete_concentrator(session, concentrator_id=decode_id(id, "Concentrator"),
                                                     scope_patterns=_scope(info))

        return await _run(info, "deleteConcentrator", lambda c: f"删除集中器 {c.name if c else id}", _concentrator, work)

    @strawberry.mutation(permission_classes=MANAGE,
                         description="Add a collector (采集器) under a concentrator, or change collector `id`.")
    async def save_collector(
        self, info: Info, concentrator_id: strawberry.ID, address: str, name: str, id: strawberry.ID | None = None,
    ) -> CollectorPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.save_collector(
                session, concentrator_id=decode_id(concentrator_id, "Concentrator", field="concentratorId"),
                address=address, name=name, collector_id=decode_id(id, "Collector") if id else None,
                scope_patterns=_scope(info),
            )

        verb = "修改" if id else "新增"
        return await _run(info, "saveCollector", lambda c: f"{verb}采集器 {(c.address if c else address)[:32]}", _collector, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Delete a collector with no meter under it.")
    async def delete_collector(self, info: Info, id: strawberry.ID) -> CollectorPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.delete_collector(session, collector_id=decode_id(id, "Collector"), scope_patterns=_scope(info))

        return await _run(info, "deleteCollector", lambda c: f"删除采集器 {c.address if c else id}", _collector, work)

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
