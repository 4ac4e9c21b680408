"""The relay: hands each committed domain event once to its handlers as PgQueuer jobs.

Once-only hand-off comes from doing three things in ONE transaction on one asyncpg
connection: claim unrelayed events (``FOR UPDATE SKIP LOCKED``, by id), insert one
PgQueuer job per (event, handler) through PgQueuer's own ``Queries`` bound to that same
connection, and set ``relayed_at``. Either all three commit or none does, and a second
relay racing the first skips the rows the first has locked and, once the first commits,
no longer sees them as unrelayed. The job payload is the event id; the handler reads the
event from the table. (Each job also carries the dedupe key ``<event id>:<handler>``, so
even a hand-made re-relay cannot queue a second copy while the first is pending.)

Running a job is at-least-once, as with any queue: a worker killed mid-job has its job
picked again after the heartbeat timeout. Its effect is at-most-once: the job records
that the handler ran in the handler's own transaction (``backend.events.running``).

The relay wakes on ``NOTIFY shuiwu_events`` and also sweeps periodically, so an event
whose notification was lost (relay down, connection dropped) is relayed on the next sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

import asyncpg
from pgqueuer import AsyncpgDriver, Queries

from backend.events.listener import CONNECTION_ERRORS, Backoff, connect, wait_any
from backend.events.service import EVENTS_CHANNEL, Handler, HandlerRegistry
from backend.observability import EVENTS_RELAYED

log = logging.getLogger(__name__)

_CLAIM = """
    SELECT id, kind FROM domain_events
    WHERE relayed_at IS NULL
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
"""
_MARK_RELAYED = "UPDATE domain_events SET relayed_at = now() WHERE id = ANY($1::bigint[])"


def job_payload(event_id: int) -> bytes:
    return str(event_id).encode()


def event_id_of(payload: bytes | None) -> int:
    if payload is None:
        raise ValueError("an event job without a payload")
    return int(payload.decode())


def dedupe_key(event_id: int, handler: Handler) -> str:
    return f"{event_id}:{handler.entrypoint}"


async def enqueue_handler_jobs(connection: asyncpg.Connection, jobs: list[tuple[int, Handler]]) -> list[bool]:
    """Queue one job per (event id, handler) in the connection's transaction; for each,
    whether it was queued (False: the same job is already queued or running).

    The relay and a replay queue the same way: the entrypoint names the handler, the
    payload is the event id, the dedupe key is both.
    """
    if not jobs:
        return []
    # PgQueuer's Queries over *this* connection: the INSERT joins the caller's transaction.
    queries = Queries(AsyncpgDriver(connection))
    ids = await queries.enqueue(
        [handler.entrypoint for _, handler in jobs],
        [job_payload(event_id) for event_id, _ in jobs],
        [0] * len(jobs),
        dedupe_key=[dedupe_key(event_id, handler) for event_id, handler in jobs],
        on_conflict="skip",
    )
    return [job_id is not None for job_id in ids]


async def relay_batch(connection: asyncpg.Connection, *, handlers: HandlerRegistry, batch_size: int = 500) -> int:
    """Relay up to ``batch_size`` unrelayed events in one transaction; return how many.

    ``connection`` must not be inside a transaction: this one commits. Events nobody
    handles are marked relayed too: a handler declared later reaches them with
    ``shuiwu events replay`` (``backend.events.replay``).
    """
    async with connection.transaction():
        claimed = await connection.fetch(_CLAIM, batch_size)
        if not claimed:
            return 0
        await enqueue_handler_jobs(
            connection, [(event["id"], handler) for event in claimed for handler in handlers.for_kind(event["kind"])]
        )
        await connection.execute(_MARK_RELAYED, [event["id"] for event in claimed])
    for kind, count in Counter(event["kind"] for event in claimed).items():
        EVENTS_RELAYED.labels(kind).inc(count)
    return len(claimed)


async def relay_pending(connection: asyncpg.Connection, *, handlers: HandlerRegistry, batch_size: int = 500) -> int:
    """Relay batches until no unrelayed event is left (that this relay may claim)."""
    total = 0
    while True:
        relayed = await relay_batch(connection, handlers=handlers, batch_size=batch_size)
        total += relayed
        if relayed < batch_size:
            return total


async def run_relay(
    database_url: str,
    *,
    stop: asyncio.Event,
    handlers: HandlerRegistry,
    sweep_interval: float = 30.0,
    batch_size: int = 500,
    backoff: Backoff | None = None,
) -> None:
    """Relay events until ``stop`` is set: on every NOTIFY and every ``sweep_interval``.

    Holds one dedicated connection (LISTEN and the relay transactions) and reconnects
    with backoff when it is lost. Any number of relays may run against one database.
    """
    backoff = backoff or Backoff()
    wake = asyncio.Event()

    def notified(*_: object) -> None:
        wake.set()

    while not stop.is_set():
        try:
            connection = await connect(database_url, application_name="shuiwu-relay")
        except CONNECTION_ERRORS as exc:
            delay = backoff.next_delay()
            log.warning("event relay cannot connect (%s); retrying in %.1fs", exc, delay)
            await wait_any(stop, seconds=delay)
            continue
        try:
            await connection.add_listener(EVENTS_CHANNEL, notified)
            connection.add_termination_listener(notified)
            backoff.reset()
            while not stop.is_set():
                wake.clear()
                relayed = await relay_pending(connection, handlers=handlers, batch_size=batch_size)
                if relayed:
                    log.debug("relayed %d events", relayed)
                if connection.is_closed():
                    raise ConnectionError("relay connection closed")
                await wait_any(stop, wake, seconds=sweep_interval)
        except CONNECTION_ERRORS as exc:
            log.warning("event relay lost its connection (%s)", exc)
            await wait_any(stop, seconds=backoff.next_delay())
        finally:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await asyncio.wait_for(connection.close(), 2)
