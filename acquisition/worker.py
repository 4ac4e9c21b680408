"""The acquisition worker (``shuiwu acquire``): the field side's long-running process.

**Leases.** A worker is one *holder* (``host:pid:random``). Every renew interval it
renews the leases it holds and takes free or expired ones (a killed worker's links) of the
links it can serve — every serial and DTU concentrator (:mod:`acquisition.links`) — up to
its maximum; a link another holder keeps is left alone. Leases are released when the
worker stops (SIGTERM, Ctrl-C); a lease it failed to renew is given up (its bus stops).

**One coordinator per link.** Each held link gets a :class:`LinkCoordinator` with its own
:class:`~acquisition.transport.AsyncLink` (a thread of its own, never the default
executor), which owns the port: one request at a time on the bus, the port reopened by the
next exchange after it went away, with a doubling pause after each ``link_down``. The
coordinator claims one queued command of its link at a time (``claim_commands``: only
links this holder leases, SKIP LOCKED, so two workers never claim one command), carries it
out (:mod:`acquisition.commands`) and records the result in one transaction:
``finish_command`` (succeeded, or failed with its kind; timeouts, bad frames and a lost
link go back to the queue while attempts remain), the reading of a ``901F`` answer through
``ingest_readings`` (quality actual, the valve state and status bits; an abnormal valve is
``unknown``), and a meter that was not heard through ``record_read_failures`` plus the
alarm rules for it, so 通讯失败 opens without waiting for the periodic sweep. Nothing that
failed is stored as a reading. A bug or a database error in one command is logged and the
bus goes on after a pause: the worker does not crash.

**Wake-ups.** Each bus looks for work every poll interval; a ``command.changed`` event
whose state is ``queued`` (LISTEN on the events channel, ``backend.events.listener``)
wakes every bus at once.

Patrol runs' reads are ``read_now`` commands of their runs (``backend.remote.patrols``),
so they travel the same path; MQTT (NB-IoT) links come later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from acquisition.commands import CommandOrder, Outcome, carry_out
from acquisition.links import LinkPlan, MeterOnBus, links_held_by_others, meter_on_bus, servable_links
from acquisition.protocols import cjt188
from acquisition.settings import AcquireSettings
from acquisition.transport import AsyncLink, ExchangeTiming, FailureKind
from backend.auth.system import system_actor
from backend.clock import Clock, utcnow
from backend.db import transaction
from backend.events.listener import Backoff, EventListener, ListenerLaggedError, wait_any
from backend.readings.alarms.service import evaluate_alarms, record_read_failures
from backend.readings.models import ValveState
from backend.readings.service import ReadingIn, ingest_readings
from backend.remote import service as remote
from backend.remote.errors import CommandNotHeld
from backend.remote.models import FailureKind as RecordedFailure
from backend.remote.models import RemoteCommand

log = logging.getLogger("shuiwu.acquire")

SOURCE = "acquisition"
_VALVE_STATES = {
    cjt188.ValveStatus.open: ValveState.open,
    cjt188.ValveStatus.closed: ValveState.closed,
    cjt188.ValveStatus.abnormal: ValveState.unknown,
}
# The worker evaluates the 通讯失败 rule for the meters it failed to hear.
_ALARM_ACTOR = system_actor({"alarms:manage"})


def holder_name() -> str:
    """This process's lease holder name: host, pid and a random part (a restarted
    process with a recycled pid is another holder)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(3)}"


