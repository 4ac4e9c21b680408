"""Auth rules: logins, tokens, staff users, roles, residents and API clients.

Plain async functions over a session (the caller commits). What varies — the signing
key, lifetimes, lockout policy, the clock — is passed in as :class:`AuthPolicy` and
``now``; nothing here reads settings or knows about HTTP.

Decisions (README "Auth"):
- Access tokens are JWTs (HS256) that name their login session; every request checks the
  session, so logout (revoking the session) revokes its access tokens at once.
- Refresh tokens are opaque, stored hashed, and rotate on every use.
- A user may grant only what they hold: a role's permissions must be a subset of the
  granter's, its areas must lie within the granter's scope, and a child role never holds
  more than its parent or ranks above it. The same holds for assigning roles and for API
  client scopes. Users and roles the actor could not have granted are not theirs to edit.
- Staff users with history are deactivated, not deleted.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Select, delete, exists, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import Area, Household
from backend.archives.service import require_areas
from backend.audit.models import AuditEntry
from backend.auth import errors
from backend.auth.catalog import ALL_PERMISSIONS, CLIENT_SCOPES, RESIDENT_PERMISSIONS
from backend.auth.models import (
    ApiClient,
    ApiClientArea,
    AuthSession,
    LoginFailure,
    OneTimeCode,
    PrincipalKind,
    Resident,
    ResidentHousehold,
    Role,
    RoleArea,
    RoleKind,
    RolePermission,
    StaffUser,
    StaffUserRole,
)
from backend.auth.principal import Principal
from backend.auth.security import (
    check_password_strength,
    decode_access_token,
    hash_password_off_loop,
    issue_access_token,
    keyed_digest,
    new_token,
    token_digest,
    verify_password_off_loop,
)
from backend.db import asyncpg_statement
from backend.errors import DomainError, ErrorCode, Forbidden, NotFound, ValidationFailed

USERNAME = re.compile(r"^[A-Za-z0-9_.\-]{3,64}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PHONE = re.compile(r"^\+?\d[\d\-]{5,19}$")
MOBILE = re.compile(r"^1[3-9]\d{9}$")
CODE_RESEND_S = 60
CODE_MAX_ATTEMPTS = 5


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    secret: str
    access_ttl_s: int = 900
    refresh_ttl_s: int = 30 * 24 * 3600
    max_failures: int = 5
    lockout_s: int = 900
    otp_ttl_s: int = 300

    @classmethod
    def from_settings(cls, settings: Any) -> AuthPolicy:
        return cls(
            secret=settings.secret(),
            access_ttl_s=settings.access_token_ttl_s,
            refresh_ttl_s=settings.refresh_token_ttl_s,
            max_failures=settings.login_max_failures,
            lockout_s=settings.login_lockout_s,
            otp_ttl_s=settings.otp_ttl_s,
        )


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    access_expires_at: datetime
    refresh_token: str | None
    refresh_expires_at: datetime | None
    principal: Principal


class SmsSender(Protocol):
    async def send_login_code(self, phone: str, code: str) -> None: ...


# --------------------------------------------------------------------------- principals


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
        return PrincipalKind(claims["knd"]), int(claims["sub"]), uuid.UUID(claims["sid"])
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


# --------------------------------------------------------------------------- staff login


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
    await session.execute(delete(LoginFailure).where(LoginFailure.username == username[:64]))  # type: ignore[arg-type]
    user.last_login_at = now
    assert user.id is not None
    return await _open_session(
        session, kind=PrincipalKind.staff, principal_id=user.id, now=now, policy=policy,
        with_refresh=True, ip=ip, user_agent=user_agent,
    )


async def claim_login_attempt(session: AsyncSession, *, username: str, now: datetime, policy: AuthPolicy) -> int:
    """Count a login attempt before the password is checked; commit it on its own.

    Every attempt counts until a success clears the count, so concurrent guesses are
    counted as they arrive. The ``max_failures``-th attempt in the window still gets its
    password checked but locks the name for ``lockout_s`` unless it succeeds; a locked
    name is refused here with :class:`AccountLocked`. Returns the attempts counted.
    """
    name = username.strip()[:64]
    current = (
        await session.execute(select(LoginFailure).where(LoginFailure.username == name).with_for_update())  # type: ignore[arg-type]
    ).scalars().first()
    if current is not None and current.locked_until is not None and current.locked_until > now:
        raise errors.AccountLocked()
    window_start = now - timedelta(seconds=policy.lockout_s)
    statement = (
        insert(LoginFailure)
        .values(username=name, failures=1, last_failed_at=now)
        .on_conflict_do_update(
            index_elements=["username"],
            set_={
                # An attempt after the window, or after a lock ran out, starts a new count.
                "failures": func.coalesce(
                    text(
                        "CASE WHEN login_failures.last_failed_at < :window_start "
                        "OR (login_failures.locked_until IS NOT NULL AND login_failures.locked_until <= :now) "
                        "THEN 1 ELSE login_failures.failures + 1 END"
                    ).bindparams(window_start=window_start, now=now),
                    1,
                ),
                "last_failed_at": now,
                # A new count after an expired lock also clears that lock, so it can lock again.
                "locked_until": text(
                    "CASE WHEN login_failures.locked_until IS NOT NULL AND login_failures.locked_until <= :now2 "
                    "THEN NULL ELSE login_failures.locked_until END"
                ).bindparams(now2=now),
            },
        )
        .returning(LoginFailure.__table__.c.failures)  # type: ignore[attr-defined]
    )
    # The upsert holds the row lock until this transaction ends, so parallel attempts for
    # one name are counted one after another, each seeing the ones before it.
    failures: int = (await session.execute(statement)).scalar_one()
    if failures > policy.max_failures:
        raise errors.AccountLocked()
    if failures == policy.max_failures:
        await session.execute(
            update(LoginFailure)
            .where(LoginFailure.username == name)  # type: ignore[arg-type]
            .values(locked_until=now + timedelta(seconds=policy.lockout_s))
        )
    return failures


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


async def purge_expired(session: AsyncSession, *, now: datetime) -> int:
    """Delete login sessions and one-time codes that can no longer be used."""
    sessions = await session.execute(
        delete(AuthSession).where(or_(AuthSession.expires_at <= now, AuthSession.revoked_at <= now - timedelta(days=1)))  # type: ignore[arg-type,operator]
    )
    codes = await session.execute(
        delete(OneTimeCode).where(or_(OneTimeCode.expires_at <= now, OneTimeCode.consumed_at.is_not(None)))  # type: ignore[arg-type,union-attr]
    )
    unlocked = await session.execute(
        delete(LoginFailure).where(LoginFailure.last_failed_at < now - timedelta(days=1))  # type: ignore[arg-type]
    )
    return int(sessions.rowcount or 0) + int(codes.rowcount or 0) + int(unlocked.rowcount or 0)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- grants


async def _role_grants(session: AsyncSession, role_ids: Sequence[int]) -> tuple[set[str], list[str]]:
    """Permissions and area paths held by these roles together."""
    if not role_ids:
        return set(), []
    permissions = (
        await session.execute(select(RolePermission.permission).where(RolePermission.role_id.in_(role_ids)))  # type: ignore[call-overload,attr-defined]
    ).scalars().all()
    paths = (
        await session.execute(
            select(Area.path).join(RoleArea, RoleArea.area_id == Area.id).where(RoleArea.role_id.in_(role_ids))  # type: ignore[call-overload,arg-type,attr-defined]
        )
    ).scalars().all()
    return set(permissions), list(paths)


def _check_grantable(
    actor: Principal, permissions: Iterable[str], paths: Iterable[str], *, field: str, area_field: str | None = None
) -> None:
    if not set(permissions) <= actor.permissions:
        raise errors.GrantExceedsOwn(field=field)
    if not all(actor.in_scope(path) for path in paths):
        raise errors.GrantExceedsOwn(field=area_field or field)


def _check_known_permissions(
    permissions: Iterable[str], allowed: frozenset[str] = ALL_PERMISSIONS, *, field: str = "permissions"
) -> None:
    unknown = sorted(set(permissions) - allowed)
    if unknown:
        raise errors.UnknownPermission(
            f"未知的权限: {', '.join(unknown)}", f"Unknown permission: {', '.join(unknown)}", field=field
        )


async def _check_role_editable(session: AsyncSession, actor: Principal, role_id: int) -> Role:
    role = await session.get(Role, role_id, with_for_update=True)
    if role is None:
        raise NotFound(field="id")
    held, paths = await _role_grants(session, [role_id])
    if not held <= actor.permissions or not all(actor.in_scope(p) for p in paths):
        # A role above the actor is not theirs to edit.
        raise errors.GrantExceedsOwn(field="id")
    return role


# --------------------------------------------------------------------------- roles


@dataclass(frozen=True, slots=True)
class RoleChanges:
    name: str | None = None
    kind: RoleKind | None = None
    parent_id: int | None = None
    clear_parent: bool = False
    description: str | None = None
    permissions: frozenset[str] | None = None
    area_ids: frozenset[int] | None = None


async def _validate_role(
    session: AsyncSession,
    actor: Principal,
    *,
    role_id: int | None,
    name: str,
    kind: RoleKind,
    parent_id: int | None,
    permissions: frozenset[str],
    area_ids: frozenset[int],
) -> None:
    problems: list[DomainError] = []
    if not name.strip() or len(name) > 64:
        problems.append(DomainError("角色名称须为 1-64 个字符", "A role name has 1 to 64 characters", field="name", code=ErrorCode.INVALID))
    else:
        clash = select(Role.id).where(Role.name == name.strip())  # type: ignore[call-overload]
        if role_id is not None:
            clash = clash.where(Role.id != role_id)
        if (await session.execute(clash)).first() is not None:
            problems.append(errors.Duplicate("角色名称已存在", "A role with this name exists", field="name"))
    if problems:
        raise ValidationFailed(problems)
    _check_known_permissions(permissions)
    if kind.rank < await _actor_rank(session, actor):
        # A department admin cannot mint a "system admin" role, even with fewer permissions.
        raise errors.RoleHierarchy(field="kind")
    areas = await require_areas(session, area_ids)
    _check_grantable(actor, permissions, [a.path for a in areas.values()], field="permissions", area_field="areaIds")
    if parent_id is not None:
        if role_id is not None and (
            await session.execute(_ANCESTORS, {"parent_id": parent_id, "role_id": role_id})
        ).scalar_one():
            # The new parent is the role itself or one of its descendants: a cycle.
            raise errors.RoleHierarchy(field="parentId")
        parent = await session.get(Role, parent_id)
        if parent is None:
            raise NotFound(field="parentId")
        if kind.rank < parent.kind.rank:
            raise errors.RoleHierarchy(field="kind")
        parent_permissions, parent_paths = await _role_grants(session, [parent_id])
        if not permissions <= parent_permissions:
            raise errors.RoleHierarchy(field="permissions")
        if not all(any(a.path.startswith(p) for p in parent_paths) for a in areas.values()):
            raise errors.RoleHierarchy(field="areaIds")
    if role_id is not None:
        await _check_children_fit(session, role_id=role_id, kind=kind, permissions=permissions,
                                  paths=[a.path for a in areas.values()])


async def _actor_rank(session: AsyncSession, actor: Principal) -> int:
    """The highest rank among the actor's roles (0 = system admin); a principal with no
    roles (the CLI and demo loader acting as the system) ranks highest."""
    if not actor.is_staff:
        return len(RoleKind)
    kinds = (
        await session.execute(
            select(Role.kind).join(StaffUserRole, StaffUserRole.role_id == Role.id).where(StaffUserRole.user_id == actor.id)  # type: ignore[call-overload,arg-type]
        )
    ).scalars().all()
    return min((kind.rank for kind in kinds), default=0)


_ANCESTORS = text(
    """
    WITH RECURSIVE up AS (
        SELECT id, parent_id FROM roles WHERE id = :parent_id
        UNION SELECT r.id, r.parent_id FROM roles r JOIN up ON r.id = up.parent_id
    )
    SELECT EXISTS (SELECT 1 FROM up WHERE id = :role_id)
    """
)


async def _check_children_fit(
    session: AsyncSession, *, role_id: int, kind: RoleKind, permissions: frozenset[str], paths: list[str]
) -> None:
    """A role never holds less than, nor ranks below, any of its child roles."""
    children = (await session.execute(select(Role).where(Role.parent_id == role_id))).scalars().all()  # type: ignore[arg-type]
    for child in children:
        assert child.id is not None
        child_permissions, child_paths = await _role_grants(session, [child.id])
        if child.kind.rank < kind.rank:
            raise errors.RoleHierarchy(field="kind")
        if not child_permissions <= permissions:
            raise errors.RoleHierarchy(field="permissions")
        if not all(any(path.startswith(p) for p in paths) for path in child_paths):
            raise errors.RoleHierarchy(field="areaIds")


async def _write_grants(session: AsyncSession, role_id: int, permissions: frozenset[str], area_ids: frozenset[int]) -> None:
    await session.execute(delete(RolePermission).where(RolePermission.role_id == role_id))  # type: ignore[arg-type]
    await session.execute(delete(RoleArea).where(RoleArea.role_id == role_id))  # type: ignore[arg-type]
    if permissions:
        await session.execute(insert(RolePermission), [{"role_id": role_id, "permission": p} for p in sorted(permissions)])
    if area_ids:
        await session.execute(insert(RoleArea), [{"role_id": role_id, "area_id": a} for a in sorted(area_ids)])


async def create_role(
    session: AsyncSession,
    *,
    actor: Principal,
    name: str,
    kind: RoleKind,
    permissions: Iterable[str],
    area_ids: Iterable[int],
    parent_id: int | None = None,
    description: str = "",
) -> Role:
    wanted_permissions, wanted_areas = frozenset(permissions), frozenset(area_ids)
    await _validate_role(
        session, actor, role_id=None, name=name, kind=kind, parent_id=parent_id,
        permissions=wanted_permissions, area_ids=wanted_areas,
    )
    role = Role(name=name.strip(), kind=kind, parent_id=parent_id, description=description.strip()[:400])
    session.add(role)
    await session.flush()
    assert role.id is not None
    await _write_grants(session, role.id, wanted_permissions, wanted_areas)
    return role


async def update_role(session: AsyncSession, *, actor: Principal, role_id: int, changes: RoleChanges) -> Role:
    """Change a role's fields, permissions (菜单权限) or areas (行政权限); unspecified ones stay."""
    role = await _check_role_editable(session, actor, role_id)
    held, _ = await _role_grants(session, [role_id])
    current_areas = frozenset(
        (await session.execute(select(RoleArea.area_id).where(RoleArea.role_id == role_id))).scalars().all()  # type: ignore[call-overload,arg-type]
    )
    name = changes.name if changes.name is not None else role.name
    kind = changes.kind or role.kind
    parent_id = None if changes.clear_parent else (changes.parent_id if changes.parent_id is not None else role.parent_id)
    permissions = changes.permissions if changes.permissions is not None else frozenset(held)
    area_ids = changes.area_ids if changes.area_ids is not None else current_areas
    await _validate_role(
        session, actor, role_id=role_id, name=name, kind=kind, parent_id=parent_id,
        permissions=permissions, area_ids=area_ids,
    )
    role.name, role.kind, role.parent_id = name.strip(), kind, parent_id
    if changes.description is not None:
        role.description = changes.description.strip()[:400]
    await _write_grants(session, role_id, permissions, area_ids)
    await session.flush()
    return role


