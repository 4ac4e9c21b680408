"""Subscription fields fed by domain events (docs/subscriptions.md).

A domain declares a subscription in its schema module in one place:

```python
@strawberry.type(description="...")
class AlarmOpenedEvent(SubscriptionEvent):
    alarm_count: int
    alarms: list[AlarmType]

async def opened_alarms(context: Context, event: Event) -> AlarmOpenedEvent | None:
    ...  # the alarms of the event the subscriber may see, or None (backend/alarms/schema.py)

@strawberry.type
class Subscription:
    alarm_opened = event_subscription(AlarmOpenedEvent, kinds=("alarm.opened",), permission="alarms:read",
                                      visible=opened_alarms, description="...")
```

:func:`event_subscription` gives the field an ``afterEventId: ID`` argument and does the
rest: the permission (checked when the subscription starts and again for every event,
against the principal as last re-read), the replay of the stored events after
``afterEventId`` (at most ``SHUIWU_SUBSCRIPTIONS_REPLAY_MAX_EVENTS``) followed by the live
ones from the process's one :class:`~backend.events.listener.EventListener` without a gap
or a repeat at the seam, items in id order, and a bounded backlog. ``visible(context,
event)`` turns one event into the one item the subscriber may see (applying its data
scope inside the query, as every list does), or None to send nothing for that event. Every item is a :class:`SubscriptionEvent`: it
carries ``eventId``, the greatest of which a client sends back as ``afterEventId`` when it
reconnects: an item is held back while the listener still awaits a lower id (a
transaction that took it and has not committed yet), so no item with a lower id can
follow one the client has.
"""

from __future__ import annotations

import asyncio
import heapq
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import strawberry
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import Text
from strawberry.types import Info

from backend.errors import BadUserInput, DomainError, ErrorCode, Forbidden
from backend.events.listener import EventListener, EventStream, ListenerLaggedError
from backend.events.service import Event
from backend.graphql.context import Context
from backend.graphql.permissions import Authenticated, Requires

ItemT = TypeVar("ItemT", bound="SubscriptionEvent")
Visible = Callable[[Context, Event], Awaitable[ItemT | None]]

# Stored events are replayed this many at a time (one statement each); the socket's pace
# decides how fast the next page is read (the connection waits for room in its outbox).
REPLAY_PAGE = 200
# The largest id a bigint holds: afterEventId beyond it names no event.
MAX_EVENT_ID = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")


@strawberry.interface(
    name="SubscriptionEvent",
    description="An item of a subscription: what one domain event showed the subscriber.",
)
class SubscriptionEvent:
    event_id: strawberry.ID = strawberry.field(
        description="The domain event's id (decimal digits). Reconnect with the greatest one received as "
        "afterEventId to receive every later event once."
    )


def event_id_of(event: Event) -> strawberry.ID:
    """The ``eventId`` of an item made from ``event``."""
    return strawberry.ID(str(event.id))


def parse_event_id(value: str | None) -> int | None:
    """``afterEventId`` as an event id; BAD_USER_INPUT unless it is decimal digits of a bigint."""
    if value is None:
        return None
    if not _DIGITS.fullmatch(value) or int(value) > MAX_EVENT_ID:
        raise BadUserInput("afterEventId 须为事件编号 (十进制数字)", "afterEventId must be an event id (decimal digits)",
                           field="afterEventId")
    return int(value)


class FeedUnavailable(DomainError):
    """The process's listener has not connected to the database yet."""

    code = ErrorCode.INTERNAL
    message = "事件源暂不可用, 请稍后重连"
    message_en = "The event feed is not available yet; reconnect later"


class EventFeed:
    """The API process's one :class:`EventListener` (one dedicated connection, not from
    the pool), which every subscription of the process reads from."""

    def __init__(self, database_url: str, *, connect_wait_s: float = 10.0) -> None:
        self.listener = EventListener(database_url)
        self._connect_wait_s = connect_wait_s

    async def start(self) -> None:
        await self.listener.start()

    async def stop(self) -> None:
        await self.listener.stop()

    async def open(self, kinds: Collection[str], *, maxsize: int) -> tuple[EventStream, int, frozenset[int]]:
        """A stream of the live events of ``kinds`` (at most ``maxsize`` waiting, then it
        fails with ListenerLaggedError), with where it starts (:meth:`EventListener.position`)."""
        if not self.listener.connected:
            try:
                await asyncio.wait_for(self.listener.wait_connected(), self._connect_wait_s)
            except TimeoutError:
                raise FeedUnavailable() from None
        # No await from here on: the position is the stream's own.
        stream = self.listener.subscribe(kinds, maxsize=maxsize)
        start, holes = self.listener.position()
        assert start is not None  # set at the first connection
        return stream, start, holes


class ReplayTooLong(DomainError):
    """More stored events follow ``afterEventId`` than a replay sends."""

    code = ErrorCode.REPLAY_TOO_LONG
    message = "断开期间的事件过多, 请用列表查询重新加载, 再从最新事件订阅"
    message_en = "Too many events since afterEventId: reload through the list query, then subscribe from now on"