class LinkCoordinator:
    """One bus: its port, its commands one at a time, its reconnect pauses (module docstring)."""

    def __init__(self, plan: LinkPlan, worker: AcquisitionWorker) -> None:
        self.plan = plan
        self.worker = worker
        self.link = AsyncLink.open_url(plan.url, line=plan.line, timing=worker.timing)
        self.wake = asyncio.Event()
        self.commands_carried_out = 0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, *, drain: bool = False) -> None:
        self._task = asyncio.create_task(self._run(drain=drain), name=f"bus {self.plan.link}")

    async def stop(self) -> None:
        """Finish the command in hand, close the port."""
        self._stopping.set()
        await self.wait()

    async def wait(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, *, drain: bool) -> None:
        config = self.worker.config
        backoff = Backoff(config.reconnect_initial_s, config.reconnect_max_s)
        try:
            while not self._stopping.is_set():
                self.wake.clear()
                try:
                    outcome = await self._next_command()
                except Exception:
                    log.exception("%s: a command could not be carried out or recorded", self.plan.link)
                    await wait_any(self._stopping, seconds=config.poll_interval_s)
                    continue
                if outcome is None:
                    if drain:
                        return
                    await wait_any(self.wake, self._stopping, seconds=config.poll_interval_s)
                elif outcome.failure_kind is FailureKind.link_down:
                    delay = backoff.next_delay()
                    log.warning("%s: %s is down (%s); next try in %.1f s", self.plan.link, self.plan.url,
                                outcome.failure_reason, delay)
                    await wait_any(self._stopping, seconds=delay)
                else:
                    backoff.reset()
        finally:
            await self.link.aclose()

    async def _next_command(self) -> Outcome | None:
        """Claim, carry out and record one command of this link; None when none is queued."""
        worker = self.worker
        now = worker.clock()
        async with transaction(worker.sessions) as session:
            claimed = await remote.claim_commands(session, holder=worker.holder, link_ids=[self.plan.link], limit=1,
                                                  now=now)
            if not claimed:
                return None
            command = claimed[0]
            meter = await meter_on_bus(session, command.meter_id)
        # The time limit (命令时限) is how long the device may take; the deadline, when the
        # command ends in all (later for patrols, which may wait in the queue).
        seconds_left = min(float(command.time_limit_s), (command.deadline - now).total_seconds())
        order = CommandOrder(command_id=command.id or 0, kind=command.kind, params=command.params,
                             attempt=command.attempts, seconds_left=seconds_left)
        if meter is None:
            outcome = Outcome(False, failure_kind=FailureKind.device_error, failure_reason="水表已不在档案中 / meter gone")
        elif order.seconds_left <= 0:
            outcome = Outcome(False, failure_kind=FailureKind.timeout, failure_reason="超过命令时限 / past its time limit")
        else:
            outcome = await carry_out(self.link, order, meter, response_timeout=worker.config.response_timeout_s,
                                      retries=worker.config.exchange_retries,
                                      now_local=worker.clock().astimezone(worker.tz))
        await worker.record(command, meter, outcome)
        self.commands_carried_out += 1
        return outcome


