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
- Staff users and roles belong to a unit (``area_id``, backend.auth.scope): lists show,
  and edits reach, only those whose unit lies in the actor's scope (NOT_FOUND otherwise).
  The unit is chosen at creation within the actor's scope, by default the actor's own
  top area.
- The role hierarchy is changed from above: a parent role must lie in the actor's scope,
  and no one edits or deletes a role they hold or one above it (so a district
  administrator cannot detach, widen or re-parent their own role).
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

from sqlalchemy import BigInteger, Select, Text, and_, column, delete, exists, false, func, not_, or_, select, table, text, true, update
from sqlalchemy.dialects.postgresql import array, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.auth import errors
from backend.auth.catalog import RESIDENT_PERMISSIONS, all_permissions, client_scopes
from backend.auth.events import HouseholdBound
from backend.auth.households import HOUSEHOLDS, HouseholdIdentity, household_by_account_no, household_by_id
from backend.auth.models import (
    ApiClient,
    ApiClientArea,
    AuthSession,
    AuthThrottle,
    BindingState,
    HouseholdBinding,
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
from backend.auth.ratelimit import OverLimitMemo, RepeatedRefusal, source_of
from backend.auth.scope import AREA_TREE, area_exists, in_scope, require_area_paths, unit_in_scope, unit_visible, whole_tree
from backend.auth.security import (
    check_password_strength,
    code_digest,
    decode_access_token,
    hash_password_off_loop,
    issue_access_token,
    new_token,
    token_digest,
    verify_password_off_loop,
)
from backend.db import asyncpg_statement
from backend.errors import DomainError, ErrorCode, Forbidden, NotFound, RateLimited, ValidationFailed
from backend.events.service import emit_event
from backend.observability import observe_throttle_refusal

USERNAME = re.compile(r"^[A-Za-z0-9_.\-]{3,64}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PHONE = re.compile(r"^\+?\d[\d\-]{5,19}$")
MOBILE = re.compile(r"^1[3-9]\d{9}$")
CODE_RESEND_S = 60
CODE_MAX_ATTEMPTS = 5


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """The station secret (each use derives its own key from it, ``security.derive_key``),
    lifetimes, the lockout and the throttles. Built with :meth:`from_settings`: no
    defaults of its own, so none can drift from the settings' defaults."""

    secret: str
    access_ttl_s: int
    refresh_ttl_s: int
    max_failures: int
    lockout_s: int
    lockout_max_s: int
    otp_ttl_s: int
    login_attempts_per_ip_per_minute: int
    sms_codes_per_ip_per_minute: int
    sms_codes_per_minute: int
    sms_codes_per_phone_per_day: int
    code_attempts_per_phone_per_day: int

    @classmethod
    def from_settings(cls, settings: Any) -> AuthPolicy:
        return cls(
            secret=settings.secret(),
            access_ttl_s=settings.access_token_ttl_s,
            refresh_ttl_s=settings.refresh_token_ttl_s,
            max_failures=settings.login_max_failures,
            lockout_s=settings.login_lockout_s,
            lockout_max_s=settings.login_lockout_max_s,
            otp_ttl_s=settings.otp_ttl_s,
            login_attempts_per_ip_per_minute=settings.login_attempts_per_ip_per_minute,
            sms_codes_per_ip_per_minute=settings.sms_codes_per_ip_per_minute,
            sms_codes_per_minute=settings.sms_codes_per_minute,
            sms_codes_per_phone_per_day=settings.sms_codes_per_phone_per_day,
            code_attempts_per_phone_per_day=settings.code_attempts_per_phone_per_day,
        )

    def lock_length(self, failures: int) -> timedelta:
        """How long ``failures`` failures from one source lock it: ``lockout_s`` at
        ``max_failures``, doubling with each further failure, never above ``lockout_max_s``."""
        doublings = min(failures - self.max_failures, 30)
        return timedelta(seconds=min(self.lockout_s * 2**doublings, self.lockout_max_s))


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    access_expires_at: datetime
    refresh_token: str | None
    refresh_expires_at: datetime | None
    principal: Principal


class SmsSender(Protocol):
    async def send_login_code(self, phone: str, code: str) -> None: ...

    async def send_binding_code(self, phone: str, code: str, account_no: str) -> None:
        """A code for the holder of a household's registered phone, who passes it on only
        to someone they agree may see the household (a tenant, family)."""
        ...


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
    await session.execute(
        delete(LoginFailure).where(LoginFailure.username == username[:64], LoginFailure.source == _source(ip))  # type: ignore[arg-type]
    )
    user.last_login_at = now
    assert user.id is not None
    return await _open_session(
        session, kind=PrincipalKind.staff, principal_id=user.id, now=now, policy=policy,
        with_refresh=True, ip=ip, user_agent=user_agent,
    )


def _source(ip: str | None) -> str:
    return source_of(ip)[:64]


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


async def _claim_against_lockout(session: AsyncSession, *, name: str, source: str, now: datetime, policy: AuthPolicy) -> int:
    statement = (
        insert(LoginFailure)
        .values(username=name, source=source, failures=1, last_failed_at=now)
        .on_conflict_do_update(
            index_elements=["username", "source"],
            set_={
                # A count quiet for longer than the longest lock starts over.
                "failures": text(
                    "CASE WHEN login_failures.last_failed_at < :forget_before THEN 1 ELSE login_failures.failures + 1 END"
                ).bindparams(forget_before=now - timedelta(seconds=policy.lockout_max_s)),
                "last_failed_at": now,
            },
        )
        .returning(LoginFailure.__table__.c.failures, LoginFailure.__table__.c.locked_until)  # type: ignore[attr-defined]
    )
    # The upsert holds the row lock until this transaction ends, so parallel attempts for
    # one name and source are counted one after another, each seeing the ones before it.
    failures, locked_until = (await session.execute(statement)).one()
    if locked_until is not None and locked_until > now:
        # Raising rolls this count back: attempts refused while locked do not lengthen it.
        raise errors.AccountLocked.until(locked_until, now=now)
    if failures >= policy.max_failures:
        await session.execute(
            update(LoginFailure)
            .where(LoginFailure.username == name, LoginFailure.source == source)  # type: ignore[arg-type]
            .values(locked_until=now + policy.lock_length(failures))
        )
    return int(failures)


async def unlock_staff_user(session: AsyncSession, *, actor: Principal, user_id: int) -> StaffUser:
    """An administrator lifts every login lock and failure count of a user they may edit."""
    user = await _check_user_editable(session, actor, user_id)
    await session.execute(delete(LoginFailure).where(LoginFailure.username == user.username))  # type: ignore[arg-type]
    return user


# --------------------------------------------------------------------------- throttles


def _minute(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0)


async def count_hit(
    session: AsyncSession, *, key: str, now: datetime, limit: int, over_limit: OverLimitMemo | None = None
) -> int:
    """Count one hit for ``key`` in ``now``'s minute, shared by every API process (one
    ``auth_throttle`` row per key and minute); :class:`RateLimited` past ``limit``.
    The row lock is held until the caller's transaction ends: commit it on its own.

    With ``over_limit`` (the app's memo), a key this process already saw refused at
    ``limit`` in this minute is refused at once (:class:`RepeatedRefusal`, nothing
    counted, no database round trip: the row would refuse it too), and a refusal the
    database decides is remembered there."""
    minute = _minute(now)
    if over_limit is not None and over_limit.knows_over(key, limit, minute):
        observe_throttle_refusal(key)
        raise RepeatedRefusal()
    hits: int = (await session.execute(
        text(
            "INSERT INTO auth_throttle AS t (key, minute, hits) VALUES (:key, :minute, 1) "
            "ON CONFLICT (key, minute) DO UPDATE SET hits = t.hits + 1 RETURNING hits"
        ),
        {"key": key[:100], "minute": minute},
    )).scalar_one()
    if hits > limit:
        if over_limit is not None:
            over_limit.remember_over(key, limit, minute)
        observe_throttle_refusal(key)
        raise RateLimited()
    return hits


async def count_daily_hit(session: AsyncSession, *, key: str, now: datetime, limit: int, refusal: DomainError) -> int:
    """Count one hit for ``key`` unless ``limit`` hits were counted in the 24 hours before
    ``now`` (a rolling day: no midnight to wait for); then raise ``refusal``. Concurrent
    callers for one key queue on an advisory lock held until the transaction ends."""
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key[:100]})
    used = int((await session.execute(
        text("SELECT coalesce(sum(hits), 0) FROM auth_throttle WHERE key = :key AND minute > :since"),
        {"key": key[:100], "since": _minute(now) - timedelta(days=1)},
    )).scalar_one())
    if used >= limit:
        raise refusal
    return await count_hit(session, key=key, now=now, limit=limit)


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
            select(AREA_TREE.c.path).join(RoleArea, RoleArea.area_id == AREA_TREE.c.id).where(RoleArea.role_id.in_(role_ids))  # type: ignore[arg-type,attr-defined]
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
    permissions: Iterable[str], allowed: frozenset[str] | None = None, *, field: str = "permissions"
) -> None:
    unknown = sorted(set(permissions) - (allowed if allowed is not None else all_permissions()))
    if unknown:
        raise errors.UnknownPermission(
            f"未知的权限: {', '.join(unknown)}", f"Unknown permission: {', '.join(unknown)}", field=field
        )


