"""Calling a blocking SDK without blocking the event loop or hanging a request.

A :class:`GatewayClient` is what the hosts offer as the service ``gateway.<kind>``, one
per declared gateway and process. Its :meth:`GatewayClient.call` runs the SDK function
on the gateway's **own** threads (never the loop's default executor, which argon2 and
openpyxl share) and promises:

- it returns within the gateway's ``timeout_s``, waiting for a thread included, or raises
  a :class:`~backend.gateways.errors.GatewayError`: ``GATEWAY_TIMEOUT`` when the SDK ran
  past it, ``GATEWAY_BUSY`` when every thread is taken and the wait queue is full (at
  once) or no thread freed in time, ``GATEWAY_UNAVAILABLE`` when the remote cannot be
  reached (``requests``' connection errors are translated here), and whatever the
  gateway's own code raises for a refusal or a bad signature;
- a thread the caller gave up on still counts as taken until the SDK returns, so a
  remote that hangs fills the pool and later calls are refused as busy instead of
  piling up threads (hence: pass the SDK the same timeout, so the thread ends too);
- when the gateway keeps exchanges, every call, failed ones included, leaves one
  ``gateway_exchanges`` row written in a transaction of its own, secrets redacted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import requests
import urllib3
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.clock import Clock, utcnow
from backend.db import transaction
from backend.domain import Gateway, read_settings
from backend.gateways.errors import GatewayBusy, GatewayError, GatewayTimeout, GatewayUnavailable
from backend.gateways.models import GatewayExchange
from backend.gateways.settings import GatewaySettings

log = logging.getLogger(__name__)

T = TypeVar("T")

REDACTED = "***"
# Keys whose values are never kept, whatever the gateway declares (case-insensitive),
# and any key containing one of the markers.
SECRET_KEYS = frozenset({"authorization", "proxy-authorization", "key", "api_key", "apikey", "token", "access_token",
                         "mch_key", "cookie", "set-cookie"})
SECRET_MARKERS = ("secret", "password", "private")
# A kept string longer than this is cut: an exchange row stays a record, not an archive.
MAX_KEPT_CHARS = 64 * 1024


def service_name(kind: str) -> str:
    """The service a gateway's client is offered under: ``gateway.<kind>``."""
    return f"gateway.{kind}"


# --------------------------------------------------------------------------- the pool


class GatewayPool:
    """``size`` threads of one gateway and at most ``queue_size`` calls waiting for one.

    A thread is taken from admission until the function it runs returns (not until the
    caller stops waiting). Waiting calls get threads first come, first served; the
    bookkeeping is thread-safe because threads are freed on the SDK's thread.
    """

    def __init__(self, kind: str, *, size: int, queue_size: int) -> None:
        self.kind = kind
        self.size = size
        self.queue_size = queue_size
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"gateway-{kind}")
        self._lock = threading.Lock()
        self._taken = 0
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    @property
    def taken(self) -> int:
        """Threads running a call, or about to (a call the caller gave up on included)."""
        return self._taken

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, deadline: float) -> None:
        """Take a thread, waiting at most until ``deadline`` (``time.monotonic``) for one;
        GatewayBusy when the queue is full or the deadline passes."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._taken < self.size and not self._waiters:
                self._taken += 1
                return
            if len(self._waiters) >= self.queue_size:
                raise GatewayBusy(detail=f"{self.size} threads taken and {len(self._waiters)} calls waiting")
            entry = (loop, loop.create_future())
            self._waiters.append(entry)
        waiter = entry[1]
        try:
            await asyncio.wait_for(asyncio.shield(waiter), max(deadline - time.monotonic(), 0))
        except (TimeoutError, asyncio.CancelledError) as stopped:
            self._give_up(entry)
            if isinstance(stopped, asyncio.CancelledError):
                raise
            raise GatewayBusy(detail=f"no thread of {self.size} freed within the timeout") from None

    def _give_up(self, entry: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]) -> None:
        waiter = entry[1]
        if waiter.done() and not waiter.cancelled():
            self.release()  # a thread was handed over just as the wait ended: pass it on
            return
        waiter.cancel()
        with self._lock:
            if entry in self._waiters:
                self._waiters.remove(entry)
        # Otherwise a hand-over is on its way to this loop; _hand_over passes it on.

    def release(self) -> None:
        """Free a thread (called on any thread): the longest waiting call gets it."""
        with self._lock:
            while self._waiters:
                loop, waiter = self._waiters.popleft()
                try:
                    loop.call_soon_threadsafe(self._hand_over, waiter)
                except RuntimeError:  # that caller's loop is closed: the next one
                    continue
                return
            self._taken -= 1

    def _hand_over(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done():  # it stopped waiting meanwhile
            self.release()
        else:
            waiter.set_result(None)

    def submit(self, function: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``function(*args)`` on a taken thread; the thread is freed when it returns."""
        try:
            future = self._executor.submit(function, *args)
        except BaseException:
            self.release()
            raise
        future.add_done_callback(lambda _: self.release())
        return future

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- redaction


