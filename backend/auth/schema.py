"""GraphQL for auth: logins and tokens, the viewer and their menus, staff users, roles
(菜单权限 + 行政权限) and API clients."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.auth import service
from backend.auth.catalog import Menu, menus
from backend.auth.errors import RefreshTokenReused
from backend.auth.models import ApiClient, BindingState, PrincipalKind, Role, RoleKind, StaffUser
from backend.auth.principal import Principal
from backend.auth.ratelimit import OverLimitMemo
from backend.auth.sms import sms_sender
from backend.clock import utcnow
from backend.errors import DomainError
from backend.graphql.context import Context
from backend.graphql.errors import UserError
from backend.graphql.limits import AuthMutation
from backend.graphql.loaders import SessionLoader
from backend.graphql.mutations import run_mutation
from backend.graphql.pagination import Connection, PageRequest, paginate
from backend.graphql.permissions import Authenticated, Public, Requires
from backend.graphql.relay import Node, decode_id, encode_id

BindingStateEnum = strawberry.enum(BindingState, name="BindingState", description="pending, active, rejected, unbound")
RoleKindEnum = strawberry.enum(RoleKind, name="RoleKind", description="系统管理员 > 单位管理员 > 部门管理员 > 系统操作员")
class CallerKind(StrEnum):
    """Who can call the API: every PrincipalKind but the system actor, which holds no token."""

    staff = PrincipalKind.staff.value
    resident = PrincipalKind.resident.value
    client = PrincipalKind.client.value


PrincipalKindEnum = strawberry.enum(CallerKind, name="PrincipalKind")


def _policy(info: Info) -> service.AuthPolicy:
    """The policy create_app built once (a context made elsewhere builds its own)."""
    context: Context = info.context
    policy = context.services.get("auth_policy")
    return policy if policy is not None else service.AuthPolicy.from_settings(context.settings)  # type: ignore[no-any-return]


def _over_limit(info: Info) -> OverLimitMemo | None:
    """The app's memo of throttle keys already refused this minute (create_app builds one;
    without it every throttle hit asks the database)."""
    context: Context = info.context
    return context.services.get("over_limit")  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- loaders


class RoleByIdLoader(SessionLoader[int, Role | None]):
    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, Role]:
        return await service.roles_by_ids(session, keys)


class VisibleRoleByIdLoader(SessionLoader[int, Role | None]):
    """Roles whose unit lies in the caller's scope (others are missing)."""

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, Role]:
        principal: Principal | None = self.context.principal
        patterns = principal.scope_patterns() if principal is not None else []
        statement = service.roles_statement(scope_patterns=patterns).where(Role.id.in_(keys))  # type: ignore[union-attr]
        return {role.id: role for role in (await session.execute(statement)).scalars() if role.id is not None}


class RoleIdsByUserIdLoader(SessionLoader[int, list[int]]):
    missing: list[int] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, list[int]]:
        return await service.user_role_ids(session, keys)


class PermissionsByRoleIdLoader(SessionLoader[int, list[str]]):
    missing: list[str] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, list[str]]:
        return await service.role_permissions(session, keys)


# --------------------------------------------------------------------------- types


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


@strawberry.type(description="Tokens of a login. Send the access token as `Authorization: Bearer …`.")
class AuthTokens:
    access_token: str
    access_token_expires_at: datetime
    refresh_token: str | None
    refresh_token_expires_at: datetime | None


# --------------------------------------------------------------------------- payloads


@strawberry.type
class AuthPayload:
    tokens: AuthTokens | None
    viewer: Viewer | None
    errors: list[UserError]


def _auth_payload(pair: service.TokenPair | None, errors: list[UserError]) -> AuthPayload:
    if pair is None:
        return AuthPayload(tokens=None, viewer=None, errors=errors)
    return AuthPayload(
        tokens=AuthTokens(
            access_token=pair.access_token, access_token_expires_at=pair.access_expires_at,
            refresh_token=pair.refresh_token, refresh_token_expires_at=pair.refresh_expires_at,
        ),
        viewer=Viewer.of(pair.principal),
        errors=errors,
    )