async def _role_in_scope(session: AsyncSession, actor: Principal, role_id: int, *, field: str, lock: bool = False) -> Role:
    """Role ``role_id`` when its unit lies in the actor's scope; NOT_FOUND otherwise."""
    statement = select(Role).where(Role.id == role_id, unit_visible(Role.area_id, actor.scope_patterns()))  # type: ignore[arg-type]
    if lock:
        statement = statement.with_for_update(of=Role)  # type: ignore[arg-type]
    role = (await session.execute(statement)).scalars().first()
    if role is None:
        raise NotFound(field=field)
    return role


_HELD_OR_ABOVE = text(
    """
    WITH RECURSIVE up AS (
        SELECT r.id, r.parent_id FROM roles r JOIN staff_user_roles ur ON ur.role_id = r.id WHERE ur.user_id = :user_id
        UNION SELECT r.id, r.parent_id FROM roles r JOIN up ON r.id = up.parent_id
    )
    SELECT EXISTS (SELECT 1 FROM up WHERE id = :role_id)
    """
)


async def _check_role_editable(session: AsyncSession, actor: Principal, role_id: int) -> Role:
    role = await _role_in_scope(session, actor, role_id, field="id", lock=True)
    if actor.is_staff and (await session.execute(_HELD_OR_ABOVE, {"user_id": actor.id, "role_id": role_id})).scalar_one():
        # Changed from above only: a holder could otherwise detach, widen or re-parent it.
        raise errors.RoleHierarchy("不能修改或删除自己持有的角色及其上级角色",
                                   "You cannot change or delete a role you hold, nor one above it", field="id")
    held, paths = await _role_grants(session, [role_id])
    if not held <= actor.permissions or not all(actor.in_scope(p) for p in paths):
        # A role above the actor is not theirs to edit.
        raise errors.GrantExceedsOwn(field="id")
    return role


