"""The job worker behind ``shuiwu jobs`` (DESIGN.md, "Background jobs").

PgQueuer does the queueing: claiming with SKIP LOCKED, cron schedules, retries with
backoff and re-queueing a crashed worker's jobs. This module registers what it runs:

- one entrypoint per event handler (``event:<kind>:<handler>``), fed by the relay that
  runs in the same process (``backend.events.relay``); each job runs the handler for its
  event in a transaction of its own, at most once (``backend.events.running``);
- the scheduled jobs, each a service call in its own transaction with ``now`` from the
  injected clock.

Any number of workers may run against one database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import asyncpg
from pgqueuer import DatabaseRetryEntrypointExecutor, Job, PgQueuer
from pgqueuer.core.executors import AbstractEntrypointExecutor, EntrypointExecutorParameters
from pgqueuer.models import Schedule
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.audit import service as audit_service
from backend.auth import service as auth_service
from backend.auth.models import PrincipalKind
from backend.auth.principal import Principal
from backend.clock import Clock, utcnow
from backend.db import StatementLimits, create_engine, session_factory, transaction
from backend.events.listener import CONNECTION_ERRORS, Backoff, connect, wait_any
from backend.events.relay import event_id_of, run_relay
from backend.events.running import run_handler
from backend.events.service import Handler, HandlerRegistry
from backend.exports.links import purge_used_download_links
from backend.observability import JOBS
from backend.readings.alarms import service as alarms_service
from backend.readings.partitions import ensure_partitions_ahead
from backend.runtime import Runtime
from backend.settings import Settings

log = logging.getLogger(__name__)

SessionFactory = async_sessionmaker[AsyncSession]

# Scheduled jobs: (entrypoint, cron expression). Minutes off the hour spread the load.
PURGE_EXPIRED_AUTH = ("purge_expired_auth", "7 * * * *")
EVALUATE_ALARMS = ("evaluate_alarms", "*/15 * * * *")
ENSURE_PARTITIONS = ("ensure_reading_partitions", "23 3 * * *")
PURGE_OPERATION_LOG = ("purge_operation_log", "41 4 * * *")

# A failing handler is retried with backoff this many times, then held as failed
# (status 'failed' in the pgqueuer table) for someone to look at and re-queue.
HANDLER_MAX_ATTEMPTS = 5

# What handlers act as until the system actor lands (issue 11): a principal holding no
# permission, so a handler cannot do more than it could before.
_HANDLER_ACTOR = Principal(kind=PrincipalKind.staff, id=0, name="system")


# --------------------------------------------------------------------------- the jobs


async def purge_expired_auth(factory: SessionFactory, *, now: datetime) -> int:
    """Delete expired login sessions, one-time codes and the nonces of expired download
    links; return how many rows went."""
    async with transaction(factory) as session:
        purged = await auth_service.purge_expired(session, now=now)
        purged += await purge_used_download_links(session, now=now)
    log.info("purged %d expired auth rows", purged)
    return purged


async def evaluate_alarms(factory: SessionFactory, *, now: datetime, timezone: str) -> alarms_service.AlarmEvaluation:
    """Evaluate the alarm rules for every installed meter (finds silent meters too)."""
    async with transaction(factory) as session:
        result = await alarms_service.evaluate_alarms(session, now=now, tz=timezone)
    log.info("alarms: %d opened, %d closed, %d still open", result.opened, result.closed, result.refreshed)
    return result


async def ensure_reading_partitions(factory: SessionFactory, *, now: datetime, timezone: str) -> list[str]:
    """Attach the readings partitions of this month and the next three ahead of need."""
    async with transaction(factory) as session:
        attached = await ensure_partitions_ahead(session, now=now, tz=timezone)
    log.info("readings partitions attached: %s", ", ".join(attached) or "none needed")
    return attached


async def purge_operation_log(factory: SessionFactory, *, now: datetime, retention_days: int) -> int:
    """Delete operation-log entries older than ``retention_days``, a batch per transaction
    (a first purge of years of log never holds one long transaction)."""
    older_than = now - timedelta(days=retention_days)
    purged = 0
    while True:
        async with transaction(factory) as session:
            deleted = await audit_service.purge_operation_log(session, older_than=older_than)
        purged += deleted
        if deleted == 0:
            break
    log.info("purged %d operation-log entries older than %s", purged, older_than.date())
    return purged


# --------------------------------------------------------------------------- wiring


async def _counted(entrypoint: str, work: Awaitable[object]) -> None:
    try:
        await work
    except Exception:
        JOBS.labels(entrypoint, "error").inc()
        raise
    JOBS.labels(entrypoint, "ok").inc()


def _retrying(parameters: EntrypointExecutorParameters) -> AbstractEntrypointExecutor:
    return DatabaseRetryEntrypointExecutor(parameters, max_attempts=HANDLER_MAX_ATTEMPTS)


def _event_job(runtime: Runtime, handler: Handler) -> Callable[[Job], Awaitable[None]]:
    async def event_job(job: Job) -> None:
        await _counted(handler.entrypoint, run_handler(runtime, handler, event_id_of(job.payload)))

    return event_job


def build_queuer(
    connection: asyncpg.Connection, factory: SessionFactory, *, handlers: HandlerRegistry, clock: Clock = utcnow,
    timezone: str = "Asia/Shanghai", audit_retention_days: int = 365, runtime: Runtime | None = None,
) -> PgQueuer:
    """PgQueuer on ``connection`` with every event handler and scheduled job registered
    (handlers need the ``runtime`` they run with)."""
    queuer = PgQueuer.from_asyncpg_connection(connection)
    if len(handlers) and runtime is None:
        raise ValueError("event handlers run with a Runtime")
    for handler in handlers:
        assert runtime is not None
        queuer.entrypoint(handler.entrypoint, on_failure="hold", executor_factory=_retrying)(
            _event_job(runtime, handler)
        )

    entrypoint, expression = PURGE_EXPIRED_AUTH

    @queuer.schedule(entrypoint, expression)
    async def purge_expired_auth_job(schedule: Schedule) -> None:
        await _counted(entrypoint, purge_expired_auth(factory, now=clock()))

    alarms_entrypoint, alarms_expression = EVALUATE_ALARMS

    @queuer.schedule(alarms_entrypoint, alarms_expression)
    async def evaluate_alarms_job(schedule: Schedule) -> None:
        await _counted(alarms_entrypoint, evaluate_alarms(factory, now=clock(), timezone=timezone))

    partitions_entrypoint, partitions_expression = ENSURE_PARTITIONS

    @queuer.schedule(partitions_entrypoint, partitions_expression)
    async def ensure_partitions_job(schedule: Schedule) -> None:
        await _counted(partitions_entrypoint, ensure_reading_partitions(factory, now=clock(), timezone=timezone))

    log_entrypoint, log_expression = PURGE_OPERATION_LOG

    @queuer.schedule(log_entrypoint, log_expression)
    async def purge_operation_log_job(schedule: Schedule) -> None:
        await _counted(log_entrypoint, purge_operation_log(factory, now=clock(), retention_days=audit_retention_days))

    return queuer


async def run_worker(
    settings: Settings,
    database_url: str,
    *,
    stop: asyncio.Event | None = None,
    handlers: HandlerRegistry | None = None,
    clock: Clock = utcnow,
    relay_sweep_interval: float = 30.0,
    dequeue_timeout: timedelta = timedelta(seconds=30),
    backoff: Backoff | None = None,
) -> None:
    """Run jobs and relay events until ``stop`` is set (or the task is cancelled).

    ``database_url`` is the resolved URL (the CLI starts the embedded server when
    ``SHUIWU_DATABASE_URL`` is absent); the schema must be migrated (PgQueuer's tables
    come with migration 0002). ``handlers``: the declared event handlers (none by
    default). A lost database connection restarts the worker's
    loops after a backoff; any other error ends it.
    """
    stop = stop or asyncio.Event()
    handlers = handlers if handlers is not None else HandlerRegistry()
    backoff = backoff or Backoff()
    engine = create_engine(database_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow,
                           limits=StatementLimits.for_bulk(settings))
    factory = session_factory(engine)
    runtime = Runtime(settings=settings, sessions=factory, actor=_HANDLER_ACTOR, clock=clock)
    log.info("job worker starting: %d event handlers", len(handlers))
    try:
        while not stop.is_set():
            try:
                await _serve(
                    database_url,
                    factory,
                    stop=stop,
                    handlers=handlers,
                    clock=clock,
                    relay_sweep_interval=relay_sweep_interval,
                    dequeue_timeout=dequeue_timeout,
                    backoff=backoff,
                    timezone=settings.timezone,
                    audit_retention_days=settings.audit_retention_days,
                    runtime=runtime,
                )
            except* CONNECTION_ERRORS as lost:
                delay = backoff.next_delay()
                log.warning("job worker lost the database (%s); restarting in %.1fs", lost.exceptions[0], delay)
                await wait_any(stop, seconds=delay)
    finally:
        await engine.dispose()
        log.info("job worker stopped")


async def _serve(
    database_url: str,
    factory: SessionFactory,
    *,
    stop: asyncio.Event,
    handlers: HandlerRegistry,
    clock: Clock,
    relay_sweep_interval: float,
    dequeue_timeout: timedelta,
    backoff: Backoff,
    timezone: str = "Asia/Shanghai",
    audit_retention_days: int = 365,
    runtime: Runtime | None = None,
) -> None:
    """One run of PgQueuer and the relay, until ``stop`` or until either of them ends."""
    connection = await connect(database_url, application_name="shuiwu-jobs")
    backoff.reset()
    # Set when this run is over: on stop, or when PgQueuer returns or fails.
    over = asyncio.Event()
    # PgQueuer only notices a dead connection at its next query, up to dequeue_timeout later.
    connection.add_termination_listener(lambda _: over.set())
    try:
        queuer = build_queuer(connection, factory, handlers=handlers, clock=clock, timezone=timezone,
                              audit_retention_days=audit_retention_days, runtime=runtime)

        async def take_jobs() -> None:
            try:
                await queuer.run(dequeue_timeout=dequeue_timeout)
            finally:
                over.set()

        async def end_on_stop() -> None:
            await wait_any(stop, over)
            over.set()
            queuer.shutdown.set()

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(take_jobs(), name="jobs")
            tasks.create_task(end_on_stop(), name="jobs-stop")
            tasks.create_task(
                run_relay(database_url, stop=over, handlers=handlers, sweep_interval=relay_sweep_interval),
                name="event-relay",
            )
        if connection.is_closed() and not stop.is_set():
            raise ConnectionError("the job worker's connection closed")
    finally:
        with contextlib.suppress(*CONNECTION_ERRORS):
            await asyncio.wait_for(connection.close(), 2)
