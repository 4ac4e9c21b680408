"""Archive tables (档案): the area tree, households with their owners and status history,
meter models, meters (household meters and monitoring points), monitoring stations (监测站)
and their instruments, concentrators and collectors, meter assignments (配表) and
replacements (换表).

Data scope is a path-prefix match on ``areas.path``; every archive row that staff list
carries an ``area_id`` so a list joins ``areas`` once and filters by the caller's scope.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    Enum,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlmodel import Field, SQLModel

from backend.db import enum_column, timestamptz


class AreaKind(StrEnum):
    company = "company"
    district = "district"
    community = "community"
    building = "building"
    unit = "unit"


class CustomerType(StrEnum):
    """The three national water-price classes (居民 / 非居民 / 特种)."""

    residential = "residential"
    non_residential = "non_residential"
    special = "special"


class HouseholdStatus(StrEnum):
    active = "active"
    suspended = "suspended"
    closed = "closed"


class MeterType(StrEnum):
    cold_water = "cold_water"
    hot_water = "hot_water"
    flow_monitor = "flow_monitor"
    pressure_monitor = "pressure_monitor"


class MeterKind(StrEnum):
    """A household meter serves a household; a monitoring point (trunk mains flow meter,
    pressure gauge) never does."""

    household = "household"
    monitoring = "monitoring"


class MeterStatus(StrEnum):
    in_stock = "in_stock"
    installed = "installed"
    faulty = "faulty"
    retired = "retired"


class StationKind(StrEnum):
    """What a monitoring station (监测站) watches: a plant's outlet (水厂出水), a trunk main
    (干管), a pump station (泵站), a reservoir or clear-water tank (水池), or the inlet of
    a district or community (片区进水口)."""

    plant_outlet = "plant_outlet"
    trunk_main = "trunk_main"
    pump_station = "pump_station"
    reservoir = "reservoir"
    district_inlet = "district_inlet"


class DiByteOrder(StrEnum):
    """How a vendor orders the CJ/T 188 data identifier: ``90 1F`` (standard) or ``1F 90``."""

    standard = "901F"
    swapped = "1F90"


class PayloadFormat(StrEnum):
    """What an NB-IoT meter model publishes over MQTT (acquisition.mqtt): a CJ/T 188 frame
    as it would answer on a bus, or the JSON documented in docs/drivers.md."""

    cjt188 = "cjt188"
    json = "json"


class ConnectionKind(StrEnum):
    """How the station reaches a concentrator: it logs in over TCP/4G, a serial port
    (``/dev/ttyUSB0``, ``rfc2217://…``), or a transparent TCP DTU (``socket://host:port``)."""

    tcp_login = "tcp_login"
    serial = "serial"
    dtu_socket = "dtu_socket"


class DeviceStatus(StrEnum):
    active = "active"
    offline = "offline"
    retired = "retired"


def _id() -> Column:  # type: ignore[type-arg]
    return Column(BigInteger, primary_key=True, autoincrement=True)


def _created() -> Column:  # type: ignore[type-arg]
    return timestamptz(nullable=False, server_default=func.now())  # type: ignore[no-any-return]


def _updated() -> Column:  # type: ignore[type-arg]
    return timestamptz(nullable=False, server_default=func.now(), onupdate=func.now())  # type: ignore[no-any-return]


class Area(SQLModel, table=True):
    """A node of the administrative tree (公司 / 片区 / 小区 / 楼 / 单元).

    ``path`` is the materialized path of ids, ``/1/4/17/``: a subtree is every area whose
    path starts with the root's path, which is how data scope is applied in SQL.
    """

    __tablename__ = "areas"
    __mapper_args__ = {"eager_defaults": True}  # server defaults come back with RETURNING
    __table_args__ = (Index("ix_areas_path_prefix", "path", postgresql_ops={"path": "text_pattern_ops"}),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    parent_id: int | None = Field(
        default=None, sa_column=Column(BigInteger, ForeignKey("areas.id"), index=True, nullable=True)
    )
    name: str = Field(sa_column=Column(String(100), nullable=False))
    kind: AreaKind = Field(sa_column=enum_column(AreaKind, nullable=False))
    path: str = Field(sa_column=Column(String(400), nullable=False, unique=True))
    code: str | None = Field(default=None, sa_column=Column(String(32), nullable=True, unique=True))
    address: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    latitude: Decimal | None = Field(default=None, sa_column=Column(Numeric(9, 6), nullable=True))
    longitude: Decimal | None = Field(default=None, sa_column=Column(Numeric(9, 6), nullable=True))
    created_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=False, server_default=func.now()))


