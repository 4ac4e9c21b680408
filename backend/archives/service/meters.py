"""Meter models (表型) and meters (水表): the catalog, the meters, and their lists."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import ARRAY, Select, Text, and_, any_, bindparam, exists, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import errors
from backend.archives.models import (
    Area,
    Collector,
    Concentrator,
    DiByteOrder,
    Meter,
    MeterAssignment,
    MeterKind,
    MeterModel,
    MeterStatus,
    MeterType,
    PayloadFormat,
)
from backend.archives.service.areas import share_area_tree
from backend.archives.service.assignments import _lock_served_household, _open_assignment
from backend.archives.service.checks import (
    _METER_HAS_READINGS,
    _METER_MOVE_BREAKS,
    _MODEL_HAS_READINGS,
    ADDRESS_RULES,
    CALIBERS,
    KEEP,
    METER_CODE,
    OTHER_ADDRESS,
    _any_readings,
    _area_for,
    _changed,
    _check_moved_within,
    _exists,
    _flush_collect,
    _flush_unique,
    _like,
    _reading,
    _scoped,
    _text_field,
    as_stored,
)
from backend.archives.service.households import _paged_in_areas, _subtree_of
from backend.archives.service.life_cycle import record_status_change
from backend.archives.service.stations import check_instrument_change
from backend.auth.errors import UnknownArea
from backend.auth.scope import require_whole_tree
from backend.clock import utcnow
from backend.errors import DomainError, ErrorCode, NotFound
from backend.pagination import PagedQuery

# --------------------------------------------------------------------------- meter models


@dataclass(frozen=True, slots=True)
class MeterModelFields:
    vendor: str
    name: str
    caliber: int
    protocol: str = "cjt188"
    register_digits: int = 5
    register_decimals: int = 3
    multiplier: Decimal = Decimal(1)
    has_valve: bool = False
    has_battery: bool = False
    di_byte_order: DiByteOrder = DiByteOrder.standard
    # NB-IoT models: what the device publishes, how long its commands wait for an uplink.
    payload_format: PayloadFormat = PayloadFormat.cjt188
    uplink_wait_s: int = 86400
    # Wire settings (MeterModel): FE preamble, volume places in frames, response timeout (None: the worker's).
    preamble_len: int = 2
    wire_decimals: int = 2
    response_timeout_ms: int | None = None



def _register_of(model: MeterModel | MeterModelFields | None) -> tuple[Decimal, int | None]:
    """What usage takes from a meter's model: its multiplier and register size (none
    without a model: no rollover, multiplier 1)."""
    if model is None:
        return Decimal(1), None
    return model.multiplier, model.register_digits


async def save_meter_model(
    session: AsyncSession, *, fields: MeterModelFields, model_id: int | None = None, scope_patterns: Sequence[str] | None = None
) -> MeterModel:
    """Create a meter model, or replace model ``model_id``'s fields. The catalog is shared
    by every district: anyone may read it, changing it needs whole-tree scope
    (WHOLE_TREE_REQUIRED otherwise)."""
    await require_whole_tree(session, scope_patterns)
    problems: list[DomainError] = []
    _text_field(problems, fields.vendor, "vendor", limit=100)
    _text_field(problems, fields.name, "name", limit=100)
    _text_field(problems, fields.protocol, "protocol", limit=32)
    if fields.caliber not in CALIBERS:
        problems.append(DomainError("口径须为 DN15 至 DN300 的标准规格", "Caliber must be a standard DN15…DN300",
                                    field="caliber", code=ErrorCode.INVALID))
    if not (1 <= fields.register_digits <= 12 and 0 <= fields.register_decimals <= 4):
        problems.append(DomainError("计数器位数 1-12, 小数位 0-4", "Register digits 1-12, decimals 0-4",
                                    field="registerDigits", code=ErrorCode.INVALID))
    if not 0 <= fields.preamble_len <= 16:
        problems.append(DomainError("前导字节 (FE) 数须为 0-16", "The preamble is 0-16 FE bytes",
                                    field="preambleLen", code=ErrorCode.INVALID))
    if not 0 <= fields.wire_decimals <= 4:
        problems.append(DomainError("报文读数小数位须为 0-4", "Wire decimals must be 0-4",
                                    field="wireDecimals", code=ErrorCode.INVALID))
    if fields.response_timeout_ms is not None and not 50 <= fields.response_timeout_ms <= 60000:
        problems.append(DomainError("应答超时须为 50-60000 毫秒", "The response timeout must be 50-60000 ms",
                                    field="responseTimeoutMs", code=ErrorCode.INVALID))
    # A whole multiplier (1, 10, 100 …) times a 4-place register difference needs no
    # rounding, so the daily rollup's sum and usage_between agree to the last place.
    if not (fields.multiplier.is_finite() and Decimal(0) < fields.multiplier < Decimal(100000000)
            and fields.multiplier == fields.multiplier.to_integral_value()):
        problems.append(DomainError("倍率须为正整数 (如 1、10、100)", "The multiplier must be a whole number above 0 (1, 10, 100 …)",
                                    field="multiplier", code=ErrorCode.INVALID))
    if not 1 <= fields.uplink_wait_s <= 7 * 86400:
        problems.append(DomainError("上报等待时限须为 1 秒至 7 天", "The uplink wait must be 1 s to 7 days",
                                    field="uplinkWaitS", code=ErrorCode.INVALID))
    if not problems and await _exists(session, select(MeterModel.id).where(  # type: ignore[call-overload]
        MeterModel.vendor == fields.vendor, MeterModel.name == fields.name, MeterModel.id != (model_id or 0)  # type: ignore[arg-type]
    )):
        problems.append(errors.DuplicateMeterModel(field="name"))
    await _flush_collect(problems)
    fields = dataclasses.replace(fields, multiplier=fields.multiplier.quantize(Decimal("0.0001")))  # as NUMERIC(12,4) holds it
    created: list[MeterModel] = []
    if model_id is None:
        model = MeterModel(**dataclasses.asdict(fields))
        created.append(model)
    else:
        found = await session.get(MeterModel, model_id, with_for_update=True)
        if found is None:
            raise NotFound(field="id")
        model = found
        # Usage applies the model's register and multiplier when it is asked, the daily
        # rollup when the readings came in: changing them under stored readings would
        # price the same history two ways.
        if _register_of(model) != _register_of(fields) and await _any_readings(session, _MODEL_HAS_READINGS, model_id):
            raise errors.ModelInUse(field="multiplier" if model.multiplier != fields.multiplier else "registerDigits")
        for name, value in dataclasses.asdict(fields).items():
            setattr(model, name, value)
    await _flush_unique(session, *created)
    return model


async def delete_meter_model(session: AsyncSession, *, model_id: int, scope_patterns: Sequence[str] | None = None) -> MeterModel:
    """Delete a model no meter uses; like any change of the shared catalog, it needs whole-tree scope."""
    await require_whole_tree(session, scope_patterns)
    model = await session.get(MeterModel, model_id)
    if model is None:
        raise NotFound(field="id")
    if await _exists(session, select(Meter.id).where(Meter.model_id == model_id)):  # type: ignore[call-overload, arg-type]
        raise errors.DeviceInUse("仍有水表使用该型号, 不能删除", "Meters still use this model", field="id")
    await session.delete(model)
    await session.flush()
    return model


def meter_models_statement(*, search: str | None = None) -> Select[Any]:
    statement = select(MeterModel)
    if search:
        term = _like(search)
        statement = statement.where(or_(MeterModel.vendor.like(term, escape="\\"), MeterModel.name.like(term, escape="\\")))  # type: ignore[attr-defined]
    return statement.order_by(MeterModel.vendor, MeterModel.name, MeterModel.id)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- meters


class MeterOrder(StrEnum):
    code = "code"
    address = "address"
    name = "name"
    created_at = "created_at"


@dataclass(frozen=True, slots=True)
class MeterChanges:
    """A meter's fields: all of them for :func:`create_meter` (``KEEP`` means the default),
    only those to change for :func:`update_meter` (``None`` clears an optional one)."""

    name: Any = KEEP
    code: Any = KEEP
    address: Any = KEEP
    meter_type: Any = KEEP
    area_id: Any = KEEP
    kind: Any = KEEP
    model_id: Any = KEEP
    protocol: Any = KEEP
    install_date: Any = KEEP
    initial_reading: Any = KEEP
    location: Any = KEEP
    status: Any = KEEP
    concentrator_id: Any = KEEP
    collector_id: Any = KEEP
    port: Any = KEEP
    measurement_point: Any = KEEP
    mqtt_topic: Any = KEEP


_METER_DEFAULTS: dict[str, Any] = {
    "kind": MeterKind.household, "model_id": None, "protocol": None, "install_date": None,
    "initial_reading": Decimal(0), "location": None, "status": MeterStatus.in_stock, "concentrator_id": None,
    "collector_id": None, "port": None, "measurement_point": None, "mqtt_topic": None,
}


async def _check_meter(
    session: AsyncSession, meter: dict[str, Any], meter_id: int | None, scope_patterns: Sequence[str] | None
) -> None:
    """Validate a meter's complete field set (create and update share this)."""
    problems: list[DomainError] = []
    _text_field(problems, meter["name"], "name", limit=100)
    code = meter["code"]
    if not code or not METER_CODE.fullmatch(code):
        problems.append(DomainError("表计编码只能包含字母、数字、-、_, 最多 32 位", "A meter code is up to 32 letters, digits, - or _",
                                    field="code", code=ErrorCode.INVALID))
    elif await _exists(session, select(Meter.id).where(Meter.code == code, Meter.id != (meter_id or 0))):  # type: ignore[call-overload, arg-type]
        problems.append(errors.DuplicateMeterCode(field="code"))
    rule = ADDRESS_RULES.get(meter["protocol"], OTHER_ADDRESS)
    if not meter["address"] or not rule.fullmatch(meter["address"]):
        if rule is OTHER_ADDRESS:
            problems.append(errors.InvalidAddress("表地址只能包含字母和数字, 最多 32 位", "An address is up to 32 letters or digits",
                                                  field="address"))
        else:
            problems.append(errors.InvalidAddress(field="address"))
    elif await _exists(session, select(Meter.id).where(  # type: ignore[call-overload]
        Meter.protocol == meter["protocol"], Meter.address == meter["address"], Meter.id != (meter_id or 0)  # type: ignore[arg-type]
    )):
        problems.append(errors.DuplicateMeterAddress(field="address"))
    try:
        await _area_for(session, meter["area_id"], scope_patterns, "areaId")
    except UnknownArea as unknown:
        problems.append(unknown)
    _reading(problems, meter["initial_reading"], "initialReading")
    if meter["location"] is not None:
        _text_field(problems, meter["location"], "location", limit=200, required=False)
    if meter["model_id"] is not None and await session.get(MeterModel, meter["model_id"]) is None:
        problems.append(NotFound(field="modelId"))
    concentrator_id, collector_id = meter["concentrator_id"], meter["collector_id"]
    if concentrator_id is not None:
        # Within the caller's scope too: a meter cannot be hung on another district's device.
        try:
            await _scoped(session, Concentrator, concentrator_id, scope_patterns, field="concentratorId")
        except NotFound as unknown:
            problems.append(unknown)
    if collector_id is not None:
        collector = await session.get(Collector, collector_id)
        if collector is None or collector.concentrator_id != concentrator_id:
            problems.append(DomainError("采集器不属于所选集中器", "The collector is not on that concentrator",
                                        field="collectorId", code=ErrorCode.INVALID))
    if meter["mqtt_topic"] is not None and concentrator_id is not None:
        problems.append(DomainError("NB-IoT 水表经 MQTT 上报, 不挂集中器", "An MQTT meter hangs under no concentrator",
                                    field="mqttTopic", code=ErrorCode.INVALID))
    if (meter["port"] is not None or meter["measurement_point"] is not None) and concentrator_id is None:
        problems.append(DomainError("端口和测量点号需要先选择集中器", "A port or measurement point needs a concentrator",
                                    field="port", code=ErrorCode.INVALID))
    if meter["port"] is not None and not 1 <= meter["port"] <= 255:
        problems.append(DomainError("端口须在 1-255 之间", "Port must be 1-255", field="port", code=ErrorCode.INVALID))
    if meter["measurement_point"] is not None and not 1 <= meter["measurement_point"] <= 2040:
        problems.append(DomainError("测量点号须在 1-2040 之间", "Measurement point must be 1-2040",
                                    field="measurementPoint", code=ErrorCode.INVALID))
    await _flush_collect(problems)


