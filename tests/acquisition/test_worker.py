"""The acquisition worker end to end: simulated meters on ptys (a fast baud rate), real
PostgreSQL with commits, commands queued as the desk queues them, and workers that lease
the buses, carry the commands out and record what the meters said."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from acquisition.settings import AcquireSettings
from acquisition.simulator import Fault, SimulatorProcess
from acquisition.worker import AcquisitionWorker, run_acquire
from backend.archives.models import Concentrator, ConnectionKind, Meter, MeterModel, MeterStatus, MeterType
from backend.auth.system import system_actor
from backend.clock import utcnow
from backend.db import transaction
from backend.remote import patrols
from backend.remote import service as remote
from backend.remote.models import FINISHED_STATES, CommandKind, CommandState, FailureKind, RemoteCommand
from tests.factories import make_area_tree, unique

BAUD = 115200
BUSES = 4
METERS_PER_BUS = 2
GHOST_ADDRESS = "99999999999999"  # on bus 0, where no meter answers to it
OPERATOR = system_actor({"remote:read", "remote:control", "remote:params", "remote:purchase"})
# Fast and short: the simulator is another process on a shared 2-core machine.
CONFIG = AcquireSettings(lease_ttl_s=1.0, renew_interval_s=0.25, poll_interval_s=0.1, response_timeout_s=0.1,
                         inter_byte_timeout_s=0.1, exchange_retries=1, reconnect_initial_s=0.1, reconnect_max_s=0.4,
                         listen=False)


@dataclass
class Bus:
    concentrator_id: int
    link: str
    meters: dict[str, int]  # address -> meter id


@dataclass
class Field:
    buses: list[Bus]
    ghost_meter_id: int

    @property
    def links(self) -> list[str]:
        return [bus.link for bus in self.buses]

    @property
    def meters(self) -> dict[str, int]:
        """Every bus's meters, address -> meter id."""
        return {address: meter_id for bus in self.buses for address, meter_id in bus.meters.items()}


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(buses=BUSES, meters=METERS_PER_BUS, baud=BAUD, turnaround=0.002) as running:
        yield running


@pytest.fixture(scope="module")
async def field(committed_sessions: async_sessionmaker[AsyncSession], simulator: SimulatorProcess) -> Field:
    """A serial concentrator at each simulated bus's pty, a valve meter for each simulated
    meter, and a meter on bus 0 that does not exist on the wire."""
    async with transaction(committed_sessions) as session:
        tree = await make_area_tree(session)
        area_id = tree.east_community.id or 0
        model = MeterModel(vendor=unique("厂家"), name=unique("型号"), caliber=20, has_valve=True)
        session.add(model)
        await session.flush()
        buses = []
        for index, url in enumerate(simulator.urls):
            concentrator = Concentrator(name=f"总线{index}", region_code="3301", terminal_address=50_000 + index,
                                        connection=ConnectionKind.serial, serial_url=url, baudrate=BAUD, parity="E",
                                        area_id=area_id)
            session.add(concentrator)
            await session.flush()
            meters = {}
            for address in simulator.addresses[index]:
                meters[address] = await _meter(session, address, model, concentrator, area_id)
            buses.append(Bus(concentrator.id or 0, remote.concentrator_link(concentrator.id or 0), meters))
        ghost = await _meter(session, GHOST_ADDRESS, model, await session.get(Concentrator, buses[0].concentrator_id),
                             area_id)
    return Field(buses, ghost)


async def _meter(session: AsyncSession, address: str, model: MeterModel, concentrator: Concentrator | None,
                 area_id: int) -> int:
    meter = Meter(name=f"水表{address[-4:]}", code=unique("WK"), address=address, meter_type=MeterType.cold_water,
                  model_id=model.id, area_id=area_id, status=MeterStatus.installed,
                  concentrator_id=concentrator.id if concentrator else None)
    session.add(meter)
    await session.flush()
    return meter.id or 0


@contextlib.asynccontextmanager
async def running(sessions: async_sessionmaker[AsyncSession], *, holder: str, max_links: int = BUSES,
                  wait_for_links: int | None = None, config: AcquireSettings = CONFIG,
                  database_url: str | None = None) -> AsyncIterator[AcquisitionWorker]:
    """A worker running in the background; stopped (and its leases released) at the end."""
    worker = AcquisitionWorker(sessions=sessions, config=config, timezone="Asia/Shanghai", holder=holder,
                               max_links=max_links, database_url=database_url)
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: len(worker.held_links) >= (max_links if wait_for_links is None else wait_for_links))
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=10)


