"""Households (用户档案): create, change, close, owners and status history, and lists."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, tzinfo
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ARRAY, Select, Text, and_, any_, bindparam, exists, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import errors
from backend.archives.errors import DuplicateAccountNo
from backend.archives.models import (
    Area,
    Collector,
    Concentrator,
    CustomerType,
    Household,
    HouseholdOwner,
    HouseholdStatus,
    HouseholdStatusChange,
    Meter,
    MeterAssignment,
    MeterModel,
    MeterReplacement,
)
from backend.archives.service.areas import share_area_tree
from backend.archives.service.checks import (
    _HOUSEHOLD_MOVE_BREAKS,
    ACCOUNT_NO,
    ID_NUMBER,
    KEEP,
    ROOM,
    _area_for,
    _changed,
    _check_moved_within,
    _exists,
    _flush_collect,
    _flush_unique,
    _like,
    _phone_field,
    _scoped,
    _text_field,
)
from backend.auth.errors import UnknownArea
from backend.errors import DomainError, ErrorCode
from backend.pagination import PagedQuery

# --------------------------------------------------------------------------- households


class HouseholdOrder(StrEnum):
    account_no = "account_no"
    name = "name"
    created_at = "created_at"
    updated_at = "updated_at"


class HouseholdHooks:
    """What a later domain does around a household's life (billing: its account).

    The archives call :meth:`before_close` when a household is closed (销户), after their
    own checks, and :meth:`before_transfer` when it changes owner (过户), in the same
    transaction; either may refuse with a DomainError, which rolls the change back. This
    base does nothing: the archives alone have no money to settle. The hosts offer the
    billing domain's as the service ``household_hooks``.
    """

    async def before_close(self, session: AsyncSession, household_id: int, *, now: datetime, by: str) -> None:
        return None

    async def before_transfer(self, session: AsyncSession, household_id: int, *, at: datetime, by: str) -> None:
        return None


NO_HOOKS = HouseholdHooks()


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
    room: Any = KEEP
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
    if values.get("room") is not None and not ROOM.fullmatch(values["room"]):
        problems.append(errors.InvalidRoom(field="room"))
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
    room: str | None = None,
    customer_type: CustomerType = CustomerType.residential,
    sub_type: str | None = None,
    population: int = 3,
    owner_since: date | None = None,
    scope_patterns: Sequence[str] | None = None,
) -> Household:
    """Register a household (开户 of the archive) and its first owner (from ``owner_since``,
    default: today by the database's clock). ``room`` (房间号, e.g. ``0101``) is 1–16 ASCII
    letters, digits or ``-`` (INVALID_ROOM otherwise); blank means none."""
    room = room if room and room.strip() else None
    values = {"account_no": account_no, "name": name, "area_id": area_id, "phone": phone, "phone2": phone2,
              "id_number": id_number, "address": address, "room": room, "sub_type": sub_type, "population": population}
    await _check_household_fields(session, values, None, scope_patterns)
    household = Household(
        account_no=account_no, name=name, area_id=area_id, phone=phone or None, phone2=phone2 or None,
        id_number=id_number.upper() if id_number else None, address=address, room=room, customer_type=customer_type,
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
    if isinstance(values.get("room"), str) and not values["room"].strip():
        values["room"] = None
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
        setattr(household, name, (value or None) if name in ("phone", "phone2", "id_number", "sub_type", "room") else value)
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
    hooks: HouseholdHooks = NO_HOOKS,
) -> Household:
    """Suspend, close (销户) or reactivate a household, recording the change.

    Closing is refused while a meter still serves the household (end or replace it first)
    or while ``hooks.before_close`` refuses (billing: an unsettled account or a balance).
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
        await hooks.before_close(session, household_id, now=now, by=changed_by)
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
    hooks: HouseholdHooks = NO_HOOKS,
    now: datetime | None = None,
    by: str = "",
    tz: str | tzinfo = "Asia/Shanghai",
) -> Household:
    """过户: the new owner holds the household from ``valid_from``; the old one stays in
    ``household_owners`` with ``valid_to = valid_from``. ``hooks.before_transfer`` settles
    the account to the transfer (the start of ``valid_from`` in the zone ``tz``, or ``now``
    if that is earlier); the account continues for the new owner."""
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
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    at = datetime.combine(valid_from, time(), tzinfo=zone)
    if now is not None:
        at = min(at, now)
    await hooks.before_transfer(session, household_id, at=at, by=by)
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
    "id", "account_no", "name", "area_id", "phone", "phone2", "id_number", "address", "room", "customer_type", "sub_type",
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
    by_area: bool, by_status: bool, by_type: bool, by_search: bool, order: HouseholdOrder, descending: bool,
    has_meter: bool | None = None,
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
    if has_meter is not None:
        serving = MeterAssignment.__table__.alias("s")  # type: ignore[attr-defined]
        is_open = exists().where(serving.c.household_id == household.c.id, serving.c.valid_to.is_(None))
        conditions.append(is_open if has_meter else and_(household.c.status == HouseholdStatus.active.value, ~is_open))
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
    has_meter: bool | None = None,
) -> PagedQuery:
    """Households within the scope, optionally in ``area_id``'s subtree, by status, type
    and free text (account number, name, phones, address). Rows hold
    :data:`HOUSEHOLD_COLUMNS`, ``area_path`` and the area's :data:`HOUSEHOLD_AREA_COLUMNS`.

    ``has_meter=True``: households a meter serves now (an open assignment).
    ``has_meter=False``: the households without a meter (未配表) a 配表 clerk works
    through: active households with no open assignment (a closed one needs none)."""
    rows, count = _household_page_query(area_id is not None, status is not None, customer_type is not None,
                                        bool(search), order, descending, has_meter)
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
