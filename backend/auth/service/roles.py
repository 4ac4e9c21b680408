"""Roles (角色): the hierarchy, changed from above; menu permissions (菜单权限) and areas
(行政权限); and their lists."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Select, delete, exists, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth import errors
from backend.auth.models import Role, RoleArea, RoleKind, RolePermission, StaffUserRole
from backend.auth.principal import Principal
from backend.auth.scope import require_area_paths, unit_visible
from backend.auth.service.grants import _check_grantable, _check_known_permissions, _role_grants, _unit_for
from backend.errors import DomainError, ErrorCode, NotFound, ValidationFailed


async def _role_in_scope(session: AsyncSession, actor: Principal, role_id: int, *, field: str, lock: bool = False) -> Role:
    """Role ``role_id`` when its unit lies in the actor's scope; NOT_FOUND otherwise."""
    statement = select(Role).where(Role.id == role_id, unit_visible(Role.area_id, actor.scope_patterns()))  # type: ignore[arg-type]
    if lock:
        statement = statement.with_for_update(of=Role)  # type: ignore[arg-type]
    role = (await session.execute(statement)).scalars().first()
    if role is None:
        raise NotFound(field=field)
    return role


_HELD_OR_ABOVE = text(
    """
    WITH RECURSIVE up AS (
        SELECT r.id, r.parent_id FROM roles r JOIN staff_user_roles ur ON ur.role_id = r.id WHERE ur.user_id = :user_id
        UNION SELECT r.id, r.parent_id FROM roles r JOIN up ON r.id = up.parent_id
    )
    SELECT EXISTS (SELECT 1 FROM up WHERE id = :role_id)
    """
)


async def _check_role_editable(session: AsyncSession, actor: Principal, role_id: int) -> Role:
    role = await _role_in_scope(session, actor, role_id, field="id", lock=True)
    if actor.is_staff and (await session.execute(_HELD_OR_ABOVE, {"user_id": actor.id, "role_id": role_id})).scalar_one():
        # Changed from above only: a holder could otherwise detach, widen or re-parent it.
        raise errors.RoleHierarchy("不能修改或删除自己持有的角色及其上级角色",
                                   "You cannot change or delete a role you hold, nor one above it", field="id")
    held, paths = await _role_grants(session, [role_id])
    if not held <= actor.permissions or not all(actor.in_scope(p) for p in paths):
        # A role above the actor is not theirs to edit.
        raise errors.GrantExceedsOwn(field="id")
    return role


@dataclass(frozen=True, slots=True)
class RoleChanges:
    name: str | None = None
    kind: RoleKind | None = None
    parent_id: int | None = None
    clear_parent: bool = False
    description: str | None = None
    permissions: frozenset[str] | None = None
    area_ids: frozenset[int] | None = None
    unit_id: int | None = None


async def _validate_role(
    session: AsyncSession,
    actor: Principal,
    *,
    role_id: int | None,
    name: str,
    kind: RoleKind,
    parent_id: int | None,
    permissions: frozenset[str],
    area_ids: frozenset[int],
    new_parent: bool = True,
) -> None:
    """Refusals of a role's fields; ``new_parent``: the parent is being set (it must then lie
    in the actor's scope; a parent kept as it was is only the bound of the role's grants)."""
    problems: list[DomainError] = []
    if not name.strip() or len(name) > 64:
        problems.append(DomainError("角色名称须为 1-64 个字符", "A role name has 1 to 64 characters", field="name", code=ErrorCode.INVALID))
    else:
        clash = select(Role.id).where(Role.name == name.strip())  # type: ignore[call-overload]
        if role_id is not None:
            clash = clash.where(Role.id != role_id)
        if (await session.execute(clash)).first() is not None:
            problems.append(errors.Duplicate("角色名称已存在", "A role with this name exists", field="name"))
    if problems:
        raise ValidationFailed(problems)
    _check_known_permissions(permissions)
    if kind.rank < await _actor_rank(session, actor):
        # A department admin cannot mint a "system admin" role, even with fewer permissions.
        raise errors.RoleHierarchy(field="kind")
    area_paths = await require_area_paths(session, area_ids)
    _check_grantable(actor, permissions, list(area_paths.values()), field="permissions", area_field="areaIds")
    if parent_id is not None:
        if role_id is not None and (
            await session.execute(_ANCESTORS, {"parent_id": parent_id, "role_id": role_id})
        ).scalar_one():
            # The new parent is the role itself or one of its descendants: a cycle.
            raise errors.RoleHierarchy(field="parentId")
        # Only a role in the actor's scope becomes a parent (not 系统管理员 for a district).
        found = await _role_in_scope(session, actor, parent_id, field="parentId") if new_parent else await session.get(Role, parent_id)
        if found is None:
            raise NotFound(field="parentId")
        parent = found
        if kind.rank < parent.kind.rank:
            raise errors.RoleHierarchy(field="kind")
        parent_permissions, parent_paths = await _role_grants(session, [parent_id])
        if not permissions <= parent_permissions:
            raise errors.RoleHierarchy(field="permissions")
        if not all(any(path.startswith(p) for p in parent_paths) for path in area_paths.values()):
            raise errors.RoleHierarchy(field="areaIds")
    if role_id is not None:
        await _check_children_fit(session, role_id=role_id, kind=kind, permissions=permissions,
                                  paths=list(area_paths.values()))


