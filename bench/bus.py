"""A patrol of simulated meter buses through the acquisition worker (issue 20, "Performance").

The meter simulator (``shuiwu simulate meters``, a process of its own) serves ``--buses``
buses of ``--meters`` CJ/T 188 meters each, on ptys (or TCP DTUs with ``--tcp``), at
``--baud`` 8E1 with a ``--turnaround`` between request and reply, pacing every byte as the
line would. The database is an embedded PostgreSQL of the bench's own, migrated, with a
serial concentrator per bus and a meter per simulated meter (installed at the register it
shows, today's alarm baselines computed as the periodic alarm run does). One
:class:`acquisition.worker.AcquisitionWorker` (what ``shuiwu acquire`` runs) leases every
bus and follows the events channel, as in production; each patrol is a patrol task's run
(``backend.remote.patrols``): a ``read_now`` command per meter, claimed, carried out on
the bus, its reading ingested and the run's counts kept.

0. A warm-up run over the last bus, not counted (a worker in production has been running).
1. **One bus**: a run over bus 0's meters. Wall time: from the moment the run is
   enqueued (its ``started_at``) to the moment its last result is recorded
   (``finished_at``). Its theoretical time is ``Σ over meters ((request bytes + reply
   bytes) × 11 / baud + turnaround)``, with the bytes the worker's link actually sent and
   received (preambles included). Printed: wall, theoretical and their ratio (goal ≤ 1.20,
   the headline).
2. **All buses on one worker**: a run over every bus at once. Printed: meters read per
   second against the one bus's (goal ≥ 25× for 32 buses).

With ``--link`` it first measures the same two patrols through the bare link
(:class:`acquisition.transport.AsyncLink`, no database), the floor the worker adds to.

Checked: every meter of every run read, none failed. The last line is
``headline: worker patrol 64 meters wall/theoretical ratio=<x.xx> goal=<=1.20``. About
two minutes at the defaults (three with ``--link``); on the shared 2-core machines compare
the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from _embedded import embedded_database  # bench/ is the script directory: sys.path[0]
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from acquisition.protocols import cjt188
from acquisition.settings import AcquireSettings
from acquisition.simulator import SimulatorProcess
from acquisition.transport import AsyncLink, ExchangeTiming, LineSettings
from acquisition.worker import AcquisitionWorker, worker_engine
from backend.archives.models import AreaKind, Concentrator, ConnectionKind, Meter, MeterModel, MeterStatus, MeterType
from backend.archives.service.areas import create_area
from backend.auth.system import system_actor
from backend.clock import utcnow
from backend.db import migrate, session_factory, transaction
from backend.readings.alarms.service import evaluate_alarms
from backend.readings.partitions import ensure_partitions_ahead
from backend.remote import patrols
from backend.remote.service import concentrator_link

TIMEZONE = "Asia/Shanghai"


@dataclass
class Patrol:
    meters: int
    wall: float
    bytes_on_the_line: int


# --------------------------------------------------------------------------- through the bare link


async def link_patrol(link: AsyncLink, addresses: list[str]) -> int:
    """Read every meter once; the bytes sent and received on the way."""
    statistics = link.link.statistics
    before = statistics.bytes_sent + statistics.bytes_received
    for address in addresses:
        reply = cjt188.decode(await link.exchange(cjt188.encode_read(address)))
        if not isinstance(reply, cjt188.MeterData) or reply.address != address:
            raise SystemExit(f"meter {address} answered {reply}")
    return statistics.bytes_sent + statistics.bytes_received - before


async def timed_link_patrols(links: list[AsyncLink], addresses: list[list[str]]) -> Patrol:
    started = time.perf_counter()
    byte_counts = await asyncio.gather(*(link_patrol(link, bus) for link, bus in zip(links, addresses, strict=True)))
    return Patrol(sum(len(bus) for bus in addresses), time.perf_counter() - started, sum(byte_counts))


async def through_the_link(args: argparse.Namespace, simulator: SimulatorProcess, line: LineSettings) -> None:
    links = [AsyncLink.open_url(url, line=line, timing=ExchangeTiming(response_timeout=1.0, retries=0))
             for url in simulator.urls]
    try:
        for link in links:
            link.link.open()
        one = await timed_link_patrols(links[:1], simulator.addresses[:1])
        theoretical = line.line_time(one.bytes_on_the_line) + one.meters * args.turnaround
        many = await timed_link_patrols(links, simulator.addresses)
        failures = sum(sum(link.link.statistics.failures.values()) for link in links)
    finally:
        for link in links:
            await link.aclose()
    if failures:
        raise SystemExit(f"{failures} exchanges failed on the bare link")
    print(f"link only, one bus: wall {one.wall:.2f} s, theoretical {theoretical:.2f} s, ratio {one.wall / theoretical:.2f}; "
          f"{args.buses} buses: {many.meters / many.wall:.1f} meters/s, "
          f"{(many.meters / many.wall) / (one.meters / one.wall):.2f}× one bus", flush=True)


# --------------------------------------------------------------------------- through the worker


async def seed(sessions: async_sessionmaker[AsyncSession], simulator: SimulatorProcess, args: argparse.Namespace) -> list[int]:
    """A serial concentrator per simulated bus, a meter per simulated meter, this month's
    readings partition (the daily job's); the concentrators' ids, in bus order."""
    async with transaction(sessions) as session:
        company = await create_area(session, name="水务公司", kind=AreaKind.company)
        model = MeterModel(vendor="模拟", name="CJ/T 188", caliber=20, has_valve=False)
        session.add(model)
        await session.flush()
        concentrator_ids = []
        for index, url in enumerate(simulator.urls):
            concentrator = Concentrator(name=f"总线{index}", region_code="3301", terminal_address=1000 + index,
                                        connection=ConnectionKind.serial, serial_url=url, baudrate=args.baud, parity="E",
                                        area_id=company.id or 0)
            session.add(concentrator)
            await session.flush()
            concentrator_ids.append(concentrator.id or 0)
            # Installed at the register the simulated meter shows now, as a fitter records
            # it: a first reading is then an ordinary day's use, not a high-use alarm.
            session.add_all([Meter(name=f"水表{address[-4:]}", code=f"B{address}", address=address,
                                   meter_type=MeterType.cold_water, model_id=model.id, area_id=company.id or 0,
                                   status=MeterStatus.installed, concentrator_id=concentrator.id,
                                   install_date=utcnow().date() - timedelta(days=30),
                                   initial_reading=Decimal(str(simulator.meter(address)["total_m3"])).quantize(
                                       Decimal("0.0001")))
                             for address in simulator.addresses[index]])
        await ensure_partitions_ahead(session, now=utcnow(), tz=TIMEZONE)
    async with transaction(sessions) as session:
        # The periodic alarm run (every 15 minutes in an installation) has computed
        # today's high-use baselines; without them every meter's first reading of the day
        # would be evaluated with its batch.
        await evaluate_alarms(session, actor=system_actor({"alarms:manage"}), now=utcnow(), tz=TIMEZONE)
    return concentrator_ids


async def worker_patrol(worker: AcquisitionWorker, sessions: async_sessionmaker[AsyncSession],
                        concentrator_ids: list[int], name: str) -> Patrol:
    """One run of a new patrol task over ``concentrator_ids``, carried out by ``worker``:
    its meters, its wall time (enqueued → last result recorded) and the bytes its buses moved."""
    statistics = [worker.coordinators[concentrator_link(cid)].link.link.statistics for cid in concentrator_ids]
    before = sum(s.bytes_sent + s.bytes_received for s in statistics)
    now = utcnow()
    async with transaction(sessions) as session:
        task = await patrols.create_patrol_task(
            session, principal=system_actor({"patrols:manage"}), now=now - timedelta(minutes=2),
            fields=patrols.PatrolTaskFields(name=name, schedule="* * * * *", concentrator_ids=tuple(concentrator_ids)))
        [run] = await patrols.enqueue_due_patrols(session, now=now, tz=ZoneInfo(TIMEZONE),
                                                  actor=system_actor({"remote:read"}))
        await patrols.set_patrol_task_enabled(session, principal=system_actor({"patrols:manage"}), task_id=task.id or 0,
                                              enabled=False, now=now)
    while True:
        await asyncio.sleep(0.05)
        async with sessions() as session:
            state, total, read, failed, started_at, finished_at = (await session.execute(text(
                "SELECT state, meters_total, meters_read, meters_failed, started_at, finished_at FROM patrol_runs "
                "WHERE id = :id"), {"id": run.id})).one()
        if state == "finished":
            break
    if failed or read != total:
        raise SystemExit(f"{name}: {read} of {total} meters read, {failed} failed")
    after = sum(s.bytes_sent + s.bytes_received for s in statistics)
    return Patrol(total, (finished_at - started_at).total_seconds(), after - before)


async def through_the_worker(args: argparse.Namespace, url: str, simulator: SimulatorProcess,
                             line: LineSettings) -> float:
    engine = worker_engine(url, args.buses)
    sessions = session_factory(engine)
    try:
        concentrator_ids = await seed(sessions, simulator, args)
        worker = AcquisitionWorker(sessions=sessions, config=AcquireSettings(), timezone=TIMEZONE, database_url=url,
                                   holder="bench:bus", max_links=args.buses)
        serving = asyncio.create_task(worker.run())
        try:
            while len(worker.held_links) < args.buses or worker.listener is None or not worker.listener.connected:
                if serving.done():
                    serving.result()
                await asyncio.sleep(0.05)
            # A warm-up run on the last bus (statements prepared, caches filled, as in a
            # worker that has been running), then every bus waits for a wake-up.
            await worker_patrol(worker, sessions, concentrator_ids[-1:], "预热")
            await asyncio.sleep(0.5)
            one = await worker_patrol(worker, sessions, concentrator_ids[:1], "一条总线")
            theoretical = line.line_time(one.bytes_on_the_line) + one.meters * args.turnaround
            ratio = one.wall / theoretical
            print(f"worker, one bus: {one.meters} meters at {args.baud} baud 8E1, turnaround "
                  f"{args.turnaround * 1000:.0f} ms: wall {one.wall:.2f} s, theoretical {theoretical:.2f} s "
                  f"({one.bytes_on_the_line} bytes), ratio {ratio:.2f}", flush=True)
            many = await worker_patrol(worker, sessions, concentrator_ids, "全部总线")
            throughput_one, throughput_many = one.meters / one.wall, many.meters / many.wall
            print(f"worker, {args.buses} buses at once: {many.meters} meters in {many.wall:.2f} s, "
                  f"{throughput_many:.1f} meters/s vs {throughput_one:.1f} for one bus", flush=True)
            print(f"{args.buses} buses on one worker vs one bus throughput ratio={throughput_many / throughput_one:.2f} "
                  f"goal=>=25")
        finally:
            worker.stop()
            await serving
    finally:
        await engine.dispose()
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--meters", type=int, default=64, help="meters per bus")
    parser.add_argument("--buses", type=int, default=32, help="buses read at once in the second figure")
    parser.add_argument("--baud", type=int, default=2400)
    parser.add_argument("--turnaround", type=float, default=0.050, help="seconds between request and reply")
    parser.add_argument("--tcp", action="store_true", help="TCP DTUs (socket://) instead of ptys")
    parser.add_argument("--link", action="store_true", help="first measure the bare link too (no database)")
    args = parser.parse_args()
    line = LineSettings(baudrate=args.baud)
    workdir = Path(tempfile.mkdtemp(prefix="shuiwu-bench-bus-"))
    try:
        with SimulatorProcess(buses=args.buses, meters=args.meters, baud=args.baud, turnaround=args.turnaround,
                              tcp=args.tcp) as simulator:
            if args.link:
                asyncio.run(through_the_link(args, simulator, line))
            with embedded_database(workdir) as url:
                migrate(url)
                ratio = asyncio.run(through_the_worker(args, url, simulator, line))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"headline: worker patrol {args.meters} meters wall/theoretical ratio={ratio:.2f} goal=<=1.20")
    return 0


if __name__ == "__main__":
    sys.exit(main())
