"""Archives (档案管理): areas, households, meter models, meters, concentrators, collectors,
meter assignments (配表) and replacements (换表).

Plain async functions over a session; the caller commits. Data scope is a path-prefix
match: ``areas.path LIKE ANY(:patterns)`` with the caller's ``Principal.scope_patterns()``,
applied inside every query that fetches rows. Functions that change an archive take
``scope_patterns`` too: an object outside them is NOT_FOUND, an area outside them is an
unknown area. ``scope_patterns=None`` means "no restriction" and is for system callers
(CLI, demo data, the acquisition worker), never for a request.

What varies is passed in: the clock (``now`` / dates), who acts (``changed_by``), the
terminal-password cipher, and the Money issue's balance check (``balance_checker``).

A meter serves a household only when the household's area is the meter's area or lies
below it (the household's area path starts with the meter's), so anyone whose scope
covers a meter also covers the household it serves, and screens that show a meter's
household never reveal one outside the reader's scope. Every change that creates an
assignment or moves an assigned meter, household or area keeps it (CROSS_AREA_ASSIGNMENT
otherwise): :func:`assign_meter`, :func:`replace_meter`, :func:`update_meter`,
:func:`update_household`, :func:`move_area`, and the Excel imports (backend.archives.excel).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import hmac
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import ARRAY, Select, Text, any_, bindparam, exists, func, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import errors
from backend.archives.errors import AreaKindOrder, DuplicateAccountNo
from backend.archives.handover import HandoverReading, store_handover_readings
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
    MeterType,
)
from backend.auth.errors import UnknownArea
from backend.auth.scope import in_scope, path_in_scope, require_whole_tree
from backend.auth.security import KeyPurpose, derive_key
from backend.errors import DomainError, ErrorCode, NotFound, ValidationFailed
from backend.pagination import PagedQuery

_KIND_ORDER = list(AreaKind)
RowT = TypeVar("RowT")

# ASCII only and used with fullmatch: "\d" takes fullwidth digits and "$" a trailing newline.
ACCOUNT_NO = re.compile(r"[0-9A-Za-z\-]{1,32}", re.ASCII)
MOBILE = re.compile(r"1[3-9][0-9]{9}", re.ASCII)
LANDLINE = re.compile(r"0[0-9]{2,3}-?[0-9]{7,8}(-[0-9]{1,6})?", re.ASCII)
ID_NUMBER = re.compile(r"[0-9]{17}[0-9Xx]|[0-9]{15}", re.ASCII)
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


# --------------------------------------------------------------------------- areas


@dataclass(frozen=True, slots=True)
class AreaChanges:
    """Fields to change (``KEEP`` leaves one alone, ``None`` clears an optional one)."""

    name: Any = KEEP
    code: Any = KEEP
    address: Any = KEEP
    latitude: Any = KEEP
    longitude: Any = KEEP


async def _check_area_fields(session: AsyncSession, values: dict[str, Any], area_id: int | None) -> None:
    problems: list[DomainError] = []
    if "name" in values:
        _text_field(problems, values["name"], "name", limit=100)
    if values.get("code"):
        if not AREA_CODE.fullmatch(values["code"]):
            problems.append(DomainError("区域编码只能包含字母、数字、-、_", "An area code uses letters, digits, - and _",
                                        field="code", code=ErrorCode.INVALID))
        elif await _exists(session, select(Area.id).where(Area.code == values["code"], Area.id != (area_id or 0))):  # type: ignore[call-overload, arg-type]
            problems.append(errors.DuplicateAreaCode(field="code"))
    if values.get("address") is not None:
        _text_field(problems, values["address"], "address", limit=200, required=False)
    for name, bound in (("latitude", 90), ("longitude", 180)):
        coordinate = values.get(name)
        if coordinate is not None and not (coordinate.is_finite() and -bound <= coordinate <= bound):
            problems.append(DomainError(f"坐标须在 ±{bound} 之间", f"Must lie within ±{bound}", field=name, code=ErrorCode.INVALID))
    await _flush_collect(problems)


async def create_area(
    session: AsyncSession,
    *,
    name: str,
    kind: AreaKind,
    parent_id: int | None = None,
    code: str | None = None,
    address: str | None = None,
    latitude: Decimal | None = None,
    longitude: Decimal | None = None,
    scope_patterns: Sequence[str] | None = None,
) -> Area:
    """Add an area under ``parent_id`` (or a root company) and compute its path."""
    parent_path = "/"
    if parent_id is not None:
        await _lock_area_tree(session)
        parent = await _area_for(session, parent_id, scope_patterns, "parentId")
        if _KIND_ORDER.index(kind) <= _KIND_ORDER.index(parent.kind):
            raise AreaKindOrder(field="kind")
        parent_path = parent.path
    elif kind is not AreaKind.company:
        raise AreaKindOrder(field="kind")
    elif scope_patterns is not None and "/%" not in scope_patterns:
        # A new company lies outside every scope but the whole tree's.
        raise UnknownArea(field="parentId")
    await _check_area_fields(session, {"name": name, "code": code, "address": address,
                                       "latitude": latitude, "longitude": longitude}, None)
    # The path holds the area's own id: take it from the sequence first.
    area_id = (await session.execute(text("SELECT nextval(pg_get_serial_sequence('areas', 'id'))"))).scalar_one()
    area = Area(id=area_id, name=name, kind=kind, parent_id=parent_id, path=f"{parent_path}{area_id}/",
                code=code or None, address=address, latitude=latitude, longitude=longitude)
    session.add(area)
    await session.flush()
    return area


async def update_area(
    session: AsyncSession, *, area_id: int, changes: AreaChanges, scope_patterns: Sequence[str] | None = None
) -> Area:
    """Change an area's name, code, address or coordinates (moving is :func:`move_area`)."""
    area = await _area_for(session, area_id, scope_patterns, "id")
    values = _changed(changes)
    await _check_area_fields(session, values, area_id)
    for name, value in values.items():
        setattr(area, name, value or None if name == "code" else value)
    await session.flush()
    return area


async def rename_area(session: AsyncSession, *, area_id: int, name: str, scope_patterns: Sequence[str] | None = None) -> Area:
    return await update_area(session, area_id=area_id, changes=AreaChanges(name=name), scope_patterns=scope_patterns)