@dataclass(slots=True)
class Subscriber:
    """What a subscription field needs of the operation and connection it runs on (one
    per operation)."""

    feed: EventFeed
    # Awaited before each event: re-checks the login session when the last check is
    # older than the re-check interval (the principal in the context is then current);
    # False once the connection is ending.
    still_valid: Callable[[], Awaitable[bool]]
    # Whether the item just yielded comes from the replay of stored events: the
    # connection then waits for its client to read (paced) instead of cutting it off.
    replaying: bool = False


_HISTORY = text(
    "SELECT id, kind, key, payload, created_at FROM domain_events"
    " WHERE id > :after AND id <= :upto AND kind = ANY(:kinds) ORDER BY id LIMIT :limit"
).bindparams(bindparam("kinds", type_=ARRAY(Text)))
_HISTORY_COUNT = text(
    "SELECT count(*) FROM (SELECT 1 FROM domain_events"
    " WHERE id > :after AND id <= :upto AND kind = ANY(:kinds) LIMIT :limit) AS replay"
).bindparams(bindparam("kinds", type_=ARRAY(Text)))


async def stored_events(context: Context, *, after: int, upto: int, kinds: Collection[str], limit: int) -> list[Event]:
    """The stored events of ``kinds`` with ids in (``after``, ``upto``], oldest first
    (events older than the retention are purged, so a replay reaches back that far at most)."""
    params = {"after": after, "upto": upto, "kinds": list(kinds), "limit": limit}
    async with context.read() as session:
        rows = (await session.execute(_HISTORY, params)).all()
    return [Event(id=row.id, kind=row.kind, key=row.key, payload=row.payload, created_at=row.created_at) for row in rows]


async def count_stored_events(context: Context, *, after: int, upto: int, kinds: Collection[str], limit: int) -> int:
    """How many stored events :func:`stored_events` would replay, counting to ``limit`` at most."""
    params = {"after": after, "upto": upto, "kinds": list(kinds), "limit": limit}
    async with context.read() as session:
        return int((await session.execute(_HISTORY_COUNT, params)).scalar_one())


async def replay_then_follow(
    context: Context, feed: EventFeed, *, kinds: Collection[str], after: int | None, maxsize: int, replay_max: int,
) -> AsyncGenerator[tuple[Event, bool], None]:
    """The events of ``kinds`` after ``after`` from the table, then the live ones (only the
    live ones when ``after`` is None), each once and in id order, with whether it was
    replayed. ReplayTooLong when more than ``replay_max`` stored events follow ``after``.

    The live stream is opened first (at the listener's position: the last id it read and
    the ids it still awaits); the table supplies the events up to that id it will not
    carry, the stream the rest. An event is held back while the listener awaits a lower
    id (released when that id is delivered or given up on), so the greatest id a client
    received is a safe ``afterEventId``. Past ``maxsize`` events held or waiting, the
    consumer has lagged (ListenerLaggedError).
    """
    stream, start, awaited = await feed.open(kinds, maxsize=maxsize)
    listener = feed.listener
    held: list[tuple[int, bool, Event]] = []  # a heap by id, with whether it was replayed

    def hold(event: Event, replayed: bool) -> None:
        heapq.heappush(held, (event.id, replayed, event))
        if len(held) > maxsize:
            raise ListenerLaggedError(f"consumer holds {maxsize} events back")

    try:
        if after is not None and after < start:
            if await count_stored_events(context, after=after, upto=start, kinds=kinds, limit=replay_max + 1) > replay_max:
                raise ReplayTooLong()
            # The stream brings the ids awaited at its start, in any order: the stored
            # events above the lowest of them wait for it like live ones.
            bound = min(awaited, default=None)
            cursor = after
            while True:
                page = await stored_events(context, after=cursor, upto=start, kinds=kinds, limit=REPLAY_PAGE)
                for event in page:
                    if event.id in awaited:
                        continue  # a late commit: the stream brings it
                    if held or (bound is not None and event.id > bound):
                        hold(event, True)
                    else:
                        yield event, True
                if len(page) < REPLAY_PAGE:
                    break
                cursor = page[-1].id
        wait = False
        while True:
            events = await stream.batch(wait=wait)
            if events is None:
                return
            for event in events:
                # A late commit the client already had from this or another process.
                if after is not None and event.id <= after:
                    continue
                hold(event, False)
            # Everything delivered so far is taken, so no id below the lowest one still
            # awaited can arrive after the held ones: those below it may go.
            lowest = listener.lowest_awaited()
            while held and (lowest is None or held[0][0] < lowest):
                _, replayed, event = heapq.heappop(held)
                yield event, replayed
            wait = True
    finally:
        stream.close()


