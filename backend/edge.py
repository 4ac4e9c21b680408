"""The HTTP edge: what every request passes before a route sees it.

- :class:`BodyLimitMiddleware` counts the bytes a route reads from ``receive`` and stops
  at the limit the route declared with :func:`body_limit` (else the default), for a
  ``Content-Length`` body and a chunked one alike: 413 with a typed JSON error, the rest
  of the body never read.
- :func:`client_address`: the one definition of "the client's IP" (context, audit, rate
  limits). ``X-Forwarded-For`` counts only when the peer is a configured trusted proxy;
  :class:`ClientAddressMiddleware` puts the result in ``scope["client"]`` so every reader
  of ``request.client`` sees it.
- :func:`request_id_from`: a caller's ``X-Request-Id`` is kept only in a strict format.
- :class:`SecurityHeadersMiddleware`: nosniff, no referrer, no framing, a CSP, no-store
  and (on HTTPS deployments) HSTS on every response.
- :func:`metrics_allowed`: who may read ``/metrics``.

Plain ASGI (no framework import): ``backend/app.py`` wires it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, TypeVar

import orjson

from backend.errors import DomainError, ErrorCode, RateLimited

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _header(scope: Scope, name: bytes) -> str | None:
    """All values of one request header, joined as HTTP joins repeated headers."""
    values = [value.decode("latin-1") for key, value in scope.get("headers", ()) if key.lower() == name]
    return ",".join(values) if values else None


def refusal_errors(error: DomainError, status: int, request_id: str | None = None,
                   **extensions: Any) -> list[dict[str, Any]]:
    """The ``errors`` list of a refusal, shaped like /graphql's top-level errors:
    ``extensions`` carry ``code``, ``messageEn`` and, when known, ``field`` and ``requestId``.
    A 401 keeps the code UNAUTHENTICATED (clients drop the token) and says why in ``reason``."""
    fields: dict[str, Any] = {"code": error.code.value, "messageEn": error.message_en}
    if status == 401:
        reason = getattr(error, "reason", error.code)
        fields["code"] = ErrorCode.UNAUTHENTICATED.value
        fields["reason"] = reason.value if isinstance(reason, ErrorCode) else str(reason)
    if error.field:
        fields["field"] = error.field
    if request_id:
        fields["requestId"] = request_id
    fields.update(extensions)
    return [{"message": error.message, "extensions": fields}]


def refusal_body(error: DomainError, status: int, request_id: str | None = None, **extensions: Any) -> bytes:
    """The JSON body of every refusal outside GraphQL's own answers: ``{"errors": [...]}``
    (:func:`refusal_errors`)."""
    return orjson.dumps({"errors": refusal_errors(error, status, request_id, **extensions)})


def oauth_refusal_body(error: DomainError, oauth_error: str) -> bytes:
    """A refusal for an OAuth 2 endpoint: RFC 6749's ``error`` / ``error_description`` for
    OAuth clients beside the ``errors`` list every other client reads."""
    return orjson.dumps({"error": oauth_error, "error_description": error.message_en,
                         "errors": refusal_errors(error, 429 if isinstance(error, RateLimited) else 400)})


def error_body(code: ErrorCode, message: str, message_en: str, **extensions: Any) -> bytes:
    """:func:`refusal_body` for a code and its two messages."""
    return refusal_body(DomainError(message, message_en, code=code), 0, **extensions)


def media_type(content_type: str | None) -> str:
    """The media type of a ``Content-Type`` header, lowercased, without its parameters
    (``""`` when there is none)."""
    return (content_type or "").partition(";")[0].strip().lower()


async def send_json(send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- body limits

_BODY_LIMIT = "max_body_bytes"


def body_limit(max_bytes: int) -> Callable[[Endpoint], Endpoint]:
    """Declare the largest request body ``endpoint`` reads (the decorated function is the
    route's endpoint; :class:`BodyLimitMiddleware` enforces it)."""

    def declare(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, _BODY_LIMIT, max_bytes)
        return endpoint

    return declare


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over {limit} bytes")
        self.limit = limit


def _contains_body_too_large(error: BaseException) -> BodyTooLarge | None:
    if isinstance(error, BodyTooLarge):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _contains_body_too_large(inner)
            if found is not None:
                return found
    return None


class BodyLimitMiddleware:
    """Refuses a body past its route's limit while it streams in.

    The limit is looked up when the route first reads the body (routing has run by
    then and put the endpoint in the scope). A declared ``Content-Length`` over it is
    refused before a byte is read; a chunked body is refused at the chunk that crosses
    it. Either way the server answers 413 and closes the connection without reading on.
    """

    def __init__(self, app: ASGIApp, *, default_max_bytes: int) -> None:
        self.app = app
        self.default_max_bytes = default_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit: int | None = None
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal limit, received
            if limit is None:
                limit = int(getattr(scope.get("endpoint"), _BODY_LIMIT, self.default_max_bytes))
                declared = _header(scope, b"content-length")
                if declared is not None and declared.strip().isdigit() and int(declared) > limit:
                    raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BaseException as error:
            refused = _contains_body_too_large(error)
            if refused is None or started:
                raise
            await send_json(send, 413, body_too_large_body(refused), BODY_TOO_LARGE_HEADERS)


# Connection: close: the unread rest of the body is never read.
BODY_TOO_LARGE_HEADERS = [(b"connection", b"close")]


def body_too_large_body(refused: BodyTooLarge) -> bytes:
    """The 413 answer. (app.py also registers it as the handler of BodyTooLarge, so a
    middleware between the route and this one cannot turn the refusal into a 500.)"""
    error = DomainError(f"请求体过大 (上限 {refused.limit} 字节)",
                        f"The request body is too large (at most {refused.limit} bytes)", code=ErrorCode.BODY_TOO_LARGE)
    return refusal_body(error, 413, maxBytes=refused.limit)


# --------------------------------------------------------------------------- client address


def parse_networks(value: str) -> tuple[IPNetwork, ...]:
    """Comma-separated addresses or CIDR networks (``10.0.0.0/8, ::1``); ValueError names a bad one."""
    networks = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or network: {part!r}") from None
    return tuple(networks)


def _address(value: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def _within(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(address.version == network.version and address in network for network in networks)


def client_address(peer: str | None, forwarded_for: str | None, trusted_proxies: tuple[IPNetwork, ...]) -> str | None:
    """The client's IP address: the connecting peer, unless the peer is a trusted proxy;
    then the rightmost ``X-Forwarded-For`` hop that is not itself a trusted proxy (hops
    further left were written by whoever called that client, so they prove nothing).
    A malformed header from a trusted proxy leaves the peer."""
    peer_address = _address(peer) if peer else None
    if peer_address is None or not forwarded_for or not _within(peer_address, trusted_proxies):
        return peer
    hops = [_address(hop) for hop in forwarded_for.split(",")]
    if any(hop is None for hop in hops):
        return peer
    for hop in reversed(hops):
        assert hop is not None
        if not _within(hop, trusted_proxies):
            return str(hop)
    return str(hops[0])


class ClientAddressMiddleware:
    """Puts :func:`client_address` in ``scope["client"]``; keeps the peer in
    ``scope["shuiwu.peer"]``."""

    def __init__(self, app: ASGIApp, *, trusted_proxies: tuple[IPNetwork, ...]) -> None:
        self.app = app
        self.trusted_proxies = trusted_proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            peer = scope.get("client")
            scope["shuiwu.peer"] = peer
            if peer and self.trusted_proxies:
                address = client_address(peer[0], _header(scope, b"x-forwarded-for"), self.trusted_proxies)
                if address != peer[0]:
                    scope["client"] = (address, 0)
        await self.app(scope, receive, send)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class AnonymousGate:
    """Takes one token from the anonymous buckets (``check(address)``, raising
    :class:`RateLimited` when empty) for every POST to one of ``paths`` that carries no
    bearer token (or to any path in ``paths`` mapped to False: every caller of it is
    anonymous), and answers a refusal 429 right here, before the rest of the stack (error
    guard, disconnect watch, body limit, routing) spends anything on it: a flood of
    anonymous logins is refused for the price of a dictionary lookup. A bearer token that
    fails is the endpoint's to count (it knows only after checking it)."""

    def __init__(self, app: ASGIApp, *, check: Callable[[str | None], None], paths: dict[str, bool],
                 oauth_paths: frozenset[str] = frozenset(), refusal_delay_s: float = 0.0) -> None:
        self.app = app
        self.check = check
        # A refusal is answered this late (a timer, no work): a client that floods in a
        # loop, as fast as it is answered, slows itself down to its concurrency per delay.
        self.refusal_delay_s = refusal_delay_s
        self.paths = paths  # path -> whether a bearer token lets a request past the gate
        self.oauth_paths = oauth_paths  # refused in RFC 6749's shape

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            bearer_passes = self.paths.get(scope["path"])
            if bearer_passes is not None and not (bearer_passes and bearer_token(_header(scope, b"authorization"))):
                client = scope.get("client")
                try:
                    self.check(client[0] if client else None)
                except RateLimited as refused:
                    body = (oauth_refusal_body(refused, "rate_limited") if scope["path"] in self.oauth_paths
                            else refusal_body(refused, 429))
                    if self.refusal_delay_s:
                        await asyncio.sleep(self.refusal_delay_s)
                    await send_json(send, 429, body, [(b"retry-after", b"60")])
                    return
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------- request ids

# A caller's id is kept only if it looks like one (uuid, hex, ULID, …): anything else
# (log-line injection, megabyte ids, unicode look-alikes) gets a fresh id instead.
REQUEST_ID_FORMAT = re.compile(r"[A-Za-z0-9-]{8,64}")


def request_id_from(header: str | None) -> str:
    if header is not None and REQUEST_ID_FORMAT.fullmatch(header):
        return header
    return uuid.uuid4().hex


# --------------------------------------------------------------------------- security headers

API_CSP = "default-src 'none'; frame-ancestors 'none'"
# Static assets may be cached; everything else (API answers, downloads) may not.
CACHEABLE_PREFIXES = ("/graphql/static/",)
HSTS = "max-age=31536000; includeSubDomains"


def page_csp(html: str) -> str:
    """The CSP of a page served from here (GraphiQL): scripts, styles and fonts only from
    this origin plus the page's own inline scripts by hash, requests only to this origin."""
    inline = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'" for script in inline
    )
    return ("default-src 'none'; "
            f"script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class SecurityHeadersMiddleware:
    """Adds the security headers a response did not set itself."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = str(scope.get("path", "")).startswith(CACHEABLE_PREFIXES)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {key.lower() for key, _ in headers}
                wanted = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"content-security-policy", API_CSP.encode()),
                ]
                if not cacheable:
                    wanted.append((b"cache-control", b"no-store"))
                if self.hsts:
                    wanted.append((b"strict-transport-security", HSTS.encode()))
                headers.extend((key, value) for key, value in wanted if key not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --------------------------------------------------------------------------- /metrics


def metrics_allowed(
    scope: Scope, *, token: str | None, allowed: tuple[IPNetwork, ...]
) -> bool:
    """Whether this request may read /metrics: it carries ``Authorization: Bearer
    <SHUIWU_METRICS_TOKEN>``, or it comes from an allowed address (default loopback).

    A request relayed by a proxy that is not trusted (it carries X-Forwarded-For or
    Forwarded that nobody resolved) does not count as coming from the proxy's address:
    otherwise a local reverse proxy would make every outside caller "loopback".
    """
    authorization = _header(scope, b"authorization") or ""
    scheme, _, presented = authorization.partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode()):
        return True
    client = scope.get("client")
    address = _address(client[0]) if client else None
    if address is None or not _within(address, allowed):
        return False
    relayed = _header(scope, b"x-forwarded-for") is not None or _header(scope, b"forwarded") is not None
    return not (relayed and client == scope.get("shuiwu.peer"))
