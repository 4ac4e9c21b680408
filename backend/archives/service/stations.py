"""Monitoring stations (监测站) and their instruments.

A station is one place on the network (a trunk main, a pump station …: ``StationKind``)
with the monitoring points there. An instrument is a meter of kind ``monitoring`` whose
type says what it measures: ``flow_monitor`` flow (its register and m³/h),
``pressure_monitor`` pressure (MPa). A meter joins a station by
:func:`attach_instrument` and leaves it by :func:`detach_instrument`; creating, updating
and installing a meter leave its station alone. One way in and one way out, each an
audited mutation of its own, so the operation log says when an instrument joined which
station (a ``stationId`` on the meter form would hide that inside "修改水表").

An instrument stands where its station stands: attaching moves the meter into the
station's area, changing the station's area moves its instruments with it, and changing
an instrument's own area is refused (INSTRUMENT_AREA_FIXED). So whoever sees a station
sees every instrument its figures are summed from, and moving an area moves both.

A station is deleted only with no instrument left (STATION_NOT_EMPTY). A retired
instrument stays in its station: its readings of this year still count in the station's
year volume; detach it to delete the station.

Plain async functions; the caller commits. ``scope_patterns`` as everywhere in archives.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import errors
from backend.archives.models import Meter, MeterKind, MeterStatus, MeterType, MonitoringStation, StationKind
from backend.archives.service.areas import share_area_tree
from backend.archives.service.checks import (
    KEEP,
    METER_CODE,
    _area_for,
    _changed,
    _exists,
    _flush_collect,
    _flush_unique,
    _scoped,
    _text_field,
)
from backend.auth.errors import UnknownArea
from backend.errors import DomainError, ErrorCode

# What each instrument type measures.
INSTRUMENT_TYPES = (MeterType.flow_monitor, MeterType.pressure_monitor)


@dataclass(frozen=True, slots=True)
class StationChanges:
    """A station's fields: all but ``location`` required on create; on update only those
    given change (``None`` clears the location)."""

    code: Any = KEEP
    name: Any = KEEP
    kind: Any = KEEP
    area_id: Any = KEEP
    location: Any = KEEP


async def _check_station(session: AsyncSession, values: dict[str, Any], station_id: int | None,
                         scope_patterns: Sequence[str] | None) -> None:
    problems: list[DomainError] = []
    code = values.get("code")
    if not code or not METER_CODE.fullmatch(code):
        problems.append(DomainError("监测站编码只能包含字母、数字、-、_, 最多 32 位",
                                    "A station code is up to 32 letters, digits, - or _", field="code",
                                    code=ErrorCode.INVALID if code else ErrorCode.REQUIRED))
    elif await _exists(session, select(MonitoringStation.id).where(  # type: ignore[call-overload]
            MonitoringStation.code == code, MonitoringStation.id != (station_id or 0))):  # type: ignore[arg-type]
        problems.append(errors.DuplicateStationCode(field="code"))
    _text_field(problems, values.get("name"), "name", limit=100)
    if values.get("kind") is None:
        problems.append(DomainError("必填", "Required", field="kind", code=ErrorCode.REQUIRED))
    if values.get("location") is not None:
        _text_field(problems, values["location"], "location", limit=200, required=False)
    if values.get("area_id") is None:
        problems.append(DomainError("必填", "Required", field="areaId", code=ErrorCode.REQUIRED))
    else:
        try:
            await _area_for(session, values["area_id"], scope_patterns, "areaId")
        except UnknownArea as unknown:
            problems.append(unknown)
    await _flush_collect(problems)


def _cleaned(values: dict[str, Any]) -> dict[str, Any]:
    cleaned = dict(values)
    for name in ("code", "name"):
        if isinstance(cleaned.get(name), str):
            cleaned[name] = cleaned[name].strip()
    if isinstance(cleaned.get("location"), str):
        cleaned["location"] = cleaned["location"].strip() or None
    if cleaned.get("kind") is not None:
        cleaned["kind"] = StationKind(cleaned["kind"])
    return cleaned


async def create_station(session: AsyncSession, *, fields: StationChanges,
                         scope_patterns: Sequence[str] | None = None) -> MonitoringStation:
    """Register a station in an area within the scope (UNKNOWN_AREA otherwise): ``code``
    (unique, DUPLICATE), ``name``, ``kind`` and ``area_id`` required, ``location`` optional."""
    values = _cleaned({"location": None, **_changed(fields)})
    await _check_station(session, values, None, scope_patterns)
    station = MonitoringStation(**values)
    await _flush_unique(session, station)
    return station


async def station_in_scope(session: AsyncSession, *, station_id: int, scope_patterns: Sequence[str] | None,
                           field: str = "id", lock: bool = False) -> MonitoringStation:
    """Station ``station_id`` within the scope; NOT_FOUND (on ``field``) otherwise."""
    return await _scoped(session, MonitoringStation, station_id, scope_patterns, field=field, lock=lock)


async def update_station(session: AsyncSession, *, station_id: int, changes: StationChanges,
                         scope_patterns: Sequence[str] | None = None) -> MonitoringStation:
    """Change a station's fields. A new area (within the scope) moves its instruments with it."""
    values = _changed(changes)
    if values.get("area_id") is not None:
        await share_area_tree(session)
    station = await station_in_scope(session, station_id=station_id, scope_patterns=scope_patterns, lock=True)
    current = {name: getattr(station, name) for name in ("code", "name", "kind", "area_id", "location")}
    merged = _cleaned({**current, **values})
    await _check_station(session, merged, station_id, scope_patterns)
    if merged["area_id"] != station.area_id:
        await session.execute(update(Meter).where(Meter.station_id == station_id)  # type: ignore[arg-type]
                              .values(area_id=merged["area_id"]))
    for name, value in merged.items():
        setattr(station, name, value)
    await _flush_unique(session)
    return station


