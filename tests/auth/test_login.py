"""Staff password login and the lockout per username and source address (backend/auth/service/login.py)."""

from __future__ import annotations

import dataclasses
import inspect
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth import errors
from backend.auth import service as auth
from backend.auth.models import PrincipalKind
from backend.auth.service import StaffUserChanges
from backend.errors import NotFound
from tests.auth.support import NOW, POLICY, log_in, row_count
from tests.factories import ROOT, make_area_tree, make_staff


@pytest.mark.parametrize(("claim", "throttle_inputs"), [
    (auth.claim_login_attempt, ("policy", "ip")),
    (auth.claim_password_check, ("policy", "ip")),
    (auth.claim_code_attempt, ("policy", "ip")),
])
def test_a_throttle_claim_cannot_be_called_without_its_address_or_policy(claim: object, throttle_inputs: tuple[str, ...]) -> None:
    # A default would let a caller skip the caps (no policy) or count every address as one (no ip).
    parameters = inspect.signature(claim).parameters  # type: ignore[arg-type]

    assert {name: parameters[name].default for name in throttle_inputs} == dict.fromkeys(throttle_inputs, inspect.Parameter.empty)


def test_the_auth_policy_has_no_defaults_that_could_drift_from_the_settings() -> None:
    defaulted = [field.name for field in dataclasses.fields(auth.AuthPolicy)
                 if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING]

    assert defaulted == []


async def fail_login(session: AsyncSession, username: str, *, now: datetime) -> int:
    """An attempt that fails: counted before the password check, never cleared.

    (The refusal itself is pinned once below; hashing a wrong password per failure would
    cost ~0.1 s each.)"""
    return await auth.claim_login_attempt(session, username=username, now=now, policy=POLICY, ip="203.0.113.9")


async def locked_until(session: AsyncSession, username: str) -> datetime | None:
    row = await session.execute(text("SELECT locked_until FROM login_failures WHERE username = :u"), {"u": username})
    value: datetime | None = row.scalar_one()
    return value


async def counted_failures(session: AsyncSession, username: str) -> int | None:
    row = await session.execute(text("SELECT failures FROM login_failures WHERE username = :u"), {"u": username})
    value: int | None = row.scalar_one_or_none()
    return value


async def test_right_password_gives_tokens_whose_access_token_authenticates_to_the_same_principal(
    session: AsyncSession,
) -> None:
    tree = await make_area_tree(session)
    staff = await make_staff(session, permissions={"readings:read", "statistics:read"}, areas=[tree.east])

    pair = await log_in(session, staff)

    assert pair.principal.kind is PrincipalKind.staff
    assert pair.principal.id == staff.user.id
    assert pair.principal.permissions == frozenset({"readings:read", "statistics:read"})
    assert pair.principal.scope_paths == (tree.east.path,)
    assert pair.access_expires_at == NOW + timedelta(seconds=POLICY.access_ttl_s)
    assert pair.refresh_token is not None
    assert pair.refresh_expires_at == NOW + timedelta(seconds=POLICY.refresh_ttl_s)
    authenticated = await auth.authenticate(
        session, token=pair.access_token, now=NOW + timedelta(minutes=1), policy=POLICY
    )
    assert authenticated == pair.principal
    assert authenticated.session_id is not None
    assert staff.user.last_login_at == NOW


async def test_login_trims_the_username(session: AsyncSession) -> None:
    staff = await make_staff(session)

    pair = await auth.login_staff(
        session, username=f"  {staff.username} ", password=staff.password, now=NOW, policy=POLICY
    )

    assert pair.principal.id == staff.user.id


async def test_unknown_user_and_wrong_password_get_the_same_refusal_and_open_no_session(
    session: AsyncSession,
) -> None:
    staff = await make_staff(session)
    sessions_before = await row_count(session, "auth_sessions")

    with pytest.raises(errors.InvalidCredentials) as unknown:
        await auth.login_staff(session, username="nobody-here", password=staff.password, now=NOW, policy=POLICY, ip="203.0.113.9")
    with pytest.raises(errors.InvalidCredentials) as wrong:
        await auth.login_staff(session, username=staff.username, password="Wrong-passw0rd", now=NOW, policy=POLICY, ip="203.0.113.9")

    assert (unknown.value.message, unknown.value.field) == (wrong.value.message, wrong.value.field)
    assert wrong.value.field is None
    assert await row_count(session, "auth_sessions") == sessions_before


