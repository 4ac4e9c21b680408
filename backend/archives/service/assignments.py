"""Meter assignments (配表), move-outs (拆表) and replacements (换表), with their handover
readings (backend.archives.handover)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from decimal import Decimal

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import errors
from backend.archives.handover import HandoverReading, store_handover_readings
from backend.archives.models import (
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
from backend.errors import DomainError, ErrorCode

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
