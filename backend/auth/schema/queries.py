"""Auth's queries (the viewer, menus and the catalog, staff users, roles, pending
household bindings, API clients) and the node(id:) fetchers of its types."""

from __future__ import annotations

from typing import Any

import strawberry
from strawberry.types import Info

from backend.auth import service
from backend.auth.catalog import menus
from backend.auth.models import ApiClient, Role, StaffUser
from backend.auth.schema.types import ApiClientType, HouseholdBindingType, MenuType, RoleType, StaffUserType, Viewer, menus_for
from backend.graphql.pagination import Connection, PageRequest, paginate
from backend.graphql.permissions import Authenticated, Requires


async def _fetch_staff_user(context: Any, pk: int) -> StaffUserType | None:
    if context.principal is None or not context.principal.has("users:read"):
        return None
    statement = service.staff_users_statement(scope_patterns=context.principal.scope_patterns()).where(StaffUser.id == pk)  # type: ignore[arg-type]
    async with context.read() as session:
        user = (await session.execute(statement)).scalars().first()
    return StaffUserType.from_row(user) if user else None


async def _fetch_role(context: Any, pk: int) -> RoleType | None:
    if context.principal is None or not context.principal.has("roles:read"):
        return None
    statement = service.roles_statement(scope_patterns=context.principal.scope_patterns()).where(Role.id == pk)  # type: ignore[arg-type]
    async with context.read() as session:
        role = (await session.execute(statement)).scalars().first()
    return RoleType.from_row(role) if role else None


async def _fetch_api_client(context: Any, pk: int) -> ApiClientType | None:
    if context.principal is None or not context.principal.has("clients:manage"):
        return None
    statement = service.api_clients_statement(scope_patterns=context.principal.scope_patterns()).where(ApiClient.id == pk)  # type: ignore[arg-type]
    async with context.read() as session:
        client = (await session.execute(statement)).scalars().first()
    return ApiClientType.from_row(client) if client else None


@strawberry.type
class Query:
    @strawberry.field(permission_classes=[Authenticated], description="The caller.")
    def viewer(self, info: Info) -> Viewer:
        return Viewer.of(info.context.caller)

    @strawberry.field(permission_classes=[Authenticated], description="Your menus (菜单), from the catalog and your permissions.")
    def menus(self, info: Info) -> list[MenuType]:
        return menus_for(info.context.caller)

    @strawberry.field(permission_classes=[Requires("roles:read")], description="Every menu and permission, for role editors.")
    def menu_catalog(self) -> list[MenuType]:
        return [MenuType.from_menu(menu) for menu in menus()]

    @strawberry.field(permission_classes=[Requires("users:read")], description="Staff users (用户管理) whose unit lies in your scope.")
    async def staff_users(
        self, info: Info, first: int | None = None, after: str | None = None, last: int | None = None,
        before: str | None = None, search: str | None = None, is_active: bool | None = None,
    ) -> Connection[StaffUserType]:
        page = PageRequest.from_args(first, after, last, before)
        async with info.context.read() as session:
            statement = service.staff_users_statement(
                scope_patterns=info.context.caller.scope_patterns(), search=search, is_active=is_active
            )
            return await paginate(session, statement, page, lambda row: StaffUserType.from_row(row[0]))

    @strawberry.field(permission_classes=[Requires("roles:read")], description="Roles (角色管理) whose unit lies in your scope.")
    async def roles(
        self, info: Info, first: int | None = None, after: str | None = None, last: int | None = None,
        before: str | None = None, search: str | None = None,
    ) -> Connection[RoleType]:
        page = PageRequest.from_args(first, after, last, before)
        async with info.context.read() as session:
            statement = service.roles_statement(scope_patterns=info.context.caller.scope_patterns(), search=search)
            return await paginate(session, statement, page, lambda row: RoleType.from_row(row[0]))

    @strawberry.field(permission_classes=[Requires("archives:manage")],
                      description="Pending household bindings in your scope, to approve or reject at the counter.")
    async def household_binding_requests(
        self, info: Info, first: int | None = None, after: str | None = None, last: int | None = None,
        before: str | None = None,
    ) -> Connection[HouseholdBindingType]:
        page = PageRequest.from_args(first, after, last, before)
        async with info.context.read() as session:
            return await paginate(session, service.pending_bindings_statement(info.context.caller), page, HouseholdBindingType.from_row)

    @strawberry.field(permission_classes=[Requires("clients:manage")], description="Third-party API clients.")
    async def api_clients(
        self, info: Info, first: int | None = None, after: str | None = None, last: int | None = None,
        before: str | None = None,
    ) -> Connection[ApiClientType]:
        page = PageRequest.from_args(first, after, last, before)
        async with info.context.read() as session:
            statement = service.api_clients_statement(scope_patterns=info.context.caller.scope_patterns())
            return await paginate(session, statement, page, lambda row: ApiClientType.from_row(row[0]))


# The node(id:) fetchers of auth's types (collected by the root schema).
NODES = {
    "StaffUser": _fetch_staff_user,
    "Role": _fetch_role,
    "ApiClient": _fetch_api_client,
}
