"""Following domain events from another process (DESIGN.md, "Events").

One :class:`EventListener` per process holds one dedicated, non-pooled connection doing
``LISTEN shuiwu_events``. A notification is only a wake-up: the listener reads events by
id from ``domain_events`` (``WHERE id > last``), so events committed while it was
disconnected, or while nobody listened, are read on the next wake-up, which a reconnect
and a periodic sweep also cause.

Ids come from a sequence at insert time but transactions commit in any order: an event
with a lower id can become visible after a higher one was read. The ids skipped over are
kept as *holes* and looked up again on each wake-up until they appear or are *settled*:
a rolled-back transaction leaves a hole forever, so a hole is given up once every
transaction that could still fill it has ended (below), or at the latest after
``hole_timeout``.

Which transactions could fill a hole: the one that took the id did so before the higher
id it was skipped for committed, so it had begun before the read that found the hole,
and it holds a transaction id at the latest a moment later (when its INSERT writes the
row; ids come from the column default in that very INSERT). So ``HOLE_GRACE_S`` after a
hole was found, the ``xmax`` of a snapshot (the next transaction id) is a fence beyond
that transaction; once a later snapshot's ``xmin`` (the oldest transaction still
running) has passed the fence, it has ended, and a lookup after that snapshot that does
not find the id means it rolled back. A transaction still running after
``hole_timeout`` is given up on anyway (memory and latency are bounded); if it commits
later, its event is not delivered (docs/subscriptions.md names this residual).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

import asyncpg

from backend.db import to_libpq_url
from backend.events.service import EVENTS_CHANNEL, Event

log = logging.getLogger(__name__)

# What a lost or refused connection raises; anything else is a bug and propagates.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,  # admin shutdown, terminated backend, starting up
)

# At most this many skipped ids are remembered per jump (a sequence moved by setval
# or a huge rolled-back batch must not fill memory).
MAX_HOLES = 10_000
# How long after a hole is found its transaction surely holds a transaction id (the
# moment between nextval and the row's write in one INSERT, with a wide margin).
HOLE_GRACE_S = 0.5

_SNAPSHOT = (
    "SELECT pg_snapshot_xmin(s)::text::bigint AS xmin, pg_snapshot_xmax(s)::text::bigint AS xmax"
    " FROM pg_current_snapshot() AS s"
)


async def connect(
    database_url: str, *, application_name: str, decode_json: bool = False, connect_timeout: float = 10.0
) -> asyncpg.Connection:
    """A dedicated asyncpg connection, outside any pool.

    ``decode_json`` turns json/jsonb into Python values; leave it off on connections
    PgQueuer uses, which passes its jsonb parameters as JSON text.
    """
    connection: asyncpg.Connection = await asyncpg.connect(
        to_libpq_url(database_url),
        timeout=connect_timeout,
        server_settings={"application_name": application_name, "jit": "off"},
    )
    if decode_json:
        for type_name in ("json", "jsonb"):
            await connection.set_type_codec(type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    return connection


class Backoff:
    """Delays between reconnect attempts: doubling from ``initial`` up to ``maximum``."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial


async def wait_any(*events: asyncio.Event, seconds: float | None = None) -> None:
    """Return when any of ``events`` is set, or after ``seconds`` (None: no limit)."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def event_from_record(record: asyncpg.Record) -> Event:
    return Event(
        id=record["id"],
        kind=record["kind"],
        key=record["key"],
        payload=record["payload"],
        created_at=record["created_at"],
    )


_SELECT_EVENTS = "SELECT id, kind, key, payload, created_at FROM domain_events"


class ListenerLaggedError(RuntimeError):
    """The consumer fell ``maxsize`` events behind; it should resubscribe and catch up
    from the table by id (the last event it saw)."""


_CLOSED = object()
# Queued when the listener stops awaiting an id: a consumer holding items back re-checks.
_NUDGE = object()


class EventStream:
    """One consumer's events, in the order the listener read them (an async iterator)."""

    def __init__(self, listener: EventListener, kinds: Collection[str] | None, maxsize: int) -> None:
        self._listener = listener
        self._kinds = frozenset(kinds) if kinds is not None else None
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=maxsize + 1)
        self._maxsize = maxsize
        self._nudged = False
        self.closed = False

    def wants(self, event: Event) -> bool:
        return self._kinds is None or event.kind in self._kinds

    def offer(self, event: Event) -> None:
        if self.closed:
            return
        if self._queue.qsize() >= self._maxsize:
            # The spare slot carries the failure, so the consumer learns it lagged.
            self.fail(ListenerLaggedError(f"consumer fell {self._maxsize} events behind"))
            return
        self._queue.put_nowait(event)

    def nudge(self) -> None:
        """Wake the consumer without an event (the ids the listener awaits changed)."""
        if not self.closed and not self._nudged and self._queue.qsize() < self._maxsize:
            self._nudged = True
            self._queue.put_nowait(_NUDGE)

    def _finish(self, item: object) -> None:
        if not self.closed:
            self.closed = True
            self._listener._unsubscribe(self)
            self._queue.put_nowait(item)

    def fail(self, error: BaseException) -> None:
        """End the stream with ``error``, raised to the consumer after the queued events."""
        self._finish(error)

    def close(self) -> None:
        """Stop receiving; an iteration in progress ends after the queued events."""
        self._finish(_CLOSED)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while True:
            item = await self._queue.get()
            if item is _NUDGE:
                self._nudged = False
                continue
            if item is _CLOSED:
                self._queue.put_nowait(_CLOSED)
                raise StopAsyncIteration
            if isinstance(item, BaseException):
                raise item
            event: Event = item
            return event

    async def batch(self, *, wait: bool = True) -> list[Event] | None:
        """Take everything queued, after waiting for an event or a nudge unless ``wait``
        is False: the events in order (none after a nudge alone, or when nothing was
        queued); None once the stream is closed. The failure that ended the stream is
        raised after the events queued before it."""
        items = [await self._queue.get()] if wait else []
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        events: list[Event] = []
        for item in items:
            if item is _NUDGE:
                self._nudged = False
            elif item is _CLOSED or isinstance(item, BaseException):
                self._queue.put_nowait(item)  # the end is the last item: the next call meets it
                if events:
                    return events
                if isinstance(item, BaseException):
                    raise item
                return None
            else:
                events.append(item)
        return events