async def _resolve_protocol(session: AsyncSession, values: dict[str, Any]) -> None:
    if values.get("protocol") is None:
        model = await session.get(MeterModel, values["model_id"]) if values.get("model_id") is not None else None
        values["protocol"] = model.protocol if model is not None else "cjt188"


async def create_meter(session: AsyncSession, *, fields: MeterChanges, scope_patterns: Sequence[str] | None = None) -> Meter:
    """Register a meter or monitoring point; ``name``, ``code``, ``address``, ``meter_type``
    and ``area_id`` are required, the rest default (protocol: the model's, else cjt188)."""
    values = {**_METER_DEFAULTS, **_changed(fields)}
    await _flush_collect(_missing(values, _METER_REQUIRED))
    await _resolve_protocol(session, values)
    await _check_meter(session, values, None, scope_patterns)
    meter = Meter(**{**values, "initial_reading": as_stored(values["initial_reading"])})
    await _flush_unique(session, meter)
    return meter


_METER_REQUIRED = ("name", "code", "address", "meter_type", "area_id", "kind", "initial_reading", "status")


def _missing(values: dict[str, Any], required: Iterable[str]) -> list[DomainError]:
    """REQUIRED for each of ``required`` that is absent or null in ``values``."""
    return [DomainError("必填", "Required", field=_camel(name), code=ErrorCode.REQUIRED)
            for name in required if values.get(name) is None]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