async def delete_station(session: AsyncSession, *, station_id: int,
                         scope_patterns: Sequence[str] | None = None) -> MonitoringStation:
    """Delete a station no instrument belongs to (STATION_NOT_EMPTY otherwise)."""
    station = await station_in_scope(session, station_id=station_id, scope_patterns=scope_patterns, lock=True)
    if await _exists(session, select(Meter.id).where(Meter.station_id == station_id)):  # type: ignore[call-overload, arg-type]
        raise errors.StationNotEmpty(field="id")
    await session.delete(station)
    await session.flush()
    return station


async def attach_instrument(session: AsyncSession, *, station_id: int, meter_id: int,
                            scope_patterns: Sequence[str] | None = None) -> tuple[MonitoringStation, Meter]:
    """Make monitoring point ``meter_id`` an instrument of station ``station_id`` (both
    within the scope, NOT_FOUND on ``stationId`` / ``meterId`` otherwise). Only a
    monitoring point of type ``flow_monitor`` or ``pressure_monitor`` that is not retired
    qualifies (NOT_A_STATION_INSTRUMENT / METER_STATE_INVALID). The meter moves into the
    station's area; one of another station moves over to this one."""
    await share_area_tree(session)  # the meter's area changes to the station's
    station = await station_in_scope(session, station_id=station_id, scope_patterns=scope_patterns, field="stationId")
    meter = await _scoped(session, Meter, meter_id, scope_patterns, field="meterId", lock=True)
    if meter.kind is not MeterKind.monitoring or meter.meter_type not in INSTRUMENT_TYPES:
        raise errors.NotAStationInstrument(field="meterId")
    if meter.status is MeterStatus.retired:
        raise errors.MeterStateInvalid("已报废的仪表不能加入监测站", "A retired meter cannot join a station", field="meterId")
    meter.station_id = station_id
    meter.area_id = station.area_id
    await session.flush()
    return station, meter


async def detach_instrument(session: AsyncSession, *, meter_id: int,
                            scope_patterns: Sequence[str] | None = None) -> tuple[MonitoringStation, Meter]:
    """Take instrument ``meter_id`` out of its station (it stays where it is, in the
    station's area); NOT_A_STATION_INSTRUMENT when it belongs to none. Returns the station
    it left and the meter."""
    meter = await _scoped(session, Meter, meter_id, scope_patterns, field="meterId", lock=True)
    if meter.station_id is None:
        raise errors.NotAStationInstrument("该仪表不属于任何监测站", "This meter belongs to no monitoring station",
                                           field="meterId")
    station = await session.get(MonitoringStation, meter.station_id)
    assert station is not None
    meter.station_id = None
    await session.flush()
    return station, meter


async def check_instrument_change(session: AsyncSession, meter: Meter, merged: dict[str, Any]) -> None:
    """What a meter's form may not change while it belongs to a station: its area (it
    follows the station's, INSTRUMENT_AREA_FIXED) and its kind or type (it would stop
    being an instrument, NOT_A_STATION_INSTRUMENT)."""
    if meter.station_id is None:
        return
    if merged["area_id"] != meter.area_id:
        raise errors.InstrumentAreaFixed(field="areaId")
    if merged["kind"] is not MeterKind.monitoring:
        raise errors.NotAStationInstrument("监测站仪表不能改为住户水表, 请先移出监测站",
                                           "A station instrument cannot become a household meter; detach it first",
                                           field="kind")
    if MeterType(merged["meter_type"]) not in INSTRUMENT_TYPES:
        raise errors.NotAStationInstrument("监测站仪表只能是流量或压力监测点, 请先移出监测站",
                                           "A station instrument measures flow or pressure; detach it first",
                                           field="meterType")


async def stations_by_ids(session: AsyncSession, ids: Iterable[int]) -> dict[int, MonitoringStation]:
    wanted = list(set(ids))
    if not wanted:
        return {}
    rows = (await session.execute(select(MonitoringStation).where(MonitoringStation.id.in_(wanted)))).scalars().all()  # type: ignore[union-attr]
    return {row.id: row for row in rows if row.id is not None}


async def instruments_by_station_ids(session: AsyncSession, ids: Sequence[int]) -> dict[int, list[Meter]]:
    """Each station's instruments, flow before pressure, then by code (a DataLoader's batch)."""
    rows = (await session.execute(
        select(Meter).where(Meter.station_id.in_(list(ids)))  # type: ignore[union-attr]
        .order_by(Meter.station_id, Meter.meter_type, Meter.code, Meter.id)  # type: ignore[arg-type]
    )).scalars().all()
    found: dict[int, list[Meter]] = {pk: [] for pk in ids}
    for row in rows:
        assert row.station_id is not None
        found[row.station_id].append(row)
    return found
