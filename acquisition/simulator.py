"""Simulated CJ/T 188 water meters on a pseudo-terminal or a TCP port (``shuiwu simulate meters``).

A simulated bus is N meters behind one port: a pty (``/dev/pts/N``, what an RS-485
adapter looks like to the worker) or a TCP port that acts as a transparent DTU
(``socket://127.0.0.1:PORT``). Each meter has an address, a register that advances on a
daily profile (more in the morning and the evening) while its valve is open, a valve that
obeys open/close, a battery flag, a clock and a purchase counter. A meter answers read
(``901F``, the history identifiers, and ``8105`` on a prepaid meter), valve control
(``A017``), read address, clock write (``A015``), its parameters (price table ``8102`` /
``A010``, settlement day ``8103`` / ``A011``, reading day ``8104`` / ``A012``, key version
``8106``) and, on a prepaid meter, purchase write (``A013``), only when addressed — and read address also at the
broadcast address (several meters answering it at once collide, as on a real bus).

**Pacing.** A pty moves bytes at once; a bus does not. The simulator charges the request's
own line time from its first byte, waits the turnaround, then releases the reply one byte
at a time, each at its absolute deadline (start + k × bits per byte / baud), so delays
never accumulate and a patrol takes as long as on a real bus at that baud rate.

**Faults**, per meter (the next N replies, or always) or as a probability for every
reply: ``drop`` (no reply), ``corrupt`` (one byte of DI..CS flipped), ``late`` (reply
after ``late_by`` seconds), ``wrong_address`` (the reply carries another address),
``echo`` (the request comes back first, as from a half-duplex adapter, then the reply).
A bus can also ``vanish``: at its next request it sends half the reply and closes the port
(a pty disappears; a DTU drops the connection and accepts the next one).

**NB-IoT meters** (``--mqtt URL``): instead of buses, N meters on an MQTT broker, each
publishing its current data to ``<prefix>/<address>/up`` every ``--uplink-every`` seconds
(staggered) and obeying what comes down ``<prefix>/<address>/down`` — valve, clock,
read, purchase — with the answer on its uplink topic, as its model's payload says
(``--payload cjt188``: the bus's frames; ``json``: docs/drivers.md). The broker
connection is paho's network thread; downlinks, uplinks and the control channel take
turns on one lock.

All buses of one simulator run on one thread with a selector. ``--control`` makes it
talk JSON lines on stdin/stdout (what :class:`SimulatorProcess` uses from Python, and why
faults can be set on a running simulator); it exits when stdin closes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import tty
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer

from acquisition.protocols import cjt188
from acquisition.transport import LineSettings


class Fault(StrEnum):
    drop = "drop"
    corrupt = "corrupt"
    late = "late"
    wrong_address = "wrong_address"
    echo = "echo"


ALWAYS = -1  # a per-meter fault count that never runs out

# Relative draw in each hour (0-23): low at night, peaks at 07-08 and 19-20.
_HOURLY_DRAW = (
    0.5, 0.3, 0.2, 0.2, 0.3, 1.0, 3.0, 5.0, 4.0, 2.0, 1.5, 2.0,
    2.5, 1.5, 1.0, 1.0, 1.5, 3.0, 4.5, 5.0, 4.0, 2.5, 1.5, 0.8,
)  # fmt: skip
# Share of a day's water drawn in each hour.
HOURLY_WEIGHTS: tuple[float, ...] = tuple(draw / sum(_HOURLY_DRAW) for draw in _HOURLY_DRAW)
_HOUR = timedelta(hours=1)
# A meter's price table until one is written: one price all the way (the steps out of reach).
_FLAT_PRICE = cjt188.PriceTable((500, 500, 500), (999_998, 999_999))


def volume_between(start: datetime, end: datetime, *, daily_m3: float) -> float:
    """m³ a household drawing ``daily_m3`` a day uses from ``start`` to ``end`` on the daily profile."""
    volume = 0.0
    moment = start
    while moment < end:
        hour_end = moment.replace(minute=0, second=0, microsecond=0) + _HOUR
        segment_end = min(end, hour_end)
        volume += daily_m3 * HOURLY_WEIGHTS[moment.hour] * (segment_end - moment).total_seconds() / 3600
        moment = segment_end
    return volume


class SimulatedClock:
    """Local wall time as the meters see it; ``speed`` > 1 runs days in seconds (tests, demos)."""

    def __init__(self, *, start: datetime | None = None, speed: float = 1.0) -> None:
        self.start = start or datetime.now()
        self.speed = speed
        self._origin = time.monotonic()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self._origin) * self.speed)


@dataclass
class SimulatedMeter:
    address: str
    total_m3: float
    daily_m3: float
    settlement_m3: float
    advanced_to: datetime
    meter_type: int = cjt188.DEFAULT_METER_TYPE
    has_valve: bool = True
    valve_open: bool = True
    battery_low: bool = False
    clock_offset: timedelta = timedelta(0)
    # A prepaid meter (智能水表直接预付费) keeps its balance: water is charged at its price as
    # it flows, the meter closes its own valve when the balance runs out and opens it again
    # when a purchase lifts the balance above zero.
    prepaid: bool = False
    price_fen_per_m3: int = 500
    balance_fen: float = 0.0
    purchase_count: int = 0
    last_purchase_fen: int = 0
    purchased_fen: int = 0
    closed_for_balance: bool = False
    # CJ/T 188 parameters (8102-8104 / A010-A012, 8106): read and written as a meter
    # keeps them. ``keeps_params`` False acknowledges writes but keeps the old values (a
    # meter whose memory failed: what the worker's read-back is for).
    settlement_day: int = 1
    reading_day: int = 1
    price_table: cjt188.PriceTable = _FLAT_PRICE
    prices_from_day: int = 1
    key_version: int = 1
    keeps_params: bool = True
    # The meter model's DI byte order when it differs from the bus's (a bus mixes models).
    di_order: cjt188.DiOrder | None = None
    answered: int = 0
    uplinks: int = 0  # NB-IoT: current data published unasked
    # Requests it answered, by data identifier in the standard's notation (``901F``,
    # ``A017``; a request without one as ``none``): what a test counts on the wire.
    requests: dict[str, int] = field(default_factory=dict)
    faults: dict[Fault, int] = field(default_factory=dict)

    def advance(self, now: datetime) -> None:
        """Bring the register to ``now``: water flows only through an open valve (a prepaid
        meter closes it when its balance runs out); the settlement register takes the total
        of the first of each month passed."""
        if now <= self.advanced_to:
            return
        moment = self.advanced_to
        while moment < now:
            month_start = (moment.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            segment_end = min(now, month_start)
            if self.valve_open:
                drawn = volume_between(moment, segment_end, daily_m3=self.daily_m3)
                self.total_m3 += drawn
                if self.prepaid:
                    self.balance_fen -= drawn * self.price_fen_per_m3
                    if self.balance_fen <= 0:
                        self.valve_open, self.closed_for_balance = False, True
            if segment_end == month_start:
                self.settlement_m3 = self.total_m3
            moment = segment_end
        self.advanced_to = now

    def status(self) -> cjt188.MeterStatus:
        valve = cjt188.ValveStatus.open if self.valve_open else cjt188.ValveStatus.closed
        return cjt188.MeterStatus.of(valve=valve, battery_low=self.battery_low)

    def faults_for_this_reply(self, probabilities: dict[Fault, float], rng: random.Random) -> set[Fault]:
        chosen = set()
        for fault in Fault:
            remaining = self.faults.get(fault, 0)
            if remaining == ALWAYS:
                chosen.add(fault)
            elif remaining > 0:
                self.faults[fault] = remaining - 1
                chosen.add(fault)
            elif rng.random() < probabilities.get(fault, 0.0):
                chosen.add(fault)
        return chosen

    def answer(self, request: cjt188.Frame, *, now: datetime, di_order: cjt188.DiOrder, preamble: int) -> bytes | None:
        """The reply to a request addressed to this meter (``None``: a meter never answers a reply)."""
        if request.is_reply:
            return None
        self.advance(now)
        self.answered += 1
        key = f"{request.di:04X}" if request.di is not None else "none"
        self.requests[key] = self.requests.get(key, 0) + 1
        common: dict[str, Any] = {"meter_type": self.meter_type, "ser": request.ser, "preamble": preamble}
        match request:
            case cjt188.ReadRequest(di=cjt188.DataId.METER_DATA):
                return self.current_data(now, di_order=di_order, ser=request.ser, preamble=preamble)
            case cjt188.ReadRequest(di=di) if di is not None and cjt188.DataId.HISTORY_1 <= di <= cjt188.DataId.HISTORY_12:
                months_ago = di - cjt188.DataId.HISTORY_1 + 1
                settlement = max(0.0, self.settlement_m3 - (months_ago - 1) * 30 * self.daily_m3)
                return cjt188.encode_history_reply(
                    self.address, months_ago=months_ago, settlement=cjt188.Volume(Decimal(repr(settlement))),
                    di_order=di_order, **common,
                )
            case cjt188.ReadRequest(di=cjt188.DataId.READ_PURCHASE) if self.prepaid:
                return cjt188.encode_purchase_data_reply(
                    self.address, purchase_count=self.purchase_count, amount_fen=self.last_purchase_fen,
                    total_bought_fen=self.purchased_fen, balance_fen=max(0, math.floor(self.balance_fen)),
                    status=self.status(), di_order=di_order, **common,
                )
            case cjt188.ReadRequest(di=cjt188.DataId.READ_PRICES, control=cjt188.Control.READ_DATA):
                return cjt188.encode_prices_reply(self.address, table=self.price_table, di_order=di_order, **common)
            case cjt188.ReadRequest(di=di, control=cjt188.Control.READ_DATA) if di in cjt188.DAY_READS:
                day = self.settlement_day if di == cjt188.DataId.READ_SETTLEMENT_DAY else self.reading_day
                return cjt188.encode_day_reply(self.address, di=di, day=day, di_order=di_order, **common)
            case cjt188.ReadRequest(di=cjt188.DataId.READ_KEY_VERSION, control=cjt188.Control.READ_KEY_VERSION):
                return cjt188.encode_key_version_reply(self.address, key_version=self.key_version, di_order=di_order,
                                                       **common)
            case cjt188.DayRequest(di=di, day=day) if day <= 28:
                # The meter refuses 29-31 (months without them), as the catalog does.
                if self.keeps_params:
                    if di == cjt188.DataId.WRITE_SETTLEMENT_DAY:
                        self.settlement_day = day
                    else:
                        self.reading_day = day
                return cjt188.encode_write_reply(self.address, di=di or 0, status=None, di_order=di_order, **common)
            case cjt188.PriceTableRequest(table=table, start_day=start_day):
                if self.keeps_params:
                    self.price_table, self.prices_from_day = table, start_day
                return cjt188.encode_write_reply(self.address, di=cjt188.DataId.WRITE_PRICES, status=self.status(),
                                                 di_order=di_order, **common)
            case cjt188.ReadAddressRequest():
                return cjt188.encode_address_reply(self.address, di_order=di_order, **common)
            case cjt188.ValveRequest(command=command) if self.has_valve:
                self.valve_open = command == cjt188.ValveCommand.OPEN
                return cjt188.encode_write_reply(
                    self.address, di=cjt188.DataId.VALVE_CONTROL, status=self.status(), di_order=di_order, **common
                )
            case cjt188.ClockRequest(clock=clock):
                self.clock_offset = clock - now
                return cjt188.encode_write_reply(
                    self.address, di=cjt188.DataId.WRITE_CLOCK, status=self.status(), di_order=di_order, **common
                )
            case cjt188.PurchaseRequest(purchase_count=count, amount_fen=amount_fen) if self.prepaid:
                # Only the next count is taken; a repeat of the last one is not added twice
                # (the worker's retry), and either way the reply says which count the meter holds.
                if count == (self.purchase_count + 1) % 256:
                    self.purchase_count = count
                    self.last_purchase_fen = amount_fen
                    self.purchased_fen += amount_fen
                    self.balance_fen += amount_fen
                    if self.closed_for_balance and self.balance_fen > 0:
                        self.valve_open, self.closed_for_balance = True, False
                return cjt188.encode_purchase_reply(
                    self.address, purchase_count=self.purchase_count, status=self.status(), di_order=di_order, **common
                )
        # A valve command to a meter without one, a purchase to a meter that keeps no
        # balance, or an identifier this meter does not keep.
        error_status = cjt188.MeterStatus(self.status().st0, 0x01)
        return cjt188.encode_error_reply(
            self.address, request_control=request.control, status=error_status, meter_type=self.meter_type,
            ser=request.ser, preamble=preamble,
        )

    def current_data(self, now: datetime, *, di_order: cjt188.DiOrder, ser: int = 0,
                     preamble: int = cjt188.DEFAULT_PREAMBLE) -> bytes:
        """The ``901F`` answer: what a read gets, and what an NB-IoT meter publishes unasked."""
        self.advance(now)
        return cjt188.encode_meter_data_reply(
            self.address,
            total=cjt188.Volume(Decimal(repr(self.total_m3))),
            settlement=cjt188.Volume(Decimal(repr(self.settlement_m3))),
            clock=(now + self.clock_offset).replace(microsecond=0),
            status=self.status(),
            di_order=di_order, meter_type=self.meter_type, ser=ser, preamble=preamble,
        )

    def current_json(self, now: datetime) -> dict[str, Any]:
        """The same as a JSON meter reports it (docs/drivers.md)."""
        self.advance(now)
        return {
            "total_m3": f"{self.total_m3:.3f}",
            "settlement_m3": f"{self.settlement_m3:.3f}",
            "valve": "open" if self.valve_open else "closed",
            "battery_low": self.battery_low,
            "clock": (now + self.clock_offset).replace(microsecond=0).isoformat(),
        }

    def obey_json(self, document: dict[str, Any], *, now: datetime) -> dict[str, Any]:
        """A JSON meter's answer to a downlink ``{"id", "command", "params"}``."""
        self.advance(now)
        self.answered += 1
        command, params = document.get("command"), document.get("params") or {}
        answer: dict[str, Any] = {"reply_to": document.get("id")}
        if command in ("valve_open", "valve_close") and self.has_valve:
            self.valve_open = command == "valve_open"
        elif command == "sync_clock" and "clock" in params:
            self.clock_offset = datetime.fromisoformat(params["clock"]) - now
        elif command != "read_now":
            return answer | {"ok": False, "error": f"unsupported command {command!r}"}
        return answer | {"ok": True} | self.current_json(now)

    def snapshot(self, now: datetime) -> dict[str, Any]:
        self.advance(now)
        return {
            "address": self.address,
            "total_m3": round(self.total_m3, 6),
            "settlement_m3": round(self.settlement_m3, 6),
            "valve_open": self.valve_open,
            "has_valve": self.has_valve,
            "battery_low": self.battery_low,
            "clock": (now + self.clock_offset).isoformat(timespec="seconds"),
            "prepaid": self.prepaid,
            "balance_fen": math.floor(self.balance_fen),
            "purchase_count": self.purchase_count,
            "purchased_fen": self.purchased_fen,
            "settlement_day": self.settlement_day,
            "reading_day": self.reading_day,
            "price_table": {"prices_fen": list(self.price_table.prices_fen), "steps_m3": list(self.price_table.steps_m3),
                            "from_day": self.prices_from_day},
            "key_version": self.key_version,
            "keeps_params": self.keeps_params,
            "answered": self.answered,
            "uplinks": self.uplinks,
            "requests": dict(self.requests),
            "faults": {fault.value: count for fault, count in self.faults.items() if count},
        }