async def move_area(
    session: AsyncSession, *, area_id: int, new_parent_id: int, scope_patterns: Sequence[str] | None = None
) -> Area:
    """Hang an area (and its subtree) under another parent; every path of the subtree is
    rewritten in one UPDATE. Refused (CROSS_AREA_ASSIGNMENT) when a meter would then
    serve a household outside its area's subtree."""
    await _lock_area_tree(session)
    area = await _area_for(session, area_id, scope_patterns, "id")
    parent = await _area_for(session, new_parent_id, scope_patterns, "parentId")
    if parent.path.startswith(area.path):
        raise errors.AreaMoveInvalid(field="parentId")
    if _KIND_ORDER.index(area.kind) <= _KIND_ORDER.index(parent.kind):
        raise AreaKindOrder(field="parentId")
    old_prefix, new_prefix = area.path, f"{parent.path}{area.id}/"
    async with session.begin_nested():
        # New paths cannot collide with existing ones: each ends in its own unique id.
        await session.execute(
            text(
                "UPDATE areas SET path = :new_prefix || substr(path, length(:old_prefix) + 1), "
                "parent_id = CASE WHEN id = :area_id THEN :parent_id ELSE parent_id END "
                "WHERE path LIKE :pattern"
            ),
            {"new_prefix": new_prefix, "old_prefix": old_prefix, "area_id": area_id, "parent_id": new_parent_id,
             "pattern": _like_prefix(old_prefix)},
        )
        # A meter left outside the moved subtree may serve a household inside it (or the
        # reverse): the move is refused, and the savepoint takes the new paths back.
        await _check_no_cross_area(session, "(ma.path LIKE :moved OR ha.path LIKE :moved)",
                                   {"moved": _like_prefix(new_prefix)}, "parentId")
    await session.refresh(area)
    return area


# pg_advisory_xact_lock key for the area tree (the bytes of "areatree").
_AREA_TREE_LOCK = 0x6172656174726565


async def _lock_area_tree(session: AsyncSession) -> None:
    """Serialize changes of the tree's shape until the transaction ends: a child created
    while its parent moves would otherwise keep the old path prefix (and the wrong scope).
    Shape changes are rare; reads never take this lock."""
    await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _AREA_TREE_LOCK})


async def share_area_tree(session: AsyncSession) -> None:
    """Hold the tree's shape still until the transaction ends, alongside other holders:
    taken by every path that opens an assignment or moves a meter or household, before it
    reads the paths it checks the same-subtree rule against. A :func:`move_area` checks
    the assignments it sees; one committed after that check would escape it."""
    await session.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": _AREA_TREE_LOCK})


def _like_prefix(path: str) -> str:
    return path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def delete_area(session: AsyncSession, *, area_id: int, scope_patterns: Sequence[str] | None = None) -> Area:
    """Delete an area with nothing under it: no child area, household, meter, concentrator,
    role / API-client grant, or staff user or role belonging to it (AREA_NOT_EMPTY otherwise)."""
    await _lock_area_tree(session)
    area = await _area_for(session, area_id, scope_patterns, "id")
    used = await session.execute(
        text(
            "SELECT EXISTS (SELECT 1 FROM areas WHERE parent_id = :id) OR EXISTS (SELECT 1 FROM households WHERE area_id = :id)"
            " OR EXISTS (SELECT 1 FROM meters WHERE area_id = :id) OR EXISTS (SELECT 1 FROM concentrators WHERE area_id = :id)"
            " OR EXISTS (SELECT 1 FROM role_areas WHERE area_id = :id) OR EXISTS (SELECT 1 FROM api_client_areas WHERE area_id = :id)"
            " OR EXISTS (SELECT 1 FROM staff_users WHERE area_id = :id) OR EXISTS (SELECT 1 FROM roles WHERE area_id = :id)"
        ),
        {"id": area_id},
    )
    if used.scalar_one():
        raise errors.AreaNotEmpty(field="id")
    await session.delete(area)
    await session.flush()
    return area


async def areas_by_ids(session: AsyncSession, ids: Iterable[int]) -> dict[int, Area]:
    wanted = list(set(ids))
    if not wanted:
        return {}
    rows = (await session.execute(select(Area).where(Area.id.in_(wanted)))).scalars().all()  # type: ignore[union-attr]
    return {area.id: area for area in rows if area.id is not None}


async def require_areas(session: AsyncSession, ids: Iterable[int], *, field: str = "areaIds") -> dict[int, Area]:
    """The areas for ``ids``; an unknown one is refused with UNKNOWN_AREA."""
    wanted = set(ids)
    found = await areas_by_ids(session, wanted)
    if len(found) != len(wanted):
        raise UnknownArea(field=field)
    return found


def areas_statement(
    *,
    scope_patterns: Sequence[str],
    parent_id: int | None = None,
    kind: AreaKind | None = None,
    search: str | None = None,
) -> Select[Area]:
    """Areas within the scope, filtered, in tree order (by path)."""
    statement = select(Area).where(in_scope(Area.path, scope_patterns))
    if parent_id is not None:
        statement = statement.where(Area.parent_id == parent_id)  # type: ignore[arg-type]
    if kind is not None:
        statement = statement.where(Area.kind == kind)  # type: ignore[arg-type]
    if search:
        statement = statement.where(Area.name.contains(search, autoescape=True))  # type: ignore[attr-defined]
    return statement.order_by(Area.path)


@functools.cache
def _area_page_query(by_parent: bool, by_kind: bool, by_search: bool) -> tuple[Select[Any], Select[Any]]:
    """The page and count statements for one combination of filters, built once.

    Values come as bind parameters (``patterns``, ``parent_id``, ``kind``, ``search``,
    ``_offset``, ``_limit``), so the statement objects, their cache keys and compiled SQL
    are reused by every request.
    """
    # Table columns, not ORM attributes: plain Core rows, no ORM loading machinery per row.
    area = Area.__table__.alias("a")  # type: ignore[attr-defined]
    parent = Area.__table__.alias("p")  # type: ignore[attr-defined]
    conditions = [area.c.path.like(any_(bindparam("patterns", type_=ARRAY(Text))))]
    if by_parent:
        conditions.append(area.c.parent_id == bindparam("parent_id"))
    if by_kind:
        conditions.append(area.c.kind == bindparam("kind"))
    if by_search:
        conditions.append(area.c.name.like(bindparam("search"), escape="\\"))
    rows = (
        select(
            area.c.id, area.c.name, area.c.kind, area.c.created_at, area.c.parent_id, area.c.path,
            parent.c.id.label("parent_pk"), parent.c.name.label("parent_name"), parent.c.kind.label("parent_kind"),
            parent.c.created_at.label("parent_created_at"), parent.c.parent_id.label("parent_parent_id"),
            parent.c.path.label("parent_path"),
            # The Archives issue's columns come last, so the Foundation's positions hold.
            area.c.code, area.c.address, area.c.latitude, area.c.longitude,
        )
        .outerjoin(parent, parent.c.id == area.c.parent_id)
        .where(*conditions)
        .order_by(area.c.path)
        .offset(bindparam("_offset"))
        .limit(bindparam("_limit"))
    )
    count = select(func.count()).select_from(area).where(*conditions)
    return rows, count


