"""NB-IoT meters over MQTT: the broker as a link (``mqtt``) with its own lease.

**The link.** One broker per installation, named by ``SHUIWU_MQTT_URL``
(``mqtt://[user:password@]host[:port]``, ``mqtts://`` for TLS). Its lease is the link
``mqtt`` (``backend.remote.service.MQTT_LINK``), the link every command of a meter with an
MQTT topic travels on, so no concentrator record stands for it. The worker that holds the
lease runs one :class:`MqttCoordinator`: it connects, subscribes to the uplink topics as a
member of the shared subscription ``$share/<group>/<filter>`` (the broker hands each
uplink to one member only, so while the lease changes hands, the old holder not yet gone
and the new one subscribed, no uplink is ingested twice), and claims the queued commands
of NB-IoT meters, which wait in ``pending_delivery`` for the device's next uplink.

**Topics.** A meter's ``mqtt_topic`` (archives) is its uplink topic, one the filter
matches (default ``shuiwu/meters/+/up``, so ``shuiwu/meters/<address>/up``); the device
listens on the same topic with a last level ``up`` replaced by ``down`` (otherwise the
uplink topic + ``/down``): :func:`downlink_topic`. Uplinks of a topic no meter has are
ignored.

**Payloads**, per meter model (``payload_format``): ``cjt188``, the frame the meter would
answer on a bus (a periodic uplink is a ``901F`` reply, ``81``; a command goes down as the
bus request and comes back as its reply); or ``json``, documented in docs/drivers.md
("NB-IoT meters over MQTT"): an uplink ``{"total_m3": "12.345", "valve": "open", …}``, a
downlink ``{"id": 17, "command": "valve_close", "params": {}}``, a reply ``{"reply_to": 17,
"ok": true, "valve": "closed", …}``.

**An uplink** that carries a reading is ingested as a serial reading is (quality actual,
valve state and status bits), then: the meter's ``read_now`` commands waiting for it
succeed with that reading, and its other waiting commands go down one at a time while the
device listens — ``mark_sent``, the downlink, the device's answer within
``SHUIWU_ACQUIRE_MQTT_REPLY_TIMEOUT_S`` — and are recorded as bus commands are
(:meth:`AcquisitionWorker.record`; a CJ/T 188 meter's command is carried out by
:func:`acquisition.commands.carry_out` itself, over :class:`_Downlink`, so a valve command
is sent once per claim and a retried one reads the valve first). An answer that never
comes is a timeout: back to the queue while attempts remain, to go down at a later uplink.
An uplink that is not readable is a read failure of its meter (通讯失败 counts it), never a
reading.

**Time limits.** An NB-IoT command waits its model's ``uplink_wait_s`` (24 h by default)
or a longer time limit given; past its deadline the sweep times it out with its reason.

**Connection.** Lost or refused: reconnect with a doubling pause (the acquire settings'
reconnect backoff), the waiting commands stay claimed meanwhile. Stopping (the lease lost,
SIGTERM) cancels a delivery in hand — its command stays ``sent`` and goes back to the
queue with the lease, to be read before it is sent again — and disconnects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from acquisition.commands import CommandOrder, Outcome, carry_out
from acquisition.coordinator import Coordinator
from acquisition.links import WIRE_COLUMNS, MeterOnBus, on_bus
from acquisition.protocols import cjt188
from acquisition.transport import DeviceErrorReply, FailureKind, LinkDown, ReplyTimeout
from backend.archives.models import Meter, MeterModel, PayloadFormat
from backend.db import transaction
from backend.events.listener import Backoff, wait_any
from backend.readings.alarms.service import record_read_failures
from backend.readings.service import ingest_readings
from backend.remote import service as remote
from backend.remote.errors import CommandNotHeld
from backend.remote.models import CommandKind

if TYPE_CHECKING:
    from acquisition.worker import AcquisitionWorker

log = logging.getLogger("shuiwu.acquire.mqtt")

# Queued NB-IoT commands claimed per round (each only becomes pending_delivery).
CLAIM_BATCH = 500
# Stopping lets the uplink, claim or result in hand finish (a transaction cut short by a
# cancellation could leave its connection busy); past this it cancels.
STOP_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class MqttPlan:
    """The broker as the worker serves it: the link name, the URL and what to subscribe to."""

    link: str
    url: str
    topic_filter: str
    share_group: str

    @property
    def subscription(self) -> str:
        return f"$share/{self.share_group}/{self.topic_filter}"


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool


def broker_address(url: str) -> BrokerAddress:
    """``mqtt://[user:password@]host[:port]`` (1883) or ``mqtts://`` (8883, TLS); ``tcp://``
    is read as ``mqtt://``. A bad URL is a ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp"):
        raise ValueError(f"MQTT URL {url!r}: the scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError(f"MQTT URL {url!r} names no host")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(parts.hostname, parts.port or (8883 if tls else 1883),
                         unquote(parts.username) if parts.username else None,
                         unquote(parts.password) if parts.password else None, tls)