class EventListener:
    """The process's one LISTEN connection, fanning events out to subscribed streams.

    ``after``: deliver events with a greater id; None means "from the newest event at
    the first connection on". Use as ``async with EventListener(url) as listener:``.
    """

    def __init__(
        self,
        database_url: str,
        *,
        after: int | None = None,
        sweep_interval: float = 30.0,
        hole_timeout: float = 300.0,
        batch_size: int = 500,
        backoff: Backoff | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = database_url
        self._last_id = after
        self._sweep_interval = sweep_interval
        self._hole_timeout = hole_timeout
        self._batch_size = batch_size
        self._backoff = backoff or Backoff()
        self._monotonic = monotonic
        # Skipped id -> [when found, fence (transaction id) or None]; see the module docstring.
        self._holes: dict[int, list[Any]] = {}
        self._streams: list[EventStream] = []
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._task: asyncio.Task[None] | None = None
        self.connections = 0  # how many times it has connected (reconnects + 1)
        self.backend_pid: int | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event-listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for stream in list(self._streams):
            stream.close()

    async def __aenter__(self) -> EventListener:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def wait_disconnected(self) -> None:
        await self._disconnected.wait()

    @property
    def last_id(self) -> int | None:
        return self._last_id

    # ------------------------------------------------------------------ consumers

    def subscribe(self, kinds: Collection[str] | None = None, *, maxsize: int = 10_000) -> EventStream:
        """A stream of the events (of ``kinds``, or all) read from now on."""
        stream = EventStream(self, kinds, maxsize)
        self._streams.append(stream)
        return stream

    def position(self) -> tuple[int | None, frozenset[int]]:
        """Where a stream subscribed now starts: it receives the events after the first
        value (the last id read; None before the first connection) and the late commits
        of the second (ids skipped over and still awaited). A consumer that also reads
        history from the table reads it up to the first value, without the second."""
        return self._last_id, frozenset(self._holes)

    def lowest_awaited(self) -> int | None:
        """The lowest id skipped over and still awaited (None: none): every event with a
        lower id that will ever be delivered has been."""
        return min(self._holes, default=None)

    def _unsubscribe(self, stream: EventStream) -> None:
        with contextlib.suppress(ValueError):
            self._streams.remove(stream)

    def _deliver(self, event: Event) -> None:
        for stream in list(self._streams):
            if stream.wants(event):
                stream.offer(event)

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        try:
            await self._follow_forever()
        except Exception as exc:
            # A bug, not a lost connection: consumers must not wait forever for events.
            log.exception("event listener failed")
            for stream in list(self._streams):
                stream.fail(exc)
            raise

    async def _follow_forever(self) -> None:
        while True:
            try:
                connection = await connect(self._url, application_name="shuiwu-listener", decode_json=True)
            except CONNECTION_ERRORS as exc:
                delay = self._backoff.next_delay()
                log.warning("event listener cannot connect (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            try:
                await self._follow(connection)
            except CONNECTION_ERRORS as exc:
                log.warning("event listener lost its connection (%s)", exc)
            finally:
                self._connected.clear()
                self._disconnected.set()
                self.backend_pid = None
                with contextlib.suppress(*CONNECTION_ERRORS):
                    await asyncio.wait_for(connection.close(), 2)
            await asyncio.sleep(self._backoff.next_delay())

    async def _follow(self, connection: asyncpg.Connection) -> None:
        def wake(*_: object) -> None:
            self._wake.set()

        # LISTEN before the first read, so nothing committed in between is missed.
        await connection.add_listener(EVENTS_CHANNEL, wake)
        connection.add_termination_listener(wake)
        if self._last_id is None:
            self._last_id = await connection.fetchval("SELECT coalesce(max(id), 0) FROM domain_events")
        self.backend_pid = connection.get_server_pid()
        self.connections += 1
        self._backoff.reset()
        self._disconnected.clear()
        self._connected.set()
        while True:
            self._wake.clear()
            await self._read(connection)
            if connection.is_closed():
                raise ConnectionError("listener connection closed")
            # Holes are usually transactions about to commit: look again soon.
            timeout = min(self._sweep_interval, 1.0) if self._holes else self._sweep_interval
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _read(self, connection: asyncpg.Connection) -> None:
        """Deliver late commits into holes, settle holes that can no longer fill, then
        deliver every event after the last one read."""
        now = self._monotonic()
        if self._holes:
            # The snapshot first: a transaction that ended before it is visible to the lookup.
            snapshot = await connection.fetchrow(_SNAPSHOT)
            late = await connection.fetch(f"{_SELECT_EVENTS} WHERE id = ANY($1::bigint[]) ORDER BY id", list(self._holes))
            for record in late:
                del self._holes[record["id"]]
                self._deliver(event_from_record(record))
            settled = len(late)
            for event_id, hole in list(self._holes.items()):
                found, fence = hole
                if now - found > self._hole_timeout or (fence is not None and snapshot["xmin"] >= fence):
                    del self._holes[event_id]
                    settled += 1
                elif fence is None and now - found >= HOLE_GRACE_S:
                    hole[1] = snapshot["xmax"]
            if settled:
                for stream in list(self._streams):
                    stream.nudge()
        assert self._last_id is not None
        while True:
            records = await connection.fetch(f"{_SELECT_EVENTS} WHERE id > $1 ORDER BY id LIMIT $2", self._last_id, self._batch_size)
            for record in records:
                event_id = record["id"]
                for missing in range(max(self._last_id + 1, event_id - MAX_HOLES), event_id):
                    self._holes[missing] = [now, None]
                self._last_id = event_id
                self._deliver(event_from_record(record))
            if len(records) < self._batch_size:
                return
