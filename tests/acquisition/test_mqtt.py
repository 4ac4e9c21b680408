"""NB-IoT meters over MQTT end to end: the real Mosquitto on 127.0.0.1:1883, simulated
NB-IoT meters in their own process (CJ/T 188 frames, and JSON), real PostgreSQL with
commits, and workers that lease the broker. Every topic and the shared subscription's
group are this run's own, so runs on one broker never hear each other."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from acquisition.links import MeterOnBus
from acquisition.mqtt import BadUplink, MqttCoordinator, MqttPlan, NbMeter, broker_address, decode_uplink, downlink_topic
from acquisition.protocols import cjt188
from acquisition.settings import AcquireSettings
from acquisition.simulator import SimulatorProcess
from acquisition.worker import AcquisitionWorker
from backend.archives.models import Meter, MeterModel, MeterStatus, MeterType, PayloadFormat
from backend.auth.system import system_actor
from backend.clock import utcnow
from backend.db import transaction
from backend.remote import service as remote
from backend.remote.models import FINISHED_STATES, CommandKind, CommandState, FailureKind, RemoteCommand
from tests.factories import make_area_tree, unique

BROKER = ("127.0.0.1", 1883)
BROKER_URL = f"mqtt://{BROKER[0]}:{BROKER[1]}"


def _broker_listens() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(BROKER, timeout=0.5):
        return True
    return False


pytestmark = pytest.mark.skipif(not _broker_listens(),
                                reason=f"no MQTT broker listens on {BROKER_URL} (these tests need Mosquitto there)")

RUN = uuid.uuid4().hex[:10]
ROOT = f"shuiwu-test-{RUN}"
OPERATOR = system_actor({"remote:read", "remote:control"})
# A lease long enough that a loaded machine never lets it lapse mid-test (no test here is
# about taking a lease over).
CONFIG = AcquireSettings(lease_ttl_s=5.0, renew_interval_s=0.25, poll_interval_s=0.1, reconnect_initial_s=0.1,
                         reconnect_max_s=0.4, listen=False, mqtt_topic_filter=f"{ROOT}/+/+/up",
                         mqtt_share_group=ROOT, mqtt_reply_timeout_s=3.0)
# Meters publish only when a test tells them to, unless it sets a period.
QUIET = 3600


@pytest.fixture(scope="module")
def simulators() -> Iterator[tuple[SimulatorProcess, SimulatorProcess]]:
    """NB-IoT meters speaking CJ/T 188 frames, and others speaking JSON: two processes,
    started and stopped side by side."""
    both = (SimulatorProcess(mqtt=BROKER_URL, mqtt_prefix=f"{ROOT}/frames", meters=9, uplink_every=QUIET),
            SimulatorProcess(mqtt=BROKER_URL, mqtt_prefix=f"{ROOT}/json", meters=2, uplink_every=QUIET,
                             payload="json", first_address=500))
    with ThreadPoolExecutor(2) as pool:
        try:
            list(pool.map(SimulatorProcess.start, both))
            yield both
        finally:
            list(pool.map(SimulatorProcess.close, both))


@pytest.fixture(scope="module")
def frames(simulators: tuple[SimulatorProcess, SimulatorProcess]) -> SimulatorProcess:
    return simulators[0]


@pytest.fixture(scope="module")
def jsons(simulators: tuple[SimulatorProcess, SimulatorProcess]) -> SimulatorProcess:
    return simulators[1]


@dataclass
class Field:
    frame_meters: dict[str, int]  # address -> meter id, 24 h model
    json_meters: dict[str, int]
    hasty_meter: tuple[str, int]  # a model whose commands wait 1 s for the uplink


@pytest.fixture(scope="module")
async def field(committed_sessions: async_sessionmaker[AsyncSession], frames: SimulatorProcess,
                jsons: SimulatorProcess) -> Field:
    async with transaction(committed_sessions) as session:
        tree = await make_area_tree(session)
        area_id = tree.east_community.id or 0
        frame_model = MeterModel(vendor=unique("厂家"), name=unique("NB"), caliber=20, has_valve=True)
        json_model = MeterModel(vendor=unique("厂家"), name=unique("NB-JSON"), caliber=20, has_valve=True,
                                payload_format=PayloadFormat.json)
        hasty_model = MeterModel(vendor=unique("厂家"), name=unique("NB-1s"), caliber=20, has_valve=True, uplink_wait_s=1)
        session.add_all([frame_model, json_model, hasty_model])
        await session.flush()

        async def meter(address: str, topic: str, model: MeterModel) -> int:
            row = Meter(name=f"NB{address[-4:]}", code=unique("NB"), address=address, meter_type=MeterType.cold_water,
                        model_id=model.id, area_id=area_id, status=MeterStatus.installed, mqtt_topic=topic)
            session.add(row)
            await session.flush()
            return row.id or 0

        addresses = list(frames.topics)
        frame_meters = {address: await meter(address, frames.topics[address], frame_model) for address in addresses[:-1]}
        hasty = addresses[-1]
        json_meters = {address: await meter(address, topic, json_model) for address, topic in jsons.topics.items()}
        return Field(frame_meters, json_meters, (hasty, await meter(hasty, frames.topics[hasty], hasty_model)))


async def until(condition: Any, *, within: float = 6.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(sessions: async_sessionmaker[AsyncSession], *, holder: str, url: str = BROKER_URL,
                  connected: bool = True) -> AsyncIterator[AcquisitionWorker]:
    """A worker holding the broker's lease (and no bus), subscribed; stopped at the end."""
    worker = AcquisitionWorker(sessions=sessions, config=CONFIG, timezone="Asia/Shanghai", holder=holder, max_links=1,
                               mqtt_url=url)
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: worker.held_links == [remote.MQTT_LINK])
        if connected:
            await asyncio.wait_for(coordinator(worker).connected.wait(), 5)
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=10)


