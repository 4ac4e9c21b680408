"""What an actor may grant (no more than their own permissions and scope) and the unit
(所属单位) a new or moved user or role belongs to: shared by roles, staff users and API
clients."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import not_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth import errors
from backend.auth.catalog import all_permissions
from backend.auth.models import RoleArea, RolePermission
from backend.auth.principal import Principal
from backend.auth.scope import AREA_TREE, area_exists, in_scope, unit_in_scope, whole_tree
from backend.errors import DomainError, ErrorCode


async def _role_grants(session: AsyncSession, role_ids: Sequence[int]) -> tuple[set[str], list[str]]:
    """Permissions and area paths held by these roles together."""
    if not role_ids:
        return set(), []
    permissions = (
        await session.execute(select(RolePermission.permission).where(RolePermission.role_id.in_(role_ids)))  # type: ignore[call-overload,attr-defined]
    ).scalars().all()
    paths = (
        await session.execute(
            select(AREA_TREE.c.path).join(RoleArea, RoleArea.area_id == AREA_TREE.c.id).where(RoleArea.role_id.in_(role_ids))  # type: ignore[arg-type,attr-defined]
        )
    ).scalars().all()
    return set(permissions), list(paths)


def _check_grantable(
    actor: Principal, permissions: Iterable[str], paths: Iterable[str], *, field: str, area_field: str | None = None
) -> None:
    if not set(permissions) <= actor.permissions:
        raise errors.GrantExceedsOwn(field=field)
    if not all(actor.in_scope(path) for path in paths):
        raise errors.GrantExceedsOwn(field=area_field or field)


def _check_known_permissions(
    permissions: Iterable[str], allowed: frozenset[str] | None = None, *, field: str = "permissions"
) -> None:
    unknown = sorted(set(permissions) - (allowed if allowed is not None else all_permissions()))
    if unknown:
        raise errors.UnknownPermission(
            f"未知的权限: {', '.join(unknown)}", f"Unknown permission: {', '.join(unknown)}", field=field
        )


async def _unit_for(session: AsyncSession, actor: Principal, unit_id: int | None) -> int | None:
    """The unit a new or moved user or role belongs to: ``unit_id`` when it lies in the
    actor's scope (UNKNOWN_AREA otherwise), by default the actor's top area. An actor
    whose scope has several top areas names one; a whole-tree actor without a single
    root gets NULL (the company as a whole)."""
    patterns = actor.scope_patterns()
    if unit_id is not None:
        if not await area_exists(session, unit_id) or not await unit_in_scope(session, unit_id, patterns):
            raise errors.UnknownArea(field="unitId")
        return unit_id
    area, parent = AREA_TREE.alias("area"), AREA_TREE.alias("parent")
    tops: list[int] = list((await session.execute(
        select(area.c.id).outerjoin(parent, parent.c.id == area.c.parent_id)
        .where(in_scope(area.c.path, patterns), or_(parent.c.id.is_(None), not_(in_scope(parent.c.path, patterns))))
        .order_by(area.c.id).limit(2)
    )).scalars())
    if len(tops) == 1:
        return tops[0]
    if (await session.execute(select(whole_tree(patterns)))).scalar_one():
        return None
    raise DomainError("请选择所属单位", "Choose the unit it belongs to", field="unitId", code=ErrorCode.REQUIRED)