class Household(SQLModel, table=True):
    """A billed customer at one address (住户), known to residents by ``account_no`` (缴费号).

    ``name``, ``phone``, ``phone2`` and ``id_number`` are the current owner's; every owner,
    past and present, is a row of ``household_owners`` (过户 history).

    ``room`` (房间号) is the flat as its building numbers it (``0101``: floor 1, flat 01).
    Its labels are derived, never stored (backend.archives.service.rooms):
    the room label (楼-单元-房间, ``1-1-0101``) is the names of the building and unit
    areas above the household (its own area included), each without its kind's word
    (``1号楼`` → ``1``, ``1单元`` → ``1``; 栋 / 幢 / 座 / 楼 too), then the room, joined by
    ``-``; a level the tree lacks is left out (``1-0101`` without units). The unit name
    (单位名称 of 实时数据, ``恒大1-1-0101``) is the name of the community above it, then the
    room label. Both are null without a room.
    """

    __tablename__ = "households"
    __mapper_args__ = {"eager_defaults": True}  # server defaults come back with RETURNING
    __table_args__ = (CheckConstraint("population BETWEEN 1 AND 99", name="population_range"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    account_no: str = Field(sa_column=Column(String(32), nullable=False, unique=True))
    name: str = Field(sa_column=Column(String(100), nullable=False))
    area_id: int = Field(sa_column=Column(BigInteger, ForeignKey("areas.id"), nullable=False, index=True))
    phone: str | None = Field(default=None, sa_column=Column(String(20), nullable=True, index=True))
    phone2: str | None = Field(default=None, sa_column=Column(String(20), nullable=True))
    id_number: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))
    address: str = Field(default="", sa_column=Column(String(200), nullable=False, server_default=""))
    room: str | None = Field(default=None, sa_column=Column(String(16), nullable=True))
    customer_type: CustomerType = Field(
        default=CustomerType.residential,
        sa_column=enum_column(CustomerType, nullable=False, server_default=CustomerType.residential.value),
    )
    sub_type: str | None = Field(default=None, sa_column=Column(String(50), nullable=True))
    # Household size for household-size tiers; three is the common household the tiers assume.
    population: int = Field(default=3, sa_column=Column(Integer, nullable=False, server_default="3"))
    status: HouseholdStatus = Field(
        default=HouseholdStatus.active,
        sa_column=enum_column(HouseholdStatus, nullable=False, server_default=HouseholdStatus.active.value),
    )
    created_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=False, server_default=func.now()))
    updated_at: datetime | None = Field(default=None, sa_column=_updated())


class HouseholdStatusChange(SQLModel, table=True):
    """One change of a household's status, with why and by whom."""

    __tablename__ = "household_status_history"
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=_id())
    household_id: int = Field(sa_column=Column(BigInteger, ForeignKey("households.id"), nullable=False, index=True))
    status: HouseholdStatus = Field(sa_column=enum_column(HouseholdStatus, nullable=False))
    reason: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    changed_at: datetime = Field(sa_column=timestamptz(nullable=False))
    changed_by: str = Field(sa_column=Column(String(100), nullable=False))


class HouseholdOwner(SQLModel, table=True):
    """An owner of a household from ``valid_from`` until ``valid_to`` (null: the current one)."""

    __tablename__ = "household_owners"
    __mapper_args__ = {"eager_defaults": True}
    __table_args__ = (
        Index("uq_household_owners_current", "household_id", unique=True, postgresql_where=text("valid_to IS NULL")),
        CheckConstraint("valid_to IS NULL OR valid_to >= valid_from", name="valid_range"),
    )

    id: int | None = Field(default=None, sa_column=_id())
    household_id: int = Field(sa_column=Column(BigInteger, ForeignKey("households.id"), nullable=False, index=True))
    name: str = Field(sa_column=Column(String(100), nullable=False))
    phone: str | None = Field(default=None, sa_column=Column(String(20), nullable=True))
    id_number: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))
    valid_from: date = Field(sa_column=Column(Date, nullable=False))
    valid_to: date | None = Field(default=None, sa_column=Column(Date, nullable=True))


