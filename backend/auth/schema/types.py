"""Auth's GraphQL types: the viewer with their menus, staff users, roles, API clients and
household bindings, and the enums they use."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import strawberry
from strawberry.types import Info

from backend.auth import service
from backend.auth.catalog import Menu, menus
from backend.auth.models import ApiClient, BindingState, PrincipalKind, Role, RoleKind, StaffUser
from backend.auth.principal import Principal
from backend.auth.schema.loaders import PermissionsByRoleIdLoader, RoleByIdLoader, RoleIdsByUserIdLoader, VisibleRoleByIdLoader
from backend.graphql.relay import Node, encode_id

BindingStateEnum = strawberry.enum(BindingState, name="BindingState", description="pending, active, rejected, unbound")
RoleKindEnum = strawberry.enum(RoleKind, name="RoleKind", description="系统管理员 > 单位管理员 > 部门管理员 > 系统操作员")


class CallerKind(StrEnum):
    """Who can call the API: every PrincipalKind but the system actor, which holds no token."""

    staff = PrincipalKind.staff.value
    resident = PrincipalKind.resident.value
    client = PrincipalKind.client.value


PrincipalKindEnum = strawberry.enum(CallerKind, name="PrincipalKind")


@strawberry.type(name="Permission", description="A menu permission, as resource:action.")
class PermissionType:
    code: str
    name: str
    name_en: str


@strawberry.type(name="Menu", description="A menu of the apps (菜单) and the permissions behind it.")
class MenuType:
    code: str
    name: str
    name_en: str
    apps: list[str]
    permissions: list[PermissionType]

    @classmethod
    def from_menu(cls, menu: Menu, held: frozenset[str] | None = None) -> MenuType:
        return cls(
            code=menu.code, name=menu.name, name_en=menu.name_en, apps=list(menu.apps),
            permissions=[
                PermissionType(code=p.code, name=p.name, name_en=p.name_en)
                for p in menu.permissions
                if held is None or p.code in held
            ],
        )


def menus_for(principal: Principal) -> list[MenuType]:
    """The menus a principal sees: those where they hold at least one permission."""
    return [
        MenuType.from_menu(menu, principal.permissions)
        for menu in menus()
        if any(p.code in principal.permissions for p in menu.permissions)
    ]


@strawberry.type(name="Role", description="A role (角色): menu permissions and a data scope.")
class RoleType(Node):
    name: str
    kind: RoleKindEnum  # type: ignore[valid-type]
    description: str
    created_at: datetime
    pk: strawberry.Private[int]
    parent_pk: strawberry.Private[int | None]
    unit_pk: strawberry.Private[int | None]

    @classmethod
    def from_row(cls, role: Role) -> RoleType:
        assert role.id is not None and role.created_at is not None
        return cls(
            id=encode_id("Role", role.id), name=role.name, kind=role.kind, description=role.description,
            created_at=role.created_at, pk=role.id, parent_pk=role.parent_id, unit_pk=role.area_id,
        )

    @strawberry.field(description="上级角色; null for a top role or one outside your scope (系统管理员 for a district).")
    async def parent(self, info: Info) -> RoleType | None:
        if self.parent_pk is None:
            return None
        role = await info.context.loader(VisibleRoleByIdLoader).load(self.parent_pk)
        return RoleType.from_row(role) if role else None

    @strawberry.field(description="菜单权限 (resource:action).")
    async def permissions(self, info: Info) -> list[str]:
        return await info.context.loader(PermissionsByRoleIdLoader).load(self.pk)  # type: ignore[no-any-return]


@strawberry.type(name="StaffUser", description="A staff user (用户).")
class StaffUserType(Node):
    username: str = strawberry.field(description="用户名")
    full_name: str = strawberry.field(description="用户姓名")
    email: str | None = strawberry.field(description="电子邮箱")
    phone: str | None = strawberry.field(description="联系电话")
    is_active: bool
    created_at: datetime
    last_login_at: datetime | None
    pk: strawberry.Private[int]
    unit_pk: strawberry.Private[int | None]

    @classmethod
    def from_row(cls, user: StaffUser) -> StaffUserType:
        assert user.id is not None and user.created_at is not None
        return cls(
            id=encode_id("StaffUser", user.id), username=user.username, full_name=user.full_name,
            email=user.email, phone=user.phone, is_active=user.is_active, created_at=user.created_at,
            last_login_at=user.last_login_at, pk=user.id, unit_pk=user.area_id,
        )

    @strawberry.field
    async def roles(self, info: Info) -> list[RoleType]:
        role_ids = await info.context.loader(RoleIdsByUserIdLoader).load(self.pk)
        roles = await info.context.loader(RoleByIdLoader).load_many(role_ids)
        return [RoleType.from_row(role) for role in roles if role is not None]


@strawberry.type(name="ApiClient", description="A third party with client credentials.")
class ApiClientType(Node):
    client_id: str
    name: str
    scopes: list[str]
    rate_per_minute: int
    is_active: bool
    created_at: datetime
    last_used_at: datetime | None

    @classmethod
    def from_row(cls, client: ApiClient) -> ApiClientType:
        assert client.id is not None and client.created_at is not None
        return cls(
            id=encode_id("ApiClient", client.id), client_id=client.client_id, name=client.name,
            scopes=list(client.scopes), rate_per_minute=client.rate_per_minute, is_active=client.is_active,
            created_at=client.created_at, last_used_at=client.last_used_at,
        )


@strawberry.type(name="HouseholdBinding", description=(
    "A resident's binding of a household (绑定): PENDING until confirmed by the code sent to the household's "
    "registered phone, or approved by an owner or at the counter."))
class HouseholdBindingType(Node):
    state: BindingStateEnum  # type: ignore[valid-type]
    account_no: str = strawberry.field(description="缴费号")
    resident_phone: str = strawberry.field(description="The requesting resident's phone, masked (138****5678).")
    code_sent_to: str | None = strawberry.field(description="The registered phone a confirmation code went to, masked.")
    created_at: datetime
    decided_at: datetime | None
    # The household once the binding is active; archives adds the ``household`` field.
    household_pk: strawberry.Private[int | None]

    @classmethod
    def from_outcome(cls, outcome: service.BindingOutcome) -> HouseholdBindingType:
        binding = outcome.binding
        assert binding.id is not None
        return cls(
            id=encode_id("HouseholdBinding", binding.id), state=binding.state, account_no=outcome.account_no,
            resident_phone=service.mask_phone(outcome.resident_phone) or "", code_sent_to=outcome.code_sent_to,
            created_at=binding.created_at, decided_at=binding.decided_at,
            household_pk=outcome.household.id if outcome.household is not None else None,
        )

    @classmethod
    def from_row(cls, row: Any) -> HouseholdBindingType:
        binding, account_no, phone = row
        return cls.from_outcome(service.BindingOutcome(binding, account_no, phone, None))


@strawberry.type(description="Who is calling, with what they may do.")
class Viewer:
    kind: PrincipalKindEnum  # type: ignore[valid-type]
    name: str
    permissions: list[str]
    principal: strawberry.Private[Principal]

    @classmethod
    def of(cls, principal: Principal) -> Viewer:
        return cls(kind=CallerKind(principal.kind.value), name=principal.name, permissions=sorted(principal.permissions),
                   principal=principal)

    @strawberry.field(description="The staff user, when a staff member is calling.")
    async def staff_user(self, info: Info) -> StaffUserType | None:
        if not self.principal.is_staff:
            return None
        async with info.context.read() as session:
            user = await session.get(StaffUser, self.principal.id)
        return StaffUserType.from_row(user) if user else None

    @strawberry.field(description="A resident's pending bindings: their own requests and those on households they own.")
    async def binding_requests(self, info: Info) -> list[HouseholdBindingType]:
        if not self.principal.is_resident:
            return []
        async with info.context.read() as session:
            rows = (await session.execute(service.pending_bindings_statement(self.principal).limit(100))).all()
        return [HouseholdBindingType.from_row(row) for row in rows]

    @strawberry.field(description="The menus to show, built from the catalog and your permissions.")
    def menus(self) -> list[MenuType]:
        return menus_for(self.principal)
