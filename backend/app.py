"""``create_app(settings, database_url) -> Starlette``: the whole HTTP surface.

Routes: ``/graphql`` (POST executes, GET serves GraphiQL, a WebSocket runs subscriptions
with graphql-transport-ws: docs/subscriptions.md), the installed domains' plain
HTTP routes (``/oauth/token``, downloads, uploads: ``Domain.routes``), ``/healthz`` and
``/metrics``. The schema, the routes and the services come from the domains'
declarations (``backend.domains``); this module imports no domain by name. The app is
stateless: run several processes behind a balancer.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from backend import db, version
from backend.auth.ratelimit import AnonymousThrottle, ClientRateLimiter, OverLimitMemo
from backend.auth.security import decode_access_token
from backend.auth.service import AuthPolicy, authenticate_on_connection
from backend.clock import utcnow
from backend.domain import Domain, HttpHost, close_services, collect_services, load
from backend.domains import installed
from backend.edge import (
    BODY_TOO_LARGE_HEADERS,
    AnonymousGate,
    BodyLimitMiddleware,
    BodyTooLarge,
    ClientAddressMiddleware,
    SecurityHeadersMiddleware,
    body_limit,
    body_too_large_body,
    error_body,
    metrics_allowed,
    request_id_from,
)
from backend.errors import ErrorCode
from backend.graphql import scalars
from backend.graphql.http import GraphQLEndpoint, serve_socket
from backend.graphql.schema import build_schema
from backend.graphql.subscriptions import EventFeed
from backend.graphql.transport_ws import SubscriptionServer
from backend.http_guards import CancelOnDisconnect, UnexpectedErrorGuard
from backend.jobs import defer_job
from backend.observability import DB_POOL, observe_http, registry, request_id_var
from backend.settings import Settings
from backend.slicing import LOOP_SHARE

log = logging.getLogger("shuiwu.http")

# The status the metrics record for a request whose client left before any answer (nginx's 499).
CLIENT_CLOSED_REQUEST = 499


class RequestIdMiddleware:
    """Gives every request an id (or keeps the caller's ``X-Request-Id`` when it has the
    strict format of :func:`backend.edge.request_id_from`), puts it in the log context
    and the response, and records latency per route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id")
        request_id = request_id_from(incoming.decode("latin-1") if incoming is not None else None)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status: int | None = None
        client_gone = False

        async def receive_noting_disconnect() -> Message:
            nonlocal client_gone
            message = await receive()
            if message["type"] == "http.disconnect":
                client_gone = True
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"].append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive_noting_disconnect, send_with_id)
        finally:
            if status is None:
                # No answer went out: the client went away (CancelOnDisconnect dropped the
                # work), which is not a server error; else something failed before answering.
                status = CLIENT_CLOSED_REQUEST if client_gone else 500
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            observe_http(label, str(status), time.perf_counter() - started)
            request_id_var.reset(token)


class InFlight:
    """Counts HTTP requests in flight on this process's loop (:data:`backend.slicing.LOOP_SHARE`):
    admitted work yields to the others between its slices."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with LOOP_SHARE.request():
            await self.app(scope, receive, send)


def tune_garbage_collector() -> None:
    """Move everything alive at start-up (schema, modules, pools) out of the collector's
    sight and collect young objects less often. A 1000-row response allocates tens of
    thousands of short-lived objects; with the default thresholds the collector rescans the
    long-lived heap many times per request (measured: 30% of the CPU of a 1000-row list)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def favour_the_event_loop() -> None:
    """CPU work off the loop (Excel files, import parsing) runs in threads that hold the
    GIL; when the loop thread wants it back it waits up to the switch interval, once per
    wake-up. 1 ms instead of 5 keeps a small request small while an export is written."""
    sys.setswitchinterval(0.001)


