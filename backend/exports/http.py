"""Plain-HTTP pieces shared by every download and upload route (a domain's ``http.py``).

- :func:`caller`: the principal behind ``Authorization: Bearer <access token>`` (checked on
  a raw read connection, one statement, like /graphql) or behind a short-lived signed
  ``token`` parameter, which is how a browser link downloads a file. A signed token is an
  HMAC over its purpose (the route's path), the principal, the expiry and the exact query
  parameters, so neither the file, the filter nor the caller can be swapped. A link is
  bound to the login session it was made in (logout kills it) and works once.
  An API client's call also takes one request from its rate, as on /graphql
  (:func:`check_client_rate`): every plain route that authenticates goes through here.
- :func:`refusal`: a refusal in the same JSON shape as /graphql's top-level errors.
- :func:`admitted`: every export and import counts as one expensive request of its caller.

Exports are answered from the file storage (``backend.files.http.serve_export``): the
finished file moves into it and is deleted once sent, or once the client went away, or
the send failed: in every case.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import Response

from backend import db
from backend.auth.errors import TokenExpired, TokenInvalid, TokenRevoked
from backend.auth.http import client_ip
from backend.auth.models import PrincipalKind
from backend.auth.principal import Principal
from backend.auth.security import KeyPurpose, decode_access_token, derive_key
from backend.auth.service import AuthPolicy, authenticate_on_connection, load_principal
from backend.clock import utcnow
from backend.edge import refusal_body
from backend.errors import DomainError, ErrorCode, NotAuthenticated
from backend.exports.links import DownloadGrant, check_download_login, redeem_download_link
from backend.graphql.limits import admission_key

DOWNLOAD_TOKEN_TTL_S = 300


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
    lasts (:func:`backend.exports.links.redeem_download_link`). Returns the token and its
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


async def caller(
    request: Request,
    *,
    read_engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    policy: AuthPolicy,
    purpose: str | None = None,
) -> Principal:
    """The authenticated caller: a Bearer access token, or (when ``purpose`` is given) a
    signed ``token`` query parameter for that download. An API client's request is
    counted against its rate (:func:`check_client_rate`), as on /graphql."""
    now = utcnow()
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenInvalid("Authorization 须为 Bearer 令牌", "Authorization must be a Bearer token")
        # A forged or expired token is refused before it takes a pooled connection.
        decode_access_token(token.strip(), secret=policy.secret, now=now)
        async with db.raw_read(read_engine) as connection:
            principal = await authenticate_on_connection(connection, token=token.strip(), now=now, policy=policy)
        check_client_rate(request, principal)
        return principal
    params = dict(request.query_params)
    signed = params.get("token")
    if purpose is None or not signed:
        raise NotAuthenticated()
    found = await link_holder(signed, purpose=purpose, params=params, sessions=sessions, policy=policy, now=now)
    check_client_rate(request, found)
    return found


def check_client_rate(request: Request, principal: Principal) -> None:
    """Take one request from an API client's rate, the same per-process buckets /graphql
    uses (``app.state.client_limiter``, set by create_app); :class:`RateLimited` when
    empty, which :func:`refusal` answers with 429 whatever status the route passes."""
    limiter = getattr(request.app.state, "client_limiter", None)
    if limiter is not None:
        limiter.check(principal)


def refusal(error: DomainError, status: int) -> Response:
    """A refusal shaped like /graphql's top-level errors (:func:`backend.edge.refusal_body`).
    A rate limit is always 429, so a route's "not authenticated" branch need not tell it apart."""
    if error.code is ErrorCode.RATE_LIMITED:
        status = 429
    return Response(refusal_body(error, status), status, media_type="application/json")


@contextlib.asynccontextmanager
async def admitted(request: Request, principal: Principal) -> AsyncIterator[None]:
    """Run an export or import as one expensive request of its caller: the slots /graphql's
    expensive operations take (``app.state.admission``, :class:`backend.graphql.limits.Admission`),
    per caller and per process. :class:`AdmissionRefused` (RATE_LIMITED, answered 429 by
    :func:`refusal`) when no slot frees within the admission wait."""
    admission = getattr(request.app.state, "admission", None)
    if admission is None:
        yield
        return
    async with admission.admit(admission_key(principal, client_ip(request))):
        yield

