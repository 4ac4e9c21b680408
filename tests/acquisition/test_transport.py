"""The link's exchange against a simulated bus with faults: each fault is seen as its
failure kind, retried where retrying helps, and never passed off as a reply."""

from __future__ import annotations

import asyncio
import os
import select
import threading
import tty

import pytest

from acquisition.protocols import cjt188
from acquisition.simulator import ALWAYS, Fault, SimulatorProcess
from acquisition.transport import (
    AsyncLink,
    BadReply,
    FailureKind,
    LinkDown,
    LinkFailure,
    ReplyTimeout,
    SerialLink,
    stamped_with_serial_number,
)
from tests.acquisition.conftest import FAST_LINE, FAST_TIMING


def read_meter(link: SerialLink, address: str, *, retries: int | None = None) -> cjt188.MeterData:
    reply = cjt188.decode(link.exchange(cjt188.encode_read(address), retries=retries))
    assert isinstance(reply, cjt188.MeterData)
    return reply


@pytest.mark.parametrize(
    ("fault", "failure", "kind"),
    [
        (Fault.drop, ReplyTimeout, FailureKind.timeout),
        (Fault.late, ReplyTimeout, FailureKind.timeout),
        (Fault.corrupt, BadReply, FailureKind.bad_frame),
        (Fault.wrong_address, BadReply, FailureKind.bad_frame),
    ],
)
def test_a_fault_on_every_reply_fails_the_exchange_with_its_kind_after_the_retries(
    simulator: SimulatorProcess, link: SerialLink, fault: Fault, failure: type[LinkFailure], kind: FailureKind
) -> None:
    address = simulator.addresses[0][0]
    simulator.inject(address, fault, times=ALWAYS)
    answered_before = simulator.meter(address)["answered"]

    with pytest.raises(failure) as failed:
        link.exchange(cjt188.encode_read(address), retries=1)

    assert failed.value.kind == kind
    assert failed.value.attempts == 2
    assert simulator.meter(address)["answered"] == answered_before + 2


@pytest.mark.parametrize("fault", [Fault.drop, Fault.corrupt, Fault.wrong_address])
def test_a_fault_on_one_reply_is_retried_and_the_next_reply_read(
    simulator: SimulatorProcess, link: SerialLink, fault: Fault
) -> None:
    address = simulator.addresses[0][1]
    simulator.inject(address, fault, times=1)
    attempts_before = link.statistics.attempts

    reply = read_meter(link, address, retries=1)

    assert reply.address == address
    assert link.statistics.attempts == attempts_before + 2


def test_a_late_reply_is_not_taken_for_the_retrys_answer(simulator: SimulatorProcess, link: SerialLink) -> None:
    address = simulator.addresses[0][2]
    simulator.inject(address, Fault.late, times=1)
    stale_before = link.statistics.stale_replies_skipped

    request = cjt188.encode_read(address)
    reply = cjt188.decode(link.exchange(request, retries=1))

    # The first attempt's reply came during the second attempt, with the first one's SER.
    assert link.statistics.stale_replies_skipped == stale_before + 1
    assert reply.ser == link.statistics.attempts % 256


def test_the_echo_of_our_request_is_skipped(simulator: SimulatorProcess, link: SerialLink) -> None:
    address = simulator.addresses[0][3]
    simulator.inject(address, Fault.echo, times=ALWAYS)
    echoes_before = link.statistics.echoes_skipped

    reply = read_meter(link, address, retries=0)

    assert reply.address == address
    assert link.statistics.echoes_skipped == echoes_before + 1


def test_probabilistic_faults_leave_every_meter_read_with_retries(simulator: SimulatorProcess, link: SerialLink) -> None:
    simulator.set_probability(Fault.drop, 0.1)
    simulator.set_probability(Fault.corrupt, 0.3)
    failures_before = dict(link.statistics.failures)
    attempts_before = link.statistics.attempts
    patrol = simulator.addresses[0] * 3

    readings = [read_meter(link, address, retries=4) for address in patrol]

    assert [reading.address for reading in readings] == patrol
    assert link.statistics.failures == failures_before
    assert link.statistics.attempts - attempts_before > len(patrol)  # some were retried


