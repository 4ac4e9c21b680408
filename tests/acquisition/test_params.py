"""Meter parameters (读取参数 / 设置参数) and a meter model's wire settings.

In process: ``carry_out`` against a simulated meter behind a recording link (what goes on
the wire, with which preamble and timeout). End to end: the worker against the meter
simulator on a pty, with models whose preamble is 0, 2 and 4 FE bytes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import datetime
from typing import Any, cast

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from acquisition.commands import CommandOrder, carry_out
from acquisition.links import MeterOnBus, meter_on_bus
from acquisition.protocols import cjt188
from acquisition.simulator import SimulatedMeter, SimulatorProcess
from acquisition.transport import AsyncLink, DeviceErrorReply
from backend.archives.models import Concentrator, ConnectionKind, MeterModel
from backend.db import transaction
from backend.errors import DomainError, ErrorCode
from backend.remote import service as remote
from backend.remote.models import CommandKind, CommandState, FailureKind, RemoteCommand
from tests.acquisition.test_worker import BAUD, _meter, finished, queue, rows, running
from tests.factories import make_area_tree, unique

ADDRESS = "00000000000042"
NOW = datetime(2026, 12, 8, 10, 0, 0)
PRICES = {"price_1_fen": 280, "step_1_m3": 180, "price_2_fen": 390, "step_2_m3": 260, "price_3_fen": 840,
          "prices_from_day": 1}
PRICE_TABLE = {"prices_fen": [280, 390, 840], "steps_m3": [180, 260]}


class RecordingLink:
    """A link to one in-process simulated meter that keeps what was sent and with which timeout."""

    def __init__(self, meter: SimulatedMeter) -> None:
        self.meter = meter
        self.sent: list[tuple[bytes, float | None]] = []

    async def exchange(self, request: bytes, *, timeout: float | None = None, retries: int | None = None) -> bytes:  # noqa: ASYNC109
        self.sent.append((request, timeout))
        reply = self.meter.answer(cjt188.decode(request), now=NOW, di_order=cjt188.DiOrder.be, preamble=2)
        assert reply is not None
        decoded = cjt188.decode(reply)
        if isinstance(decoded, cjt188.ErrorReply):
            raise DeviceErrorReply("error reply", status=decoded.status.bits)
        return reply


def simulated(**values: Any) -> SimulatedMeter:
    return SimulatedMeter(address=ADDRESS, total_m3=12.5, daily_m3=0.0, settlement_m3=10.0, advanced_to=NOW, **values)


def on_bus(**settings: Any) -> MeterOnBus:
    return MeterOnBus(meter_id=1, address=ADDRESS, meter_type=0x10, di_order=cjt188.DiOrder.be, **settings)


async def carried(link: RecordingLink, kind: CommandKind, params: dict[str, Any], meter: MeterOnBus | None = None,
                  ) -> Any:
    order = CommandOrder(command_id=1, kind=kind, params=params, attempt=1, seconds_left=30.0)
    return await carry_out(cast(AsyncLink, link), order, meter or on_bus(), response_timeout=1.0, retries=0,
                           now_local=NOW)


async def test_read_params_reads_what_is_named_and_by_default_what_set_params_writes() -> None:
    link = RecordingLink(simulated(settlement_day=20, reading_day=5, key_version=3))

    default = await carried(link, CommandKind.read_params, {})
    named = await carried(link, CommandKind.read_params, {"names": ["key_version"]})

    assert default.succeeded and default.reply == {"settlement_day": 20, "reading_day": 5, "price_table": {
        "prices_fen": [500, 500, 500], "steps_m3": [999_998, 999_999]}}
    assert named.succeeded and named.reply == {"key_version": 3}
    assert [cjt188.decode(sent).di for sent, _ in link.sent] == [0x8103, 0x8104, 0x8102, 0x8106]
    assert cjt188.decode(link.sent[-1][0]).control == cjt188.Control.READ_KEY_VERSION


async def test_set_params_writes_each_group_and_reads_it_back() -> None:
    meter = simulated()
    link = RecordingLink(meter)

    outcome = await carried(link, CommandKind.set_params, {"settlement_day": 20, **PRICES})

    assert outcome.succeeded and outcome.reply == {"settlement_day": 20, "price_table": PRICE_TABLE}
    assert [cjt188.decode(sent).di for sent, _ in link.sent] == [0xA011, 0x8103, 0xA010, 0x8102]
    assert (meter.settlement_day, meter.price_table, meter.prices_from_day) == (
        20, cjt188.PriceTable((280, 390, 840), (180, 260)), 1)


async def test_set_params_fails_with_what_differs_when_the_meter_keeps_the_old_value() -> None:
    link = RecordingLink(simulated(reading_day=7, keeps_params=False))

    outcome = await carried(link, CommandKind.set_params, {"reading_day": 10})

    assert (outcome.succeeded, outcome.failure_kind, outcome.retry) == (False, FailureKind.device_error, False)
    assert outcome.reply == {"written": {}, "read_back": {"reading_day": 7}}
    assert outcome.failure_reason == ("回读不符: 抄表日写入 10, 水表为 7 / read-back differs: reading_day written 10, "
                                      "the meter holds 7")


async def test_a_refused_write_and_an_unkept_parameter_fail_as_device_errors() -> None:
    # The simulated meter refuses days 29-31; the worker's catalog never sends them, a maker's meter might refuse others.
    refused = await carried(RecordingLink(simulated()), CommandKind.set_params, {"settlement_day": 30})
    # A meter keeping no balance answers 8105 with an error reply.
    unkept = await carried(RecordingLink(simulated()), CommandKind.read_params, {"names": ["settlement_day", "purchase"]})

    assert (refused.succeeded, refused.failure_kind) == (False, FailureKind.device_error)
    assert refused.failure_reason is not None and refused.failure_reason.startswith("水表拒绝写结算日 / the meter refused")
    assert (unkept.succeeded, unkept.reply) == (False, {"settlement_day": 1})
    assert unkept.failure_reason is not None and "purchase" in unkept.failure_reason


@pytest.mark.parametrize("preamble", [0, 4])
async def test_requests_carry_the_models_preamble_and_response_timeout(preamble: int) -> None:
    link = RecordingLink(simulated())

    outcome = await carried(link, CommandKind.read_now, {}, on_bus(preamble=preamble, response_timeout=0.3))
    default = await carried(link, CommandKind.read_now, {}, on_bus())

    assert outcome.succeeded and default.succeeded
    (request, timeout), (default_request, default_timeout) = link.sent
    assert request[:preamble + 1] == b"\xfe" * preamble + b"\x68" and (timeout, default_timeout) == (0.3, 1.0)
    assert default_request.startswith(b"\xfe\xfe\x68")


async def test_wire_decimals_read_the_register_with_the_models_places() -> None:
    link = RecordingLink(simulated())  # the simulator sends the standard's 2 places: 12.50 m³

    outcome = await carried(link, CommandKind.read_now, {}, on_bus(volume_decimals=3))

    assert outcome.succeeded and outcome.reading is not None
    assert str(outcome.reading.total.value) == "1.250"


# ---------------------------------------------------------------------------- end to end


@dataclasses.dataclass
class Bus:
    meters: dict[str, int]  # address -> meter id, one per model
    preambles: dict[str, int]  # address -> its model's preamble


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(buses=1, meters=3, baud=BAUD, turnaround=0.002, first_address=700) as running_simulator:
        yield running_simulator


@pytest.fixture(scope="module")
async def bus(committed_sessions: async_sessionmaker[AsyncSession], simulator: SimulatorProcess) -> Bus:
    """One serial concentrator at the simulator's pty; its three meters of models waking
    them with 2, 0 and 4 FE bytes (the last with its own response timeout)."""
    async with transaction(committed_sessions) as session:
        tree = await make_area_tree(session)
        area_id = tree.east_community.id or 0
        concentrator = Concentrator(name="参数总线", region_code="3301", terminal_address=60_000,
                                    connection=ConnectionKind.serial, serial_url=simulator.urls[0], baudrate=BAUD,
                                    parity="E", area_id=area_id)
        session.add(concentrator)
        meters, preambles = {}, {}
        for address, (preamble, timeout_ms) in zip(simulator.addresses[0], [(2, None), (0, None), (4, 300)],
                                                    strict=True):
            model = MeterModel(vendor=unique("厂家"), name=unique("型号"), caliber=20, has_valve=True,
                               preamble_len=preamble, response_timeout_ms=timeout_ms)
            session.add(model)
            await session.flush()
            meters[address] = await _meter(session, address, model, concentrator, area_id)
            preambles[address] = preamble
    return Bus(meters, preambles)


async def test_the_worker_reads_params_and_sets_a_settlement_day_with_read_back(
        committed_sessions: async_sessionmaker[AsyncSession], bus: Bus, simulator: SimulatorProcess) -> None:
    address, meter_id = next(iter(bus.meters.items()))
    async with running(committed_sessions, holder="test:params", max_links=1):
        read, setting = await finished(committed_sessions, *[
            await queue(committed_sessions, meter_id, kind, params) for kind, params in [
                (CommandKind.read_params, {"names": ["settlement_day", "reading_day"]}),
                (CommandKind.set_params, {"settlement_day": 20, **PRICES}),
            ]])
        # The follow-up read of what was set, queued when the setting succeeded.
        follow_up = await _follow_up(committed_sessions, setting)
        (follow_up,) = await finished(committed_sessions, follow_up.id or 0)

    assert (read.state, read.reply) == (CommandState.succeeded, {"settlement_day": 1, "reading_day": 1})
    assert (setting.state, setting.reply) == (CommandState.succeeded, {"settlement_day": 20, "price_table": PRICE_TABLE})
    assert (follow_up.state, follow_up.reply) == (CommandState.succeeded,
                                                  {"settlement_day": 20, "price_table": PRICE_TABLE})
    held = simulator.meter(address)
    assert (held["settlement_day"], held["price_table"]) == (20, {**PRICE_TABLE, "from_day": 1})


async def _follow_up(sessions: async_sessionmaker[AsyncSession], setting: RemoteCommand) -> RemoteCommand:
    (found,) = await rows(sessions, "SELECT id FROM remote_commands WHERE follows_id = :id", id=setting.id)
    async with sessions() as session:
        return await remote.command(session, command_id=found.id)


async def test_a_bad_parameter_is_refused_before_anything_is_queued(
        committed_sessions: async_sessionmaker[AsyncSession], bus: Bus) -> None:
    meter_id = next(iter(bus.meters.values()))
    before = await rows(committed_sessions, "SELECT count(*) AS n FROM remote_commands")

    for params, field in (({"settlement_day": 31}, "params.settlement_day"),
                          ({**PRICES, "step_2_m3": 100}, "params.step_2_m3")):
        with pytest.raises(DomainError) as refused:
            await queue(committed_sessions, meter_id, CommandKind.set_params, params)
        assert (refused.value.code, refused.value.field) == (ErrorCode.REMOTE_PARAMS_INVALID, field)

    assert await rows(committed_sessions, "SELECT count(*) AS n FROM remote_commands") == before


async def test_models_with_preamble_0_and_4_are_read_by_the_worker(
        committed_sessions: async_sessionmaker[AsyncSession], bus: Bus, simulator: SimulatorProcess) -> None:
    odd = {address: meter_id for address, meter_id in bus.meters.items() if bus.preambles[address] != 2}
    async with committed_sessions() as session:
        settings = {address: await meter_on_bus(session, meter_id) for address, meter_id in odd.items()}
    assert sorted((on.preamble, on.response_timeout) for on in settings.values() if on) == [(0, None), (4, 0.3)]

    async with running(committed_sessions, holder="test:preambles", max_links=1):
        reads = await finished(committed_sessions, *[
            await queue(committed_sessions, meter_id, CommandKind.read_now) for meter_id in odd.values()])

    assert [command.state for command in reads] == [CommandState.succeeded] * 2
    for address, command in zip(odd, reads, strict=True):
        assert command.reply is not None and command.reply["address"] == address
        assert simulator.meter(address)["answered"] >= 1
