"""Links to a meter bus: one request at a time, one reply back, failures in four kinds.

A link is opened from a URL through pyserial's ``serial_for_url``: a serial port
(``/dev/ttyUSB0``, a pty such as ``/dev/pts/5``), ``rfc2217://host:port`` (a serial
server) or ``socket://host:port`` (a transparent TCP DTU the worker dials). The line
settings (baud rate, parity, stop bits) are the bus's; a DTU ignores them, but they still
say how long the bytes take on the RS-485 side behind it.

:meth:`SerialLink.exchange` sends one CJ/T 188 request and returns the reply frame
(``68 … 16``, preamble stripped). It

- drains what is left in the input before sending, so an old reply is never taken for
  this one;
- stamps each attempt with its own SER byte (checksum rewritten), and skips a reply whose
  SER is another attempt's: a late answer to a timed-out attempt arriving during the retry
  is not this attempt's answer;
- skips the ``FE`` preamble and line noise before ``68``, skips the echo of our own request
  (half-duplex adapters and DTUs that loop the bus back), and reads partial chunks until
  the frame's length byte says it is complete: no waiting for a gap at the end;
- gives the first byte the request's own line time plus the response timeout (per meter
  model), and every later byte the inter-byte timeout;
- retries timeouts and bad frames (a bus hit by noise answers the next time), never a
  device's error reply (it answered: asking again gets the same answer) nor a link that is
  down (reconnecting with backoff is the coordinator's job; the next exchange reopens).

Failures are :class:`LinkFailure` subclasses, each with its :class:`FailureKind`, the one
place driver exceptions are translated.

**Threads.** The blocking core (:class:`SerialLink`) runs on a thread of its own per link:
:class:`AsyncLink` gives each link a one-thread executor, so ``await link.exchange(...)``
queues behind the bus's current exchange (one request at a time per bus by construction)
and 32 buses get 32 threads instead of sharing the default executor's six. A thread rather
than ``loop.add_reader`` because pyserial's ``rfc2217://`` reads through its own thread and
a queue (no file descriptor to watch), serial writes and termios calls block, and the
reader loop above is the same code for every URL; the threads spend their time in
``select`` with the GIL released, so they cost little.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import termios
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Protocol

import serial

from acquisition.protocols import cjt188


class FailureKind(StrEnum):
    """What went wrong, as the scheduler and the abnormal-meter rules understand it."""

    timeout = "timeout"  # no reply (or none in time)
    bad_frame = "bad_frame"  # a reply that is not a valid answer: checksum, truncation, noise, wrong address
    device_error = "device_error"  # the meter answered with an error reply
    link_down = "link_down"  # the port or the DTU connection is gone


class LinkFailure(Exception):
    """An exchange that produced no usable reply. ``attempts`` is how many were made."""

    kind: ClassVar[FailureKind]

    def __init__(self, reason: str, *, attempts: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts

    def __str__(self) -> str:
        return f"{self.kind}: {self.reason} (attempts: {self.attempts})"


class ReplyTimeout(LinkFailure):
    kind = FailureKind.timeout


class BadReply(LinkFailure):
    kind = FailureKind.bad_frame


class DeviceErrorReply(LinkFailure):
    """The meter answered with an error reply; ``status`` is its two status bytes, ST0 the low byte."""

    kind = FailureKind.device_error

    def __init__(self, reason: str, *, status: int, attempts: int = 1) -> None:
        super().__init__(reason, attempts=attempts)
        self.status = status


class LinkDown(LinkFailure):
    kind = FailureKind.link_down


@dataclass(frozen=True)
class LineSettings:
    """Serial framing of a bus. CJ/T 188 over M-Bus / RS-485 is 2400 baud 8E1."""

    baudrate: int = 2400
    bytesize: int = 8
    parity: str = serial.PARITY_EVEN
    stopbits: int = 1

    @property
    def bits_per_byte(self) -> int:
        """Start bit, data bits, parity bit if any, stop bits: 8E1 is 11."""
        return 1 + self.bytesize + (0 if self.parity == serial.PARITY_NONE else 1) + self.stopbits

    def line_time(self, byte_count: int) -> float:
        """Seconds ``byte_count`` bytes take on the wire."""
        return byte_count * self.bits_per_byte / self.baudrate


@dataclass(frozen=True)
class ExchangeTiming:
    """Per meter model: how long a meter may think, and how many tries an exchange gets.

    ``inter_byte_timeout`` ``None`` means twenty byte times, at least 20 ms: a USB adapter or
    a DTU delivers in chunks, and a gap longer than that inside a frame means it was cut.
    """

    response_timeout: float = 1.0
    inter_byte_timeout: float | None = None
    retries: int = 2

    def inter_byte(self, line: LineSettings) -> float:
        if self.inter_byte_timeout is not None:
            return self.inter_byte_timeout
        return max(0.020, line.line_time(20))


@dataclass
class LinkStatistics:
    """What a link has seen since it was made; the bench and the tests read it."""

    exchanges: int = 0
    attempts: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    echoes_skipped: int = 0
    stale_replies_skipped: int = 0
    failures: dict[FailureKind, int] = field(default_factory=lambda: dict.fromkeys(FailureKind, 0))


class _Port(Protocol):
    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes, /) -> int | None: ...
    def reset_input_buffer(self) -> None: ...
    def close(self) -> None: ...


_HEADER = cjt188.HEADER_LENGTH  # 68 T A0..A6 C L: after these the length byte says how much follows
_START = cjt188.START
_SER_OFFSET = _HEADER + 2  # a request's data field starts DI0 DI1 SER
_POLL_SLICE = 0.010  # how late a deadline may be noticed
_LONGEST_FRAME = cjt188.MIN_FRAME_LENGTH + 0xFF + 16  # the longest data field and preamble


def stamped_with_serial_number(request: bytes, serial_number: int) -> bytes:
    """``request`` (preamble kept) with its SER byte replaced and its checksum redone."""
    start = request.index(_START)
    frame = bytearray(request[start:])
    if len(frame) < _SER_OFFSET + 3:
        raise ValueError("a request carries DI and SER")
    frame[_SER_OFFSET] = serial_number
    frame[-2] = cjt188.checksum(bytes(frame[:-2]))
    return request[:start] + bytes(frame)


class SerialLink:
    """The blocking core: one bus, one request at a time (callers on several threads queue)."""

    def __init__(
        self,
        url: str,
        *,
        line: LineSettings | None = None,
        timing: ExchangeTiming | None = None,
        opener: Callable[..., Any] = serial.serial_for_url,
    ) -> None:
        self.url = url
        self.line = line or LineSettings()
        self.timing = timing or ExchangeTiming()
        self.statistics = LinkStatistics()
        self._opener = opener
        self._port: _Port | None = None
        self._serial_number = 0
        self._lock = threading.Lock()

    # -- connection --------------------------------------------------------------------

    def open(self) -> None:
        """Open the port now (an exchange also opens it when needed). Raises :class:`LinkDown`."""
        with self._lock:
            self._ensure_open()

    def close(self) -> None:
        with self._lock:
            self._drop_port()

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def __enter__(self) -> SerialLink:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_open(self) -> _Port:
        if self._port is None:
            try:
                # Every setting goes to the constructor: re-configuring an open pty with
                # parity fails (EINVAL), and so would changing the timeout later (pyserial
                # re-applies termios), so the timeout is a fixed poll slice and
                # _read_frame keeps the response and inter-byte deadlines itself.
                self._port = self._opener(
                    self.url,
                    baudrate=self.line.baudrate,
                    bytesize=self.line.bytesize,
                    parity=_parity_to_configure(self.url, self.line.parity),
                    stopbits=self.line.stopbits,
                    timeout=min(_POLL_SLICE, self.timing.inter_byte(self.line)),
                    write_timeout=max(1.0, 4 * self.line.line_time(_LONGEST_FRAME)),
                )
            except (serial.SerialException, OSError, termios.error, ValueError) as error:
                raise LinkDown(f"cannot open {self.url}: {error}") from error
        return self._port

    def _drop_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            # It may be gone already: that is why it is being dropped.
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()

    # -- exchange ----------------------------------------------------------------------

    def exchange(self, request: bytes, *, timeout: float | None = None, retries: int | None = None) -> bytes:
        """Send ``request`` (a CJ/T 188 frame, with or without preamble) and return the reply frame.

        The reply is checked as a reply to this request (checksum, length, end byte,
        address, function, SER); its payload is the caller's to decode with the meter
        model's DI order.

        ``timeout`` is the response timeout (the model's), counted after the request's own line
        time. Raises a :class:`LinkFailure` after ``retries`` further attempts where retrying
        makes sense.
        """
        response_timeout = self.timing.response_timeout if timeout is None else timeout
        tries = 1 + (self.timing.retries if retries is None else retries)
        with self._lock:
            self.statistics.exchanges += 1
            attempts = 0
            while True:
                attempts += 1
                self.statistics.attempts += 1
                try:
                    return self._attempt(request, response_timeout)
                except LinkFailure as failure:
                    retryable = isinstance(failure, ReplyTimeout | BadReply)
                    if retryable and attempts < tries:
                        continue
                    failure.attempts = attempts
                    self.statistics.failures[failure.kind] += 1
                    raise

    def _attempt(self, request: bytes, response_timeout: float) -> bytes:
        port = self._ensure_open()
        self._serial_number = (self._serial_number + 1) % 256
        stamped = stamped_with_serial_number(request, self._serial_number)
        sent_frame = stamped[stamped.index(_START):]
        try:
            port.reset_input_buffer()
            port.write(stamped)
            sent_at = time.monotonic()
            self.statistics.bytes_sent += len(stamped)
            # A pty or a socket takes the bytes at once; a UART still has to clock them out.
            first_byte_deadline = sent_at + self.line.line_time(len(stamped)) + response_timeout
            while True:
                frame = self._read_frame(port, first_byte_deadline)
                if frame == sent_frame:
                    self.statistics.echoes_skipped += 1
                    continue
                if self._answers_an_earlier_attempt(frame, sent_frame):
                    self.statistics.stale_replies_skipped += 1
                    continue
                self._check_reply(frame, sent_frame)
                return frame
        except (serial.SerialException, OSError) as error:
            self._drop_port()
            raise LinkDown(f"{self.url}: {error}") from error

    def _read_frame(self, port: _Port, first_byte_deadline: float) -> bytes:
        """The next frame on the line: noise and preamble before ``68`` skipped, its end found
        by the length byte. Reads come back at least every poll slice (the port's fixed
        timeout), so the deadlines here are kept to within one slice."""
        inter_byte = self.timing.inter_byte(self.line)
        frame = bytearray()
        skipped = 0
        total = _HEADER
        last_byte_at = 0.0
        while len(frame) < total:
            # Never ask for more than this frame still needs: what follows it is the next one's.
            chunk = port.read(total - len(frame))
            now = time.monotonic()
            if not chunk:
                if frame:
                    if now - last_byte_at >= inter_byte:
                        raise BadReply(f"frame cut after {len(frame)} of {total} bytes: {frame.hex(' ').upper()}")
                elif now >= first_byte_deadline:
                    if skipped:
                        raise BadReply(f"{skipped} bytes of noise and no frame")
                    raise ReplyTimeout("no reply")
                continue
            last_byte_at = now
            self.statistics.bytes_received += len(chunk)
            if not frame:
                start = chunk.find(_START)
                if start < 0:
                    skipped += sum(1 for byte in chunk if byte != cjt188.PREAMBLE_BYTE)
                    if now >= first_byte_deadline:  # a babbling line must not hold the bus forever
                        raise BadReply(f"{skipped} bytes of noise and no frame")
                    continue
                skipped += sum(1 for byte in chunk[:start] if byte != cjt188.PREAMBLE_BYTE)
                chunk = chunk[start:]
            frame += chunk
            if len(frame) >= _HEADER:
                total = cjt188.frame_length(bytes(frame[:_HEADER]))
        return bytes(frame)

    def _answers_an_earlier_attempt(self, frame: bytes, sent_frame: bytes) -> bool:
        try:
            reply = cjt188.decode(frame)
        except cjt188.FrameError:
            return False  # not readable enough to tell: _check_reply says what is wrong with it
        return reply.ser != sent_frame[_SER_OFFSET]

    def _check_reply(self, frame: bytes, sent_frame: bytes) -> None:
        try:
            reply = cjt188.decode(frame)
        except cjt188.FrameError as error:
            raise BadReply(f"{error}: {frame.hex(' ').upper()}") from error
        asked = frame_address(sent_frame)
        if asked != cjt188.BROADCAST_ADDRESS and reply.address != asked:
            raise BadReply(f"reply from address {reply.address}, asked {asked}")
        request_function = sent_frame[9] & cjt188.FUNCTION_MASK
        if not reply.is_reply or reply.control & cjt188.FUNCTION_MASK != request_function:
            raise BadReply(f"control {reply.control:02X} does not answer {sent_frame[9]:02X}")
        if isinstance(reply, cjt188.ErrorReply):
            raise DeviceErrorReply(
                f"meter {reply.address} answered error status {reply.status.st0:02X} {reply.status.st1:02X}",
                status=reply.status.bits,
            )


def _parity_to_configure(url: str, parity: str) -> str:
    """A pty has no parity (its driver drops the bit), and asking for it again once the
    pty's other settings already match fails with EINVAL, so the second opening of a
    simulator's port would: a pty gets none. The line time still counts the parity bit."""
    return serial.PARITY_NONE if url.startswith("/dev/pts/") else parity


def frame_address(frame: bytes) -> str:
    """The address of a frame that starts at ``68`` (``AAAAAAAAAAAAAA`` for broadcast)."""
    return cjt188.parse_address(frame[2:9])


class AsyncLink:
    """:class:`SerialLink` for the event loop: every exchange runs on the link's own thread."""

    def __init__(self, link: SerialLink) -> None:
        self.link = link
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"link {link.url}")

    @classmethod
    def open_url(cls, url: str, *, line: LineSettings | None = None, timing: ExchangeTiming | None = None) -> AsyncLink:
        return cls(SerialLink(url, line=line, timing=timing))

    # ``timeout`` is the meter model's response timeout handed to the exchange, not a deadline
    # for the await: the name the worker's callers use for it.
    async def exchange(self, request: bytes, *, timeout: float | None = None, retries: int | None = None) -> bytes:  # noqa: ASYNC109
        """As :meth:`SerialLink.exchange`. Cancelling the caller does not cut the exchange on the
        wire short (a half-sent frame would confuse the bus); the next one waits for it."""
        loop = asyncio.get_running_loop()
        call = functools.partial(self.link.exchange, request, timeout=timeout, retries=retries)
        return await loop.run_in_executor(self._thread, call)

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self.link.close)
        self._thread.shutdown(wait=True)
