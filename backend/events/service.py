"""Emitting domain events and registering their handlers (DESIGN.md, "Events").

Business code calls :func:`emit_event` inside its own transaction; the row and its
``NOTIFY`` become visible together when the caller commits, and vanish together on
rollback. Handlers are registered with ``@handles(kind)`` and run later, one PgQueuer
job per (event, handler), in a transaction of their own (``backend.jobs``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

# The NOTIFY channel that wakes the relay and every listener; the payload is the event id.
EVENTS_CHANNEL = "shuiwu_events"


class EventKind(StrEnum):
    """Every kind of domain event; a new kind is added here first."""

    readings_ingested = "readings.ingested"
    account_threshold_crossed = "account.threshold_crossed"
    payment_succeeded = "payment.succeeded"
    bill_issued = "bill.issued"
    alarm_opened = "alarm.opened"
    alarm_closed = "alarm.closed"
    workorder_changed = "workorder.changed"
    command_finished = "command.finished"
    notice_published = "notice.published"
    household_bound = "household.bound"


class UnknownEventKindError(ValueError):
    """A kind that is not an :class:`EventKind` (most likely a typo)."""


def event_kind(kind: str) -> EventKind:
    try:
        return EventKind(kind)
    except ValueError:
        raise UnknownEventKindError(f"unknown event kind {kind!r}") from None


@dataclass(frozen=True, slots=True)
class Event:
    """A committed domain event as handlers and listeners see it."""

    id: int
    kind: str
    key: str | None
    payload: dict[str, Any]
    created_at: datetime


EventHandler = Callable[[AsyncSession, Event], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Handler:
    """An event handler as a domain declares it (``backend.domain.Domain.handlers``).

    ``name`` is stable and explicit: queued jobs refer to it, so renaming the function
    never orphans them. ``run(runtime, session, event)`` runs in a transaction of its own.
    ``horizon``: for handlers whose effects leave the database (messages, pushes, valve
    commands), a replay skips events older than this; None acts on every event.
    ``permissions``: what the system actor needs to run it (docs/domains.md lists them).
    """

    kind: str
    name: str
    run: Callable[..., Awaitable[None]]
    horizon: timedelta | None = None
    permissions: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Subscription:
    """One handler of one event kind; each gets its own job per event."""

    kind: EventKind
    name: str
    handler: EventHandler

    @property
    def entrypoint(self) -> str:
        """The PgQueuer entrypoint of this handler's jobs: ``event:<kind>:<name>``.

        Queued jobs refer to it by name, so renaming a handler orphans its queued
        jobs: pass a stable ``name=`` to :meth:`HandlerRegistry.handles` when moving one.
        """
        return f"event:{self.kind.value}:{self.name}"


class HandlerRegistry:
    """Which handlers run for which event kind."""

    def __init__(self) -> None:
        self._by_kind: dict[EventKind, dict[str, Subscription]] = {}

    def handles(self, kind: str, *, name: str | None = None) -> Callable[[EventHandler], EventHandler]:
        """Decorator: run ``handler(session, event)`` once for every event of ``kind``.

        The handler runs in its own transaction, committed when it returns. A crashed
        worker's job is run again, so a handler must be idempotent by ``event.id`` (or by
        the business fact it writes).
        """
        event_kind_ = event_kind(kind)

        def register(handler: EventHandler) -> EventHandler:
            handler_name = name or _default_name(handler)
            by_name = self._by_kind.setdefault(event_kind_, {})
            if handler_name in by_name:
                raise ValueError(f"a handler named {handler_name!r} already handles {event_kind_.value}")
            by_name[handler_name] = Subscription(event_kind_, handler_name, handler)
            return handler

        return register

    def subscriptions(self, kind: str | None = None) -> list[Subscription]:
        """The handlers of ``kind`` (every handler when ``kind`` is None), in a stable order."""
        if kind is None:
            return [sub for by_name in self._by_kind.values() for sub in by_name.values()]
        try:
            return list(self._by_kind.get(EventKind(kind), {}).values())
        except ValueError:
            # A row of a kind this code no longer knows: nobody handles it.
            return []

    def __iter__(self) -> Iterator[Subscription]:
        return iter(self.subscriptions())

    def __len__(self) -> int:
        return sum(len(by_name) for by_name in self._by_kind.values())


def _default_name(handler: EventHandler) -> str:
    """``<module without backend.>.<qualname>``: unique, and readable in the queue table."""
    module = str(getattr(handler, "__module__", "") or "").removeprefix("backend.")
    qualname = str(getattr(handler, "__qualname__", None) or getattr(handler, "__name__", "handler"))
    return f"{module}.{qualname}" if module else qualname


# The process-wide registry the job worker serves; domains register into it on import
# (backend.events.handlers lists the modules to import).
registry = HandlerRegistry()


def handles(kind: str, *, name: str | None = None) -> Callable[[EventHandler], EventHandler]:
    """``@handles("payment.succeeded")``: register a handler in the process-wide registry."""
    return registry.handles(kind, name=name)


_INSERT_AND_NOTIFY = text(
    """
    WITH event AS (
        INSERT INTO domain_events (kind, key, payload)
        VALUES (:kind, :key, :payload)
        RETURNING id
    )
    SELECT id, pg_notify(:channel, id::text) FROM event
    """
).bindparams(bindparam("payload", type_=JSONB))


async def emit_event(session: AsyncSession, kind: str, payload: dict[str, Any], key: str | None = None) -> int:
    """Record an event in the caller's transaction and return its id.

    The caller commits: the row and its ``NOTIFY shuiwu_events, '<id>'`` are delivered
    at commit, and neither exists if the transaction rolls back. ``payload`` must be
    JSON-ready (ids, strings, numbers as the domain chooses: fen as int, volumes as
    strings). ``key`` names the thing the event is about (``account:42``) for lookups.
    """
    result = await session.execute(
        _INSERT_AND_NOTIFY,
        {"kind": event_kind(kind).value, "key": key, "payload": payload, "channel": EVENTS_CHANNEL},
    )
    event_id: int = result.scalar_one()
    return event_id


_EVENT_COLUMNS = "id, kind, key, payload, created_at"


async def load_event(session: AsyncSession, event_id: int) -> Event | None:
    """The event with ``event_id``, or None if there is none."""
    result = await session.execute(text(f"SELECT {_EVENT_COLUMNS} FROM domain_events WHERE id = :id"), {"id": event_id})
    row = result.one_or_none()
    if row is None:
        return None
    return Event(id=row.id, kind=row.kind, key=row.key, payload=row.payload, created_at=row.created_at)
