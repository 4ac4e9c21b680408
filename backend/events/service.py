"""Emitting domain events and declaring their handlers (DESIGN.md, "Events").

Business code calls :func:`emit_event` inside its own transaction with the typed payload
its kind's owner declared (``backend.events.payloads``); the row and its ``NOTIFY``
become visible together when the caller commits, and vanish together on rollback.
Domains declare :class:`Handler` s; the host collects them into a
:class:`HandlerRegistry`, the relay hands each event to them as PgQueuer jobs, and each
job runs in a transaction of its own (``backend.events.running``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from backend.events.payloads import EventPayloadError, PayloadT, UnknownEventKindError, payload_type

__all__ = [
    "EFFECT_HORIZON", "EVENTS_CHANNEL", "Event", "EventPayloadError", "Handler", "HandlerRegistry",
    "UnknownEventKindError", "emit_event", "load_event", "payload_of",
]

# The NOTIFY channel that wakes the relay and every listener; the payload is the event id.
EVENTS_CHANNEL = "shuiwu_events"


@dataclass(frozen=True, slots=True)
class Event:
    """A committed domain event as handlers and listeners see it.

    ``payload`` is the stored JSON document; :attr:`typed_payload` is the dataclass its
    kind's owner declared (``payload_of(event, ReadingsIngested)`` checks the class too).
    """

    id: int
    kind: str
    key: str | None
    payload: dict[str, Any]
    created_at: datetime

    @property
    def typed_payload(self) -> Any:
        """The typed payload; UnknownEventKindError for a kind no imported owner declares."""
        return payload_type(self.kind).decode(self.payload)


def payload_of(event: Event, cls: type[PayloadT]) -> PayloadT:
    """``event``'s typed payload, which must be a ``cls`` (EventPayloadError otherwise)."""
    typed = event.typed_payload
    if not isinstance(typed, cls):
        raise EventPayloadError(f"event {event.id} ({event.kind}) carries a {type(typed).__name__}, not a {cls.__name__}")
    return typed


# A handler whose effects leave the database (messages, pushes, valve commands) declares
# this horizon unless it has a reason for another: a replay never sends yesterday's alerts.
EFFECT_HORIZON = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Handler:
    """An event handler as a domain declares it (``backend.domain.Domain.handlers``).

    ``name`` is stable and explicit: queued jobs refer to it, so renaming the function
    never orphans them. ``run(runtime, session, event)`` runs in a transaction of its own
    (:func:`backend.events.running.run_handler`), at most once per event.
    ``horizon``: for handlers whose effects leave the database (messages, pushes, valve
    commands; :data:`EFFECT_HORIZON`), a replay skips events older than this; None acts
    on every event.
    ``permissions``: what the system actor needs to run it (docs/domains.md lists them).
    """

    kind: str
    name: str
    # The function, or a "module:function" reference a declaration names (imported by
    # the host that runs it: backend.jobs.declared_handlers).
    run: Callable[..., Awaitable[None]] | str
    horizon: timedelta | None = None
    permissions: frozenset[str] = frozenset()

    def function(self) -> Callable[..., Awaitable[None]]:
        """``run`` itself, or the function its ``"module:function"`` reference names."""
        if isinstance(self.run, str):
            module, _, attribute = self.run.partition(":")
            return getattr(importlib.import_module(module), attribute)  # type: ignore[no-any-return]
        return self.run

    @property
    def entrypoint(self) -> str:
        """The PgQueuer entrypoint of this handler's jobs: ``event:<kind>:<name>``."""
        return f"event:{self.kind}:{self.name}"


class HandlerRegistry:
    """Which handlers run for which event kind, built from the domains' declarations."""

    def __init__(self, handlers: Iterable[Handler] = ()) -> None:
        self._by_kind: dict[str, dict[str, Handler]] = {}
        for handler in handlers:
            self.add(handler)

    def add(self, handler: Handler) -> None:
        """Register ``handler``; refuses an unknown kind, a blank name, and a second
        handler of the same kind and name."""
        payload_type(handler.kind)
        if not _HANDLER_NAME.match(handler.name):
            raise ValueError(f"a handler name is lower case letters, digits, '_' and '.': {handler.name!r}")
        by_name = self._by_kind.setdefault(handler.kind, {})
        if handler.name in by_name:
            raise ValueError(f"a handler named {handler.name!r} already handles {handler.kind}")
        by_name[handler.name] = handler

    def for_kind(self, kind: str) -> list[Handler]:
        """The handlers of ``kind`` in registration order (none for a kind nobody handles,
        or a stored kind this code no longer knows)."""
        return list(self._by_kind.get(kind, {}).values())

    def named(self, name: str) -> Handler:
        """The handler called ``name``, or ``<kind>:<name>`` when several kinds have one of
        that name; KeyError says which names exist."""
        kind, _, bare = name.rpartition(":")
        found = [
            handler for by_name in self._by_kind.values() for handler in by_name.values()
            if handler.name == bare and kind in ("", handler.kind)
        ]
        if len(found) == 1:
            return found[0]
        if found:
            choices = ", ".join(f"{handler.kind}:{handler.name}" for handler in found)
            raise KeyError(f"several handlers are named {name!r}: say which ({choices})")
        known = ", ".join(sorted(f"{handler.kind}:{handler.name}" for handler in self)) or "none"
        raise KeyError(f"no handler named {name!r} (declared: {known})")

    def __iter__(self) -> Iterator[Handler]:
        return iter([handler for by_name in self._by_kind.values() for handler in by_name.values()])

    def __len__(self) -> int:
        return sum(len(by_name) for by_name in self._by_kind.values())


_HANDLER_NAME = re.compile(r"^[a-z][a-z0-9_.]*$")


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


async def emit_event(session: AsyncSession, kind: str, payload: object, key: str | None = None) -> int:
    """Record an event in the caller's transaction and return its id.

    ``payload`` is an instance of the dataclass registered for ``kind``
    (UnknownEventKindError for a kind nobody registered, EventPayloadError for a dict,
    another class or a field of the wrong type; nothing is written then). The caller
    commits: the row and its ``NOTIFY shuiwu_events, '<id>'`` are delivered at commit,
    and neither exists if the transaction rolls back. ``key`` names the thing the event
    is about (``account:42``) for lookups.
    """
    document = payload_type(kind).encode(payload)
    result = await session.execute(
        _INSERT_AND_NOTIFY, {"kind": kind, "key": key, "payload": document, "channel": EVENTS_CHANNEL}
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