@strawberry.type
class OkPayload:
    ok: bool
    errors: list[UserError]


@strawberry.type
class LoginCodePayload:
    expires_at: datetime | None
    errors: list[UserError]


@strawberry.type
class StaffUserPayload:
    staff_user: StaffUserType | None
    errors: list[UserError]


@strawberry.type
class RolePayload:
    role: RoleType | None
    errors: list[UserError]


@strawberry.type
class ApiClientPayload:
    api_client: ApiClientType | None
    client_secret: str | None = strawberry.field(description="Shown once, on create and rotate; store it now.")
    errors: list[UserError]


@strawberry.type
class HouseholdPayload:
    binding: HouseholdBindingType | None = strawberry.field(default=None, description="The binding and its state.")
    errors: list[UserError]
    # Set once the household is bound (active); archives adds the ``household`` field.
    household_pk: strawberry.Private[int | None] = None


def _binding_payload(outcome: service.BindingOutcome | None, errors: list[UserError]) -> HouseholdPayload:
    if outcome is None:
        return HouseholdPayload(binding=None, errors=errors)
    household_pk = outcome.household.id if outcome.household is not None else None
    return HouseholdPayload(binding=HouseholdBindingType.from_outcome(outcome), errors=errors, household_pk=household_pk)


# --------------------------------------------------------------------------- inputs


@strawberry.input
class CreateStaffUserInput:
    username: str
    full_name: str
    password: str
    email: str | None = None
    phone: str | None = None
    role_ids: list[strawberry.ID] = strawberry.field(default_factory=list)
    unit_id: strawberry.ID | None = strawberry.field(
        default=None, description="所属单位 (an Area within your scope); default: your own top area."
    )


@strawberry.input
class UpdateStaffUserInput:
    full_name: str | None = None
    email: str | None = None
    phone: str | None = None
    role_ids: list[strawberry.ID] | None = None
    is_active: bool | None = None
    unit_id: strawberry.ID | None = strawberry.field(default=None, description="Move the user to this unit (an Area within your scope).")


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


def _unit_id(value: strawberry.ID | None) -> int | None:
    return decode_id(value, "Area", field="unitId") if value else None


@strawberry.input
class ApiClientInput:
    name: str
    scopes: list[str]
    area_ids: list[strawberry.ID]
    rate_per_minute: int = 600


def _ids(values: list[strawberry.ID] | None, type_name: str, field: str) -> frozenset[int] | None:
    if values is None:
        return None
    return frozenset(decode_id(value, type_name, field=field) for value in values)


# --------------------------------------------------------------------------- node fetchers


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




# --------------------------------------------------------------------------- queries


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


# --------------------------------------------------------------------------- mutations


def _staff_payload(user: StaffUser | None, errors: list[UserError]) -> StaffUserPayload:
    return StaffUserPayload(staff_user=StaffUserType.from_row(user) if user else None, errors=errors)


def _role_payload(role: Role | None, errors: list[UserError]) -> RolePayload:
    return RolePayload(role=RoleType.from_row(role) if role else None, errors=errors)


def _client_payload(issued: service.IssuedClient | ApiClient | None, errors: list[UserError]) -> ApiClientPayload:
    if issued is None:
        return ApiClientPayload(api_client=None, client_secret=None, errors=errors)
    if isinstance(issued, service.IssuedClient):
        return ApiClientPayload(api_client=ApiClientType.from_row(issued.client), client_secret=issued.secret, errors=errors)
    return ApiClientPayload(api_client=ApiClientType.from_row(issued), client_secret=None, errors=errors)


async def _issue_client_token(
    info: Info, session: AsyncSession, client_id: str, client_secret: str, now: datetime, policy: service.AuthPolicy
) -> service.TokenPair:
    issued = await service.issue_client_token(session, client_id=client_id, client_secret=client_secret, now=now, policy=policy)
    limiter = info.context.services.get("client_limiter")
    if limiter is not None:
        # As /oauth/token: a client past its rate gets no new login session (rolled back).
        limiter.check(issued.principal)
    return issued


def _ok(result: Any, errors: list[UserError]) -> OkPayload:
    return OkPayload(ok=not errors, errors=errors)