class MeterModel(SQLModel, table=True):
    """A vendor's meter model (型号): protocol, caliber, register and options.

    The multiplier (倍率) is a whole number (1, 10, 100 …; the service refuses others),
    so usage × multiplier of 4-place registers needs no rounding and the daily rollup
    adds up to ``usage_between`` exactly. Multiplier and register digits are fixed once
    a meter of the model has readings (usage and the rollup would price history apart)."""

    __tablename__ = "meter_models"
    __mapper_args__ = {"eager_defaults": True}
    __table_args__ = (
        UniqueConstraint("vendor", "name"),
        CheckConstraint("caliber BETWEEN 15 AND 300", name="caliber_range"),
        CheckConstraint("register_digits BETWEEN 1 AND 12 AND register_decimals BETWEEN 0 AND 4", name="register_range"),
        CheckConstraint("multiplier > 0", name="multiplier_positive"),
        CheckConstraint("uplink_wait_s BETWEEN 1 AND 604800", name="uplink_wait_range"),
        CheckConstraint("preamble_len BETWEEN 0 AND 16", name="preamble_len_range"),
        CheckConstraint("wire_decimals BETWEEN 0 AND 4", name="wire_decimals_range"),
        CheckConstraint("response_timeout_ms BETWEEN 50 AND 60000", name="response_timeout_range"),
    )

    id: int | None = Field(default=None, sa_column=_id())
    vendor: str = Field(sa_column=Column(String(100), nullable=False))
    name: str = Field(sa_column=Column(String(100), nullable=False))
    protocol: str = Field(default="cjt188", sa_column=Column(String(32), nullable=False, server_default="cjt188"))
    caliber: int = Field(sa_column=Column(Integer, nullable=False))  # DN, millimetres
    register_digits: int = Field(default=5, sa_column=Column(Integer, nullable=False, server_default="5"))
    register_decimals: int = Field(default=3, sa_column=Column(Integer, nullable=False, server_default="3"))
    multiplier: Decimal = Field(default=Decimal(1), sa_column=Column(Numeric(12, 4), nullable=False, server_default="1"))
    has_valve: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))
    has_battery: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))
    di_byte_order: DiByteOrder = Field(
        default=DiByteOrder.standard,
        sa_column=enum_column(DiByteOrder, nullable=False, server_default=DiByteOrder.standard.value),
    )
    # NB-IoT (meters with an MQTT topic): what the device publishes, and how long a command
    # waits for its next uplink (its 命令时限 unless a longer one is given: the device
    # sleeps between uplinks, hours apart).
    payload_format: PayloadFormat = Field(
        default=PayloadFormat.cjt188,
        sa_column=enum_column(PayloadFormat, nullable=False, server_default=PayloadFormat.cjt188.value),
    )
    uplink_wait_s: int = Field(default=86400, sa_column=Column(Integer, nullable=False, server_default="86400"))
    # Wire settings (CJ/T 188): the FE bytes that wake the meter before each request, the
    # places of the volumes in its frames (the standard's XXXXXX.XX: 2; not the register's
    # display, register_decimals), and how long it may take to answer (None: the worker's
    # response_timeout_s).
    preamble_len: int = Field(default=2, sa_column=Column(Integer, nullable=False, server_default="2"))
    wire_decimals: int = Field(default=2, sa_column=Column(Integer, nullable=False, server_default="2"))
    response_timeout_ms: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    created_at: datetime | None = Field(default=None, sa_column=_created())


class Concentrator(SQLModel, table=True):
    """A concentrator (集中器), addressed by Q/GDW 1376.1 region code + terminal address.

    ``terminal_password_encrypted`` holds the terminal's PW field, encrypted with a key
    derived from the station secret (service.TerminalPasswordCipher).
    """

    __tablename__ = "concentrators"
    __mapper_args__ = {"eager_defaults": True}
    __table_args__ = (UniqueConstraint("region_code", "terminal_address"),)

    id: int | None = Field(default=None, sa_column=_id())
    name: str = Field(sa_column=Column(String(100), nullable=False))
    region_code: str = Field(sa_column=Column(String(4), nullable=False))
    terminal_address: int = Field(sa_column=Column(Integer, nullable=False))
    model: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))
    protocol: str = Field(default="gdw1376", sa_column=Column(String(32), nullable=False, server_default="gdw1376"))
    connection: ConnectionKind = Field(sa_column=enum_column(ConnectionKind, nullable=False))
    serial_url: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    baudrate: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    parity: str | None = Field(default=None, sa_column=Column(String(1), nullable=True))
    bytesize: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    stopbits: str | None = Field(default=None, sa_column=Column(String(3), nullable=True))
    host: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    port: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    terminal_password_encrypted: str | None = Field(default=None, sa_column=Column(String(500), nullable=True))
    status: DeviceStatus = Field(
        default=DeviceStatus.active, sa_column=enum_column(DeviceStatus, nullable=False, server_default="active")
    )
    area_id: int = Field(sa_column=Column(BigInteger, ForeignKey("areas.id"), nullable=False, index=True))
    created_at: datetime | None = Field(default=None, sa_column=_created())
    updated_at: datetime | None = Field(default=None, sa_column=_updated())


