"""Signed download links, free of HTTP (a service module may sign one): signing and
verifying (:func:`sign_download_token`, :func:`verify_download_token`) and redeeming
(:func:`link_holder`): a link works only while the login it was made for lasts, and
(unless it is a reusable file link, ``backend.files``) once. ``backend.exports.http``
re-exports these for the download routes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from backend.auth.errors import TokenExpired, TokenInvalid, TokenRevoked
from backend.auth.models import AuthSession, PrincipalKind
from backend.auth.principal import Principal
from backend.auth.security import KeyPurpose, derive_key
from backend.auth.service import AuthPolicy, load_principal
from backend.errors import NotAuthenticated
from backend.exports.models import UsedDownloadLink

DOWNLOAD_TOKEN_TTL_S = 300


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



def _canonical(params: Mapping[str, str]) -> str:
    return urlencode(sorted((key, value) for key, value in params.items() if key != "token"))


def _signature(secret: str, purpose: str, claims: Sequence[str], params: Mapping[str, str]) -> str:
    message = "\n".join(("shuiwu/download/v2", purpose, *claims, _canonical(params)))
    digest = hmac.new(derive_key(secret, KeyPurpose.download_link), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign_download_token(
    *, secret: str, purpose: str, principal: Principal, params: Mapping[str, str], now: datetime,
    ttl_s: int = DOWNLOAD_TOKEN_TTL_S,
) -> tuple[str, datetime]:
    """A token admitting ``principal`` to the download ``purpose`` (its path) with exactly
    these parameters, once, until ``now + ttl_s`` and while the principal's login session
    lasts (:func:`redeem_download_link`). Returns the token and its
    expiry."""
    if principal.session_id is None:
        raise NotAuthenticated()  # links are made for a signed-in caller's session only
    expires_at = now + timedelta(seconds=ttl_s)
    claims = (principal.kind.value, str(principal.id), principal.session_id.hex, secrets.token_hex(12),
              str(int(expires_at.timestamp())))
    return ".".join((*claims, _signature(secret, purpose, claims, params))), expires_at


def verify_download_token(
    token: str, *, secret: str, purpose: str, params: Mapping[str, str], now: datetime
) -> DownloadGrant:
    """What a valid token grants; forged, altered, misdirected and expired tokens are
    refused. (Whether it was used, or its session ended, is :func:`redeem_download_link`'s.)"""
    try:
        *claims, signature = token.split(".")
        kind, principal_id, session_id, nonce, expires = claims
        grant = DownloadGrant(PrincipalKind(kind), int(principal_id), uuid.UUID(hex=session_id), nonce,
                              datetime.fromtimestamp(int(expires), UTC))
    except ValueError:
        raise TokenInvalid() from None
    expected = _signature(secret, purpose, claims, params)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise TokenInvalid()
    if grant.expires_at <= now:
        raise TokenExpired("下载链接已过期, 请重新导出", "The download link has expired; export again")
    return grant


async def link_holder(
    signed: str, *, purpose: str, params: Mapping[str, str], sessions: async_sessionmaker[AsyncSession],
    policy: AuthPolicy, now: datetime, spend: bool = True,
) -> Principal:
    """The principal a signed link admits, as it stands now; the link is spent, unless
    ``spend`` is false (a reusable link: its login session is still checked)."""
    grant = verify_download_token(signed, secret=policy.secret, purpose=purpose, params=params, now=now)
    async with sessions() as session, session.begin():
        if spend:
            await redeem_download_link(session, grant=grant, now=now)
        else:
            await check_download_login(session, grant=grant, now=now)
        principal = await load_principal(session, kind=grant.kind, principal_id=grant.principal_id,
                                         session_id=grant.session_id)
    if principal is None:
        raise TokenRevoked()
    return principal


def download_url(path: str, params: Mapping[str, str], token: str) -> str:
    """The relative URL of a download, parameters first and the token last."""
    return f"{path}?{urlencode([*params.items(), ('token', token)])}"
