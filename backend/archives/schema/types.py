"""Archive types and their DataLoaders."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.archives import service
from backend.archives.models import (
    Area,
    AreaKind,
    Collector,
    Concentrator,
    ConnectionKind,
    CustomerType,
    DeviceStatus,
    DiByteOrder,
    Household,
    HouseholdOwner,
    HouseholdStatus,
    HouseholdStatusChange,
    Meter,
    MeterAssignment,
    MeterKind,
    MeterModel,
    MeterReplacement,
    MeterStatus,
    MeterStatusChange,
    MeterType,
    MonitoringStation,
    PayloadFormat,
    StationKind,
)
from backend.auth.principal import Principal
from backend.graphql.fastpath import NOT_PREFETCHED
from backend.graphql.loaders import SessionLoader
from backend.graphql.relay import Node, encode_id

AreaKindEnum = strawberry.enum(AreaKind, name="AreaKind", description="公司 / 片区 / 小区 / 楼 / 单元")
CustomerTypeEnum = strawberry.enum(CustomerType, name="CustomerType", description="居民 / 非居民 / 特种")
HouseholdStatusEnum = strawberry.enum(HouseholdStatus, name="HouseholdStatus", description="正常 / 暂停 / 销户")
MeterTypeEnum = strawberry.enum(MeterType, name="MeterType")
MeterKindEnum = strawberry.enum(MeterKind, name="MeterKind", description="住户水表 / 监测点")
MeterStatusEnum = strawberry.enum(MeterStatus, name="MeterStatus", description="库存 / 在用 / 故障 / 报废")
DiByteOrderEnum = strawberry.enum(DiByteOrder, name="DiByteOrder", description="CJ/T 188 数据标识字节序: 901F or 1F90")
PayloadFormatEnum = strawberry.enum(PayloadFormat, name="PayloadFormat",
                                    description="What an NB-IoT meter publishes over MQTT: a CJ/T 188 frame or JSON")
ConnectionKindEnum = strawberry.enum(ConnectionKind, name="ConnectionKind")
DeviceStatusEnum = strawberry.enum(DeviceStatus, name="DeviceStatus")
HouseholdOrderEnum = strawberry.enum(service.HouseholdOrder, name="HouseholdOrder")
AssignmentKindEnum = strawberry.enum(service.AssignmentKind, name="AssignmentKind",
                                     description="current: serving now (在用) / ended: ended by a move-out or replacement (已拆)")
MeterOrderEnum = strawberry.enum(service.MeterOrder, name="MeterOrder")
StationKindEnum = strawberry.enum(
    StationKind, name="MonitoringStationKind",
    description="水厂出水 plant_outlet / 干管 trunk_main / 泵站 pump_station / 水池 reservoir / 片区进水口 district_inlet")


# --------------------------------------------------------------------------- loaders


class AreaByIdLoader(SessionLoader[int, Area | None]):
    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, Area]:
        return await service.areas_by_ids(session, keys)


class MeterByIdLoader(SessionLoader[int, Meter | None]):
    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, Meter]:
        return await service.meters_by_ids(session, keys)


class HouseholdByIdLoader(SessionLoader[int, Household | None]):
    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, Household]:
        return await service.households_by_ids(session, keys)


class MeterModelByIdLoader(SessionLoader[int, MeterModel | None]):
    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, MeterModel]:
        return await service.meter_models_by_ids(session, keys)


class ConcentratorByIdLoader(SessionLoader[int, Concentrator | None]):
    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, Concentrator]:
        return await service.concentrators_by_ids(session, keys)


class CollectorByIdLoader(SessionLoader[int, Collector | None]):
    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, Collector]:
        return await service.collectors_by_ids(session, keys)


class RoomLabelsByHouseholdIdLoader(SessionLoader[int, service.RoomLabels | None]):
    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, service.RoomLabels]:
        return await service.room_labels_by_household_ids(session, keys)


class OwnersByHouseholdIdLoader(SessionLoader[int, list[HouseholdOwner]]):
    missing: list[HouseholdOwner] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, list[HouseholdOwner]]:
        return await service.owners_by_household_ids(session, keys)


class StatusHistoryByHouseholdIdLoader(SessionLoader[int, list[HouseholdStatusChange]]):
    missing: list[HouseholdStatusChange] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, list[HouseholdStatusChange]]:
        return await service.status_history_by_household_ids(session, keys)


class StatusHistoryByMeterIdLoader(SessionLoader[int, list[MeterStatusChange]]):
    missing: list[MeterStatusChange] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, list[MeterStatusChange]]:
        return await service.status_history_by_meter_ids(session, keys)


class AssignmentsByHouseholdIdLoader(SessionLoader[int, list[MeterAssignment]]):
    missing: list[MeterAssignment] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, list[MeterAssignment]]:
        return await service.assignments_by_household_ids(session, keys)


class AssignmentsByMeterIdLoader(SessionLoader[int, list[MeterAssignment]]):
    missing: list[MeterAssignment] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, list[MeterAssignment]]:
        return await service.assignments_by_meter_ids(session, keys)


class ReplacementsByHouseholdIdLoader(SessionLoader[int, list[MeterReplacement]]):
    missing: list[MeterReplacement] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, list[MeterReplacement]]:
        return await service.replacements_by_household_ids(session, keys)


class StationByIdLoader(SessionLoader[int, MonitoringStation | None]):
    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, MonitoringStation]:
        return await service.stations_by_ids(session, keys)


class InstrumentsByStationIdLoader(SessionLoader[int, list[Meter]]):
    missing: list[Meter] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, list[Meter]]:
        return await service.instruments_by_station_ids(session, keys)


class CollectorsByConcentratorIdLoader(SessionLoader[int, list[Collector]]):
    missing: list[Collector] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, list[Collector]]:
        return await service.collectors_by_concentrator_ids(session, keys)


def visible(principal: Principal | None, path: str) -> bool:
    return principal is not None and principal.in_scope(path)


async def _visible_area(info: Info, area_pk: int) -> Area | None:
    area = await info.context.loader(AreaByIdLoader).load(area_pk)
    return area if area is not None and visible(info.context.principal, area.path) else None


def _reads_archives(info: Info) -> bool:
    """Staff data (devices, other owners, who changed what) needs ``archives:read``."""
    principal: Principal | None = info.context.principal
    return principal is not None and principal.has("archives:read")


def _is_resident(info: Info) -> bool:
    principal: Principal | None = info.context.principal
    return principal is not None and principal.is_resident


async def _visible_meter(info: Info, meter_pk: int) -> Meter | None:
    """A meter reached through a nested field: staff see it within their scope; a resident
    reaches meters only through their own household, which the top level already checked."""
    meter: Meter | None = await info.context.loader(MeterByIdLoader).load(meter_pk)
    if meter is None:
        return None
    if _is_resident(info):
        return meter
    return meter if await _visible_area(info, meter.area_id) is not None else None


async def _visible_concentrator(info: Info, concentrator_pk: int) -> Concentrator | None:
    if not _reads_archives(info):
        return None
    found = await info.context.loader(ConcentratorByIdLoader).load(concentrator_pk)
    return found if found is not None and await _visible_area(info, found.area_id) is not None else None


async def _visible_collector(info: Info, collector_pk: int) -> Collector | None:
    if not _reads_archives(info):
        return None
    found: Collector | None = await info.context.loader(CollectorByIdLoader).load(collector_pk)
    if found is None or await _visible_concentrator(info, found.concentrator_id) is None:
        return None
    return found


# --------------------------------------------------------------------------- areas


@strawberry.type(name="Area", description="A node of the area tree (区域).")
class AreaType(Node):
    name: str
    kind: AreaKindEnum  # type: ignore[valid-type]
    created_at: datetime
    pk: strawberry.Private[int]
    parent_pk: strawberry.Private[int | None]
    path: strawberry.Private[str]
    code: str | None = strawberry.field(default=None, description="区域编码")
    address: str | None = None
    latitude: Decimal | None = None
    longitude: Decimal | None = None
    # The parent as the list query fetched it (None: root or outside the scope).
    parent_prefetched: strawberry.Private[Any] = NOT_PREFETCHED

    @classmethod
    def from_row(cls, area: Area) -> AreaType:
        assert area.id is not None and area.created_at is not None
        return cls(
            id=encode_id("Area", area.id), name=area.name, kind=area.kind, created_at=area.created_at,
            pk=area.id, parent_pk=area.parent_id, path=area.path, code=area.code, address=area.address,
            latitude=area.latitude, longitude=area.longitude,
        )

    @classmethod
    def from_page_row(cls, row: Any, principal: Principal) -> AreaType:
        """A row of :func:`service.area_page_query`, parent included when visible."""
        pk, name, kind, created_at, parent_pk, path, p_pk, p_name, p_kind, p_created_at, p_parent_pk, p_path = row[:12]
        code, address, latitude, longitude = row[12:16]
        parent = None
        if p_pk is not None and principal.in_scope(p_path):
            parent = cls(
                id=encode_id("Area", p_pk), name=p_name, kind=p_kind, created_at=p_created_at,
                pk=p_pk, parent_pk=p_parent_pk, path=p_path,
            )
        return cls(
            id=encode_id("Area", pk), name=name, kind=kind, created_at=created_at,
            pk=pk, parent_pk=parent_pk, path=path, code=code, address=address, latitude=latitude, longitude=longitude,
            parent_prefetched=parent,
        )

    @strawberry.field(description="Depth in the tree: 1 for the company.")
    def level(self) -> int:
        return self.path.count("/") - 1

    @strawberry.field(
        description="The area above; null for the company or outside your scope.",
        metadata={"prefetched": "parent_prefetched"},
    )
    async def parent(self, info: Info) -> AreaType | None:
        if self.parent_prefetched is not NOT_PREFETCHED:
            return self.parent_prefetched  # type: ignore[no-any-return]
        if self.parent_pk is None:
            return None
        parent = await _visible_area(info, self.parent_pk)
        return AreaType.from_row(parent) if parent is not None else None


# --------------------------------------------------------------------------- households


@strawberry.type(name="HouseholdOwner", description="An owner of a household over a period (过户 history).")
class HouseholdOwnerType:
    name: str
    phone: str | None
    id_number: str | None = strawberry.field(description="Masked: 3301**********1234.")
    valid_from: date
    valid_to: date | None = strawberry.field(description="Null for the current owner.")

    @classmethod
    def from_row(cls, owner: HouseholdOwner) -> HouseholdOwnerType:
        return cls(name=owner.name, phone=owner.phone, id_number=service.mask_id_number(owner.id_number),
                   valid_from=owner.valid_from, valid_to=owner.valid_to)


@strawberry.type(name="HouseholdStatusChange", description="One status change of a household.")
class HouseholdStatusChangeType:
    status: HouseholdStatusEnum  # type: ignore[valid-type]
    reason: str
    changed_at: datetime
    changed_by: str | None = strawberry.field(description="Who made the change; null without archives:read.")

    @classmethod
    def from_row(cls, change: HouseholdStatusChange, *, with_author: bool = True) -> HouseholdStatusChangeType:
        return cls(status=change.status, reason=change.reason, changed_at=change.changed_at,
                   changed_by=change.changed_by if with_author else None)


@strawberry.type(name="Household", description="A billed customer at one address (住户).")
class HouseholdType(Node):
    account_no: str = strawberry.field(description="缴费号 / 户号")
    name: str = strawberry.field(description="Registered name (户主姓名).")
    pk: strawberry.Private[int]
    area_pk: strawberry.Private[int]
    phone: str | None = None
    phone2: str | None = None
    id_number: str | None = strawberry.field(default=None, description="Masked: 3301**********1234.")
    address: str = ""
    room: str | None = strawberry.field(default=None, description="房间号: the flat as its building numbers it (0101).")
    customer_type: CustomerTypeEnum = CustomerType.residential  # type: ignore[valid-type]
    sub_type: str | None = strawberry.field(default=None, description="Free sub-type: commercial, industrial, school…")
    population: int = strawberry.field(default=3, description="Household size, for household-size tiers.")
    status: HouseholdStatusEnum = HouseholdStatus.active  # type: ignore[valid-type]
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # The area as the list query fetched it (see from_page_row).
    area_prefetched: strawberry.Private[Any] = NOT_PREFETCHED

    @classmethod
    def from_row(cls, household: Household) -> HouseholdType:
        assert household.id is not None
        return cls(
            id=encode_id("Household", household.id), account_no=household.account_no, name=household.name,
            pk=household.id, area_pk=household.area_id, phone=household.phone, phone2=household.phone2,
            id_number=service.mask_id_number(household.id_number), address=household.address, room=household.room,
            customer_type=household.customer_type, sub_type=household.sub_type, population=household.population,
            status=household.status, created_at=household.created_at, updated_at=household.updated_at,
        )

    @classmethod
    def from_page_row(cls, row: Any) -> HouseholdType:
        """A row of :func:`service.household_page_query`, its area included."""
        area = AreaType(
            id=encode_id("Area", row["area_id"]), name=row["area_name"], kind=AreaKind(row["area_kind"]),
            created_at=row["area_created_at"], pk=row["area_id"], parent_pk=row["area_parent_id"], path=row["area_path"],
            code=row["area_code"], address=row["area_address"], latitude=row["area_latitude"],
            longitude=row["area_longitude"],
        )
        return cls(
            id=encode_id("Household", row["id"]), account_no=row["account_no"], name=row["name"], pk=row["id"],
            area_pk=row["area_id"], phone=row["phone"], phone2=row["phone2"],
            id_number=service.mask_id_number(row["id_number"]), address=row["address"], room=row["room"],
            customer_type=CustomerType(row["customer_type"]), sub_type=row["sub_type"], population=row["population"],
            status=HouseholdStatus(row["status"]), created_at=row["created_at"], updated_at=row["updated_at"],
            area_prefetched=area,
        )

    @strawberry.field(metadata={"prefetched": "area_prefetched"})
    async def area(self, info: Info) -> AreaType | None:
        if self.area_prefetched is not NOT_PREFETCHED:
            return self.area_prefetched  # type: ignore[no-any-return]
        area = await info.context.loader(AreaByIdLoader).load(self.area_pk)
        return AreaType.from_row(area) if area is not None else None

    @strawberry.field(description="楼-单元-房间 (1-1-0101): the building and unit areas above the household, each name "
                      "without its kind's word (1号楼 → 1, 1单元 → 1; also 栋 幢 座 楼), then the room, joined by -; a level "
                      "the tree lacks is left out. Null without a room.")
    async def room_label(self, info: Info) -> str | None:
        if self.room is None:
            return None
        labels = await info.context.loader(RoomLabelsByHouseholdIdLoader).load(self.pk)
        return labels.room_label if labels is not None else None

    @strawberry.field(description="单位名称 as 实时数据 shows it (恒大1-1-0101): the community's name, then roomLabel. "
                      "Null without a room.")
    async def unit_name(self, info: Info) -> str | None:
        if self.room is None:
            return None
        labels = await info.context.loader(RoomLabelsByHouseholdIdLoader).load(self.pk)
        return labels.unit_name if labels is not None else None

    @strawberry.field(description="Meters serving the household now.")
    async def meters(self, info: Info) -> list[MeterType_]:
        assignments = await info.context.loader(AssignmentsByHouseholdIdLoader).load(self.pk)
        current = [a.meter_id for a in assignments if a.valid_to is None]
        meters = await asyncio.gather(*(_visible_meter(info, pk) for pk in current))
        return [MeterType_.from_row(m) for m in meters if m is not None]

    @strawberry.field(description="Every meter assignment, past and current, oldest first (配表 history).")
    async def assignments(self, info: Info) -> list[MeterAssignmentType]:
        assignments = await info.context.loader(AssignmentsByHouseholdIdLoader).load(self.pk)
        return [MeterAssignmentType.from_row(a) for a in assignments]

    @strawberry.field(description="Meter replacements (换表), oldest first.")
    async def replacements(self, info: Info) -> list[MeterReplacementType]:
        replacements = await info.context.loader(ReplacementsByHouseholdIdLoader).load(self.pk)
        return [MeterReplacementType.from_row(r) for r in replacements]

    @strawberry.field(description="The current owner.")
    async def current_owner(self, info: Info) -> HouseholdOwnerType | None:
        owners = await info.context.loader(OwnersByHouseholdIdLoader).load(self.pk)
        current = [o for o in owners if o.valid_to is None]
        return HouseholdOwnerType.from_row(current[0]) if current else None

    @strawberry.field(description="Every owner, oldest first (过户 history). Without archives:read, the current owner only.")
    async def owner_history(self, info: Info) -> list[HouseholdOwnerType]:
        owners = await info.context.loader(OwnersByHouseholdIdLoader).load(self.pk)
        if not _reads_archives(info):
            owners = [o for o in owners if o.valid_to is None]
        return [HouseholdOwnerType.from_row(o) for o in owners]

    @strawberry.field(description="Status changes, oldest first. changedBy is null without archives:read.")
    async def status_history(self, info: Info) -> list[HouseholdStatusChangeType]:
        changes = await info.context.loader(StatusHistoryByHouseholdIdLoader).load(self.pk)
        staff = _reads_archives(info)
        return [HouseholdStatusChangeType.from_row(c, with_author=staff) for c in changes]


# --------------------------------------------------------------------------- devices


@strawberry.type(name="MeterModel", description="A vendor's meter model (型号).")
class MeterModelType(Node):
    vendor: str
    name: str
    protocol: str
    caliber: int = strawberry.field(description="DN, millimetres (15…300).")
    register_digits: int
    register_decimals: int
    multiplier: Decimal = strawberry.field(description="倍率")
    has_valve: bool
    has_battery: bool
    di_byte_order: DiByteOrderEnum  # type: ignore[valid-type]
    payload_format: PayloadFormatEnum = strawberry.field(  # type: ignore[valid-type]
        description="NB-IoT meters: what the device publishes over MQTT.")
    uplink_wait_s: int = strawberry.field(description="NB-IoT meters: how long a command waits for the device's next "
                                                      "uplink (seconds; 86400 by default).")
    preamble_len: int = strawberry.field(description="FE bytes before each request.")
    wire_decimals: int = strawberry.field(description="Places of the volumes in the model's frames.")
    response_timeout_ms: int | None = strawberry.field(description="How long a meter may take to answer; null: the "
                                                       "worker's default.")

    @classmethod
    def from_row(cls, model: MeterModel) -> MeterModelType:
        assert model.id is not None
        return cls(
            id=encode_id("MeterModel", model.id), vendor=model.vendor, name=model.name, protocol=model.protocol,
            caliber=model.caliber, register_digits=model.register_digits, register_decimals=model.register_decimals,
            multiplier=model.multiplier, has_valve=model.has_valve, has_battery=model.has_battery,
            di_byte_order=model.di_byte_order, payload_format=model.payload_format, uplink_wait_s=model.uplink_wait_s,
            preamble_len=model.preamble_len, wire_decimals=model.wire_decimals,
            response_timeout_ms=model.response_timeout_ms,
        )


@strawberry.type(name="Collector", description="A collector (采集器) on a concentrator's bus.")
class CollectorType(Node):
    address: str
    name: str
    concentrator_pk: strawberry.Private[int]

    @classmethod
    def from_row(cls, collector: Collector) -> CollectorType:
        assert collector.id is not None
        return cls(id=encode_id("Collector", collector.id), address=collector.address, name=collector.name,
                   concentrator_pk=collector.concentrator_id)


@strawberry.type(name="Concentrator", description="A concentrator (集中器): Q/GDW 1376.1 region code + terminal address.")
class ConcentratorType(Node):
    name: str
    region_code: str = strawberry.field(description="行政区划码 (A1), 4 digits.")
    terminal_address: int = strawberry.field(description="终端地址 (A2), 1…65535.")
    model: str | None
    protocol: str
    connection: ConnectionKindEnum  # type: ignore[valid-type]
    serial_url: str | None
    baudrate: int | None
    parity: str | None
    bytesize: int | None
    stopbits: str | None
    host: str | None
    port: int | None
    has_terminal_password: bool = strawberry.field(description="Whether a terminal password (PW) is stored; it is never shown.")
    status: DeviceStatusEnum  # type: ignore[valid-type]
    pk: strawberry.Private[int]
    area_pk: strawberry.Private[int]

    @classmethod
    def from_row(cls, c: Concentrator) -> ConcentratorType:
        assert c.id is not None
        return cls(
            id=encode_id("Concentrator", c.id), name=c.name, region_code=c.region_code, terminal_address=c.terminal_address,
            model=c.model, protocol=c.protocol, connection=c.connection, serial_url=c.serial_url, baudrate=c.baudrate,
            parity=c.parity, bytesize=c.bytesize, stopbits=c.stopbits, host=c.host, port=c.port,
            has_terminal_password=c.terminal_password_encrypted is not None, status=c.status, pk=c.id, area_pk=c.area_id,
        )

    @strawberry.field
    async def area(self, info: Info) -> AreaType | None:
        area = await _visible_area(info, self.area_pk)
        return AreaType.from_row(area) if area is not None else None

    @strawberry.field
    async def collectors(self, info: Info) -> list[CollectorType]:
        collectors = await info.context.loader(CollectorsByConcentratorIdLoader).load(self.pk)
        return [CollectorType.from_row(c) for c in collectors]


@strawberry.type(name="MeterStatusChange", description="One step of a meter's life cycle (安装 / 拆回 / 故障 / 修复 / 报废).")
class MeterStatusChangeType:
    from_status: MeterStatusEnum  # type: ignore[valid-type]
    status: MeterStatusEnum  # type: ignore[valid-type]
    reason: str
    location: str | None = strawberry.field(description="Where the meter was when it changed.")
    changed_at: datetime
    changed_by: str

    @classmethod
    def from_row(cls, change: MeterStatusChange) -> MeterStatusChangeType:
        return cls(from_status=change.from_status, status=change.status, reason=change.reason, location=change.location,
                   changed_at=change.changed_at, changed_by=change.changed_by)


@strawberry.type(name="Meter", description="A water meter (表计) or a monitoring point.")
class MeterType_(Node):  # noqa: N801  (MeterType is the enum's name)
    name: str = strawberry.field(description="表计名称")
    code: str = strawberry.field(description="表计编码")
    protocol: str
    address: str = strawberry.field(description="Protocol address (CJ/T 188: 14 BCD digits).")
    meter_type: MeterTypeEnum  # type: ignore[valid-type]
    kind: MeterKindEnum  # type: ignore[valid-type]
    install_date: date | None
    initial_reading: Decimal = strawberry.field(description="起码, m³")
    location: str | None
    status: MeterStatusEnum  # type: ignore[valid-type]
    port: int | None
    measurement_point: int | None
    mqtt_topic: str | None
    pk: strawberry.Private[int]
    area_pk: strawberry.Private[int]
    model_pk: strawberry.Private[int | None]
    concentrator_pk: strawberry.Private[int | None]
    collector_pk: strawberry.Private[int | None]
    station_pk: strawberry.Private[int | None]

    @classmethod
    def from_row(cls, m: Any) -> MeterType_:
        """A :class:`Meter` or a row of :func:`service.meter_page_query` (same names)."""
        get = m.__getitem__ if not isinstance(m, Meter) else m.__getattribute__
        return cls(
            id=encode_id("Meter", get("id")), name=get("name"), code=get("code"), protocol=get("protocol"),
            address=get("address"), meter_type=MeterType(get("meter_type")), kind=MeterKind(get("kind")),
            install_date=get("install_date"), initial_reading=get("initial_reading"), location=get("location"),
            status=MeterStatus(get("status")), port=get("port"), measurement_point=get("measurement_point"),
            mqtt_topic=get("mqtt_topic"), pk=get("id"), area_pk=get("area_id"), model_pk=get("model_id"),
            concentrator_pk=get("concentrator_id"), collector_pk=get("collector_id"), station_pk=get("station_id"),
        )

    @strawberry.field
    async def area(self, info: Info) -> AreaType | None:
        area = await _visible_area(info, self.area_pk)
        return AreaType.from_row(area) if area is not None else None

    @strawberry.field
    async def model(self, info: Info) -> MeterModelType | None:
        if self.model_pk is None:
            return None
        model = await info.context.loader(MeterModelByIdLoader).load(self.model_pk)
        return MeterModelType.from_row(model) if model is not None else None

    @strawberry.field
    async def concentrator(self, info: Info) -> ConcentratorType | None:
        if self.concentrator_pk is None:
            return None
        found = await _visible_concentrator(info, self.concentrator_pk)
        return ConcentratorType.from_row(found) if found is not None else None

    @strawberry.field
    async def collector(self, info: Info) -> CollectorType | None:
        if self.collector_pk is None:
            return None
        found = await _visible_collector(info, self.collector_pk)
        return CollectorType.from_row(found) if found is not None else None

    @strawberry.field(description="The monitoring station (监测站) this instrument belongs to; null for none.")
    async def station(self, info: Info) -> MonitoringStationType | None:
        if self.station_pk is None:
            return None
        found = await info.context.loader(StationByIdLoader).load(self.station_pk)
        # An instrument lies in its station's area, so a visible meter's station is visible.
        return MonitoringStationType.from_row(found) if found is not None else None

    @strawberry.field(description="The household it serves now, when within your scope.")
    async def household(self, info: Info) -> HouseholdType | None:
        assignments = await info.context.loader(AssignmentsByMeterIdLoader).load(self.pk)
        current = [a for a in assignments if a.valid_to is None]
        if not current:
            return None
        household = await info.context.loader(HouseholdByIdLoader).load(current[0].household_id)
        if household is None or await _visible_area(info, household.area_id) is None:
            return None
        return HouseholdType.from_row(household)

    @strawberry.field(description="Every assignment of this meter, oldest first.")
    async def assignments(self, info: Info) -> list[MeterAssignmentType]:
        assignments = await info.context.loader(AssignmentsByMeterIdLoader).load(self.pk)
        return [MeterAssignmentType.from_row(a) for a in assignments]

    @strawberry.field(description="Life-cycle steps (install, uninstall, fault, repair, retire), oldest first; "
                                  "a household meter's assignments are its installations.")
    async def status_history(self, info: Info) -> list[MeterStatusChangeType]:
        changes = await info.context.loader(StatusHistoryByMeterIdLoader).load(self.pk)
        return [MeterStatusChangeType.from_row(c) for c in changes]


@strawberry.type(name="MonitoringStation", description=(
    "监测站: one place on the network (a trunk main, a pump station …) and its monitoring instruments: flow meters "
    "(meterType flow_monitor) measure flow, pressure gauges (pressure_monitor) pressure. Its instruments lie in its "
    "area. 数据监测's figures of a station are in monitoringStations."))
class MonitoringStationType(Node):
    code: str = strawberry.field(description="监测站编码 (unique)")
    name: str = strawberry.field(description="监测站名称")
    kind: StationKindEnum  # type: ignore[valid-type]
    location: str | None
    created_at: datetime
    updated_at: datetime
    pk: strawberry.Private[int]
    area_pk: strawberry.Private[int]

    @classmethod
    def from_row(cls, station: MonitoringStation) -> MonitoringStationType:
        assert station.id is not None and station.created_at is not None and station.updated_at is not None
        return cls(id=encode_id("MonitoringStation", station.id), code=station.code, name=station.name,
                   kind=station.kind, location=station.location, created_at=station.created_at,
                   updated_at=station.updated_at, pk=station.id, area_pk=station.area_id)

    @strawberry.field
    async def area(self, info: Info) -> AreaType | None:
        area = await _visible_area(info, self.area_pk)
        return AreaType.from_row(area) if area is not None else None

    @strawberry.field(description="Its instruments (retired ones included), flow meters first, then by code.")
    async def instruments(self, info: Info) -> list[MeterType_]:
        meters = await info.context.loader(InstrumentsByStationIdLoader).load(self.pk)
        return [MeterType_.from_row(meter) for meter in meters]


@strawberry.type(name="MeterAssignment", description="配表: a meter serving a household over a time range.")
class MeterAssignmentType(Node):
    valid_from: datetime
    valid_to: datetime | None = strawberry.field(description="Null while current.")
    start_reading: Decimal
    end_reading: Decimal | None
    meter_pk: strawberry.Private[int]
    household_pk: strawberry.Private[int]

    @classmethod
    def from_row(cls, a: MeterAssignment) -> MeterAssignmentType:
        assert a.id is not None
        return cls(id=encode_id("MeterAssignment", a.id), valid_from=a.valid_from, valid_to=a.valid_to,
                   start_reading=a.start_reading, end_reading=a.end_reading, meter_pk=a.meter_id, household_pk=a.household_id)

    @classmethod
    def from_page_row(cls, row: Any) -> MeterAssignmentType:
        """A row of :func:`service.assignment_page_query`."""
        return cls(id=encode_id("MeterAssignment", row["id"]), valid_from=row["valid_from"], valid_to=row["valid_to"],
                   start_reading=row["start_reading"], end_reading=row["end_reading"], meter_pk=row["meter_id"],
                   household_pk=row["household_id"])

    @strawberry.field
    async def meter(self, info: Info) -> MeterType_ | None:
        meter = await _visible_meter(info, self.meter_pk)
        return MeterType_.from_row(meter) if meter is not None else None

    @strawberry.field
    async def household(self, info: Info) -> HouseholdType | None:
        household = await info.context.loader(HouseholdByIdLoader).load(self.household_pk)
        if household is None or await _visible_area(info, household.area_id) is None:
            return None
        return HouseholdType.from_row(household)


@strawberry.type(name="MeterReplacement", description="换表: the old meter's final reading and the new one's initial.")
class MeterReplacementType(Node):
    replaced_at: datetime
    old_final_reading: Decimal
    new_initial_reading: Decimal
    reason: str
    replaced_by: str
    old_meter_pk: strawberry.Private[int]
    new_meter_pk: strawberry.Private[int]
    household_pk: strawberry.Private[int]

    @classmethod
    def from_row(cls, r: MeterReplacement) -> MeterReplacementType:
        assert r.id is not None
        return cls(id=encode_id("MeterReplacement", r.id), replaced_at=r.replaced_at, old_final_reading=r.old_final_reading,
                   new_initial_reading=r.new_initial_reading, reason=r.reason, replaced_by=r.replaced_by,
                   old_meter_pk=r.old_meter_id, new_meter_pk=r.new_meter_id, household_pk=r.household_id)

    @classmethod
    def from_page_row(cls, row: Any) -> MeterReplacementType:
        """A row of :func:`service.replacement_page_query`."""
        return cls(id=encode_id("MeterReplacement", row["id"]), replaced_at=row["replaced_at"],
                   old_final_reading=row["old_final_reading"], new_initial_reading=row["new_initial_reading"],
                   reason=row["reason"], replaced_by=row["replaced_by"], old_meter_pk=row["old_meter_id"],
                   new_meter_pk=row["new_meter_id"], household_pk=row["household_id"])

    @strawberry.field(description="The household whose meter was replaced (null outside your scope).")
    async def household(self, info: Info) -> HouseholdType | None:
        household = await info.context.loader(HouseholdByIdLoader).load(self.household_pk)
        if household is None or await _visible_area(info, household.area_id) is None:
            return None
        return HouseholdType.from_row(household)

    @strawberry.field
    async def old_meter(self, info: Info) -> MeterType_ | None:
        meter = await _visible_meter(info, self.old_meter_pk)
        return MeterType_.from_row(meter) if meter is not None else None

    @strawberry.field
    async def new_meter(self, info: Info) -> MeterType_ | None:
        meter = await _visible_meter(info, self.new_meter_pk)
        return MeterType_.from_row(meter) if meter is not None else None
