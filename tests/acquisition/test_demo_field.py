"""``demo run``'s field side (acquisition.demo) on a copy of the small demo: the demo
has one simulated bus (a DTU on this machine) with a patrol task reading it every few
minutes; the simulator started for it stands in for exactly that concentrator's meters,
at their latest registers, with the valve the policy closed closed; and the worker
reads its meters of either DI byte order and reopens that valve when queued."""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from acquisition.demo import simulated_buses, simulator_for
from acquisition.settings import AcquireSettings
from acquisition.worker import AcquisitionWorker
from backend.auth.system import system_actor
from backend.db import transaction
from backend.remote import service as remote
from backend.remote.demo import SIMULATED_DTU_HOST, SIMULATED_DTU_PORT, SIMULATED_PATROL
from backend.remote.models import CommandKind
from tests import small_demo
from tests.fixtures.live import eventually
from tests.small_demo import rows

database_url, demo = small_demo.database_url, small_demo.demo

CONFIG = AcquireSettings(lease_ttl_s=5.0, renew_interval_s=1.0, poll_interval_s=0.05, listen=False)


async def test_the_demo_simulator_stands_in_for_the_simulated_bus_and_the_worker_reads_and_reopens_it(
        demo: None, committed_sessions: async_sessionmaker[AsyncSession], tmp_path: Path) -> None:
    [(concentrator_id, url)] = await rows(
        committed_sessions, "SELECT id, serial_url FROM concentrators WHERE connection = 'dtu_socket' AND host = :host "
                            "AND port = :port", host=SIMULATED_DTU_HOST, port=SIMULATED_DTU_PORT)
    assert url == f"socket://{SIMULATED_DTU_HOST}:{SIMULATED_DTU_PORT}"
    assert await rows(committed_sessions, "SELECT concentrator_ids, enabled FROM patrol_tasks WHERE name = :name",
                      name=SIMULATED_PATROL) == [([concentrator_id], True)]
    on_bus = dict(await rows(committed_sessions, "SELECT address, id FROM meters WHERE concentrator_id = :id "
                                                 "AND status = 'installed'", id=concentrator_id))
    # The valve the policy closed (backend.valves.demo): a household at its close line, on this bus.
    [(closed_meter, account_id)] = await rows(committed_sessions, """
        SELECT c.meter_id, a.id FROM remote_commands c
        JOIN meter_assignments ma ON ma.meter_id = c.meter_id AND ma.valid_to IS NULL
        JOIN accounts a ON a.household_id = ma.household_id
        WHERE c.kind = 'valve_close' AND c.state = 'succeeded' AND c.issued_by_kind = 'system'""")
    assert closed_meter in on_bus.values()
    assert await rows(committed_sessions, "SELECT alert_state, vulnerable FROM accounts WHERE id = :id",
                      id=account_id) == [("close", False)]

    async with committed_sessions() as session:
        [bus] = await simulated_buses(session)
    assert bus.concentrator_id == concentrator_id
    assert sorted(spec.address for spec in bus.meters) == sorted(on_bus)
    latest = dict(await rows(committed_sessions, "SELECT DISTINCT ON (m.address) m.address, r.total_m3 FROM readings r "
                                                 "JOIN meters m ON m.id = r.meter_id WHERE m.concentrator_id = :id "
                                                 "ORDER BY m.address, r.read_at DESC", id=concentrator_id))
    # Each register starts at its latest reading, rounded up to the 0.01 m³ a frame carries.
    assert latest and all(Decimal(0) <= Decimal(str(spec.total_m3)) - latest[spec.address] < Decimal("0.01")
                          for spec in bus.meters if spec.address in latest)
    closed_address = next(address for address, meter_id in on_bus.items() if meter_id == closed_meter)
    assert [spec.address for spec in bus.meters if not spec.valve_open] == [closed_address]

    # The simulator on a free port (9188 may be taken on a test machine), the worker on it.
    with simulator_for(dataclasses.replace(bus, port=0, baudrate=115200), tmp_path / "bus.json") as simulator:
        assert simulator.addresses == [[spec.address for spec in bus.meters]]
        assert simulator.meter(closed_address)["valve_open"] is False
        # A meter whose model has no valve lets the water through.
        assert all(simulator.meter(spec.address)["valve_open"] for spec in bus.meters if not spec.has_valve)
        assert any(not spec.has_valve for spec in bus.meters)
        port = int(simulator.urls[0].rsplit(":", 1)[1])
        async with transaction(committed_sessions) as session:
            await session.execute(text(
                "UPDATE concentrators SET port = :port, serial_url = :url, baudrate = 115200 WHERE id = :id"),
                {"port": port, "url": simulator.urls[0], "id": concentrator_id})
            reopen = await remote.queue_command(session, target=closed_meter, kind=CommandKind.valve_open, params={},
                                                issued_by=system_actor({"remote:control"}))
            read = await remote.queue_command(session, target=closed_meter, kind=CommandKind.read_now, params={},
                                              issued_by=system_actor({"remote:read"}))
            # A meter of each DI byte order on the bus (the demo mixes models on one bus).
            orders = {spec.di_order: on_bus[spec.address] for spec in bus.meters}
            assert len(orders) == 2
            mixed = [await remote.queue_command(session, target=meter_id, kind=CommandKind.read_now, params={},
                                                issued_by=system_actor({"remote:read"})) for meter_id in orders.values()]
        worker = AcquisitionWorker(sessions=committed_sessions, config=CONFIG, timezone="Asia/Shanghai",
                                   holder="test:demo", links=[bus.link])
        running = asyncio.create_task(worker.run())
        try:
            async def done() -> bool:
                states = await rows(committed_sessions, "SELECT state FROM remote_commands WHERE id = ANY(:ids)",
                                    ids=[reopen.id, read.id, *(command.id for command in mixed)])
                return states == [("succeeded",)] * 4
            await eventually(done, timeout_s=10)
            held = worker.held_links
        finally:
            worker.stop()
            await asyncio.wait_for(running, timeout=10)
        assert held == [bus.link]  # the demo's other, unreachable buses are not served
        assert simulator.meter(closed_address)["valve_open"] is True
        [(total,)] = await rows(committed_sessions, "SELECT total_m3 FROM readings WHERE meter_id = :id "
                                                    "ORDER BY read_at DESC LIMIT 1", id=closed_meter)
        assert total == Decimal(str(next(spec.total_m3 for spec in bus.meters if spec.address == closed_address)))
