"""A meter's life cycle (水表状态): install (安装), uninstall (拆回), fault (故障), repair
(修复), and retirement (报废, :func:`backend.archives.service.meters.set_meter_status`).

Every kind of meter follows the same statuses::

    in_stock ──install──▶ installed ──uninstall──▶ in_stock
    in_stock | installed ──fault──▶ faulty ──repair──▶ the status before the fault
    anything serving no household ──retire──▶ retired (final)

A monitoring point (trunk-main flow meter, pressure gauge) is installed here, at a
location and in an area. A household meter is installed by serving a household
(:func:`assign_meter`, 配表) and taken back by :func:`end_assignment` (拆表) or
:func:`replace_meter` (换表); installing or uninstalling it here is refused with a
pointer to those. Faults and repairs apply to both kinds; a faulty household meter keeps
its assignment (the household is still served, its readings are not trusted) and is
repaired back to ``installed`` while the assignment is open, to ``in_stock`` otherwise.

Each step writes a ``meter_status_history`` row (from, to, reason, location, area, when,
who) beside the operation-log entry its mutation writes. Alarms are evaluated for
installed meters only (backend.readings.alarms), so an installed monitoring point is
watched (silent, failures …) and a faulty, in-stock or retired meter is not.

Plain async functions; the caller commits. ``scope_patterns`` as everywhere in archives:
a meter or area outside them is NOT_FOUND / UNKNOWN_AREA.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import errors
from backend.archives.models import Meter, MeterKind, MeterStatus, MeterStatusChange
from backend.archives.service.areas import share_area_tree
from backend.archives.service.assignments import _lock_meters, _open_assignment
from backend.archives.service.checks import _area_for, _flush_collect, _text_field
from backend.errors import DomainError

REASON_LIMIT = 500


async def record_status_change(session: AsyncSession, meter: Meter, *, to: MeterStatus, reason: str, at: datetime,
                               changed_by: str) -> None:
    """Move ``meter`` (locked by the caller) to ``to`` and write the history row of the step."""
    assert meter.id is not None
    session.add(MeterStatusChange(meter_id=meter.id, from_status=meter.status, status=to, reason=reason,
                                  location=meter.location, area_id=meter.area_id, changed_at=at,
                                  changed_by=changed_by[:100]))
    meter.status = to
    await session.flush()


def _reason(problems: list[DomainError], reason: str, *, required: bool) -> None:
    _text_field(problems, reason, "reason", limit=REASON_LIMIT, required=required)


def _refuse(message: str, message_en: str, field: str = "id") -> DomainError:
    return errors.MeterStateInvalid(message, message_en, field=field)


_STATUS_NAMES = {MeterStatus.in_stock: "库存", MeterStatus.installed: "已安装", MeterStatus.faulty: "故障",
                 MeterStatus.retired: "已报废"}


def _status_refusal(meter: Meter, step: str, step_en: str) -> DomainError:
    return _refuse(f"水表当前为「{_STATUS_NAMES[meter.status]}」, 不能{step}",
                   f"A meter that is {meter.status.value} cannot be {step_en}")


async def install_meter(
    session: AsyncSession,
    *,
    meter_id: int,
    location: str,
    area_id: int | None = None,
    installed_at: datetime,
    changed_by: str,
    scope_patterns: Sequence[str] | None = None,
    tz: str | tzinfo = "Asia/Shanghai",
) -> Meter:
    """安装: an in-stock monitoring point goes into service at ``location`` (required, at
    most 200 characters), in area ``area_id`` (default: where it is registered; within the
    scope, UNKNOWN_AREA otherwise). A meter without an install day gets the day of
    ``installed_at`` in the utility's zone ``tz`` (the silent rule counts from it until
    the first reading). A station's instrument stays in its station's area
    (INSTRUMENT_AREA_FIXED for another ``area_id``). A household meter is installed by :func:`assign_meter`
    (METER_STATE_INVALID, field ``id``); a meter not in stock is refused the same way."""
    if area_id is not None:
        await share_area_tree(session)  # the area cannot move while the meter goes into it
    (meter,) = await _lock_meters(session, [meter_id], scope_patterns, ["id"])
    if meter.kind is MeterKind.household:
        raise _refuse("住户水表经配表 (assignMeter) 安装到住户", "A household meter is installed by assigning it "
                      "to a household (assignMeter)")
    if meter.status is not MeterStatus.in_stock:
        raise _status_refusal(meter, "安装", "installed")
    problems: list[DomainError] = []
    _text_field(problems, location, "location", limit=200)
    area = None
    if area_id is not None:
        try:
            area = await _area_for(session, area_id, scope_patterns, "areaId")
        except DomainError as unknown:
            problems.append(unknown)
    if area is not None and meter.station_id is not None and area_id != meter.area_id:
        problems.append(errors.InstrumentAreaFixed(field="areaId"))
    await _flush_collect(problems)
    meter.location = location.strip()
    if area is not None:
        meter.area_id = area_id  # type: ignore[assignment]
    if meter.install_date is None:
        zone = ZoneInfo(tz) if isinstance(tz, str) else tz
        meter.install_date = installed_at.astimezone(zone).date()
    await record_status_change(session, meter, to=MeterStatus.installed, reason="", at=installed_at, changed_by=changed_by)
    return meter


async def uninstall_meter(
    session: AsyncSession,
    *,
    meter_id: int,
    reason: str = "",
    at: datetime,
    changed_by: str,
    scope_patterns: Sequence[str] | None = None,
) -> Meter:
    """拆回: an installed meter goes back in stock (its last location stays on the
    history row). A household meter serving a household is taken back by
    :func:`end_assignment` or :func:`replace_meter` (METER_ALREADY_ASSIGNED); a meter not
    installed is refused (METER_STATE_INVALID)."""
    (meter,) = await _lock_meters(session, [meter_id], scope_patterns, ["id"])
    assert meter.id is not None
    if meter.kind is MeterKind.household and await _open_assignment(session, meter.id) is not None:
        raise errors.MeterAlreadyAssigned("该水表正服务住户, 请经拆表 (endMeterAssignment) 或换表 (replaceMeter) 拆回",
                                          "This meter serves a household: take it back with endMeterAssignment or "
                                          "replaceMeter", field="id")
    if meter.status is not MeterStatus.installed:
        raise _status_refusal(meter, "拆回", "uninstalled")
    problems: list[DomainError] = []
    _reason(problems, reason, required=False)
    await _flush_collect(problems)
    await record_status_change(session, meter, to=MeterStatus.in_stock, reason=reason.strip(), at=at, changed_by=changed_by)
    return meter


async def mark_meter_faulty(
    session: AsyncSession,
    *,
    meter_id: int,
    reason: str,
    at: datetime,
    changed_by: str,
    scope_patterns: Sequence[str] | None = None,
) -> Meter:
    """故障: an installed or in-stock meter of either kind is marked faulty, with a
    ``reason`` (required, at most 500 characters). A household meter keeps its
    assignment; alarms stop evaluating the meter until it is repaired. A faulty or
    retired meter is refused (METER_STATE_INVALID)."""
    (meter,) = await _lock_meters(session, [meter_id], scope_patterns, ["id"])
    if meter.status not in (MeterStatus.installed, MeterStatus.in_stock):
        raise _status_refusal(meter, "标记为故障", "marked faulty")
    problems: list[DomainError] = []
    _reason(problems, reason, required=True)
    await _flush_collect(problems)
    await record_status_change(session, meter, to=MeterStatus.faulty, reason=reason.strip(), at=at, changed_by=changed_by)
    return meter


async def repair_meter(
    session: AsyncSession,
    *,
    meter_id: int,
    reason: str = "",
    at: datetime,
    changed_by: str,
    scope_patterns: Sequence[str] | None = None,
) -> Meter:
    """修复: a faulty meter returns to where it was. A household meter is ``installed``
    while it serves a household (an open assignment), else ``in_stock``; a monitoring
    point is ``installed`` when it was installed as it became faulty (its last fault's
    history row), else ``in_stock``. Only a faulty meter is repaired (METER_STATE_INVALID)."""
    (meter,) = await _lock_meters(session, [meter_id], scope_patterns, ["id"])
    assert meter.id is not None
    if meter.status is not MeterStatus.faulty:
        raise _status_refusal(meter, "修复", "repaired")
    problems: list[DomainError] = []
    _reason(problems, reason, required=False)
    await _flush_collect(problems)
    if meter.kind is MeterKind.household:
        installed = await _open_assignment(session, meter.id) is not None
    else:
        before = (await session.execute(
            select(MeterStatusChange.from_status)  # type: ignore[call-overload]
            .where(MeterStatusChange.meter_id == meter.id, MeterStatusChange.status == MeterStatus.faulty)  # type: ignore[arg-type]
            .order_by(MeterStatusChange.id.desc()).limit(1)  # type: ignore[union-attr]
        )).scalar()
        installed = before is MeterStatus.installed
    to = MeterStatus.installed if installed else MeterStatus.in_stock
    await record_status_change(session, meter, to=to, reason=reason.strip(), at=at, changed_by=changed_by)
    return meter


async def status_history_by_meter_ids(session: AsyncSession, meter_ids: Sequence[int]) -> dict[int, list[MeterStatusChange]]:
    """Each meter's life-cycle steps, oldest first (a DataLoader's batch)."""
    rows = (await session.execute(
        select(MeterStatusChange).where(MeterStatusChange.meter_id.in_(list(meter_ids)))  # type: ignore[attr-defined]
        .order_by(MeterStatusChange.meter_id, MeterStatusChange.id)  # type: ignore[arg-type]
    )).scalars().all()
    found: dict[int, list[MeterStatusChange]] = {meter_id: [] for meter_id in meter_ids}
    for row in rows:
        found[row.meter_id].append(row)
    return found