# ---------------------------------------------------------------------------- endpoints


class BusEndpoint(Protocol):
    """The far end of one bus: where requests come from and replies go."""

    url: str

    def register(self, selector: selectors.BaseSelector, on_bytes: Callable[[bytes], None]) -> None: ...

    def send(self, payload: bytes) -> None: ...

    def vanish(self, selector: selectors.BaseSelector) -> None: ...


class PtyEndpoint:
    """A pseudo-terminal: the worker opens ``url`` (the slave) as it would ``/dev/ttyUSB0``."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        # Raw: no echo, no line editing, no CR/LF translation between the two ends. The
        # simulator keeps the slave open too, so the master never reads EIO (busy select)
        # between two worker connections.
        tty.setraw(self.master)
        tty.setraw(self._slave)
        os.set_blocking(self.master, False)
        self.url = os.ttyname(self._slave)
        self.open = True

    def register(self, selector: selectors.BaseSelector, on_bytes: Callable[[bytes], None]) -> None:
        def readable() -> None:
            try:
                chunk = os.read(self.master, 4096)
            except BlockingIOError:
                return
            except OSError:
                return  # EIO with no reader left: nothing arrived
            if chunk:
                on_bytes(chunk)

        selector.register(self.master, selectors.EVENT_READ, readable)

    def send(self, payload: bytes) -> None:
        if self.open:
            with contextlib.suppress(BlockingIOError):
                os.write(self.master, payload)

    def vanish(self, selector: selectors.BaseSelector) -> None:
        if self.open:
            self.open = False
            selector.unregister(self.master)
            os.close(self.master)
            os.close(self._slave)


class DtuEndpoint:
    """A transparent TCP DTU: one worker connection at a time; a newer one replaces it."""

    def __init__(self, *, host: str, port: int) -> None:
        self._listener = socket.create_server((host, port))
        self._listener.setblocking(False)
        bound_host, bound_port = self._listener.getsockname()[:2]
        self.url = f"socket://{bound_host}:{bound_port}"
        self._connection: socket.socket | None = None
        self._on_bytes: Callable[[bytes], None] = lambda chunk: None

    def register(self, selector: selectors.BaseSelector, on_bytes: Callable[[bytes], None]) -> None:
        self._on_bytes = on_bytes
        selector.register(self._listener, selectors.EVENT_READ, lambda: self._accept(selector))

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            connection, _ = self._listener.accept()
        except BlockingIOError:
            return
        self.vanish(selector)
        connection.setblocking(False)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connection = connection
        selector.register(connection, selectors.EVENT_READ, lambda: self._receive(selector, connection))

    def _receive(self, selector: selectors.BaseSelector, connection: socket.socket) -> None:
        try:
            chunk = connection.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self._on_bytes(chunk)
        elif connection is self._connection:
            self.vanish(selector)

    def send(self, payload: bytes) -> None:
        if self._connection is not None:
            with contextlib.suppress(OSError):
                self._connection.send(payload)

    def vanish(self, selector: selectors.BaseSelector) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            selector.unregister(connection)
            connection.close()


# ---------------------------------------------------------------------------- buses


@dataclass
class _Transmission:
    """Bytes leaving the meter side: byte k is on the worker's side at start + (k + 1) × byte time."""

    start: float
    payload: bytes
    byte_time: float
    sent: int = 0
    then_vanish: bool = False

    def due(self, now: float) -> int:
        return min(len(self.payload), math.floor((now - self.start) / self.byte_time + 1e-9))

    def next_deadline(self) -> float:
        return self.start + (self.sent + 1) * self.byte_time


