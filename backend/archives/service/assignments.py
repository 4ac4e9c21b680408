"""Meter assignments (配表), move-outs (拆表) and replacements (换表), with their handover
readings (backend.archives.handover)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import ARRAY, Select, Text, and_, any_, bindparam, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import errors
from backend.archives.handover import HandoverReading, store_handover_readings
from backend.archives.models import (
    Area,
    Household,
    HouseholdStatus,
    Meter,
    MeterAssignment,
    MeterKind,
    MeterReplacement,
    MeterStatus,
)
from backend.archives.service.areas import share_area_tree
from backend.archives.service.checks import (
    _METER_HAS_READINGS,
    _any_readings,
    _check_serves_within,
    _flush_collect,
    _reading,
    _scoped,
    as_stored,
)
from backend.archives.service.households import _subtree_of
from backend.errors import DomainError, ErrorCode
from backend.pagination import PagedQuery

# --------------------------------------------------------------------------- assignments


async def _open_assignment(session: AsyncSession, meter_id: int) -> MeterAssignment | None:
    statement = select(MeterAssignment).where(MeterAssignment.meter_id == meter_id, MeterAssignment.valid_to.is_(None))  # type: ignore[arg-type, union-attr]
    return (await session.execute(statement)).scalars().first()


async def _lock_meters(session: AsyncSession, ids: Sequence[int], scope_patterns: Sequence[str] | None,
                       fields: Sequence[str]) -> list[Meter]:
    # Lock in primary-key order so two replacements on the same meters cannot deadlock.
    found = {pk: await _scoped(session, Meter, pk, scope_patterns, field=field, lock=True)
             for pk, field in sorted(zip(ids, fields, strict=True))}
    return [found[pk] for pk in ids]


async def _lock_served_household(session: AsyncSession, meter_id: int) -> None:
    """Lock the household meter ``meter_id`` serves now, if any (the meter is locked first)."""
    await session.execute(
        text("SELECT h.id FROM households h JOIN meter_assignments s ON s.household_id = h.id "
             "WHERE s.meter_id = :meter_id AND s.valid_to IS NULL ORDER BY h.id FOR UPDATE OF h"),
        {"meter_id": meter_id},
    )


def _check_available(meter: Meter, field: str) -> None:
    if meter.kind is MeterKind.monitoring or meter.status in (MeterStatus.retired, MeterStatus.faulty):
        raise errors.MeterUnavailable(field=field)


async def _open(session: AsyncSession, meter: Meter, household: Household, valid_from: datetime, start: Decimal,
                field: str) -> MeterAssignment:
    assert meter.id is not None and household.id is not None
    if await _open_assignment(session, meter.id) is not None:
        raise errors.MeterAlreadyAssigned(field=field)
    last_end = (await session.execute(select(func.max(MeterAssignment.valid_to)).where(MeterAssignment.meter_id == meter.id))).scalar()  # type: ignore[arg-type]
    if last_end is not None and valid_from < last_end:
        raise errors.MeterAlreadyAssigned("起始时间与该水表之前的分配重叠", "Overlaps this meter's earlier assignment", field="validFrom")
    assignment = MeterAssignment(meter_id=meter.id, household_id=household.id, valid_from=valid_from,
                                 start_reading=as_stored(start))
    session.add(assignment)
    meter.status = MeterStatus.installed
    await session.flush()
    return assignment


@dataclass(frozen=True, slots=True)
class _Handover:
    """A register reading taken when a meter changes hands (配表, 拆表, 换表), and the
    input fields a rejection of it points at."""

    reading: HandoverReading
    at_field: str
    total_field: str
    meter_field: str

    def field_of(self, code: ErrorCode) -> str:
        if code is ErrorCode.INVALID_TOTAL:
            return self.total_field
        return self.meter_field if code is ErrorCode.UNKNOWN_METER else self.at_field


def _handover(meter_id: int, at: datetime, total: Decimal, at_field: str, total_field: str, meter_field: str) -> _Handover:
    reading = HandoverReading(meter_id=meter_id, read_at=at, total_m3=as_stored(total))
    return _Handover(reading, at_field, total_field, meter_field)


async def _store_handover(session: AsyncSession, handovers: Sequence[_Handover], *, source: str, now: datetime,
                          tz: str | tzinfo) -> None:
    """Store the handover readings as manual readings through ingest, or raise the first
    rejection (a time before the meter's install day or in the future …) as the refusal
    of the whole handover. The register readings at a handover are readings like any
    other, so usage (one definition, backend.readings.usage) splits there with no special
    case. Call it inside the handover's savepoint, so a refusal leaves nothing written."""
    rejected = await store_handover_readings(session, readings=[handover.reading for handover in handovers],
                                             source=source, now=now, tz=tz)
    if rejected:
        rejection = rejected[0]
        raise DomainError(rejection.message, rejection.message_en, code=rejection.code,
                          field=handovers[rejection.index].field_of(rejection.code))


async def assign_meter(
    session: AsyncSession,
    *,
    meter_id: int,
    household_id: int,
    valid_from: datetime,
    start_reading: Decimal | None = None,
    scope_patterns: Sequence[str] | None = None,
    now: datetime | None = None,
    tz: str | tzinfo = "Asia/Shanghai",
) -> MeterAssignment:
    """配表: meter ``meter_id`` serves the household from ``valid_from`` with
    ``start_reading`` (default: the meter's initial reading). One household at a time,
    in the meter's area or below it (CROSS_AREA_ASSIGNMENT otherwise).

    The start reading is stored as a manual reading at ``valid_from`` through ingest
    (received ``now``, default ``valid_from``; days in the utility's zone ``tz``), so
    usage splits there; what ingest rejects refuses the assignment. The default is
    stored only for a meter without readings (newly installed): the initial reading of a
    meter that has been read is not its register now."""
    await share_area_tree(session)
    # Meter, then household, both locked: a concurrent move of either waits, and is then
    # checked against this assignment (or this check against the move).
    (meter,) = await _lock_meters(session, [meter_id], scope_patterns, ["meterId"])
    household = await _scoped(session, Household, household_id, scope_patterns, field="householdId", lock=True)
    if household.status is HouseholdStatus.closed:
        raise errors.HouseholdClosed(field="householdId")
    _check_available(meter, "meterId")
    await _check_serves_within(session, meter.area_id, household.area_id, "householdId")
    start = start_reading if start_reading is not None else meter.initial_reading
    problems: list[DomainError] = []
    _reading(problems, start, "startReading")
    await _flush_collect(problems)
    store_start = start_reading is not None or not await _any_readings(session, _METER_HAS_READINGS, meter_id)
    async with session.begin_nested():
        assignment = await _open(session, meter, household, valid_from, start, "meterId")
        if store_start:
            await _store_handover(session, [_handover(meter_id, valid_from, start, "validFrom", "startReading", "meterId")],
                                  source=f"assignment:{household.account_no}", now=now or valid_from, tz=tz)
    return assignment


async def _close(assignment: MeterAssignment, valid_to: datetime, end_reading: Decimal | None, prefix: str) -> None:
    problems: list[DomainError] = []
    _reading(problems, end_reading, f"{prefix}Reading" if prefix else "endReading")
    if valid_to < assignment.valid_from:
        problems.append(DomainError("结束时间早于分配开始时间", "The end is before the assignment's start",
                                    field="validTo" if not prefix else "replacedAt", code=ErrorCode.INVALID))
    await _flush_collect(problems)
    assert end_reading is not None  # _reading refused a missing one
    assignment.valid_to, assignment.end_reading = valid_to, as_stored(end_reading)


async def end_assignment(
    session: AsyncSession,
    *,
    meter_id: int,
    valid_to: datetime,
    end_reading: Decimal | None,
    scope_patterns: Sequence[str] | None = None,
    now: datetime | None = None,
    tz: str | tzinfo = "Asia/Shanghai",
) -> MeterAssignment:
    """拆表: the meter stops serving its household at ``valid_to`` with ``end_reading``
    and goes back in stock (a faulty one stays faulty: :func:`repair_meter` puts it in stock).

    The end reading is stored as a manual reading at ``valid_to`` through ingest
    (received ``now``, default ``valid_to``; days in the utility's zone ``tz``), so usage
    splits there; what ingest rejects refuses the move-out."""
    (meter,) = await _lock_meters(session, [meter_id], scope_patterns, ["meterId"])
    assignment = await _open_assignment(session, meter_id)
    if assignment is None:
        raise errors.MeterNotAssigned(field="meterId")
    # The household's side too: a meter in scope may serve a household outside it.
    household = await _scoped(session, Household, assignment.household_id, scope_patterns, field="meterId", lock=True)
    async with session.begin_nested():
        await _close(assignment, valid_to, end_reading, "")
        assert end_reading is not None  # _close refused a missing one
        # A faulty meter taken back stays faulty until it is repaired (back in stock then).
        if meter.status is not MeterStatus.faulty:
            meter.status = MeterStatus.in_stock
        await session.flush()
        await _store_handover(session, [_handover(meter_id, valid_to, end_reading, "validTo", "endReading", "meterId")],
                              source=f"assignment:{household.account_no}", now=now or valid_to, tz=tz)
    return assignment


async def replace_meter(
    session: AsyncSession,
    *,
    old_meter_id: int,
    new_meter_id: int,
    replaced_at: datetime,
    old_final_reading: Decimal | None,
    new_initial_reading: Decimal | None,
    reason: str = "",
    replaced_by: str,
    scope_patterns: Sequence[str] | None = None,
    now: datetime | None = None,
    tz: str | tzinfo = "Asia/Shanghai",
) -> MeterReplacement:
    """换表, in one operation: the old meter's assignment closes with its final reading
    (the old meter is retired), the new meter's opens for the same household with its
    initial reading, and the replacement is recorded, so usage later spans both. The new
    meter's area must contain the household's (CROSS_AREA_ASSIGNMENT otherwise).

    The two register readings are stored as manual readings at ``replaced_at`` through
    ingest (received ``now``, default ``replaced_at``), in the utility's zone ``tz``; what
    ingest rejects (``replaced_at`` before the new meter's install day or in the future …)
    refuses the whole replacement, and nothing of it is written."""
    if old_meter_id == new_meter_id:
        raise DomainError("新表不能与旧表相同", "The new meter must differ from the old one", field="newMeterId", code=ErrorCode.INVALID)
    await share_area_tree(session)
    old, new = await _lock_meters(session, [old_meter_id, new_meter_id], scope_patterns, ["oldMeterId", "newMeterId"])
    assignment = await _open_assignment(session, old_meter_id)
    if assignment is None:
        raise errors.MeterNotAssigned(field="oldMeterId")
    served = await _scoped(session, Household, assignment.household_id, scope_patterns, field="oldMeterId", lock=True)
    _check_available(new, "newMeterId")
    await _check_serves_within(session, new.area_id, served.area_id, "newMeterId")
    problems: list[DomainError] = []
    _reading(problems, new_initial_reading, "newInitialReading")
    if len(reason) > 500:
        problems.append(DomainError("原因不能超过 500 个字符", "A reason is at most 500 characters",
                                    field="reason", code=ErrorCode.TOO_LONG))
    await _flush_collect(problems)
    assert new_initial_reading is not None
    async with session.begin_nested():
        await _close(assignment, replaced_at, old_final_reading, "oldFinal")
        assert old_final_reading is not None
        old.status = MeterStatus.retired
        await session.flush()
        household = await session.get(Household, assignment.household_id)
        assert household is not None and household.id is not None and old.id is not None and new.id is not None
        await _open(session, new, household, replaced_at, new_initial_reading, "newMeterId")
        replacement = MeterReplacement(household_id=household.id, old_meter_id=old.id, new_meter_id=new.id,
                                       replaced_at=replaced_at, old_final_reading=as_stored(old_final_reading),
                                       new_initial_reading=as_stored(new_initial_reading), reason=reason,
                                       replaced_by=replaced_by[:100])
        session.add(replacement)
        await session.flush()
        # Usage spans the two meters through these readings, with no special case.
        await _store_handover(session, [
            _handover(old.id, replaced_at, old_final_reading, "replacedAt", "oldFinalReading", "oldMeterId"),
            _handover(new.id, replaced_at, new_initial_reading, "replacedAt", "newInitialReading", "newMeterId"),
        ], source=f"replacement:{replaced_by[:80]}", now=now or replaced_at, tz=tz)
    return replacement


# --------------------------------------------------------------------------- lists (配表管理)


class AssignmentKind(StrEnum):
    """Which assignments a list shows: the ones serving now, or the ones ended (拆表 / 换表)."""

    current = "current"
    ended = "ended"


ASSIGNMENT_COLUMNS = ("id", "meter_id", "household_id", "valid_from", "valid_to", "start_reading", "end_reading")
REPLACEMENT_COLUMNS = ("id", "household_id", "old_meter_id", "new_meter_id", "replaced_at", "old_final_reading",
                       "new_initial_reading", "reason", "replaced_by")


def _in_period(column: Any, by_from: bool, by_to: bool) -> list[Any]:
    conditions = []
    if by_from:
        conditions.append(column >= bindparam("period_from"))
    if by_to:
        conditions.append(column < bindparam("period_to"))
    return conditions


def _by_household(household: Any, by_household: bool, by_account_no: bool) -> list[Any]:
    conditions = []
    if by_household:
        conditions.append(household.c.id == bindparam("household_id"))
    if by_account_no:
        conditions.append(household.c.account_no == bindparam("account_no"))
    return conditions


def _paged_by_household(
    table: Any, columns: Sequence[str], conditions: list[Any], sort_column: str, *,
    by_area: bool, by_household: bool, by_account_no: bool,
) -> tuple[Select[Any], Select[Any]]:
    """Page and count statements over ``table`` joined to its household and the household's
    area (the data scope and the area and household filters apply there), newest
    ``sort_column`` first, with ``:_offset``/``:_limit`` binds."""
    household = Household.__table__.alias("h")  # type: ignore[attr-defined]
    area = Area.__table__.alias("a")  # type: ignore[attr-defined]
    joined = table.join(household, household.c.id == table.c.household_id).join(area, area.c.id == household.c.area_id)
    where = [area.c.path.like(any_(bindparam("patterns", type_=ARRAY(Text)))), *conditions,
             *_by_household(household, by_household, by_account_no)]
    if by_area:
        where.append(_subtree_of(area))
    rows = (
        select(*(table.c[name] for name in columns)).select_from(joined).where(*where)
        .order_by(table.c[sort_column].desc(), table.c.id.desc())
        .offset(bindparam("_offset")).limit(bindparam("_limit"))
    )
    return rows, select(func.count()).select_from(joined).where(*where)


@functools.cache
def _assignment_page_query(
    by_area: bool, by_from: bool, by_to: bool, by_meter_code: bool, by_household: bool, by_account_no: bool,
    kind: AssignmentKind | None,
) -> tuple[Select[Any], Select[Any]]:
    assignment = MeterAssignment.__table__.alias("s")  # type: ignore[attr-defined]
    conditions: list[Any] = []
    if by_from or by_to:
        # Assigned or ended within the period: the 配表 and 拆表 done then.
        conditions.append(or_(and_(*_in_period(assignment.c.valid_from, by_from, by_to)),
                              and_(*_in_period(assignment.c.valid_to, by_from, by_to))))
    if by_meter_code:
        meter = Meter.__table__.alias("m")  # type: ignore[attr-defined]
        conditions.append(assignment.c.meter_id == select(meter.c.id).where(meter.c.code == bindparam("meter_code"))
                          .scalar_subquery())
    if kind is AssignmentKind.current:
        conditions.append(assignment.c.valid_to.is_(None))
    elif kind is AssignmentKind.ended:
        conditions.append(assignment.c.valid_to.is_not(None))
    return _paged_by_household(assignment, ASSIGNMENT_COLUMNS, conditions, "valid_from",
                               by_area=by_area, by_household=by_household, by_account_no=by_account_no)


def _list_params(
    scope_patterns: Sequence[str], area_id: int | None, period_from: datetime | None, period_to: datetime | None,
    meter_code: str | None, household_id: int | None, account_no: str | None,
) -> dict[str, Any]:
    params: dict[str, Any] = {"patterns": list(scope_patterns)}
    for name, value in (("area_id", area_id), ("period_from", period_from), ("period_to", period_to),
                        ("meter_code", meter_code), ("household_id", household_id), ("account_no", account_no)):
        if value is not None:
            params[name] = value
    return params


def assignment_page_query(
    *,
    scope_patterns: Sequence[str],
    area_id: int | None = None,
    period_from: datetime | None = None,
    period_to: datetime | None = None,
    meter_code: str | None = None,
    household_id: int | None = None,
    account_no: str | None = None,
    kind: AssignmentKind | None = None,
) -> PagedQuery:
    """Assignments (配表) of households within the scope, newest first: optionally of
    households in ``area_id``'s subtree, assigned or ended in ``[period_from, period_to)``
    (either bound may be left open), of the meter with code ``meter_code``, of one
    household (by id or account number) and current or ended. Rows hold
    :data:`ASSIGNMENT_COLUMNS`. The scope is the household's: a meter serves only
    households at or below its area, so the household's area is the narrower one."""
    rows, count = _assignment_page_query(area_id is not None, period_from is not None, period_to is not None,
                                         meter_code is not None, household_id is not None, account_no is not None, kind)
    params = _list_params(scope_patterns, area_id, period_from, period_to, meter_code, household_id, account_no)
    return PagedQuery(rows=rows, count=count, params=params)


@functools.cache
def _replacement_page_query(
    by_area: bool, by_from: bool, by_to: bool, by_meter_code: bool, by_household: bool, by_account_no: bool,
) -> tuple[Select[Any], Select[Any]]:
    replacement = MeterReplacement.__table__.alias("r")  # type: ignore[attr-defined]
    conditions: list[Any] = _in_period(replacement.c.replaced_at, by_from, by_to)
    if by_meter_code:
        meter = Meter.__table__.alias("m")  # type: ignore[attr-defined]
        coded = select(meter.c.id).where(meter.c.code == bindparam("meter_code")).scalar_subquery()
        conditions.append(or_(replacement.c.old_meter_id == coded, replacement.c.new_meter_id == coded))
    return _paged_by_household(replacement, REPLACEMENT_COLUMNS, conditions, "replaced_at",
                               by_area=by_area, by_household=by_household, by_account_no=by_account_no)


def replacement_page_query(
    *,
    scope_patterns: Sequence[str],
    area_id: int | None = None,
    period_from: datetime | None = None,
    period_to: datetime | None = None,
    meter_code: str | None = None,
    household_id: int | None = None,
    account_no: str | None = None,
) -> PagedQuery:
    """Replacements (换表) of households within the scope, newest first, filtered like
    :func:`assignment_page_query` (``replaced_at`` in ``[period_from, period_to)``; the
    meter code matches the old or the new meter). Rows hold :data:`REPLACEMENT_COLUMNS`."""
    rows, count = _replacement_page_query(area_id is not None, period_from is not None, period_to is not None,
                                          meter_code is not None, household_id is not None, account_no is not None)
    params = _list_params(scope_patterns, area_id, period_from, period_to, meter_code, household_id, account_no)
    return PagedQuery(rows=rows, count=count, params=params)
