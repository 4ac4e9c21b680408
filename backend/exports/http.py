"""Plain-HTTP pieces shared by every download and upload route (a domain's ``http.py``).

- :func:`caller`: the principal behind ``Authorization: Bearer <access token>`` (checked on
  a raw read connection, one statement, like /graphql) or behind a short-lived signed
  ``token`` parameter, which is how a browser link downloads a file. A signed token
  (signed and verified in ``backend.exports.links``, re-exported here) is an HMAC over
  its purpose (the route's path), the principal, the expiry and the exact query
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

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import Response

from backend import db
from backend.auth.errors import TokenInvalid
from backend.auth.http import client_ip
from backend.auth.principal import Principal
from backend.auth.security import decode_access_token
from backend.auth.service import AuthPolicy, authenticate_on_connection
from backend.clock import utcnow
from backend.edge import refusal_body
from backend.errors import DomainError, ErrorCode, NotAuthenticated

# The link signing lives in exports.links (no Starlette, so a service module may sign a
# link); re-exported here for the routes and schemas that import it from http.
from backend.exports.links import download_url as download_url
from backend.exports.links import link_holder as link_holder
from backend.exports.links import sign_download_token as sign_download_token
from backend.exports.links import verify_download_token as verify_download_token
from backend.graphql.limits import admission_key


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

