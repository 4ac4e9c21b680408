"""The base every local fake gateway shares (docs/gateways.md): a Starlette app that
answers as the remote would, signing and verifying as it does, and a control API under
``/_control/`` for tests, the demo and a person trying things.

A fake is a handful of :class:`FakeRoute` values whose handlers take what was received
(:class:`Received`) and return an :class:`Answer`: no Starlette in the fake's own module.
The base records every request and applies what the control API scripted:

- ``GET  /_control/``          the kind, its routes and the actions it understands;
- ``GET  /_control/requests``  what it received, oldest first (method, path, query,
                               headers, body, the answer's status, the action applied);
- ``POST /_control/next``      script the next request(s): ``{"action": "delay",
                               "seconds": 3}`` answers after a pause, ``{"action": "error",
                               "status": 503, "body": …}`` answers that instead, and any
                               action the kind declares (``"refuse"``, ``"bad_signature"``)
                               is handed to its handler as ``Received.script``; ``times``
                               (default 1) and ``path`` (default any) narrow it;
- ``POST /_control/reset``     forget the requests and the scripts.

``shuiwu fake-gateway KIND --port N`` serves a declared gateway's fake; the tests use
the fixture in ``tests/fixtures/gateways.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backend.domain import Gateway, load, read_settings

# The base's own actions; a kind adds its own (FakeRoute handlers read Received.script).
BASE_ACTIONS: Mapping[str, str] = {
    "delay": "answer as usual after `seconds` (0–300)",
    "error": "answer `status` (default 500) with `body` instead of the usual answer",
}
# Requests remembered for /_control/requests (the oldest are forgotten first).
MAX_REMEMBERED = 1000
MAX_SCRIPTS = 100
MAX_DELAY_S = 300.0


@dataclass(frozen=True, slots=True)
class Script:
    """What the control API asked the next matching request(s) to get."""

    action: str
    seconds: float = 0.0
    status: int = 500
    body: Any = None
    path: str | None = None


@dataclass(frozen=True, slots=True)
class Received:
    """A request as the fake's handler sees it (``script``: a kind's own action, if any)."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    script: Script | None = None

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class Answer:
    """A fake's answer: ``body`` bytes or text as given, anything else as JSON."""

    body: Any = b""
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    media_type: str | None = None

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body, ensure_ascii=False).encode()


FakeHandler = Callable[[Received], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class FakeRoute:
    method: str
    path: str
    handler: FakeHandler


class ScriptRefused(ValueError):
    """A /_control/next body the fake cannot follow."""


class FakeState:
    """The requests a fake received and the scripts waiting for the next ones."""

    def __init__(self, actions: Mapping[str, str]) -> None:
        self.actions = {**BASE_ACTIONS, **actions}
        self.received: deque[dict[str, Any]] = deque(maxlen=MAX_REMEMBERED)
        # [script, requests it still applies to]
        self.scripts: list[list[Any]] = []

    def script(self, order: Mapping[str, Any]) -> Script:
        action = order.get("action")
        if action not in self.actions:
            raise ScriptRefused(f"unknown action {action!r}; this fake knows {sorted(self.actions)}")
        times = order.get("times", 1)
        seconds = order.get("seconds", 0.0)
        status = order.get("status", 500)
        path = order.get("path")
        if not isinstance(times, int) or not 1 <= times <= 1000:
            raise ScriptRefused("times must be an integer from 1 to 1000")
        if not isinstance(seconds, int | float) or not 0 <= seconds <= MAX_DELAY_S:
            raise ScriptRefused(f"seconds must be a number from 0 to {MAX_DELAY_S:g}")
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise ScriptRefused("status must be an HTTP status (100–599)")
        if path is not None and not isinstance(path, str):
            raise ScriptRefused("path must be a string")
        if len(self.scripts) >= MAX_SCRIPTS:
            raise ScriptRefused(f"at most {MAX_SCRIPTS} scripts may wait")
        scripted = Script(action, float(seconds), status, order.get("body"), path)
        self.scripts.append([scripted, times])
        return scripted

    def take(self, path: str) -> Script | None:
        for entry in self.scripts:
            scripted, _ = entry
            if scripted.path is None or scripted.path == path:
                entry[1] -= 1
                if entry[1] == 0:
                    self.scripts.remove(entry)
                return scripted  # type: ignore[no-any-return]
        return None

    def reset(self) -> None:
        self.received.clear()
        self.scripts.clear()


def fake_gateway_app(kind: str, routes: Sequence[FakeRoute], *, actions: Mapping[str, str] | None = None) -> Starlette:
    """The fake of gateway ``kind``: ``routes`` answered as the remote would, behind the
    control API. ``actions`` are the kind's own scriptable actions, by name, with a line
    saying what each does."""
    state = FakeState(actions or {})

    def endpoint(route: FakeRoute) -> Callable[[Request], Awaitable[Response]]:
        async def answer(request: Request) -> Response:
            body = await request.body()
            scripted = state.take(request.url.path)
            seen: dict[str, Any] = {
                "at": datetime.now(UTC).isoformat(), "method": request.method, "path": request.url.path,
                "query": dict(request.query_params), "headers": dict(request.headers),
                "body": body.decode("utf-8", "replace"), "action": scripted.action if scripted else None, "status": None,
            }
            state.received.append(seen)
            if scripted is not None and scripted.action == "delay":
                await asyncio.sleep(scripted.seconds)
            if scripted is not None and scripted.action == "error":
                reply = Answer(scripted.body if scripted.body is not None else {"error": "scripted"}, scripted.status)
            else:
                received = Received(request.method, request.url.path, dict(request.query_params), dict(request.headers), body,
                                    scripted if scripted is not None and scripted.action not in BASE_ACTIONS else None)
                reply = await route.handler(received)
            seen["status"] = reply.status
            return Response(reply.encoded(), reply.status, headers=dict(reply.headers),
                            media_type=reply.media_type or ("application/json" if not isinstance(reply.body, bytes | str)
                                                            else None))

        return answer

    async def describe(request: Request) -> Response:
        return JSONResponse({"kind": kind, "routes": [f"{route.method} {route.path}" for route in routes],
                             "actions": state.actions})

    async def requests_seen(request: Request) -> Response:
        return JSONResponse({"requests": list(state.received)})

    async def script_next(request: Request) -> Response:
        try:
            order = json.loads(await request.body())
            if not isinstance(order, dict):
                raise ScriptRefused("the body must be a JSON object")
            scripted = state.script(order)
        except (ValueError, ScriptRefused) as refused:
            return JSONResponse({"error": str(refused)}, 400)
        return JSONResponse({"scripted": {"action": scripted.action, "seconds": scripted.seconds, "path": scripted.path},
                             "waiting": len(state.scripts)})

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"reset": True})

    return Starlette(routes=[
        Route("/_control/", describe, methods=["GET"]),
        Route("/_control/requests", requests_seen, methods=["GET"]),
        Route("/_control/next", script_next, methods=["POST"]),
        Route("/_control/reset", reset, methods=["POST"]),
        *(Route(route.path, endpoint(route), methods=[route.method]) for route in routes),
    ])