async def delete_role(session: AsyncSession, *, actor: Principal, role_id: int) -> Role:
    role = await _check_role_editable(session, actor, role_id)
    in_use = await session.execute(
        select(
            exists().where(StaffUserRole.role_id == role_id)  # type: ignore[arg-type]
            | exists().where(Role.parent_id == role_id)  # type: ignore[arg-type]
        )
    )
    if in_use.scalar_one():
        raise errors.RoleInUse(field="id")
    await _write_grants(session, role_id, frozenset(), frozenset())
    await session.delete(role)
    await session.flush()
    return role


def roles_statement(*, search: str | None = None) -> Select[Role]:
    statement = select(Role)
    if search:
        statement = statement.where(Role.name.contains(search, autoescape=True))  # type: ignore[attr-defined]
    return statement.order_by(Role.id)  # type: ignore[arg-type]


async def role_permissions(session: AsyncSession, role_ids: Sequence[int]) -> dict[int, list[str]]:
    rows = (await session.execute(
        select(RolePermission.role_id, RolePermission.permission)  # type: ignore[call-overload]
        .where(RolePermission.role_id.in_(role_ids)).order_by(RolePermission.permission)  # type: ignore[attr-defined]
    )).all()
    found: dict[int, list[str]] = {role_id: [] for role_id in role_ids}
    for role_id, permission in rows:
        found[role_id].append(permission)
    return found