def coordinator(worker: AcquisitionWorker) -> MqttCoordinator:
    found = worker.coordinators[remote.MQTT_LINK]
    assert isinstance(found, MqttCoordinator)
    return found


async def queue(sessions: async_sessionmaker[AsyncSession], meter_id: int, kind: CommandKind) -> int:
    async with transaction(sessions) as session:
        command = await remote.queue_command(session, target=meter_id, kind=kind, params={}, issued_by=OPERATOR,
                                             now=utcnow())
        return command.id or 0


async def command_now(sessions: async_sessionmaker[AsyncSession], command_id: int) -> RemoteCommand:
    async with sessions() as session:
        return await remote.command(session, command_id=command_id)


async def state_becomes(sessions: async_sessionmaker[AsyncSession], command_id: int, *states: CommandState,
                        within: float = 6.0) -> RemoteCommand:
    deadline = time.monotonic() + within
    while True:
        command = await command_now(sessions, command_id)
        if command.state in states:
            return command
        assert time.monotonic() < deadline, f"command {command_id} still {command.state}"
        await asyncio.sleep(0.03)


async def readings_of(sessions: async_sessionmaker[AsyncSession], meter_id: int) -> list[Any]:
    async with sessions() as session:
        return list((await session.execute(text(
            "SELECT total_m3, quality, valve_state, source FROM readings WHERE meter_id = :meter_id ORDER BY read_at"),
            {"meter_id": meter_id})).all())


async def a_reading(sessions: async_sessionmaker[AsyncSession], meter_id: int, *, more_than: int = 0) -> list[Any]:
    deadline = time.monotonic() + 6
    while len(found := await readings_of(sessions, meter_id)) <= more_than:
        assert time.monotonic() < deadline, f"no new reading of meter {meter_id}"
        await asyncio.sleep(0.03)
    return found


def test_broker_urls_and_topics() -> None:
    assert broker_address("mqtt://u%40x:p@broker:1884") == broker_address("mqtt://u%40x:p@broker:1884")
    address = broker_address("mqtts://user:secret@broker.example")
    assert (address.host, address.port, address.username, address.password, address.tls) == (
        "broker.example", 8883, "user", "secret", True)
    assert broker_address("mqtt://127.0.0.1").port == 1883
    with pytest.raises(ValueError, match="scheme"):
        broker_address("http://127.0.0.1:1883")
    assert downlink_topic("shuiwu/meters/00000000000001/up") == "shuiwu/meters/00000000000001/down"
    assert downlink_topic("shuiwu/monitor/east/flow") == "shuiwu/monitor/east/flow/down"