class SimulatedBus:
    """N meters behind one endpoint, answering one request at a time at the line's pace."""

    def __init__(
        self,
        endpoint: BusEndpoint,
        meters: Iterable[SimulatedMeter],
        *,
        clock: SimulatedClock,
        line: LineSettings,
        turnaround: float,
        late_by: float,
        reply_preamble: int,
        di_order: cjt188.DiOrder,
        rng: random.Random,
    ) -> None:
        self.endpoint = endpoint
        self.meters = {meter.address: meter for meter in meters}
        self.clock = clock
        self.line = line
        self.turnaround = turnaround
        self.late_by = late_by
        self.reply_preamble = reply_preamble
        self.di_order = di_order
        self.fault_probabilities: dict[Fault, float] = {}
        self.vanish_at_next_request = False
        self._rng = rng
        self._received = bytearray()
        self._received_from: float | None = None  # when the first byte still in _received went on the line
        self._line_free_at = 0.0
        self._outgoing: deque[_Transmission] = deque()
        self._selector: selectors.BaseSelector | None = None

    @property
    def byte_time(self) -> float:
        return self.line.line_time(1)

    def attach(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        self.endpoint.register(selector, self._on_bytes)

    def _on_bytes(self, chunk: bytes) -> None:
        now = time.monotonic()
        if not self._received:
            self._received_from = max(now, self._line_free_at)
        self._received += chunk
        while True:
            frame, consumed = cjt188.find_frame(bytes(self._received))
            if frame is None:
                del self._received[:consumed]
                if not self._received:
                    self._received_from = None
                return
            assert self._received_from is not None
            # The request held the line for its own length (preamble and noise included)
            # even though the pty delivered it at once.
            request_end = self._received_from + self.line.line_time(consumed)
            del self._received[:consumed]
            self._received_from = request_end if self._received else None
            self._line_free_at = max(self._line_free_at, request_end)
            self._on_request(frame, request_start=request_end - self.line.line_time(consumed), request_end=request_end)

    def _on_request(self, frame: bytes, *, request_start: float, request_end: float) -> None:
        try:
            request = cjt188.decode(frame, di_order=self.di_order)
            own_order = self.meters[request.address].di_order if request.address in self.meters else None
            if own_order is not None and own_order is not self.di_order:
                request = cjt188.decode(frame, di_order=own_order)  # the address reads alike in either order
        except cjt188.FrameError:
            return  # a garbled request gets no answer, as from a real meter
        now = self.clock.now()
        if request.address == cjt188.BROADCAST_ADDRESS and isinstance(request, cjt188.ReadAddressRequest):
            addressed = list(self.meters.values())
        else:
            addressed = [self.meters[request.address]] if request.address in self.meters else []
        replies: list[bytes] = []
        faults: set[Fault] = set()
        for meter in addressed:
            reply = meter.answer(request, now=now, di_order=meter.di_order or self.di_order, preamble=self.reply_preamble)
            if reply is not None:
                faults |= meter.faults_for_this_reply(self.fault_probabilities, self._rng)
                replies.append(reply)
        if not replies:
            return
        reply = replies[0] if len(replies) == 1 else _collided(replies)
        if Fault.echo in faults:
            # A half-duplex adapter hears the request while it is sent.
            self._transmit(request_start, frame, line_busy=False)
        if Fault.drop in faults:
            return
        if Fault.wrong_address in faults:
            reply = _readdressed(reply, _neighbour_address(addressed[0].address))
        if Fault.corrupt in faults:
            reply = self._corrupted(reply)
        start = max(request_end + self.turnaround + (self.late_by if Fault.late in faults else 0.0), self._line_free_at)
        if self.vanish_at_next_request:
            self.vanish_at_next_request = False
            self._transmit(start, reply[: len(reply) // 2], then_vanish=True)
        else:
            self._transmit(start, reply)

    def _transmit(self, start: float, payload: bytes, *, then_vanish: bool = False, line_busy: bool = True) -> None:
        self._outgoing.append(_Transmission(start, payload, self.byte_time, then_vanish=then_vanish))
        if line_busy:
            self._line_free_at = max(self._line_free_at, start + self.line.line_time(len(payload)))

    def _corrupted(self, reply: bytes) -> bytes:
        start = reply.index(cjt188.START)
        # A byte between DI and CS: the checksum no longer adds up, whichever it is.
        position = self._rng.randrange(start + cjt188.HEADER_LENGTH, len(reply) - 1)
        flipped = bytearray(reply)
        flipped[position] ^= 1 << self._rng.randrange(8)
        return bytes(flipped)

    def transmit_due(self, now: float) -> None:
        while self._outgoing:
            # Transmissions go out in order of their start (an echo before the reply).
            transmission = min(self._outgoing, key=lambda candidate: candidate.start)
            due = transmission.due(now)
            if due > transmission.sent:
                self.endpoint.send(transmission.payload[transmission.sent : due])
                transmission.sent = due
            if transmission.sent < len(transmission.payload):
                return
            self._outgoing.remove(transmission)
            if transmission.then_vanish and self._selector is not None:
                self.endpoint.vanish(self._selector)

    def next_deadline(self) -> float | None:
        if not self._outgoing:
            return None
        return min(transmission.next_deadline() for transmission in self._outgoing)


def _collided(replies: list[bytes]) -> bytes:
    """Several meters talking at once: on M-Bus and RS-485 the dominant level wins, bit by bit."""
    length = max(len(reply) for reply in replies)
    collided = bytearray(b"\xff" * length)
    for reply in replies:
        for index, byte in enumerate(reply):
            collided[index] &= byte
    return bytes(collided)


def _neighbour_address(address: str) -> str:
    return address[:-1] + str((int(address[-1]) + 1) % 10)


def _readdressed(reply: bytes, address: str) -> bytes:
    start = reply.index(cjt188.START)
    frame = bytearray(reply[start:])
    frame[2:9] = cjt188.address_bytes(address)
    frame[-2] = cjt188.checksum(bytes(frame[:-2]))
    return reply[:start] + bytes(frame)


# ---------------------------------------------------------------------------- the simulator


class MqttMeters:
    """NB-IoT meters on an MQTT broker (module docstring). ``tick`` publishes the uplinks
    that are due and says when the next one is; downlinks arrive on paho's thread."""

    def __init__(self, url: str, meters: list[SimulatedMeter], *, clock: SimulatedClock, lock: threading.RLock,
                 prefix: str = "shuiwu/meters", uplink_every: float = 3600.0, payload: str = "cjt188",
                 di_order: cjt188.DiOrder = cjt188.DiOrder.be, reply_preamble: int = cjt188.DEFAULT_PREAMBLE) -> None:
        from urllib.parse import urlsplit

        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.meters = {meter.address: meter for meter in meters}
        self.clock = clock
        self.lock = lock
        self.prefix = prefix.rstrip("/")
        self.payload = payload
        self.di_order = di_order
        self.reply_preamble = reply_preamble
        start = time.monotonic()
        count = max(1, len(meters))
        # Staggered, as real devices are: the first uplinks spread over one interval.
        self.every: dict[str, float | None] = dict.fromkeys(self.meters, uplink_every)
        self.next_at: dict[str, float | None] = {address: start + uplink_every * (index + 1) / count
                                                 for index, address in enumerate(self.meters)}
        self.subscribed = threading.Event()
        parts = urlsplit(url)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"shuiwu-sim-{os.getpid()}")
        if parts.username:
            self.client.username_pw_set(parts.username, parts.password)
        if parts.scheme == "mqtts":
            self.client.tls_set()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_downlink
        self.client.connect_async(parts.hostname or "127.0.0.1", parts.port or (8883 if parts.scheme == "mqtts" else 1883),
                                  keepalive=30)
        self.client.loop_start()

    def topic(self, address: str) -> str:
        return f"{self.prefix}/{address}/up"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None) -> None:
        client.subscribe(f"{self.prefix}/+/down", qos=1)

    def _payload(self, meter: SimulatedMeter) -> bytes:
        now = self.clock.now()
        if self.payload == "json":
            return json.dumps(meter.current_json(now)).encode()
        return meter.current_data(now, di_order=self.di_order, preamble=self.reply_preamble)

    def uplink(self, address: str) -> None:
        """The meter calls now (and its next periodic uplink is an interval away)."""
        with self.lock:
            meter = self.meters[address]
            meter.uplinks += 1
            payload = self._payload(meter)
            every = self.every[address]
            self.next_at[address] = time.monotonic() + every if every else None
        self.client.publish(self.topic(address), payload, qos=1)

    def set_every(self, address: str, seconds: float | None) -> None:
        if address not in self.meters:
            raise KeyError(f"no simulated meter {address}")
        with self.lock:
            self.every[address] = seconds
            self.next_at[address] = time.monotonic() + seconds if seconds else None

    def tick(self, now: float) -> float | None:
        with self.lock:
            due_now = [address for address, due in self.next_at.items() if due is not None and due <= now]
        for address in due_now:
            self.uplink(address)
        with self.lock:
            pending = [due for due in self.next_at.values() if due is not None]
        return min(pending) if pending else None

    def _on_downlink(self, client: Any, userdata: Any, message: Any) -> None:
        address = message.topic.rsplit("/", 2)[-2]
        with self.lock:
            meter = self.meters.get(address)
            if meter is None:
                return
            reply = self._answer(meter, bytes(message.payload))
        if reply is not None:
            client.publish(self.topic(address), reply, qos=1)

    def _answer(self, meter: SimulatedMeter, payload: bytes) -> bytes | None:
        now = self.clock.now()
        if self.payload == "json":
            try:
                document = json.loads(payload)
            except ValueError:
                return None
            return json.dumps(meter.obey_json(document, now=now)).encode() if isinstance(document, dict) else None
        try:
            request = cjt188.decode(payload, di_order=self.di_order)
        except cjt188.FrameError:
            return None  # a meter does not answer what it cannot read
        if request.address != meter.address:
            return None
        return meter.answer(request, now=now, di_order=self.di_order, preamble=self.reply_preamble)

    def close(self) -> None:
        self.client.disconnect()  # wakes paho's loop, which then ends at once
        self.client.loop_stop()


@dataclass(frozen=True, slots=True)
class MeterSpec:
    """One meter of a ``--meters-file``: what the archives and the last readings say of a
    real meter, so a simulated bus can stand in for it (``shuiwu demo run``)."""

    address: str
    total_m3: float = 0.0
    meter_type: int = cjt188.DEFAULT_METER_TYPE
    di_order: cjt188.DiOrder = cjt188.DiOrder.be
    has_valve: bool = True
    valve_open: bool = True

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> MeterSpec:
        address = str(item["address"])
        if len(address) != 14 or not address.isdigit():
            raise ValueError(f"address {address!r} is not 14 digits")
        return cls(address=address, total_m3=float(item.get("total_m3", 0.0)),
                   meter_type=int(str(item.get("meter_type", "10")), 16), di_order=cjt188.DiOrder(item.get("di_order", "be")),
                   has_valve=bool(item.get("has_valve", True)), valve_open=bool(item.get("valve_open", True)))

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "total_m3": self.total_m3, "meter_type": f"{self.meter_type:02X}",
                "di_order": self.di_order.value, "has_valve": self.has_valve, "valve_open": self.valve_open}

    def meter(self, *, daily_m3: float, now: datetime) -> SimulatedMeter:
        return SimulatedMeter(address=self.address, total_m3=self.total_m3, settlement_m3=self.total_m3,
                              daily_m3=daily_m3, advanced_to=now, meter_type=self.meter_type,
                              # A meter without a valve lets water through (and reports it open).
                              has_valve=self.has_valve, valve_open=self.valve_open or not self.has_valve,
                              di_order=self.di_order)