async def role_area_ids(session: AsyncSession, role_ids: Sequence[int]) -> dict[int, list[int]]:
    rows = (await session.execute(
        select(RoleArea.role_id, RoleArea.area_id).where(RoleArea.role_id.in_(role_ids)).order_by(RoleArea.area_id)  # type: ignore[call-overload,attr-defined]
    )).all()
    found: dict[int, list[int]] = {role_id: [] for role_id in role_ids}
    for role_id, area_id in rows:
        found[role_id].append(area_id)
    return found


async def roles_by_ids(session: AsyncSession, ids: Iterable[int]) -> dict[int, Role]:
    wanted = list(set(ids))
    rows = (await session.execute(select(Role).where(Role.id.in_(wanted)))).scalars().all() if wanted else []  # type: ignore[union-attr]
    return {role.id: role for role in rows if role.id is not None}


# --------------------------------------------------------------------------- staff users


@dataclass(frozen=True, slots=True)
class StaffUserChanges:
    full_name: str | None = None
    email: str | None = None
    phone: str | None = None
    role_ids: frozenset[int] | None = None
    is_active: bool | None = None


def _validate_profile(*, username: str | None, full_name: str | None, email: str | None, phone: str | None) -> None:
    problems: list[DomainError] = []
    if username is not None and not USERNAME.match(username):
        problems.append(DomainError("用户名须为 3-64 位字母、数字、下划线、点或短横线",
                                    "A username has 3 to 64 letters, digits, _ . or -", field="username"))
    if full_name is not None and not (0 < len(full_name.strip()) <= 64):
        problems.append(DomainError("用户姓名须为 1-64 个字符", "A full name has 1 to 64 characters", field="fullName"))
    if email and not EMAIL.match(email):
        problems.append(DomainError("电子邮箱格式错误", "Malformed email address", field="email"))
    if phone and not PHONE.match(phone):
        problems.append(DomainError("联系电话格式错误", "Malformed phone number", field="phone"))
    if problems:
        raise ValidationFailed(problems)