# --------------------------------------------------------------------------- units


async def _unit_for(session: AsyncSession, actor: Principal, unit_id: int | None) -> int | None:
    """The unit a new or moved user or role belongs to: ``unit_id`` when it lies in the
    actor's scope (UNKNOWN_AREA otherwise), by default the actor's top area. An actor
    whose scope has several top areas names one; a whole-tree actor without a single
    root gets NULL (the company as a whole)."""
    patterns = actor.scope_patterns()
    if unit_id is not None:
        if not await area_exists(session, unit_id) or not await unit_in_scope(session, unit_id, patterns):
            raise errors.UnknownArea(field="unitId")
        return unit_id
    area, parent = AREA_TREE.alias("area"), AREA_TREE.alias("parent")
    tops: list[int] = list((await session.execute(
        select(area.c.id).outerjoin(parent, parent.c.id == area.c.parent_id)
        .where(in_scope(area.c.path, patterns), or_(parent.c.id.is_(None), not_(in_scope(parent.c.path, patterns))))
        .order_by(area.c.id).limit(2)
    )).scalars())
    if len(tops) == 1:
        return tops[0]
    if (await session.execute(select(whole_tree(patterns)))).scalar_one():
        return None
    raise DomainError("请选择所属单位", "Choose the unit it belongs to", field="unitId", code=ErrorCode.REQUIRED)


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
    unit_id: int | None = None


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
    new_parent: bool = True,
) -> None:
    """Refusals of a role's fields; ``new_parent``: the parent is being set (it must then lie
    in the actor's scope; a parent kept as it was is only the bound of the role's grants)."""
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
    area_paths = await require_area_paths(session, area_ids)
    _check_grantable(actor, permissions, list(area_paths.values()), field="permissions", area_field="areaIds")
    if parent_id is not None:
        if role_id is not None and (
            await session.execute(_ANCESTORS, {"parent_id": parent_id, "role_id": role_id})
        ).scalar_one():
            # The new parent is the role itself or one of its descendants: a cycle.
            raise errors.RoleHierarchy(field="parentId")
        # Only a role in the actor's scope becomes a parent (not 系统管理员 for a district).
        found = await _role_in_scope(session, actor, parent_id, field="parentId") if new_parent else await session.get(Role, parent_id)
        if found is None:
            raise NotFound(field="parentId")
        parent = found
        if kind.rank < parent.kind.rank:
            raise errors.RoleHierarchy(field="kind")
        parent_permissions, parent_paths = await _role_grants(session, [parent_id])
        if not permissions <= parent_permissions:
            raise errors.RoleHierarchy(field="permissions")
        if not all(any(path.startswith(p) for p in parent_paths) for path in area_paths.values()):
            raise errors.RoleHierarchy(field="areaIds")
    if role_id is not None:
        await _check_children_fit(session, role_id=role_id, kind=kind, permissions=permissions,
                                  paths=list(area_paths.values()))


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
    unit_id: int | None = None,
) -> Role:
    """Add a role belonging to unit ``unit_id`` (default: the actor's own top area)."""
    wanted_permissions, wanted_areas = frozenset(permissions), frozenset(area_ids)
    await _validate_role(
        session, actor, role_id=None, name=name, kind=kind, parent_id=parent_id,
        permissions=wanted_permissions, area_ids=wanted_areas,
    )
    unit = await _unit_for(session, actor, unit_id)
    role = Role(name=name.strip(), kind=kind, parent_id=parent_id, description=description.strip()[:400], area_id=unit)
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
    if parent_id != role.parent_id and role.parent_id is not None:
        try:
            await _role_in_scope(session, actor, role.parent_id, field="parentId")
        except NotFound:
            # Detaching a role from a parent outside the actor's scope (系统管理员) bends
            # a hierarchy that is not theirs.
            raise errors.RoleHierarchy("不能改动管辖范围外的上级角色", "You cannot change a parent role outside your scope",
                                       field="parentId") from None
    await _validate_role(
        session, actor, role_id=role_id, name=name, kind=kind, parent_id=parent_id,
        permissions=permissions, area_ids=area_ids, new_parent=parent_id != role.parent_id,
    )
    role.name, role.kind, role.parent_id = name.strip(), kind, parent_id
    if changes.unit_id is not None:
        role.area_id = await _unit_for(session, actor, changes.unit_id)
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


