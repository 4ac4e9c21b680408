"""Units and whole-tree scope: who may see and edit rows that belong to an area.

Staff users, roles and operation-log entries carry a unit (``area_id``): such a row is
visible to a caller whose scope covers the unit's area (the path-prefix match every
scoped list uses), inside the query. A NULL unit is the company as a whole, visible only
to **whole-tree** scope: a scope covering every root area of the tree. Shared catalogs
(the meter-model catalog, global alarm rules) need whole-tree scope to change.

``scope_patterns=None`` is a system caller (CLI, demo loader): unrestricted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, and_, exists, false, literal, not_, or_, select, true
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import Area
from backend.errors import DomainError, ErrorCode


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
    root = Area.__table__.alias("whole_tree_root")  # type: ignore[attr-defined]
    return not_(exists().where(root.c.parent_id.is_(None), not_(root.c.path.like(array(list(scope_patterns)).any_()))))


def unit_visible(unit_column: Any, scope_patterns: Sequence[str] | None) -> Any:
    """SQL: a row whose unit is ``unit_column`` is within the scope (a NULL or vanished
    unit only for whole-tree scope)."""
    if scope_patterns is None:
        return true()
    if not scope_patterns:
        return false()
    unit = Area.__table__.alias("unit_area")  # type: ignore[attr-defined]
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
