"""Staff users (用户): profiles, roles, activation, passwords, deletion of users without
history, and their lists."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, Select, Text, column, delete, exists, func, or_, select, table, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth import errors
from backend.auth.models import ApiClient, AuthSession, LoginFailure, PrincipalKind, Role, StaffUser, StaffUserRole
from backend.auth.principal import Principal
from backend.auth.scope import unit_visible
from backend.auth.security import check_password_strength, hash_password_off_loop, verify_password_off_loop
from backend.auth.service.grants import _check_grantable, _role_grants, _unit_for
from backend.auth.service.roles import roles_by_ids
from backend.auth.service.sessions import _revoke_all
from backend.auth.service.throttles import _source
from backend.errors import DomainError, Forbidden, NotFound, ValidationFailed

USERNAME = re.compile(r"^[A-Za-z0-9_.\-]{3,64}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PHONE = re.compile(r"^\+?\d[\d\-]{5,19}$")


@dataclass(frozen=True, slots=True)
class StaffUserChanges:
    full_name: str | None = None
    email: str | None = None
    phone: str | None = None
    role_ids: frozenset[int] | None = None
    is_active: bool | None = None
    unit_id: int | None = None


def _validate_profile(*, username: str | None, full_name: str | None, email: str | None, phone: str | None) -> None:
    problems: list[DomainError] = []
    if username is not None and not USERNAME.match(username):
        problems.append(DomainError("用户名须为 3-64 位字母、数字、下划线、点或短横线",
                                    "A username has 3 to 64 letters, digits, _ . or -", field="username"))
    if full_name is not None and not (0 < len(full_name.strip()) <= 64):
        problems.append(DomainError("用户姓名须为 1-64 个字符", "A full name has 1 to 64 characters", field="fullName"))
    if email and not EMAIL.match(email):
        problems.append(DomainError("电子邮箱格式错误", "Malformed email address", field="email"))
    if phone and not PHONE.match(phone):
        problems.append(DomainError("联系电话格式错误", "Malformed phone number", field="phone"))
    if problems:
        raise ValidationFailed(problems)


async def _check_roles_assignable(
    session: AsyncSession, actor: Principal, role_ids: frozenset[int], held: frozenset[int] = frozenset()
) -> None:
    """The roles exist, hold nothing beyond the actor's grants, and those not already
    ``held`` by the user lie in the actor's scope (an unseen role is unknown)."""
    found = await roles_by_ids(session, role_ids)
    if len(found) != len(role_ids):
        raise NotFound("角色不存在", "Unknown role", field="roleIds")
    added = sorted(role_ids - held)
    if added:
        visible = (await session.execute(select(func.count()).select_from(Role).where(  # type: ignore[arg-type]
            Role.id.in_(added), unit_visible(Role.area_id, actor.scope_patterns())))).scalar_one()  # type: ignore[union-attr]
        if visible != len(added):
            raise NotFound("角色不存在", "Unknown role", field="roleIds")
    permissions, paths = await _role_grants(session, sorted(role_ids))
    _check_grantable(actor, permissions, paths, field="roleIds")


async def _check_user_editable(session: AsyncSession, actor: Principal, user_id: int) -> StaffUser:
    """The user, locked, when their unit lies in the actor's scope (NOT_FOUND otherwise)
    and they hold nothing beyond the actor's grants."""
    user = (await session.execute(
        select(StaffUser).where(StaffUser.id == user_id, unit_visible(StaffUser.area_id, actor.scope_patterns()))  # type: ignore[arg-type]
        .with_for_update(of=StaffUser)  # type: ignore[arg-type]
    )).scalars().first()
    if user is None:
        raise NotFound(field="id")
    current = (await session.execute(select(StaffUserRole.role_id).where(StaffUserRole.user_id == user_id))).scalars().all()  # type: ignore[call-overload,arg-type]
    permissions, paths = await _role_grants(session, list(current))
    if not permissions <= actor.permissions or not all(actor.in_scope(p) for p in paths):
        raise errors.GrantExceedsOwn("不能修改权限高于自己的用户", "You cannot change a user who holds more than you", field="id")
    return user


async def _set_user_roles(session: AsyncSession, user_id: int, role_ids: frozenset[int]) -> None:
    await session.execute(delete(StaffUserRole).where(StaffUserRole.user_id == user_id))  # type: ignore[arg-type]
    if role_ids:
        await session.execute(insert(StaffUserRole), [{"user_id": user_id, "role_id": r} for r in sorted(role_ids)])


async def create_staff_user(
    session: AsyncSession,
    *,
    actor: Principal,
    username: str,
    full_name: str,
    password: str,
    role_ids: Iterable[int] = (),
    email: str | None = None,
    phone: str | None = None,
    now: datetime,
    unit_id: int | None = None,
) -> StaffUser:
    """Add a staff user belonging to unit ``unit_id`` (default: the actor's own top area)."""
    username = username.strip()
    _validate_profile(username=username, full_name=full_name, email=email, phone=phone)
    check_password_strength(password)
    if (await session.execute(select(StaffUser.id).where(StaffUser.username == username))).first() is not None:  # type: ignore[call-overload]
        raise errors.Duplicate("用户名已存在", "This username is taken", field="username")
    wanted_roles = frozenset(role_ids)
    await _check_roles_assignable(session, actor, wanted_roles)
    unit = await _unit_for(session, actor, unit_id)
    user = StaffUser(
        username=username, full_name=full_name.strip(), email=email or None, phone=phone or None,
        password_hash=await hash_password_off_loop(password), created_at=now, updated_at=now, area_id=unit,
    )
    session.add(user)
    await session.flush()
    assert user.id is not None
    await _set_user_roles(session, user.id, wanted_roles)
    return user


