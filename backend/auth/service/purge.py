"""The hourly clean-up: login sessions and one-time codes that can no longer be used,
quiet failure counts, throttle rows past the longest window, and binding requests
decided longer ago than their retention (docs/privacy.md, "Retention")."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, delete, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.auth.models import (
    AuthSession,
    AuthThrottle,
    BindingState,
    HouseholdBinding,
    LoginFailure,
    OneTimeCode,
    ResidentHousehold,
)
from backend.auth.service.throttles import _minute


async def purge_expired(session: AsyncSession, *, now: datetime, codes_kept: timedelta = timedelta(0)) -> int:
    """Delete login sessions that can no longer be used, one-time codes used or expired
    ``codes_kept`` ago (``SHUIWU_RETENTION_LOGIN_CODES_DAYS``), failure counts quiet for
    a day, and throttle rows older than the longest window (a day)."""
    sessions = await session.execute(
        delete(AuthSession).where(or_(AuthSession.expires_at <= now, AuthSession.revoked_at <= now - timedelta(days=1)))  # type: ignore[arg-type,operator]
    )
    codes = await session.execute(
        delete(OneTimeCode).where(or_(col(OneTimeCode.expires_at) <= now - codes_kept,
                                      col(OneTimeCode.consumed_at) <= now - codes_kept))
    )
    unlocked = await session.execute(
        delete(LoginFailure).where(LoginFailure.last_failed_at < now - timedelta(days=1))  # type: ignore[arg-type]
    )
    # Throttle rows serve rolling days at most; older ones count nothing.
    throttles = await session.execute(delete(AuthThrottle).where(AuthThrottle.minute < _minute(now) - timedelta(days=1)))  # type: ignore[arg-type]
    counts: list[int] = [result.rowcount or 0 for result in (sessions, codes, unlocked, throttles)]  # type: ignore[attr-defined]
    return sum(counts)


async def purge_decided_bindings(session: AsyncSession, *, decided_before: datetime, batch: int = 10_000) -> int:
    """Delete up to ``batch`` binding requests refused or ended before ``decided_before``
    (``SHUIWU_RETENTION_BINDINGS_DAYS``): rejected and unbound rows, and approved ones
    whose binding is gone. A request of a binding that still lasts stays. Returns how
    many went; the caller commits, and calls again while it returns ``batch``."""
    still_bound = exists().where(col(ResidentHousehold.resident_id) == col(HouseholdBinding.resident_id),
                                 col(ResidentHousehold.household_id) == col(HouseholdBinding.household_id))
    ended = or_(col(HouseholdBinding.state).in_((BindingState.rejected, BindingState.unbound)),
                and_(col(HouseholdBinding.state) == BindingState.active, ~still_bound))
    oldest = (select(col(HouseholdBinding.id)).where(col(HouseholdBinding.decided_at) < decided_before, ended)
              .order_by(col(HouseholdBinding.id)).limit(batch))
    result = await session.execute(delete(HouseholdBinding).where(col(HouseholdBinding.id).in_(oldest.scalar_subquery())))
    return int(getattr(result, "rowcount", 0) or 0)