class _BesideAnother(uvicorn.Server):
    """A server that leaves Ctrl-C to the one it runs beside (the demo's API server),
    which sets ``should_exit`` on it when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def fake_server(app: Any, *, host: str = "127.0.0.1", port: int = 0, signals: bool = True) -> uvicorn.Server:
    """A uvicorn server for a fake: port 0 picks a free one (``bound_port`` says which).
    A scripted delay never holds the shutdown more than a second. ``signals=False``: it
    does not take Ctrl-C for itself (several servers in one process), nor the process's
    logging: uvicorn configures its loggers process-wide when a server is configured, and
    a fake's "warning" level silenced the API's own start-up lines beside it."""
    if not signals:
        config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="off",
                                loop="asyncio", timeout_graceful_shutdown=1)
        return _BesideAnother(config)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
                            loop="asyncio", timeout_graceful_shutdown=1)
    return uvicorn.Server(config)


def bound_port(server: uvicorn.Server) -> int:
    port: int = server.servers[0].sockets[0].getsockname()[1]
    return port


async def serve_fake(server: uvicorn.Server, *, ready: Callable[[int], None], startup_timeout_s: float = 20.0) -> None:
    """Run ``server`` until it is told to exit, calling ``ready(port)`` once it listens."""
    serving = asyncio.create_task(server.serve())
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if serving.done() or time.monotonic() > deadline:
            await serving  # raises what stopped it
            raise RuntimeError("the fake gateway did not start")
        await asyncio.sleep(0.01)
    ready(bound_port(server))
    await serving


# Where the demo serves a gateway's fake: only a URL on this machine names one.
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def local_fakes(gateways: Iterable[Gateway]) -> list[tuple[str, uvicorn.Server]]:
    """The fakes ``shuiwu demo run`` serves beside the API: each gateway with a fake
    whose ``SHUIWU_<KIND>_URL`` points at this machine, on that URL's port. A gateway
    pointed elsewhere (a real remote, a sandbox) is left alone."""
    servers = []
    for gateway in gateways:
        if gateway.fake is None:
            continue
        settings = read_settings(gateway.settings)
        parts = urlsplit(settings.url)
        if parts.scheme == "http" and parts.hostname in LOOPBACK and parts.port:
            server = fake_server(load(gateway.fake)(settings), host=parts.hostname, port=parts.port, signals=False)
            servers.append((gateway.kind, server))
    return servers