async def _check_roles_assignable(session: AsyncSession, actor: Principal, role_ids: frozenset[int]) -> None:
    found = await roles_by_ids(session, role_ids)
    if len(found) != len(role_ids):
        raise NotFound("角色不存在", "Unknown role", field="roleIds")
    permissions, paths = await _role_grants(session, sorted(role_ids))
    _check_grantable(actor, permissions, paths, field="roleIds")


async def _check_user_editable(session: AsyncSession, actor: Principal, user_id: int) -> StaffUser:
    user = await session.get(StaffUser, user_id, with_for_update=True)
    if user is None:
        raise NotFound(field="id")
    current = (await session.execute(select(StaffUserRole.role_id).where(StaffUserRole.user_id == user_id))).scalars().all()  # type: ignore[call-overload,arg-type]
    permissions, paths = await _role_grants(session, list(current))
    if not permissions <= actor.permissions or not all(actor.in_scope(p) for p in paths):
        raise errors.GrantExceedsOwn("不能修改权限高于自己的用户", "You cannot change a user who holds more than you", field="id")
    return user


async def _set_user_roles(session: AsyncSession, user_id: int, role_ids: frozenset[int]) -> None:
    await session.execute(delete(StaffUserRole).where(StaffUserRole.user_id == user_id))  # type: ignore[arg-type]
    if role_ids:
        await session.execute(insert(StaffUserRole), [{"user_id": user_id, "role_id": r} for r in sorted(role_ids)])


