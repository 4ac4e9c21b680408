"""The hourly clean-up: login sessions and one-time codes that can no longer be used,
quiet failure counts, and throttle rows past the longest window."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, or_
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth.models import AuthSession, AuthThrottle, LoginFailure, OneTimeCode
from backend.auth.service.throttles import _minute


async def purge_expired(session: AsyncSession, *, now: datetime) -> int:
    """Delete login sessions and one-time codes that can no longer be used, failure
    counts quiet for a day, and throttle rows older than the longest window (a day)."""
    sessions = await session.execute(
        delete(AuthSession).where(or_(AuthSession.expires_at <= now, AuthSession.revoked_at <= now - timedelta(days=1)))  # type: ignore[arg-type,operator]
    )
    codes = await session.execute(
        delete(OneTimeCode).where(or_(OneTimeCode.expires_at <= now, OneTimeCode.consumed_at.is_not(None)))  # type: ignore[arg-type,union-attr]
    )
    unlocked = await session.execute(
        delete(LoginFailure).where(LoginFailure.last_failed_at < now - timedelta(days=1))  # type: ignore[arg-type]
    )
    # Throttle rows serve rolling days at most; older ones count nothing.
    throttles = await session.execute(delete(AuthThrottle).where(AuthThrottle.minute < _minute(now) - timedelta(days=1)))  # type: ignore[arg-type]
    counts: list[int] = [result.rowcount or 0 for result in (sessions, codes, unlocked, throttles)]  # type: ignore[attr-defined]
    return sum(counts)
