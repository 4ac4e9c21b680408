"""The meter simulator as the worker sees it through a link: registers, valves, clocks,
purchases, addressing and the pace of a real bus."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from acquisition.protocols import cjt188
from acquisition.simulator import SimulatorProcess, volume_between
from acquisition.transport import BadReply, DeviceErrorReply, LineSettings, ReplyTimeout, SerialLink
from tests.acquisition.conftest import FAST_LINE, FAST_TIMING

ROOT = Path(__file__).resolve().parents[2]


def read_total(link: SerialLink, address: str) -> Decimal:
    reply = cjt188.decode(link.exchange(cjt188.encode_read(address)))
    assert isinstance(reply, cjt188.MeterData)
    return reply.total.value


def set_valve(link: SerialLink, address: str, command: cjt188.ValveCommand) -> cjt188.WriteReply:
    reply = cjt188.decode(link.exchange(cjt188.encode_valve(address, command=command)))
    assert isinstance(reply, cjt188.WriteReply)
    return reply


def test_read_gives_the_meters_register_clock_and_status(simulator: SimulatorProcess, link: SerialLink) -> None:
    address = simulator.addresses[0][0]
    before = simulator.meter(address)

    reply = cjt188.decode(link.exchange(cjt188.encode_read(address)))

    after = simulator.meter(address)
    assert isinstance(reply, cjt188.MeterData)
    assert reply.address == address
    assert reply.total.unit == cjt188.UNIT_CUBIC_METRE
    assert Decimal(str(before["total_m3"])) - Decimal("0.01") <= reply.total.value <= Decimal(str(after["total_m3"]))
    assert reply.status.valve == cjt188.ValveStatus.open
    assert reply.clock is not None
    assert datetime.fromisoformat(before["clock"]) - timedelta(seconds=1) <= reply.clock <= datetime.fromisoformat(after["clock"])


def test_closed_valve_stops_the_register_and_opening_it_lets_water_flow_again(
    simulator: SimulatorProcess, link: SerialLink
) -> None:
    closed, flowing = simulator.addresses[0][1], simulator.addresses[0][2]

    assert set_valve(link, closed, cjt188.ValveCommand.CLOSE).status == cjt188.MeterStatus.of(valve=cjt188.ValveStatus.closed)
    closed_before, flowing_before = read_total(link, closed), read_total(link, flowing)
    time.sleep(0.3)  # seven simulated hours
    assert read_total(link, closed) == closed_before
    assert read_total(link, flowing) > flowing_before

    assert set_valve(link, closed, cjt188.ValveCommand.OPEN).status == cjt188.MeterStatus.of(valve=cjt188.ValveStatus.open)
    time.sleep(0.3)
    assert read_total(link, closed) > closed_before


def test_valve_command_to_a_meter_without_a_valve_is_a_device_error_not_retried(
    simulator: SimulatorProcess, link: SerialLink
) -> None:
    address = simulator.addresses[0][3]
    simulator.set_meter(address, has_valve=False)
    try:
        with pytest.raises(DeviceErrorReply) as refused:
            link.exchange(cjt188.encode_valve(address, command=cjt188.ValveCommand.CLOSE))
    finally:
        simulator.set_meter(address, has_valve=True)
    assert refused.value.attempts == 1
    assert simulator.meter(address)["valve_open"] is True


def test_clock_write_sets_the_meters_clock(simulator: SimulatorProcess, link: SerialLink) -> None:
    address = simulator.addresses[0][0]
    set_to = datetime(2030, 1, 15, 8, 0, 0)

    reply = cjt188.decode(link.exchange(cjt188.encode_write_clock(address, clock=set_to)))

    assert isinstance(reply, cjt188.WriteReply)
    assert reply.di == cjt188.DataId.WRITE_CLOCK
    clock = datetime.fromisoformat(simulator.meter(address)["clock"])
    assert set_to <= clock < set_to + timedelta(days=2)  # the simulated clock runs a day a second


def test_a_meter_that_keeps_no_balance_refuses_a_purchase(simulator: SimulatorProcess, link: SerialLink) -> None:
    address = simulator.addresses[0][1]
    with pytest.raises(DeviceErrorReply):
        link.exchange(cjt188.encode_write_purchase(address, purchase_count=1, amount_fen=5000))
    assert simulator.meter(address)["purchased_fen"] == 0


def test_prepaid_meter_closes_its_valve_when_the_balance_runs_out_and_a_purchase_reopens_it() -> None:
    with (
        # 10 fen at 5 yuan/m³ and half a cubic metre a (simulated) day: gone in a blink.
        SimulatorProcess(meters=1, baud=FAST_LINE.baudrate, turnaround=0.002, speed=86400, daily_m3=0.5, prepaid=1,
                         opening_balance=10, price=500) as prepaid,
        SerialLink(prepaid.urls[0], line=FAST_LINE, timing=FAST_TIMING) as link,
    ):
        address = prepaid.addresses[0][0]
        time.sleep(0.2)

        def purchase_data() -> cjt188.PurchaseData:
            reply = cjt188.decode(link.exchange(cjt188.encode_read(address, di=cjt188.DataId.READ_PURCHASE)))
            assert isinstance(reply, cjt188.PurchaseData)
            return reply

        def purchase(count: int, amount_fen: int) -> int:
            reply = cjt188.decode(link.exchange(cjt188.encode_write_purchase(address, purchase_count=count, amount_fen=amount_fen)))
            assert isinstance(reply, cjt188.PurchaseReply)
            return reply.purchase_count

        run_out = purchase_data()
        assert (run_out.balance_fen, run_out.status.valve) == (0, cjt188.ValveStatus.closed)

        assert purchase(1, 100_000) == 1
        assert purchase(1, 100_000) == 1  # the worker's retry after a lost reply: not bought twice
        bought = purchase_data()
        assert (bought.purchase_count, bought.amount_fen, bought.total_bought_fen) == (1, 100_000, 100_000)
        assert 99_000 < bought.balance_fen <= 100_000
        assert bought.status.valve == cjt188.ValveStatus.open

        assert purchase(3, 500) == 1  # a count skipped: refused, the meter says which it holds
        assert purchase(2, 500) == 2
        assert purchase_data().total_bought_fen == 100_500


def test_a_meter_answers_only_its_own_address(simulator: SimulatorProcess, link: SerialLink) -> None:
    with pytest.raises(ReplyTimeout):
        link.exchange(cjt188.encode_read("99999999999999"), retries=0)


def test_broadcast_read_address_is_answered_by_the_one_meter_of_a_point_to_point_link() -> None:
    with (
        SimulatorProcess(meters=1, baud=115200, first_address=31415926535897) as single,
        SerialLink(single.urls[0], line=LineSettings(baudrate=115200), timing=FAST_TIMING) as link,
    ):
        reply = cjt188.decode(link.exchange(cjt188.encode_read_address()))
    assert isinstance(reply, cjt188.AddressReply)
    assert reply.address == "31415926535897"


def test_broadcast_read_address_on_a_shared_bus_collides(simulator: SimulatorProcess, link: SerialLink) -> None:
    with pytest.raises(BadReply):
        link.exchange(cjt188.encode_read_address(), retries=0)


def test_replies_take_the_line_time_of_both_frames_plus_the_turnaround() -> None:
    line = LineSettings(baudrate=2400)  # 8E1: 11 bits a byte
    with SimulatorProcess(meters=1, baud=2400, turnaround=0.050) as slow:
        address = slow.addresses[0][0]
        with SerialLink(slow.urls[0], line=line, timing=FAST_TIMING) as link:
            request = cjt188.encode_read(address)
            started = time.monotonic()
            reply = link.exchange(request)
            elapsed = time.monotonic() - started
    theoretical = line.line_time(len(request) + cjt188.DEFAULT_PREAMBLE + len(reply)) + 0.050
    assert theoretical == pytest.approx(0.302, abs=0.001)
    assert theoretical - 0.005 <= elapsed <= theoretical * 1.25


def test_daily_profile_draws_more_in_the_morning_and_evening_than_at_night() -> None:
    day = datetime(2026, 5, 1)

    def hours(start: int, end: int) -> float:
        return volume_between(day + timedelta(hours=start), day + timedelta(hours=end), daily_m3=1.0)

    assert volume_between(day, day + timedelta(days=1), daily_m3=1.0) == pytest.approx(1.0)
    assert hours(6, 9) > 3 * hours(0, 3)
    assert hours(18, 21) > 3 * hours(0, 3)


def test_command_prints_the_port_and_takes_faults_from_the_command_line() -> None:
    command = [sys.executable, "-m", "acquisition.simulator", "meters", "--meters", "2", "--baud", str(FAST_LINE.baudrate),
               "--turnaround", "0.002", "--meter-fault", "00000000000002=drop"]
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment) as process:
        assert process.stdout is not None
        port = process.stdout.readline().strip()
        try:
            assert port.startswith("/dev/pts/")
            with SerialLink(port, line=FAST_LINE, timing=FAST_TIMING) as link:
                assert cjt188.decode(link.exchange(cjt188.encode_read("00000000000001"))).address == "00000000000001"
                with pytest.raises(ReplyTimeout):
                    link.exchange(cjt188.encode_read("00000000000002"), retries=0)
        finally:
            process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert process.stderr is not None
        assert "2 meters 00000000000001–00000000000002" in process.stderr.read()
