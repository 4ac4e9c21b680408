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
coordinator claims queued commands of its link, up to ``claim_ahead`` (8) at a time
(``claim_commands``: only links this holder leases, SKIP LOCKED, so two workers never
claim one command), and carries them out one at a time (:mod:`acquisition.commands`).
The database work overlaps the bus's: while a command is on the wire, the bus claims its
next commands when its hand is empty, and the results go to one of the worker's
:class:`Recorder` s (``recorders``, 4, each for a fixed share of the buses), which records
its buses' results in batches (one transaction for whatever arrived while the last one
ran: group commit), first in first out, so a meter's results land in the order they were
had; the recorders' transactions run side by side, so one batch's alarm evaluation does
not hold up every bus. A bus runs at most ``claim_ahead`` results
ahead of the database. A bus that stops (SIGTERM, a lost lease) finishes the exchange in
hand, waits for its results to be recorded and gives the commands it claimed but never
started back to the queue, their attempts unspent (``give_back_commands``); a killed
worker's claimed commands go back when its lease is taken over (the patrol runs they
belong to are then ``interrupted`` until the next claim resumes them,
``backend.remote.patrols``). Recording a result is ``finish_command`` (succeeded, or
failed with its kind; timeouts, bad frames and a lost link go back to the queue while
attempts remain; the succeeded ones of a batch together, ``finish_succeeded_commands``),
the reading of a ``901F`` answer through ``ingest_readings`` (quality actual, the valve
state and status bits; an abnormal valve is ``unknown``; one ingest per batch), and a
meter that was not heard through ``record_read_failures`` plus the alarm rules for it,
so 通讯失败 opens without waiting for the periodic sweep. Nothing that failed is stored
as a reading. A bug or a database error in one command is logged and the bus goes on
after a pause; a batch that cannot be recorded is recorded again result by result: the
worker does not crash.

**Wake-ups.** A ``command.changed`` event whose state is ``queued`` (LISTEN on the
events channel, ``backend.events.listener``) wakes the buses of the links it names at
once; an idle bus also looks for work every poll interval (1 s), or every
``listening_poll_interval_s`` (10 s) while the channel is followed and connected.

**Time limits.** A command claimed ahead may reach its deadline before its turn on the
bus; the worker does not send it then and records it ``timed_out``, as it does a command
whose meter kept it past its deadline.

Patrol runs' reads are ``read_now`` commands of their runs (``backend.remote.patrols``),
so they travel the same path.

**NB-IoT.** With ``SHUIWU_MQTT_URL`` set, the broker is one more link (``mqtt``), leased
first: its holder runs an :class:`~acquisition.mqtt.MqttCoordinator` instead of a bus
(subscription, uplinks, commands waiting in ``pending_delivery``; see that module).
``--once`` leaves it alone: NB-IoT meters answer at their own pace.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import secrets
import signal
import socket
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from acquisition.commands import CommandOrder, Outcome, carry_out
from acquisition.coordinator import Coordinator
from acquisition.links import LinkPlan, MeterOnBus, links_held_by_others, meters_on_bus, servable_links
from acquisition.mqtt import MqttCoordinator, MqttPlan
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
from backend.remote.models import CommandKind, RemoteCommand
from backend.remote.models import FailureKind as RecordedFailure

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


Claimed = tuple[RemoteCommand, MeterOnBus | None]


