"""Areas (区域): the tree, its paths, and the scope-checked changes to it."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import ARRAY, Select, Text, any_, bindparam, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import errors
from backend.archives.errors import AreaKindOrder
from backend.archives.models import (
    Area,
    AreaKind,
    Household,
)
from backend.archives.service.checks import (
    _KIND_ORDER,
    AREA_CODE,
    KEEP,
    _area_for,
    _changed,
    _check_no_cross_area,
    _exists,
    _flush_collect,
    _text_field,
)
from backend.auth.errors import UnknownArea
from backend.auth.scope import in_scope
from backend.errors import DomainError, ErrorCode
from backend.pagination import PagedQuery

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


async def lock_area_tree(session: AsyncSession) -> None:
    """Hold the tree's shape still, alone, until the transaction ends: for a change of the
    shape made outside this module (the area import, backend.archives.excel)."""
    await _lock_area_tree(session)


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
    monitoring station, role / API-client grant, or staff user or role belonging to it
    (AREA_NOT_EMPTY otherwise)."""
    await _lock_area_tree(session)
    area = await _area_for(session, area_id, scope_patterns, "id")
    used = await session.execute(
        text(
            "SELECT EXISTS (SELECT 1 FROM areas WHERE parent_id = :id) OR EXISTS (SELECT 1 FROM households WHERE area_id = :id)"
            " OR EXISTS (SELECT 1 FROM meters WHERE area_id = :id) OR EXISTS (SELECT 1 FROM concentrators WHERE area_id = :id)"
            " OR EXISTS (SELECT 1 FROM role_areas WHERE area_id = :id) OR EXISTS (SELECT 1 FROM api_client_areas WHERE area_id = :id)"
            " OR EXISTS (SELECT 1 FROM staff_users WHERE area_id = :id) OR EXISTS (SELECT 1 FROM roles WHERE area_id = :id)"
            " OR EXISTS (SELECT 1 FROM monitoring_stations WHERE area_id = :id)"
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
