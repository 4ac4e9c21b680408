"""A patrol of simulated meter buses through the link's exchange (issue 20, "Performance").

The meter simulator (``shuiwu simulate meters``, a process of its own) serves ``--buses``
buses of ``--meters`` CJ/T 188 meters each, on ptys (or TCP DTUs with ``--tcp``), at
``--baud`` 8E1 with a ``--turnaround`` between request and reply, pacing every byte as the
line would. The worker's side is :class:`acquisition.transport.AsyncLink`: one link, and
one thread, per bus, awaited from one event loop as the worker will.

1. **One bus**: every meter of bus 0 read once (``901F``), one after the other (a
   patrol). Its theoretical time is ``Σ over meters ((request bytes + reply bytes) × 11 /
   baud + turnaround)``, with the bytes the link actually sent and received (preambles
   included). Printed: wall, theoretical and their ratio (goal ≤ 1.20, the headline).
2. **All buses at once**: the same patrol on every bus concurrently. Printed: meters read
   per second against the one bus's (goal ≥ 25× for 32 buses).

Checked: every meter answers with its own address and no exchange fails. The last line is
``headline: bus patrol 64 meters wall/theoretical ratio=<x.xx> goal=<=1.20``. About 45 s at
the defaults; on the shared 2-core machines compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass

from acquisition.protocols import cjt188
from acquisition.simulator import SimulatorProcess
from acquisition.transport import AsyncLink, ExchangeTiming, LineSettings


@dataclass
class Patrol:
    meters: int
    wall: float
    bytes_on_the_line: int


async def patrol(link: AsyncLink, addresses: list[str]) -> int:
    """Read every meter once; the bytes sent and received on the way."""
    statistics = link.link.statistics
    before = statistics.bytes_sent + statistics.bytes_received
    for address in addresses:
        reply = cjt188.decode(await link.exchange(cjt188.encode_read(address)))
        if not isinstance(reply, cjt188.MeterData) or reply.address != address:
            raise SystemExit(f"meter {address} answered {reply}")
    return statistics.bytes_sent + statistics.bytes_received - before


async def timed_patrols(links: list[AsyncLink], addresses: list[list[str]]) -> Patrol:
    started = time.perf_counter()
    byte_counts = await asyncio.gather(*(patrol(link, bus) for link, bus in zip(links, addresses, strict=True)))
    return Patrol(sum(len(bus) for bus in addresses), time.perf_counter() - started, sum(byte_counts))


async def run(args: argparse.Namespace) -> int:
    line = LineSettings(baudrate=args.baud)
    timing = ExchangeTiming(response_timeout=1.0, retries=0)
    with SimulatorProcess(
        buses=args.buses, meters=args.meters, baud=args.baud, turnaround=args.turnaround, tcp=args.tcp
    ) as simulator:
        links = [AsyncLink.open_url(url, line=line, timing=timing) for url in simulator.urls]
        try:
            for link in links:
                link.link.open()
            one = await timed_patrols(links[:1], simulator.addresses[:1])
            theoretical = line.line_time(one.bytes_on_the_line) + one.meters * args.turnaround
            ratio = one.wall / theoretical
            print(f"one bus: {one.meters} meters at {args.baud} baud 8E1, turnaround {args.turnaround * 1000:.0f} ms: "
                  f"wall {one.wall:.2f} s, theoretical {theoretical:.2f} s ({one.bytes_on_the_line} bytes), ratio {ratio:.2f}")

            many = await timed_patrols(links, simulator.addresses)
            throughput_one, throughput_many = one.meters / one.wall, many.meters / many.wall
            scaling = throughput_many / throughput_one
            print(f"{args.buses} buses at once: {many.meters} meters in {many.wall:.2f} s, "
                  f"{throughput_many:.1f} meters/s vs {throughput_one:.1f} for one bus")
            failures = sum(sum(link.link.statistics.failures.values()) for link in links)
            if failures:
                print(f"{failures} exchanges failed", file=sys.stderr)
                return 1
            print(f"{args.buses} buses vs one throughput ratio={scaling:.2f} goal=>=25")
            print(f"headline: bus patrol {one.meters} meters wall/theoretical ratio={ratio:.2f} goal=<=1.20")
        finally:
            for link in links:
                await link.aclose()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--meters", type=int, default=64, help="meters per bus")
    parser.add_argument("--buses", type=int, default=32, help="buses read at once in the second figure")
    parser.add_argument("--baud", type=int, default=2400)
    parser.add_argument("--turnaround", type=float, default=0.050, help="seconds between request and reply")
    parser.add_argument("--tcp", action="store_true", help="TCP DTUs (socket://) instead of ptys")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
