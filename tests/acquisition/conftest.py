"""Simulated meters for the acquisition tests: one simulator process per module and kind of
port (a pty, and a TCP port acting as a DTU), at a fast baud rate so a module takes seconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from acquisition.simulator import SimulatorProcess
from acquisition.transport import ExchangeTiming, LineSettings, SerialLink

FAST_LINE = LineSettings(baudrate=115200)
# Generous gaps: the simulator is another process on a shared 2-core machine.
FAST_TIMING = ExchangeTiming(response_timeout=0.1, inter_byte_timeout=0.1, retries=2)
LATE_BY = 0.15  # later than FAST_TIMING's response timeout, sooner than two of them

SIMULATOR_OPTIONS = {
    "meters": 4,
    "baud": FAST_LINE.baudrate,
    "turnaround": 0.002,
    "late_by": LATE_BY,
    # A simulated day per second and 10 m³ a day: a register visibly moves in 0.2 s.
    "speed": 86400,
    "daily_m3": 10,
}


@pytest.fixture(scope="module", params=["pty", "tcp"])
def simulator(request: pytest.FixtureRequest) -> Iterator[SimulatorProcess]:
    with SimulatorProcess(tcp=request.param == "tcp", **SIMULATOR_OPTIONS) as running:
        yield running


@pytest.fixture(scope="module")
def module_link(simulator: SimulatorProcess) -> Iterator[SerialLink]:
    # One per module: pyserial sleeps 0.3 s when it closes a socket:// port.
    with SerialLink(simulator.urls[0], line=FAST_LINE, timing=FAST_TIMING) as opened:
        yield opened


@pytest.fixture
def link(simulator: SimulatorProcess, module_link: SerialLink) -> SerialLink:
    """The module's link to the first bus, with no faults left from an earlier test."""
    simulator.clear_faults()
    return module_link