def read_meters_file(path: Path) -> list[MeterSpec]:
    """The meters of a ``--meters-file``: a JSON list of ``{"address", "total_m3",
    "meter_type", "di_order", "has_valve", "valve_open"}`` (all but the address optional)."""
    items = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(items, list) or not items or len(items) > 250:
        raise ValueError("a meters file is a JSON list of 1 to 250 meters")
    specs = [MeterSpec.from_json(item) for item in items]
    if len({spec.address for spec in specs}) != len(specs):
        raise ValueError("a meters file lists an address twice")
    return specs


class MeterSimulator:
    """Several buses served by one thread. Faults and meter state can be changed between turns
    of :meth:`run` (from the control channel, or directly when it runs in this process)."""

    def __init__(self, buses: list[SimulatedBus], *, clock: SimulatedClock) -> None:
        self.buses = buses
        self.clock = clock
        self.mqtt: MqttMeters | None = None
        # Taken by whatever changes meters off the run loop's turn (paho's thread, NB-IoT).
        self.lock = threading.RLock()
        self._selector = selectors.DefaultSelector()
        self._stopping = False
        for bus in buses:
            bus.attach(self._selector)

    @classmethod
    def build(
        cls,
        *,
        buses: int = 1,
        meters_per_bus: int = 8,
        tcp: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        line: LineSettings | None = None,
        turnaround: float = 0.050,
        late_by: float = 1.5,
        reply_preamble: int = cjt188.DEFAULT_PREAMBLE,
        di_order: cjt188.DiOrder = cjt188.DiOrder.be,
        first_address: int = 1,
        daily_m3: float = 0.4,
        speed: float = 1.0,
        battery_low_share: float = 0.0,
        prepaid_share: float = 0.0,
        opening_balance_fen: int = 10_000,
        price_fen_per_m3: int = 500,
        fault_probabilities: dict[Fault, float] | None = None,
        seed: int = 188,
        listed: list[MeterSpec] | None = None,
    ) -> MeterSimulator:
        """``listed``: one bus of exactly these meters (``--meters-file``) instead of
        ``buses`` × ``meters_per_bus`` generated ones."""
        rng = random.Random(seed)
        clock = SimulatedClock(speed=speed)
        now = clock.now()
        built: list[SimulatedBus] = []
        for bus_index in range(1 if listed is not None else buses):
            endpoint: BusEndpoint = DtuEndpoint(host=host, port=port + bus_index if port else 0) if tcp else PtyEndpoint()
            meters = []
            if listed is not None:
                meters = [spec.meter(daily_m3=daily_m3 * rng.uniform(0.5, 1.5), now=now) for spec in listed]
            for meter_index in range(0 if listed is not None else meters_per_bus):
                total = round(rng.uniform(10, 2000), 2)
                prepaid = rng.random() < prepaid_share
                meters.append(
                    SimulatedMeter(
                        address=f"{first_address + bus_index * meters_per_bus + meter_index:014d}",
                        total_m3=total,
                        settlement_m3=round(total - rng.uniform(0, 10), 2),
                        daily_m3=daily_m3 * rng.uniform(0.5, 1.5),
                        advanced_to=now,
                        battery_low=rng.random() < battery_low_share,
                        prepaid=prepaid,
                        balance_fen=float(opening_balance_fen if prepaid else 0),
                        price_fen_per_m3=price_fen_per_m3,
                    )
                )
            bus = SimulatedBus(
                endpoint, meters, clock=clock, line=line or LineSettings(), turnaround=turnaround, late_by=late_by,
                reply_preamble=reply_preamble, di_order=di_order, rng=random.Random(rng.random()),
            )
            bus.fault_probabilities = dict(fault_probabilities or {})
            built.append(bus)
        return cls(built, clock=clock)

    # -- what can be changed while it runs --------------------------------------------

    @classmethod
    def build_mqtt(cls, url: str, *, meters: int = 8, prefix: str = "shuiwu/meters", uplink_every: float = 3600.0,
                   payload: str = "cjt188", di_order: cjt188.DiOrder = cjt188.DiOrder.be,
                   reply_preamble: int = cjt188.DEFAULT_PREAMBLE, first_address: int = 1, daily_m3: float = 0.4,
                   speed: float = 1.0, seed: int = 188) -> MeterSimulator:
        """N NB-IoT meters on the broker at ``url`` (no buses)."""
        rng = random.Random(seed)
        simulator = cls([], clock=SimulatedClock(speed=speed))
        now = simulator.clock.now()
        built = []
        for index in range(meters):
            total = round(rng.uniform(10, 2000), 2)
            built.append(SimulatedMeter(address=f"{first_address + index:014d}", total_m3=total,
                                        settlement_m3=round(total - rng.uniform(0, 10), 2),
                                        daily_m3=daily_m3 * rng.uniform(0.5, 1.5), advanced_to=now))
        simulator.mqtt = MqttMeters(url, built, clock=simulator.clock, lock=simulator.lock, prefix=prefix,
                                    uplink_every=uplink_every, payload=payload, di_order=di_order,
                                    reply_preamble=reply_preamble)
        return simulator

    def meter(self, address: str) -> SimulatedMeter:
        if self.mqtt is not None and address in self.mqtt.meters:
            return self.mqtt.meters[address]
        for bus in self.buses:
            if address in bus.meters:
                return bus.meters[address]
        raise KeyError(f"no simulated meter {address}")

    def inject(self, address: str, fault: Fault, *, times: int = 1) -> None:
        """The meter's next ``times`` replies get ``fault`` (:data:`ALWAYS`: every one; 0 clears it)."""
        self.meter(address).faults[fault] = times

    def set_probability(self, fault: Fault, probability: float) -> None:
        for bus in self.buses:
            bus.fault_probabilities[fault] = probability

    def clear_faults(self) -> None:
        for bus in self.buses:
            bus.fault_probabilities.clear()
            bus.vanish_at_next_request = False
            for meter in bus.meters.values():
                meter.faults.clear()

    def vanish(self, bus: int = 0) -> None:
        """The bus's port goes away in the middle of its next exchange."""
        self.buses[bus].vanish_at_next_request = True

    def set_meter(self, address: str, **values: Any) -> None:
        meter = self.meter(address)
        meter.advance(self.clock.now())  # what flowed so far flowed under the old state
        # purchase_count: a meter fitted with purchases on it, or written to by another system.
        for name in ("valve_open", "has_valve", "battery_low", "daily_m3", "total_m3", "prepaid", "balance_fen",
                     "settlement_day", "reading_day", "key_version", "keeps_params", "purchase_count"):
            if name in values:
                setattr(meter, name, values.pop(name))
        if "price_table" in values:
            table = values.pop("price_table")
            meter.price_table = cjt188.PriceTable(tuple(table["prices_fen"]), tuple(table["steps_m3"]))
        if values:
            raise KeyError(f"cannot set {', '.join(values)}")

    # -- running ---------------------------------------------------------------------

    def watch(self, fd: int, on_readable: Callable[[], None]) -> None:
        self._selector.register(fd, selectors.EVENT_READ, on_readable)

    def stop(self) -> None:
        self._stopping = True

    def run(self) -> None:
        try:
            while not self._stopping:
                now = time.monotonic()
                for bus in self.buses:
                    bus.transmit_due(now)
                deadlines = [deadline for bus in self.buses if (deadline := bus.next_deadline()) is not None]
                if self.mqtt is not None:
                    due = self.mqtt.tick(now)
                    if due is not None:
                        deadlines.append(due)
                wait = min(0.5, max(0.0, min(deadlines) - time.monotonic())) if deadlines else 0.5
                for key, _ in self._selector.select(wait):
                    key.data()
        finally:
            if self.mqtt is not None:
                self.mqtt.close()