def downlink_topic(uplink_topic: str) -> str:
    """Where a meter listens: its uplink topic with a last level ``up`` made ``down``, or
    the uplink topic + ``/down``."""
    head, _, last = uplink_topic.rpartition("/")
    if last == "up" and head:
        return f"{head}/down"
    return f"{uplink_topic}/down"


@dataclass(frozen=True, slots=True)
class NbMeter:
    """An NB-IoT meter as the coordinator needs it: the frame settings, its topics, its payloads."""

    meter: MeterOnBus
    topic: str
    payload_format: PayloadFormat

    @property
    def meter_id(self) -> int:
        return self.meter.meter_id

    @property
    def downlink(self) -> str:
        return downlink_topic(self.topic)


async def nb_meter_by_topic(session: AsyncSession, topic: str) -> NbMeter | None:
    """The meter whose ``mqtt_topic`` is ``topic`` (the lowest id, should two share one)."""
    row = (await session.execute(
        select(col(Meter.id), col(MeterModel.payload_format), *WIRE_COLUMNS)
        .outerjoin(MeterModel, col(MeterModel.id) == col(Meter.model_id))
        .where(col(Meter.mqtt_topic) == topic).order_by(col(Meter.id)).limit(1))).first()
    if row is None:
        return None
    return NbMeter(on_bus(row[0] or 0, *row[2:]), topic, PayloadFormat(row[1] or PayloadFormat.cjt188))


# --------------------------------------------------------------------------- payloads


class BadUplink(ValueError):
    """An uplink that is neither a frame nor the JSON its model says (one line)."""


@dataclass(frozen=True, slots=True)
class Uplink:
    """What one message said: a reading (a ``901F`` frame, or JSON with a total), the frame
    as decoded (CJ/T 188 models), the JSON document and the command it answers (JSON)."""

    raw: bytes
    reading: cjt188.MeterData | None
    frame: cjt188.Frame | None = None
    document: Mapping[str, Any] | None = None

    @property
    def reply_to(self) -> int | None:
        value = self.document.get("reply_to") if self.document is not None else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None


def decode_uplink(meter: NbMeter, payload: bytes) -> Uplink:
    """One message of ``meter`` as its model's payload format reads it; :class:`BadUplink`
    when it cannot be read (a frame's checksum, a JSON field, another meter's address)."""
    if meter.payload_format is PayloadFormat.json:
        try:
            document = json.loads(payload)
        except (UnicodeDecodeError, ValueError) as error:
            raise BadUplink(f"not JSON: {error}") from None
        if not isinstance(document, dict):
            raise BadUplink("not a JSON object")
        reading = json_reading(meter.meter, document) if "total_m3" in document else None
        return Uplink(payload, reading, document=document)
    try:
        frame = cjt188.decode(payload, di_order=meter.meter.di_order, volume_decimals=meter.meter.volume_decimals)
    except cjt188.FrameError as error:
        raise BadUplink(f"{type(error).__name__}: {error}") from None
    if frame.address != meter.meter.address:
        raise BadUplink(f"frame of address {frame.address} on the topic of {meter.meter.address}")
    reading = frame if isinstance(frame, cjt188.MeterData) and frame.total.in_m3() is not None else None
    return Uplink(payload, reading, frame=frame)


