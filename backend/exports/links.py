"""Redeeming signed download links: a link works only while the login it was made for
lasts, and (unless it is a reusable file link, ``backend.files``) once
(``backend.exports.http`` signs and verifies them)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.auth.errors import TokenRevoked
from backend.auth.models import AuthSession, PrincipalKind
from backend.exports.models import UsedDownloadLink


@dataclass(frozen=True, slots=True)
class DownloadGrant:
    """What a verified link says: who, under which login session, its nonce and expiry."""

    kind: PrincipalKind
    principal_id: int
    session_id: uuid.UUID
    nonce: str
    expires_at: datetime


_REDEEM = text(
    "INSERT INTO used_download_links (nonce, expires_at) VALUES (:nonce, :expires_at) "
    "ON CONFLICT (nonce) DO NOTHING RETURNING nonce"
)


async def redeem_download_link(session: AsyncSession, *, grant: DownloadGrant, now: datetime) -> None:
    """Spend a link: refused (TOKEN_REVOKED) when its login session was revoked (logout,
    password change, a stolen refresh token) or has expired, or when the link was used
    before. The nonce is recorded in the caller's transaction, so of two concurrent uses
    exactly one wins."""
    await check_download_login(session, grant=grant, now=now)
    redeemed = await session.execute(_REDEEM, {"nonce": grant.nonce, "expires_at": grant.expires_at})
    if redeemed.first() is None:
        raise TokenRevoked("下载链接已使用过, 请重新导出", "The download link was already used; export again")


async def check_download_login(session: AsyncSession, *, grant: DownloadGrant, now: datetime) -> None:
    """Refuse (TOKEN_REVOKED) a link whose login session was revoked or has expired. A
    reusable link (a stored photo shown again and again, ``backend.files``) is checked
    so on every use; a one-time link is also spent (:func:`redeem_download_link`)."""
    login = (await session.execute(
        select(col(AuthSession.revoked_at), col(AuthSession.expires_at)).where(
            col(AuthSession.id) == grant.session_id,
            col(AuthSession.principal_kind) == grant.kind,
            col(AuthSession.principal_id) == grant.principal_id,
        )
    )).first()
    if login is None or login.revoked_at is not None or login.expires_at <= now:
        raise TokenRevoked("下载链接所属的登录已退出或失效, 请重新登录后导出",
                           "The login this link was made for has ended; sign in and export again")


async def purge_used_download_links(session: AsyncSession, *, now: datetime) -> int:
    """Forget the nonces of links that have expired anyway; returns how many."""
    result = await session.execute(delete(UsedDownloadLink).where(col(UsedDownloadLink.expires_at) <= now))
    return int(getattr(result, "rowcount", 0))