def area_page_query(
    *,
    scope_patterns: Sequence[str],
    parent_id: int | None = None,
    kind: AreaKind | None = None,
    search: str | None = None,
) -> PagedQuery:
    """Areas within the scope, filtered, in tree order, each row with its parent's columns
    (``parent_*``, null for a root), so list screens show the parent without a second query."""
    rows, count = _area_page_query(parent_id is not None, kind is not None, bool(search))
    params: dict[str, Any] = {"patterns": list(scope_patterns)}
    if parent_id is not None:
        params["parent_id"] = parent_id
    if kind is not None:
        params["kind"] = kind
    if search:
        params["search"] = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return PagedQuery(rows=rows, count=count, params=params)


async def households_by_ids(session: AsyncSession, ids: Iterable[int]) -> dict[int, Household]:
    wanted = list(set(ids))
    if not wanted:
        return {}
    rows = (await session.execute(select(Household).where(Household.id.in_(wanted)))).scalars().all()  # type: ignore[union-attr]
    return {household.id: household for household in rows if household.id is not None}


async def find_household(session: AsyncSession, *, account_no: str) -> Household | None:
    result = await session.execute(select(Household).where(Household.account_no == account_no))  # type: ignore[arg-type]
    return result.scalars().first()


# --------------------------------------------------------------------------- households


class HouseholdOrder(StrEnum):
    account_no = "account_no"
    name = "name"
    created_at = "created_at"
    updated_at = "updated_at"


# The Money issue fills this in: the account balance of a household in fen (0: nothing to
# settle). Closing a household is refused while it is not zero.
BalanceChecker = Callable[[AsyncSession, int], Awaitable[int]]


async def no_balance(session: AsyncSession, household_id: int) -> int:
    return 0


@dataclass(frozen=True, slots=True)
class HouseholdChanges:
    """Fields to change (``KEEP`` leaves one alone, ``None`` clears an optional one).

    ``name``, ``phone`` and ``id_number`` correct the current owner's record; a new owner
    is :func:`transfer_ownership`.
    """

    name: Any = KEEP
    phone: Any = KEEP
    phone2: Any = KEEP
    id_number: Any = KEEP
    address: Any = KEEP
    area_id: Any = KEEP
    customer_type: Any = KEEP
    sub_type: Any = KEEP
    population: Any = KEEP
    account_no: Any = KEEP


def _owner_problems(problems: list[DomainError], values: dict[str, Any]) -> None:
    if "name" in values:
        _text_field(problems, values["name"], "name", limit=100)
    for field in ("phone", "phone2"):
        _phone_field(problems, values.get(field), field)
    if values.get("id_number") and not ID_NUMBER.fullmatch(values["id_number"]):
        problems.append(errors.InvalidIdNumber(field="idNumber"))


async def _check_household_fields(
    session: AsyncSession, values: dict[str, Any], household_id: int | None, scope_patterns: Sequence[str] | None
) -> None:
    problems: list[DomainError] = []
    if "account_no" in values:
        account_no = values["account_no"]
        if not account_no or not ACCOUNT_NO.fullmatch(account_no):
            problems.append(DomainError("缴费号只能包含字母、数字和 -, 最多 32 位", "An account number is up to 32 letters, digits or -",
                                        field="accountNo", code=ErrorCode.INVALID))
        elif await _exists(session, select(Household.id).where(Household.account_no == account_no, Household.id != (household_id or 0))):  # type: ignore[call-overload, arg-type]
            problems.append(DuplicateAccountNo(field="accountNo"))
    _owner_problems(problems, values)
    if values.get("address") is not None:
        _text_field(problems, values["address"], "address", limit=200, required=False)
    if values.get("sub_type") is not None:
        _text_field(problems, values["sub_type"], "subType", limit=50, required=False)
    if "population" in values and (values["population"] is None or not 1 <= values["population"] <= 99):
        problems.append(DomainError("人口须在 1 到 99 之间", "Population must be 1 to 99", field="population", code=ErrorCode.INVALID))
    if "area_id" in values:
        try:
            await _area_for(session, values["area_id"], scope_patterns, "areaId")
        except UnknownArea as unknown:
            problems.append(unknown)
    await _flush_collect(problems)


async def create_household(
    session: AsyncSession,
    *,
    account_no: str,
    name: str,
    area_id: int,
    phone: str | None = None,
    phone2: str | None = None,
    id_number: str | None = None,
    address: str = "",
    customer_type: CustomerType = CustomerType.residential,
    sub_type: str | None = None,
    population: int = 3,
    owner_since: date | None = None,
    scope_patterns: Sequence[str] | None = None,
) -> Household:
    """Register a household (开户 of the archive) and its first owner (from ``owner_since``,
    default: today by the database's clock)."""
    values = {"account_no": account_no, "name": name, "area_id": area_id, "phone": phone, "phone2": phone2,
              "id_number": id_number, "address": address, "sub_type": sub_type, "population": population}
    await _check_household_fields(session, values, None, scope_patterns)
    household = Household(
        account_no=account_no, name=name, area_id=area_id, phone=phone or None, phone2=phone2 or None,
        id_number=id_number.upper() if id_number else None, address=address, customer_type=customer_type,
        sub_type=sub_type or None, population=population,
    )
    await _flush_unique(session, household)
    assert household.id is not None and household.created_at is not None
    session.add(HouseholdOwner(household_id=household.id, name=name, phone=household.phone, id_number=household.id_number,
                               valid_from=owner_since or household.created_at.date()))
    await session.flush()
    return household


