"""Two small ASGI guards every HTTP request passes (installed by ``create_app``):

- :class:`CancelOnDisconnect`: a client that goes away cancels the work it asked for.
  The request runs in a task of its own; once its body has been read, a watcher reads
  the connection, and an ``http.disconnect`` before the response is complete cancels
  the task. asyncpg turns the cancellation into a cancel request to PostgreSQL, so the
  statement stops at once instead of running (and spilling to temporary files) for
  nobody.
- :class:`UnexpectedErrorGuard`: an exception that escapes any route (GraphQL masks its
  own) answers a JSON error with code INTERNAL and the request id, logged with that id;
  a statement PostgreSQL cut at one of its limits answers its typed error
  (QUERY_TIMEOUT, QUERY_TOO_LARGE) with 503.

Plain ASGI: nothing here knows a route.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from backend.db import limit_refusal
from backend.edge import ASGIApp, Message, Receive, Scope, Send, refusal_body, send_json
from backend.errors import DomainError, ErrorCode
from backend.observability import request_id_var

log = logging.getLogger("shuiwu.http")

_DISCONNECT: Message = {"type": "http.disconnect"}


class CancelOnDisconnect:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        expects_body = headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers
        gone = asyncio.Event()
        responded = False
        pending: list[Message] = []
        watcher: asyncio.Task[None] | None = None
        work: asyncio.Task[None]

        async def watch() -> None:
            # Only http.request messages (a body-less request's empty one) or the
            # disconnect can arrive here: the body was read before the watch began.
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    if not responded:
                        work.cancel()
                    return
                pending.append(message)

        def start_watching() -> None:
            nonlocal watcher
            if watcher is None:
                watcher = asyncio.create_task(watch(), name="disconnect-watch")

        async def receive_for_app() -> Message:
            if pending:
                return pending.pop(0)
            if watcher is not None:
                # The watcher reads the connection now: the next message is its end.
                await gone.wait()
                return _DISCONNECT
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                start_watching()
            return message

        async def send_and_note(message: Message) -> None:
            nonlocal responded
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                responded = True
            await send(message)

        async def serve() -> None:
            await self.app(scope, receive_for_app, send_and_note)

        work = asyncio.create_task(serve())
        if not expects_body:
            start_watching()
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                work.cancel()  # the server itself is stopping this request
                raise
            log.info("client went away; request cancelled")
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher


class UnexpectedErrorGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_and_note(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as error:
            if started:
                raise  # half a response is out: only closing the connection is left
            request_id = request_id_var.get() or "-"
            refusal = limit_refusal(error)
            if refusal is not None:
                log.warning("statement cut at a database limit (%s) on %s", refusal.code, scope.get("path"))
                status = 503
            else:
                log.exception("unexpected error on %s (request %s)", scope.get("path"), request_id,
                              extra={"request_id": request_id})
                status, refusal = 500, DomainError("服务器内部错误", "Internal error", code=ErrorCode.INTERNAL)
            await send_json(send, status, refusal_body(refusal, status, request_id))
