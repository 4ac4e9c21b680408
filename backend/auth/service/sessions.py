"""Principals and login sessions: authenticating an access token (one statement: the
session and the principal's current grants), opening a session with its tokens,
rotating refresh tokens, and revoking sessions."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth import errors
from backend.auth.catalog import RESIDENT_PERMISSIONS
from backend.auth.models import AuthSession, PrincipalKind
from backend.auth.principal import Principal
from backend.auth.security import decode_access_token, issue_access_token, new_token, token_digest
from backend.auth.service.policy import AuthPolicy, TokenPair
from backend.db import asyncpg_statement


def minimal_paths(paths: Iterable[str]) -> tuple[str, ...]:
    """Drop paths that lie under another path of the set (their subtree is covered)."""
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not any(path.startswith(other) for other in kept):
            kept.append(path)
    return tuple(kept)


# One statement per principal kind: the principal's current grants plus, when a login
# session id is given, that session's state, so authenticating a request is one round trip.
_SESSION_JOIN = (
    "LEFT JOIN auth_sessions s ON s.id = CAST(:sid AS uuid) AND s.principal_kind = '{kind}' AND s.principal_id = {alias}.id"
)
_PRINCIPAL_QUERIES = {
    PrincipalKind.staff: text(
        """
        SELECT u.id, u.full_name AS name, u.is_active, s.revoked_at AS session_revoked_at, s.expires_at AS session_expires_at,
               ARRAY(SELECT DISTINCT rp.permission FROM staff_user_roles ur
                     JOIN role_permissions rp ON rp.role_id = ur.role_id WHERE ur.user_id = u.id) AS permissions,
               ARRAY(SELECT DISTINCT a.path FROM staff_user_roles ur
                     JOIN role_areas ra ON ra.role_id = ur.role_id
                     JOIN areas a ON a.id = ra.area_id WHERE ur.user_id = u.id) AS paths
        FROM staff_users u
        """
        + _SESSION_JOIN.format(kind="staff", alias="u")
        + " WHERE u.id = :principal_id"
    ),
    PrincipalKind.resident: text(
        """
        SELECT r.id, r.phone AS name, true AS is_active, s.revoked_at AS session_revoked_at, s.expires_at AS session_expires_at,
               ARRAY(SELECT rh.household_id FROM resident_households rh
                     WHERE rh.resident_id = r.id ORDER BY rh.household_id) AS household_ids
        FROM residents r
        """
        + _SESSION_JOIN.format(kind="resident", alias="r")
        + " WHERE r.id = :principal_id"
    ),
    PrincipalKind.client: text(
        """
        SELECT c.id, c.name, c.is_active, c.scopes AS permissions, c.rate_per_minute,
               s.revoked_at AS session_revoked_at, s.expires_at AS session_expires_at,
               ARRAY(SELECT a.path FROM api_client_areas ca JOIN areas a ON a.id = ca.area_id
                     WHERE ca.api_client_id = c.id) AS paths
        FROM api_clients c
        """
        + _SESSION_JOIN.format(kind="client", alias="c")
        + " WHERE c.id = :principal_id"
    ),
}


def _principal_from_row(kind: PrincipalKind, row: Any, session_id: uuid.UUID | None) -> Principal | None:
    if row is None or not row["is_active"]:
        return None
    if kind is PrincipalKind.resident:
        return Principal(
            kind=kind, id=row["id"], name=row["name"], permissions=RESIDENT_PERMISSIONS,
            household_ids=tuple(row["household_ids"]), session_id=session_id,
        )
    return Principal(
        kind=kind,
        id=row["id"],
        name=row["name"],
        permissions=frozenset(row["permissions"]),
        scope_paths=minimal_paths(row["paths"]),
        session_id=session_id,
        rate_per_minute=row["rate_per_minute"] if kind is PrincipalKind.client else None,
    )


async def _principal_row(
    session: AsyncSession, kind: PrincipalKind, principal_id: int, session_id: uuid.UUID | None
) -> Any:
    parameters = {"principal_id": principal_id, "sid": str(session_id) if session_id else None}
    return (await session.execute(_PRINCIPAL_QUERIES[kind], parameters)).mappings().first()


async def load_principal(
    session: AsyncSession, *, kind: PrincipalKind, principal_id: int, session_id: uuid.UUID | None = None
) -> Principal | None:
    """The principal as it stands now (permissions and scope re-read from its roles)."""
    return _principal_from_row(kind, await _principal_row(session, kind, principal_id, session_id), session_id)


def _session_claims(token: str, *, now: datetime, policy: AuthPolicy) -> tuple[PrincipalKind, int, uuid.UUID]:
    claims = decode_access_token(token, secret=policy.secret, now=now)
    try:
        kind = PrincipalKind(claims["knd"])
        if kind not in _PRINCIPAL_QUERIES:
            # The system actor signs in nowhere: no token ever carries it (backend.auth.system).
            raise ValueError(kind)
        return kind, int(claims["sub"]), uuid.UUID(claims["sid"])
    except (ValueError, KeyError):
        raise errors.TokenInvalid() from None


def _checked_principal(kind: PrincipalKind, row: Any, session_id: uuid.UUID, now: datetime) -> Principal:
    if row is None or row["session_expires_at"] is None:
        raise errors.TokenInvalid()
    if row["session_revoked_at"] is not None:
        raise errors.TokenRevoked()
    if row["session_expires_at"] <= now:
        raise errors.TokenExpired()
    principal = _principal_from_row(kind, row, session_id)
    if principal is None:
        raise errors.TokenRevoked()
    return principal


async def authenticate(session: AsyncSession, *, token: str, now: datetime, policy: AuthPolicy) -> Principal:
    """The principal behind an access token; expired, forged and revoked tokens are refused.

    One statement: the token's login session and the principal's current grants.
    """
    kind, principal_id, session_id = _session_claims(token, now=now, policy=policy)
    return _checked_principal(kind, await _principal_row(session, kind, principal_id, session_id), session_id, now)


async def authenticate_on_connection(connection: Any, *, token: str, now: datetime, policy: AuthPolicy) -> Principal:
    """:func:`authenticate` on a raw asyncpg connection (``db.raw_read``): the same
    statement and checks, without a session, because it runs for every request."""
    kind, principal_id, session_id = _session_claims(token, now=now, policy=policy)
    statement = asyncpg_statement(_PRINCIPAL_QUERIES[kind])
    row = await connection.fetchrow(
        statement.sql, *statement.arguments({"principal_id": principal_id, "sid": str(session_id)})
    )
    return _checked_principal(kind, row, session_id, now)


async def _open_session(
    session: AsyncSession,
    *,
    kind: PrincipalKind,
    principal_id: int,
    now: datetime,
    policy: AuthPolicy,
    with_refresh: bool,
    ip: str | None,
    user_agent: str | None,
) -> TokenPair:
    refresh = new_token() if with_refresh else None
    ttl = policy.refresh_ttl_s if with_refresh else policy.access_ttl_s
    login = AuthSession(
        principal_kind=kind,
        principal_id=principal_id,
        refresh_hash=token_digest(refresh) if refresh else None,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl),
        ip=ip,
        user_agent=(user_agent or "")[:400] or None,
    )
    session.add(login)
    await session.flush()
    access, access_expires = issue_access_token(
        secret=policy.secret, kind=kind, principal_id=principal_id, session_id=login.id, now=now, ttl_s=policy.access_ttl_s
    )
    principal = await load_principal(session, kind=kind, principal_id=principal_id, session_id=login.id)
    assert principal is not None
    return TokenPair(access, access_expires, refresh, login.expires_at if refresh else None, principal)


async def refresh_tokens(session: AsyncSession, *, refresh_token: str, now: datetime, policy: AuthPolicy) -> TokenPair:
    """Exchange a refresh token for new tokens; the old refresh token stops working."""
    login = (
        await session.execute(
            select(AuthSession).where(AuthSession.refresh_hash == token_digest(refresh_token)).with_for_update()  # type: ignore[arg-type]
        )
    ).scalars().first()
    if login is None:
        reused = (
            await session.execute(
                select(AuthSession).where(AuthSession.previous_refresh_hash == token_digest(refresh_token)).with_for_update()  # type: ignore[arg-type]
            )
        ).scalars().first()
        if reused is not None and reused.revoked_at is None:
            # A rotated-out token came back: someone holds a copy. The caller ends the
            # session (logout) after the rollback, for both holders.
            raise errors.RefreshTokenReused(session_id=reused.id)
        raise errors.RefreshTokenInvalid(field="refreshToken")
    if login.revoked_at is not None or login.expires_at <= now:
        raise errors.RefreshTokenInvalid(field="refreshToken")
    principal = await load_principal(session, kind=login.principal_kind, principal_id=login.principal_id, session_id=login.id)
    if principal is None:
        raise errors.RefreshTokenInvalid(field="refreshToken")
    rotated = new_token()
    login.previous_refresh_hash = login.refresh_hash
    login.refresh_hash = token_digest(rotated)
    access, access_expires = issue_access_token(
        secret=policy.secret, kind=login.principal_kind, principal_id=login.principal_id,
        session_id=login.id, now=now, ttl_s=policy.access_ttl_s,
    )
    await session.flush()
    return TokenPair(access, access_expires, rotated, login.expires_at, principal)


async def logout(session: AsyncSession, *, session_id: uuid.UUID, now: datetime) -> None:
    """Revoke a login: its refresh token and every access token naming it stop working."""
    await session.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))  # type: ignore[arg-type,union-attr]
        .values(revoked_at=now, refresh_hash=None)
    )


async def _revoke_all(session: AsyncSession, kind: PrincipalKind, principal_id: int, now: datetime) -> None:
    await session.execute(
        update(AuthSession)
        .where(AuthSession.principal_kind == kind, AuthSession.principal_id == principal_id,  # type: ignore[arg-type]
               AuthSession.revoked_at.is_(None))  # type: ignore[union-attr]
        .values(revoked_at=now, refresh_hash=None)
    )