async def household_in_scope(
    session: AsyncSession, *, household_id: int, scope_patterns: Sequence[str] | None, field: str = "id"
) -> Household:
    """The household when it lies within the scope; NOT_FOUND otherwise (detail views)."""
    return await _scoped(session, Household, household_id, scope_patterns, field=field)


async def _current_owner(session: AsyncSession, household_id: int) -> HouseholdOwner | None:
    statement = select(HouseholdOwner).where(HouseholdOwner.household_id == household_id, HouseholdOwner.valid_to.is_(None))  # type: ignore[arg-type, union-attr]
    return (await session.execute(statement.with_for_update())).scalars().first()


async def update_household(
    session: AsyncSession, *, household_id: int, changes: HouseholdChanges, scope_patterns: Sequence[str] | None = None
) -> Household:
    """Correct a household's record; name, phone and ID number correct the current owner too."""
    values = _changed(changes)
    if values.get("area_id") is not None:
        await share_area_tree(session)
    # Locked: an assignment of a meter to it (which locks it too) waits for the move.
    household = await _scoped(session, Household, household_id, scope_patterns, lock=True)
    await _check_household_fields(session, values, household_id, scope_patterns)
    if values.get("area_id") not in (None, household.area_id):
        # The meters serving it must still contain its new area.
        await _check_moved_within(session, _HOUSEHOLD_MOVE_BREAKS, household_id, values["area_id"])
    if values.get("id_number"):
        values["id_number"] = values["id_number"].upper()
    for name, value in values.items():
        setattr(household, name, (value or None) if name in ("phone", "phone2", "id_number", "sub_type") else value)
    owner_values = {k: getattr(household, k) for k in ("name", "phone", "id_number") if k in values}
    if owner_values:
        owner = await _current_owner(session, household_id)
        if owner is not None:
            for name, value in owner_values.items():
                setattr(owner, name, value)
    await _flush_unique(session)
    return household


async def set_household_status(
    session: AsyncSession,
    *,
    household_id: int,
    status: HouseholdStatus,
    reason: str,
    changed_by: str,
    now: datetime,
    scope_patterns: Sequence[str] | None = None,
    balance_checker: BalanceChecker = no_balance,
) -> Household:
    """Suspend, close (销户) or reactivate a household, recording the change.

    Closing is refused while a meter still serves the household (end or replace it first)
    or while ``balance_checker`` reports a balance to settle.
    """
    household = await _scoped(session, Household, household_id, scope_patterns, lock=True)
    if len(reason) > 500:
        raise DomainError("原因不能超过 500 个字符", "A reason is at most 500 characters", field="reason", code=ErrorCode.TOO_LONG)
    if household.status is status:
        return household
    if status is HouseholdStatus.closed:
        if await _exists(session, select(MeterAssignment.id).where(  # type: ignore[call-overload]
            MeterAssignment.household_id == household_id, MeterAssignment.valid_to.is_(None)  # type: ignore[union-attr]
        )):
            raise errors.MetersStillAssigned(field="status")
        if await balance_checker(session, household_id) != 0:
            raise errors.BalanceOutstanding(field="status")
    household.status = status
    session.add(HouseholdStatusChange(household_id=household_id, status=status, reason=reason, changed_at=now,
                                      changed_by=changed_by[:100]))
    await session.flush()
    return household


async def transfer_ownership(
    session: AsyncSession,
    *,
    household_id: int,
    name: str,
    phone: str | None,
    id_number: str | None,
    valid_from: date,
    scope_patterns: Sequence[str] | None = None,
) -> Household:
    """过户: the new owner holds the household from ``valid_from``; the old one stays in
    ``household_owners`` with ``valid_to = valid_from``. The Money issue settles the old
    owner's account around this call."""
    household = await _scoped(session, Household, household_id, scope_patterns, lock=True)
    if household.status is HouseholdStatus.closed:
        raise errors.HouseholdClosed(field="householdId")
    problems: list[DomainError] = []
    _owner_problems(problems, {"name": name, "phone": phone, "id_number": id_number})
    owner = await _current_owner(session, household_id)
    if owner is not None and valid_from < owner.valid_from:
        problems.append(DomainError("过户日期不能早于现户主的起始日期", "The transfer date is before the current owner's start",
                                    field="validFrom", code=ErrorCode.INVALID))
    await _flush_collect(problems)
    if owner is not None:
        owner.valid_to = valid_from
    id_number = id_number.upper() if id_number else None
    await session.flush()  # the old owner is closed before the new one becomes current
    session.add(HouseholdOwner(household_id=household_id, name=name, phone=phone or None, id_number=id_number,
                               valid_from=valid_from))
    # The old owner's second phone goes with them.
    household.name, household.phone, household.phone2, household.id_number = name, phone or None, None, id_number
    await session.flush()
    return household


async def delete_household(session: AsyncSession, *, household_id: int, scope_patterns: Sequence[str] | None = None) -> Household:
    """Delete a household registered by mistake: refused (HAS_HISTORY) once it has had a
    meter, a status change, an ownership transfer or a resident binding; close it instead."""
    household = await _scoped(session, Household, household_id, scope_patterns, lock=True)
    history = await session.execute(
        text(
            "SELECT EXISTS (SELECT 1 FROM meter_assignments WHERE household_id = :id)"
            " OR EXISTS (SELECT 1 FROM household_status_history WHERE household_id = :id)"
            " OR (SELECT count(*) FROM household_owners WHERE household_id = :id) > 1"
            " OR EXISTS (SELECT 1 FROM resident_households WHERE household_id = :id)"
        ),
        {"id": household_id},
    )
    if history.scalar_one():
        raise errors.HasHistory(field="id")
    await session.execute(text("DELETE FROM household_owners WHERE household_id = :id"), {"id": household_id})
    await session.delete(household)
    await session.flush()
    return household


_HOUSEHOLD_ORDER = {
    HouseholdOrder.account_no: "account_no", HouseholdOrder.name: "name",
    HouseholdOrder.created_at: "created_at", HouseholdOrder.updated_at: "updated_at",
}
HOUSEHOLD_COLUMNS = (
    "id", "account_no", "name", "area_id", "phone", "phone2", "id_number", "address", "customer_type", "sub_type",
    "population", "status", "created_at", "updated_at",
)
# The household's area comes with the page (the join is there anyway): a list that shows
# it needs no per-row loader, and stays on the compiled fast path.
HOUSEHOLD_AREA_COLUMNS = ("name", "kind", "created_at", "parent_id", "code", "address", "latitude", "longitude")


