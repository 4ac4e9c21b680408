"""Running one handler for one event: what each ``event:<kind>:<name>`` job does.

The job worker (``backend.jobs``) calls :func:`run_handler` for every job the relay or a
replay queued. Running a job is at-least-once, as with any queue (a worker killed
mid-job has it picked again; a replay may queue an event the relay already handed
off), so the handler's effect is made at-most-once here: the record that the handler
ran for the event (``handled_events``) is written in the handler's own transaction,
before it runs. A second job for the same pair finds the record and does nothing; one
running concurrently waits on the first's uncommitted row and then finds it; a handler
that fails rolls the record back with its effect, so the retry runs it again.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from sqlalchemy import text

from backend.db import transaction
from backend.events.service import Handler, load_event
from backend.runtime import Runtime

log = logging.getLogger(__name__)


class HandlerOutcome(StrEnum):
    handled = "handled"
    already_handled = "already_handled"  # by an earlier job for the same event
    event_gone = "event_gone"  # purged (retention) before the job ran


_RECORD_HANDLING = text(
    """
    INSERT INTO handled_events (event_id, handler, handled_at) VALUES (:event_id, :handler, :now)
    ON CONFLICT DO NOTHING
    RETURNING event_id
    """
)


async def run_handler(runtime: Runtime, handler: Handler, event_id: int) -> HandlerOutcome:
    """Run ``handler.run(runtime, session, event)`` for event ``event_id`` in a
    transaction of its own, committed when it returns, unless this handler has already
    run for the event. An exception rolls everything back (the record too) and
    propagates, so the job is retried."""
    async with transaction(runtime.sessions) as session:
        event = await load_event(session, event_id)
        if event is None:
            log.warning("%s: event %d no longer exists", handler.entrypoint, event_id)
            return HandlerOutcome.event_gone
        if event.kind != handler.kind:
            raise ValueError(f"{handler.entrypoint} was given event {event_id}, a {event.kind}")
        recorded = await session.execute(
            _RECORD_HANDLING, {"event_id": event_id, "handler": handler.name, "now": runtime.now()}
        )
        if recorded.first() is None:
            log.info("%s: event %d was already handled", handler.entrypoint, event_id)
            return HandlerOutcome.already_handled
        await handler.function()(runtime, session, event)
    return HandlerOutcome.handled
