"""The field side of ``shuiwu demo run`` (the remote domain's ``demo_run``): a meter
simulator for each simulated bus of the demo, and the acquisition worker serving them.

A simulated bus is a transparent-DTU concentrator whose address is this machine
(``127.0.0.1`` or ``localhost``; the demo makes one, ``backend.remote.demo``). Its
simulator stands in for exactly the meters the archives put on it (``--meters-file``):
their addresses, type bytes and their models' DI byte order and valves; each register
starts at the meter's latest reading (rounded up to the 0.01 m³ the frame carries, so no
reading goes backwards) and a valve whose last valve command was a succeeded close
starts closed. The worker serves only these buses (the demo's other concentrators are
addresses nobody answers at), reads them when their patrol task comes due and carries out
what the desk and the valve policy queue. Both stop when ``demo run`` does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from acquisition.links import meters_on_bus
from acquisition.settings import AcquireSettings
from acquisition.simulator import MeterSpec, SimulatorProcess
from acquisition.worker import AcquisitionWorker
from backend.remote.service import concentrator_link

if TYPE_CHECKING:
    from backend.settings import Settings

log = logging.getLogger("shuiwu.demo")

LOOPBACK = ("127.0.0.1", "localhost")
_REGISTER_STEP = Decimal("0.01")

_BUSES = text("""
SELECT id, host, port, coalesce(baudrate, 2400) AS baudrate, coalesce(parity, 'E') AS parity FROM concentrators
WHERE connection = 'dtu_socket' AND host = ANY(:hosts) AND port IS NOT NULL AND status <> 'retired'
ORDER BY id
""")
# Each meter of the bus with its model's valve, its latest register and its last valve command.
_METERS = text("""
SELECT m.id, coalesce(mm.has_valve, false) AS has_valve,
       coalesce((SELECT r.total_m3 FROM readings r WHERE r.meter_id = m.id ORDER BY r.read_at DESC LIMIT 1),
                m.initial_reading, 0) AS total_m3,
       (SELECT c.kind = 'valve_close' FROM remote_commands c
        WHERE c.meter_id = m.id AND c.kind IN ('valve_open', 'valve_close') AND c.state = 'succeeded'
        ORDER BY c.id DESC LIMIT 1) AS closed
FROM meters m LEFT JOIN meter_models mm ON mm.id = m.model_id
WHERE m.concentrator_id = :bus AND m.status = 'installed'
ORDER BY m.address
""")


@dataclass(frozen=True, slots=True)
class SimulatedBus:
    """One simulated DTU: where it listens, its line speed and the meters it stands in for."""

    concentrator_id: int
    host: str
    port: int
    baudrate: int
    parity: str
    meters: tuple[MeterSpec, ...]

    @property
    def link(self) -> str:
        return concentrator_link(self.concentrator_id)


async def simulated_buses(session: AsyncSession) -> list[SimulatedBus]:
    """The demo's simulated buses as the archives, readings and commands describe them now
    (module docstring); buses without meters are left out."""
    buses = []
    for bus in (await session.execute(_BUSES, {"hosts": list(LOOPBACK)})).all():
        specs = []
        rows = (await session.execute(_METERS, {"bus": bus.id})).all()
        on_bus = await meters_on_bus(session, [row.id for row in rows])
        for row in rows:
            meter = on_bus.get(row.id)
            if meter is None:
                continue
            total = Decimal(row.total_m3).quantize(_REGISTER_STEP, rounding=ROUND_CEILING)
            specs.append(MeterSpec(address=meter.address, total_m3=float(total), meter_type=meter.meter_type,
                                   di_order=meter.di_order, has_valve=bool(row.has_valve), valve_open=not row.closed))
        if specs:
            buses.append(SimulatedBus(int(bus.id), str(bus.host), int(bus.port), int(bus.baudrate), str(bus.parity),
                                      tuple(specs)))
    return buses


def simulator_for(bus: SimulatedBus, meters_file: Path) -> SimulatorProcess:
    """The simulator process of ``bus`` (not started), its meters written to ``meters_file``."""
    meters_file.write_text(json.dumps([spec.to_json() for spec in bus.meters]), encoding="utf-8")
    return SimulatorProcess(tcp=True, host=bus.host, port=bus.port, baud=bus.baudrate, parity=bus.parity,
                            meters_file=str(meters_file))


async def run_simulated_field(settings: Settings, database_url: str, stop: asyncio.Event) -> None:
    """Start a simulator per simulated bus and a worker serving them; stop both when
    ``stop`` is set. A simulator that cannot listen (its port in use) is reported and
    the demo goes on without it."""
    from backend.db import create_engine, session_factory
    from backend.domain import read_settings

    engine = create_engine(database_url, pool_size=2, max_overflow=6)
    sessions = session_factory(engine)
    simulators: list[SimulatorProcess] = []
    try:
        async with sessions() as session:
            buses = await simulated_buses(session)
        if not buses:
            log.info("no simulated bus in the demo data: no meter simulator started")
            return
        with tempfile.TemporaryDirectory(prefix="shuiwu-field-") as directory:
            served = []
            for bus in buses:
                simulator = simulator_for(bus, Path(directory) / f"bus-{bus.concentrator_id}.json")
                try:
                    await asyncio.to_thread(simulator.start)
                except (RuntimeError, OSError) as error:
                    log.warning("meter simulator for %s on %s:%d did not start (%s)", bus.link, bus.host, bus.port, error)
                    continue
                simulators.append(simulator)
                served.append(bus.link)
                log.info("meter simulator: %d meters of %s as a DTU on %s:%d", len(bus.meters), bus.link, bus.host, bus.port)
            if not served:
                return
            worker = AcquisitionWorker(sessions=sessions, config=read_settings(AcquireSettings),
                                       timezone=settings.timezone, database_url=database_url, links=served)
            running = asyncio.create_task(worker.run(), name="demo acquisition")
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            worker.stop()
            await running
    finally:
        for simulator in simulators:
            await asyncio.to_thread(simulator.close)
        await engine.dispose()