def test_uplinks_are_read_as_their_model_says_and_refused_when_unreadable() -> None:
    meter = MeterOnBus(meter_id=1, address="00000000000042", meter_type=0x10, di_order=cjt188.DiOrder.le)
    as_frames, as_json = NbMeter(meter, "t/up", PayloadFormat.cjt188), NbMeter(meter, "t/up", PayloadFormat.json)
    status = cjt188.MeterStatus.of(valve=cjt188.ValveStatus.closed, battery_low=True)
    frame = cjt188.encode_meter_data_reply(meter.address, total=cjt188.Volume(Decimal("12.34")),
                                           settlement=cjt188.Volume(Decimal("10.00")), clock=None, status=status,
                                           di_order=cjt188.DiOrder.le)
    reading = decode_uplink(as_frames, frame).reading
    assert reading is not None and (reading.total.in_m3(), reading.status) == (Decimal("12.34"), status)

    document = decode_uplink(as_json, b'{"total_m3": "7.125", "status_bits": 261, "reply_to": 9}')
    assert document.reading is not None and document.reply_to == 9
    assert (document.reading.total.in_m3(), document.reading.status.valve, document.reading.status.bits) == (
        Decimal("7.125"), cjt188.ValveStatus.closed, 261)
    assert decode_uplink(as_json, b'{"valve": "open"}').reading is None  # a heartbeat

    other = cjt188.encode_meter_data_reply("00000000000043", total=cjt188.Volume(Decimal(1)),
                                           settlement=cjt188.Volume(Decimal(1)), clock=None, status=status,
                                           di_order=cjt188.DiOrder.le)
    for model, payload, message in (
            (as_frames, frame[:-2] + bytes([frame[-2] ^ 1, 0x16]), "BadChecksum"),
            (as_frames, other, "address 00000000000043"),
            (as_json, b"\xff{", "not JSON"),
            (as_json, b'{"total_m3": "-1"}', "out of range"),
            (as_json, b'{"total_m3": "1", "valve": "ajar"}', "valve"),
            (as_json, b'{"total_m3": true}', "not a number")):
        with pytest.raises(BadUplink, match=message):
            decode_uplink(model, payload)


async def test_uplinks_become_readings(committed_sessions: async_sessionmaker[AsyncSession], field: Field,
                                       frames: SimulatorProcess, jsons: SimulatorProcess) -> None:
    (address, meter_id), (periodic_address, periodic_meter_id) = list(field.frame_meters.items())[:2]
    json_address, json_meter_id = next(iter(field.json_meters.items()))
    async with running(committed_sessions, holder="test:uplink") as worker:
        frames.uplink(address)
        jsons.uplink(json_address)
        [(total, quality, valve, source)] = await a_reading(committed_sessions, meter_id)
        [(json_total, *json_rest)] = await a_reading(committed_sessions, json_meter_id)
        # Periodic uplinks: a meter publishing every 0.25 s; each one is ingested (readings
        # of one second are one reading: read_at has no fraction).
        ingested_before = coordinator(worker).readings
        frames.uplink_every(periodic_address, 0.25)
        try:
            await until(lambda: coordinator(worker).readings >= ingested_before + 2)
        finally:
            frames.uplink_every(periodic_address, None)
        periodic = await readings_of(committed_sessions, periodic_meter_id)

    simulated = frames.meter(address)
    assert (quality, valve, source) == ("actual", "open", "acquisition")
    assert abs(total - Decimal(str(simulated["total_m3"]))) < Decimal("0.01")  # 2 places on the wire
    assert abs(json_total - Decimal(str(jsons.meter(json_address)["total_m3"]))) < Decimal("0.001")
    assert json_rest == ["actual", "open", "acquisition"]
    assert frames.meter(periodic_address)["uplinks"] >= 2 and periodic