# ---------------------------------------------------------------------------- control channel


def _control_command(simulator: MeterSimulator, command: dict[str, Any]) -> dict[str, Any]:
    match command.get("op"):
        case "fault":
            simulator.inject(command["address"], Fault(command["fault"]), times=int(command.get("times", 1)))
        case "probability":
            simulator.set_probability(Fault(command["fault"]), float(command["p"]))
        case "clear":
            simulator.clear_faults()
        case "vanish":
            simulator.vanish(int(command.get("bus", 0)))
        case "set":
            simulator.set_meter(command["address"], **command.get("values", {}))
        case "meter":
            return {"ok": True, "meter": simulator.meter(command["address"]).snapshot(simulator.clock.now())}
        case "uplink" if simulator.mqtt is not None:
            simulator.mqtt.uplink(command["address"])
        case "uplink_every" if simulator.mqtt is not None:
            every = command.get("seconds")
            simulator.mqtt.set_every(command["address"], float(every) if every else None)
        case other:
            return {"ok": False, "error": f"unknown op {other!r}"}
    return {"ok": True}


def _serve_control(simulator: MeterSimulator) -> None:
    """JSON lines on stdin, one JSON answer line each on stdout; EOF (the parent went) stops."""
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    pending = bytearray()

    def readable() -> None:
        try:
            chunk = os.read(stdin, 65536)
        except BlockingIOError:
            return
        if not chunk:
            simulator.stop()
            return
        pending.extend(chunk)
        while b"\n" in pending:
            line, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            try:
                with simulator.lock:
                    answer = _control_command(simulator, json.loads(line))
            except (KeyError, ValueError, TypeError) as error:
                answer = {"ok": False, "error": str(error)}
            print(json.dumps(answer), flush=True)

    simulator.watch(stdin, readable)