class LinkCoordinator(Coordinator):
    """One bus: its port, its commands one at a time, its reconnect pauses (module
    docstring). Stopping it finishes the command in hand, records it, gives back the next
    ones unstarted and closes the port."""

    def __init__(self, plan: LinkPlan, worker: AcquisitionWorker) -> None:
        super().__init__()
        self.plan = plan
        self.worker = worker
        self.link = AsyncLink.open_url(plan.url, line=plan.line, timing=worker.timing)
        self.wake = asyncio.Event()
        self.commands_carried_out = 0
        # The next commands, claimed while the bus carried out the ones before them.
        self._next: collections.deque[Claimed] = collections.deque()
        # Results on their way to the database (the worker's recorder, first in first out).
        self._recording: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def task_name(self) -> str:
        return f"bus {self.plan.link}"

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
                    await wait_any(self.wake, self._stopping, seconds=self.worker.idle_poll_s)
                elif outcome.failure_kind is FailureKind.link_down:
                    delay = backoff.next_delay()
                    log.warning("%s: %s is down (%s); next try in %.1f s", self.plan.link, self.plan.url,
                                outcome.failure_reason, delay)
                    await wait_any(self._stopping, seconds=delay)
                else:
                    backoff.reset()
        finally:
            await self._settle()
            await self.link.aclose()

    async def _claim(self) -> None:
        """Claim the oldest queued commands of this link (up to ``claim_ahead``), with what
        their meters need on the wire, into the bus's hand."""
        worker = self.worker
        async with transaction(worker.sessions) as session:
            claimed = await remote.claim_commands(session, holder=worker.holder, link_ids=[self.plan.link],
                                                  limit=worker.config.claim_ahead, now=worker.clock())
            meters = await meters_on_bus(session, [command.meter_id for command in claimed])
        self._next.extend((command, meters.get(command.meter_id)) for command in claimed)

    async def _next_command(self) -> Outcome | None:
        """Carry out one command of this link and hand its result to the database; None
        when none is queued. The command was claimed while the bus carried out the one
        before it, and while this one is on the wire the last result is recorded and the
        next command claimed: the bus does not wait for the database between meters."""
        worker = self.worker
        if not self._next:
            await self._claim()
        if not self._next:
            await self._recorded()
            return None
        command, meter = self._next.popleft()
        now = worker.clock()
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
            exchange = asyncio.create_task(carry_out(
                self.link, order, meter, response_timeout=worker.config.response_timeout_s,
                retries=worker.config.exchange_retries, now_local=now.astimezone(worker.tz)))
            try:
                await self._meanwhile()
            finally:
                outcome = await exchange
        while self._recording and self._recording[0].done():
            self._recording.popleft()
        if len(self._recording) >= worker.config.claim_ahead:  # the database is far behind: let it catch up
            await self._recording.popleft()
        self._recording.append(worker.recorder_of(self.plan).submit(command, meter, outcome))
        self.commands_carried_out += 1
        return outcome

    async def _meanwhile(self) -> None:
        """While the bus is busy: claim the next commands when its hand is empty (not when
        stopping: they would only be given back). Failures are logged, never raised: the
        exchange in flight must still be recorded."""
        if not self._next and not self._stopping.is_set():
            try:
                await self._claim()
            except Exception:
                log.exception("%s: could not claim the next commands", self.plan.link)

    async def _recorded(self) -> None:
        """Wait until this bus's results have reached the database (the recorder logs a
        result it could not record)."""
        while self._recording:
            await self._recording.popleft()

    async def _settle(self) -> None:
        """At the end: the last result recorded, the command claimed but never started
        given back to the queue unspent (``give_back_commands``) for whoever serves the
        link next."""
        await self._recorded()
        command_ids = [command.id or 0 for command, _ in self._next]
        self._next.clear()
        if not command_ids:
            return
        try:
            async with transaction(self.worker.sessions) as session:
                await remote.give_back_commands(session, holder=self.worker.holder, command_ids=command_ids,
                                                now=self.worker.clock())
        except Exception:
            log.exception("%s: could not give commands %s back; they are requeued when the lease expires",
                          self.plan.link, command_ids)


@dataclass
class _Result:
    command: RemoteCommand
    meter: MeterOnBus | None
    outcome: Outcome
    recorded: asyncio.Future[None]