async def test_a_valve_close_waits_for_the_next_uplink_then_closes_the_valve(
        committed_sessions: async_sessionmaker[AsyncSession], field: Field, frames: SimulatorProcess,
        jsons: SimulatorProcess) -> None:
    address, meter_id = list(field.frame_meters.items())[2]
    json_address, json_meter_id = list(field.json_meters.items())[1]
    async with running(committed_sessions, holder="test:valve"):
        close_id = await queue(committed_sessions, meter_id, CommandKind.valve_close)
        read_id = await queue(committed_sessions, meter_id, CommandKind.read_now)
        json_close_id = await queue(committed_sessions, json_meter_id, CommandKind.valve_close)
        waiting = await state_becomes(committed_sessions, close_id, CommandState.pending_delivery)
        await state_becomes(committed_sessions, json_close_id, CommandState.pending_delivery)
        await asyncio.sleep(0.2)
        still_waiting = await command_now(committed_sessions, close_id)
        valve_before_uplink = frames.meter(address)["valve_open"]

        frames.uplink(address)
        jsons.uplink(json_address)
        closed = await state_becomes(committed_sessions, close_id, *FINISHED_STATES)
        read = await state_becomes(committed_sessions, read_id, *FINISHED_STATES)
        json_closed = await state_becomes(committed_sessions, json_close_id, *FINISHED_STATES)
        # The next uplink reports the valve closed. A reading is kept per meter and second:
        # the uplink goes out in the next second, as a device's would (hours later).
        before = len(await readings_of(committed_sessions, meter_id))
        await asyncio.sleep(1.01 - datetime.now().microsecond / 1_000_000)
        frames.uplink(address)
        after = await a_reading(committed_sessions, meter_id, more_than=before)

    assert (waiting.time_limit_s, waiting.sent_at, waiting.attempts) == (86400, None, 1)
    assert (still_waiting.state, valve_before_uplink) == (CommandState.pending_delivery, True)
    assert (closed.state, closed.reply, closed.attempts) == (CommandState.succeeded, {"valve": "closed",
                                                                                      "battery_low": False}, 1)
    assert closed.sent_at is not None and closed.claimed_by == "test:valve"
    assert frames.meter(address)["valve_open"] is False
    assert read.state is CommandState.succeeded and read.reply is not None and read.reply["address"] == address
    assert after[-1][2] == "closed"
    assert json_closed.state is CommandState.succeeded, json_closed.failure_reason
    assert json_closed.reply is not None and (json_closed.reply["ok"], json_closed.reply["valve"]) == (True, "closed")
    assert jsons.meter(json_address)["valve_open"] is False


async def test_a_command_past_its_model_time_limit_times_out_and_never_goes_down(
        committed_sessions: async_sessionmaker[AsyncSession], field: Field, frames: SimulatorProcess) -> None:
    address, meter_id = field.hasty_meter
    async with running(committed_sessions, holder="test:limit"):
        command_id = await queue(committed_sessions, meter_id, CommandKind.valve_close)
        waiting = await state_becomes(committed_sessions, command_id, CommandState.pending_delivery)
        async with transaction(committed_sessions) as session:
            early = await remote.sweep_commands(session, now=waiting.deadline - timedelta(milliseconds=1))
        async with transaction(committed_sessions) as session:  # the minute sweep, once the second is over
            swept = await remote.sweep_commands(session, now=waiting.deadline)
        frames.uplink(address)
        await a_reading(committed_sessions, meter_id)
        answered = frames.meter(address)["answered"]
        timed_out = await command_now(committed_sessions, command_id)

    assert waiting.time_limit_s == 1 and waiting.deadline - waiting.created_at == timedelta(seconds=1)
    assert command_id not in early.timed_out and command_id in swept.timed_out
    assert (timed_out.state, timed_out.failure_kind, timed_out.failure_reason) == (
        CommandState.timed_out, FailureKind.timeout, "超过命令时限")
    assert timed_out.sent_at is None
    assert (answered, frames.meter(address)["valve_open"]) == (0, True)


