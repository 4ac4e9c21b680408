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
picked again after the heartbeat timeout, so handlers are idempotent by event id.

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
from backend.events.service import EVENTS_CHANNEL, HandlerRegistry, Subscription, registry
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


def dedupe_key(event_id: int, subscription: Subscription) -> str:
    return f"{event_id}:{subscription.entrypoint}"


async def relay_batch(connection: asyncpg.Connection, *, handlers: HandlerRegistry = registry, batch_size: int = 500) -> int:
    """Relay up to ``batch_size`` unrelayed events in one transaction; return how many.

    ``connection`` must not be inside a transaction: this one commits. Events nobody
    handles are marked relayed too.
    """
    async with connection.transaction():
        claimed = await connection.fetch(_CLAIM, batch_size)
        if not claimed:
            return 0
        entrypoints: list[str] = []
        payloads: list[bytes | None] = []
        dedupe_keys: list[str | None] = []
        for event in claimed:
            for subscription in handlers.subscriptions(event["kind"]):
                entrypoints.append(subscription.entrypoint)
                payloads.append(job_payload(event["id"]))
                dedupe_keys.append(dedupe_key(event["id"], subscription))
        if entrypoints:
            # PgQueuer's Queries over *this* connection: the INSERT joins our transaction.
            queries = Queries(AsyncpgDriver(connection))
            await queries.enqueue(entrypoints, payloads, [0] * len(entrypoints), dedupe_key=dedupe_keys, on_conflict="skip")
        await connection.execute(_MARK_RELAYED, [event["id"] for event in claimed])
    for kind, count in Counter(event["kind"] for event in claimed).items():
        EVENTS_RELAYED.labels(kind).inc(count)
    return len(claimed)


async def relay_pending(connection: asyncpg.Connection, *, handlers: HandlerRegistry = registry, batch_size: int = 500) -> int:
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
    handlers: HandlerRegistry = registry,
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