# ---------------------------------------------------------------------------- CLI


simulate_app = typer.Typer(help="Simulators of field devices for tests and demos.", no_args_is_help=True)


@simulate_app.callback()
def _simulate() -> None:
    """Simulators of field devices (``meters``: CJ/T 188 water meters)."""


def _fault_probability(text: str) -> tuple[Fault, float]:
    name, _, probability = text.partition("=")
    return Fault(name), float(probability)


@simulate_app.command("meters")
def simulate_meters(
    meters: Annotated[int, typer.Option("--meters", min=1, max=250, help="Meters per bus.")] = 8,
    buses: Annotated[int, typer.Option("--buses", min=1, max=256, help="Buses, each its own pty or TCP port.")] = 1,
    tcp: Annotated[bool, typer.Option("--tcp", help="Act as transparent TCP DTUs instead of ptys.")] = False,
    host: Annotated[str, typer.Option("--host", help="Address the DTUs listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="First DTU port (0: any free one).")] = 0,
    baud: Annotated[int, typer.Option("--baud", min=300, help="Line speed the replies are paced at.")] = 2400,
    parity: Annotated[str, typer.Option("--parity", help="N, E or O (counts in the bits per byte).")] = "E",
    stop_bits: Annotated[int, typer.Option("--stop-bits", min=1, max=2)] = 1,
    turnaround: Annotated[float, typer.Option("--turnaround", min=0, help="Seconds between request and reply.")] = 0.050,
    late_by: Annotated[float, typer.Option("--late-by", min=0, help="How late a `late` reply comes, in seconds.")] = 1.5,
    reply_preamble: Annotated[int, typer.Option("--reply-preamble", min=0, max=16, help="FE bytes before each reply.")] = 2,
    di_order: Annotated[cjt188.DiOrder, typer.Option("--di-order", help="be: 90 1F on the wire; le: 1F 90.")] = cjt188.DiOrder.be,
    first_address: Annotated[int, typer.Option("--first-address", min=0, help="Address of the first meter; the rest follow.")] = 1,
    daily_m3: Annotated[float, typer.Option("--daily-m3", min=0, help="Mean use per meter per day.")] = 0.4,
    speed: Annotated[float, typer.Option("--speed", min=0, help="Simulated seconds per real second (register and clock).")] = 1.0,
    battery_low: Annotated[float, typer.Option("--battery-low", min=0, max=1, help="Share of meters with a low battery.")] = 0.0,
    prepaid: Annotated[float, typer.Option("--prepaid", min=0, max=1, help="Share of meters keeping their own "
                                           "balance (8105, A013), closing their valve when it runs out.")] = 0.0,
    opening_balance: Annotated[int, typer.Option("--opening-balance", min=0, help="Prepaid meters' balance at start, fen.")] = 10_000,
    price: Annotated[int, typer.Option("--price", min=0, help="Prepaid meters' price, fen per m³.")] = 500,
    fault: Annotated[list[str] | None, typer.Option("--fault", help="FAULT=P: probability of a fault on every reply "
                                                  "(drop, corrupt, late, wrong_address, echo); repeatable.")] = None,
    meter_fault: Annotated[list[str] | None, typer.Option("--meter-fault", help="ADDRESS=FAULT: that meter always has it; "
                                                        "repeatable.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of totals, daily use and random faults.")] = 188,
    meters_file: Annotated[Path | None, typer.Option(
        "--meters-file", dir_okay=False, exists=True,
        help="One bus of exactly these meters: a JSON list of {address, total_m3, meter_type, di_order, has_valve, "
             "valve_open} (instead of --buses and --meters).")] = None,
    control: Annotated[bool, typer.Option("--control", help="JSON lines on stdin/stdout (SimulatorProcess).")] = False,
    mqtt: Annotated[str | None, typer.Option("--mqtt", help="NB-IoT meters on this MQTT broker (mqtt://host:port) "
                                             "instead of buses: --meters of them.")] = None,
    mqtt_prefix: Annotated[str, typer.Option("--mqtt-prefix", help="Their topics: PREFIX/ADDRESS/up and "
                                             "PREFIX/ADDRESS/down.")] = "shuiwu/meters",
    uplink_every: Annotated[float, typer.Option("--uplink-every", min=0.05, help="Seconds between a meter's uplinks "
                                                "(the first ones staggered over one interval).")] = 3600.0,
    payload: Annotated[str, typer.Option("--payload", help="What NB-IoT meters publish: cjt188 (frames) or json.")] = "cjt188",
) -> None:
    """Run N CJ/T 188 meters per bus on ptys (or TCP DTUs) until Ctrl-C; print each bus's port, one a line.
    With --mqtt, N NB-IoT meters on that broker instead; print each meter's uplink topic."""
    if mqtt is not None:
        _simulate_nb_iot(mqtt, meters=meters, prefix=mqtt_prefix, uplink_every=uplink_every, payload=payload,
                         di_order=di_order, reply_preamble=reply_preamble, first_address=first_address,
                         daily_m3=daily_m3, speed=speed, seed=seed, control=control)
        return
    if parity.upper() not in ("N", "E", "O"):
        typer.echo(f"bad --parity {parity!r}: N, E or O", err=True)
        raise typer.Exit(2)
    try:
        probabilities = dict(_fault_probability(text) for text in fault or [])
        always = [(address, Fault(name)) for address, _, name in (text.partition("=") for text in meter_fault or [])]
    except ValueError as error:
        typer.echo(f"bad fault: {error} (faults: {', '.join(Fault)})", err=True)
        raise typer.Exit(2) from None
    listed = None
    if meters_file is not None:
        try:
            listed = read_meters_file(meters_file)
        except (ValueError, KeyError, TypeError) as error:
            typer.echo(f"bad --meters-file {meters_file}: {error}", err=True)
            raise typer.Exit(2) from None
    simulator = MeterSimulator.build(
        buses=buses, meters_per_bus=meters, tcp=tcp, host=host, port=port,
        line=LineSettings(baudrate=baud, parity=parity.upper(), stopbits=stop_bits), turnaround=turnaround,
        late_by=late_by, reply_preamble=reply_preamble, di_order=di_order, first_address=first_address,
        daily_m3=daily_m3, speed=speed, battery_low_share=battery_low, prepaid_share=prepaid,
        opening_balance_fen=opening_balance, price_fen_per_m3=price, fault_probabilities=probabilities, seed=seed,
        listed=listed,
    )
    try:
        for address, always_fault in always:
            simulator.inject(address, always_fault, times=ALWAYS)
    except KeyError as error:
        typer.echo(f"bad --meter-fault: {error}", err=True)
        raise typer.Exit(2) from None
    if control:
        print(json.dumps({"buses": [{"url": bus.endpoint.url, "meters": list(bus.meters)} for bus in simulator.buses]}), flush=True)
        _serve_control(simulator)
    else:
        for bus in simulator.buses:
            print(bus.endpoint.url, flush=True)
        for bus in simulator.buses:
            addresses = list(bus.meters)
            typer.echo(f"{bus.endpoint.url}: {len(addresses)} meters {addresses[0]}–{addresses[-1]}, "
                       f"{baud} baud {8}{parity.upper()}{stop_bits}", err=True)
    signal.signal(signal.SIGTERM, lambda *_: simulator.stop())
    with contextlib.suppress(KeyboardInterrupt):
        simulator.run()


def _simulate_nb_iot(url: str, *, meters: int, prefix: str, uplink_every: float, payload: str,
                     di_order: cjt188.DiOrder, reply_preamble: int, first_address: int, daily_m3: float, speed: float,
                     seed: int, control: bool) -> None:
    if payload not in ("cjt188", "json"):
        typer.echo(f"bad --payload {payload!r}: cjt188 or json", err=True)
        raise typer.Exit(2)
    if not url.startswith(("mqtt://", "mqtts://", "tcp://")):
        typer.echo(f"bad --mqtt {url!r}: mqtt://host[:port]", err=True)
        raise typer.Exit(2)
    simulator = MeterSimulator.build_mqtt(url, meters=meters, prefix=prefix, uplink_every=uplink_every, payload=payload,
                                          di_order=di_order, reply_preamble=reply_preamble, first_address=first_address,
                                          daily_m3=daily_m3, speed=speed, seed=seed)
    assert simulator.mqtt is not None
    if not simulator.mqtt.subscribed.wait(10):
        simulator.mqtt.close()
        typer.echo(f"no MQTT broker answers at {url}", err=True)
        raise typer.Exit(1)
    topics = {address: simulator.mqtt.topic(address) for address in simulator.mqtt.meters}
    if control:
        print(json.dumps({"buses": [], "mqtt": {"url": url, "payload": payload, "topics": topics}}), flush=True)
        _serve_control(simulator)
    else:
        for topic in topics.values():
            print(topic, flush=True)
        typer.echo(f"{url}: {meters} NB-IoT meters ({payload}) publishing every {uplink_every:g} s under {prefix}/",
                   err=True)
    signal.signal(signal.SIGTERM, lambda *_: simulator.stop())
    with contextlib.suppress(KeyboardInterrupt):
        simulator.run()


# ---------------------------------------------------------------------------- from Python


class SimulatorProcess:
    """``shuiwu simulate meters --control`` in a child process, driven from Python.

    ``with SimulatorProcess(meters=8, baud=115200) as simulator: simulator.urls[0]``; the
    keyword arguments are the command's options (``tcp=True``, ``fault=["drop=0.1"]``)."""

    def __init__(self, **options: Any) -> None:
        self.arguments: list[str] = []
        for name, value in options.items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                self.arguments.append(flag)
            elif value is False or value is None:
                continue
            elif isinstance(value, list | tuple):
                for item in value:
                    self.arguments += [flag, str(item)]
            else:
                self.arguments += [flag, str(value)]
        self.urls: list[str] = []
        self.addresses: list[list[str]] = []
        # NB-IoT (``mqtt=URL``): each meter's uplink topic, by address.
        self.topics: dict[str, str] = {}
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> SimulatorProcess:
        root = Path(__file__).resolve().parents[1]
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "acquisition.simulator", "meters", "--control", *self.arguments],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment,
        )
        assert self._process.stdout is not None
        ready = self._process.stdout.readline()
        if not ready:
            self._process.wait()
            raise RuntimeError(f"the meter simulator did not start (exit {self._process.returncode})")
        started = json.loads(ready)
        self.urls = [bus["url"] for bus in started["buses"]]
        self.addresses = [bus["meters"] for bus in started["buses"]]
        self.topics = dict(started.get("mqtt", {}).get("topics", {}))
        return self

    def _ask(self, **command: Any) -> dict[str, Any]:
        assert self._process is not None and self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the meter simulator has exited (code {self._process.poll()})")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"simulator refused {command}: {answer.get('error')}")
        return answer

    def inject(self, address: str, fault: Fault, *, times: int = 1) -> None:
        self._ask(op="fault", address=address, fault=fault.value, times=times)

    def set_probability(self, fault: Fault, probability: float) -> None:
        self._ask(op="probability", fault=fault.value, p=probability)

    def clear_faults(self) -> None:
        self._ask(op="clear")

    def vanish(self, bus: int = 0) -> None:
        self._ask(op="vanish", bus=bus)

    def set_meter(self, address: str, **values: Any) -> None:
        self._ask(op="set", address=address, values=values)

    def meter(self, address: str) -> dict[str, Any]:
        meter: dict[str, Any] = self._ask(op="meter", address=address)["meter"]
        return meter

    def uplink(self, address: str) -> None:
        """An NB-IoT meter publishes its current data now."""
        self._ask(op="uplink", address=address)

    def uplink_every(self, address: str, seconds: float | None) -> None:
        """An NB-IoT meter's period from now on (None: it publishes only when told to)."""
        self._ask(op="uplink_every", address=address, seconds=seconds)

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()  # EOF: the simulator stops
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    simulate_app()