async def test_a_wrong_password_counts_one_failure_against_the_username(session: AsyncSession) -> None:
    staff = await make_staff(session)

    counted = await auth.claim_login_attempt(session, username=staff.username, now=NOW, policy=POLICY, ip="203.0.113.9")
    with pytest.raises(errors.InvalidCredentials):
        await auth.login_staff(session, username=staff.username, password="Wrong-passw0rd", now=NOW, policy=POLICY, ip="203.0.113.9")

    assert counted == 1
    assert await counted_failures(session, staff.username) == 1
    assert await locked_until(session, staff.username) is None


async def test_fourth_wrong_password_does_not_lock(session: AsyncSession) -> None:
    staff = await make_staff(session)

    counts = [await fail_login(session, staff.username, now=NOW + timedelta(minutes=m)) for m in range(4)]

    assert counts == [1, 2, 3, 4]
    assert await locked_until(session, staff.username) is None
    pair = await log_in(session, staff, now=NOW + timedelta(minutes=4))
    assert pair.principal.id == staff.user.id


async def test_fifth_wrong_password_locks_the_source_for_one_minute(session: AsyncSession) -> None:
    staff = await make_staff(session)
    fifth_at = NOW + timedelta(minutes=4)

    counts = [await fail_login(session, staff.username, now=NOW + timedelta(minutes=m)) for m in range(5)]

    assert counts == [1, 2, 3, 4, 5]
    assert await locked_until(session, staff.username) == fifth_at + timedelta(minutes=1)
    with pytest.raises(errors.AccountLocked) as refused:
        await log_in(session, staff, now=fifth_at)
    assert refused.value.message == "登录失败次数过多, 请 1 分钟后再试"
    with pytest.raises(errors.AccountLocked):
        await log_in(session, staff, now=fifth_at + timedelta(minutes=1) - timedelta(seconds=1))


async def test_failures_of_an_unknown_username_lock_it_too(session: AsyncSession) -> None:
    for m in range(5):
        await fail_login(session, "ghost-user", now=NOW + timedelta(minutes=m))

    with pytest.raises(errors.AccountLocked):
        await auth.claim_login_attempt(
            session, username="ghost-user", now=NOW + timedelta(minutes=4, seconds=30), policy=POLICY, ip="203.0.113.9"
        )


async def test_login_succeeds_once_the_lock_ends_and_clears_the_count(session: AsyncSession) -> None:
    staff = await make_staff(session)
    for m in range(5):
        await fail_login(session, staff.username, now=NOW + timedelta(minutes=m))
    lock_ends = NOW + timedelta(minutes=4 + 1)

    pair = await log_in(session, staff, now=lock_ends)

    assert pair.principal.id == staff.user.id
    assert await fail_login(session, staff.username, now=lock_ends + timedelta(minutes=1)) == 1