def _subtree_of(areas: Any) -> Any:
    """``areas.path`` lies under the area bound as ``:area_id`` (in one statement)."""
    root = Area.__table__.alias("root")  # type: ignore[attr-defined]
    return areas.c.path.like(select(func.replace(func.replace(root.c.path, "_", "\\_"), "%", "\\%") + "%")
                             .where(root.c.id == bindparam("area_id")).scalar_subquery())


def _paged_in_areas(
    table: Any, area: Any, columns: Sequence[str], conditions: list[Any], sort_column: str, descending: bool,
    area_columns: Sequence[str] = (),
) -> tuple[Select[Any], Select[Any]]:
    """Page and count statements over ``table`` joined to its area (rows end in
    ``area_path``, then ``area_<column>`` for each of ``area_columns``), ordered by
    ``sort_column`` then id, with ``:_offset``/``:_limit`` binds."""
    sort = table.c[sort_column]
    rows = (
        select(*(table.c[name] for name in columns), area.c.path.label("area_path"),
               *(area.c[name].label(f"area_{name}") for name in area_columns))
        .join(area, area.c.id == table.c.area_id)
        .where(*conditions)
        .order_by(sort.desc() if descending else sort, table.c.id.desc() if descending else table.c.id)
        .offset(bindparam("_offset"))
        .limit(bindparam("_limit"))
    )
    count = select(func.count()).select_from(table.join(area, area.c.id == table.c.area_id)).where(*conditions)
    return rows, count


@functools.cache
def _household_page_query(
    by_area: bool, by_status: bool, by_type: bool, by_search: bool, order: HouseholdOrder, descending: bool
) -> tuple[Select[Any], Select[Any]]:
    household = Household.__table__.alias("h")  # type: ignore[attr-defined]
    area = Area.__table__.alias("a")  # type: ignore[attr-defined]
    conditions = [area.c.path.like(any_(bindparam("patterns", type_=ARRAY(Text))))]
    if by_area:
        conditions.append(_subtree_of(area))
    if by_status:
        conditions.append(household.c.status == bindparam("status"))
    if by_type:
        conditions.append(household.c.customer_type == bindparam("customer_type"))
    if by_search:
        term: Any = bindparam("search")
        conditions.append(or_(*(household.c[name].like(term, escape="\\")
                                for name in ("account_no", "name", "phone", "phone2", "address"))))
    return _paged_in_areas(household, area, HOUSEHOLD_COLUMNS, conditions, _HOUSEHOLD_ORDER[order], descending,
                           HOUSEHOLD_AREA_COLUMNS)


def household_page_query(
    *,
    scope_patterns: Sequence[str],
    area_id: int | None = None,
    status: HouseholdStatus | None = None,
    customer_type: CustomerType | None = None,
    search: str | None = None,
    order: HouseholdOrder = HouseholdOrder.account_no,
    descending: bool = False,
) -> PagedQuery:
    """Households within the scope, optionally in ``area_id``'s subtree, by status, type
    and free text (account number, name, phones, address). Rows hold
    :data:`HOUSEHOLD_COLUMNS`, ``area_path`` and the area's :data:`HOUSEHOLD_AREA_COLUMNS`."""
    rows, count = _household_page_query(area_id is not None, status is not None, customer_type is not None,
                                        bool(search), order, descending)
    params: dict[str, Any] = {"patterns": list(scope_patterns)}
    if area_id is not None:
        params["area_id"] = area_id
    if status is not None:
        params["status"] = status.value
    if customer_type is not None:
        params["customer_type"] = customer_type.value
    if search:
        params["search"] = _like(search)
    return PagedQuery(rows=rows, count=count, params=params)


async def _grouped(session: AsyncSession, statement: Any, key: str) -> dict[int, list[Any]]:
    grouped: dict[int, list[Any]] = defaultdict(list)
    for row in (await session.execute(statement)).scalars().all():
        grouped[getattr(row, key)].append(row)
    return dict(grouped)


async def owners_by_household_ids(session: AsyncSession, ids: Sequence[int]) -> dict[int, list[HouseholdOwner]]:
    """Every owner per household, oldest first."""
    statement = select(HouseholdOwner).where(HouseholdOwner.household_id.in_(list(ids))).order_by(  # type: ignore[attr-defined]
        HouseholdOwner.household_id, HouseholdOwner.valid_from, HouseholdOwner.id)  # type: ignore[arg-type]
    return await _grouped(session, statement, "household_id")


async def status_history_by_household_ids(session: AsyncSession, ids: Sequence[int]) -> dict[int, list[HouseholdStatusChange]]:
    statement = select(HouseholdStatusChange).where(HouseholdStatusChange.household_id.in_(list(ids))).order_by(  # type: ignore[attr-defined]
        HouseholdStatusChange.household_id, HouseholdStatusChange.changed_at, HouseholdStatusChange.id)  # type: ignore[arg-type]
    return await _grouped(session, statement, "household_id")


async def assignments_by_household_ids(session: AsyncSession, ids: Sequence[int]) -> dict[int, list[MeterAssignment]]:
    """Every assignment per household (current and past), oldest first."""
    statement = select(MeterAssignment).where(MeterAssignment.household_id.in_(list(ids))).order_by(  # type: ignore[attr-defined]
        MeterAssignment.household_id, MeterAssignment.valid_from, MeterAssignment.id)  # type: ignore[arg-type]
    return await _grouped(session, statement, "household_id")


async def assignments_by_meter_ids(session: AsyncSession, ids: Sequence[int]) -> dict[int, list[MeterAssignment]]:
    statement = select(MeterAssignment).where(MeterAssignment.meter_id.in_(list(ids))).order_by(  # type: ignore[attr-defined]
        MeterAssignment.meter_id, MeterAssignment.valid_from, MeterAssignment.id)  # type: ignore[arg-type]
    return await _grouped(session, statement, "meter_id")