class Redactor:
    """Replaces secrets in what is kept: values under secret-looking keys, and every
    occurrence of the gateway's own secret values (its settings' ``SecretStr`` fields)."""

    def __init__(self, *, keys: frozenset[str] = frozenset(), values: tuple[str, ...] = ()) -> None:
        self.keys = frozenset(key.lower() for key in SECRET_KEYS | keys)
        # Longest first, so a secret containing another is replaced whole.
        self.values = tuple(sorted((value for value in values if len(value) >= 4), key=len, reverse=True))

    @classmethod
    def for_settings(cls, settings: GatewaySettings, keys: frozenset[str] = frozenset()) -> Redactor:
        values = tuple(value.get_secret_value() for value in settings.__dict__.values() if isinstance(value, SecretStr))
        return cls(keys=keys, values=values)

    def is_secret_key(self, key: str) -> bool:
        lowered = key.lower()
        return lowered in self.keys or any(marker in lowered for marker in SECRET_MARKERS)

    def __call__(self, value: Any) -> Any:
        """``value`` made JSON-ready (bytes decoded, unknown types as text, long strings
        cut) with its secrets replaced by ``***``."""
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, Mapping):
            return {str(key): REDACTED if self.is_secret_key(str(key)) else self(item) for key, item in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self(item) for item in value]
        text = value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)
        for secret in self.values:
            text = text.replace(secret, REDACTED)
        if len(text) > MAX_KEPT_CHARS:
            text = text[:MAX_KEPT_CHARS] + f"…[{len(text) - MAX_KEPT_CHARS} more characters]"
        return text


# --------------------------------------------------------------------------- the client


def _sent(error: BaseException) -> bool:
    """Whether a transport failure came after the request was sent: urllib3's
    ``ProtocolError`` ("Connection aborted.", a reset or a closed connection mid-answer)
    or a bare ``ConnectionResetError``; a connection that was never made is not."""
    if isinstance(error, ConnectionResetError | BrokenPipeError):
        return True
    reason = error.args[0] if error.args else None
    return isinstance(reason, urllib3.exceptions.ProtocolError | ConnectionResetError)


def _translated(function: Callable[..., T], *args: Any) -> T:
    """Run on the gateway's thread: the transport's failures become gateway errors."""
    try:
        return function(*args)
    except GatewayError:
        raise
    except requests.exceptions.ConnectTimeout as error:
        # No connection within the timeout: the request never went out.
        raise GatewayTimeout(detail=f"{type(error).__name__}: {error}", maybe_done=False) from error
    except (requests.exceptions.Timeout, TimeoutError) as error:
        raise GatewayTimeout(detail=f"{type(error).__name__}: {error}") from error
    except (requests.exceptions.RequestException, ConnectionError) as error:
        # A connection lost once the request was sent ("Connection aborted", a reset): the
        # remote may have acted on it. One that was never made (refused, no route): not.
        raise GatewayUnavailable(detail=f"{type(error).__name__}: {error}", maybe_done=_sent(error)) from error


