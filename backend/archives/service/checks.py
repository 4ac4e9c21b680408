"""The checks every archive form shares: field rules, uniqueness refusals, and the rule
that a meter serves only households in its area's subtree."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from sqlalchemy import exists, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import errors
from backend.archives.errors import DuplicateAccountNo
from backend.archives.models import (
    Area,
    AreaKind,
)
from backend.auth.errors import UnknownArea
from backend.auth.scope import in_scope, path_in_scope
from backend.errors import DomainError, ErrorCode, NotFound, ValidationFailed

_KIND_ORDER = list(AreaKind)
RowT = TypeVar("RowT")

# ASCII only and used with fullmatch: "\d" takes fullwidth digits and "$" a trailing newline.
ACCOUNT_NO = re.compile(r"[0-9A-Za-z\-]{1,32}", re.ASCII)
MOBILE = re.compile(r"1[3-9][0-9]{9}", re.ASCII)
LANDLINE = re.compile(r"0[0-9]{2,3}-?[0-9]{7,8}(-[0-9]{1,6})?", re.ASCII)
ID_NUMBER = re.compile(r"[0-9]{17}[0-9Xx]|[0-9]{15}", re.ASCII)
# 房间号: floor and flat as the building numbers them (0101, 1203, B-0203).
ROOM = re.compile(r"[0-9A-Za-z]([0-9A-Za-z\-]{0,14}[0-9A-Za-z])?", re.ASCII)
AREA_CODE = re.compile(r"[0-9A-Za-z\-_]{1,32}", re.ASCII)
METER_CODE = re.compile(r"[0-9A-Za-z\-_]{1,32}", re.ASCII)
# Protocol addresses: CJ/T 188 is 7 bytes of BCD, printed as 14 digits; others are opaque.
ADDRESS_RULES = {"cjt188": re.compile(r"[0-9]{14}", re.ASCII)}
OTHER_ADDRESS = re.compile(r"[0-9A-Za-z]{1,32}", re.ASCII)
REGION_CODE = re.compile(r"[0-9]{4}", re.ASCII)
CALIBERS = (15, 20, 25, 32, 40, 50, 65, 80, 100, 125, 150, 200, 250, 300)
PARITIES = ("N", "E", "O")
STOPBITS = ("1", "1.5", "2")


class _Keep:
    """The "leave unchanged" marker of the ``…Changes`` dataclasses (``None`` clears)."""

    def __repr__(self) -> str:
        return "KEEP"

    def __bool__(self) -> bool:
        return False


KEEP: Any = _Keep()


def mask_id_number(id_number: str | None) -> str | None:
    """An ID number as screens show it: ``3301**********1234``."""
    if not id_number:
        return id_number
    if len(id_number) <= 8:
        return "*" * len(id_number)
    return id_number[:4] + "*" * (len(id_number) - 8) + id_number[-4:]


def _like(search: str) -> str:
    return "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _changed(changes: Any) -> dict[str, Any]:
    return {f.name: getattr(changes, f.name) for f in dataclasses.fields(changes) if getattr(changes, f.name) is not KEEP}


async def _flush_collect(problems: list[DomainError]) -> None:
    if problems:
        raise ValidationFailed(problems) if len(problems) > 1 else problems[0]


# Unique constraints a concurrent request can win between a pre-check and the INSERT:
# the refusal the pre-check would have given.
_UNIQUE_REFUSALS: dict[str, Callable[[], DomainError]] = {
    "uq_households_account_no": lambda: DuplicateAccountNo(field="accountNo"),
    "uq_meters_code": lambda: errors.DuplicateMeterCode(field="code"),
    "uq_meters_protocol_address": lambda: errors.DuplicateMeterAddress(field="address"),
    "uq_concentrators_region_code_terminal_address": lambda: errors.DuplicateConcentratorAddress(field="terminalAddress"),
    "uq_meter_models_vendor_name": lambda: errors.DuplicateMeterModel(field="name"),
    "uq_collectors_concentrator_id_address": lambda: errors.DuplicateCollectorAddress(field="address"),
    "uq_areas_code": lambda: errors.DuplicateAreaCode(field="code"),
    "uq_monitoring_stations_code": lambda: errors.DuplicateStationCode(field="code"),
}


def constraint_name(error: IntegrityError) -> str | None:
    """The violated constraint's name (asyncpg's error hangs under the DBAPI adapter's)."""
    for candidate in (error.orig, getattr(error.orig, "__cause__", None)):
        name = getattr(candidate, "constraint_name", None)
        if isinstance(name, str):
            return name
    return None