def event_subscription(
    item_type: type[ItemT],
    *,
    kinds: Collection[str],
    permission: str | None,
    visible: Visible[ItemT],
    description: str,
) -> Any:
    """A subscription field (see the module docstring): ``afterEventId: ID`` in,
    ``item_type`` out, one item per event of ``kinds`` that ``visible`` shows the
    subscriber, who needs ``permission`` (None: any signed-in caller; ``visible`` decides
    what each one sees, e.g. only their own inbox)."""
    if not issubclass(item_type, SubscriptionEvent):
        raise TypeError(f"{item_type.__name__} must subclass SubscriptionEvent: every item carries its eventId")
    kinds = tuple(kinds)
    if not kinds:
        raise ValueError("a subscription is fed by at least one event kind")

    async def subscribe(
        info: Info,
        after_event_id: Annotated[strawberry.ID | None, strawberry.argument(
            description="Replay the stored events after this one first (a client that reconnects sends the greatest "
            "eventId it received); null: live events only.")] = None,
    ) -> AsyncGenerator[Any, None]:
        # Checked before the stream starts, so a bad id is an error of the subscribe message.
        after = parse_event_id(after_event_id)
        return event_items(info.context, kinds=kinds, permission=permission, after=after, visible=visible)

    return strawberry.subscription(
        resolver=subscribe, graphql_type=item_type, description=description,
        permission_classes=[Requires(permission) if permission is not None else Authenticated],
    )


def event_items(
    context: Context, *, kinds: Collection[str], permission: str | None, after: int | None,
    visible: Visible[ItemT],
) -> AsyncGenerator[ItemT, None]:
    """The items of a subscription field as :func:`event_subscription` makes them, for a
    field that declares arguments of its own beside ``afterEventId`` (``visible`` then
    closes over them): the replay and live events of ``kinds`` after ``after``, the
    permission re-checked per event, one item per event ``visible`` shows."""
    return _event_items(context, tuple(kinds), permission, after, visible)


async def _event_items(
    context: Context, kinds: tuple[str, ...], permission: str | None, after: int | None, visible: Visible[ItemT],
) -> AsyncGenerator[ItemT, None]:
    subscriber = context.subscriber
    if subscriber is None:
        raise BadUserInput("订阅须通过 /graphql 的 WebSocket (graphql-transport-ws)",
                           "Subscriptions are served over the WebSocket on /graphql (graphql-transport-ws)")
    events = replay_then_follow(context, subscriber.feed, kinds=kinds, after=after,
                                maxsize=context.settings.subscriptions_backlog,
                                replay_max=context.settings.subscriptions_replay_max_events)
    try:
        async for event, replayed in events:
            subscriber.replaying = replayed
            if not await subscriber.still_valid():
                return
            # The principal is re-read while the connection lives: a permission
            # taken away ends the subscription at the next event.
            if permission is not None and not context.caller.has(permission):
                raise Forbidden()
            context.forget_loaders()
            item = await visible(context, event)
            if item is not None:
                yield item
    finally:
        await events.aclose()


KeyT = TypeVar("KeyT")
ValueT = TypeVar("ValueT")


async def at_most_one_per_key(
    updates: AsyncGenerator[tuple[int, list[tuple[KeyT, ValueT]]], None], *, interval_s: float,
    clock: Callable[[], float],
) -> AsyncGenerator[tuple[int, list[ValueT]], None]:
    """Batch ``updates`` (an event id with (key, value) pairs) so that each key goes out
    at most once per ``interval_s`` (by ``clock``, monotonic seconds): a value whose key
    went out less than ``interval_s`` ago waits, and a newer value of that key replaces
    it (the newest wins). Yields (event id, values) batches; the event id of a batch is
    the greatest one taken from ``updates`` so far, so ids never go down."""
    pending: dict[KeyT, ValueT] = {}
    sent_at: dict[KeyT, float] = {}
    greatest = 0
    following: asyncio.Task[tuple[int, list[tuple[KeyT, ValueT]]]] | None = None
    try:
        while True:
            if following is None:
                following = asyncio.ensure_future(anext(updates))
            due = min((sent_at[key] + interval_s for key in pending), default=None)
            timeout = None if due is None else max(0.0, due - clock())
            done, _ = await asyncio.wait({following}, timeout=timeout)
            ready: list[ValueT] = []
            if following in done:
                try:
                    event_id, pairs = following.result()
                except StopAsyncIteration:
                    return
                following = None
                greatest = max(greatest, event_id)
                now = clock()
                for key, value in pairs:
                    if key in pending or now < sent_at.get(key, -interval_s * 2) + interval_s:
                        pending[key] = value  # the newest wins
                    else:
                        sent_at[key] = now
                        ready.append(value)
            now = clock()
            for key in [key for key in pending if now >= sent_at[key] + interval_s]:
                sent_at[key] = now
                ready.append(pending.pop(key))
            if ready:
                yield greatest, ready
    finally:
        if following is not None:
            following.cancel()
            await asyncio.wait({following})  # the generator is free again before it is closed
        await updates.aclose()