async def meter_in_scope(session: AsyncSession, *, meter_id: int, scope_patterns: Sequence[str] | None, field: str = "id") -> Meter:
    return await _scoped(session, Meter, meter_id, scope_patterns, field=field)


async def update_meter(
    session: AsyncSession, *, meter_id: int, changes: MeterChanges, scope_patterns: Sequence[str] | None = None
) -> Meter:
    """Change a meter's archive fields (assignments and status have their own functions)."""
    values = _changed(changes)
    if values.get("area_id") is not None:
        await share_area_tree(session)
    meter = await _scoped(session, Meter, meter_id, scope_patterns, lock=True)
    if "status" in values:
        raise DomainError("状态经配表、换表、安装、拆回、故障、修复、报废变化",
                          "Status changes through assignment, replacement, install, uninstall, fault, repair and retirement",
                          field="status", code=ErrorCode.INVALID)
    current = {name: getattr(meter, name) for name in _METER_DEFAULTS | {"name": 0, "code": 0, "address": 0,
                                                                          "meter_type": 0, "area_id": 0}}
    merged = {**current, **values}
    await _flush_collect(_missing(merged, _METER_REQUIRED))
    await _resolve_protocol(session, merged)
    await _check_meter(session, merged, meter_id, scope_patterns)
    if merged["area_id"] != meter.area_id:
        # The household it serves must lie in its new area; locked (meter, then household,
        # as an assignment locks them), so that household cannot move meanwhile.
        await _lock_served_household(session, meter_id)
        await _check_moved_within(session, _METER_MOVE_BREAKS, meter_id, merged["area_id"])
    if merged["kind"] is MeterKind.household and meter.kind is MeterKind.monitoring and meter.status in (
            MeterStatus.installed, MeterStatus.faulty):
        # An installed household meter always serves a household (配表 installs it).
        raise errors.MeterStateInvalid("在用或故障的监测点不能改为住户水表, 请先拆回", "An installed or faulty monitoring "
                                       "point cannot become a household meter; uninstall it first", field="kind")
    if merged["kind"] is MeterKind.monitoring and await _open_assignment(session, meter_id) is not None:
        raise errors.MeterAlreadyAssigned("在用的住户水表不能改为监测点", "A meter serving a household cannot become a monitoring point",
                                          field="kind")
    await check_instrument_change(session, meter, merged)
    if merged["model_id"] != meter.model_id:
        await _check_model_change(session, meter_id, meter.model_id, merged["model_id"])
    merged["initial_reading"] = as_stored(merged["initial_reading"])
    for name, value in merged.items():
        setattr(meter, name, value)
    await _flush_unique(session)
    return meter