def _volume(document: Mapping[str, Any], name: str) -> cjt188.Volume:
    value = document[name]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadUplink(f"{name} is not a number")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise BadUplink(f"{name} is not a number: {value!r}") from None
    if not number.is_finite() or number < 0:
        raise BadUplink(f"{name} out of range: {value!r}")
    return cjt188.Volume(number)


def json_reading(meter: MeterOnBus, document: Mapping[str, Any]) -> cjt188.MeterData:
    """A JSON uplink's reading as the ``901F`` answer it stands for: ``total_m3`` (m³, a
    decimal string or number), optionally ``settlement_m3``, ``clock`` (the meter's local
    time, ISO 8601), and the status either as ``status_bits`` (ST0 | ST1 << 8, as CJ/T 188
    meters report it) or as ``valve`` (open / closed / abnormal) and ``battery_low``."""
    total = _volume(document, "total_m3")
    settlement = _volume(document, "settlement_m3") if "settlement_m3" in document else total
    clock = None
    if document.get("clock") is not None:
        try:
            clock = datetime.fromisoformat(str(document["clock"])).replace(tzinfo=None)
        except ValueError:
            raise BadUplink(f"clock is not ISO 8601: {document['clock']!r}") from None
    bits = document.get("status_bits")
    if bits is not None:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits <= 0xFFFF:
            raise BadUplink(f"status_bits out of range: {bits!r}")
        status = cjt188.MeterStatus(bits & 0xFF, bits >> 8)
    else:
        try:
            valve = cjt188.ValveStatus(str(document.get("valve", "open")))
        except ValueError:
            raise BadUplink(f"valve is not open, closed or abnormal: {document.get('valve')!r}") from None
        status = cjt188.MeterStatus.of(valve=valve, battery_low=bool(document.get("battery_low", False)))
    return cjt188.MeterData(meter_type=meter.meter_type, address=meter.address, control=cjt188.Control.READ_DATA_REPLY,
                            di=cjt188.DataId.METER_DATA, ser=0, total=total, settlement=settlement, clock=clock,
                            status=status)


def json_downlink(order: CommandOrder, *, now_local: datetime) -> bytes:
    """A command for a JSON meter: its id (the reply's ``reply_to``), kind and parameters
    (a clock sync carries the utility's wall time)."""
    params = dict(order.params)
    if order.kind is CommandKind.sync_clock:
        params["clock"] = now_local.replace(tzinfo=None, microsecond=0).isoformat()
    return json.dumps({"id": order.command_id, "command": order.kind.value, "params": params},
                      ensure_ascii=False, separators=(",", ":")).encode()


def _answers_frame(asked: cjt188.Frame) -> Callable[[Uplink], bool]:
    """Whether an uplink answers the request ``asked``: a reply of the same function (or its
    error reply) and, unless an error reply, the same data identifier."""
    def answers(uplink: Uplink) -> bool:
        frame = uplink.frame
        if frame is None or not frame.is_reply or frame.control & cjt188.FUNCTION_MASK != asked.control & cjt188.FUNCTION_MASK:
            return False
        return isinstance(frame, cjt188.ErrorReply) or frame.di is None or frame.di == asked.di
    return answers


# --------------------------------------------------------------------------- the coordinator


@dataclass
class _Waiter:
    answers: Callable[[Uplink], bool]
    future: asyncio.Future[Uplink]


class _Downlink:
    """An exchange with one NB-IoT meter that is listening (after its uplink): the request
    goes down, the next uplink that answers it comes back. What ``carry_out`` needs of a link."""

    def __init__(self, coordinator: MqttCoordinator, meter: NbMeter) -> None:
        self.coordinator = coordinator
        self.meter = meter

    async def exchange(self, request: bytes, *, timeout: float | None = None, retries: int | None = None) -> bytes:  # noqa: ASYNC109
        asked = cjt188.decode(request, di_order=self.meter.meter.di_order)
        limit = timeout or self.coordinator.worker.config.mqtt_reply_timeout_s
        attempts = 1 + (retries or 0)
        for _ in range(attempts):
            answer = await self.coordinator.ask(self.meter, request, _answers_frame(asked), timeout=limit)
            if answer is None:
                continue
            frame = answer.frame
            if isinstance(frame, cjt188.ErrorReply):
                raise DeviceErrorReply(f"meter {frame.address} answered error status {frame.status.st0:02X} "
                                       f"{frame.status.st1:02X}", status=frame.status.bits)
            return answer.raw
        raise ReplyTimeout(f"no answer within {limit:.1f} s of the downlink", attempts=attempts)


