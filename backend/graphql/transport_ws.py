"""GraphQL subscriptions over a WebSocket on ``/graphql``: the graphql-transport-ws
protocol (the one the ``graphql-ws`` client library speaks; docs/subscriptions.md).

Framework-free: the app hands each accepted socket over as a :class:`Socket`. A
connection authenticates with ``connection_init`` (``{"authorization": "Bearer <access
token>"}``, the tokens of HTTP) and then runs subscription operations only: queries and
mutations keep going over HTTP, where their guards are. Every operation passes the
same gate as an HTTP request (document cache, validation, depth, root fields, cost,
the caller's rate), and its items are filtered by the subscriber's permission and scope
(backend.graphql.subscriptions).

What ends a connection, with its close code:

| code | when |
|---|---|
| 4400 | a message that is not valid graphql-transport-ws (bad JSON, unknown type, binary) |
| 4401 | no token, or one that is invalid, expired or revoked (at ``connection_init``, at the |
|      | token's expiry, or at a re-check of its login session); a ``subscribe`` before the ack |
| 4406 | the client did not offer the ``graphql-transport-ws`` subprotocol |
| 4408 | no ``connection_init`` within ``SHUIWU_SUBSCRIPTIONS_INIT_TIMEOUT_S`` |
| 4409 | a ``subscribe`` reusing the id of a running operation |
| 4429 | a second ``connection_init``, the per-principal cap, or too many sockets from one address before their init |
| 4008 | the client reads too slowly: ``SHUIWU_SUBSCRIPTIONS_QUEUE_SIZE`` messages wait for its |
|      | socket when a live item comes, a replayed item waited ``PACED_SEND_WAIT_S`` for room, |
|      | or an operation fell ``SHUIWU_SUBSCRIPTIONS_BACKLOG`` events behind |
| 4500 | the server could not re-check the token (database down); reconnect later |
| 1009 | a message longer than ``SHUIWU_GRAPHQL_MAX_BODY_BYTES`` |

Every close leaves nothing behind: the operations stop, their listener streams close and
what was queued for the client is dropped. A client that reconnects with the greatest
``eventId`` it received as ``afterEventId`` misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from graphql import ExecutionResult, GraphQLError, OperationType
from graphql.execution import create_source_event_stream, map_source_to_response_event

from backend.auth.principal import Principal
from backend.auth.security import decode_access_token
from backend.clock import utcnow
from backend.edge import bearer_token, refusal_errors
from backend.errors import BadUserInput, DomainError, ErrorCode, RateLimited
from backend.events.listener import ListenerLaggedError
from backend.graphql.context import Context
from backend.graphql.errors import format_error
from backend.graphql.subscriptions import EventFeed, Subscriber

if TYPE_CHECKING:
    from backend.graphql.http import GraphQLEndpoint

log = logging.getLogger("shuiwu.graphql.ws")

PROTOCOL = "graphql-transport-ws"

BAD_REQUEST = 4400
UNAUTHORIZED = 4401
SUBPROTOCOL_NOT_ACCEPTABLE = 4406
INIT_TIMEOUT = 4408
SUBSCRIBER_EXISTS = 4409
TOO_MANY = 4429
SLOW_CONSUMER = 4008
INTERNAL_ERROR = 4500
MESSAGE_TOO_BIG = 1009

# How long closing may wait for a socket whose client stopped reading; then the server
# lets go of it (the transport is dropped when the ASGI call returns).
CLOSE_WAIT_S = 5.0
# How long a replayed item may wait for room in the outbox: the replay goes at the pace
# the client reads, and only a client that reads nothing for this long is cut off.
PACED_SEND_WAIT_S = 30.0
# Sockets one address may hold before their connection_init: each waits up to the init
# timeout for nothing, so an anonymous client could otherwise hold any number of them.
MAX_UNINITIALISED_PER_ADDRESS = 10


class Socket(Protocol):
    """An accepted WebSocket, as the app adapts it."""

    async def receive(self) -> str | bytes | None:
        """The next message; None once the client has gone."""

    async def send(self, text: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class SubscriptionServer:
    """The process's WebSocket side of ``/graphql``: it serves each socket and counts
    open connections per principal (the cap holds per process)."""

    def __init__(self, endpoint: GraphQLEndpoint, feed: EventFeed, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.endpoint = endpoint
        self.feed = feed
        self.settings = endpoint.settings
        self.clock = clock
        self.open_connections: Counter[tuple[str, int]] = Counter()
        self.uninitialised: Counter[str] = Counter()  # per address, before connection_init

    async def serve(self, socket: Socket, *, ip: str | None, user_agent: str | None) -> None:
        """Run the protocol on ``socket`` until either side ends it. An address already
        holding :data:`MAX_UNINITIALISED_PER_ADDRESS` sockets that have not sent
        ``connection_init`` gets 4429 at once."""
        address = ip or ""
        if self.uninitialised[address] >= MAX_UNINITIALISED_PER_ADDRESS:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(socket.close(TOO_MANY, "Too many connections"), CLOSE_WAIT_S)
            return
        self.uninitialised[address] += 1
        await _Connection(self, socket, ip=ip, user_agent=user_agent, address=address).run()

    def _initialised(self, address: str) -> None:
        self.uninitialised[address] -= 1
        if self.uninitialised[address] <= 0:
            del self.uninitialised[address]

    def _claim(self, principal: Principal) -> tuple[str, int] | None:
        key = (principal.kind.value, principal.id)
        if self.open_connections[key] >= self.settings.subscriptions_per_principal:
            return None
        self.open_connections[key] += 1
        return key

    def _release(self, key: tuple[str, int]) -> None:
        self.open_connections[key] -= 1
        if self.open_connections[key] <= 0:
            del self.open_connections[key]


class _Connection:
    def __init__(self, server: SubscriptionServer, socket: Socket, *, ip: str | None, user_agent: str | None,
                 address: str | None = None) -> None:
        self.server = server
        # Counted among its address's uninitialised sockets until its connection_init or its end.
        self.uninitialised_address = address
        self.endpoint = server.endpoint
        self.settings = server.settings
        self.socket = socket
        self.ip = ip
        self.user_agent = user_agent
        self.outbox: asyncio.Queue[str] = asyncio.Queue(maxsize=self.settings.subscriptions_queue_size)
        # The running operation of each id. An id is free again once the client completes
        # it, while its cancelled task may still be finishing: entries are keyed so that
        # such a task never removes or shadows its successor's (see _operate).
        self.operations: dict[str, asyncio.Task[None]] = {}
        self.contexts: dict[asyncio.Task[None], Context] = {}
        self.stopping: set[asyncio.Task[None]] = set()  # completed by the client, still finishing
        self.token: str | None = None
        self.principal: Principal | None = None
        self.checked_at = 0.0  # loop time of the last check of the login session
        self.slot: tuple[str, int] | None = None
        self.init_received = False
        self.ended = asyncio.Event()
        self.close_with: tuple[int, str] | None = None
        self.loop = asyncio.get_running_loop()
        self.tasks: list[asyncio.Task[Any]] = []
        self.timers: list[asyncio.TimerHandle] = []

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        self.tasks = [asyncio.create_task(self._write(), name="ws-writer"),
                      asyncio.create_task(self._read(), name="ws-reader")]
        self.timers.append(self.loop.call_later(self.settings.subscriptions_init_timeout_s, self._init_timed_out))
        try:
            await self.ended.wait()
        finally:
            await self._shut_down()

    def end(self, code: int | None, reason: str = "") -> None:
        """End the connection (the first reason wins); None: the client has gone."""
        if self.ended.is_set():
            return
        self.close_with = (code, reason) if code is not None else None
        self.ended.set()

    def _leave_uninitialised(self) -> None:
        if self.uninitialised_address is not None:
            self.server._initialised(self.uninitialised_address)
            self.uninitialised_address = None

    async def _shut_down(self) -> None:
        self._leave_uninitialised()
        for timer in self.timers:
            timer.cancel()
        running = [*self.tasks, *self.operations.values(), *self.stopping]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self.slot is not None:
            self.server._release(self.slot)
            self.slot = None
        if self.close_with is not None:
            code, reason = self.close_with
            # A client that stopped reading may never take the close frame: give up on it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.socket.close(code, reason), CLOSE_WAIT_S)

    def _init_timed_out(self) -> None:
        if not self.init_received:
            self.end(INIT_TIMEOUT, "Connection initialisation timeout")

    # ------------------------------------------------------------------ the wire

    async def _write(self) -> None:
        while True:
            text = await self.outbox.get()
            try:
                await self.socket.send(text)
            except Exception:  # the client went away mid-send: the reader sees it too
                self.end(None)
                return

    def _send(self, message: dict[str, Any]) -> None:
        """Queue ``message`` for the writer; a full outbox means the client stopped
        reading (the writer waits on its socket): it is cut off, the server is not held."""
        try:
            self.outbox.put_nowait(orjson.dumps(message).decode())
        except asyncio.QueueFull:
            self.end(SLOW_CONSUMER, "Slow consumer")

    async def _send_paced(self, message: dict[str, Any]) -> None:
        """Queue ``message`` once the outbox has room (a replay goes at the client's
        pace); a client that takes nothing for ``PACED_SEND_WAIT_S`` is cut off."""
        try:
            await asyncio.wait_for(self.outbox.put(orjson.dumps(message).decode()), PACED_SEND_WAIT_S)
        except TimeoutError:
            self.end(SLOW_CONSUMER, "Slow consumer")

    async def _read(self) -> None:
        try:
            await self._read_messages()
        except Exception:
            # A bug, not the client: the connection must not linger half-served.
            log.exception("serving a WebSocket failed")
            self.end(INTERNAL_ERROR, "Internal server error")

    async def _read_messages(self) -> None:
        while not self.ended.is_set():
            raw = await self.socket.receive()
            if raw is None:
                self.end(None)
                return
            if isinstance(raw, bytes):
                self.end(BAD_REQUEST, "Binary messages are not supported")
                return
            if len(raw) > self.settings.graphql_max_body_bytes:
                self.end(MESSAGE_TOO_BIG, "Message too big")
                return
            try:
                message = orjson.loads(raw)
            except orjson.JSONDecodeError:
                message = None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                self.end(BAD_REQUEST, "Invalid message received")
                return
            await self._dispatch(message)

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "connection_init":
            await self._connection_init(message.get("payload"))
        elif kind == "ping":
            self._send({"type": "pong"})
        elif kind == "pong":
            pass
        elif kind == "subscribe":
            await self._subscribe(message)
        elif kind == "complete":
            operation_id = message.get("id")
            task = self.operations.pop(operation_id, None) if isinstance(operation_id, str) else None
            if task is not None:
                # The id is free for a new subscribe now; the task is awaited at shutdown.
                self.stopping.add(task)
                task.add_done_callback(self.stopping.discard)
                task.cancel()
        else:
            self.end(BAD_REQUEST, f"Invalid message type {kind[:40]!r}")

    # ------------------------------------------------------------------ authentication

    async def _connection_init(self, payload: Any) -> None:
        if self.init_received:
            self.end(TOO_MANY, "Too many initialisation requests")
            return
        self.init_received = True
        self._leave_uninitialised()
        authorization = payload.get("authorization") if isinstance(payload, dict) else None
        token = bearer_token(authorization) if isinstance(authorization, str) else None
        if token is None:
            self._count_anonymous()
            self.end(UNAUTHORIZED, "Unauthorized")
            return
        try:
            principal = await self.endpoint.authenticate(token)
            expires_at = self._expires_at(token)
        except DomainError as refusal:
            self._count_anonymous()
            self.end(UNAUTHORIZED, f"Unauthorized: {_reason(refusal)}")
            return
        except Exception:
            log.exception("authenticating a WebSocket failed unexpectedly")
            self.end(INTERNAL_ERROR, "Internal server error")
            return
        slot = self.server._claim(principal)
        if slot is None:
            self.end(TOO_MANY, "Too many connections")
            return
        self.slot, self.token, self.principal = slot, token, principal
        self.checked_at = self.loop.time()
        # The token's own expiry ends the connection to the second, without a query.
        delay = (expires_at - self.server.clock()).total_seconds()
        self.timers.append(self.loop.call_later(max(delay, 0.0), self.end, UNAUTHORIZED, "Unauthorized: TOKEN_EXPIRED"))
        self.tasks.append(asyncio.create_task(self._keep_checking(), name="ws-auth"))
        self._send({"type": "connection_ack", "payload": {"expiresAt": expires_at.isoformat()}})

    def _expires_at(self, token: str) -> datetime:
        policy = self.endpoint.services["auth_policy"]
        claims = decode_access_token(token, secret=policy.secret, now=self.server.clock())
        return datetime.fromtimestamp(int(claims["exp"]), UTC)

    def _count_anonymous(self) -> None:
        # A made-up token costs its address like an anonymous request over HTTP.
        with contextlib.suppress(RateLimited):
            self.endpoint._check_anonymous(self.ip)

    async def _keep_checking(self) -> None:
        interval = self.settings.subscriptions_auth_recheck_s
        while True:
            await asyncio.sleep(interval)
            await self._recheck()

    async def _recheck(self) -> None:
        """Re-read the login session and the principal's grants; a revoked or expired
        session ends the connection, changed grants apply to the next event."""
        assert self.token is not None
        try:
            principal = await self.endpoint.authenticate(self.token)
        except DomainError as refusal:
            self.end(UNAUTHORIZED, f"Unauthorized: {_reason(refusal)}")
            return
        except Exception:
            log.exception("re-checking a WebSocket's token failed")
            self.end(INTERNAL_ERROR, "Internal server error")
            return
        self.principal = principal
        self.checked_at = self.loop.time()
        for context in self.contexts.values():
            context.principal = principal

    async def _fresh(self) -> bool:
        """Whether the connection may handle an event (awaited before each one): its
        session was checked within the re-check interval (checked now if not)."""
        if self.loop.time() - self.checked_at >= self.settings.subscriptions_auth_recheck_s:
            await self._recheck()
        return not self.ended.is_set()

    # ------------------------------------------------------------------ operations

    async def _subscribe(self, message: dict[str, Any]) -> None:
        if self.principal is None:
            self.end(UNAUTHORIZED, "Unauthorized")
            return
        operation_id, payload = message.get("id"), message.get("payload")
        if (not isinstance(operation_id, str) or not operation_id or len(operation_id) > 128
                or not isinstance(payload, dict) or not isinstance(payload.get("query"), str)):
            self.end(BAD_REQUEST, "Invalid message received")
            return
        if operation_id in self.operations:
            self.end(SUBSCRIBER_EXISTS, f"Subscriber for {operation_id[:80]} already exists")
            return
        if len(self.operations) >= self.settings.subscriptions_operations_per_connection:
            refusal = RateLimited("此连接上的订阅过多", "Too many subscriptions on this connection")
            self._send({"id": operation_id, "type": "error", "payload": refusal_errors(refusal, 429)})
            return
        self.operations[operation_id] = asyncio.create_task(self._operate(operation_id, payload), name="ws-operation")

    async def _operate(self, operation_id: str, payload: dict[str, Any]) -> None:
        request_id = uuid.uuid4().hex
        responses: AsyncIterator[ExecutionResult] | None = None
        this = asyncio.current_task()
        try:
            started = await self._start(payload, request_id)
            if isinstance(started, list):
                self._send({"id": operation_id, "type": "error", "payload": started})
                return
            responses, subscriber = started
            async for result in responses:
                if self.ended.is_set():
                    return
                body: dict[str, Any] = {"data": result.data}
                if result.errors:
                    body["errors"] = [format_error(error, request_id) for error in result.errors]
                message = {"id": operation_id, "type": "next", "payload": body}
                if subscriber.replaying:
                    await self._send_paced(message)
                else:
                    self._send(message)
            self._send({"id": operation_id, "type": "complete"})
        except ListenerLaggedError:
            self.end(SLOW_CONSUMER, "Slow consumer")
        except DomainError as refusal:
            # Raised by the event stream itself: a permission taken away, the feed unavailable.
            request = request_id if refusal.code is ErrorCode.INTERNAL else None
            self._send({"id": operation_id, "type": "error", "payload": refusal_errors(refusal, 200, request)})
        except GraphQLError as error:
            self._send({"id": operation_id, "type": "error", "payload": [format_error(error, request_id)]})
        except Exception as crash:
            wrapped = GraphQLError(str(crash), original_error=crash)
            self._send({"id": operation_id, "type": "error", "payload": [format_error(wrapped, request_id)]})
        finally:
            # Only its own entry: after a complete, the id may already name a new operation.
            if self.operations.get(operation_id) is this:
                del self.operations[operation_id]
            if this is not None:
                self.contexts.pop(this, None)
            if responses is not None:
                with contextlib.suppress(Exception):
                    await responses.aclose()  # type: ignore[attr-defined]

    async def _start(self, payload: dict[str, Any],
                     request_id: str) -> list[dict[str, Any]] | tuple[AsyncIterator[ExecutionResult], Subscriber]:
        """The operation's response stream and its :class:`Subscriber`, or the errors
        that refuse it (the same gate as ``POST /graphql``)."""
        endpoint = self.endpoint
        principal = self.principal
        assert principal is not None
        query: str = payload["query"]
        variables = payload.get("variables") or {}
        operation_name = payload.get("operationName")
        try:
            if "\x00" in query:
                raise BadUserInput("文本不能包含 NUL 字符", "Text must not contain NUL characters")
            if not isinstance(variables, dict) or (operation_name is not None and not isinstance(operation_name, str)):
                raise BadUserInput("variables 或 operationName 格式错误", "Malformed variables or operationName")
            endpoint.check_rate(principal)
        except DomainError as refusal:
            return refusal_errors(refusal, 429 if isinstance(refusal, RateLimited) else 400)
        prepared = await endpoint.documents.get(query)
        if prepared.refusal is not None:
            return refusal_errors(prepared.refusal, 200)
        if prepared.errors:
            return [format_error(error, request_id) for error in prepared.errors]
        subscriber = Subscriber(self.server.feed, self._fresh)
        context = Context(
            settings=self.settings, sessions=endpoint.sessions, request_id=request_id, principal=principal,
            ip=self.ip, user_agent=self.user_agent, plans=prepared.plans, read_sessions=endpoint.read_sessions,
            read_engine=endpoint.read_engine, services=endpoint.services, subscriber=subscriber,
        )
        executor = endpoint.build_executor(prepared, context, variables, operation_name)
        if isinstance(executor, list):
            return [format_error(error, request_id) for error in executor]
        operation = executor.operation
        if operation.operation is not OperationType.SUBSCRIPTION:
            only_subscriptions = BadUserInput(
                "WebSocket 上只能订阅; 查询和变更请用 POST /graphql",
                "Only subscriptions run over the WebSocket: send queries and mutations with POST /graphql")
            return refusal_errors(only_subscriptions, 400)
        shape = prepared.shapes[operation.name.value if operation.name else None]
        try:
            endpoint.check_limits(shape, executor.variable_values, principal)
        except DomainError as refusal:
            return refusal_errors(refusal, 200)
        this = asyncio.current_task()
        assert this is not None
        self.contexts[this] = context
        source = create_source_event_stream(executor)
        if executor.is_awaitable(source):
            source = await source  # type: ignore[misc]
        if isinstance(source, ExecutionResult):
            return [format_error(error, request_id) for error in source.errors or ()]
        return map_source_to_response_event(executor, source), subscriber  # type: ignore[arg-type]


def _reason(refusal: DomainError) -> str:
    reason = getattr(refusal, "reason", refusal.code)
    return reason.value if isinstance(reason, ErrorCode) else str(reason)
