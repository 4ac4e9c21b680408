"""Staff users (用户管理): one's own password, and an administrator's create, update, set
password, unlock and delete."""

from __future__ import annotations

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.auth import service
from backend.auth.models import StaffUser
from backend.auth.schema.mutations.common import OkPayload, _ids, _ok, _over_limit, _policy, _unit_id
from backend.auth.schema.types import StaffUserType
from backend.clock import utcnow
from backend.graphql.errors import UserError
from backend.graphql.limits import AuthMutation
from backend.graphql.mutations import run_mutation
from backend.graphql.permissions import Authenticated, Requires
from backend.graphql.relay import decode_id


@strawberry.type
class StaffUserPayload:
    staff_user: StaffUserType | None
    errors: list[UserError]


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


def _staff_payload(user: StaffUser | None, errors: list[UserError]) -> StaffUserPayload:
    return StaffUserPayload(staff_user=StaffUserType.from_row(user) if user else None, errors=errors)


@strawberry.type
class StaffUserMutations:
    @strawberry.mutation(permission_classes=[Authenticated], description="Change your own password (staff).",
                         extensions=[AuthMutation()])
    async def change_my_password(self, info: Info, current_password: str, new_password: str) -> OkPayload:
        principal, policy, now, ip = info.context.caller, _policy(info), utcnow(), info.context.ip
        return await run_mutation(
            info, action="changeMyPassword", describe=lambda _: f"{principal.name} 修改密码",
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

        return await run_mutation(info, action="createStaffUser",
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

        # Changing only a user's roles is what the brochure's log calls 分配角色.
        only_roles = input.role_ids is not None and all(
            value is None for value in (input.full_name, input.email, input.phone, input.is_active, input.unit_id))

        def describe(user: StaffUser | None) -> str:
            name = user.username if user else id
            if only_roles:
                return f"给用户 {name} 分配角色"
            return f"{'停用用户' if input.is_active is False else '修改用户'} {name}"

        return await run_mutation(info, action="assignRoles" if only_roles else "updateStaffUser", describe=describe,
                                  payload=_staff_payload, work=work)

    @strawberry.mutation(permission_classes=[Requires("users:manage")], description="Set a staff user's password; their logins end.",
                         extensions=[AuthMutation()])
    async def set_staff_user_password(self, info: Info, id: strawberry.ID, password: str) -> StaffUserPayload:
        actor, now = info.context.caller, utcnow()

        async def work(session: AsyncSession) -> StaffUser:
            return await service.set_staff_password(session, actor=actor, user_id=decode_id(id, "StaffUser"), password=password, now=now)

        return await run_mutation(info, action="setStaffUserPassword",
                                  describe=lambda u: f"重置用户 {u.username if u else id} 的密码", payload=_staff_payload, work=work)

    @strawberry.mutation(permission_classes=[Requires("users:manage")],
                         description="Lift a staff user's login locks (from every address) after failed logins.")
    async def unlock_staff_user(self, info: Info, id: strawberry.ID) -> StaffUserPayload:
        actor = info.context.caller

        async def work(session: AsyncSession) -> StaffUser:
            return await service.unlock_staff_user(session, actor=actor, user_id=decode_id(id, "StaffUser"))

        return await run_mutation(info, action="unlockStaffUser",
                                  describe=lambda u: f"解锁用户 {u.username if u else id} 的登录", payload=_staff_payload, work=work)

    @strawberry.mutation(permission_classes=[Requires("users:manage")], description="Delete a user without history.")
    async def delete_staff_user(self, info: Info, id: strawberry.ID) -> StaffUserPayload:
        actor = info.context.caller

        async def work(session: AsyncSession) -> StaffUser:
            return await service.delete_staff_user(session, actor=actor, user_id=decode_id(id, "StaffUser"))

        return await run_mutation(info, action="deleteStaffUser",
                                  describe=lambda u: f"删除用户 {u.username if u else id}", payload=_staff_payload, work=work)