async def create_staff_user(
    session: AsyncSession,
    *,
    actor: Principal,
    username: str,
    full_name: str,
    password: str,
    role_ids: Iterable[int] = (),
    email: str | None = None,
    phone: str | None = None,
    now: datetime,
) -> StaffUser:
    username = username.strip()
    _validate_profile(username=username, full_name=full_name, email=email, phone=phone)
    check_password_strength(password)
    if (await session.execute(select(StaffUser.id).where(StaffUser.username == username))).first() is not None:  # type: ignore[call-overload]
        raise errors.Duplicate("用户名已存在", "This username is taken", field="username")
    wanted_roles = frozenset(role_ids)
    await _check_roles_assignable(session, actor, wanted_roles)
    user = StaffUser(
        username=username, full_name=full_name.strip(), email=email or None, phone=phone or None,
        password_hash=await hash_password_off_loop(password), created_at=now, updated_at=now,
    )
    session.add(user)
    await session.flush()
    assert user.id is not None
    await _set_user_roles(session, user.id, wanted_roles)
    return user


async def update_staff_user(
    session: AsyncSession, *, actor: Principal, user_id: int, changes: StaffUserChanges, now: datetime
) -> StaffUser:
    user = await _check_user_editable(session, actor, user_id)
    _validate_profile(username=None, full_name=changes.full_name, email=changes.email, phone=changes.phone)
    if changes.is_active is False and user_id == actor.id and actor.is_staff:
        raise errors.CannotDeactivateSelf(field="isActive")
    if changes.full_name is not None:
        user.full_name = changes.full_name.strip()
    if changes.email is not None:
        user.email = changes.email or None
    if changes.phone is not None:
        user.phone = changes.phone or None
    if changes.role_ids is not None:
        await _check_roles_assignable(session, actor, changes.role_ids)
        await _set_user_roles(session, user_id, changes.role_ids)
    if changes.is_active is not None:
        user.is_active = changes.is_active
        if not changes.is_active:
            await _revoke_all(session, PrincipalKind.staff, user_id, now)
    user.updated_at = now
    await session.flush()
    return user


async def _revoke_all(session: AsyncSession, kind: PrincipalKind, principal_id: int, now: datetime) -> None:
    await session.execute(
        update(AuthSession)
        .where(AuthSession.principal_kind == kind, AuthSession.principal_id == principal_id,  # type: ignore[arg-type]
               AuthSession.revoked_at.is_(None))  # type: ignore[union-attr]
        .values(revoked_at=now, refresh_hash=None)
    )


async def set_staff_password(
    session: AsyncSession, *, actor: Principal, user_id: int, password: str, now: datetime
) -> StaffUser:
    """An administrator sets a new password; the user's logins end."""
    user = await _check_user_editable(session, actor, user_id)
    check_password_strength(password)
    user.password_hash = await hash_password_off_loop(password)
    user.updated_at = now
    await _revoke_all(session, PrincipalKind.staff, user_id, now)
    await session.flush()
    return user


