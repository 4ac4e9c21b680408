"""Staff password login and its lockout per username and source address: each attempt
is claimed (counted and committed) before the password is checked; administrators
lift the locks."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth import errors
from backend.auth.models import LoginFailure, PrincipalKind, StaffUser
from backend.auth.principal import Principal
from backend.auth.ratelimit import OverLimitMemo
from backend.auth.security import verify_password_off_loop
from backend.auth.service.policy import AuthPolicy, TokenPair
from backend.auth.service.sessions import _open_session
from backend.auth.service.staff_users import _check_user_editable
from backend.auth.service.throttles import _claim_against_lockout, _source, count_hit
from backend.errors import Forbidden


async def login_staff(
    session: AsyncSession,
    *,
    username: str,
    password: str,
    now: datetime,
    policy: AuthPolicy,
    ip: str | None = None,
    user_agent: str | None = None,
) -> TokenPair:
    """Password login, after :func:`claim_login_attempt` has counted this attempt in its
    own committed transaction (so parallel guesses cannot outrun the lockout). Success
    clears the count; a wrong password raises and leaves the count standing."""
    username = username.strip()
    user = (await session.execute(select(StaffUser).where(StaffUser.username == username))).scalars().first()  # type: ignore[arg-type]
    # argon2 takes ~0.1-0.2 s of CPU: off the event loop, so one login does not stall the API.
    verified = await verify_password_off_loop(user.password_hash if user else None, password)
    if not verified or user is None:
        raise errors.InvalidCredentials()
    if not user.is_active:
        raise errors.AccountInactive()
    await session.execute(
        delete(LoginFailure).where(LoginFailure.username == username[:64], LoginFailure.source == _source(ip))  # type: ignore[arg-type]
    )
    user.last_login_at = now
    assert user.id is not None
    return await _open_session(
        session, kind=PrincipalKind.staff, principal_id=user.id, now=now, policy=policy,
        with_refresh=True, ip=ip, user_agent=user_agent,
    )


async def claim_login_attempt(
    session: AsyncSession, *, username: str, now: datetime, policy: AuthPolicy, ip: str | None,
    over_limit: OverLimitMemo | None = None,
) -> int:
    """Count a login attempt before the password is checked; commit it on its own.

    Counted per username and source address (``ip``), so guesses from one address lock
    only that address: the owner's right password from elsewhere still works. Every
    attempt counts until a success from that source clears it, so concurrent guesses are
    counted as they arrive. The ``max_failures``-th attempt still gets its password
    checked but locks the source for ``lockout_s`` unless it succeeds; each attempt after
    a lock ran out locks again for twice as long (up to ``lockout_max_s``). While locked,
    attempts are refused here with :class:`AccountLocked` and not counted. Also counts
    the address's attempts a minute (any username), across API processes (with
    ``over_limit``, an address already refused this minute is refused without a database
    round trip). Returns the attempts counted for this username and source.
    """
    await count_hit(session, key=f"login:ip:{_source(ip)}", now=now, limit=policy.login_attempts_per_ip_per_minute,
                    over_limit=over_limit)
    return await _claim_against_lockout(session, name=username.strip()[:64], source=_source(ip), now=now, policy=policy)


async def unlock_staff_user(session: AsyncSession, *, actor: Principal, user_id: int) -> StaffUser:
    """An administrator lifts every login lock and failure count of a user they may edit."""
    user = await _check_user_editable(session, actor, user_id)
    await session.execute(delete(LoginFailure).where(LoginFailure.username == user.username))  # type: ignore[arg-type]
    return user


async def claim_password_check(
    session: AsyncSession, *, actor: Principal, now: datetime, policy: AuthPolicy, ip: str | None,
    over_limit: OverLimitMemo | None = None,
) -> int:
    """Count a check of the caller's current password against their login lockout, so a
    stolen access token cannot be used to guess the password (commit on its own)."""
    if not actor.is_staff:
        raise Forbidden()
    username = (await session.execute(select(StaffUser.username).where(StaffUser.id == actor.id))).scalar_one_or_none()  # type: ignore[call-overload]
    if username is None:
        raise Forbidden()
    return await claim_login_attempt(session, username=username, now=now, policy=policy, ip=ip, over_limit=over_limit)
