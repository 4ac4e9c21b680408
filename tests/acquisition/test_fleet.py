"""Scale-out and robustness of the acquisition worker (issue 20, "Acceptance" and
"Performance"): two workers sharing eight buses in one patrol, a worker killed with
SIGKILL mid-patrol and its run resumed by the next one, a command past its time limit,
and a stopping bus giving back the command it claimed ahead. Simulated meters on ptys at
a fast baud rate; real PostgreSQL with commits; the killed worker a real subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from acquisition.settings import AcquireSettings
from acquisition.simulator import Fault, SimulatorProcess
from acquisition.worker import AcquisitionWorker
from backend.archives.models import Concentrator, ConnectionKind, Meter, MeterModel, MeterStatus, MeterType
from backend.auth.system import system_actor
from backend.clock import utcnow
from backend.db import transaction
from backend.remote import patrols
from backend.remote import service as remote
from backend.remote.models import FINISHED_STATES, CommandKind, CommandState, FailureKind, RemoteCommand
from tests.acquisition.test_worker import Bus, Field
from tests.factories import make_area_tree, unique

BAUD = 115200
BUSES = 8
METERS_PER_BUS = 3
GHOST_ADDRESS = "99999999999998"  # on the last bus, where no meter answers to it
OPERATOR = system_actor({"remote:read", "remote:control"})
CONFIG = AcquireSettings(lease_ttl_s=1.0, renew_interval_s=0.25, poll_interval_s=0.1, response_timeout_s=0.1,
                         inter_byte_timeout_s=0.1, exchange_retries=1, reconnect_initial_s=0.1, reconnect_max_s=0.4,
                         listen=False)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(buses=BUSES, meters=METERS_PER_BUS, baud=BAUD, turnaround=0.002) as running:
        yield running


@pytest.fixture(autouse=True)
def no_faults_left(simulator: SimulatorProcess) -> None:
    simulator.clear_faults()


@pytest.fixture(scope="module")
async def field(committed_sessions: async_sessionmaker[AsyncSession], simulator: SimulatorProcess) -> Field:
    """A serial concentrator at each simulated bus's pty, a valve meter for each simulated
    meter, and a meter on the last bus that nothing answers for."""
    async with transaction(committed_sessions) as session:
        tree = await make_area_tree(session)
        area_id = tree.east_community.id or 0
        model = MeterModel(vendor=unique("厂家"), name=unique("型号"), caliber=20, has_valve=True)
        session.add(model)
        await session.flush()

        async def meter(address: str, concentrator_id: int) -> int:
            row = Meter(name=f"水表{address[-4:]}", code=unique("FL"), address=address, meter_type=MeterType.cold_water,
                        model_id=model.id, area_id=area_id, status=MeterStatus.installed,
                        concentrator_id=concentrator_id)
            session.add(row)
            await session.flush()
            return row.id or 0

        buses = []
        for index, url in enumerate(simulator.urls):
            concentrator = Concentrator(name=f"总线{index}", region_code="3302", terminal_address=60_000 + index,
                                        connection=ConnectionKind.serial, serial_url=url, baudrate=BAUD, parity="E",
                                        area_id=area_id)
            session.add(concentrator)
            await session.flush()
            cid = concentrator.id or 0
            buses.append(Bus(cid, remote.concentrator_link(cid),
                             {address: await meter(address, cid) for address in simulator.addresses[index]}))
        ghost = await meter(GHOST_ADDRESS, buses[-1].concentrator_id)
    return Field(buses, ghost)


@contextlib.asynccontextmanager
async def running(sessions: async_sessionmaker[AsyncSession], *, holder: str, max_links: int = BUSES,
                  config: AcquireSettings = CONFIG) -> AsyncIterator[AcquisitionWorker]:
    worker = AcquisitionWorker(sessions=sessions, config=config, timezone="Asia/Shanghai", holder=holder,
                               max_links=max_links)
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: len(worker.held_links) >= max_links)
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=10)


async def until(condition: Any, *, within: float = 8.0, what: str = "a condition") -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def rows(sessions: async_sessionmaker[AsyncSession], statement: str, **params: Any) -> list[Any]:
    async with sessions() as session:
        return list((await session.execute(text(statement), params)).all())


async def queue(sessions: async_sessionmaker[AsyncSession], meter_id: int, kind: CommandKind,
                time_limit_s: int | None = None) -> int:
    async with transaction(sessions) as session:
        command = await remote.queue_command(session, target=meter_id, kind=kind, params={}, issued_by=OPERATOR,
                                             time_limit_s=time_limit_s, now=utcnow())
        return command.id or 0


async def commands(sessions: async_sessionmaker[AsyncSession], *command_ids: int) -> list[RemoteCommand]:
    async with sessions() as session:
        return await remote.commands_by_id(session, command_ids)


async def finished(sessions: async_sessionmaker[AsyncSession], *command_ids: int,
                   within: float = 8.0) -> list[RemoteCommand]:
    deadline = time.monotonic() + within
    while True:
        found = await commands(sessions, *command_ids)
        if all(command.state in FINISHED_STATES for command in found):
            return found
        assert time.monotonic() < deadline, f"still unfinished: {[(c.id, c.state) for c in found]}"
        await asyncio.sleep(0.05)


_task_numbers = iter(range(1, 1000))


async def start_patrol(sessions: async_sessionmaker[AsyncSession], buses: list[Bus]) -> int:
    """A patrol task over ``buses``' concentrators, run now: the run's id."""
    now = utcnow()
    async with transaction(sessions) as session:
        task = await patrols.create_patrol_task(
            session, principal=system_actor({"patrols:manage"}), now=now - timedelta(minutes=2),
            fields=patrols.PatrolTaskFields(name=f"巡测{next(_task_numbers)}", schedule="* * * * *",
                                            concentrator_ids=tuple(bus.concentrator_id for bus in buses)))
        [run] = await patrols.enqueue_due_patrols(session, now=now, tz=ZoneInfo("Asia/Shanghai"),
                                                  actor=system_actor({"remote:read"}))
        # Once is enough: a later test's patrol must not fire this one again.
        await patrols.set_patrol_task_enabled(session, principal=system_actor({"patrols:manage"}), task_id=task.id or 0,
                                              enabled=False, now=now)
    return run.id or 0


async def sent_reads(sessions: async_sessionmaker[AsyncSession], run_id: int, link: str) -> int:
    [(count,)] = await rows(sessions, "SELECT count(*) FROM remote_commands WHERE state = 'sent' "
                                      "AND patrol_run_id = :id AND link = :link", id=run_id, link=link)
    return int(count)


async def run_state(sessions: async_sessionmaker[AsyncSession], run_id: int) -> Any:
    [row] = await rows(sessions, "SELECT state, meters_total, meters_read, meters_failed, interruptions, "
                                 "interrupted_at, resumed_at, finished_at FROM patrol_runs WHERE id = :id", id=run_id)
    return row


async def run_finished(sessions: async_sessionmaker[AsyncSession], run_id: int, *, within: float) -> Any:
    deadline = time.monotonic() + within
    while (row := await run_state(sessions, run_id)).state != "finished":
        assert time.monotonic() < deadline, f"run {run_id} still {row}"
        await asyncio.sleep(0.05)
    return row


def wire_requests(simulator: SimulatorProcess, addresses: list[str], di: str) -> dict[str, int]:
    """What each meter has been asked for ``di`` so far, on the wire."""
    return {address: simulator.meter(address)["requests"].get(di, 0) for address in addresses}


async def readings_per_meter(sessions: async_sessionmaker[AsyncSession], meter_ids: list[int]) -> dict[int, int]:
    found = dict(await rows(sessions, "SELECT meter_id, count(*) FROM readings WHERE meter_id = ANY(:ids) "
                                      "GROUP BY meter_id", ids=meter_ids))
    return {meter_id: found.get(meter_id, 0) for meter_id in meter_ids}


async def test_two_workers_share_eight_buses_and_read_each_meter_once_in_a_patrol(
        committed_sessions: async_sessionmaker[AsyncSession], field: Field, simulator: SimulatorProcess) -> None:
    addresses, meter_ids = list(field.meters), list(field.meters.values())
    asked_before = wire_requests(simulator, addresses, "901F")
    stored_before = await readings_per_meter(committed_sessions, meter_ids)
    async with (running(committed_sessions, holder="fleet:a", max_links=BUSES // 2) as first,
                running(committed_sessions, holder="fleet:b", max_links=BUSES // 2) as second):
        run_id = await start_patrol(committed_sessions, field.buses)
        run = await run_finished(committed_sessions, run_id, within=10)
        held = {"fleet:a": set(first.held_links), "fleet:b": set(second.held_links)}
    asked = wire_requests(simulator, addresses, "901F")
    stored = await readings_per_meter(committed_sessions, meter_ids)
    served = await rows(committed_sessions, "SELECT claimed_by, link, state, attempts FROM remote_commands "
                                            "WHERE patrol_run_id = :id", id=run_id)

    # Every simulated meter was asked for 901F exactly once and stored one reading; the
    # ghost meter (nobody answers) failed after its attempts.
    assert {address: asked[address] - asked_before[address] for address in addresses} == dict.fromkeys(addresses, 1)
    assert {m: stored[m] - stored_before[m] for m in meter_ids} == dict.fromkeys(meter_ids, 1)
    assert (run.state, run.meters_total, run.meters_read, run.meters_failed) == (
        "finished", len(meter_ids) + 1, len(meter_ids), 1)
    # Both workers served buses, four each, and each claimed only on its own.
    assert held["fleet:a"].isdisjoint(held["fleet:b"]) and len(held["fleet:a"]) == len(held["fleet:b"]) == BUSES // 2
    assert all(link in held[holder] for holder, link, _, _ in served)
    assert {holder for holder, *_ in served} == {"fleet:a", "fleet:b"}
    assert sorted((state, attempts) for _, _, state, attempts in served if state == "succeeded") == [
        ("succeeded", 1)] * len(meter_ids)


def spawn_worker(database_url: str) -> subprocess.Popen[bytes]:
    """``python -m acquisition.worker`` against the module's database, with short leases."""
    environment = dict(
        os.environ, PYTHONPATH=str(ROOT), SHUIWU_DATABASE_URL=database_url, SHUIWU_LOG_LEVEL="WARNING",
        SHUIWU_ACQUIRE_LEASE_TTL_S="1", SHUIWU_ACQUIRE_RENEW_INTERVAL_S="0.25", SHUIWU_ACQUIRE_POLL_INTERVAL_S="0.1",
        # A valve reply lost on the way back keeps its exchange waiting this long: the
        # window in which the worker is killed.
        SHUIWU_ACQUIRE_RESPONSE_TIMEOUT_S="4", SHUIWU_ACQUIRE_INTER_BYTE_TIMEOUT_S="0.1",
        SHUIWU_ACQUIRE_EXCHANGE_RETRIES="1", SHUIWU_ACQUIRE_LISTEN="false")
    return subprocess.Popen([sys.executable, "-m", "acquisition.worker"], env=environment, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def test_a_worker_killed_mid_patrol_is_resumed_by_the_next_and_no_valve_command_goes_out_twice(
        committed_sessions: async_sessionmaker[AsyncSession], database_url: str, field: Field,
        simulator: SimulatorProcess) -> None:
    valve_bus, other_bus = field.buses[0], field.buses[1]
    valve_address, valve_meter = next(iter(valve_bus.meters.items()))
    patrol_meters = {**valve_bus.meters, **other_bus.meters}
    simulator.set_meter(valve_address, valve_open=True)
    closes_before = wire_requests(simulator, [valve_address], "A017")[valve_address]
    stored_before = await readings_per_meter(committed_sessions, list(patrol_meters.values()))
    # The valve moves but its reply is lost: the worker is killed while it waits for it,
    # with the patrol's reads of that bus queued behind it and one of them claimed ahead.
    simulator.inject(valve_address, Fault.drop, times=1)
    # A time limit that outlasts two worker starts on a loaded machine (the takeover
    # requeues only commands whose deadline is ahead).
    valve_command = await queue(committed_sessions, valve_meter, CommandKind.valve_close, time_limit_s=600)
    run_id = await start_patrol(committed_sessions, [valve_bus, other_bus])

    killed = spawn_worker(database_url)
    try:
        await until(lambda: wire_requests(simulator, [valve_address], "A017")[valve_address] > closes_before,
                    within=60, what="the valve request on the wire")
        deadline = time.monotonic() + 3
        while await sent_reads(committed_sessions, run_id, valve_bus.link) < 1:
            assert time.monotonic() < deadline, "no read of the valve's bus was claimed ahead"
            await asyncio.sleep(0.02)
        mid_patrol = await run_state(committed_sessions, run_id)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=5)
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait()
    [valve_in_flight] = await commands(committed_sessions, valve_command)
    held_by_the_dead = await sent_reads(committed_sessions, run_id, valve_bus.link)

    heir = spawn_worker(database_url)
    try:
        run = await run_finished(committed_sessions, run_id, within=60)
        [valve] = await finished(committed_sessions, valve_command, within=5)
        heir.send_signal(signal.SIGTERM)
        heir_exit = heir.wait(timeout=10)
    finally:
        if heir.poll() is None:
            heir.kill()
            heir.wait()
    stderr = heir.stderr.read().decode() if heir.stderr else ""
    closes = wire_requests(simulator, [valve_address], "A017")[valve_address] - closes_before
    stored = await readings_per_meter(committed_sessions, list(patrol_meters.values()))

    # Killed mid-patrol: the valve command on the wire, a read of its bus claimed ahead.
    assert mid_patrol.state == "running" and mid_patrol.meters_read < mid_patrol.meters_total
    assert (valve_in_flight.state, valve_in_flight.attempts) == (CommandState.sent, 1)
    assert held_by_the_dead >= 1
    # The heir took the links over, the run was interrupted once and resumed, and every
    # meter of it has its reading.
    assert (run.state, run.meters_read, run.meters_failed, run.interruptions) == ("finished", len(patrol_meters), 0, 1)
    assert run.interrupted_at is not None and run.resumed_at is not None
    assert run.interrupted_at <= run.resumed_at <= run.finished_at
    assert all(stored[m] > stored_before[m] for m in patrol_meters.values())
    assert sorted(meter_id for meter_id, state in await rows(
        committed_sessions, "SELECT meter_id, state FROM remote_commands WHERE patrol_run_id = :id", id=run_id)
                  if state == "succeeded") == sorted(patrol_meters.values())
    # The valve command went out once: its retry read the valve (closed) and was done.
    assert (valve.state, valve.attempts) == (CommandState.succeeded, 2)
    assert valve.reply is not None and valve.reply["already"] is True
    assert closes == 1
    assert simulator.meter(valve_address)["valve_open"] is False
    # The heir stopped cleanly on SIGTERM and released what it held.
    assert heir_exit == 0, stderr
    assert await rows(committed_sessions, "SELECT link FROM link_leases") == []