def roles_statement(*, scope_patterns: Sequence[str] | None, search: str | None = None) -> Select[Role]:
    """Roles whose unit lies in the scope (``None``: every role, for system callers)."""
    statement = select(Role).where(unit_visible(Role.area_id, scope_patterns))  # type: ignore[arg-type]
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
    unit_id: int | None = None


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


async def _check_roles_assignable(
    session: AsyncSession, actor: Principal, role_ids: frozenset[int], held: frozenset[int] = frozenset()
) -> None:
    """The roles exist, hold nothing beyond the actor's grants, and those not already
    ``held`` by the user lie in the actor's scope (an unseen role is unknown)."""
    found = await roles_by_ids(session, role_ids)
    if len(found) != len(role_ids):
        raise NotFound("角色不存在", "Unknown role", field="roleIds")
    added = sorted(role_ids - held)
    if added:
        visible = (await session.execute(select(func.count()).select_from(Role).where(  # type: ignore[arg-type]
            Role.id.in_(added), unit_visible(Role.area_id, actor.scope_patterns())))).scalar_one()  # type: ignore[union-attr]
        if visible != len(added):
            raise NotFound("角色不存在", "Unknown role", field="roleIds")
    permissions, paths = await _role_grants(session, sorted(role_ids))
    _check_grantable(actor, permissions, paths, field="roleIds")


async def _check_user_editable(session: AsyncSession, actor: Principal, user_id: int) -> StaffUser:
    """The user, locked, when their unit lies in the actor's scope (NOT_FOUND otherwise)
    and they hold nothing beyond the actor's grants."""
    user = (await session.execute(
        select(StaffUser).where(StaffUser.id == user_id, unit_visible(StaffUser.area_id, actor.scope_patterns()))  # type: ignore[arg-type]
        .with_for_update(of=StaffUser)  # type: ignore[arg-type]
    )).scalars().first()
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
    unit_id: int | None = None,
) -> StaffUser:
    """Add a staff user belonging to unit ``unit_id`` (default: the actor's own top area)."""
    username = username.strip()
    _validate_profile(username=username, full_name=full_name, email=email, phone=phone)
    check_password_strength(password)
    if (await session.execute(select(StaffUser.id).where(StaffUser.username == username))).first() is not None:  # type: ignore[call-overload]
        raise errors.Duplicate("用户名已存在", "This username is taken", field="username")
    wanted_roles = frozenset(role_ids)
    await _check_roles_assignable(session, actor, wanted_roles)
    unit = await _unit_for(session, actor, unit_id)
    user = StaffUser(
        username=username, full_name=full_name.strip(), email=email or None, phone=phone or None,
        password_hash=await hash_password_off_loop(password), created_at=now, updated_at=now, area_id=unit,
    )
    session.add(user)
    await session.flush()
    assert user.id is not None
    await _set_user_roles(session, user.id, wanted_roles)
    return user


async def update_staff_user(
    session: AsyncSession, *, actor: Principal, user_id: int, changes: StaffUserChanges, now: datetime
) -> StaffUser:
    if changes.is_active is False and user_id == actor.id and actor.is_staff:
        raise errors.CannotDeactivateSelf(field="isActive")
    user = await _check_user_editable(session, actor, user_id)
    _validate_profile(username=None, full_name=changes.full_name, email=changes.email, phone=changes.phone)
    if changes.full_name is not None:
        user.full_name = changes.full_name.strip()
    if changes.email is not None:
        user.email = changes.email or None
    if changes.phone is not None:
        user.phone = changes.phone or None
    if changes.role_ids is not None:
        held = frozenset((await user_role_ids(session, [user_id]))[user_id])
        await _check_roles_assignable(session, actor, changes.role_ids, held)
        await _set_user_roles(session, user_id, changes.role_ids)
    if changes.unit_id is not None:
        user.area_id = await _unit_for(session, actor, changes.unit_id)
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
    session: AsyncSession, *, actor: Principal, current_password: str, new_password: str, now: datetime,
    ip: str | None = None,
) -> StaffUser:
    """Change one's own password; other logins end, this one stays."""
    if not actor.is_staff:
        raise Forbidden()
    user = await session.get(StaffUser, actor.id, with_for_update=True)
    if user is None:
        raise NotFound()
    if not await verify_password_off_loop(user.password_hash, current_password):
        raise errors.InvalidCredentials("当前密码错误", "The current password is wrong", field="currentPassword")
    await session.execute(
        delete(LoginFailure).where(LoginFailure.username == user.username, LoginFailure.source == _source(ip))  # type: ignore[arg-type]
    )
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


# Who acted, as the operation log records it: a user with entries has history. Read
# through a table clause of its own (the audit layer, which owns the table, builds on auth).
_LOGGED_ACTORS = table("audit_log", column("actor_kind", Text), column("actor_id", BigInteger))