async def replacements_by_household_ids(session: AsyncSession, ids: Sequence[int]) -> dict[int, list[MeterReplacement]]:
    statement = select(MeterReplacement).where(MeterReplacement.household_id.in_(list(ids))).order_by(  # type: ignore[attr-defined]
        MeterReplacement.household_id, MeterReplacement.replaced_at, MeterReplacement.id)  # type: ignore[arg-type]
    return await _grouped(session, statement, "household_id")


async def _by_ids(session: AsyncSession, model: Any, ids: Iterable[int]) -> dict[int, Any]:
    wanted = list(set(ids))
    if not wanted:
        return {}
    rows = (await session.execute(select(model).where(model.id.in_(wanted)))).scalars().all()
    return {row.id: row for row in rows}


async def meters_by_ids(session: AsyncSession, ids: Iterable[int]) -> dict[int, Meter]:
    return await _by_ids(session, Meter, ids)


async def meter_models_by_ids(session: AsyncSession, ids: Iterable[int]) -> dict[int, MeterModel]:
    return await _by_ids(session, MeterModel, ids)


async def concentrators_by_ids(session: AsyncSession, ids: Iterable[int]) -> dict[int, Concentrator]:
    return await _by_ids(session, Concentrator, ids)


async def collectors_by_ids(session: AsyncSession, ids: Iterable[int]) -> dict[int, Collector]:
    return await _by_ids(session, Collector, ids)


async def collectors_by_concentrator_ids(session: AsyncSession, ids: Sequence[int]) -> dict[int, list[Collector]]:
    statement = select(Collector).where(Collector.concentrator_id.in_(list(ids))).order_by(Collector.concentrator_id, Collector.address)  # type: ignore[attr-defined, arg-type]
    return await _grouped(session, statement, "concentrator_id")


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


# A meter has readings iff it has a latest_readings row (ingest and corrections keep
# that table in step), which is one index probe instead of a scan of partitioned readings.
_METER_HAS_READINGS = text("SELECT EXISTS (SELECT 1 FROM latest_readings WHERE meter_id = :id)")
_MODEL_HAS_READINGS = text(
    "SELECT EXISTS (SELECT 1 FROM meters m JOIN latest_readings l ON l.meter_id = m.id WHERE m.model_id = :id)"
)


async def _any_readings(session: AsyncSession, statement: Any, id_: int) -> bool:
    return bool((await session.execute(statement, {"id": id_})).scalar_one())


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
    # A whole multiplier (1, 10, 100 …) times a 4-place register difference needs no
    # rounding, so the daily rollup's sum and usage_between agree to the last place.
    if not (fields.multiplier.is_finite() and Decimal(0) < fields.multiplier < Decimal(100000000)
            and fields.multiplier == fields.multiplier.to_integral_value()):
        problems.append(DomainError("倍率须为正整数 (如 1、10、100)", "The multiplier must be a whole number above 0 (1, 10, 100 …)",
                                    field="multiplier", code=ErrorCode.INVALID))
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
        raise DomainError("状态经配表、换表、报废变化", "Status changes through assignment, replacement and retirement",
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
    if merged["kind"] is MeterKind.monitoring and await _open_assignment(session, meter_id) is not None:
        raise errors.MeterAlreadyAssigned("在用的住户水表不能改为监测点", "A meter serving a household cannot become a monitoring point",
                                          field="kind")
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
    session: AsyncSession, *, meter_id: int, status: MeterStatus, scope_patterns: Sequence[str] | None = None
) -> Meter:
    """Mark a meter faulty, retired (报废) or back in stock; a meter serving a household
    changes through :func:`end_assignment` or :func:`replace_meter` first."""
    meter = await _scoped(session, Meter, meter_id, scope_patterns, lock=True)
    if status is MeterStatus.installed:
        raise DomainError("安装状态由配表产生", "A meter becomes installed by assignment", field="status", code=ErrorCode.INVALID)
    if status is not MeterStatus.faulty and await _open_assignment(session, meter_id) is not None:
        raise errors.MeterAlreadyAssigned(field="id")
    meter.status = status
    await session.flush()
    return meter