class MqttCoordinator(Coordinator):
    """The broker link of the worker that holds its lease (module docstring)."""

    def __init__(self, plan: MqttPlan, worker: AcquisitionWorker) -> None:
        super().__init__()
        self.plan = plan
        self.worker = worker
        self.broker = broker_address(plan.url)
        self.wake = asyncio.Event()
        # Set while subscribed (tests wait for it).
        self.connected = asyncio.Event()
        self.uplinks = 0  # messages of known meters handled
        self.readings = 0  # of them, ingested as readings
        self.commands_carried_out = 0
        self._client: aiomqtt.Client | None = None
        self._waiters: dict[int, _Waiter] = {}
        self._deliveries: dict[int, asyncio.Task[None]] = {}
        self._handling = False  # the receiver is in the middle of an uplink

    @property
    def task_name(self) -> str:
        return f"mqtt {self.broker.host}:{self.broker.port}"

    # -- connection ------------------------------------------------------------------

    def _client_for(self) -> aiomqtt.Client:
        broker = self.broker
        identifier = f"shuiwu-{self.worker.holder}"[:64].replace(":", "-")
        return aiomqtt.Client(broker.host, broker.port, username=broker.username, password=broker.password,
                              identifier=identifier, keepalive=30,
                              tls_context=ssl.create_default_context() if broker.tls else None)

    async def _run(self, *, drain: bool = False) -> None:
        del drain  # an NB-IoT meter answers at its own pace: `acquire --once` does not serve the broker
        config = self.worker.config
        backoff = Backoff(config.reconnect_initial_s, config.reconnect_max_s)
        while not self._stopping.is_set():
            try:
                async with self._client_for() as client:
                    await client.subscribe(self.plan.subscription, qos=1)
                    self._client = client
                    self.connected.set()
                    backoff.reset()
                    log.info("%s: subscribed to %s at %s:%s", self.worker.holder, self.plan.subscription,
                             self.broker.host, self.broker.port)
                    await self._serve(client)
            except Exception as error:  # the broker (MqttError), or a bug: never the end of the link
                self._client = None
                self.connected.clear()
                await self._end_deliveries()
                if self._stopping.is_set():
                    break
                delay = backoff.next_delay()
                if isinstance(error, aiomqtt.MqttError):
                    log.warning("%s: MQTT broker %s:%s: %s; next try in %.1f s", self.worker.holder, self.broker.host,
                                self.broker.port, error, delay)
                else:
                    log.exception("%s: the MQTT link failed; reconnecting in %.1f s", self.worker.holder, delay)
                await wait_any(self._stopping, seconds=delay)
            finally:
                self._client = None
                self.connected.clear()
        await self._end_deliveries()

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Receive and claim until stopped; a lost connection raises MqttError. Stopping
        lets the uplink and the claim in hand finish (module docstring)."""
        receiver = asyncio.create_task(self._receive(client))
        claimer = asyncio.create_task(self._claim_loop())
        stopper = asyncio.create_task(self._stopping.wait())
        tasks = (receiver, claimer, stopper)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                if not self._handling:
                    receiver.cancel()  # waiting for a message: nothing in hand
                await asyncio.wait((receiver, claimer), timeout=STOP_GRACE_S)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._end_deliveries()
        if receiver.done() and not receiver.cancelled() and receiver.exception() is not None:
            raise receiver.exception()  # type: ignore[misc]

    async def _end_deliveries(self) -> None:
        """Deliveries waiting for an answer get none (a timeout, recorded: back to the
        queue while attempts remain); each ends after the result in hand."""
        for waiter in list(self._waiters.values()):
            if not waiter.future.done():
                waiter.future.cancel()
        deliveries = list(self._deliveries.values())
        if deliveries:
            await asyncio.wait(deliveries, timeout=STOP_GRACE_S)
        for delivery in deliveries:
            delivery.cancel()
        await asyncio.gather(*deliveries, return_exceptions=True)
        self._deliveries.clear()

    async def publish(self, topic: str, payload: bytes) -> None:
        client = self._client
        if client is None:
            raise LinkDown("not connected to the MQTT broker")
        try:
            await client.publish(topic, payload, qos=1)
        except aiomqtt.MqttError as error:
            raise LinkDown(f"MQTT publish: {error}") from None

    async def ask(self, meter: NbMeter, payload: bytes, answers: Callable[[Uplink], bool], *,
                  timeout: float) -> Uplink | None:  # noqa: ASYNC109
        """Publish ``payload`` to the meter and wait for its uplink that ``answers`` it;
        None after ``timeout`` seconds."""
        future: asyncio.Future[Uplink] = asyncio.get_running_loop().create_future()
        self._waiters[meter.meter_id] = _Waiter(answers, future)
        try:
            await self.publish(meter.downlink, payload)
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        except asyncio.CancelledError:
            if future.cancelled() and not self._current_task_cancelling():
                return None  # the connection or the coordinator ends: no answer will come
            raise
        finally:
            self._waiters.pop(meter.meter_id, None)

    @staticmethod
    def _current_task_cancelling() -> bool:
        task = asyncio.current_task()
        return task is not None and task.cancelling() > 0

    # -- claims ----------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        worker = self.worker
        while not self._stopping.is_set():
            self.wake.clear()
            claimed = 0
            try:
                async with transaction(worker.sessions) as session:
                    claimed = len(await remote.claim_commands(session, holder=worker.holder, link_ids=[self.plan.link],
                                                              limit=CLAIM_BATCH, now=worker.clock()))
            except Exception:
                log.exception("%s: claiming NB-IoT commands failed", worker.holder)
            if claimed:
                log.debug("%s: %d NB-IoT commands wait for their uplinks", worker.holder, claimed)
            if claimed < CLAIM_BATCH:
                await wait_any(self.wake, self._stopping, seconds=worker.config.poll_interval_s)

    # -- uplinks ---------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload
            raw = bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
            self._handling = True
            try:
                await self.on_uplink(topic, raw)
            except Exception:
                log.exception("%s: the uplink on %s could not be handled", self.worker.holder, topic)
            finally:
                self._handling = False
            if self._stopping.is_set():
                return

    async def on_uplink(self, topic: str, payload: bytes) -> None:
        """One message from a device (module docstring, "An uplink")."""
        worker = self.worker
        now = worker.clock()
        async with worker.sessions() as session:
            meter = await nb_meter_by_topic(session, topic)
        if meter is None:
            log.debug("%s: no meter has the topic %s", worker.holder, topic)
            return
        self.uplinks += 1
        try:
            uplink = decode_uplink(meter, payload)
        except BadUplink as error:
            log.info("meter %s: unreadable uplink (%s): %s", meter.meter.address, error, payload[:200].hex(" ").upper())
            async with transaction(worker.sessions) as session:
                await record_read_failures(session, meter_ids=[meter.meter_id], failed_at=now,
                                           reason=f"{FailureKind.bad_frame}: {error}"[:200])
            return
        waiter = self._waiters.get(meter.meter_id)
        if waiter is not None and not waiter.future.done() and waiter.answers(uplink):
            waiter.future.set_result(uplink)  # the delivery records it (and its reading)
            return
        if uplink.reading is not None:
            from acquisition.worker import SOURCE, reading_of

            async with transaction(worker.sessions) as session:
                await ingest_readings(session, readings=[reading_of(meter.meter_id, uplink.reading, now)], source=SOURCE,
                                      now=now, tz=worker.timezone)
            self.readings += 1
        else:  # a heartbeat, or an answer that came after its delivery gave up: the device listens all the same
            log.info("meter %s: an uplink without a reading", meter.meter.address)
        waiting = await self._answer_reads(meter, uplink.reading, now)
        if waiting and meter.meter_id not in self._deliveries:
            self._deliveries[meter.meter_id] = asyncio.create_task(self._deliver(meter, waiting),
                                                                   name=f"deliver {meter.meter.address}")

    async def _answer_reads(self, meter: NbMeter, reading: cjt188.MeterData | None, now: datetime) -> list[int]:
        """The meter's waiting read_now commands succeed with the uplink's reading (when it
        carried one); returns the other waiting commands, to go down now."""
        worker = self.worker
        async with transaction(worker.sessions) as session:
            waiting = await remote.pending_deliveries(session, meter_id=meter.meter_id, holder=worker.holder, now=now)
            later = []
            for command in waiting:
                if command.kind is not CommandKind.read_now or reading is None:
                    later.append(command.id or 0)
                    continue
                try:
                    async with session.begin_nested():
                        await remote.finish_command(session, command_id=command.id or 0, holder=worker.holder,
                                                    succeeded=True, now=now, reply=cjt188.to_json(reading))
                except CommandNotHeld:
                    log.warning("%s: command %s was taken from it before the uplink", worker.holder, command.id)
        return later

    async def _deliver(self, meter: NbMeter, command_ids: list[int]) -> None:
        """The waiting commands of a meter that just called, one at a time while it listens."""
        worker = self.worker
        try:
            for command_id in command_ids:
                if self._stopping.is_set() or self._client is None:
                    return  # the rest stay claimed: they go back to the queue with the lease
                now = worker.clock()
                try:
                    async with transaction(worker.sessions) as session:
                        command = await remote.mark_sent(session, command_id=command_id, holder=worker.holder, now=now)
                except CommandNotHeld:
                    continue  # timed out or taken over meanwhile
                reply_timeout = worker.config.mqtt_reply_timeout_s
                order = CommandOrder(command_id=command_id, kind=command.kind, params=command.params,
                                     attempt=command.attempts,
                                     seconds_left=min(reply_timeout, (command.deadline - now).total_seconds()))
                now_local = worker.clock().astimezone(worker.tz)
                if order.seconds_left <= 0:
                    outcome = Outcome(False, failure_kind=FailureKind.timeout,
                                      failure_reason="超过命令时限 / past its time limit")
                elif meter.payload_format is PayloadFormat.json:
                    outcome = await self._carry_out_json(meter, order, now_local=now_local)
                else:
                    # The model's bus response timeout is not the device's over the network:
                    # it has the reply timeout (or what is left of its time limit).
                    outcome = await carry_out(_Downlink(self, meter), order, replace(meter.meter, response_timeout=None),
                                              response_timeout=reply_timeout, retries=0, now_local=now_local)
                await worker.record(command, meter.meter, outcome)
                self.commands_carried_out += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: delivering to meter %s failed", worker.holder, meter.meter.address)
        finally:
            self._deliveries.pop(meter.meter_id, None)

    async def _carry_out_json(self, meter: NbMeter, order: CommandOrder, *, now_local: datetime) -> Outcome:
        """A command for a JSON meter: the downlink, then the reply naming it (``reply_to``).
        ``ok: false`` is the device refusing (its ``error``); a valve command succeeds when
        the reply's valve is where it was sent."""
        try:
            answer = await self.ask(meter, json_downlink(order, now_local=now_local),
                                    lambda uplink: uplink.reply_to == order.command_id, timeout=order.seconds_left)
        except LinkDown as failure:
            return Outcome(False, failure_kind=failure.kind, failure_reason=str(failure), retry=True)
        if answer is None:
            return Outcome(False, failure_kind=FailureKind.timeout, retry=True,
                           failure_reason=f"{FailureKind.timeout}: no answer within {order.seconds_left:.1f} s of the downlink")
        document = dict(answer.document or {})
        reply = {key: value for key, value in document.items() if key != "reply_to"}
        if document.get("ok") is not True:
            return Outcome(False, reply=reply, reading=answer.reading, failure_kind=FailureKind.device_error,
                           failure_reason=f"设备拒绝 / the device refused: {document.get('error') or 'no reason given'}"[:500])
        if order.kind in (CommandKind.valve_open, CommandKind.valve_close):
            target = "open" if order.kind is CommandKind.valve_open else "closed"
            valve = answer.reading.status.valve.value if answer.reading is not None else document.get("valve")
            if valve != target:
                return Outcome(False, reply=reply, reading=answer.reading, failure_kind=FailureKind.device_error,
                               failure_reason=f"阀门未动作 / the valve stayed {valve}", retry=valve != "abnormal")
        return Outcome(True, reply=reply, reading=answer.reading)