async def _actor_rank(session: AsyncSession, actor: Principal) -> int:
    """The highest rank among the actor's roles (0 = system admin); a principal with no
    roles (the CLI and demo loader acting as the system) ranks highest."""
    if not actor.is_staff:
        return len(RoleKind)
    kinds = (
        await session.execute(
            select(Role.kind).join(StaffUserRole, StaffUserRole.role_id == Role.id).where(StaffUserRole.user_id == actor.id)  # type: ignore[call-overload,arg-type]
        )
    ).scalars().all()
    return min((kind.rank for kind in kinds), default=0)


_ANCESTORS = text(
    """
    WITH RECURSIVE up AS (
        SELECT id, parent_id FROM roles WHERE id = :parent_id
        UNION SELECT r.id, r.parent_id FROM roles r JOIN up ON r.id = up.parent_id
    )
    SELECT EXISTS (SELECT 1 FROM up WHERE id = :role_id)
    """
)


async def _check_children_fit(
    session: AsyncSession, *, role_id: int, kind: RoleKind, permissions: frozenset[str], paths: list[str]
) -> None:
    """A role never holds less than, nor ranks below, any of its child roles."""
    children = (await session.execute(select(Role).where(Role.parent_id == role_id))).scalars().all()  # type: ignore[arg-type]
    for child in children:
        assert child.id is not None
        child_permissions, child_paths = await _role_grants(session, [child.id])
        if child.kind.rank < kind.rank:
            raise errors.RoleHierarchy(field="kind")
        if not child_permissions <= permissions:
            raise errors.RoleHierarchy(field="permissions")
        if not all(any(path.startswith(p) for p in paths) for path in child_paths):
            raise errors.RoleHierarchy(field="areaIds")


async def _write_grants(session: AsyncSession, role_id: int, permissions: frozenset[str], area_ids: frozenset[int]) -> None:
    await session.execute(delete(RolePermission).where(RolePermission.role_id == role_id))  # type: ignore[arg-type]
    await session.execute(delete(RoleArea).where(RoleArea.role_id == role_id))  # type: ignore[arg-type]
    if permissions:
        await session.execute(insert(RolePermission), [{"role_id": role_id, "permission": p} for p in sorted(permissions)])
    if area_ids:
        await session.execute(insert(RoleArea), [{"role_id": role_id, "area_id": a} for a in sorted(area_ids)])


async def create_role(
    session: AsyncSession,
    *,
    actor: Principal,
    name: str,
    kind: RoleKind,
    permissions: Iterable[str],
    area_ids: Iterable[int],
    parent_id: int | None = None,
    description: str = "",
    unit_id: int | None = None,
) -> Role:
    """Add a role belonging to unit ``unit_id`` (default: the actor's own top area)."""
    wanted_permissions, wanted_areas = frozenset(permissions), frozenset(area_ids)
    await _validate_role(
        session, actor, role_id=None, name=name, kind=kind, parent_id=parent_id,
        permissions=wanted_permissions, area_ids=wanted_areas,
    )
    unit = await _unit_for(session, actor, unit_id)
    role = Role(name=name.strip(), kind=kind, parent_id=parent_id, description=description.strip()[:400], area_id=unit)
    session.add(role)
    await session.flush()
    assert role.id is not None
    await _write_grants(session, role.id, wanted_permissions, wanted_areas)
    return role