def create_app(settings: Settings, database_url: str, *, extra_routes: list[BaseRoute] | None = None,
               domains: tuple[Domain, ...] | None = None) -> Starlette:
    domains = domains if domains is not None else installed()
    limits = db.StatementLimits.for_api(settings)
    engine = db.create_engine(database_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow,
                              limits=limits)
    sessions = db.session_factory(engine)
    # Reads get a pool of their own in autocommit: no BEGIN/ROLLBACK around a SELECT, and
    # no isolation-level switch at every checkout (which execution_options would cost).
    read_engine = db.create_engine(database_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow,
                                   isolation_level="AUTOCOMMIT", limits=limits)
    read_sessions = db.session_factory(read_engine)
    # /healthz has a connection of its own, so it answers at once even when every pooled
    # connection is taken by heavy requests (it would otherwise queue behind them).
    health_engine = db.create_engine(database_url, pool_size=1, max_overflow=0, isolation_level="AUTOCOMMIT")
    # Admitted work's statements run on pools of their own, at a lower CPU priority when
    # the database is a process of this host (backend.db.route_admitted).
    twins: list[tuple[AsyncEngine, AsyncEngine]] = []
    if settings.db_admitted_nice:
        slots = settings.graphql_expensive_per_process or os.cpu_count() or 1
        for base, isolation in ((engine, {}), (read_engine, {"isolation_level": "AUTOCOMMIT"})):
            # Sibling fields of one request read on connections of their own: room for a few each.
            twin = db.create_engine(database_url, pool_size=slots, max_overflow=4 * slots, limits=limits, **isolation)
            db.lower_backend_priority(twin, settings.db_admitted_nice)
            db.route_admitted(base, twin)
            twins.append((base, twin))
    scalars.display_zone = settings.tz
    policy = AuthPolicy.from_settings(settings)
    limiter = ClientRateLimiter()
    anonymous = AnonymousThrottle(per_ip_per_minute=settings.anonymous_per_ip_per_minute, per_minute=settings.anonymous_per_minute,
                                  burst_per_ip=settings.anonymous_burst_per_ip)

    async def authenticate_token(token: str) -> Any:
        now = utcnow()
        # A forged or expired token is refused before it takes a pooled connection.
        decode_access_token(token, secret=policy.secret, now=now)
        async with db.raw_read(read_engine) as connection:
            return await authenticate_on_connection(connection, token=token, now=now, policy=policy)

    # The app's own collaborators, then what the declarations offer. over_limit: the
    # throttle keys the database refused this minute (backend.auth.ratelimit.OverLimitMemo).
    services = {"auth_policy": policy, "client_limiter": limiter, "over_limit": OverLimitMemo(), "defer_job": defer_job,
                **collect_services(settings, domains, sessions=sessions)}
    endpoint = GraphQLEndpoint(
        build_schema(domains),
        settings=settings,
        sessions=sessions,
        authenticate=authenticate_token,
        check_rate=limiter.check,
        check_anonymous=anonymous.check,
        read_sessions=read_sessions,
        read_engine=read_engine,
        services=services,
    )

    # One listener per process feeds every subscription (its own connection, outside the
    # pools), and only when the installed domains declare subscriptions.
    feed: EventFeed | None = None
    subscriptions: SubscriptionServer | None = None
    if endpoint.schema._schema.subscription_type is not None:
        feed = EventFeed(database_url)
        subscriptions = SubscriptionServer(endpoint, feed)

    async def graphql_socket(websocket: WebSocket) -> None:
        await serve_socket(websocket, subscriptions)

    async def healthz(request: Request) -> Response:
        try:
            await db.ping(health_engine)
        except Exception:  # the check reports any failure rather than raising it
            log.exception("health check failed")
            return JSONResponse({"status": "unavailable", "database": "down"}, 503)
        return JSONResponse({"status": "ok", "database": "up"})

    metrics_token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    metrics_networks = settings.metrics_networks

    async def metrics(request: Request) -> Response:
        if not metrics_allowed(request.scope, token=metrics_token, allowed=metrics_networks):
            return Response(error_body(ErrorCode.FORBIDDEN, "无权读取监控指标", "Not allowed to read metrics"), 403,
                            media_type="application/json")
        pool: Any = engine.pool
        DB_POOL.labels("checked_out").set(pool.checkedout())
        DB_POOL.labels("idle").set(pool.checkedin())
        DB_POOL.labels("size").set(pool.size())
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tune_garbage_collector()
        favour_the_event_loop()
        if feed is not None:
            await feed.start()
        yield
        if feed is not None:
            await feed.stop()
        await close_services(services)
        await engine.dispose()
        await read_engine.dispose()
        await health_engine.dispose()
        for base, twin in twins:
            db.unroute_admitted(base)
            await twin.dispose()

    @body_limit(settings.graphql_max_body_bytes)
    async def graphql(request: Request) -> Response:
        return await endpoint.handle(request)

    async def home(request: Request) -> Response:
        # Somewhere useful: GraphiQL when it is on (the demo), else where things are.
        if settings.graphiql:
            return RedirectResponse("/graphql", 307)
        return JSONResponse({
            "service": "shuiwu 水务", "version": version(),
            "graphql": "/graphql", "health": "/healthz",
            "docs": "README.md (the API and its conventions) and docs/ of the shuiwu source; the schema is "
                    "schema.graphql there, or introspection with a token",
        })

    host = HttpHost(settings=settings, sessions=sessions, read_engine=read_engine, services=services)
    routes: list[BaseRoute] = [
        Route("/", home, methods=["GET"]),
        Route("/graphql", graphql, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql_socket),
        Mount("/graphql/static", StaticFiles(packages=[("backend.graphql", "static")]), name="graphiql-static"),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *(route for domain in domains if domain.routes is not None for route in load(domain.routes)(host)),
        *(extra_routes or []),
    ]

    async def body_too_large(request: Request, refused: Exception) -> Response:
        assert isinstance(refused, BodyTooLarge)
        return Response(body_too_large_body(refused), 413, media_type="application/json",
                        headers={key.decode(): value.decode() for key, value in BODY_TOO_LARGE_HEADERS})

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={BodyTooLarge: body_too_large})
    app.state.settings = settings
    app.state.engine = engine
    app.state.read_engine = read_engine
    app.state.graphql = endpoint
    app.state.subscriptions = subscriptions
    app.state.sessions = sessions
    app.state.services = services
    app.state.policy = policy
    # Exports and imports take the same slots as /graphql's expensive operations (backend.exports.http.admitted).
    app.state.admission = endpoint.admission
    # The plain routes' caller check (backend.exports.http.caller) takes API clients' tokens here.
    app.state.client_limiter = limiter
    # Each add wraps what is there. From the outside in: the client address, security
    # headers, the request id, the anonymous gate, the count of requests in flight, the
    # error guard, the disconnect watch, the body limit.
    app.add_middleware(BodyLimitMiddleware, default_max_bytes=settings.max_body_bytes)
    app.add_middleware(CancelOnDisconnect)
    app.add_middleware(UnexpectedErrorGuard)
    # Requests in flight past the gate: while any runs unadmitted, admitted work yields more.
    app.add_middleware(InFlight)
    # Anonymous floods are refused here, before the guards and routing: /graphql without a
    # bearer token, /oauth/token always (its callers have no token yet).
    app.add_middleware(AnonymousGate, check=anonymous.check, paths={"/graphql": True, "/oauth/token": False},
                       oauth_paths=frozenset({"/oauth/token"}), refusal_delay_s=settings.anonymous_refusal_delay_s)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(SecurityHeadersMiddleware, hsts=settings.https)
    # Outermost: everything inside reads the client address from scope["client"].
    app.add_middleware(ClientAddressMiddleware, trusted_proxies=settings.trusted_proxy_networks)
    return app
