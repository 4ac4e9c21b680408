"""Areas and households: what the Foundation needs (the Archives issue completes it).

Data scope is a path-prefix match: ``areas.path LIKE ANY(:patterns)`` with the caller's
``Principal.scope_patterns()``, applied inside every query that fetches rows.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ARRAY, Select, Text, any_, bindparam, false, func, select, text
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.errors import AreaKindOrder, DuplicateAccountNo
from backend.archives.models import Area, AreaKind, Household
from backend.auth.errors import UnknownArea
from backend.pagination import PagedQuery

_KIND_ORDER = list(AreaKind)


def in_scope(path_column: Any, patterns: Sequence[str]) -> Any:
    """The SQL condition "this path lies in one of the scope subtrees"."""
    if not patterns:
        return false()
    return path_column.like(array(list(patterns)).any_())


async def create_area(session: AsyncSession, *, name: str, kind: AreaKind, parent_id: int | None = None) -> Area:
    """Add an area under ``parent_id`` (or a root company) and compute its path."""
    parent_path = "/"
    if parent_id is not None:
        parent = await session.get(Area, parent_id)
        if parent is None:
            raise UnknownArea(field="parentId")
        if _KIND_ORDER.index(kind) <= _KIND_ORDER.index(parent.kind):
            raise AreaKindOrder(field="kind")
        parent_path = parent.path
    elif kind is not AreaKind.company:
        raise AreaKindOrder(field="kind")
    # The path holds the area's own id: take it from the sequence first.
    area_id = (await session.execute(text("SELECT nextval(pg_get_serial_sequence('areas', 'id'))"))).scalar_one()
    area = Area(id=area_id, name=name, kind=kind, parent_id=parent_id, path=f"{parent_path}{area_id}/")
    session.add(area)
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


async def create_household(session: AsyncSession, *, account_no: str, name: str, area_id: int) -> Household:
    await require_areas(session, [area_id], field="areaId")
    existing = await session.execute(select(Household.id).where(Household.account_no == account_no))  # type: ignore[call-overload]
    if existing.first() is not None:
        raise DuplicateAccountNo(field="accountNo")
    household = Household(account_no=account_no, name=name, area_id=area_id)
    session.add(household)
    await session.flush()
    return household


async def households_by_ids(session: AsyncSession, ids: Iterable[int]) -> dict[int, Household]:
    wanted = list(set(ids))
    if not wanted:
        return {}
    rows = (await session.execute(select(Household).where(Household.id.in_(wanted)))).scalars().all()  # type: ignore[union-attr]
    return {household.id: household for household in rows if household.id is not None}


async def find_household(session: AsyncSession, *, account_no: str) -> Household | None:
    result = await session.execute(select(Household).where(Household.account_no == account_no))  # type: ignore[arg-type]
    return result.scalars().first()
