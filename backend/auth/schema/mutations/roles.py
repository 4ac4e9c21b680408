"""Roles (角色管理): create, update (菜单权限 and 行政权限) and delete."""

from __future__ import annotations

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.auth import service
from backend.auth.models import Role
from backend.auth.schema.mutations.common import _ids, _unit_id
from backend.auth.schema.types import RoleKindEnum, RoleType
from backend.graphql.errors import UserError
from backend.graphql.mutations import run_mutation
from backend.graphql.permissions import Requires
from backend.graphql.relay import decode_id


@strawberry.type
class RolePayload:
    role: RoleType | None
    errors: list[UserError]


@strawberry.input
class RoleInput:
    name: str
    kind: RoleKindEnum  # type: ignore[valid-type]
    permissions: list[str]
    area_ids: list[strawberry.ID]
    parent_id: strawberry.ID | None = None
    description: str = ""
    unit_id: strawberry.ID | None = strawberry.field(
        default=None, description="所属单位 (an Area within your scope); default: your own top area."
    )


@strawberry.input
class UpdateRoleInput:
    name: str | None = None
    kind: RoleKindEnum | None = None  # type: ignore[valid-type]
    parent_id: strawberry.ID | None = None
    clear_parent: bool = False
    description: str | None = None
    permissions: list[str] | None = None
    area_ids: list[strawberry.ID] | None = None
    unit_id: strawberry.ID | None = strawberry.field(default=None, description="Move the role to this unit (an Area within your scope).")


def _role_payload(role: Role | None, errors: list[UserError]) -> RolePayload:
    return RolePayload(role=RoleType.from_row(role) if role else None, errors=errors)


@strawberry.type
class RoleMutations:
    @strawberry.mutation(permission_classes=[Requires("roles:manage")], description="Add a role.")
    async def create_role(self, info: Info, input: RoleInput) -> RolePayload:
        actor = info.context.caller

        async def work(session: AsyncSession) -> Role:
            return await service.create_role(
                session, actor=actor, name=input.name, kind=input.kind, permissions=input.permissions,
                area_ids=_ids(input.area_ids, "Area", "areaIds") or (),
                parent_id=decode_id(input.parent_id, "Role", field="parentId") if input.parent_id else None,
                description=input.description, unit_id=_unit_id(input.unit_id),
            )

        return await run_mutation(info, action="createRole",
                                  describe=lambda _: f"新增角色 {input.name[:64]}", payload=_role_payload, work=work)

    @strawberry.mutation(permission_classes=[Requires("roles:manage")], description="Change a role, its 菜单权限 or 行政权限.")
    async def update_role(self, info: Info, id: strawberry.ID, input: UpdateRoleInput) -> RolePayload:
        actor = info.context.caller

        async def work(session: AsyncSession) -> Role:
            changes = service.RoleChanges(
                name=input.name, kind=input.kind,
                parent_id=decode_id(input.parent_id, "Role", field="parentId") if input.parent_id else None,
                clear_parent=input.clear_parent, description=input.description,
                permissions=frozenset(input.permissions) if input.permissions is not None else None,
                area_ids=_ids(input.area_ids, "Area", "areaIds"), unit_id=_unit_id(input.unit_id),
            )
            return await service.update_role(session, actor=actor, role_id=decode_id(id, "Role"), changes=changes)

        def describe(role: Role | None) -> str:
            name = role.name if role else str(input.name or id)
            parts = []
            if input.permissions is not None:
                parts.append("分配菜单权限")
            if input.area_ids is not None:
                parts.append("分配行政权限")
            return f"为角色 {name} {'、'.join(parts) or '修改信息'}"

        # Granting menus or areas is what the brochure's log calls 分配权限.
        assigns = input.permissions is not None or input.area_ids is not None
        return await run_mutation(info, action="assignPermissions" if assigns else "updateRole", describe=describe,
                                  payload=_role_payload, work=work)

    @strawberry.mutation(permission_classes=[Requires("roles:manage")], description="Delete a role no user or child role uses.")
    async def delete_role(self, info: Info, id: strawberry.ID) -> RolePayload:
        actor = info.context.caller

        async def work(session: AsyncSession) -> Role:
            return await service.delete_role(session, actor=actor, role_id=decode_id(id, "Role"))

        return await run_mutation(info, action="deleteRole",
                                  describe=lambda r: f"删除角色 {r.name if r else id}", payload=_role_payload, work=work)