async def _check_model_change(session: AsyncSession, meter_id: int, old_id: int | None, new_id: int | None) -> None:
    """A meter with readings keeps its register and multiplier (see :func:`save_meter_model`);
    a change to a model with the same ones (a vendor's renamed model) is harmless."""
    old = await session.get(MeterModel, old_id) if old_id is not None else None
    new = await session.get(MeterModel, new_id) if new_id is not None else None
    if _register_of(old) != _register_of(new) and await _any_readings(session, _METER_HAS_READINGS, meter_id):
        raise errors.MeterHasReadings(field="modelId")


async def set_meter_status(
    session: AsyncSession, *, meter_id: int, status: MeterStatus, scope_patterns: Sequence[str] | None = None,
    changed_by: str = "系统", at: datetime | None = None, reason: str = "",
) -> Meter:
    """Mark a meter faulty, retired (报废) or back in stock, recording the step in the
    meter's status history (at ``at``, default now); a meter serving a household changes
    through :func:`end_assignment` or :func:`replace_meter` first. The life-cycle steps
    with their rules (install, uninstall, fault, repair) are in
    :mod:`backend.archives.service.life_cycle`; the API retires through this one."""
    meter = await _scoped(session, Meter, meter_id, scope_patterns, lock=True)
    if status is MeterStatus.installed:
        raise DomainError("安装状态由配表或安装产生", "A meter becomes installed by assignment or installation",
                          field="status", code=ErrorCode.INVALID)
    if status is not MeterStatus.faulty and await _open_assignment(session, meter_id) is not None:
        raise errors.MeterAlreadyAssigned(field="id")
    if meter.status is not status:
        await record_status_change(session, meter, to=status, reason=reason, at=at or utcnow(), changed_by=changed_by)
    return meter


