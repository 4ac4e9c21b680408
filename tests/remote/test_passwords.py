"""Execution passwords (执行密码): set with the login password, verified, locked after 5
wrong tries in a row (the lock audited), reset and unlocked by an administrator."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.audit.models import AuditEntry
from backend.auth.errors import InvalidCredentials
from backend.auth.principal import Principal
from backend.errors import DomainError, ErrorCode, Forbidden, NotFound
from backend.remote import passwords
from backend.remote.errors import ExecutionPasswordLocked, ExecutionPasswordNotSet, ExecutionPasswordWrong
from tests.factories import ROOT, AreaTree, Staff, make_area_tree, make_staff
from tests.remote.support import NOW
from tests.workorders.support import staff_member

EXECUTION = "Exec-4321"
Prepared = tuple[AreaTree, Staff]


@pytest.fixture
async def user_with_password(session: AsyncSession) -> Prepared:
    # Given by an administrator (one argon2 hash; the login password's is only hashed
    # where a test needs it: each costs ~0.15 s).
    tree = await make_area_tree(session)
    staff = await staff_member(session, permissions={"remote:control"}, area=tree.east)
    await passwords.reset_execution_password(session, actor=ROOT, staff_user_id=staff.principal.id,
                                             new_password=EXECUTION, now=NOW)
    return tree, staff


async def _wrong(session: AsyncSession, principal: Principal) -> int:
    """A wrong try as the API records it: refused, then counted."""
    with pytest.raises(ExecutionPasswordWrong):
        await passwords.verify_execution_password(session, user=principal, password="not-it-1")
    return await passwords.record_wrong_execution_password(session, user=principal, now=NOW)


async def test_set_with_the_login_password_it_passes_and_the_login_password_does_not(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    staff = await make_staff(session, permissions={"remote:control"}, areas=[tree.east])

    with pytest.raises(InvalidCredentials) as wrong_login:
        await passwords.set_execution_password(session, user=staff.principal, login_password="wrong-login-1",
                                               new_password=EXECUTION, now=NOW)
    with pytest.raises(DomainError) as same:
        await passwords.set_execution_password(session, user=staff.principal, login_password=staff.password,
                                               new_password=staff.password, now=NOW)
    with pytest.raises(DomainError) as short:
        await passwords.set_execution_password(session, user=staff.principal, login_password=staff.password,
                                               new_password="12345", now=NOW)
    await passwords.set_execution_password(session, user=staff.principal, login_password=staff.password,
                                           new_password=EXECUTION, now=NOW)

    assert wrong_login.value.field == "loginPassword"
    assert (same.value.code, short.value.code) == (ErrorCode.EXECUTION_PASSWORD_INVALID,) * 2
    await passwords.verify_execution_password(session, user=staff.principal, password=EXECUTION)
    with pytest.raises(ExecutionPasswordWrong):
        await passwords.verify_execution_password(session, user=staff.principal, password=staff.password)


async def test_five_wrong_tries_in_a_row_lock_it_and_the_lock_is_audited(session: AsyncSession, user_with_password: Prepared) -> None:
    _, staff = user_with_password

    left = [await _wrong(session, staff.principal) for _ in range(5)]

    assert left == [4, 3, 2, 1, 0]
    with pytest.raises(ExecutionPasswordLocked):
        await passwords.verify_execution_password(session, user=staff.principal, password=EXECUTION)
    logged = (await session.execute(select(AuditEntry).where(AuditEntry.action == "lockExecutionPassword",  # type: ignore[arg-type]
                                                             AuditEntry.actor_id == staff.user.id))).scalars().all()  # type: ignore[arg-type]
    assert [(e.module, e.success) for e in logged] == [("remote", True)]


async def test_a_right_try_restarts_the_count(session: AsyncSession, user_with_password: Prepared) -> None:
    _, staff = user_with_password
    for _ in range(4):
        await _wrong(session, staff.principal)

    await passwords.verify_execution_password(session, user=staff.principal, password=EXECUTION)

    assert await _wrong(session, staff.principal) == 4


async def test_an_administrator_unlocks_it_and_resets_it(session: AsyncSession, user_with_password: Prepared) -> None:
    tree, staff = user_with_password
    admin = await staff_member(session, permissions={"users:manage"}, area=tree.company)
    for _ in range(5):
        await _wrong(session, staff.principal)

    await passwords.unlock_execution_password(session, actor=admin.principal, staff_user_id=staff.principal.id, now=NOW)
    await passwords.verify_execution_password(session, user=staff.principal, password=EXECUTION)
    await passwords.reset_execution_password(session, actor=admin.principal, staff_user_id=staff.principal.id,
                                             new_password="Reset-2026", now=NOW)

    await passwords.verify_execution_password(session, user=staff.principal, password="Reset-2026")


async def test_only_an_administrator_whose_scope_covers_the_user_resets_it(session: AsyncSession, user_with_password: Prepared) -> None:
    tree, staff = user_with_password
    west_admin = await staff_member(session, permissions={"users:manage"}, area=tree.west)
    no_grant = await staff_member(session, permissions={"remote:control"}, area=tree.company)

    with pytest.raises(NotFound):
        await passwords.reset_execution_password(session, actor=west_admin.principal, staff_user_id=staff.principal.id,
                                                 new_password="Reset-2026", now=NOW)
    with pytest.raises(Forbidden):
        await passwords.unlock_execution_password(session, actor=no_grant.principal, staff_user_id=staff.principal.id,
                                                  now=NOW)


async def test_a_user_without_one_is_told_to_set_it(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    staff = await staff_member(session, permissions={"remote:control"}, area=tree.east)

    with pytest.raises(ExecutionPasswordNotSet):
        await passwords.verify_execution_password(session, user=staff.principal, password="anything-1")