async def _flush_unique(session: AsyncSession, *new_rows: Any) -> None:
    """Add ``new_rows`` and flush in a savepoint; a unique key taken meanwhile becomes its
    Duplicate* refusal, and the session stays usable. (Entering the savepoint flushes what
    was pending before, so rows to insert are added inside it.)"""
    try:
        async with session.begin_nested():
            session.add_all(new_rows)
            await session.flush()
    except IntegrityError as clash:
        refusal = _UNIQUE_REFUSALS.get(constraint_name(clash) or "")
        if refusal is None:
            raise
        raise refusal() from None


async def _exists(session: AsyncSession, statement: Any) -> bool:
    return bool((await session.execute(select(exists(statement)))).scalar_one())


def _text_field(problems: list[DomainError], value: str | None, field: str, *, limit: int, required: bool = True) -> None:
    if value is None or not value.strip():
        if required:
            problems.append(DomainError("必填", "Required", field=field, code=ErrorCode.REQUIRED))
        return
    if len(value) > limit:
        problems.append(DomainError(f"不能超过 {limit} 个字符", f"At most {limit} characters", field=field, code=ErrorCode.TOO_LONG))


def _phone_field(problems: list[DomainError], value: str | None, field: str) -> None:
    if value and not (MOBILE.fullmatch(value) or LANDLINE.fullmatch(value)):
        problems.append(errors.InvalidPhone(field=field))


def _reading(problems: list[DomainError], value: Decimal | None, field: str, *, required: bool = True) -> None:
    if value is None:
        if required:
            problems.append(DomainError("必填", "Required", field=field, code=ErrorCode.REQUIRED))
        return
    if not value.is_finite() or value < 0 or value >= Decimal("1e12") or value != value.quantize(Decimal("0.0001")):
        problems.append(DomainError("读数须为非负数, 最多 4 位小数", "A reading is a non-negative number with at most 4 places",
                                    field=field, code=ErrorCode.INVALID))


_READING_PLACES = Decimal("0.0001")


def parse_reading(value: str, *, field: str) -> Decimal:
    """A register reading from text ("1234.5678"); INVALID when it is not one."""
    try:
        reading = Decimal(value)
    except (InvalidOperation, ValueError):
        raise DomainError("读数格式不正确", "Malformed reading", field=field, code=ErrorCode.INVALID) from None
    problems: list[DomainError] = []
    _reading(problems, reading, field)
    if problems:
        raise problems[0]
    return as_stored(reading)


def as_stored(reading: Decimal) -> Decimal:
    """A valid reading as its NUMERIC(16,4) column holds it, so a mutation's answer reads
    like a later query's ("123.4000", not "123.4")."""
    return reading.quantize(_READING_PLACES)


# --------------------------------------------------------------------------- scope

# Open assignments whose household lies outside the meter's area subtree (the rule in the
# module docstring); callers add the condition that narrows it to what they change.
CROSS_AREA_OPEN_ASSIGNMENTS = (
    "SELECT 1 FROM meter_assignments s JOIN meters m ON m.id = s.meter_id JOIN areas ma ON ma.id = m.area_id "
    "JOIN households h ON h.id = s.household_id JOIN areas ha ON ha.id = h.area_id "
    "WHERE s.valid_to IS NULL AND NOT starts_with(ha.path, ma.path)"
)