class AcquisitionWorker:
    """Leases, one coordinator per held link, wake-ups (module docstring)."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        config: AcquireSettings,
        timezone: str,
        database_url: str | None = None,
        holder: str | None = None,
        max_links: int | None = None,
        clock: Clock = utcnow,
        links: Collection[str] | None = None,
    ) -> None:
        """``links``: serve only these links (``concentrator:<id>``; ``demo run`` serves its
        simulated bus, not the demo's unreachable ones); None: every serial and DTU link."""
        from zoneinfo import ZoneInfo

        self.sessions = sessions
        self.config = config
        self.timezone = timezone
        self.tz = ZoneInfo(timezone)
        self.database_url = database_url
        self.holder = holder or holder_name()
        self.max_links = max_links or config.max_links
        self.clock = clock
        self.only_links = frozenset(links) if links is not None else None
        self.timing = ExchangeTiming(response_timeout=config.response_timeout_s,
                                     inter_byte_timeout=config.inter_byte_timeout_s, retries=config.exchange_retries)
        self.coordinators: dict[str, LinkCoordinator] = {}
        self._stopping = asyncio.Event()
        self._leased_until: datetime | None = None
        # The LISTEN connection's follower, while it runs (tests wait for it to connect).
        self.listener: EventListener | None = None

    @property
    def held_links(self) -> list[str]:
        return sorted(self.coordinators)

    def stop(self) -> None:
        """Ask :meth:`run` to finish: the commands in hand end, the leases are released."""
        self._stopping.set()

    # -- the loop ------------------------------------------------------------------------

    async def run(self, *, once: bool = False) -> None:
        """Serve until :meth:`stop`; with ``once``, carry out what is queued on the links
        it could lease and return."""
        followers: list[asyncio.Task[None]] = []
        try:
            await self._lease_round(drain=once)
            if once:
                followers.append(asyncio.create_task(self._stop_when_drained()))
            elif self.config.listen and self.database_url:
                followers.append(asyncio.create_task(self._follow_events(self.database_url), name="acquire events"))
            while not self._stopping.is_set():
                await wait_any(self._stopping, seconds=self.config.renew_interval_s)
                if not self._stopping.is_set():
                    await self._lease_round(drain=once)
        finally:
            for follower in followers:
                follower.cancel()
            for follower in followers:
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            await self._shut_down()

    async def _stop_when_drained(self) -> None:
        await asyncio.gather(*(coordinator.wait() for coordinator in list(self.coordinators.values())))
        self.stop()

    async def _shut_down(self) -> None:
        await asyncio.gather(*(coordinator.stop() for coordinator in self.coordinators.values()))
        self.coordinators.clear()
        try:
            async with transaction(self.sessions) as session:
                released = await remote.release_leases(session, holder=self.holder)
        except Exception:
            log.exception("%s: could not release its leases; they expire by themselves", self.holder)
            return
        log.info("%s: released %s", self.holder, ", ".join(released) or "no leases")

    # -- leases --------------------------------------------------------------------------

    async def _lease_round(self, *, drain: bool = False) -> None:
        """Renew what is held, take free or expired links up to the maximum, and start or
        stop coordinators to match."""
        now = self.clock()
        ttl = timedelta(seconds=self.config.lease_ttl_s)
        try:
            async with transaction(self.sessions) as session:
                plans = {plan.link: plan for plan in await servable_links(session)
                         if self.only_links is None or plan.link in self.only_links}
                held = [link for link in self.coordinators if link in plans]
                gone = [link for link in self.coordinators if link not in plans]
                if gone:  # no longer a bus (retired, now a terminal that dials in)
                    await remote.release_leases(session, holder=self.holder, links=gone)
                kept = await remote.renew_leases(session, holder=self.holder, links=held, ttl=ttl, now=now) if held else []
                taken: list[str] = []
                room = self.max_links - len(kept)
                if room > 0:
                    candidates = [link for link in plans if link not in kept]
                    busy = await links_held_by_others(session, links=candidates, holder=self.holder, now=now)
                    wanted = [link for link in candidates if link not in busy][:room]
                    if wanted:
                        taken = await remote.take_leases(session, holder=self.holder, links=wanted, ttl=ttl, now=now)
        except Exception:
            log.exception("%s: lease round failed", self.holder)
            if self._leased_until is not None and self.clock() >= self._leased_until:
                log.error("%s: leases expired unrenewed; stopping every bus", self.holder)
                await self._stop_coordinators(list(self.coordinators))
            return
        self._leased_until = now + ttl
        held_now = set(kept) | set(taken)
        lost = [link for link, coordinator in self.coordinators.items()
                if link not in held_now or coordinator.plan != plans[link]]
        await self._stop_coordinators(lost)
        for link in sorted(held_now - set(self.coordinators)):
            coordinator = LinkCoordinator(plans[link], self)
            self.coordinators[link] = coordinator
            coordinator.start(drain=drain)
            log.info("%s: serving %s on %s", self.holder, link, plans[link].url)

    async def _stop_coordinators(self, links: Sequence[str]) -> None:
        stopping = [self.coordinators.pop(link) for link in links if link in self.coordinators]
        await asyncio.gather(*(coordinator.stop() for coordinator in stopping))
        for coordinator in stopping:
            log.info("%s: no longer serving %s", self.holder, coordinator.plan.link)

    # -- wake-ups ------------------------------------------------------------------------

    async def _follow_events(self, database_url: str) -> None:
        async with EventListener(database_url) as listener:
            self.listener = listener
            while True:
                stream = listener.subscribe({"command.changed"})
                try:
                    async for event in stream:
                        if isinstance(event.payload, dict) and event.payload.get("state") == "queued":
                            self.wake_all()
                except ListenerLaggedError:
                    self.wake_all()  # whatever it missed, the buses look for themselves

    def wake_all(self) -> None:
        for coordinator in self.coordinators.values():
            coordinator.wake.set()

    # -- results -------------------------------------------------------------------------

    async def record(self, command: RemoteCommand, meter: MeterOnBus | None, outcome: Outcome) -> None:
        """The command's result, the reading it brought or the failure to hear the meter,
        in one transaction. A command taken over meanwhile (its lease lost, its time
        limit passed) still leaves what the meter said or did not say."""
        at = self.clock()
        try:
            async with transaction(self.sessions) as session:
                await self._observe(session, command.meter_id if meter else None, outcome, at)
                await remote.finish_command(
                    session, command_id=command.id or 0, holder=self.holder, succeeded=outcome.succeeded, now=at,
                    reply=outcome.reply,
                    failure_kind=RecordedFailure(outcome.failure_kind.value) if outcome.failure_kind else None,
                    failure_reason=outcome.failure_reason, retry=outcome.retry)
        except CommandNotHeld:
            log.warning("%s: command %s was taken from it before it finished", self.holder, command.id)
            async with transaction(self.sessions) as session:
                await self._observe(session, command.meter_id if meter else None, outcome, at)
        if outcome.succeeded:
            log.debug("command %s (%s) succeeded", command.id, command.kind)
        else:
            log.info("command %s (%s) of meter %s: %s", command.id, command.kind, command.meter_id,
                     outcome.failure_reason)

    async def _observe(self, session: AsyncSession, meter_id: int | None, outcome: Outcome, at: datetime) -> None:
        if meter_id is None:
            return
        if outcome.reading is not None:
            await ingest_readings(session, readings=[reading_of(meter_id, outcome.reading, at)], source=SOURCE, now=at,
                                  tz=self.timezone)
        elif outcome.communication_failed:
            await record_read_failures(session, meter_ids=[meter_id], failed_at=at,
                                       reason=outcome.failure_reason or str(outcome.failure_kind))
            await evaluate_alarms(session, actor=_ALARM_ACTOR, now=at, tz=self.timezone, meter_ids=[meter_id])


def reading_of(meter_id: int, data: cjt188.MeterData, read_at: datetime) -> ReadingIn:
    """A ``901F`` answer as an actual reading at the moment it arrived (the meter's own
    clock says nothing of its zone and drifts: it is kept in the command's reply)."""
    total = data.total.in_m3()
    assert total is not None  # acquisition.commands refuses a 901F whose register is not a volume
    return ReadingIn(meter_id=meter_id, read_at=read_at.replace(microsecond=0), total_m3=total,
                     valve_state=_VALVE_STATES[data.status.valve], status_bits=data.status.bits)


# --------------------------------------------------------------------------- CLI


acquire_app = typer.Typer(help="The acquisition worker (采集): meters on serial buses and DTUs.")


@acquire_app.callback(invoke_without_command=True, subcommand_metavar="")
def acquire(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="Carry out what is queued on the links it can lease, then exit.")] = False,
    max_links: Annotated[int | None, typer.Option("--max-links", min=1, max=1024,
                                                  help="Serve at most this many links (default SHUIWU_ACQUIRE_MAX_LINKS, 64).")] = None,
) -> None:
    """Run the acquisition worker: lease serial and DTU concentrators, carry out their
    queued commands (read now, patrol reads, valves, clocks, purchases), ingest the
    readings. Stops cleanly on SIGTERM or Ctrl-C, releasing its leases."""
    from backend.domain import read_settings
    from backend.settings import SettingsError

    host = ctx.obj
    try:
        config = read_settings(AcquireSettings)
    except SettingsError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    if host is not None:
        settings, url = host.settings(), host.migrated_database()
    else:  # run as `python -m acquisition.worker`
        from backend.db import migrate, resolve_database_url
        from backend.settings import load_settings

        try:
            settings = load_settings()
        except SettingsError as error:
            typer.echo(str(error), err=True)
            raise typer.Exit(2) from None
        from backend.observability import configure_logging

        configure_logging(settings.log_level, as_json=settings.log_json)
        url = resolve_database_url(settings.database_url, settings.data_dir)
        migrate(url)
    asyncio.run(run_acquire(url, config=config, timezone=settings.timezone, once=once, max_links=max_links))


async def run_acquire(url: str, *, config: AcquireSettings, timezone: str, once: bool = False,
                      max_links: int | None = None, **worker_options: Any) -> None:
    """The worker of ``shuiwu acquire`` on its own engine, stopped by SIGTERM / SIGINT."""
    from backend.db import create_engine, session_factory

    engine = create_engine(url, pool_size=4, max_overflow=16)
    worker = AcquisitionWorker(sessions=session_factory(engine), config=config, timezone=timezone, database_url=url,
                               max_links=max_links, **worker_options)
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, worker.stop)
    log.info("%s: acquisition worker starting (at most %d links)", worker.holder, worker.max_links)
    try:
        await worker.run(once=once)
    finally:
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signal_number)
        await engine.dispose()


if __name__ == "__main__":
    acquire_app()
