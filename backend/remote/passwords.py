"""Execution passwords (执行密码): a staff user's second password for remote control.

- argon2, through auth's hashing (``backend.auth.security``), never the login password:
  :func:`set_execution_password` checks the login password and refuses the same one.
- :func:`verify_execution_password` only checks; a wrong try is counted by
  :func:`record_wrong_execution_password`, which the caller runs in a transaction that
  stands although the command is refused (GraphQL: ``run_mutation``'s ``on_refusal``).
  The 5th wrong try in a row locks it; a right one resets the count.
- An administrator (``users:manage``, the user's unit in their scope) resets or unlocks
  it. Every change is a mutation, so the operation log has it; the lock itself writes an
  entry too (``lockExecutionPassword``), whoever's wrong try caused it.

Plain async functions over a session; the caller commits.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.audit.service import record_operation
from backend.auth.models import StaffUser
from backend.auth.principal import Principal
from backend.auth.scope import unit_visible
from backend.auth.security import hash_password_off_loop, verify_password_off_loop
from backend.errors import Forbidden, NotFound
from backend.remote.errors import (
    MAX_WRONG_TRIES,
    ExecutionPasswordInvalid,
    ExecutionPasswordLocked,
    ExecutionPasswordNotSet,
    ExecutionPasswordWrong,
)
from backend.remote.models import ExecutionPassword

MIN_LENGTH = 6
MAX_LENGTH = 64
MANAGE = "users:manage"


def _check_shape(password: str) -> None:
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH or password.strip() != password:
        raise ExecutionPasswordInvalid(f"执行密码须为 {MIN_LENGTH} 至 {MAX_LENGTH} 个字符, 首尾不能有空格",
                                       f"An execution password is {MIN_LENGTH} to {MAX_LENGTH} characters, "
                                       "without leading or trailing spaces")


async def _store(session: AsyncSession, staff_user_id: int, password: str, now: datetime) -> ExecutionPassword:
    password_hash = await hash_password_off_loop(password)
    found = await session.get(ExecutionPassword, staff_user_id, with_for_update=True)
    if found is None:
        found = ExecutionPassword(staff_user_id=staff_user_id, password_hash=password_hash, failed_attempts=0,
                                  set_at=now, updated_at=now)
        session.add(found)
    else:
        found.password_hash, found.failed_attempts, found.locked_at = password_hash, 0, None
        found.set_at = found.updated_at = now
    await session.flush()
    return found


async def set_execution_password(
    session: AsyncSession, *, user: Principal, login_password: str, new_password: str, now: datetime,
) -> ExecutionPassword:
    """A staff user sets (or changes) their own execution password, proving who they are
    with their login password (INVALID_CREDENTIALS on currentPassword otherwise). It must
    differ from the login password. Setting it also unlocks it."""
    from backend.auth.errors import InvalidCredentials

    if not user.is_staff:
        raise Forbidden()
    login_hash = (await session.execute(select(col(StaffUser.password_hash)).where(col(StaffUser.id) == user.id))
                  ).scalar_one_or_none()
    if login_hash is None:
        raise NotFound()
    if not await verify_password_off_loop(login_hash, login_password):
        raise InvalidCredentials("登录密码错误", "The login password is wrong", field="loginPassword")
    _check_shape(new_password)
    if new_password == login_password:
        raise ExecutionPasswordInvalid("执行密码不能与登录密码相同", "The execution password must differ from the login password")
    return await _store(session, user.id, new_password, now)


async def _managed_user(session: AsyncSession, actor: Principal, staff_user_id: int) -> StaffUser:
    if not actor.has(MANAGE):
        raise Forbidden()
    user = (await session.execute(select(StaffUser).where(
        col(StaffUser.id) == staff_user_id, unit_visible(col(StaffUser.area_id), actor.scope_patterns())))
    ).scalar_one_or_none()
    if user is None:
        raise NotFound(field="userId")
    return user


async def reset_execution_password(
    session: AsyncSession, *, actor: Principal, staff_user_id: int, new_password: str, now: datetime,
) -> ExecutionPassword:
    """An administrator gives a user (of a unit in their scope) a new execution password,
    unlocked; the user should change it with :func:`set_execution_password`."""
    await _managed_user(session, actor, staff_user_id)
    _check_shape(new_password)
    return await _store(session, staff_user_id, new_password, now)


async def unlock_execution_password(
    session: AsyncSession, *, actor: Principal, staff_user_id: int, now: datetime,
) -> ExecutionPassword:
    """An administrator unlocks a user's execution password (the wrong-try count restarts)."""
    await _managed_user(session, actor, staff_user_id)
    found = await session.get(ExecutionPassword, staff_user_id, with_for_update=True)
    if found is None:
        raise ExecutionPasswordNotSet()
    found.failed_attempts, found.locked_at, found.updated_at = 0, None, now
    await session.flush()
    return found


async def execution_password_state(session: AsyncSession, *, staff_user_id: int) -> ExecutionPassword | None:
    return await session.get(ExecutionPassword, staff_user_id, populate_existing=True)


async def verify_execution_password(session: AsyncSession, *, user: Principal, password: str) -> None:
    """Pass when ``password`` is ``user``'s execution password and it is not locked;
    EXECUTION_PASSWORD_NOT_SET, _LOCKED or _WRONG otherwise (nothing written: count a
    wrong try with :func:`record_wrong_execution_password`). A right try resets the count."""
    if not user.is_staff:
        raise Forbidden()
    found = await session.get(ExecutionPassword, user.id, populate_existing=True)
    if found is None:
        raise ExecutionPasswordNotSet()
    if found.locked_at is not None:
        raise ExecutionPasswordLocked()
    if not await verify_password_off_loop(found.password_hash, password):
        raise ExecutionPasswordWrong(staff_user_id=user.id, tries_left=max(MAX_WRONG_TRIES - found.failed_attempts - 1, 0))
    if found.failed_attempts:
        await session.execute(update(ExecutionPassword).where(col(ExecutionPassword.staff_user_id) == user.id)
                              .values(failed_attempts=0))


async def record_wrong_execution_password(
    session: AsyncSession, *, user: Principal, now: datetime, ip: str | None = None, request_id: str | None = None,
) -> int:
    """Count one wrong try of ``user``'s execution password (an atomic increment, so
    concurrent tries all count); the 5th in a row locks it and writes the operation-log
    entry ``lockExecutionPassword``. Returns the tries left before the lock."""
    failed, locked_at = (await session.execute(
        update(ExecutionPassword).where(col(ExecutionPassword.staff_user_id) == user.id)
        .values(failed_attempts=ExecutionPassword.failed_attempts + 1, updated_at=now)  # type: ignore[operator]
        .returning(col(ExecutionPassword.failed_attempts), col(ExecutionPassword.locked_at)))).one()
    if failed >= MAX_WRONG_TRIES and locked_at is None:
        await session.execute(update(ExecutionPassword).where(col(ExecutionPassword.staff_user_id) == user.id)
                              .values(locked_at=now))
        await record_operation(
            session, at=now, actor=user, module="remote", action="lockExecutionPassword",
            summary=f"执行密码连续错误 {MAX_WRONG_TRIES} 次, 已锁定 ({user.name})", payload={"staffUserId": user.id},
            success=True, ip=ip, request_id=request_id)
    return max(MAX_WRONG_TRIES - failed, 0)