def test_a_dtu_that_drops_the_connection_mid_exchange_is_link_down_and_the_next_exchange_reconnects(
    simulator: SimulatorProcess, link: SerialLink
) -> None:
    if not simulator.urls[0].startswith("socket://"):
        pytest.skip("a pty that vanishes does not come back: test_a_pty_that_vanishes_mid_exchange_is_link_down")
    address = simulator.addresses[0][0]
    simulator.vanish(bus=0)

    with pytest.raises(LinkDown) as failed:
        link.exchange(cjt188.encode_read(address))

    assert failed.value.attempts == 1
    assert not link.is_open
    assert read_meter(link, address).address == address


def test_a_pty_that_vanishes_mid_exchange_is_link_down() -> None:
    with SimulatorProcess(meters=1, baud=FAST_LINE.baudrate, turnaround=0.002) as vanishing:
        port, address = vanishing.urls[0], vanishing.addresses[0][0]
        with SerialLink(port, line=FAST_LINE, timing=FAST_TIMING) as link:
            assert read_meter(link, address).address == address
            vanishing.vanish(bus=0)

            with pytest.raises(LinkDown) as failed:
                link.exchange(cjt188.encode_read(address))
            assert failed.value.kind == FailureKind.link_down
            assert not os.path.exists(port)

            with pytest.raises(LinkDown):  # reopening finds no port
                link.exchange(cjt188.encode_read(address))


def test_a_port_that_does_not_exist_is_link_down() -> None:
    with pytest.raises(LinkDown):
        SerialLink("/dev/pts/999999", line=FAST_LINE, timing=FAST_TIMING).open()


def test_each_attempt_carries_its_own_serial_number(simulator: SimulatorProcess, link: SerialLink) -> None:
    request = cjt188.encode_read(simulator.addresses[0][0], ser=0)
    first = cjt188.decode(link.exchange(request))
    second = cjt188.decode(link.exchange(request))

    assert second.ser == (first.ser + 1) % 256
    stamped = stamped_with_serial_number(request, 0x42)
    assert cjt188.decode(stamped).ser == 0x42  # checksum redone, preamble kept
    assert stamped[: cjt188.DEFAULT_PREAMBLE] == request[: cjt188.DEFAULT_PREAMBLE]


async def test_async_exchanges_run_on_the_links_own_thread(simulator: SimulatorProcess) -> None:
    link = AsyncLink.open_url(simulator.urls[0], line=FAST_LINE, timing=FAST_TIMING)
    threads: set[str] = set()
    original = link.link.exchange

    def recording_exchange(request: bytes, **options: object) -> bytes:
        threads.add(threading.current_thread().name)
        return original(request, **options)  # type: ignore[arg-type]

    link.link.exchange = recording_exchange  # type: ignore[method-assign]
    try:
        replies = await asyncio.gather(
            *(link.exchange(cjt188.encode_read(address), timeout=0.2) for address in simulator.addresses[0])
        )
    finally:
        await link.aclose()

    assert [cjt188.decode(reply).address for reply in replies] == simulator.addresses[0]
    assert len(threads) == 1
    assert next(iter(threads)).startswith(f"link {simulator.urls[0]}")


def answered_with(answer: bytes) -> LinkFailure:
    """What the link makes of ``answer`` sent back on a bare pty after each request."""
    master, slave = os.openpty()
    tty.setraw(master)
    stop = threading.Event()

    def respond() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready and os.read(master, 4096):
                os.write(master, answer)

    responder = threading.Thread(target=respond, daemon=True)
    responder.start()
    try:
        with SerialLink(os.ttyname(slave), line=FAST_LINE, timing=FAST_TIMING) as link, pytest.raises(LinkFailure) as failed:
            link.exchange(cjt188.encode_read("00000000000001"), retries=0)
        return failed.value
    finally:
        stop.set()
        responder.join()
        os.close(master)
        os.close(slave)


def test_line_noise_without_a_frame_is_a_bad_frame_not_a_timeout() -> None:
    assert answered_with(b"\xfe\xfe\x01\x02\x03\x99").kind == FailureKind.bad_frame


def test_a_reply_cut_short_is_a_bad_frame() -> None:
    whole = cjt188.encode_address_reply("00000000000001", ser=1)
    failure = answered_with(whole[:-4])
    assert failure.kind == FailureKind.bad_frame
    assert "cut after" in failure.reason
