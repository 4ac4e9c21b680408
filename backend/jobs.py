"""The job worker behind ``shuiwu jobs`` (DESIGN.md, "Background jobs").

PgQueuer does the queueing: claiming with SKIP LOCKED, cron schedules, retries with
backoff and re-queueing a crashed worker's jobs. This module registers what the
installed domains declare (``backend.domains``; it imports no domain by name):

- one entrypoint per event handler (``event:<kind>:<handler name>``), fed by the relay
  that runs in the same process (``backend.events.relay``) and by ``shuiwu events
  replay``; each runs its event at most once (``backend.events.running``);
- each job (``Domain.jobs``): a cron schedule under its name when it has one, and an
  entrypoint ``job:<name>`` for the runs other code defers with :func:`defer_job`.

Jobs and handlers receive a :class:`backend.runtime.Runtime` (settings, zone, clock,
sessions, the services of the declarations) and act as the system actor
(``backend.auth.system``), which holds exactly the permissions they declare.

Any number of workers may run against one database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from pgqueuer import AsyncpgDriver, DatabaseRetryEntrypointExecutor, PgQueuer, Queries
from pgqueuer import Job as QueuedJob
from pgqueuer.core.executors import AbstractEntrypointExecutor, EntrypointExecutorParameters
from pgqueuer.models import Schedule
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.clock import Clock, utcnow
from backend.db import StatementLimits, create_engine, raw_connection, session_factory
from backend.domain import Domain, Job, close_services, collect_services, import_event_payloads, load, system_principal
from backend.domains import installed
from backend.events.listener import CONNECTION_ERRORS, Backoff, connect, wait_any
from backend.events.relay import event_id_of, run_relay
from backend.events.running import run_handler
from backend.events.service import Handler, HandlerRegistry
from backend.observability import JOBS
from backend.runtime import Runtime
from backend.settings import Settings

log = logging.getLogger(__name__)

SessionFactory = async_sessionmaker[AsyncSession]

# A failing handler is retried with backoff this many times, then held as failed
# (status 'failed' in the pgqueuer table) for someone to look at and re-queue.
HANDLER_MAX_ATTEMPTS = 5

# Deferred runs of a declared job are PgQueuer jobs of this entrypoint.
DEFERRED_PREFIX = "job:"


# --------------------------------------------------------------------------- declarations


def declared_jobs(domains: tuple[Domain, ...]) -> list[Job]:
    """Every job of ``domains``, refusing two with one name (queued work refers to it)."""
    jobs: dict[str, Job] = {}
    for domain in domains:
        for job in domain.jobs:
            if job.name in jobs:
                raise ValueError(f"two jobs are named {job.name!r}")
            jobs[job.name] = job
    return list(jobs.values())


def declared_handlers(domains: tuple[Domain, ...]) -> HandlerRegistry:
    """A registry of every handler ``domains`` declare (their kinds' payloads imported first)."""
    import_event_payloads(domains)
    from backend.domain import message_handlers

    return HandlerRegistry((*(handler for domain in domains for handler in domain.handlers), *message_handlers(domains)))


def runtime_for(
    settings: Settings, sessions: SessionFactory, *, domains: tuple[Domain, ...] | None = None, clock: Clock = utcnow,
) -> Runtime:
    """The runtime jobs and handlers of ``domains`` (default: the installed ones) receive."""
    domains = domains if domains is not None else installed()
    # defer_job is offered as a service: domains import no host (tests/test_layers.py).
    return Runtime(settings=settings, sessions=sessions, actor=system_principal(domains), clock=clock,
                   services={"defer_job": defer_job, **collect_services(settings, domains, sessions=sessions)})


# --------------------------------------------------------------------------- deferring


async def defer_job(
    session: AsyncSession, *, job: str, dedupe_key: str, now: datetime, at: datetime | None = None,
    payload: Mapping[str, Any] | None = None,
) -> bool:
    """Queue a run of the declared job ``job`` for ``at`` (default: as soon as a worker is
    free), in the caller's transaction: it exists only if the caller commits.

    ``dedupe_key`` makes it once-only while a run of this job with that key is queued or
    running (``settle:42``): a second deferral is skipped and False returned. ``payload``
    is JSON-ready; the job's ``run(runtime, payload)`` receives it. A job no installed
    domain declares is refused (ValueError): nothing would ever run it.
    """
    if job not in {declared.name for declared in declared_jobs(installed())}:
        raise ValueError(f"no installed domain declares the job {job!r}")
    connection = await raw_connection(session)
    delay = max(at - now, timedelta(0)) if at is not None else None
    queued = await Queries(AsyncpgDriver(connection)).enqueue(
        DEFERRED_PREFIX + job, json.dumps(dict(payload or {}), ensure_ascii=False).encode(), 0, delay,
        # PgQueuer's dedupe keys are one namespace for every entrypoint: prefix the job's.
        dedupe_key=f"{job}:{dedupe_key}", on_conflict="skip",
    )
    return queued[0] is not None


# --------------------------------------------------------------------------- running


async def run_job(runtime: Runtime, job: Job, payload: Mapping[str, Any]) -> object:
    """Run a declared job as the system actor (its transactions are its own)."""
    return await load(job.run)(runtime, payload)


async def _counted(entrypoint: str, work: Awaitable[object]) -> None:
    try:
        await work
    except Exception:
        JOBS.labels(entrypoint, "error").inc()
        raise
    JOBS.labels(entrypoint, "ok").inc()


def _retrying(parameters: EntrypointExecutorParameters) -> AbstractEntrypointExecutor:
    return DatabaseRetryEntrypointExecutor(parameters, max_attempts=HANDLER_MAX_ATTEMPTS)


def _event_job(runtime: Runtime, handler: Handler) -> Callable[[QueuedJob], Awaitable[None]]:
    async def event_job(queued: QueuedJob) -> None:
        # At most once per (event, handler), across relay and replay (backend.events.running).
        await _counted(handler.entrypoint, run_handler(runtime, handler, event_id_of(queued.payload)))

    return event_job


def _deferred_job(runtime: Runtime, job: Job) -> Callable[[QueuedJob], Awaitable[None]]:
    async def deferred(queued: QueuedJob) -> None:
        payload = json.loads(queued.payload.decode()) if queued.payload else {}
        await _counted(job.name, run_job(runtime, job, payload))

    return deferred


def _scheduled_job(runtime: Runtime, job: Job) -> Callable[[Schedule], Awaitable[None]]:
    async def scheduled(schedule: Schedule) -> None:
        await _counted(job.name, run_job(runtime, job, {}))

    return scheduled


def build_queuer(
    connection: asyncpg.Connection, runtime: Runtime, *, handlers: HandlerRegistry, jobs: list[Job],
) -> PgQueuer:
    """PgQueuer on ``connection`` with every event handler and declared job registered."""
    queuer = PgQueuer.from_asyncpg_connection(connection)
    for handler in handlers:
        queuer.entrypoint(handler.entrypoint, on_failure="hold", executor_factory=_retrying)(_event_job(runtime, handler))
    for job in jobs:
        queuer.entrypoint(DEFERRED_PREFIX + job.name, on_failure="hold", executor_factory=_retrying)(
            _deferred_job(runtime, job)
        )
        if job.cron is not None:
            queuer.schedule(job.name, job.cron)(_scheduled_job(runtime, job))
    return queuer


async def run_worker(
    settings: Settings,
    database_url: str,
    *,
    stop: asyncio.Event | None = None,
    domains: tuple[Domain, ...] | None = None,
    handlers: HandlerRegistry | None = None,
    clock: Clock = utcnow,
    relay_sweep_interval: float = 30.0,
    dequeue_timeout: timedelta = timedelta(seconds=30),
    backoff: Backoff | None = None,
) -> None:
    """Run jobs and relay events until ``stop`` is set (or the task is cancelled).

    ``database_url`` is the resolved URL (the CLI starts the embedded server when
    ``SHUIWU_DATABASE_URL`` is absent); the schema must be migrated (PgQueuer's tables
    come with migration 0002). ``domains`` defaults to the installed ones; ``handlers``
    to theirs. A lost database connection restarts the worker's loops after a backoff;
    any other error ends it.
    """
    stop = stop or asyncio.Event()
    domains = domains if domains is not None else installed()
    handlers = handlers if handlers is not None else declared_handlers(domains)
    jobs = declared_jobs(domains)
    backoff = backoff or Backoff()
    engine = create_engine(database_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow,
                           limits=StatementLimits.for_bulk(settings))
    runtime = runtime_for(settings, session_factory(engine), domains=domains, clock=clock)
    log.info("job worker starting: %d event handlers, %d jobs", len(handlers), len(jobs))
    try:
        while not stop.is_set():
            try:
                await _serve(
                    database_url,
                    runtime,
                    stop=stop,
                    handlers=handlers,
                    jobs=jobs,
                    relay_sweep_interval=relay_sweep_interval,
                    dequeue_timeout=dequeue_timeout,
                    backoff=backoff,
                )
            except* CONNECTION_ERRORS as lost:
                delay = backoff.next_delay()
                log.warning("job worker lost the database (%s); restarting in %.1fs", lost.exceptions[0], delay)
                await wait_any(stop, seconds=delay)
    finally:
        await close_services(runtime.services)
        await engine.dispose()
        log.info("job worker stopped")


async def _serve(
    database_url: str,
    runtime: Runtime,
    *,
    stop: asyncio.Event,
    handlers: HandlerRegistry,
    jobs: list[Job],
    relay_sweep_interval: float,
    dequeue_timeout: timedelta,
    backoff: Backoff,
) -> None:
    """One run of PgQueuer and the relay, until ``stop`` or until either of them ends."""
    connection = await connect(database_url, application_name="shuiwu-jobs")
    backoff.reset()
    # Set when this run is over: on stop, or when PgQueuer returns or fails.
    over = asyncio.Event()
    # PgQueuer only notices a dead connection at its next query, up to dequeue_timeout later.
    connection.add_termination_listener(lambda _: over.set())
    try:
        queuer = build_queuer(connection, runtime, handlers=handlers, jobs=jobs)

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