async def test_a_command_whose_meter_keeps_it_past_its_time_limit_is_timed_out(
        committed_sessions: async_sessionmaker[AsyncSession], field: Field) -> None:
    patient = CONFIG.model_copy(update={"response_timeout_s": 5.0, "exchange_retries": 0})
    async with running(committed_sessions, holder="fleet:patient", config=patient):
        command_id = await queue(committed_sessions, field.ghost_meter_id, CommandKind.read_now, time_limit_s=1)
        [command] = await finished(committed_sessions, command_id, within=5)

    # The exchange waited the second it had (not the 5 s response timeout) and the
    # command, still worth trying, was out of time.
    assert (command.state, command.failure_kind, command.attempts) == (CommandState.timed_out, FailureKind.timeout, 1)
    assert command.finished_at is not None and command.finished_at >= command.deadline
    assert await rows(committed_sessions, "SELECT payload->>'state' FROM domain_events WHERE kind = 'command.finished' "
                                          "AND payload->'command_ids' @> to_jsonb(CAST(:id AS bigint))", id=command_id) == [("timed_out",)]


async def test_a_stopping_bus_gives_back_the_command_it_claimed_ahead(
        committed_sessions: async_sessionmaker[AsyncSession], field: Field) -> None:
    bus = field.buses[-1]
    slow = CONFIG.model_copy(update={"response_timeout_s": 0.6, "exchange_retries": 0})
    async with running(committed_sessions, holder="fleet:stopping", config=slow) as worker:
        ghost_read = await queue(committed_sessions, field.ghost_meter_id, CommandKind.read_now)
        next_read = await queue(committed_sessions, next(iter(bus.meters.values())), CommandKind.read_now)

        async def claimed_ahead() -> bool:
            return [c.state for c in await commands(committed_sessions, ghost_read, next_read)] == [
                CommandState.sent, CommandState.sent]

        deadline = time.monotonic() + 5
        while not await claimed_ahead():
            assert time.monotonic() < deadline, "the next command was not claimed while the first was on the wire"
            await asyncio.sleep(0.02)
        worker.stop()  # the ghost's exchange is still waiting for its reply
    in_hand, ahead = await commands(committed_sessions, ghost_read, next_read)
    events = await rows(committed_sessions, "SELECT payload FROM domain_events WHERE kind = 'command.changed' "
                                            "AND payload->'command_ids' @> to_jsonb(CAST(:id AS bigint)) ORDER BY id", id=next_read)

    # The exchange in hand ended and was recorded (back in the queue for another try);
    # the command claimed ahead went back unspent, as if never claimed.
    assert (in_hand.state, in_hand.attempts, in_hand.failure_kind) == (CommandState.queued, 1, FailureKind.timeout)
    assert (ahead.state, ahead.attempts, ahead.claimed_by, ahead.sent_at) == (CommandState.queued, 0, None, None)
    assert [(event["state"], event["links"]) for (event,) in events] == [
        ("queued", [bus.link]), ("sent", [bus.link]), ("queued", [bus.link])]
    # Nobody else serves the bus: clear the queue for the tests after.
    async with transaction(committed_sessions) as session:
        await session.execute(text("UPDATE remote_commands SET state = 'failed' WHERE id = ANY(:ids)"),
                              {"ids": [ghost_read, next_read]})