async def delete_meter(session: AsyncSession, *, meter_id: int, scope_patterns: Sequence[str] | None = None) -> Meter:
    """Delete a meter entered by mistake; once it has served a household, been replaced,
    installed, marked faulty or sent a reading it is retired instead (HAS_HISTORY)."""
    meter = await _scoped(session, Meter, meter_id, scope_patterns, lock=True)
    history = await session.execute(
        text("SELECT EXISTS (SELECT 1 FROM meter_assignments WHERE meter_id = :id)"
             " OR EXISTS (SELECT 1 FROM meter_replacements WHERE old_meter_id = :id OR new_meter_id = :id)"
             " OR EXISTS (SELECT 1 FROM meter_status_history WHERE meter_id = :id)"
             # readings has no foreign key (it would cost every COPY row a lookup): checked here.
             " OR EXISTS (SELECT 1 FROM readings WHERE meter_id = :id)"),
        {"id": meter_id},
    )
    if history.scalar_one():
        raise errors.HasHistory(field="id")
    await session.delete(meter)
    await session.flush()
    return meter


_METER_ORDER = {MeterOrder.code: "code", MeterOrder.address: "address", MeterOrder.name: "name", MeterOrder.created_at: "created_at"}
METER_COLUMNS = (
    "id", "name", "code", "protocol", "address", "meter_type", "kind", "model_id", "install_date", "initial_reading",
    "location", "area_id", "status", "concentrator_id", "collector_id", "port", "measurement_point", "mqtt_topic", "station_id",
    "created_at", "updated_at",
)