async def _check_serves_within(session: AsyncSession, meter_area_id: int, household_area_id: int, field: str) -> None:
    """CROSS_AREA_ASSIGNMENT unless the household's area is the meter's or below it."""
    within = await session.execute(
        text("SELECT starts_with(ha.path, ma.path) FROM areas ma, areas ha WHERE ma.id = :meter_area AND ha.id = :household_area"),
        {"meter_area": meter_area_id, "household_area": household_area_id},
    )
    if not within.scalar_one_or_none():
        raise errors.CrossAreaAssignment(field=field)


# An assigned household or meter moving to area :new_area would break the rule.
_HOUSEHOLD_MOVE_BREAKS = (
    "SELECT EXISTS (SELECT 1 FROM meter_assignments s JOIN meters m ON m.id = s.meter_id JOIN areas ma ON ma.id = m.area_id "
    "JOIN areas na ON na.id = :new_area WHERE s.household_id = :id AND s.valid_to IS NULL AND NOT starts_with(na.path, ma.path))"
)
_METER_MOVE_BREAKS = (
    "SELECT EXISTS (SELECT 1 FROM meter_assignments s JOIN households h ON h.id = s.household_id "
    "JOIN areas ha ON ha.id = h.area_id JOIN areas na ON na.id = :new_area "
    "WHERE s.meter_id = :id AND s.valid_to IS NULL AND NOT starts_with(ha.path, na.path))"
)


async def _check_moved_within(session: AsyncSession, breaks: str, pk: int, new_area_id: int) -> None:
    if (await session.execute(text(breaks), {"id": pk, "new_area": new_area_id})).scalar_one():
        raise errors.CrossAreaAssignment(field="areaId")


async def _check_no_cross_area(session: AsyncSession, condition: str, params: dict[str, Any], field: str) -> None:
    """CROSS_AREA_ASSIGNMENT when an open assignment matching ``condition`` breaks the rule."""
    if (await session.execute(text(f"SELECT EXISTS ({CROSS_AREA_OPEN_ASSIGNMENTS} AND {condition})"), params)).scalar_one():
        raise errors.CrossAreaAssignment(field=field)


async def _area_for(session: AsyncSession, area_id: int, scope_patterns: Sequence[str] | None, field: str) -> Area:
    """The area ``area_id`` when it exists within the scope; UNKNOWN_AREA otherwise."""
    area = await session.get(Area, area_id)
    if area is None or not path_in_scope(area.path, scope_patterns):
        raise UnknownArea(field=field)
    return area


async def _scoped(
    session: AsyncSession, model: type[RowT], pk: int, scope_patterns: Sequence[str] | None, *,
    field: str = "id", lock: bool = False,
) -> RowT:
    """Row ``pk`` of a table with an ``area_id``, within the scope; NOT_FOUND otherwise.
    With ``lock``, the row is locked first: a row another transaction is moving is then
    read as it committed (``FOR UPDATE`` on the join would recheck the join against the
    old area, and find nothing)."""
    if lock:
        await session.execute(select(model.id).where(model.id == pk).with_for_update())  # type: ignore[attr-defined]
    statement: Any = select(model).join(Area, Area.id == model.area_id).where(model.id == pk)  # type: ignore[attr-defined]
    if scope_patterns is not None:
        statement = statement.where(in_scope(Area.path, scope_patterns))
    if lock:
        statement = statement.execution_options(populate_existing=True)
    found = (await session.execute(statement)).scalars().first()
    if found is None:
        raise NotFound(field=field)
    return found  # type: ignore[no-any-return]


# A meter has readings iff it has a latest_readings row (ingest and corrections keep
# that table in step), which is one index probe instead of a scan of partitioned readings.
_METER_HAS_READINGS = text("SELECT EXISTS (SELECT 1 FROM latest_readings WHERE meter_id = :id)")
_MODEL_HAS_READINGS = text(
    "SELECT EXISTS (SELECT 1 FROM meters m JOIN latest_readings l ON l.meter_id = m.id WHERE m.model_id = :id)"
)


async def _any_readings(session: AsyncSession, statement: Any, id_: int) -> bool:
    return bool((await session.execute(statement, {"id": id_})).scalar_one())
