"""Access and refresh tokens, logout, revocation on account changes, and purging."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth import errors
from backend.auth import service as auth
from backend.auth.models import PrincipalKind
from backend.auth.security import issue_access_token
from backend.auth.service import StaffUserChanges
from backend.errors import NotAuthenticated
from tests.auth.support import NOW, POLICY, FakeSms, log_in
from tests.factories import ROOT, auth_policy, make_staff


async def session_revoked_at(session: AsyncSession, session_id: uuid.UUID | None) -> object:
    row = await session.execute(text("SELECT revoked_at FROM auth_sessions WHERE id = :id"), {"id": session_id})
    return row.scalar_one()


async def send_code(session: AsyncSession, sms: FakeSms, phone: str, *, now: datetime) -> int:
    """Request a login code and return the id of its row."""
    await auth.request_login_code(session, phone=phone, now=now, policy=POLICY, sender=sms)
    row = await session.execute(
        text("SELECT id FROM one_time_codes WHERE phone = :phone ORDER BY id DESC LIMIT 1"), {"phone": phone}
    )
    return int(row.scalar_one())


async def existing_ids(session: AsyncSession, table: str, ids: list[object]) -> set[object]:
    assert table in {"auth_sessions", "one_time_codes"}
    rows = await session.execute(text(f"SELECT id FROM {table} WHERE id = ANY(:ids)"), {"ids": ids})
    return set(rows.scalars().all())


# --------------------------------------------------------------------------- access tokens


async def test_access_token_past_its_expiry_is_refused_as_expired(session: AsyncSession) -> None:
    staff = await make_staff(session)
    pair = await log_in(session, staff)

    with pytest.raises(errors.TokenExpired) as refused:
        await auth.authenticate(session, token=pair.access_token, now=pair.access_expires_at, policy=POLICY)

    assert isinstance(refused.value, NotAuthenticated)
    still_valid = await auth.authenticate(
        session, token=pair.access_token, now=pair.access_expires_at - timedelta(seconds=1), policy=POLICY
    )
    assert still_valid.id == staff.user.id


async def test_token_signed_with_another_secret_is_invalid(session: AsyncSession) -> None:
    staff = await make_staff(session)
    pair = await log_in(session, staff)

    with pytest.raises(errors.TokenInvalid):
        await auth.authenticate(
            session, token=pair.access_token, now=NOW, policy=auth_policy("another-secret-of-thirty-two-bytes!")
        )


@pytest.mark.parametrize("garbage", ["", "not-a-token", "a.b.c", "Bearer x.y.z"])
async def test_garbage_is_an_invalid_token(session: AsyncSession, garbage: str) -> None:
    with pytest.raises(errors.TokenInvalid):
        await auth.authenticate(session, token=garbage, now=NOW, policy=POLICY)


async def test_well_signed_token_naming_no_login_session_is_invalid(session: AsyncSession) -> None:
    staff = await make_staff(session)
    assert staff.user.id is not None
    forged, _ = issue_access_token(
        secret=POLICY.secret, kind=PrincipalKind.staff, principal_id=staff.user.id,
        session_id=uuid.uuid4(), now=NOW, ttl_s=POLICY.access_ttl_s,
    )

    with pytest.raises(errors.TokenInvalid):
        await auth.authenticate(session, token=forged, now=NOW, policy=POLICY)


async def test_token_naming_another_users_login_session_is_invalid(session: AsyncSession) -> None:
    victim = await make_staff(session)
    intruder = await make_staff(session)
    victim_pair = await log_in(session, victim)
    assert intruder.user.id is not None
    forged, _ = issue_access_token(
        secret=POLICY.secret, kind=PrincipalKind.staff, principal_id=intruder.user.id,
        session_id=victim_pair.principal.session_id or uuid.uuid4(), now=NOW, ttl_s=POLICY.access_ttl_s,
    )

    with pytest.raises(errors.TokenInvalid):
        await auth.authenticate(session, token=forged, now=NOW, policy=POLICY)


async def test_logout_revokes_the_access_token_and_the_refresh_token(session: AsyncSession) -> None:
    staff = await make_staff(session)
    pair = await log_in(session, staff)
    assert pair.principal.session_id is not None and pair.refresh_token is not None

    await auth.logout(session, session_id=pair.principal.session_id, now=NOW + timedelta(minutes=1))

    with pytest.raises(errors.TokenRevoked):
        await auth.authenticate(session, token=pair.access_token, now=NOW + timedelta(minutes=2), policy=POLICY)
    with pytest.raises(errors.RefreshTokenInvalid):
        await auth.refresh_tokens(
            session, refresh_token=pair.refresh_token, now=NOW + timedelta(minutes=2), policy=POLICY
        )
    assert await session_revoked_at(session, pair.principal.session_id) == NOW + timedelta(minutes=1)


async def test_logout_ends_only_that_login(session: AsyncSession) -> None:
    staff = await make_staff(session)
    phone = await log_in(session, staff)
    desk = await log_in(session, staff)
    assert phone.principal.session_id is not None

    await auth.logout(session, session_id=phone.principal.session_id, now=NOW)

    still_in = await auth.authenticate(session, token=desk.access_token, now=NOW, policy=POLICY)
    assert still_in.session_id == desk.principal.session_id


# --------------------------------------------------------------------------- refresh


async def test_refresh_rotates_the_refresh_token_and_the_old_one_stops_working(session: AsyncSession) -> None:
    staff = await make_staff(session)
    pair = await log_in(session, staff)
    assert pair.refresh_token is not None
    later = NOW + timedelta(minutes=20)

    refreshed = await auth.refresh_tokens(session, refresh_token=pair.refresh_token, now=later, policy=POLICY)

    assert refreshed.refresh_token is not None and refreshed.refresh_token != pair.refresh_token
    assert refreshed.access_expires_at == later + timedelta(seconds=POLICY.access_ttl_s)
    assert refreshed.refresh_expires_at == pair.refresh_expires_at
    principal = await auth.authenticate(session, token=refreshed.access_token, now=later, policy=POLICY)
    assert (principal.id, principal.session_id) == (staff.user.id, pair.principal.session_id)
    with pytest.raises(errors.RefreshTokenInvalid) as reused:
        await auth.refresh_tokens(session, refresh_token=pair.refresh_token, now=later, policy=POLICY)
    assert reused.value.field == "refreshToken"
    again = await auth.refresh_tokens(session, refresh_token=refreshed.refresh_token, now=later, policy=POLICY)
    assert again.principal.id == staff.user.id


async def test_refresh_token_past_the_login_expiry_is_refused(session: AsyncSession) -> None:
    staff = await make_staff(session)
    pair = await log_in(session, staff)
    assert pair.refresh_token is not None and pair.refresh_expires_at is not None

    with pytest.raises(errors.RefreshTokenInvalid) as refused:
        await auth.refresh_tokens(session, refresh_token=pair.refresh_token, now=pair.refresh_expires_at, policy=POLICY)

    assert refused.value.field == "refreshToken"


async def test_unknown_refresh_token_is_refused(session: AsyncSession) -> None:
    with pytest.raises(errors.RefreshTokenInvalid):
        await auth.refresh_tokens(session, refresh_token="never-issued", now=NOW, policy=POLICY)


# --------------------------------------------------------------------------- revocation by account changes


async def test_deactivating_a_user_revokes_their_logins(session: AsyncSession) -> None:
    staff = await make_staff(session)
    pair = await log_in(session, staff)
    assert staff.user.id is not None and pair.refresh_token is not None

    await auth.update_staff_user(
        session, actor=ROOT, user_id=staff.user.id, changes=StaffUserChanges(is_active=False), now=NOW
    )

    assert await session_revoked_at(session, pair.principal.session_id) == NOW
    with pytest.raises(errors.TokenRevoked):
        await auth.authenticate(session, token=pair.access_token, now=NOW, policy=POLICY)
    with pytest.raises(errors.RefreshTokenInvalid):
        await auth.refresh_tokens(session, refresh_token=pair.refresh_token, now=NOW, policy=POLICY)


async def test_reactivating_a_user_does_not_revive_old_logins(session: AsyncSession) -> None:
    staff = await make_staff(session)
    pair = await log_in(session, staff)
    assert staff.user.id is not None
    for active in (False, True):
        await auth.update_staff_user(
            session, actor=ROOT, user_id=staff.user.id, changes=StaffUserChanges(is_active=active), now=NOW
        )

    with pytest.raises(errors.TokenRevoked):
        await auth.authenticate(session, token=pair.access_token, now=NOW, policy=POLICY)


async def test_an_administrator_setting_a_password_ends_the_users_logins(session: AsyncSession) -> None:
    staff = await make_staff(session)
    pair = await log_in(session, staff)
    assert staff.user.id is not None

    await auth.set_staff_password(session, actor=ROOT, user_id=staff.user.id, password="N3w-password", now=NOW)

    with pytest.raises(errors.TokenRevoked):
        await auth.authenticate(session, token=pair.access_token, now=NOW, policy=POLICY)
    with pytest.raises(errors.InvalidCredentials):
        await log_in(session, staff)
    relogged = await auth.login_staff(session, username=staff.username, password="N3w-password", now=NOW, policy=POLICY)
    assert relogged.principal.id == staff.user.id


async def test_changing_ones_own_password_keeps_this_login_and_ends_the_others(session: AsyncSession) -> None:
    staff = await make_staff(session)
    here = await log_in(session, staff)
    elsewhere = await log_in(session, staff)

    await auth.change_own_password(
        session, actor=here.principal, current_password=staff.password, new_password="N3w-password", now=NOW
    )

    kept = await auth.authenticate(session, token=here.access_token, now=NOW, policy=POLICY)
    assert kept.session_id == here.principal.session_id
    with pytest.raises(errors.TokenRevoked):
        await auth.authenticate(session, token=elsewhere.access_token, now=NOW, policy=POLICY)
    relogged = await auth.login_staff(session, username=staff.username, password="N3w-password", now=NOW, policy=POLICY)
    assert relogged.principal.id == staff.user.id


async def test_changing_ones_own_password_refuses_a_wrong_current_password(session: AsyncSession) -> None:
    staff = await make_staff(session)
    here = await log_in(session, staff)
    elsewhere = await log_in(session, staff)

    with pytest.raises(errors.InvalidCredentials) as refused:
        await auth.change_own_password(
            session, actor=here.principal, current_password="Wrong-passw0rd", new_password="N3w-password", now=NOW
        )

    assert refused.value.field == "currentPassword"
    assert await session_revoked_at(session, elsewhere.principal.session_id) is None
    assert (await log_in(session, staff)).principal.id == staff.user.id


async def test_changing_ones_own_password_to_a_weak_one_is_refused(session: AsyncSession) -> None:
    staff = await make_staff(session)
    here = await log_in(session, staff)

    with pytest.raises(errors.PasswordTooWeak) as refused:
        await auth.change_own_password(
            session, actor=here.principal, current_password=staff.password, new_password="password", now=NOW
        )

    assert refused.value.field == "newPassword"
    assert (await log_in(session, staff)).principal.id == staff.user.id


# --------------------------------------------------------------------------- purge


async def test_purge_expired_deletes_only_logins_and_codes_that_can_no_longer_be_used(session: AsyncSession) -> None:
    staff = await make_staff(session)
    expired = await log_in(session, staff, now=NOW - timedelta(seconds=POLICY.refresh_ttl_s + 1))
    live = await log_in(session, staff)
    revoked_long_ago = await log_in(session, staff, now=NOW - timedelta(days=3))
    revoked_just_now = await log_in(session, staff, now=NOW - timedelta(hours=1))
    for pair, revoked_at in ((revoked_long_ago, NOW - timedelta(days=2)), (revoked_just_now, NOW - timedelta(hours=1))):
        assert pair.principal.session_id is not None
        await auth.logout(session, session_id=pair.principal.session_id, now=revoked_at)
    sms = FakeSms()
    expired_code = await send_code(session, sms, "13800000001", now=NOW - timedelta(minutes=10))
    consumed_code = await send_code(session, sms, "13800000002", now=NOW - timedelta(minutes=1))
    await auth.login_resident(
        session, phone="13800000002", code=sms.last_code, now=NOW - timedelta(minutes=1), policy=POLICY
    )
    live_code = await send_code(session, sms, "13800000003", now=NOW - timedelta(minutes=1))
    session_ids: list[object] = [p.principal.session_id for p in (expired, live, revoked_long_ago, revoked_just_now)]

    purged = await auth.purge_expired(session, now=NOW)

    assert await existing_ids(session, "auth_sessions", session_ids) == {
        live.principal.session_id, revoked_just_now.principal.session_id,
    }
    assert await existing_ids(session, "one_time_codes", [expired_code, consumed_code, live_code]) == {live_code}
    # Two sessions, two codes, and the throttle rows of the two logins more than a day ago.
    assert purged == 4 + 2
