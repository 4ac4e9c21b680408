"""Data scope, in one place: which rows a caller reaches.

Every scoped read and check takes its scope from here; nothing else defines it.

**Area scope** (``scope_patterns``): LIKE patterns over ``areas.path``
(:meth:`Principal.scope_patterns`), a row is in scope when its area's path matches one.
The two edge values mean the same in every helper below:

- ``None``: the whole tree, unrestricted. Only system callers (CLI, demo loader, jobs)
  pass it; a principal's patterns are always a list.
- ``[]`` (empty): no area at all. A caller without scope sees nothing, never everything.

**Reach** (:class:`Reach`): area scope plus a resident's households. A resident reaches
exactly their own households (and those households' meters), by household and never by
area; their reach carries ``scope_patterns=[]`` so that a reader which forgot the
households fails closed.

**Units**: staff users, roles and operation-log entries carry a unit (``area_id``): such a row is
visible to a caller whose scope covers the unit's area (the path-prefix match every
scoped list uses), inside the query. A NULL unit is the company as a whole, visible only
to **whole-tree** scope: a scope covering every root area of the tree. Shared catalogs
(the meter-model catalog, global alarm rules) need whole-tree scope to change.

The helpers read the area tree's shape (``id``, ``parent_id``, ``path``) through a
table clause of their own: auth comes before archives (DESIGN.md, "Domain order"), which
owns the ``areas`` table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Text, and_, column, exists, false, literal, not_, or_, select, table, true
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth.errors import UnknownArea
from backend.auth.principal import Principal
from backend.errors import DomainError, ErrorCode

# The area tree as scope reads it (archives owns the table and its other columns).
AREA_TREE = table("areas", column("id", BigInteger), column("parent_id", BigInteger), column("path", Text))


@dataclass(frozen=True, slots=True)
class Reach:
    """Whose rows a caller reaches: area scope, and a resident's households.

    ``scope_patterns``: ``None`` the whole tree (system callers), ``[]`` no area.
    ``household_ids``: ``None`` for anyone but a resident; a resident reaches exactly
    these households, whatever ``scope_patterns`` says.
    """

    scope_patterns: Sequence[str] | None
    household_ids: Sequence[int] | None = None

    @property
    def is_resident(self) -> bool:
        return self.household_ids is not None

    def area_patterns(self) -> list[str] | None:
        """The area filter of a scoped read: ``None`` when areas do not narrow it (the
        whole tree, or a resident, whom their households narrow instead)."""
        if self.household_ids is not None or self.scope_patterns is None:
            return None
        return list(self.scope_patterns)


def reach_of(principal: Principal) -> Reach:
    """A resident reaches their own households; anyone else their area scope."""
    if principal.is_resident:
        return Reach(scope_patterns=[], household_ids=list(principal.household_ids))
    return Reach(scope_patterns=principal.scope_patterns())


def in_scope(path_column: Any, patterns: Sequence[str] | None) -> Any:
    """SQL: this path lies in one of the scope subtrees (``None``: every path, ``[]``: none)."""
    if patterns is None:
        return true()
    if not patterns:
        return false()
    return path_column.like(array(list(patterns)).any_())


def path_in_scope(path: str, patterns: Sequence[str] | None) -> bool:
    """The Python twin of :func:`in_scope`."""
    return patterns is None or any(path.startswith(pattern.removesuffix("%")) for pattern in patterns)


class WholeTreeRequired(DomainError):
    code = ErrorCode.WHOLE_TREE_REQUIRED
    message = "修改全公司共用的数据需要覆盖全部区域的数据范围"
    message_en = "Changing data the whole company shares needs a data scope over every area"


def whole_tree(scope_patterns: Sequence[str] | None) -> Any:
    """SQL: the scope covers every root area (uncorrelated: evaluated once per statement)."""
    if scope_patterns is None:
        return true()
    if not scope_patterns:
        return false()
    root = AREA_TREE.alias("whole_tree_root")
    return not_(exists().where(root.c.parent_id.is_(None), not_(root.c.path.like(array(list(scope_patterns)).any_()))))


def unit_visible(unit_column: Any, scope_patterns: Sequence[str] | None) -> Any:
    """SQL: a row whose unit is ``unit_column`` is within the scope (a NULL or vanished
    unit only for whole-tree scope)."""
    if scope_patterns is None:
        return true()
    if not scope_patterns:
        return false()
    unit = AREA_TREE.alias("unit_area")
    in_unit = exists().where(unit.c.id == unit_column, unit.c.path.like(array(list(scope_patterns)).any_()))
    # Whole tree first: one uncorrelated check, so a company administrator's list skips
    # the per-row lookup.
    return or_(whole_tree(scope_patterns), and_(unit_column.is_not(None), in_unit))


async def covers_whole_tree(session: AsyncSession, scope_patterns: Sequence[str] | None) -> bool:
    """Whether the scope covers every root area (see :func:`whole_tree`)."""
    return bool((await session.execute(select(literal(True)).where(whole_tree(scope_patterns)))).first())


async def require_whole_tree(session: AsyncSession, scope_patterns: Sequence[str] | None, *, field: str | None = None) -> None:
    """Refuse (WHOLE_TREE_REQUIRED) a change of shared data by a caller without whole-tree scope."""
    if not await covers_whole_tree(session, scope_patterns):
        raise WholeTreeRequired(field=field)


async def unit_in_scope(session: AsyncSession, area_id: int | None, scope_patterns: Sequence[str] | None) -> bool:
    """Whether a row with unit ``area_id`` is within the scope (the Python-side twin of
    :func:`unit_visible`, for a unit chosen in a form)."""
    statement = select(literal(True)).where(unit_visible(literal(area_id, BigInteger), scope_patterns))
    return bool((await session.execute(statement)).first())


async def require_area_paths(session: AsyncSession, ids: Iterable[int], *, field: str = "areaIds") -> dict[int, str]:
    """The path of each area in ``ids``; an unknown one is refused with UNKNOWN_AREA."""
    wanted = set(ids)
    if not wanted:
        return {}
    rows = await session.execute(select(AREA_TREE.c.id, AREA_TREE.c.path).where(AREA_TREE.c.id.in_(wanted)))
    found = {row.id: row.path for row in rows}
    if len(found) != len(wanted):
        raise UnknownArea(field=field)
    return found


async def area_exists(session: AsyncSession, area_id: int) -> bool:
    return (await session.execute(select(AREA_TREE.c.id).where(AREA_TREE.c.id == area_id))).first() is not None