async def change_own_password(
    session: AsyncSession, *, actor: Principal, current_password: str, new_password: str, now: datetime
) -> StaffUser:
    """Change one's own password; other logins end, this one stays."""
    if not actor.is_staff:
        raise Forbidden()
    user = await session.get(StaffUser, actor.id, with_for_update=True)
    if user is None:
        raise NotFound()
    if not await verify_password_off_loop(user.password_hash, current_password):
        raise errors.InvalidCredentials("当前密码错误", "The current password is wrong", field="currentPassword")
    await session.execute(delete(LoginFailure).where(LoginFailure.username == user.username))  # type: ignore[arg-type]
    check_password_strength(new_password, field="newPassword")
    user.password_hash = await hash_password_off_loop(new_password)
    user.updated_at = now
    await session.execute(
        update(AuthSession)
        .where(AuthSession.principal_kind == PrincipalKind.staff, AuthSession.principal_id == actor.id,  # type: ignore[arg-type]
               AuthSession.revoked_at.is_(None), AuthSession.id != actor.session_id)  # type: ignore[union-attr,arg-type]
        .values(revoked_at=now, refresh_hash=None)
    )
    await session.flush()
    return user


async def claim_password_check(session: AsyncSession, *, actor: Principal, now: datetime, policy: AuthPolicy) -> int:
    """Count a check of the caller's current password against their login lockout, so a
    stolen access token cannot be used to guess the password (commit on its own)."""
    if not actor.is_staff:
        raise Forbidden()
    username = (await session.execute(select(StaffUser.username).where(StaffUser.id == actor.id))).scalar_one_or_none()  # type: ignore[call-overload]
    if username is None:
        raise Forbidden()
    return await claim_login_attempt(session, username=username, now=now, policy=policy)


async def delete_staff_user(session: AsyncSession, *, actor: Principal, user_id: int) -> StaffUser:
    """Delete a user who never did anything; one with history must be deactivated."""
    if user_id == actor.id and actor.is_staff:
        raise errors.CannotDeactivateSelf(field="id")
    user = await _check_user_editable(session, actor, user_id)
    history = await session.execute(
        select(
            exists().where(AuditEntry.actor_kind == PrincipalKind.staff.value, AuditEntry.actor_id == user_id)  # type: ignore[arg-type]
            | exists().where(AuthSession.principal_kind == PrincipalKind.staff, AuthSession.principal_id == user_id)  # type: ignore[arg-type]
            | exists().where(ApiClient.created_by == user_id)  # type: ignore[arg-type]
        )
    )
    if history.scalar_one():
        raise errors.HasHistory(field="id")
    await _set_user_roles(session, user_id, frozenset())
    await session.delete(user)
    await session.flush()
    return user


def staff_users_statement(*, search: str | None = None, is_active: bool | None = None) -> Select[StaffUser]:
    statement = select(StaffUser)
    if search:
        like = f"%{search}%"
        statement = statement.where(
            or_(StaffUser.username.ilike(like), StaffUser.full_name.ilike(like), StaffUser.phone.ilike(like))  # type: ignore[union-attr,attr-defined]
        )
    if is_active is not None:
        statement = statement.where(StaffUser.is_active == is_active)  # type: ignore[arg-type]
    return statement.order_by(StaffUser.id)  # type: ignore[arg-type]


async def user_role_ids(session: AsyncSession, user_ids: Sequence[int]) -> dict[int, list[int]]:
    rows = (await session.execute(
        select(StaffUserRole.user_id, StaffUserRole.role_id)  # type: ignore[call-overload]
        .where(StaffUserRole.user_id.in_(user_ids)).order_by(StaffUserRole.role_id)  # type: ignore[attr-defined]
    )).all()
    found: dict[int, list[int]] = {user_id: [] for user_id in user_ids}
    for user_id, role_id in rows:
        found[user_id].append(role_id)
    return found


# --------------------------------------------------------------------------- residents


async def request_login_code(
    session: AsyncSession, *, phone: str, now: datetime, policy: AuthPolicy, sender: SmsSender
) -> datetime:
    """Send a 6-digit code to ``phone``; at most one a minute. Returns its expiry."""
    phone = phone.strip()
    if not MOBILE.match(phone):
        raise DomainError("手机号格式错误", "Malformed mobile number", field="phone", code=ErrorCode.INVALID)
    recent = await session.execute(
        select(OneTimeCode.id).where(  # type: ignore[call-overload]
            OneTimeCode.phone == phone, OneTimeCode.created_at > now - timedelta(seconds=CODE_RESEND_S)
        )
    )
    if recent.first() is not None:
        raise errors.CodeRateLimited(field="phone")
    code = f"{secrets.randbelow(1_000_000):06d}"
    expires_at = now + timedelta(seconds=policy.otp_ttl_s)
    session.add(OneTimeCode(phone=phone, code_hash=keyed_digest(policy.secret, f"{phone}:{code}"), created_at=now, expires_at=expires_at))
    await session.flush()
    await sender.send_login_code(phone, code)
    return expires_at


