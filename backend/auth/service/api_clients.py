"""API clients (第三方接口): registration with a secret stored hashed, rotation,
activation, client-credentials tokens, and which clients a scope sees."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, exists, false, not_, or_, select, true
from sqlalchemy.dialects.postgresql import array, insert
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth import errors
from backend.auth.catalog import client_scopes
from backend.auth.models import ApiClient, ApiClientArea, PrincipalKind
from backend.auth.principal import Principal
from backend.auth.scope import AREA_TREE, require_area_paths, whole_tree
from backend.auth.security import new_token, token_digest
from backend.auth.service.grants import _check_grantable, _check_known_permissions
from backend.auth.service.policy import AuthPolicy, TokenPair
from backend.auth.service.sessions import _open_session, _revoke_all
from backend.errors import DomainError, NotFound, ValidationFailed


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