async def update_staff_user(
    session: AsyncSession, *, actor: Principal, user_id: int, changes: StaffUserChanges, now: datetime
) -> StaffUser:
    if changes.is_active is False and user_id == actor.id and actor.is_staff:
        raise errors.CannotDeactivateSelf(field="isActive")
    user = await _check_user_editable(session, actor, user_id)
    _validate_profile(username=None, full_name=changes.full_name, email=changes.email, phone=changes.phone)
    if changes.full_name is not None:
        user.full_name = changes.full_name.strip()
    if changes.email is not None:
        user.email = changes.email or None
    if changes.phone is not None:
        user.phone = changes.phone or None
    if changes.role_ids is not None:
        held = frozenset((await user_role_ids(session, [user_id]))[user_id])
        await _check_roles_assignable(session, actor, changes.role_ids, held)
        await _set_user_roles(session, user_id, changes.role_ids)
    if changes.unit_id is not None:
        user.area_id = await _unit_for(session, actor, changes.unit_id)
    if changes.is_active is not None:
        user.is_active = changes.is_active
        if not changes.is_active:
            await _revoke_all(session, PrincipalKind.staff, user_id, now)
    user.updated_at = now
    await session.flush()
    return user


async def set_staff_password(
    session: AsyncSession, *, actor: Principal, user_id: int, password: str, now: datetime
) -> StaffUser:
    """An administrator sets a new password; the user's logins end."""
    user = await _check_user_editable(session, actor, user_id)
    check_password_strength(password)
    user.password_hash = await hash_password_off_loop(password)
    user.updated_at = now
    await _revoke_all(session, PrincipalKind.staff, user_id, now)
    await session.flush()
    return user


async def change_own_password(
    session: AsyncSession, *, actor: Principal, current_password: str, new_password: str, now: datetime,
    ip: str | None = None,
) -> StaffUser:
    """Change one's own password; other logins end, this one stays."""
    if not actor.is_staff:
        raise Forbidden()
    user = await session.get(StaffUser, actor.id, with_for_update=True)
    if user is None:
        raise NotFound()
    if not await verify_password_off_loop(user.password_hash, current_password):
        raise errors.InvalidCredentials("当前密码错误", "The current password is wrong", field="currentPassword")
    await session.execute(
        delete(LoginFailure).where(LoginFailure.username == user.username, LoginFailure.source == _source(ip))  # type: ignore[arg-type]
    )
    check_password_strength(new_password, field="newPassword")
    user.password_hash = await hash_password_off_loop(new_password)
    user.updated_at = now
    await session.execute(
        update(AuthSession)
        .where(AuthSession.principal_kind == PrincipalKind.staff, AuthSession.principal_id == actor.id,  # type: ignore[arg-type]
               AuthSession.revoked_at.is_(None), AuthSession.id != actor.session_id)  # type: ignore[union-attr,arg-type]
        .values(revoked_at=now, refresh_hash=None)
    )
    await session.flush()
    return user


# Who acted, as the operation log records it: a user with entries has history. Read
# through a table clause of its own (the audit layer, which owns the table, builds on auth).
_LOGGED_ACTORS = table("audit_log", column("actor_kind", Text), column("actor_id", BigInteger))


async def delete_staff_user(session: AsyncSession, *, actor: Principal, user_id: int) -> StaffUser:
    """Delete a user who never did anything; one with history must be deactivated."""
    if user_id == actor.id and actor.is_staff:
        raise errors.CannotDeactivateSelf(field="id")
    user = await _check_user_editable(session, actor, user_id)
    history = await session.execute(
        select(
            exists().where(_LOGGED_ACTORS.c.actor_kind == PrincipalKind.staff.value, _LOGGED_ACTORS.c.actor_id == user_id)
            | exists().where(AuthSession.principal_kind == PrincipalKind.staff, AuthSession.principal_id == user_id)  # type: ignore[arg-type]
            | exists().where(ApiClient.created_by == user_id)  # type: ignore[arg-type]
        )
    )
    if history.scalar_one():
        raise errors.HasHistory(field="id")
    await _set_user_roles(session, user_id, frozenset())
    await session.delete(user)
    await session.flush()
    return user


def staff_users_statement(
    *, scope_patterns: Sequence[str] | None, search: str | None = None, is_active: bool | None = None
) -> Select[StaffUser]:
    """Staff users whose unit lies in the scope (``None``: all, for system callers)."""
    statement = select(StaffUser).where(unit_visible(StaffUser.area_id, scope_patterns))  # type: ignore[arg-type]
    if search:
        like = f"%{search}%"
        statement = statement.where(
            or_(StaffUser.username.ilike(like), StaffUser.full_name.ilike(like), StaffUser.phone.ilike(like))  # type: ignore[union-attr,attr-defined]
        )
    if is_active is not None:
        statement = statement.where(StaffUser.is_active == is_active)  # type: ignore[arg-type]
    return statement.order_by(StaffUser.id)  # type: ignore[arg-type]


async def user_role_ids(session: AsyncSession, user_ids: Sequence[int]) -> dict[int, list[int]]:
    rows = (await session.execute(
        select(StaffUserRole.user_id, StaffUserRole.role_id)  # type: ignore[call-overload]
        .where(StaffUserRole.user_id.in_(user_ids)).order_by(StaffUserRole.role_id)  # type: ignore[attr-defined]
    )).all()
    found: dict[int, list[int]] = {user_id: [] for user_id in user_ids}
    for user_id, role_id in rows:
        found[user_id].append(role_id)
    return found