class Collector(SQLModel, table=True):
    """A collector (采集器) on a concentrator's bus."""

    __tablename__ = "collectors"
    __mapper_args__ = {"eager_defaults": True}
    __table_args__ = (UniqueConstraint("concentrator_id", "address"),)

    id: int | None = Field(default=None, sa_column=_id())
    concentrator_id: int = Field(sa_column=Column(BigInteger, ForeignKey("concentrators.id"), nullable=False, index=True))
    address: str = Field(sa_column=Column(String(32), nullable=False))
    name: str = Field(sa_column=Column(String(100), nullable=False))
    created_at: datetime | None = Field(default=None, sa_column=_created())


class MonitoringStation(SQLModel, table=True):
    """A monitoring station (监测站): one place on the network (a trunk main, a pump station
    …) and the monitoring instruments there (``meters.station_id``): flow meters
    (``flow_monitor``) measure flow, pressure gauges (``pressure_monitor``) pressure. Its
    instruments lie in its area (the service keeps them there), so whoever sees the
    station sees every instrument its figures come from. Other domains refer to a station
    by id (a DMA zone's inflow and outflow points, with the direction on the zone's side)."""

    __tablename__ = "monitoring_stations"
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=_id())
    code: str = Field(sa_column=Column(String(32), nullable=False, unique=True))
    name: str = Field(sa_column=Column(String(100), nullable=False))
    kind: StationKind = Field(sa_column=enum_column(StationKind, nullable=False))
    area_id: int = Field(sa_column=Column(BigInteger, ForeignKey("areas.id"), nullable=False, index=True))
    location: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    created_at: datetime | None = Field(default=None, sa_column=_created())
    updated_at: datetime | None = Field(default=None, sa_column=_updated())


class Meter(SQLModel, table=True):
    """A water meter (水表/表计) or a monitoring point (kind ``monitoring``, never assigned).

    ``address`` is the protocol address (CJ/T 188: 14 BCD digits), unique per protocol;
    ``code`` (表计编码) is the utility's short number. A meter on a bus hangs under a
    concentrator (and maybe a collector) with a port and measurement point; an NB-IoT
    meter has an MQTT topic instead.
    """

    __tablename__ = "meters"
    __mapper_args__ = {"eager_defaults": True}
    __table_args__ = (
        UniqueConstraint("protocol", "address"),
        Index("ix_meters_address_prefix", "address", postgresql_ops={"address": "text_pattern_ops"}),
        # What the MQTT coordinator looks an uplink's meter up by.
        Index("ix_meters_mqtt_topic", "mqtt_topic", postgresql_where=text("mqtt_topic IS NOT NULL")),
    )

    id: int | None = Field(default=None, sa_column=_id())
    name: str = Field(sa_column=Column(String(100), nullable=False))
    code: str = Field(sa_column=Column(String(32), nullable=False, unique=True))
    protocol: str = Field(default="cjt188", sa_column=Column(String(32), nullable=False, server_default="cjt188"))
    address: str = Field(sa_column=Column(String(32), nullable=False))
    meter_type: MeterType = Field(sa_column=enum_column(MeterType, nullable=False))
    kind: MeterKind = Field(default=MeterKind.household, sa_column=enum_column(MeterKind, nullable=False))
    model_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("meter_models.id"), nullable=True, index=True))
    install_date: date | None = Field(default=None, sa_column=Column(Date, nullable=True))
    initial_reading: Decimal = Field(default=Decimal(0), sa_column=Column(Numeric(16, 4), nullable=False, server_default="0"))
    location: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    area_id: int = Field(sa_column=Column(BigInteger, ForeignKey("areas.id"), nullable=False, index=True))
    status: MeterStatus = Field(
        default=MeterStatus.in_stock, sa_column=enum_column(MeterStatus, nullable=False, server_default="in_stock")
    )
    concentrator_id: int | None = Field(
        default=None, sa_column=Column(BigInteger, ForeignKey("concentrators.id"), nullable=True, index=True)
    )
    collector_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("collectors.id"), nullable=True, index=True))
    port: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    measurement_point: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    mqtt_topic: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    station_id: int | None = Field(
        default=None, sa_column=Column(BigInteger, ForeignKey("monitoring_stations.id"), nullable=True, index=True)
    )
    created_at: datetime | None = Field(default=None, sa_column=_created())
    updated_at: datetime | None = Field(default=None, sa_column=_updated())