async def _decide_binding(info: Info, id: strawberry.ID, approve: bool, *, action: str, who: str) -> HouseholdPayload:
    actor, now = info.context.caller, utcnow()

    async def work(session: AsyncSession) -> service.BindingOutcome:
        return await service.decide_household_binding(
            session, actor=actor, binding_id=decode_id(id, "HouseholdBinding"), approve=approve, now=now
        )

    verdict = "同意" if approve else "拒绝"
    return await run_mutation(
        info, module="resident", action=action,
        describe=lambda outcome: f"{who}{verdict}绑定缴费号 {outcome.account_no if outcome else id}",
        payload=_binding_payload, work=work,
    )


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=[Public], description="Staff login with username and password.",
                         extensions=[AuthMutation()])
    async def login(self, info: Info, username: str, password: str) -> AuthPayload:
        context: Context = info.context
        policy, now = _policy(info), utcnow()

        return await run_mutation(
            info, module="auth", action="login",
            describe=lambda _: f"用户 {username[:64]} 登录",
            payload=_auth_payload,
            before=lambda session: service.claim_login_attempt(session, username=username, now=now, policy=policy, ip=context.ip,
                                                               over_limit=_over_limit(info)),
            work=lambda session: service.login_staff(
                session, username=username, password=password, now=now, policy=policy,
                ip=context.ip, user_agent=context.user_agent,
            ),
            audit_input={"username": username},
            actor=lambda pair: pair.principal,
        )

    @strawberry.mutation(permission_classes=[Public], description="New tokens for a refresh token (which rotates).",
                         extensions=[AuthMutation()])
    async def refresh_token(self, info: Info, refresh_token: str) -> AuthPayload:
        policy, now = _policy(info), utcnow()

        async def revoke_if_reused(session: AsyncSession, refusal: DomainError) -> None:
            if isinstance(refusal, RefreshTokenReused):
                await service.logout(session, session_id=refusal.session_id, now=now)

        return await run_mutation(
            info, module="auth", action="refreshToken", describe=lambda _: "刷新令牌", payload=_auth_payload,
            work=lambda session: service.refresh_tokens(session, refresh_token=refresh_token, now=now, policy=policy),
            audit_input={}, actor=lambda pair: pair.principal, on_refusal=revoke_if_reused,
        )

    @strawberry.mutation(permission_classes=[Authenticated], description="End this login: its tokens stop working.")
    async def logout(self, info: Info) -> OkPayload:
        principal: Principal = info.context.caller
        now = utcnow()

        async def work(session: AsyncSession) -> None:
            if principal.session_id is not None:
                await service.logout(session, session_id=principal.session_id, now=now)

        return await run_mutation(info, module="auth", action="logout", describe=lambda _: f"{principal.name} 退出登录",
                                  payload=_ok, work=work, audit_input={})

    @strawberry.mutation(permission_classes=[Public], description="Send a login code to a resident's mobile.",
                         extensions=[AuthMutation()])
    async def request_login_code(self, info: Info, phone: str) -> LoginCodePayload:
        policy, now, ip = _policy(info), utcnow(), info.context.ip
        sender = sms_sender(info.context.settings.sms_sender)
        return await run_mutation(
            info, module="resident", action="requestLoginCode", describe=lambda _: f"向 {phone[:20]} 发送验证码",
            payload=lambda expires, errors: LoginCodePayload(expires_at=expires, errors=errors),
            before=lambda session: service.claim_code_send(session, phone=phone, now=now, policy=policy, ip=ip,
                                                           over_limit=_over_limit(info)),
            work=lambda session: service.request_login_code(session, phone=phone, now=now, policy=policy, sender=sender),
            audit_input={"phone": phone},
        )

    @strawberry.mutation(permission_classes=[Public], description="Resident login with mobile number and code.",
                         extensions=[AuthMutation()])
    async def resident_login(self, info: Info, phone: str, code: str) -> AuthPayload:
        context: Context = info.context
        policy, now = _policy(info), utcnow()

        return await run_mutation(
            info, module="resident", action="residentLogin", describe=lambda _: f"住户 {phone[:20]} 登录",
            payload=_auth_payload,
            before=lambda session: service.claim_code_attempt(session, phone=phone, now=now, policy=policy, ip=context.ip,
                                                              over_limit=_over_limit(info)),
            work=lambda session: service.login_resident(
                session, phone=phone, code=code, now=now, policy=policy, ip=context.ip, user_agent=context.user_agent
            ),
            audit_input={"phone": phone}, actor=lambda pair: pair.principal,
        )

    @strawberry.mutation(permission_classes=[Public], description="OAuth2 client credentials for third parties.",
                         extensions=[AuthMutation()])
    async def issue_client_token(self, info: Info, client_id: str, client_secret: str) -> AuthPayload:
        policy, now = _policy(info), utcnow()
        return await run_mutation(
            info, module="auth", action="issueClientToken", describe=lambda _: f"第三方 {client_id[:64]} 获取访问令牌",
            payload=_auth_payload,
            work=lambda session: _issue_client_token(info, session, client_id, client_secret, now, policy),
            audit_input={"clientId": client_id}, actor=lambda pair: pair.principal,
        )

    @strawberry.mutation(permission_classes=[Requires("resident:self")], description=(
        "Bind a household by 缴费号 and registered name. Bound at once when your phone is its registered phone; "
        "otherwise PENDING: confirm with the code sent to the registered phone (confirmHouseholdBinding), or "
        "wait for an owner or the counter to approve."), extensions=[AuthMutation()])
    async def bind_household(self, info: Info, account_no: str, name: str) -> HouseholdPayload:
        principal, policy, now = info.context.caller, _policy(info), utcnow()
        sender = sms_sender(info.context.settings.sms_sender)
        outcomes: list[service.BindingOutcome] = []

        async def work(session: AsyncSession) -> service.BindingOutcome:
            outcome = await service.bind_household(
                session, resident=principal, account_no=account_no, name=name, now=now, policy=policy
            )
            outcomes.append(outcome)
            return outcome

        answer = await run_mutation(
            info, module="resident", action="bindHousehold", describe=lambda _: f"住户绑定缴费号 {account_no[:32]}",
            payload=_binding_payload,
            before=lambda session: service.claim_bind_attempt(
                session, resident=principal, now=now, policy=policy, ip=info.context.ip, over_limit=_over_limit(info)
            ),
            work=work,
        )
        # Committed by now (a refusal raised or left no outcome): the code goes out
        # with no lock or transaction held.
        if outcomes and not answer.errors:
            await service.send_binding_code(outcomes[0], sender=sender)
        return answer

    @strawberry.mutation(permission_classes=[Requires("resident:self")],
                         description="Confirm your pending binding with the code sent to the household's registered phone.",
                         extensions=[AuthMutation()])
    async def confirm_household_binding(self, info: Info, id: strawberry.ID, code: str) -> HouseholdPayload:
        principal, policy, now = info.context.caller, _policy(info), utcnow()
        binding_pk = decode_id(id, "HouseholdBinding")
        return await run_mutation(
            info, module="resident", action="confirmHouseholdBinding", describe=lambda _: "住户以验证码确认绑定",
            payload=_binding_payload,
            before=lambda session: service.claim_binding_code_attempt(session, resident=principal, binding_id=binding_pk, now=now),
            work=lambda session: service.confirm_household_binding(
                session, resident=principal, binding_id=binding_pk, code=code, now=now, policy=policy
            ),
        )

    @strawberry.mutation(permission_classes=[Requires("resident:self")],
                         description="As the household's owner, approve or reject someone's pending binding (a tenant).")
    async def decide_household_binding(self, info: Info, id: strawberry.ID, approve: bool) -> HouseholdPayload:
        return await _decide_binding(info, id, approve, action="decideHouseholdBinding", who="户主")

    @strawberry.mutation(permission_classes=[Requires("archives:manage")],
                         description="At the counter: approve or reject a pending binding of a household in your scope.")
    async def decide_household_binding_at_counter(self, info: Info, id: strawberry.ID, approve: bool) -> HouseholdPayload:
        return await _decide_binding(info, id, approve, action="decideHouseholdBindingAtCounter", who="柜台")

    @strawberry.mutation(permission_classes=[Requires("resident:self")], description="Unbind one of your households.")
    async def unbind_household(self, info: Info, household_id: strawberry.ID) -> HouseholdPayload:
        principal, now = info.context.caller, utcnow()

        async def work(session: AsyncSession) -> Any:
            household_pk = decode_id(household_id, "Household", field="householdId")
            return await service.unbind_household(session, resident=principal, household_id=household_pk, now=now)

        return await run_mutation(
            info, module="resident", action="unbindHousehold", describe=lambda _: "住户解绑住户",
            payload=lambda h, errors: HouseholdPayload(errors=errors, household_pk=h.id if h else None),
            work=work,
        )

    @strawberry.mutation(permission_classes=[Authenticated], description="Change your own password (staff).",
                         extensions=[AuthMutation()])
    async def change_my_password(self, info: Info, current_password: str, new_password: str) -> OkPayload:
        principal, policy, now, ip = info.context.caller, _policy(info), utcnow(), info.context.ip
        return await run_mutation(
            info, module="system", action="changeMyPassword", describe=lambda _: f"{principal.name} 修改密码",
            payload=_ok,
            before=lambda session: service.claim_password_check(session, actor=principal, now=now, policy=policy, ip=ip,
                                                                over_limit=_over_limit(info)),
            work=lambda session: service.change_own_password(
                session, actor=principal, current_password=current_password, new_password=new_password, now=now, ip=ip
            ),
        )

    @strawberry.mutation(permission_classes=[Requires("users:manage")], description="Add a staff user.",
                         extensions=[AuthMutation()])
    async def create_staff_user(self, info: Info, input: CreateStaffUserInput) -> StaffUserPayload:
        actor, now = info.context.caller, utcnow()

        async def work(session: AsyncSession) -> StaffUser:
            return await service.create_staff_user(
                session, actor=actor, username=input.username, full_name=input.full_name, password=input.password,
                email=input.email, phone=input.phone, role_ids=_ids(input.role_ids, "Role", "roleIds") or (), now=now,
                unit_id=_unit_id(input.unit_id),
            )

        return await run_mutation(info, module="system", action="createStaffUser",
                                  describe=lambda _: f"新增用户 {input.username[:64]}", payload=_staff_payload, work=work)

    @strawberry.mutation(permission_classes=[Requires("users:manage")], description="Change a staff user; isActive=false deactivates.")
    async def update_staff_user(self, info: Info, id: strawberry.ID, input: UpdateStaffUserInput) -> StaffUserPayload:
        actor, now = info.context.caller, utcnow()

        async def work(session: AsyncSession) -> StaffUser:
            changes = service.StaffUserChanges(
                full_name=input.full_name, email=input.email, phone=input.phone,
                role_ids=_ids(input.role_ids, "Role", "roleIds"), is_active=input.is_active,
                unit_id=_unit_id(input.unit_id),
            )
            return await service.update_staff_user(session, actor=actor, user_id=decode_id(id, "StaffUser"), changes=changes, now=now)

        def describe(user: StaffUser | None) -> str:
            verb = "停用用户" if input.is_active is False else "修改用户"
            return f"{verb} {user.username if user else id}"

        return await run_mutation(info, module="system", action="updateStaffUser", describe=describe,
                                  payload=_staff_payload, work=work)

    @strawberry.mutation(permission_classes=[Requires("users:manage")], description="Set a staff user's password; their logins end.",
                         extensions=[AuthMutation()])
    async def set_staff_user_password(self, info: Info, id: strawberry.ID, password: str) -> StaffUserPayload:
        actor, now = info.context.caller, utcnow()

        async def work(session: AsyncSession) -> StaffUser:
            return await service.set_staff_password(session, actor=actor, user_id=decode_id(id, "StaffUser"), password=password, now=now)

        return await run_mutation(info, module="system", action="setStaffUserPassword",
                                  describe=lambda u: f"重置用户 {u.username if u else id} 的密码", payload=_staff_payload, work=work)

    @strawberry.mutation(permission_classes=[Requires("users:manage")],
                         description="Lift a staff user's login locks (from every address) after failed logins.")
    async def unlock_staff_user(self, info: Info, id: strawberry.ID) -> StaffUserPayload:
        actor = info.context.caller

        async def work(session: AsyncSession) -> StaffUser:
            return await service.unlock_staff_user(session, actor=actor, user_id=decode_id(id, "StaffUser"))

        return await run_mutation(info, module="system", action="unlockStaffUser",
                                  describe=lambda u: f"解锁用户 {u.username if u else id} 的登录", payload=_staff_payload, work=work)

    @strawberry.mutation(permission_classes=[Requires("users:manage")], description="Delete a user without history.")
    async def delete_staff_user(self, info: Info, id: strawberry.ID) -> StaffUserPayload:
        actor = info.context.caller

        async def work(session: AsyncSession) -> StaffUser:
            return await service.delete_staff_user(session, actor=actor, user_id=decode_id(id, "StaffUser"))

        return await run_mutation(info, module="system", action="deleteStaffUser",
                                  describe=lambda u: f"删除用户 {u.username if u else id}", payload=_staff_payload, work=work)

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

        return await run_mutation(info, module="system", action="createRole",
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

        return await run_mutation(info, module="system", action="updateRole", describe=describe, payload=_role_payload, work=work)

    @strawberry.mutation(permission_classes=[Requires("roles:manage")], description="Delete a role no user or child role uses.")
    async def delete_role(self, info: Info, id: strawberry.ID) -> RolePayload:
        actor = info.context.caller

        async def work(session: AsyncSession) -> Role:
            return await service.delete_role(session, actor=actor, role_id=decode_id(id, "Role"))

        return await run_mutation(info, module="system", action="deleteRole",
                                  describe=lambda r: f"删除角色 {r.name if r else id}", payload=_role_payload, work=work)

    @strawberry.mutation(permission_classes=[Requires("clients:manage")], description="Register a third party; the secret is shown once.",
                         extensions=[AuthMutation()])
    async def create_api_client(self, info: Info, input: ApiClientInput) -> ApiClientPayload:
        actor = info.context.caller

        async def work(session: AsyncSession) -> service.IssuedClient:
            return await service.create_api_client(
                session, actor=actor, name=input.name, scopes=input.scopes,
                area_ids=_ids(input.area_ids, "Area", "areaIds") or (), rate_per_minute=input.rate_per_minute,
            )

        return await run_mutation(info, module="system", action="createApiClient",
                                  describe=lambda _: f"新增第三方接口 {input.name[:64]}", payload=_client_payload, work=work)

    @strawberry.mutation(permission_classes=[Requires("clients:manage")], description="New secret for a client; old tokens end.",
                         extensions=[AuthMutation()])
    async def rotate_api_client_secret(self, info: Info, id: strawberry.ID) -> ApiClientPayload:
        actor, now = info.context.caller, utcnow()

        async def work(session: AsyncSession) -> service.IssuedClient:
            return await service.rotate_api_client_secret(session, actor=actor, client_pk=decode_id(id, "ApiClient"), now=now)

        return await run_mutation(info, module="system", action="rotateApiClientSecret",
                                  describe=lambda r: f"重置第三方接口 {r.client.name if r else id} 的密钥",
                                  payload=_client_payload, work=work)

    @strawberry.mutation(permission_classes=[Requires("clients:manage")], description="Enable or disable a client.")
    async def set_api_client_active(self, info: Info, id: strawberry.ID, is_active: bool) -> ApiClientPayload:
        actor, now = info.context.caller, utcnow()

        async def work(session: AsyncSession) -> ApiClient:
            client_pk = decode_id(id, "ApiClient")
            return await service.set_api_client_active(session, actor=actor, client_pk=client_pk, is_active=is_active, now=now)

        return await run_mutation(info, module="system", action="setApiClientActive",
                                  describe=lambda c: f"{'启用' if is_active else '停用'}第三方接口 {c.name if c else id}",
                                  payload=_client_payload, work=work)

# The node(id:) fetchers of this module's types (collected by the root schema).
NODES = {
    "StaffUser": _fetch_staff_user,
    "Role": _fetch_role,
    "ApiClient": _fetch_api_client,
}