async def delete_meter(session: AsyncSession, *, meter_id: int, scope_patterns: Sequence[str] | None = None) -> Meter:
    """Delete a meter entered by mistake; once it has served a household, been replaced
    or sent a reading it is retired instead (HAS_HISTORY)."""
    meter = await _scoped(session, Meter, meter_id, scope_patterns, lock=True)
    history = await session.execute(
        text("SELECT EXISTS (SELECT 1 FROM meter_assignments WHERE meter_id = :id)"
             " OR EXISTS (SELECT 1 FROM meter_replacements WHERE old_meter_id = :id OR new_meter_id = :id)"
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
    "location", "area_id", "status", "concentrator_id", "collector_id", "port", "measurement_point", "mqtt_topic",
    "created_at", "updated_at",
)


@functools.cache
def _meter_page_query(
    by_area: bool, by_status: bool, by_type: bool, by_kind: bool, by_concentrator: bool, by_search: bool,
    order: MeterOrder, descending: bool,
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
    if by_search:
        term: Any = bindparam("search")
        conditions.append(or_(*(meter.c[name].like(term, escape="\\") for name in ("address", "code", "name", "location"))))
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
) -> PagedQuery:
    """Meters within the scope, filtered; rows hold :data:`METER_COLUMNS` plus ``area_path``."""
    rows, count = _meter_page_query(area_id is not None, status is not None, meter_type is not None, kind is not None,
                                    concentrator_id is not None, bool(search), order, descending)
    params: dict[str, Any] = {"patterns": list(scope_patterns)}
    for name, value in (("area_id", area_id), ("concentrator_id", concentrator_id)):
        if value is not None:
            params[name] = value
    for name, member in (("status", status), ("meter_type", meter_type), ("kind", kind)):
        if member is not None:
            params[name] = member.value
    if search:
        params["search"] = _like(search)
    return PagedQuery(rows=rows, count=count, params=params)


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
    and goes back in stock.

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


# --------------------------------------------------------------------------- concentrators


class TerminalPasswordCipher:
    """Encrypts concentrator terminal passwords (PW) at rest with Fernet, under the key
    derived from the station secret for this purpose (``KeyPurpose.terminal_password``);
    the caller builds it from ``settings.secret()``.

    Passwords stored before per-purpose keys were encrypted under an HMAC of the secret
    itself: they still decrypt (the derived key is tried first, then that legacy key), and
    each is re-encrypted under the derived key the next time it is set.
    """

    def __init__(self, secret: str) -> None:
        from cryptography.fernet import Fernet, MultiFernet

        derived = base64.urlsafe_b64encode(derive_key(secret, KeyPurpose.terminal_password))
        legacy = base64.urlsafe_b64encode(hmac.new(secret.encode(), b"shuiwu/concentrator-terminal-password", hashlib.sha256).digest())
        # MultiFernet encrypts with the first key and decrypts with whichever one fits.
        self._fernet = MultiFernet([Fernet(derived), Fernet(legacy)])

    def encrypt(self, password: str) -> str:
        return self._fernet.encrypt(password.encode()).decode()

    def decrypt(self, token: str) -> str:
        return self._fernet.decrypt(token.encode()).decode()


@dataclass(frozen=True, slots=True)
class ConcentratorChanges:
    """A concentrator's fields: all required ones for :func:`create_concentrator`
    (``KEEP`` means the default), only those to change for :func:`update_concentrator`.
    ``terminal_password`` is plain text here and never stored as such."""

    name: Any = KEEP
    region_code: Any = KEEP
    terminal_address: Any = KEEP
    area_id: Any = KEEP
    connection: Any = KEEP
    model: Any = KEEP
    protocol: Any = KEEP
    serial_url: Any = KEEP
    baudrate: Any = KEEP
    parity: Any = KEEP
    bytesize: Any = KEEP
    stopbits: Any = KEEP
    host: Any = KEEP
    port: Any = KEEP
    status: Any = KEEP
    terminal_password: Any = KEEP


_CONCENTRATOR_REQUIRED = ("name", "region_code", "terminal_address", "area_id", "connection", "protocol", "status")
_CONCENTRATOR_DEFAULTS: dict[str, Any] = {
    "model": None, "protocol": "gdw1376", "serial_url": None, "baudrate": None, "parity": None, "bytesize": None,
    "stopbits": None, "host": None, "port": None, "status": DeviceStatus.active,
}


async def _check_concentrator(
    session: AsyncSession, values: dict[str, Any], concentrator_id: int | None, scope_patterns: Sequence[str] | None
) -> None:
    problems: list[DomainError] = []
    _text_field(problems, values["name"], "name", limit=100)
    region, terminal = values["region_code"], values["terminal_address"]
    if not region or not REGION_CODE.fullmatch(region):
        problems.append(errors.InvalidAddress("行政区划码须为 4 位数字", "A region code is 4 digits", field="regionCode"))
    if terminal is None or not 1 <= terminal <= 65535:
        problems.append(errors.InvalidAddress("终端地址须在 1-65535 之间", "A terminal address is 1-65535", field="terminalAddress"))
    elif region and REGION_CODE.fullmatch(region) and await _exists(session, select(Concentrator.id).where(  # type: ignore[call-overload]
        Concentrator.region_code == region, Concentrator.terminal_address == terminal,  # type: ignore[arg-type]
        Concentrator.id != (concentrator_id or 0),  # type: ignore[arg-type]
    )):
        problems.append(errors.DuplicateConcentratorAddress(field="terminalAddress"))
    try:
        await _area_for(session, values["area_id"], scope_patterns, "areaId")
    except UnknownArea as unknown:
        problems.append(unknown)
    connection = values["connection"]
    if connection is ConnectionKind.serial and not values["serial_url"]:
        problems.append(DomainError("串口连接须填写串口地址", "A serial connection needs a port URL",
                                    field="serialUrl", code=ErrorCode.REQUIRED))
    if connection is ConnectionKind.dtu_socket and not (values["host"] and values["port"]):
        problems.append(DomainError("DTU 连接须填写主机和端口", "A DTU connection needs host and port",
                                    field="host", code=ErrorCode.REQUIRED))
    if values["port"] is not None and not 1 <= values["port"] <= 65535:
        problems.append(DomainError("端口须在 1-65535 之间", "Port must be 1-65535", field="port", code=ErrorCode.INVALID))
    if values["baudrate"] is not None and values["baudrate"] not in (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200):
        problems.append(DomainError("波特率不支持", "Unsupported baud rate", field="baudrate", code=ErrorCode.INVALID))
    if values["parity"] is not None and values["parity"] not in PARITIES:
        problems.append(DomainError("校验位须为 N、E 或 O", "Parity is N, E or O", field="parity", code=ErrorCode.INVALID))
    if values["bytesize"] is not None and values["bytesize"] not in (5, 6, 7, 8):
        problems.append(DomainError("数据位须为 5-8", "Byte size is 5-8", field="bytesize", code=ErrorCode.INVALID))
    if values["stopbits"] is not None and values["stopbits"] not in STOPBITS:
        problems.append(DomainError("停止位须为 1、1.5 或 2", "Stop bits are 1, 1.5 or 2", field="stopbits", code=ErrorCode.INVALID))
    for field, limit in (("serial_url", 200), ("host", 200), ("model", 100), ("protocol", 32)):
        if values[field] is not None:
            _text_field(problems, values[field], _camel(field), limit=limit, required=field == "protocol")
    if values.get("terminal_password") is not None and len(values["terminal_password"]) > 64:
        problems.append(DomainError("终端密码过长", "Terminal password too long", field="terminalPassword", code=ErrorCode.TOO_LONG))
    await _flush_collect(problems)


def _store_password(concentrator: Concentrator, values: dict[str, Any], cipher: TerminalPasswordCipher) -> None:
    if "terminal_password" in values:
        password = values.pop("terminal_password")
        concentrator.terminal_password_encrypted = cipher.encrypt(password) if password else None


async def create_concentrator(
    session: AsyncSession, *, fields: ConcentratorChanges, cipher: TerminalPasswordCipher,
    scope_patterns: Sequence[str] | None = None,
) -> Concentrator:
    """Register a concentrator; ``name``, ``region_code``, ``terminal_address``, ``area_id``
    and ``connection`` are required."""
    values = {**_CONCENTRATOR_DEFAULTS, **_changed(fields)}
    await _flush_collect(_missing(values, _CONCENTRATOR_REQUIRED))
    await _check_concentrator(session, values, None, scope_patterns)
    password = values.pop("terminal_password", None)
    concentrator = Concentrator(**values)
    _store_password(concentrator, {"terminal_password": password}, cipher)
    await _flush_unique(session, concentrator)
    return concentrator


async def concentrator_in_scope(
    session: AsyncSession, *, concentrator_id: int, scope_patterns: Sequence[str] | None, field: str = "id"
) -> Concentrator:
    return await _scoped(session, Concentrator, concentrator_id, scope_patterns, field=field)


async def update_concentrator(
    session: AsyncSession, *, concentrator_id: int, changes: ConcentratorChanges, cipher: TerminalPasswordCipher,
    scope_patterns: Sequence[str] | None = None,
) -> Concentrator:
    concentrator = await _scoped(session, Concentrator, concentrator_id, scope_patterns, lock=True)
    values = _changed(changes)
    current = {name: getattr(concentrator, name) for name in (*_CONCENTRATOR_DEFAULTS, "name", "region_code",
                                                              "terminal_address", "area_id", "connection")}
    # A null for a required field is refused here rather than by the NOT NULL constraint.
    await _flush_collect(_missing({**current, **values}, _CONCENTRATOR_REQUIRED))
    await _check_concentrator(session, {**current, **values}, concentrator_id, scope_patterns)
    _store_password(concentrator, values, cipher)
    for name, value in values.items():
        setattr(concentrator, name, value)
    await _flush_unique(session)
    return concentrator


async def terminal_password(session: AsyncSession, *, concentrator_id: int, cipher: TerminalPasswordCipher) -> str | None:
    """The plain terminal password, for the acquisition worker (never for the API)."""
    concentrator = await session.get(Concentrator, concentrator_id)
    if concentrator is None:
        raise NotFound(field="concentratorId")
    stored = concentrator.terminal_password_encrypted
    return cipher.decrypt(stored) if stored else None


async def delete_concentrator(session: AsyncSession, *, concentrator_id: int, scope_patterns: Sequence[str] | None = None) -> Concentrator:
    """Delete a concentrator with no collector or meter under it (DEVICE_IN_USE otherwise)."""
    concentrator = await _scoped(session, Concentrator, concentrator_id, scope_patterns, lock=True)
    used = await session.execute(
        text("SELECT EXISTS (SELECT 1 FROM collectors WHERE concentrator_id = :id)"
             " OR EXISTS (SELECT 1 FROM meters WHERE concentrator_id = :id)"), {"id": concentrator_id})
    if used.scalar_one():
        raise errors.DeviceInUse(field="id")
    await session.delete(concentrator)
    await session.flush()
    return concentrator


def concentrators_statement(
    *, scope_patterns: Sequence[str], area_id: int | None = None, status: DeviceStatus | None = None,
    connection: ConnectionKind | None = None, search: str | None = None,
) -> Select[Any]:
    """Concentrators within the scope, filtered, by region code and terminal address."""
    statement = select(Concentrator).join(Area, Area.id == Concentrator.area_id).where(in_scope(Area.path, scope_patterns))  # type: ignore[arg-type]
    if area_id is not None:
        root = select(Area.path).where(Area.id == area_id).scalar_subquery()  # type: ignore[arg-type, call-overload]
        statement = statement.where(Area.path.startswith(root))  # type: ignore[attr-defined, arg-type]
    if status is not None:
        statement = statement.where(Concentrator.status == status)  # type: ignore[arg-type]
    if connection is not None:
        statement = statement.where(Concentrator.connection == connection)  # type: ignore[arg-type]
    if search:
        term = _like(search)
        statement = statement.where(or_(Concentrator.name.like(term, escape="\\"), Concentrator.region_code.like(term, escape="\\"),  # type: ignore[attr-defined]
                                        func.cast(Concentrator.terminal_address, Text).like(term, escape="\\")))  # type: ignore[arg-type]
    return statement.order_by(Concentrator.region_code, Concentrator.terminal_address, Concentrator.id)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- collectors


async def _collector_in_scope(session: AsyncSession, collector_id: int, scope_patterns: Sequence[str] | None) -> Collector:
    collector = await session.get(Collector, collector_id, with_for_update=True)
    if collector is None:
        raise NotFound(field="id")
    await _scoped(session, Concentrator, collector.concentrator_id, scope_patterns, field="id")
    return collector


async def save_collector(
    session: AsyncSession, *, concentrator_id: int, address: str, name: str, collector_id: int | None = None,
    scope_patterns: Sequence[str] | None = None,
) -> Collector:
    """Create a collector under a concentrator, or change collector ``collector_id``."""
    await _scoped(session, Concentrator, concentrator_id, scope_patterns, field="concentratorId")
    collector = await _collector_in_scope(session, collector_id, scope_patterns) if collector_id is not None else None
    problems: list[DomainError] = []
    _text_field(problems, name, "name", limit=100)
    if not address or not OTHER_ADDRESS.fullmatch(address):
        problems.append(errors.InvalidAddress("采集器地址只能包含字母和数字, 最多 32 位",
                                              "A collector address is up to 32 letters or digits",
                                              field="address"))
    elif await _exists(session, select(Collector.id).where(  # type: ignore[call-overload]
        Collector.concentrator_id == concentrator_id, Collector.address == address, Collector.id != (collector_id or 0)  # type: ignore[arg-type]
    )):
        problems.append(errors.DuplicateCollectorAddress(field="address"))
    if collector is not None and collector.concentrator_id != concentrator_id and await _exists(
        session, select(Meter.id).where(Meter.collector_id == collector.id)  # type: ignore[call-overload, arg-type]
    ):
        problems.append(errors.DeviceInUse("采集器下仍有水表, 不能换集中器", "Meters still hang under this collector",
                                           field="concentratorId"))
    await _flush_collect(problems)
    created: list[Collector] = []
    if collector is None:
        collector = Collector(concentrator_id=concentrator_id, address=address, name=name)
        created.append(collector)
    else:
        collector.concentrator_id, collector.address, collector.name = concentrator_id, address, name
    await _flush_unique(session, *created)
    return collector


async def delete_collector(session: AsyncSession, *, collector_id: int, scope_patterns: Sequence[str] | None = None) -> Collector:
    collector = await _collector_in_scope(session, collector_id, scope_patterns)
    if await _exists(session, select(Meter.id).where(Meter.collector_id == collector_id)):  # type: ignore[call-overload, arg-type]
        raise errors.DeviceInUse(field="id")
    await session.delete(collector)
    await session.flush()
    return collector