async def login_resident(
    session: AsyncSession,
    *,
    phone: str,
    code: str,
    now: datetime,
    policy: AuthPolicy,
    ip: str | None = None,
    user_agent: str | None = None,
) -> TokenPair:
    """Log a resident in with the latest unexpired code; the first login registers them.

    The attempt must have been claimed first with :func:`claim_code_attempt` in its own
    committed transaction: a code allows five attempts, right or wrong, however many
    arrive at once.
    """
    phone = phone.strip()
    pending = (
        await session.execute(
            select(OneTimeCode)
            .where(OneTimeCode.phone == phone, OneTimeCode.consumed_at.is_(None), OneTimeCode.expires_at > now)  # type: ignore[arg-type,union-attr]
            .order_by(OneTimeCode.created_at.desc())  # type: ignore[attr-defined]
            .limit(1)
            .with_for_update()
        )
    ).scalars().first()
    if (
        pending is None
        or pending.attempts > CODE_MAX_ATTEMPTS
        or not secrets.compare_digest(pending.code_hash, keyed_digest(policy.secret, f"{phone}:{code.strip()}"))
    ):
        raise errors.InvalidCode(field="code")
    pending.consumed_at = now
    resident = (await session.execute(select(Resident).where(Resident.phone == phone))).scalars().first()  # type: ignore[arg-type]
    if resident is None:
        resident = Resident(phone=phone)
        session.add(resident)
    resident.last_login_at = now
    await session.flush()
    assert resident.id is not None
    return await _open_session(
        session, kind=PrincipalKind.resident, principal_id=resident.id, now=now, policy=policy,
        with_refresh=True, ip=ip, user_agent=user_agent,
    )


async def claim_code_attempt(session: AsyncSession, *, phone: str, now: datetime) -> None:
    """Count one attempt against the phone's live code before it is compared; the caller
    commits this on its own. A code with five attempts used is dead: InvalidCode."""
    live = (
        select(OneTimeCode.id)  # type: ignore[call-overload]
        .where(OneTimeCode.phone == phone.strip(), OneTimeCode.consumed_at.is_(None), OneTimeCode.expires_at > now)  # type: ignore[union-attr]
        .order_by(OneTimeCode.created_at.desc())  # type: ignore[attr-defined]
        .limit(1)
        .scalar_subquery()
    )
    claimed = await session.execute(
        update(OneTimeCode)
        .where(OneTimeCode.id == live, OneTimeCode.attempts < CODE_MAX_ATTEMPTS)  # type: ignore[arg-type]
        .values(attempts=OneTimeCode.attempts + 1)
        .returning(OneTimeCode.__table__.c.id)  # type: ignore[attr-defined]
    )
    if claimed.first() is None:
        raise errors.InvalidCode(field="code")


def _bind_attempts_key(resident: Principal) -> str:
    # "~" never appears in a username, so these counters cannot collide with logins.
    return f"~bind:{resident.id}"


async def claim_bind_attempt(session: AsyncSession, *, resident: Principal, now: datetime, policy: AuthPolicy) -> int:
    """Count a binding attempt (commit on its own): five wrong account number / name pairs
    lock binding for the resident for ``lockout_s``, so pairs cannot be guessed at will."""
    return await claim_login_attempt(session, username=_bind_attempts_key(resident), now=now, policy=policy)


async def bind_household(session: AsyncSession, *, resident: Principal, account_no: str, name: str) -> Household:
    """Bind a household by its account number and registered name. An unknown account
    number and a wrong name get the same refusal, so numbers cannot be probed; attempts
    are counted by :func:`claim_bind_attempt` and a success clears the count."""
    if not resident.is_resident:
        raise Forbidden()
    household = (
        await session.execute(select(Household).where(Household.account_no == account_no.strip()))  # type: ignore[arg-type]
    ).scalars().first()
    if household is None or household.name.strip() != name.strip():
        raise errors.HouseholdMismatch(field="accountNo")
    assert household.id is not None
    if household.id in resident.household_ids:
        raise errors.AlreadyBound(field="accountNo")
    await session.execute(insert(ResidentHousehold).values(resident_id=resident.id, household_id=household.id).on_conflict_do_nothing())
    await session.execute(delete(LoginFailure).where(LoginFailure.username == _bind_attempts_key(resident)))  # type: ignore[arg-type]
    return household