async def update_role(session: AsyncSession, *, actor: Principal, role_id: int, changes: RoleChanges) -> Role:
    """Change a role's fields, permissions (菜单权限) or areas (行政权限); unspecified ones stay."""
    role = await _check_role_editable(session, actor, role_id)
    held, _ = await _role_grants(session, [role_id])
    current_areas = frozenset(
        (await session.execute(select(RoleArea.area_id).where(RoleArea.role_id == role_id))).scalars().all()  # type: ignore[call-overload,arg-type]
    )
    name = changes.name if changes.name is not None else role.name
    kind = changes.kind or role.kind
    parent_id = None if changes.clear_parent else (changes.parent_id if changes.parent_id is not None else role.parent_id)
    permissions = changes.permissions if changes.permissions is not None else frozenset(held)
    area_ids = changes.area_ids if changes.area_ids is not None else current_areas
    if parent_id != role.parent_id and role.parent_id is not None:
        try:
            await _role_in_scope(session, actor, role.parent_id, field="parentId")
        except NotFound:
            # Detaching a role from a parent outside the actor's scope (系统管理员) bends
            # a hierarchy that is not theirs.
            raise errors.RoleHierarchy("不能改动管辖范围外的上级角色", "You cannot change a parent role outside your scope",
                                       field="parentId") from None
    await _validate_role(
        session, actor, role_id=role_id, name=name, kind=kind, parent_id=parent_id,
        permissions=permissions, area_ids=area_ids, new_parent=parent_id != role.parent_id,
    )
    role.name, role.kind, role.parent_id = name.strip(), kind, parent_id
    if changes.unit_id is not None:
        role.area_id = await _unit_for(session, actor, changes.unit_id)
    if changes.description is not None:
        role.description = changes.description.strip()[:400]
    await _write_grants(session, role_id, permissions, area_ids)
    await session.flush()
    return role


async def delete_role(session: AsyncSession, *, actor: Principal, role_id: int) -> Role:
    role = await _check_role_editable(session, actor, role_id)
    in_use = await session.execute(
        select(
            exists().where(StaffUserRole.role_id == role_id)  # type: ignore[arg-type]
            | exists().where(Role.parent_id == role_id)  # type: ignore[arg-type]
        )
    )
    if in_use.scalar_one():
        raise errors.RoleInUse(field="id")
    await _write_grants(session, role_id, frozenset(), frozenset())
    await session.delete(role)
    await session.flush()
    return role


def roles_statement(*, scope_patterns: Sequence[str] | None, search: str | None = None) -> Select[Role]:
    """Roles whose unit lies in the scope (``None``: every role, for system callers)."""
    statement = select(Role).where(unit_visible(Role.area_id, scope_patterns))  # type: ignore[arg-type]
    if search:
        statement = statement.where(Role.name.contains(search, autoescape=True))  # type: ignore[attr-defined]
    return statement.order_by(Role.id)  # type: ignore[arg-type]


async def role_permissions(session: AsyncSession, role_ids: Sequence[int]) -> dict[int, list[str]]:
    rows = (await session.execute(
        select(RolePermission.role_id, RolePermission.permission)  # type: ignore[call-overload]
        .where(RolePermission.role_id.in_(role_ids)).order_by(RolePermission.permission)  # type: ignore[attr-defined]
    )).all()
    found: dict[int, list[str]] = {role_id: [] for role_id in role_ids}
    for role_id, permission in rows:
        found[role_id].append(permission)
    return found


async def role_area_ids(session: AsyncSession, role_ids: Sequence[int]) -> dict[int, list[int]]:
    rows = (await session.execute(
        select(RoleArea.role_id, RoleArea.area_id).where(RoleArea.role_id.in_(role_ids)).order_by(RoleArea.area_id)  # type: ignore[call-overload,attr-defined]
    )).all()
    found: dict[int, list[int]] = {role_id: [] for role_id in role_ids}
    for role_id, area_id in rows:
        found[role_id].append(area_id)
    return found


async def roles_by_ids(session: AsyncSession, ids: Iterable[int]) -> dict[int, Role]:
    wanted = list(set(ids))
    rows = (await session.execute(select(Role).where(Role.id.in_(wanted)))).scalars().all() if wanted else []  # type: ignore[union-attr]
    return {role.id: role for role in rows if role.id is not None}