async def until(condition: Any, *, within: float = 8.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


@pytest.fixture(autouse=True)
def no_faults_left(simulator: SimulatorProcess) -> None:
    simulator.clear_faults()


async def queue(sessions: async_sessionmaker[AsyncSession], meter_id: int, kind: CommandKind,
                params: dict[str, Any] | None = None) -> int:
    async with transaction(sessions) as session:
        command = await remote.queue_command(session, target=meter_id, kind=kind, params=params or {},
                                             issued_by=OPERATOR, now=utcnow())
        return command.id or 0


async def finished(sessions: async_sessionmaker[AsyncSession], *command_ids: int,
                   within: float = 8.0) -> list[RemoteCommand]:
    deadline = time.monotonic() + within
    while True:
        async with sessions() as session:
            commands = await remote.commands_by_id(session, command_ids)
        if all(command.state in FINISHED_STATES for command in commands):
            return commands
        assert time.monotonic() < deadline, f"still unfinished: {[(c.id, c.state) for c in commands]}"
        await asyncio.sleep(0.05)


async def rows(sessions: async_sessionmaker[AsyncSession], statement: str, **params: Any) -> list[Any]:
    async with sessions() as session:
        return list((await session.execute(text(statement), params)).all())


async def test_a_read_now_is_read_ingested_and_succeeds(committed_sessions: async_sessionmaker[AsyncSession],
                                                        field: Field) -> None:
    address, meter_id = next(iter(field.buses[1].meters.items()))
    async with running(committed_sessions, holder="test:read"):
        command_id = await queue(committed_sessions, meter_id, CommandKind.read_now)
        [command] = await finished(committed_sessions, command_id)

    assert (command.state, command.attempts, command.claimed_by) == (CommandState.succeeded, 1, "test:read")
    assert command.reply is not None
    assert (command.reply["address"], command.reply["valve"]) == (address, "open")
    stored = await rows(committed_sessions, "SELECT total_m3, quality, valve_state, status_bits, source FROM readings "
                                            "WHERE meter_id = :meter_id", meter_id=meter_id)
    assert stored == [(Decimal(command.reply["total_m3"]), "actual", "open", 0, "acquisition")]


async def test_a_valve_close_closes_the_simulated_valve(committed_sessions: async_sessionmaker[AsyncSession],
                                                       field: Field, simulator: SimulatorProcess) -> None:
    address, meter_id = next(iter(field.buses[2].meters.items()))
    async with running(committed_sessions, holder="test:valve"):
        [closed] = await finished(committed_sessions, await queue(committed_sessions, meter_id, CommandKind.valve_close))
        valve_after_close = simulator.meter(address)["valve_open"]
        [opened] = await finished(committed_sessions, await queue(committed_sessions, meter_id, CommandKind.valve_open))

    assert (closed.state, closed.reply) == (CommandState.succeeded, {"valve": "closed", "battery_low": False})
    assert valve_after_close is False
    assert opened.state is CommandState.succeeded
    assert simulator.meter(address)["valve_open"] is True


async def test_a_dropped_reply_is_asked_again(committed_sessions: async_sessionmaker[AsyncSession], field: Field,
                                             simulator: SimulatorProcess) -> None:
    address, meter_id = list(field.buses[1].meters.items())[1]
    simulator.inject(address, Fault.drop, times=1)
    async with running(committed_sessions, holder="test:drop"):
        [command] = await finished(committed_sessions, await queue(committed_sessions, meter_id, CommandKind.read_now))

    assert (command.state, command.attempts) == (CommandState.succeeded, 1)
    assert simulator.meter(address)["answered"] >= 2


async def test_a_valve_command_whose_reply_was_lost_is_not_sent_twice(
        committed_sessions: async_sessionmaker[AsyncSession], field: Field, simulator: SimulatorProcess) -> None:
    address, meter_id = next(iter(field.buses[3].meters.items()))
    answered_before = simulator.meter(address)["answered"]
    simulator.inject(address, Fault.drop, times=1)
    async with running(committed_sessions, holder="test:valve-retry"):
        [command] = await finished(committed_sessions, await queue(committed_sessions, meter_id, CommandKind.valve_close))
        simulator.set_meter(address, valve_open=True)

    # The valve request went out once (its reply lost), the second claim read the valve
    # (closed) and was done: two requests on the wire, not three.
    assert (command.state, command.attempts) == (CommandState.succeeded, 2)
    assert command.reply is not None and command.reply["already"] is True
    assert simulator.meter(address)["answered"] - answered_before == 2


async def test_a_meter_that_never_answers_fails_as_a_timeout_and_opens_the_communication_alarm(
        committed_sessions: async_sessionmaker[AsyncSession], field: Field) -> None:
    async with running(committed_sessions, holder="test:ghost"):
        [command] = await finished(committed_sessions,
                                   await queue(committed_sessions, field.ghost_meter_id, CommandKind.read_now))

    assert (command.state, command.failure_kind, command.attempts) == (CommandState.failed, FailureKind.timeout, 3)
    assert await rows(committed_sessions, "SELECT consecutive_failures FROM meter_link_status WHERE meter_id = :id",
                      id=field.ghost_meter_id) == [(3,)]
    assert await rows(committed_sessions, "SELECT status FROM alarms WHERE subject_kind = 'meter' AND subject_id = :id "
                                           "AND kind = 'communication_failure'", id=field.ghost_meter_id) == [("open",)]
    assert await rows(committed_sessions, "SELECT 1 FROM readings WHERE meter_id = :id", id=field.ghost_meter_id) == []


async def test_two_workers_share_the_buses_and_never_claim_one_command(
        committed_sessions: async_sessionmaker[AsyncSession], field: Field) -> None:
    async with (running(committed_sessions, holder="test:a", max_links=2) as first,
                running(committed_sessions, holder="test:b", max_links=2) as second):
        ids = [await queue(committed_sessions, meter_id, CommandKind.read_now)
               for _ in range(2) for bus in field.buses for meter_id in bus.meters.values()]
        commands = await finished(committed_sessions, *ids)
        held = {"test:a": set(first.held_links), "test:b": set(second.held_links)}

    assert held["test:a"].isdisjoint(held["test:b"])
    assert held["test:a"] | held["test:b"] == set(field.links)
    assert all((c.state, c.attempts) == (CommandState.succeeded, 1) for c in commands)
    assert all(c.link in held[c.claimed_by or ""] for c in commands)


async def test_a_stopped_worker_releases_its_leases(committed_sessions: async_sessionmaker[AsyncSession],
                                                   field: Field) -> None:
    async with running(committed_sessions, holder="test:leaving"):
        held_while_running = await rows(committed_sessions, "SELECT link FROM link_leases WHERE holder = 'test:leaving'")

    assert sorted(link for (link,) in held_while_running) == sorted(field.links)
    assert await rows(committed_sessions, "SELECT link FROM link_leases WHERE holder = 'test:leaving'") == []


async def test_an_expired_lease_of_a_killed_worker_is_taken_over_and_its_command_carried_out(
        committed_sessions: async_sessionmaker[AsyncSession], field: Field) -> None:
    bus = field.buses[0]
    meter_id = next(iter(bus.meters.values()))
    command_id = await queue(committed_sessions, meter_id, CommandKind.read_now)
    # A worker that claimed the command and was killed: its lease runs out in a second.
    async with transaction(committed_sessions) as session:
        now = utcnow()
        await remote.take_leases(session, holder="test:killed", links=[bus.link], ttl=timedelta(seconds=1), now=now)
        [claimed] = await remote.claim_commands(session, holder="test:killed", link_ids=[bus.link], limit=1, now=now)
    assert claimed.id == command_id

    async with running(committed_sessions, holder="test:heir", wait_for_links=BUSES - 1) as heir:
        assert bus.link not in heir.held_links  # not while the killed worker's lease lasts
        [command] = await finished(committed_sessions, command_id)
        took_over = bus.link in heir.held_links

    assert took_over
    assert (command.state, command.attempts, command.claimed_by) == (CommandState.succeeded, 2, "test:heir")


async def test_a_vanished_port_fails_its_commands_as_link_down_and_the_worker_carries_on(
        committed_sessions: async_sessionmaker[AsyncSession], field: Field, simulator: SimulatorProcess) -> None:
    lost_bus, other_bus = field.buses[3], field.buses[1]
    lost_meter = list(lost_bus.meters.values())[1]
    simulator.vanish(bus=3)
    async with running(committed_sessions, holder="test:vanish") as worker:
        [lost] = await finished(committed_sessions, await queue(committed_sessions, lost_meter, CommandKind.read_now))
        [other] = await finished(committed_sessions, await queue(committed_sessions, next(iter(other_bus.meters.values())),
                                                                 CommandKind.read_now))
        still_serving = worker.held_links

    assert (lost.state, lost.failure_kind) == (CommandState.failed, FailureKind.link_down)
    assert other.state is CommandState.succeeded
    assert still_serving == sorted(field.links)
    assert await rows(committed_sessions, "SELECT consecutive_failures > 0 FROM meter_link_status WHERE meter_id = :id",
                      id=lost_meter) == [(True,)]


async def test_acquire_once_carries_out_what_is_queued_and_leaves_no_lease(
        committed_sessions: async_sessionmaker[AsyncSession], database_url: str, field: Field) -> None:
    bus = field.buses[2]
    ids = [await queue(committed_sessions, meter_id, CommandKind.read_now) for meter_id in bus.meters.values()]

    await run_acquire(database_url, config=CONFIG, timezone="Asia/Shanghai", once=True, holder="test:once")

    commands = await finished(committed_sessions, *ids, within=0)
    assert [(c.state, c.claimed_by) for c in commands] == [(CommandState.succeeded, "test:once")] * len(ids)
    assert await rows(committed_sessions, "SELECT link FROM link_leases WHERE holder = 'test:once'") == []


async def test_a_queued_command_wakes_an_idle_bus_at_once(committed_sessions: async_sessionmaker[AsyncSession],
                                                          database_url: str, field: Field) -> None:
    meter_id = next(iter(field.buses[1].meters.values()))
    listening = CONFIG.model_copy(update={"listen": True, "poll_interval_s": 30.0})
    async with running(committed_sessions, holder="test:listen", config=listening, database_url=database_url) as worker:
        await until(lambda: worker.listener is not None and worker.listener.connected)
        await asyncio.sleep(0.2)  # every bus has looked once and waits for its next poll, 30 s away
        [command] = await finished(committed_sessions, await queue(committed_sessions, meter_id, CommandKind.read_now),
                                   within=5)

    assert command.state is CommandState.succeeded


async def test_a_patrol_runs_reads_are_carried_out_and_counted(committed_sessions: async_sessionmaker[AsyncSession],
                                                               field: Field) -> None:
    now = utcnow()
    async with transaction(committed_sessions) as session:
        await patrols.create_patrol_task(session, principal=system_actor({"patrols:manage"}), now=now - timedelta(minutes=2),
                                         fields=patrols.PatrolTaskFields(
                                             name="城东每日巡测", schedule="* * * * *",
                                             concentrator_ids=(field.buses[0].concentrator_id,)))
        [run] = await patrols.enqueue_due_patrols(session, now=now, tz=ZoneInfo("Asia/Shanghai"),
                                                  actor=system_actor({"remote:read"}))
    async with running(committed_sessions, holder="test:patrol"):
        async with committed_sessions() as session:
            page = await session.execute(text("SELECT id FROM remote_commands WHERE patrol_run_id = :id"), {"id": run.id})
            command_ids = [row[0] for row in page]
        await finished(committed_sessions, *command_ids)

    counts = await rows(committed_sessions, "SELECT state, meters_total, meters_read, meters_failed FROM patrol_runs "
                                            "WHERE id = :id", id=run.id)
    # Bus 0's two simulated meters were read; the meter nobody answers for failed.
    assert counts == [("finished", 3, 2, 1)]


async def test_clocks_history_and_purchases_reach_the_meter(committed_sessions: async_sessionmaker[AsyncSession],
                                                           field: Field, simulator: SimulatorProcess) -> None:
    address, meter_id = list(field.buses[2].meters.items())[1]
    simulator.set_meter(address, prepaid=True, balance_fen=0)
    async with running(committed_sessions, holder="test:writes"):
        clock, history, purchase, repeated = await finished(committed_sessions, *[
            await queue(committed_sessions, meter_id, kind, params) for kind, params in [
                (CommandKind.sync_clock, {}),
                (CommandKind.backfill, {"months": 2}),
                (CommandKind.write_purchase, {"purchase_count": 1, "amount_fen": 1000}),
                (CommandKind.write_purchase, {"purchase_count": 1, "amount_fen": 1000}),
            ]])
    meter = simulator.meter(address)

    assert [c.state for c in (clock, history, purchase, repeated)] == [CommandState.succeeded] * 4
    assert clock.reply is not None and history.reply is not None
    sent_clock = datetime.fromisoformat(clock.reply["clock"])
    assert abs((datetime.fromisoformat(meter["clock"]) - sent_clock).total_seconds()) < 5
    assert [entry["months_ago"] for entry in history.reply["history"]] == [1, 2]
    # The meter took the purchase once: the repeat of count 1 found it held already.
    assert (meter["purchase_count"], meter["purchased_fen"]) == (1, 1000)
