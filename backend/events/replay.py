"""Replay for late handlers: hand past events to a handler declared after they were relayed.

The relay hands an event to the handlers declared when it relays it, and marks it
relayed even when nobody handles it; a handler added later (billing's settlement of
``readings.ingested``) reaches the past through ``shuiwu events replay``, which queues
the events of its kind it has not handled yet, exactly as the relay would have.

Replaying is idempotent: an event the handler has handled (``handled_events``) is not
queued, an event whose job is still queued or running is not queued twice (the dedupe
key), and a job that runs anyway does nothing (``backend.events.running``). A handler
with a horizon (effects outside the database: messages, pushes, valve commands) skips
events older than it, so a replay of history never sends yesterday's alerts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from backend.events.relay import enqueue_handler_jobs
from backend.events.service import Handler

_UNHANDLED = """
    SELECT e.id,
           EXISTS (SELECT FROM handled_events h WHERE h.event_id = e.id AND h.handler = $2) AS handled
    FROM domain_events e
    WHERE e.kind = $1 AND e.id > $3 AND e.created_at >= $4
    ORDER BY e.id
    LIMIT $5
"""
_BEYOND_HORIZON = """
    SELECT count(*) FROM domain_events
    WHERE kind = $1 AND id > $2 AND created_at >= $3 AND created_at < $4
"""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # before any event: "since" unbounded


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay found among the events it was asked about, and what it queued."""

    entrypoint: str
    enqueued: int
    already_handled: int
    already_queued: int  # a job for the same event and handler was queued or running
    beyond_horizon: int


async def replay_events(
    connection: asyncpg.Connection,
    *,
    handler: Handler,
    now: datetime,
    since: datetime | None = None,
    from_id: int | None = None,
    horizon: timedelta | None = None,
    batch_size: int = 1000,
) -> ReplayResult:
    """Queue a job of ``handler`` for every event of its kind created at or after
    ``since`` and/or with an id of at least ``from_id`` (one of them is required) that
    it has not handled yet, a batch per transaction.

    ``horizon`` replaces the handler's declared one for this replay (None: the declared
    one); events created before ``now - horizon`` are skipped and counted. ``connection``
    must not be inside a transaction.
    """
    if since is None and from_id is None:
        raise ValueError("say where the replay starts: since a time, or from an event id")
    if since is not None and since.utcoffset() is None:
        raise ValueError("since must be timezone-aware")
    horizon = horizon if horizon is not None else handler.horizon
    start = since if since is not None else _EPOCH
    after = from_id - 1 if from_id is not None else 0
    beyond_horizon = 0
    if horizon is not None:
        cutoff = now - horizon
        beyond_horizon = await connection.fetchval(_BEYOND_HORIZON, handler.kind, after, start, cutoff)
        start = max(start, cutoff)
    enqueued = already_handled = already_queued = 0
    while True:
        async with connection.transaction():
            rows = await connection.fetch(_UNHANDLED, handler.kind, handler.name, after, start, batch_size)
            unhandled = [row["id"] for row in rows if not row["handled"]]
            queued = await enqueue_handler_jobs(connection, [(event_id, handler) for event_id in unhandled])
        enqueued += sum(queued)
        already_queued += len(queued) - sum(queued)
        already_handled += len(rows) - len(unhandled)
        if len(rows) < batch_size:
            break
        after = rows[-1]["id"]
    return ReplayResult(
        entrypoint=handler.entrypoint,
        enqueued=enqueued,
        already_handled=already_handled,
        already_queued=already_queued,
        beyond_horizon=beyond_horizon,
    )
