"""``POST /oauth/token``: the OAuth 2 client-credentials grant for third parties, beside
the ``issueClientToken`` mutation, for clients that speak plain OAuth.

The body is a small ``application/x-www-form-urlencoded`` form (RFC 6749): any other
type is 415, a body over :data:`TOKEN_MAX_BODY_BYTES` is 413 (refused while it streams in).
Throttled like every anonymous call (per client address and in all, at the door by
``backend.edge.AnonymousGate``), and each token issued takes a request from the client's own rate (per
``client_id``): a refused issue writes no login session. Refusals: 429 ``RATE_LIMITED``.
"""

from __future__ import annotations

import base64
import binascii

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backend.auth.ratelimit import ClientRateLimiter
from backend.auth.service import AuthPolicy, issue_client_token
from backend.clock import utcnow
from backend.domain import HttpHost
from backend.edge import body_limit, error_body, media_type, oauth_refusal_body
from backend.errors import DomainError, RateLimited, UnsupportedMediaType
from backend.observability import request_id_var

# client_id, client_secret and grant_type fit many times over.
TOKEN_MAX_BODY_BYTES = 4 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"


def client_ip(request: Request) -> str | None:
    """The caller's address, as the throttles and the admission slots key on it."""
    return request.client.host if request.client else None


def _rate_limited(refusal: RateLimited) -> Response:
    return Response(oauth_refusal_body(refusal, "rate_limited"), 429, media_type="application/json",
                    headers={"Retry-After": "60"})


def routes(host: HttpHost) -> list[Route]:
    sessions = host.sessions
    policy: AuthPolicy = host.services["auth_policy"]
    limiter: ClientRateLimiter = host.services["client_limiter"]
    # The operation log's writer, offered by audit's declaration (audit comes after auth).
    record_operation = host.services["record_operation"]

    @body_limit(TOKEN_MAX_BODY_BYTES)
    async def token(request: Request) -> Response:
        ip = client_ip(request)  # throttled as anonymous at the door (backend.edge.AnonymousGate)
        if media_type(request.headers.get("content-type")) != FORM_TYPE:
            unsupported = UnsupportedMediaType(FORM_TYPE)
            return Response(error_body(unsupported.code, unsupported.message, unsupported.message_en), 415,
                            media_type="application/json")
        form = await request.form(max_files=0, max_fields=10)
        client_id, client_secret = str(form.get("client_id") or ""), str(form.get("client_secret") or "")
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("basic "):
            try:
                client_id, _, client_secret = base64.b64decode(authorization[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return JSONResponse({"error": "invalid_client"}, 401)
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        if "\x00" in client_id or "\x00" in client_secret or len(client_id) > 200 or len(client_secret) > 500:
            return JSONResponse({"error": "invalid_request"}, 400)
        now = utcnow()
        try:
            async with sessions() as session, session.begin():
                issued = await issue_client_token(session, client_id=client_id, client_secret=client_secret, now=now, policy=policy)
                # Inside the transaction: a client past its rate gets no new login session.
                limiter.check(issued.principal)
                await record_operation(
                    session, at=now, actor=issued.principal, module="login", action="issueClientToken",
                    summary=f"第三方 {issued.principal.name} 获取访问令牌: 成功", payload={"clientId": client_id},
                    success=True, ip=ip, request_id=request_id_var.get(),
                )
        except RateLimited as refusal:
            return _rate_limited(refusal)
        except DomainError as refusal:
            async with sessions() as session, session.begin():
                await record_operation(
                    session, at=now, actor=None, actor_name=client_id[:100] or "匿名", module="login",
                    action="issueClientToken", summary=f"第三方获取访问令牌: 失败 ({refusal.message})",
                    payload={"clientId": client_id}, success=False, ip=ip, request_id=request_id_var.get(),
                )
            return JSONResponse({"error": "invalid_client", "error_description": refusal.message_en}, 401)
        return JSONResponse(
            {
                "access_token": issued.access_token,
                "token_type": "Bearer",
                "expires_in": int((issued.access_expires_at - now).total_seconds()),
                "scope": " ".join(sorted(issued.principal.permissions)),
            },
            headers={"Cache-Control": "no-store"},
        )

    return [Route("/oauth/token", token, methods=["POST"])]