async def test_each_failure_after_a_lock_ran_out_locks_twice_as_long_up_to_the_cap(session: AsyncSession) -> None:
    staff = await make_staff(session)
    for m in range(5):
        await fail_login(session, staff.username, now=NOW + timedelta(minutes=m))
    at, locks = NOW + timedelta(minutes=4), []

    for _ in range(8):
        at = await locked_until(session, staff.username) or at
        await fail_login(session, staff.username, now=at)
        locks.append(((await locked_until(session, staff.username) or at) - at) // timedelta(minutes=1))

    assert locks == [2, 4, 8, 16, 32, 60, 60, 60]
    with pytest.raises(errors.AccountLocked):
        await log_in(session, staff, now=at + timedelta(minutes=59))


async def test_a_count_quiet_for_longer_than_the_longest_lock_starts_again(session: AsyncSession) -> None:
    staff = await make_staff(session)
    for m in range(4):
        await fail_login(session, staff.username, now=NOW + timedelta(minutes=m))

    counted = await fail_login(session, staff.username, now=NOW + timedelta(minutes=3, seconds=POLICY.lockout_max_s + 1))

    assert counted == 1
    assert await locked_until(session, staff.username) is None


async def test_guesses_from_one_address_do_not_lock_the_owner_out_from_another(session: AsyncSession) -> None:
    staff = await make_staff(session)
    for _ in range(5):
        await auth.claim_login_attempt(session, username=staff.username, now=NOW, policy=POLICY, ip="203.0.113.9")

    with pytest.raises(errors.AccountLocked):
        await auth.claim_login_attempt(session, username=staff.username, now=NOW, policy=POLICY, ip="203.0.113.9")
    await auth.claim_login_attempt(session, username=staff.username, now=NOW, policy=POLICY, ip="198.51.100.7")
    pair = await auth.login_staff(session, username=staff.username, password=staff.password, now=NOW, policy=POLICY,
                                  ip="198.51.100.7")

    assert pair.principal.id == staff.user.id
    # The owner's success clears only their own address's count: the guesser stays locked.
    with pytest.raises(errors.AccountLocked):
        await auth.claim_login_attempt(session, username=staff.username, now=NOW, policy=POLICY, ip="203.0.113.9")


async def test_an_administrator_unlocks_a_user_from_every_address(session: AsyncSession) -> None:
    staff = await make_staff(session)
    for ip in ("203.0.113.9", "198.51.100.7"):
        for _ in range(5):
            await auth.claim_login_attempt(session, username=staff.username, now=NOW, policy=POLICY, ip=ip)
    assert staff.user.id is not None

    unlocked = await auth.unlock_staff_user(session, actor=ROOT, user_id=staff.user.id)

    assert unlocked.id == staff.user.id
    assert await counted_failures(session, staff.username) is None
    assert await auth.claim_login_attempt(session, username=staff.username, now=NOW, policy=POLICY, ip="203.0.113.9") == 1


async def test_an_administrator_cannot_unlock_a_user_above_them(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    boss = await make_staff(session, areas=[tree.company])
    clerk = await make_staff(session, permissions={"users:manage"}, areas=[tree.east])
    for _ in range(5):
        await fail_login(session, boss.username, now=NOW)
    assert boss.user.id is not None

    # The boss belongs to the company, outside the clerk's district: not even visible.
    with pytest.raises(NotFound):
        await auth.unlock_staff_user(session, actor=clerk.principal, user_id=boss.user.id)

    assert await counted_failures(session, boss.username) == 5


async def test_a_successful_login_clears_earlier_failures(session: AsyncSession) -> None:
    staff = await make_staff(session)
    for m in range(4):
        await fail_login(session, staff.username, now=NOW + timedelta(minutes=m))

    await log_in(session, staff, now=NOW + timedelta(minutes=4))

    assert await counted_failures(session, staff.username) is None
    assert await fail_login(session, staff.username, now=NOW + timedelta(minutes=5)) == 1


async def test_inactive_user_is_refused_with_the_right_password(session: AsyncSession) -> None:
    staff = await make_staff(session)
    assert staff.user.id is not None
    await auth.update_staff_user(
        session, actor=ROOT, user_id=staff.user.id, changes=StaffUserChanges(is_active=False), now=NOW
    )
    sessions_before = await row_count(session, "auth_sessions")

    with pytest.raises(errors.AccountInactive):
        await log_in(session, staff, now=NOW + timedelta(minutes=1))

    assert await row_count(session, "auth_sessions") == sessions_before


async def test_inactive_user_with_a_wrong_password_learns_nothing_about_the_account(session: AsyncSession) -> None:
    staff = await make_staff(session)
    assert staff.user.id is not None
    await auth.update_staff_user(
        session, actor=ROOT, user_id=staff.user.id, changes=StaffUserChanges(is_active=False), now=NOW
    )

    with pytest.raises(errors.InvalidCredentials):
        await auth.login_staff(session, username=staff.username, password="Wrong-passw0rd", now=NOW, policy=POLICY, ip="203.0.113.9")