async def delete_staff_user(session: AsyncSession, *, actor: Principal, user_id: int) -> StaffUser:
    """Delete a user who never did anything; one with history must be deactivated."""
    if user_id == actor.id and actor.is_staff:
        raise errors.CannotDeactivateSelf(field="id")
    user = await _check_user_editable(session, actor, user_id)
    history = await session.execute(
        select(
            exists().where(_LOGGED_ACTORS.c.actor_kind == PrincipalKind.staff.value, _LOGGED_ACTORS.c.actor_id == user_id)
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


def staff_users_statement(
    *, scope_patterns: Sequence[str] | None, search: str | None = None, is_active: bool | None = None
) -> Select[StaffUser]:
    """Staff users whose unit lies in the scope (``None``: all, for system callers)."""
    statement = select(StaffUser).where(unit_visible(StaffUser.area_id, scope_patterns))  # type: ignore[arg-type]
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


def _mobile(phone: str) -> str:
    phone = phone.strip()
    if not MOBILE.match(phone):
        raise DomainError("手机号格式错误", "Malformed mobile number", field="phone", code=ErrorCode.INVALID)
    return phone


async def _refuse_recent_code(session: AsyncSession, phone: str, now: datetime) -> None:
    recent = await session.execute(
        select(OneTimeCode.id).where(  # type: ignore[call-overload]
            OneTimeCode.phone == phone, OneTimeCode.created_at > now - timedelta(seconds=CODE_RESEND_S)
        )
    )
    if recent.first() is not None:
        raise errors.CodeRateLimited(field="phone")


async def claim_code_send(
    session: AsyncSession, *, phone: str, now: datetime, policy: AuthPolicy, ip: str | None,
    over_limit: OverLimitMemo | None = None,
) -> None:
    """Count a request for a login code before anything is sent; commit it on its own.

    Refused, with nothing counted: a malformed number, a code sent to it under a minute
    ago, ``sms_codes_per_phone_per_day`` codes to it in the last 24 hours
    (:class:`CodeDailyLimit`), and past ``sms_codes_per_ip_per_minute`` from the address
    or ``sms_codes_per_minute`` in all (:class:`RateLimited`): SMS pumping costs money.
    """
    phone = _mobile(phone)
    await count_daily_hit(session, key=f"sms:phone:{phone}", now=now, limit=policy.sms_codes_per_phone_per_day,
                          refusal=errors.CodeDailyLimit(field="phone"))
    # Under the phone's lock, so two requests at once cannot both pass.
    await _refuse_recent_code(session, phone, now)
    await _count_sms_send(session, now=now, policy=policy, ip=ip, over_limit=over_limit)


async def _count_sms_send(
    session: AsyncSession, *, now: datetime, policy: AuthPolicy, ip: str | None, over_limit: OverLimitMemo | None
) -> None:
    # SMS pumping costs money: every request that may send one counts per address and in all.
    await count_hit(session, key=f"sms:ip:{_source(ip)}", now=now, limit=policy.sms_codes_per_ip_per_minute,
                    over_limit=over_limit)
    await count_hit(session, key="sms:all", now=now, limit=policy.sms_codes_per_minute, over_limit=over_limit)


async def request_login_code(
    session: AsyncSession, *, phone: str, now: datetime, policy: AuthPolicy, sender: SmsSender
) -> datetime:
    """Send a 6-digit code to ``phone``; at most one a minute (the throttles are counted
    first by :func:`claim_code_send`). Returns its expiry."""
    phone = _mobile(phone)
    await _refuse_recent_code(session, phone, now)
    code = f"{secrets.randbelow(1_000_000):06d}"
    expires_at = now + timedelta(seconds=policy.otp_ttl_s)
    session.add(OneTimeCode(phone=phone, code_hash=code_digest(policy.secret, f"{phone}:{code}"), created_at=now, expires_at=expires_at))
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
        or not secrets.compare_digest(pending.code_hash, code_digest(policy.secret, f"{phone}:{code.strip()}"))
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


async def claim_code_attempt(
    session: AsyncSession, *, phone: str, now: datetime, policy: AuthPolicy, ip: str | None,
    over_limit: OverLimitMemo | None = None,
) -> None:
    """Count one attempt against the phone's live code before it is compared; the caller
    commits this on its own. A code with five attempts used is dead: InvalidCode.

    Also counted (and refused past their limits, counting nothing): the address's login
    attempts a minute (:class:`RateLimited`) and the phone's code attempts over the last
    24 hours, right or wrong (:class:`CodeDailyLimit`), so a phone's code cannot be
    ground down by asking for new ones. ``policy`` and ``ip`` are required: a caller
    that left them out would skip those limits, or count every address as one."""
    phone = phone.strip()
    await count_hit(session, key=f"login:ip:{_source(ip)}", now=now, limit=policy.login_attempts_per_ip_per_minute,
                    over_limit=over_limit)
    await count_daily_hit(session, key=f"code:phone:{phone[:20]}", now=now, limit=policy.code_attempts_per_phone_per_day,
                          refusal=errors.CodeAttemptsDailyLimit(field="code"))
    live = (
        select(OneTimeCode.id)  # type: ignore[call-overload]
        .where(OneTimeCode.phone == phone, OneTimeCode.consumed_at.is_(None), OneTimeCode.expires_at > now)  # type: ignore[union-attr]
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


async def claim_bind_attempt(
    session: AsyncSession, *, resident: Principal, now: datetime, policy: AuthPolicy, ip: str | None,
    over_limit: OverLimitMemo | None = None,
) -> int:
    """Count a binding attempt (commit on its own): five wrong account number / name pairs
    lock binding for the resident (``lockout_s``, doubling like a login lock), so pairs
    cannot be guessed at will. An attempt may send a code to the household's registered
    phone, so it also counts against the address's and everyone's SMS minute limits
    (:class:`RateLimited`), as a login code request does: binding requests cannot pump SMS."""
    await _count_sms_send(session, now=now, policy=policy, ip=ip, over_limit=over_limit)
    # The resident's own counter (no address): their guesses lock only their binding.
    return await _claim_against_lockout(session, name=_bind_attempts_key(resident), source="", now=now, policy=policy)


def mask_phone(phone: str | None) -> str | None:
    """138****5678: enough for a person to recognise their own number."""
    if not phone:
        return None
    return phone[:3] + "****" + phone[-4:] if len(phone) >= 8 else "****"


@dataclass(frozen=True, slots=True)
class BindingOutcome:
    """Where a binding stands after a call: ``household`` is set once it is active."""

    binding: HouseholdBinding
    account_no: str
    resident_phone: str
    household: HouseholdIdentity | None
    # The masked registered phone a confirmation code was sent to, if one was.
    code_sent_to: str | None = None
    # The code :func:`send_binding_code` sends once the binding has committed.
    unsent_code: BindingCode | None = None


@dataclass(frozen=True, slots=True)
class BindingCode:
    """A household binding's confirmation code, for the registered phone."""

    phone: str
    code: str
    account_no: str


async def send_binding_code(outcome: BindingOutcome, *, sender: SmsSender) -> None:
    """Send the code :func:`bind_household` made, if it made one. Call it after that
    transaction committed: the gateway is slow, and waiting on it inside would hold the
    phone's SMS counter lock (and the binding's row) for every other request meanwhile.
    A failed send leaves the pending binding for the owner or the counter to approve."""
    if outcome.unsent_code is not None:
        await sender.send_binding_code(outcome.unsent_code.phone, outcome.unsent_code.code, outcome.unsent_code.account_no)


async def _emit_bound(session: AsyncSession, binding: HouseholdBinding) -> None:
    """``household.bound`` for every state change, in the caller's transaction."""
    await emit_event(
        session, "household.bound", HouseholdBound(binding.household_id, binding.resident_id, binding.state),
        key=f"household:{binding.household_id}",
    )


async def _activate(session: AsyncSession, binding: HouseholdBinding, *, now: datetime, decided_by: str, owner: bool) -> None:
    binding.state, binding.decided_at, binding.decided_by = BindingState.active, now, decided_by
    binding.code_hash = None
    await session.execute(
        insert(ResidentHousehold)
        .values(resident_id=binding.resident_id, household_id=binding.household_id, bound_at=now, is_owner=owner)
        .on_conflict_do_nothing()
    )
    await session.flush()
    await _emit_bound(session, binding)


def _binding_code_digest(policy: AuthPolicy, binding_id: int, code: str) -> str:
    # Its own message prefix: a binding code is never a login code for the same phone.
    return code_digest(policy.secret, f"bind:{binding_id}:{code.strip()}")


async def bind_household(
    session: AsyncSession,
    *,
    resident: Principal,
    account_no: str,
    name: str,
    now: datetime,
    policy: AuthPolicy,
) -> BindingOutcome:
    """Bind a household by its account number and registered name, with proof beyond
    what the bill prints.

    - The resident's login phone is the household's registered phone (or its second
      phone; the login code proved it): bound at once, as its owner.
    - Otherwise a pending binding is made; a code goes to the registered phone (when it
      is a mobile number and its daily SMS cap allows; the caller sends it with
      :func:`send_binding_code` after committing), and the resident confirms with
      :func:`confirm_household_binding`; or the owner, or the counter, approves it
      (:func:`decide_household_binding`). A repeated request returns the pending one
      without sending another code.

    An unknown account number and a wrong name get the same refusal, so numbers cannot
    be probed; attempts are counted by :func:`claim_bind_attempt` and a match clears the
    count. Every state change emits ``household.bound``.
    """
    if not resident.is_resident:
        raise Forbidden()
    household = await household_by_account_no(session, account_no.strip())
    if household is None or household.name.strip() != name.strip():
        raise errors.HouseholdMismatch(field="accountNo")
    if household.id in resident.household_ids:
        raise errors.AlreadyBound(field="accountNo")
    await session.execute(delete(LoginFailure).where(LoginFailure.username == _bind_attempts_key(resident)))  # type: ignore[arg-type]
    resident_phone = (await session.execute(select(Resident.phone).where(Resident.id == resident.id))).scalar_one()  # type: ignore[call-overload]
    registered = (household.phone or "").strip()
    # Both numbers on the archive are the current owner's.
    owner_phones = {registered, (household.phone2 or "").strip()} - {""}
    pending = (await session.execute(
        select(HouseholdBinding).where(
            HouseholdBinding.resident_id == resident.id, HouseholdBinding.household_id == household.id,  # type: ignore[arg-type]
            HouseholdBinding.state == BindingState.pending,  # type: ignore[arg-type]
        ).with_for_update()
    )).scalars().first()
    if pending is None:
        pending = HouseholdBinding(resident_id=resident.id, household_id=household.id, state=BindingState.pending, created_at=now)
        session.add(pending)
        await session.flush()
        assert pending.id is not None
        if resident_phone in owner_phones:
            await _activate(session, pending, now=now, decided_by="phone", owner=True)
            return BindingOutcome(pending, household.account_no, resident_phone, household)
        await _emit_bound(session, pending)
        if MOBILE.match(registered):
            try:
                await count_daily_hit(session, key=f"sms:phone:{registered}", now=now, limit=policy.sms_codes_per_phone_per_day,
                                      refusal=errors.CodeDailyLimit())
            except errors.CodeDailyLimit:
                # No code today: the owner or the counter can still approve.
                return BindingOutcome(pending, household.account_no, resident_phone, None)
            code = f"{secrets.randbelow(1_000_000):06d}"
            pending.code_hash = _binding_code_digest(policy, pending.id, code)
            pending.code_expires_at = now + timedelta(seconds=policy.otp_ttl_s)
            await session.flush()
            return BindingOutcome(pending, household.account_no, resident_phone, None, mask_phone(registered),
                                  BindingCode(registered, code, household.account_no))
    code_sent_to = mask_phone(registered) if pending.code_hash is not None else None
    return BindingOutcome(pending, household.account_no, resident_phone, None, code_sent_to)


async def _outcome(session: AsyncSession, binding: HouseholdBinding) -> BindingOutcome:
    household = await household_by_id(session, binding.household_id)
    assert household is not None
    phone = (await session.execute(select(Resident.phone).where(Resident.id == binding.resident_id))).scalar_one()  # type: ignore[call-overload]
    active = binding.state is BindingState.active
    return BindingOutcome(binding, household.account_no, phone, household if active else None)


async def claim_binding_code_attempt(session: AsyncSession, *, resident: Principal, binding_id: int, now: datetime) -> None:
    """Count one attempt at a binding's confirmation code before it is compared (commit
    on its own): five attempts, right or wrong, and the code is dead (InvalidCode)."""
    claimed = await session.execute(
        update(HouseholdBinding)
        .where(
            HouseholdBinding.id == binding_id, HouseholdBinding.resident_id == resident.id,  # type: ignore[arg-type]
            HouseholdBinding.state == BindingState.pending, HouseholdBinding.code_hash.is_not(None),  # type: ignore[arg-type,union-attr]
            HouseholdBinding.code_expires_at > now, HouseholdBinding.code_attempts < CODE_MAX_ATTEMPTS,  # type: ignore[arg-type,operator]
        )
        .values(code_attempts=HouseholdBinding.code_attempts + 1)
        .returning(HouseholdBinding.__table__.c.id)  # type: ignore[attr-defined]
    )
    if claimed.first() is None:
        raise errors.InvalidCode(field="code")


async def confirm_household_binding(
    session: AsyncSession, *, resident: Principal, binding_id: int, code: str, now: datetime, policy: AuthPolicy
) -> BindingOutcome:
    """Activate the resident's pending binding with the code sent to the household's
    registered phone (holding that phone makes them an owner). The attempt must have
    been claimed first with :func:`claim_binding_code_attempt`."""
    binding = (await session.execute(
        select(HouseholdBinding).where(
            HouseholdBinding.id == binding_id, HouseholdBinding.resident_id == resident.id,  # type: ignore[arg-type]
            HouseholdBinding.state == BindingState.pending,  # type: ignore[arg-type]
        ).with_for_update()
    )).scalars().first()
    if (
        binding is None or binding.code_hash is None or binding.code_expires_at is None or binding.code_expires_at <= now
        or binding.code_attempts > CODE_MAX_ATTEMPTS
        or not secrets.compare_digest(binding.code_hash, _binding_code_digest(policy, binding_id, code))
    ):
        raise errors.InvalidCode(field="code")
    await _activate(session, binding, now=now, decided_by="code", owner=True)
    return await _outcome(session, binding)


async def decide_household_binding(
    session: AsyncSession, *, actor: Principal, binding_id: int, approve: bool, now: datetime
) -> BindingOutcome:
    """An owner of the household (a resident bound to it as owner) or staff whose scope
    holds it (the counter) approves or rejects a pending binding. Anyone else, and a
    binding that is not pending, gets NOT_FOUND, so requests do not leak."""
    if actor.is_resident:
        decided_by = f"owner:{actor.id}"
    elif actor.is_staff:
        decided_by = f"staff:{actor.id}"
    else:
        raise Forbidden()
    # Who may decide is part of the query: a binding outside it is never loaded or locked.
    binding = (await session.execute(
        select(HouseholdBinding).where(
            HouseholdBinding.id == binding_id, HouseholdBinding.state == BindingState.pending,  # type: ignore[arg-type]
            col(HouseholdBinding.household_id).in_(_households_deciding_for(actor)),
        ).with_for_update()
    )).scalars().first()
    if binding is None:
        raise NotFound(field="id")
    if approve:
        await _activate(session, binding, now=now, decided_by=decided_by, owner=False)
    else:
        binding.state, binding.decided_at, binding.decided_by, binding.code_hash = BindingState.rejected, now, decided_by, None
        await session.flush()
        await _emit_bound(session, binding)
    return await _outcome(session, binding)


def pending_bindings_statement(actor: Principal) -> Select[tuple[HouseholdBinding, str, str]]:
    """Pending bindings an actor may see, with each household's account number and the
    resident's phone: a resident's own requests and those on households they own; a
    staff member's, on households in their scope."""
    statement = (
        select(HouseholdBinding, HOUSEHOLDS.c.account_no, Resident.phone)  # type: ignore[call-overload]
        .join(HOUSEHOLDS, HOUSEHOLDS.c.id == HouseholdBinding.household_id)
        .join(Resident, Resident.id == HouseholdBinding.resident_id)
        .where(HouseholdBinding.state == BindingState.pending)
    )
    visible: Any = col(HouseholdBinding.household_id).in_(_households_deciding_for(actor))
    if actor.is_resident:
        # A resident also sees their own requests.
        visible = or_(visible, col(HouseholdBinding.resident_id) == actor.id)
    return statement.where(visible).order_by(HouseholdBinding.id)  # type: ignore[no-any-return]


def _households_deciding_for(actor: Principal) -> Select[tuple[int]]:
    """The households whose bindings ``actor`` decides: a resident's owned ones, a staff
    member's in their scope (one predicate, :func:`in_scope`, like every scoped list)."""
    if actor.is_resident:
        return select(ResidentHousehold.household_id).where(  # type: ignore[call-overload,no-any-return]
            ResidentHousehold.resident_id == actor.id, ResidentHousehold.is_owner.is_(True),  # type: ignore[attr-defined]
        )
    return (  # type: ignore[no-any-return]
        select(HOUSEHOLDS.c.id).join(AREA_TREE, AREA_TREE.c.id == HOUSEHOLDS.c.area_id)
        .where(in_scope(AREA_TREE.c.path, actor.scope_patterns()))
    )


async def unbind_household(
    session: AsyncSession, *, resident: Principal, household_id: int, now: datetime
) -> HouseholdIdentity:
    if household_id not in resident.household_ids:
        raise NotFound(field="householdId")
    household = await household_by_id(session, household_id)
    if household is None:
        raise NotFound(field="householdId")
    await session.execute(
        delete(ResidentHousehold).where(
            ResidentHousehold.resident_id == resident.id, ResidentHousehold.household_id == household_id  # type: ignore[arg-type]
        )
    )
    unbound = HouseholdBinding(resident_id=resident.id, household_id=household_id, state=BindingState.unbound,
                               created_at=now, decided_at=now, decided_by=f"resident:{resident.id}")
    session.add(unbound)
    await session.flush()
    await _emit_bound(session, unbound)
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
    _check_known_permissions(wanted_scopes, client_scopes(), field="scopes")
    area_paths = await require_area_paths(session, wanted_areas)
    _check_grantable(actor, wanted_scopes, list(area_paths.values()), field="scopes", area_field="areaIds")
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
    """Client ``client_pk`` when its areas lie in the actor's scope (NOT_FOUND otherwise)
    and the actor holds its scopes (GRANT_EXCEEDS_OWN)."""
    client = (await session.execute(
        select(ApiClient).where(ApiClient.id == client_pk, client_visible(actor.scope_patterns())).with_for_update()  # type: ignore[arg-type]
    )).scalars().first()
    if client is None:
        raise NotFound(field="id")
    paths = (await session.execute(
        select(AREA_TREE.c.path).join(ApiClientArea, ApiClientArea.area_id == AREA_TREE.c.id)  # type: ignore[arg-type]
        .where(ApiClientArea.api_client_id == client_pk)  # type: ignore[arg-type]
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


def client_visible(scope_patterns: Sequence[str] | None) -> Any:
    """SQL: an API client every one of whose granted areas lies in the scope, the way a
    user or role is visible when its unit does (a client granted no area only to
    whole-tree scope). A client serving two districts belongs to neither district alone."""
    if scope_patterns is None:
        return true()
    if not scope_patterns:
        return false()
    granted = ApiClientArea.__table__.alias("granted")  # type: ignore[attr-defined]
    granted_area = AREA_TREE.alias("granted_area")
    outside = exists().where(
        granted.c.api_client_id == ApiClient.id, granted_area.c.id == granted.c.area_id,
        not_(granted_area.c.path.like(array(list(scope_patterns)).any_())),
    )
    placed = exists().where(granted.c.api_client_id == ApiClient.id)
    return or_(whole_tree(scope_patterns), and_(placed, not_(outside)))


def api_clients_statement(*, scope_patterns: Sequence[str] | None) -> Select[ApiClient]:
    """API clients within the scope (:func:`client_visible`; ``None``: all, for system callers)."""
    return select(ApiClient).where(client_visible(scope_patterns)).order_by(ApiClient.id)  # type: ignore[arg-type]