@functools.cache
def _meter_page_query(
    by_area: bool, by_status: bool, by_type: bool, by_kind: bool, by_concentrator: bool, by_search: bool,
    order: MeterOrder, descending: bool, assigned: bool | None = None, by_model: bool = False,
) -> tuple[Select[Any], Select[Any]]:
    meter = Meter.__table__.alias("m")  # type: ignore[attr-defined]
    area = Area.__table__.alias("a")  # type: ignore[attr-defined]
    conditions = [area.c.path.like(any_(bindparam("patterns", type_=ARRAY(Text))))]
    if by_area:
        conditions.append(_subtree_of(area))
    if by_status:
        conditions.append(meter.c.status == bindparam("status"))
    if by_type:
        conditions.append(meter.c.meter_type == bindparam("meter_type"))
    if by_kind:
        conditions.append(meter.c.kind == bindparam("kind"))
    if by_concentrator:
        conditions.append(meter.c.concentrator_id == bindparam("concentrator_id"))
    if by_model:
        conditions.append(meter.c.model_id == bindparam("model_id"))
    if by_search:
        term: Any = bindparam("search")
        conditions.append(or_(*(meter.c[name].like(term, escape="\\") for name in ("address", "code", "name", "location"))))
    if assigned is not None:
        serving = MeterAssignment.__table__.alias("s")  # type: ignore[attr-defined]
        is_open = exists().where(serving.c.meter_id == meter.c.id, serving.c.valid_to.is_(None))
        conditions.append(is_open if assigned else and_(
            meter.c.kind == MeterKind.household.value,
            # Two comparisons, not IN: the page statement is compiled once, with plain binds.
            or_(meter.c.status == MeterStatus.in_stock.value, meter.c.status == MeterStatus.installed.value), ~is_open,
        ))
    return _paged_in_areas(meter, area, METER_COLUMNS, conditions, _METER_ORDER[order], descending)


def meter_page_query(
    *,
    scope_patterns: Sequence[str],
    area_id: int | None = None,
    status: MeterStatus | None = None,
    meter_type: MeterType | None = None,
    kind: MeterKind | None = None,
    concentrator_id: int | None = None,
    search: str | None = None,
    order: MeterOrder = MeterOrder.code,
    descending: bool = False,
    assigned: bool | None = None,
    model_id: int | None = None,
) -> PagedQuery:
    """Meters within the scope, filtered; rows hold :data:`METER_COLUMNS` plus ``area_path``.
    ``model_id``: the meters of one model (型号).

    ``assigned=True``: meters serving a household now (an open assignment). ``assigned=False``:
    the meters not assigned (未配表) a 配表 clerk works through: household meters in stock or
    installed with no open assignment (monitoring points, faulty and retired meters are
    never assigned, so they are not listed)."""
    rows, count = _meter_page_query(area_id is not None, status is not None, meter_type is not None, kind is not None,
                                    concentrator_id is not None, bool(search), order, descending, assigned,
                                    model_id is not None)
    params: dict[str, Any] = {"patterns": list(scope_patterns)}
    for name, value in (("area_id", area_id), ("concentrator_id", concentrator_id), ("model_id", model_id)):
        if value is not None:
            params[name] = value
    for name, member in (("status", status), ("meter_type", meter_type), ("kind", kind)):
        if member is not None:
            params[name] = member.value
    if search:
        params["search"] = _like(search)
    return PagedQuery(rows=rows, count=count, params=params)