class GatewayClient:
    """One declared gateway in one process: its settings, its thread pool, its exchanges."""

    def __init__(
        self,
        declaration: Gateway,
        settings: GatewaySettings,
        *,
        sessions: async_sessionmaker[AsyncSession] | None = None,
        clock: Clock = utcnow,
    ) -> None:
        if not isinstance(settings, GatewaySettings):
            raise TypeError(f"the gateway {declaration.kind!r} declares settings that are not GatewaySettings")
        self.declaration = declaration
        self.settings = settings
        self.sessions = sessions
        self.clock = clock
        self.pool = GatewayPool(declaration.kind, size=settings.pool_size, queue_size=settings.queue_size)
        self.redact = Redactor.for_settings(settings, declaration.secrets)
        # Exchanges whose write was handed to a task (a cancelled call): kept referenced.
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def kind(self) -> str:
        return self.declaration.kind

    async def call(
        self,
        operation: str,
        function: Callable[..., T],
        *args: Any,
        request: Any = None,
        reference: str | None = None,
        answer: Callable[[T], Any] | None = None,
    ) -> T:
        """``function(*args)`` on one of the gateway's threads, within ``timeout_s``.

        ``operation`` (``trade.create``), ``request`` (what is sent, as the SDK is given
        it), ``reference`` (the business key) and ``answer(result)`` (what to keep of the
        result; default the result itself) are what the exchange keeps. Raises a
        GatewayError as the module docstring says; an error of any other type is a bug
        and propagates (kept as status ``error``).
        """
        if self.declaration.keeps_exchanges and self.sessions is None:
            raise RuntimeError(f"the gateway {self.kind!r} keeps exchanges but was given no database sessions")
        started_at = self.clock()
        began = time.monotonic()
        deadline = began + self.settings.timeout_s
        try:
            await self.pool.acquire(deadline)
            if time.monotonic() >= deadline:  # a thread came just as the time ran out: not worth starting
                self.pool.release()
                raise GatewayBusy(detail=f"no thread of {self.pool.size} freed within the timeout")
            future: Future[T] = self.pool.submit(_translated, function, *args)
            try:
                result = await asyncio.wait_for(asyncio.wrap_future(future), deadline - time.monotonic())
            except TimeoutError:
                raise GatewayTimeout(detail=f"no answer within {self.settings.timeout_s:g}s") from None
        except GatewayError as failure:
            detail = failure.detail or failure.message_en
            log.warning("gateway %s %s failed: %s (%s)", self.kind, operation, failure.code, self.redact(detail))
            await self._keep(operation, reference, request, failure.answer, failure.status, f"{failure.code}: {detail}",
                             started_at, began)
            raise
        except asyncio.CancelledError:
            self._keep_later(operation, reference, request, None, "error", "cancelled by the caller", started_at, began)
            raise
        except Exception as error:
            await self._keep(operation, reference, request, None, "error", f"{type(error).__name__}: {error}", started_at, began)
            raise
        await self._keep(operation, reference, request, answer(result) if answer is not None else result, "ok", None,
                         started_at, began)
        return result

    async def _keep(
        self, operation: str, reference: str | None, request: Any, response: Any, status: str, error: str | None,
        started_at: datetime, began: float,
    ) -> None:
        if not self.declaration.keeps_exchanges or self.sessions is None:
            return
        exchange = GatewayExchange(
            gateway=self.kind,
            operation=operation,
            reference=reference,
            # Through JSON once: what the row holds is exactly what a reader will get back.
            request=json.loads(json.dumps(self.redact(request), ensure_ascii=False)),
            response=json.loads(json.dumps(self.redact(response), ensure_ascii=False)),
            status=status,
            error=self.redact(error) if error is not None else None,
            started_at=started_at,
            duration_ms=round((time.monotonic() - began) * 1000),
        )
        try:
            # A transaction of its own: the caller's rolling back keeps what the remote was told.
            async with transaction(self.sessions) as session:
                session.add(exchange)
        except Exception:  # the call's own outcome is what the caller needs; the log says what was lost
            log.exception("gateway %s: the exchange of %s (%s) could not be kept", self.kind, operation, status)

    def _keep_later(self, *arguments: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._keep(*arguments))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def close(self) -> None:
        """Stop taking calls; threads still running finish on their own."""
        self.pool.close()


def open_gateway(
    declaration: Gateway,
    *,
    settings: GatewaySettings | None = None,
    sessions: async_sessionmaker[AsyncSession] | None = None,
    clock: Clock = utcnow,
) -> GatewayClient:
    """The client of ``declaration``, with ``settings`` (default: its settings group read
    from the environment, a bad value refused with one line naming it)."""
    return GatewayClient(declaration, settings if settings is not None else read_settings(declaration.settings),
                         sessions=sessions, clock=clock)