async def unbind_household(session: AsyncSession, *, resident: Principal, household_id: int) -> Household:
    if household_id not in resident.household_ids:
        raise NotFound(field="householdId")
    household = await session.get(Household, household_id)
    if household is None:
        raise NotFound(field="householdId")
    await session.execute(
        delete(ResidentHousehold).where(
            ResidentHousehold.resident_id == resident.id, ResidentHousehold.household_id == household_id  # type: ignore[arg-type]
        )
    )
    return household


# --------------------------------------------------------------------------- API clients


@dataclass(frozen=True, slots=True)
class IssuedClient:
    client: ApiClient
    secret: str


def _validate_client(name: str, rate_per_minute: int) -> None:
    problems: list[DomainError] = []
    if not (0 < len(name.strip()) <= 100):
        problems.append(DomainError("名称须为 1-100 个字符", "A name has 1 to 100 characters", field="name"))
    if not (1 <= rate_per_minute <= 100_000):
        problems.append(DomainError("限流须在 1-100000 次/分钟之间", "The rate limit is 1 to 100000 a minute", field="ratePerMinute"))
    if problems:
        raise ValidationFailed(problems)


async def create_api_client(
    session: AsyncSession,
    *,
    actor: Principal,
    name: str,
    scopes: Iterable[str],
    area_ids: Iterable[int],
    rate_per_minute: int = 600,
) -> IssuedClient:
    """Register a third party. The secret is returned once and stored only hashed."""
    _validate_client(name, rate_per_minute)
    wanted_scopes, wanted_areas = frozenset(scopes), frozenset(area_ids)
    _check_known_permissions(wanted_scopes, CLIENT_SCOPES, field="scopes")
    areas = await require_areas(session, wanted_areas)
    _check_grantable(actor, wanted_scopes, [a.path for a in areas.values()], field="scopes", area_field="areaIds")
    secret = new_token(32)
    client = ApiClient(
        client_id="swc_" + new_token(12), name=name.strip(), secret_hash=token_digest(secret),
        scopes=sorted(wanted_scopes), rate_per_minute=rate_per_minute, created_by=actor.id if actor.is_staff else None,
    )
    session.add(client)
    await session.flush()
    assert client.id is not None
    if wanted_areas:
        await session.execute(insert(ApiClientArea), [{"api_client_id": client.id, "area_id": a} for a in sorted(wanted_areas)])
    return IssuedClient(client, secret)


async def _editable_client(session: AsyncSession, actor: Principal, client_pk: int) -> ApiClient:
    client = await session.get(ApiClient, client_pk, with_for_update=True)
    if client is None:
        raise NotFound(field="id")
    paths = (await session.execute(
        select(Area.path).join(ApiClientArea, ApiClientArea.area_id == Area.id).where(ApiClientArea.api_client_id == client_pk)  # type: ignore[call-overload,arg-type]
    )).scalars().all()
    _check_grantable(actor, client.scopes, paths, field="id")
    return client


async def rotate_api_client_secret(session: AsyncSession, *, actor: Principal, client_pk: int, now: datetime) -> IssuedClient:
    client = await _editable_client(session, actor, client_pk)
    secret = new_token(32)
    client.secret_hash = token_digest(secret)
    await _revoke_all(session, PrincipalKind.client, client_pk, now)
    await session.flush()
    return IssuedClient(client, secret)


async def set_api_client_active(
    session: AsyncSession, *, actor: Principal, client_pk: int, is_active: bool, now: datetime
) -> ApiClient:
    client = await _editable_client(session, actor, client_pk)
    client.is_active = is_active
    if not is_active:
        await _revoke_all(session, PrincipalKind.client, client_pk, now)
    await session.flush()
    return client


async def issue_client_token(
    session: AsyncSession, *, client_id: str, client_secret: str, now: datetime, policy: AuthPolicy
) -> TokenPair:
    """OAuth2 client credentials: an access token only (a client simply asks again)."""
    client = (await session.execute(select(ApiClient).where(ApiClient.client_id == client_id.strip()))).scalars().first()  # type: ignore[arg-type]
    if client is None or not secrets.compare_digest(client.secret_hash, token_digest(client_secret)):
        raise errors.InvalidCredentials("客户端 ID 或密钥错误", "Wrong client id or secret", field="clientSecret")
    if not client.is_active:
        raise errors.AccountInactive(field="clientId")
    client.last_used_at = now
    assert client.id is not None
    return await _open_session(
        session, kind=PrincipalKind.client, principal_id=client.id, now=now, policy=policy,
        with_refresh=False, ip=None, user_agent=None,
    )


def api_clients_statement() -> Select[ApiClient]:
    return select(ApiClient).order_by(ApiClient.id)  # type: ignore[arg-type]