class MeterStatusChange(SQLModel, table=True):
    """One step of a meter's life cycle (安装 / 拆回 / 故障 / 修复 / 报废): from which status
    to which, why, where the meter was then, when and by whom. Household meters are
    installed and taken back by their assignments (``meter_assignments`` is their record
    of that); their faults, repairs and retirements are rows here too."""

    __tablename__ = "meter_status_history"
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=_id())
    meter_id: int = Field(sa_column=Column(BigInteger, ForeignKey("meters.id"), nullable=False, index=True))
    # Its own CHECK name: two enum_column()s of one enum in a table would share one.
    from_status: MeterStatus = Field(sa_column=Column(
        Enum(MeterStatus, native_enum=False, create_constraint=True, length=32,
             values_callable=lambda members: [member.value for member in members], name="from_meterstatus"),
        nullable=False))
    status: MeterStatus = Field(sa_column=enum_column(MeterStatus, nullable=False))
    reason: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    location: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    area_id: int = Field(sa_column=Column(BigInteger, ForeignKey("areas.id"), nullable=False))
    changed_at: datetime = Field(sa_column=timestamptz(nullable=False))
    changed_by: str = Field(sa_column=Column(String(100), nullable=False))


class MeterAssignment(SQLModel, table=True):
    """Meter ``meter_id`` serves household ``household_id`` from ``valid_from`` until
    ``valid_to`` (null: now). A meter serves one household at a time (the partial unique
    index); the service also refuses overlapping closed ranges."""

    __tablename__ = "meter_assignments"
    __mapper_args__ = {"eager_defaults": True}
    __table_args__ = (
        Index("uq_meter_assignments_current", "meter_id", unique=True, postgresql_where=text("valid_to IS NULL")),
        CheckConstraint("valid_to IS NULL OR valid_to >= valid_from", name="valid_range"),
    )

    id: int | None = Field(default=None, sa_column=_id())
    meter_id: int = Field(sa_column=Column(BigInteger, ForeignKey("meters.id"), nullable=False, index=True))
    household_id: int = Field(sa_column=Column(BigInteger, ForeignKey("households.id"), nullable=False, index=True))
    valid_from: datetime = Field(sa_column=timestamptz(nullable=False))
    valid_to: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    start_reading: Decimal = Field(sa_column=Column(Numeric(16, 4), nullable=False))
    end_reading: Decimal | None = Field(default=None, sa_column=Column(Numeric(16, 4), nullable=True))


class MeterReplacement(SQLModel, table=True):
    """A meter replacement (换表): the old meter's final reading and the new one's initial."""

    __tablename__ = "meter_replacements"
    __mapper_args__ = {"eager_defaults": True}

    id: int | None = Field(default=None, sa_column=_id())
    household_id: int = Field(sa_column=Column(BigInteger, ForeignKey("households.id"), nullable=False, index=True))
    old_meter_id: int = Field(sa_column=Column(BigInteger, ForeignKey("meters.id"), nullable=False, index=True))
    new_meter_id: int = Field(sa_column=Column(BigInteger, ForeignKey("meters.id"), nullable=False, index=True))
    replaced_at: datetime = Field(sa_column=timestamptz(nullable=False))
    old_final_reading: Decimal = Field(sa_column=Column(Numeric(16, 4), nullable=False))
    new_initial_reading: Decimal = Field(sa_column=Column(Numeric(16, 4), nullable=False))
    reason: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    replaced_by: str = Field(sa_column=Column(String(100), nullable=False))