class Recorder:
    """Every bus's results, recorded in batches (group commit): while one batch's
    transaction runs, the results that arrive wait and go together in the next, so a
    worker with many buses pays for a transaction per batch rather than per meter. A
    batch is: one ``ingest_readings`` for all its readings, the failures to hear meters
    with their alarm rules, the succeeded commands finished together
    (``finish_succeeded_commands``) and the rest one by one (``finish_command``). A batch
    that fails as a whole is recorded again result by result, so one bad result costs
    only itself. Each result's future resolves when it is recorded (or its recording
    failed, logged): a bus waits for its last result before handing in the next, so a
    meter's results land in order."""

    def __init__(self, worker: AcquisitionWorker, *, batch_max: int = 256) -> None:
        self.worker = worker
        self.batch_max = batch_max
        self.batches = 0
        self._pending: list[_Result] = []
        self._task: asyncio.Task[None] | None = None

    def submit(self, command: RemoteCommand, meter: MeterOnBus | None, outcome: Outcome) -> asyncio.Future[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="acquire recorder")
        result = _Result(command, meter, outcome, asyncio.get_running_loop().create_future())
        self._pending.append(result)
        return result.recorded

    async def _run(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:self.batch_max], self._pending[self.batch_max:]
            try:
                await self._record(batch)
            finally:
                for result in batch:
                    if not result.recorded.done():
                        result.recorded.set_result(None)

    async def _record(self, batch: list[_Result]) -> None:
        worker = self.worker
        try:
            await worker.record_many(batch)
            self.batches += 1
            return
        except Exception:
            if len(batch) == 1:
                log.exception("%s: command %s's result could not be recorded", worker.holder, batch[0].command.id)
                return
            log.exception("%s: a batch of %d results could not be recorded; recording them one by one",
                          worker.holder, len(batch))
        for result in batch:
            try:
                await worker.record_many([result])
            except Exception:
                log.exception("%s: command %s's result could not be recorded", worker.holder, result.command.id)

    async def drain(self) -> None:
        """Wait until everything handed in is recorded."""
        if self._task is not None:
            await asyncio.shield(self._task)


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
        mqtt_url: str | None = None,
        clock: Clock = utcnow,
        links: Collection[str] | None = None,
    ) -> None:
        """``links``: serve only these links (``concentrator:<id>``, ``mqtt``; ``demo run``
        serves its simulated bus, not the demo's unreachable ones); None: every serial and
        DTU link, and the MQTT broker when ``mqtt_url`` is given."""
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
        self.mqtt_url = mqtt_url
        self.coordinators: dict[str, LinkCoordinator | MqttCoordinator] = {}
        # Several, each serving a fixed share of the buses (a bus's results stay in order):
        # one batch's alarm evaluation need not hold up every bus.
        self.recorders = [Recorder(self) for _ in range(config.recorders)]
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
        await asyncio.gather(*(recorder.drain() for recorder in self.recorders))
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
                plans: dict[str, LinkPlan | MqttPlan] = {}
                if self.mqtt_url and not drain:
                    plans[remote.MQTT_LINK] = MqttPlan(remote.MQTT_LINK, self.mqtt_url, self.config.mqtt_topic_filter,
                                                       self.config.mqtt_share_group)
                plans.update((plan.link, plan) for plan in await servable_links(session))
                if self.only_links is not None:
                    plans = {link: plan for link, plan in plans.items() if link in self.only_links}
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
            plan = plans[link]
            coordinator = MqttCoordinator(plan, self) if isinstance(plan, MqttPlan) else LinkCoordinator(plan, self)
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
                            self.wake(event.payload.get("links"))
                except ListenerLaggedError:
                    self.wake_all()  # whatever it missed, the buses look for themselves

    def recorder_of(self, plan: LinkPlan) -> Recorder:
        return self.recorders[plan.concentrator_id % len(self.recorders)]

    @property
    def idle_poll_s(self) -> float:
        """How long an idle bus waits for a wake-up before it looks for work itself:
        longer while the events channel is followed and connected."""
        listener = self.listener
        if listener is not None and listener.connected:
            return max(self.config.poll_interval_s, self.config.listening_poll_interval_s)
        return self.config.poll_interval_s

    def wake_all(self) -> None:
        for coordinator in self.coordinators.values():
            coordinator.wake.set()

    def wake(self, links: object) -> None:
        """Wake the buses of ``links`` (a ``command.changed`` payload's); every bus when
        the payload names none (an event stored before it carried them)."""
        if not isinstance(links, list) or not links:
            self.wake_all()
            return
        for link in links:
            coordinator = self.coordinators.get(link) if isinstance(link, str) else None
            if coordinator is not None:
                coordinator.wake.set()

    # -- results -------------------------------------------------------------------------

    async def record(self, command: RemoteCommand, meter: MeterOnBus | None, outcome: Outcome) -> None:
        """One result recorded at once, in its own transaction (the MQTT link's deliveries,
        one device at a time, which no batch would gather)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.record_many([_Result(command, meter, outcome, done)])

    async def record_many(self, results: Sequence[_Result]) -> None:
        """Several results in one transaction (:class:`Recorder`): the readings they
        brought and the meters not heard, then each command's end. A command taken from
        this worker meanwhile still leaves what its meter said or did not say."""
        at = self.clock()
        async with transaction(self.sessions) as session:
            await self._observe_many(session, [(r.command.meter_id, r.outcome) for r in results if r.meter is not None],
                                     at)
            succeeded = {r.command.id or 0: r.outcome.reply for r in results
                         if r.outcome.succeeded and r.command.kind is not CommandKind.set_params}
            finished = set(await remote.finish_succeeded_commands(session, holder=self.holder, replies=succeeded,
                                                                   now=at))
            for command_id in sorted(set(succeeded) - finished):
                log.warning("%s: command %s was taken from it before it finished", self.holder, command_id)
            for result in results:
                if (result.command.id or 0) in succeeded:
                    continue
                outcome = result.outcome
                try:
                    await remote.finish_command(
                        session, command_id=result.command.id or 0, holder=self.holder, succeeded=outcome.succeeded,
                        now=at, reply=outcome.reply,
                        failure_kind=RecordedFailure(outcome.failure_kind.value) if outcome.failure_kind else None,
                        failure_reason=outcome.failure_reason, retry=outcome.retry)
                except CommandNotHeld:
                    log.warning("%s: command %s was taken from it before it finished", self.holder, result.command.id)
        for result in results:
            command, outcome = result.command, result.outcome
            if outcome.succeeded:
                log.debug("command %s (%s) succeeded", command.id, command.kind)
            else:
                log.info("command %s (%s) of meter %s: %s", command.id, command.kind, command.meter_id,
                         outcome.failure_reason)

    async def _observe_many(self, session: AsyncSession, heard: Sequence[tuple[int, Outcome]], at: datetime) -> None:
        """The readings of ``heard`` (meter, outcome) in one ingest, the meters not heard
        counted and their alarm rules evaluated."""
        readings = [reading_of(meter_id, outcome.reading, at) for meter_id, outcome in heard
                    if outcome.reading is not None]
        if readings:
            await ingest_readings(session, readings=readings, source=SOURCE, now=at, tz=self.timezone)
        failed: dict[str, list[int]] = {}
        for meter_id, outcome in heard:
            if outcome.reading is None and outcome.communication_failed:
                failed.setdefault(outcome.failure_reason or str(outcome.failure_kind), []).append(meter_id)
        for reason, meter_ids in failed.items():
            await record_read_failures(session, meter_ids=meter_ids, failed_at=at, reason=reason)
        if failed:
            await evaluate_alarms(session, actor=_ALARM_ACTOR, now=at, tz=self.timezone,
                                  meter_ids=sorted({m for ids in failed.values() for m in ids}))


def reading_of(meter_id: int, data: cjt188.MeterData, read_at: datetime) -> ReadingIn:
    """A ``901F`` answer as an actual reading at the moment it arrived (the meter's own
    clock says nothing of its zone and drifts: it is kept in the command's reply)."""
    total = data.total.in_m3()
    assert total is not None  # acquisition.commands refuses a 901F whose register is not a volume
    return ReadingIn(meter_id=meter_id, read_at=read_at.replace(microsecond=0), total_m3=total,
                     valve_state=_VALVE_STATES[data.status.valve], status_bits=data.status.bits)


# --------------------------------------------------------------------------- CLI


acquire_app = typer.Typer(help="The acquisition worker (采集): meters on serial buses and DTUs, NB-IoT meters over MQTT.")


@acquire_app.callback(invoke_without_command=True, subcommand_metavar="")
def acquire(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="Carry out what is queued on the links it can lease, then exit.")] = False,
    max_links: Annotated[int | None, typer.Option("--max-links", min=1, max=1024,
                                                  help="Serve at most this many links (default SHUIWU_ACQUIRE_MAX_LINKS, 64).")] = None,
) -> None:
    """Run the acquisition worker: lease serial and DTU concentrators, carry out their
    queued commands (read now, patrol reads, valves, clocks, purchases), ingest the
    readings; with SHUIWU_MQTT_URL, also lease the broker and serve NB-IoT meters
    (not with --once). Stops cleanly on SIGTERM or Ctrl-C, releasing its leases."""
    from backend.domain import read_settings
    from backend.settings import SettingsError

    host = ctx.obj
    try:
        config = read_settings(AcquireSettings)
    except SettingsError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    if host is not None:
        settings = host.settings()
    else:  # run as `python -m acquisition.worker`
        from backend.settings import load_settings

        try:
            settings = load_settings()
        except SettingsError as error:
            typer.echo(str(error), err=True)
            raise typer.Exit(2) from None
        from backend.observability import configure_logging

        configure_logging(settings.log_level, as_json=settings.log_json)
    if settings.mqtt_url:  # refused before anything is migrated or started
        from acquisition.mqtt import broker_address

        try:
            broker_address(settings.mqtt_url)
        except ValueError as error:
            typer.echo(f"SHUIWU_MQTT_URL: {error}", err=True)
            raise typer.Exit(2) from None
    if host is not None:
        url = host.migrated_database()
    else:
        from backend.db import migrate, resolve_database_url

        url = resolve_database_url(settings.database_url, settings.data_dir)
        migrate(url)
    asyncio.run(run_acquire(url, config=config, timezone=settings.timezone, once=once, max_links=max_links,
                            mqtt_url=settings.mqtt_url))


def worker_engine(url: str, max_links: int) -> AsyncEngine:
    """The worker's engine: a bus holds at most one connection at a time (its result,
    then its next claim), so the pool grows with the buses served, up to 64 beyond the
    lease round's and the spare few."""
    from backend.db import create_engine

    return create_engine(url, pool_size=4, max_overflow=max(16, min(max_links, 64)))


async def run_acquire(url: str, *, config: AcquireSettings, timezone: str, once: bool = False,
                      max_links: int | None = None, **worker_options: Any) -> None:
    """The worker of ``shuiwu acquire`` on its own engine, stopped by SIGTERM / SIGINT."""
    from backend.db import session_factory

    engine = worker_engine(url, max_links or config.max_links)
    worker = AcquisitionWorker(sessions=session_factory(engine), config=config, timezone=timezone, database_url=url,
                               max_links=max_links, **worker_options)
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, worker.stop)
    log.info("%s: acquisition worker starting (at most %d links%s)", worker.holder, worker.max_links,
             ", with the MQTT broker" if worker.mqtt_url and not once else "")
    try:
        await worker.run(once=once)
    finally:
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signal_number)
        await engine.dispose()


if __name__ == "__main__":
    acquire_app()