async def test_two_workers_sharing_the_subscription_ingest_each_uplink_once(
        committed_sessions: async_sessionmaker[AsyncSession], field: Field, frames: SimulatorProcess) -> None:
    """Both subscribed at once, as while the broker's lease changes hands."""
    plan = MqttPlan(remote.MQTT_LINK, BROKER_URL, CONFIG.mqtt_topic_filter, CONFIG.mqtt_share_group)
    workers = [AcquisitionWorker(sessions=committed_sessions, config=CONFIG, timezone="Asia/Shanghai",
                                 holder=f"test:share:{n}", mqtt_url=BROKER_URL) for n in range(2)]
    coordinators = [MqttCoordinator(plan, worker) for worker in workers]
    addresses = list(field.frame_meters)[3:7]
    for each in coordinators:
        each.start()
    try:
        await asyncio.wait_for(asyncio.gather(*(each.connected.wait() for each in coordinators)), 5)
        for _ in range(3):
            for address in addresses:
                frames.uplink(address)
        published = 3 * len(addresses)
        await until(lambda: sum(each.uplinks for each in coordinators) >= published)
        await asyncio.sleep(0.2)  # a second delivery of any of them would arrive by now
    finally:
        await asyncio.gather(*(each.stop() for each in coordinators))

    counts = [each.uplinks for each in coordinators]
    assert sum(counts) == published
    assert all(count > 0 for count in counts), counts  # the broker shares them out
    assert sum(each.readings for each in coordinators) == published


async def test_a_broker_that_is_down_is_retried_and_the_lease_released_at_the_end(
        committed_sessions: async_sessionmaker[AsyncSession], field: Field) -> None:
    async with running(committed_sessions, holder="test:down", url="mqtt://127.0.0.1:9", connected=False) as worker:
        await asyncio.sleep(0.3)  # refused at once, retried after 0.1 s, 0.2 s …
        assert not coordinator(worker).connected.is_set()
        assert worker.held_links == [remote.MQTT_LINK]
    async with committed_sessions() as session:
        leases = (await session.execute(text("SELECT holder FROM link_leases WHERE link = 'mqtt'"))).all()
    assert leases == []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _broker_on(port: int) -> subprocess.Popen[bytes]:
    broker = subprocess.Popen([MOSQUITTO or "mosquitto", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return broker
        assert time.monotonic() < deadline, "mosquitto did not start"
        time.sleep(0.02)


MOSQUITTO = shutil.which("mosquitto") or (shutil.which("mosquitto", path="/usr/sbin"))


@pytest.mark.skipif(MOSQUITTO is None, reason="no mosquitto binary to start a broker of the test's own")
async def test_the_worker_reconnects_when_its_broker_comes_back(
        committed_sessions: async_sessionmaker[AsyncSession], field: Field) -> None:
    """A broker of the test's own, stopped and started again under a subscribed worker."""
    import paho.mqtt.publish as publish

    address, meter_id = list(field.frame_meters.items())[7]
    async with committed_sessions() as session:
        topic = (await session.execute(text("SELECT mqtt_topic FROM meters WHERE id = :id"), {"id": meter_id})).scalar()
    frame = cjt188.encode_meter_data_reply(address, total=cjt188.Volume(Decimal("321.09")),
                                           settlement=cjt188.Volume(Decimal("300.00")), clock=None,
                                           status=cjt188.MeterStatus.of(valve=cjt188.ValveStatus.open))
    port = _free_port()
    broker = _broker_on(port)
    try:
        async with running(committed_sessions, holder="test:reconnect", url=f"mqtt://127.0.0.1:{port}") as worker:
            broker.terminate()
            broker.wait()
            await until(lambda: not coordinator(worker).connected.is_set())
            broker = _broker_on(port)
            await asyncio.wait_for(coordinator(worker).connected.wait(), 5)
            await asyncio.to_thread(publish.single, topic, frame, qos=1, hostname="127.0.0.1", port=port)
            [(total, *_)] = await a_reading(committed_sessions, meter_id)
    finally:
        broker.terminate()
        broker.wait()

    assert total == Decimal("321.09")


def test_acquire_refuses_a_bad_mqtt_url_before_touching_the_database(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from acquisition.worker import acquire_app

    monkeypatch.setenv("SHUIWU_MQTT_URL", "http://broker:1883")
    monkeypatch.setenv("SHUIWU_DATA_DIR", str(tmp_path / "data"))
    result = CliRunner().invoke(acquire_app, [])

    assert result.exit_code == 2
    assert "SHUIWU_MQTT_URL" in result.output and "mqtt://" in result.output
    assert not (tmp_path / "data").exists()
