"""CJ/T 188-2004 (户用计量仪表数据传输技术条件) frames, as pure functions over bytes.

Public API (kept stable; the simulator and the transport build on it):

- Wire: ``frame_length(header)`` (where a frame ends, from its length byte),
  ``find_frame(buffer, echo=None) -> (frame | None, consumed)`` (skips preamble, noise
  and the echo of our own request), ``checksum(bytes)``.
- Requests: ``encode_read`` (``901F`` by default; ``di=`` ``8102`` price table, ``8103``
  settlement day, ``8104`` reading day, ``8105`` purchase data), ``encode_read_history``,
  ``encode_read_key_version`` (control 09, ``8106``), ``encode_valve``,
  ``encode_write_clock``, ``encode_write_purchase``, ``encode_write_prices`` (``A010``),
  ``encode_write_day`` (``A011`` / ``A012``), ``encode_write_address`` (control 15,
  ``A018``), ``encode_factory_start`` (``A019``), ``encode_read_address``.
- Replies (what a meter sends; the simulator uses them): ``encode_meter_data_reply``,
  ``encode_history_reply``, ``encode_purchase_data_reply``, ``encode_prices_reply``,
  ``encode_day_reply``, ``encode_key_version_reply``, ``encode_write_reply``,
  ``encode_purchase_reply``, ``encode_address_reply``, ``encode_error_reply``; all built
  on ``encode_frame``.
- ``decode(frame, di_order=…) -> Frame`` and its inverse ``encode(frame, di_order=…)``:
  one frozen dataclass per kind of frame (``MeterData``, ``HistoryData``,
  ``PurchaseData``, ``PriceTableData``, ``DayData``, ``KeyVersionData``, ``WriteReply``,
  ``PurchaseReply``, ``AddressReply``, ``ErrorReply``, ``ReadRequest``, ``ValveRequest``,
  ``ClockRequest``, ``PurchaseRequest``, ``PriceTableRequest``, ``DayRequest``,
  ``AddressWriteRequest``, ``FactoryStartRequest``, ``ReadAddressRequest``,
  ``OtherData``); ``to_json(frame)`` is the dict ``shuiwu frame decode --json`` prints.
- Per meter model: ``DiOrder`` (``be`` = ``90 1F`` on the wire, ``le`` = ``1F 90``;
  ``di_order_for(DiByteOrder)`` maps the archives' setting), the preamble length
  (``preamble=``, default 2) and the register's decimals (``volume_decimals=``, default 2).
  Every encoder takes the frame options ``meter_type``, ``ser``, ``di_order`` and
  ``preamble`` by keyword (``DataFrameOptions``; an error reply has no ``di_order``).
- Errors: ``FrameError`` and its kinds ``BadStart``, ``BadLength``, ``MissingEnd``,
  ``BadChecksum``, ``NotBcd``, ``BadData``; each message is one line.

The frame: ``[FE…] 68 T A0..A6 C L DI0 DI1 SER data… CS 16``. The address is 14 BCD
digits, low byte first (A5 A6 are the maker's code). C: bit 7 set in a meter's reply,
bit 6 set in an error reply (whose data is ``SER ST0 ST1``), bits 0-5 the function (01
read data, 04 write data, 03 read address, 09 read key version, 15 write address). CS is the byte sum, mod 256, from the ``68``
through the last data byte. Multi-byte values go low byte first; the data identifier is
the exception vendors disagree on, hence ``DiOrder``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    # Only in annotations (strings here), so the codec needs no typing_extensions at run time.
    from typing_extensions import Unpack

    from backend.archives.models import MeterType

START = 0x68
END = 0x16
PREAMBLE_BYTE = 0xFE
# 68 T A0..A6 C L: what a reader needs before it knows where the frame ends.
HEADER_LENGTH = 11
# Header, CS and 16 around an empty data field.
MIN_FRAME_LENGTH = HEADER_LENGTH + 2
DEFAULT_PREAMBLE = 2
DEFAULT_METER_TYPE = 0x10
DEFAULT_VOLUME_DECIMALS = 2
BROADCAST_ADDRESS = "AAAAAAAAAAAAAA"


class Control(IntEnum):
    READ_DATA = 0x01
    READ_DATA_REPLY = 0x81
    READ_DATA_ERROR = 0xC1
    READ_ADDRESS = 0x03
    READ_ADDRESS_REPLY = 0x83
    READ_ADDRESS_ERROR = 0xC3
    WRITE_DATA = 0x04
    WRITE_DATA_REPLY = 0x84
    WRITE_DATA_ERROR = 0xC4
    READ_KEY_VERSION = 0x09
    READ_KEY_VERSION_REPLY = 0x89
    READ_KEY_VERSION_ERROR = 0xC9
    WRITE_ADDRESS = 0x15
    WRITE_ADDRESS_REPLY = 0x95
    WRITE_ADDRESS_ERROR = 0xD5


REPLY_BIT = 0x80
ERROR_BIT = 0x40
FUNCTION_MASK = 0x3F


class DataId(IntEnum):
    """Data identifiers (数据标识) in the standard's notation (``901F``, whatever the wire order)."""

    METER_DATA = 0x901F  # 计量数据: totals, clock, status
    HISTORY_1 = 0xD120  # 历史计量数据: last month's settlement-day total … D12B: 12 months ago
    HISTORY_12 = 0xD12B
    READ_PRICES = 0x8102  # 读价格表: three prices and the two step volumes between them
    READ_SETTLEMENT_DAY = 0x8103  # 读结算日 (DD)
    READ_READING_DAY = 0x8104  # 读抄表日 (DD)
    READ_PURCHASE = 0x8105  # 读购入金额: purchase count, amounts bought, balance left
    READ_KEY_VERSION = 0x8106  # 读密钥版本号 (control 09)
    READ_ADDRESS = 0x810A  # 读地址 (control 03)
    WRITE_PRICES = 0xA010  # 写价格表: the table of 8102 and the day it takes effect
    WRITE_SETTLEMENT_DAY = 0xA011  # 写结算日
    WRITE_READING_DAY = 0xA012  # 写抄表日
    WRITE_PURCHASE = 0xA013  # 写购入金额: purchase count + amount, for meters keeping their balance
    WRITE_CLOCK = 0xA015  # 写标准时间
    VALVE_CONTROL = 0xA017  # 写阀门控制: 55 open, 99 close
    WRITE_ADDRESS = 0xA018  # 写地址 (control 15): the new address; makers stop taking it after A019
    FACTORY_START = 0xA019  # 出厂启用: no data; ends the maker's set-up (写地址 …)


# The day parameters: what 8103 / 8104 read and A011 / A012 write.
DAY_READS = (DataId.READ_SETTLEMENT_DAY, DataId.READ_READING_DAY)
DAY_WRITES = (DataId.WRITE_SETTLEMENT_DAY, DataId.WRITE_READING_DAY)
# A write whose acknowledgement is DI SER (ST0 ST1 when the maker adds them).
PLAIN_WRITES = (DataId.VALVE_CONTROL, DataId.WRITE_CLOCK, DataId.WRITE_PRICES, *DAY_WRITES, DataId.FACTORY_START)


class ValveCommand(IntEnum):
    OPEN = 0x55
    CLOSE = 0x99


class DiOrder(StrEnum):
    """How a meter model puts the data identifier on the wire."""

    be = "be"  # high byte first: 90 1F (archives' DiByteOrder.standard)
    le = "le"  # low byte first: 1F 90 (archives' DiByteOrder.swapped)


def di_order_for(di_byte_order: str) -> DiOrder:
    """The codec's order for an archives ``DiByteOrder`` (``"901F"`` standard, ``"1F90"`` swapped)."""
    match str(di_byte_order):
        case "901F":
            return DiOrder.be
        case "1F90":
            return DiOrder.le
    raise ValueError(f"unknown DI byte order {di_byte_order!r}")


UNIT_LITRE = 0x29
UNIT_CUBIC_METRE = 0x2C
# The standard's unit codes (单位代号); volumes are only ever L or m³ on water meters.
UNIT_NAMES: dict[int, str] = {
    0x01: "J",
    0x02: "Wh",
    0x05: "kWh",
    0x08: "MWh",
    0x0A: "MWh×100",
    0x0B: "kJ",
    0x0E: "MJ",
    0x11: "GJ",
    0x13: "GJ×100",
    0x14: "W",
    0x17: "kW",
    0x1A: "MW",
    0x29: "L",
    0x2C: "m³",
    0x32: "L/h",
    0x35: "m³/h",
}
# 仪表类型 T: 10H-19H water meters, 20H-29H heat meters, 30H-39H gas, 40H-49H other.
METER_TYPE_NAMES: dict[int, str] = {
    0x10: "冷水水表 cold water",
    0x11: "生活热水水表 hot water",
    0x12: "直饮水水表 drinking water",
    0x13: "中水水表 reclaimed water",
    0x20: "热量表(计热量) heat",
    0x21: "热量表(计冷量) cooling",
    0x30: "燃气表 gas",
    0x40: "电度表 electricity",
}


def archives_meter_type(meter_type: int) -> MeterType | None:
    """The archives' ``MeterType`` of a type byte, where there is one (10H cold, 11H hot)."""
    # Imported here so the codec (and the simulator's process) loads without the ORM.
    from backend.archives.models import MeterType

    return {0x10: MeterType.cold_water, 0x11: MeterType.hot_water}.get(meter_type)


# ---------------------------------------------------------------------------- errors


class FrameError(ValueError):
    """A frame that cannot be read; ``str()`` is one line for a log or the CLI."""


class BadStart(FrameError):
    """No ``68`` where the frame should start."""


class BadLength(FrameError):
    """Fewer or more bytes than the length byte says, or a data field of the wrong size."""


class MissingEnd(FrameError):
    """The byte after the checksum is not ``16``."""


class BadChecksum(FrameError):
    pass


class NotBcd(FrameError):
    """A nibble above 9 in a BCD field (address, volume, clock, amount)."""


class BadData(FrameError):
    """A data field whose content the standard does not allow (a valve byte not 55/99 …)."""


# ---------------------------------------------------------------------------- values


class ValveStatus(StrEnum):
    open = "open"
    closed = "closed"
    abnormal = "abnormal"


@dataclass(frozen=True)
class MeterStatus:
    """The two status bytes (状态ST) as sent: ST0 bits 0-1 valve (00 open, 01 closed,
    11 abnormal), bit 2 battery low; the rest is reserved or the maker's own."""

    st0: int
    st1: int = 0

    @property
    def valve(self) -> ValveStatus:
        match self.st0 & 0x03:
            case 0b00:
                return ValveStatus.open
            case 0b01:
                return ValveStatus.closed
        # 11 is abnormal; 10 is reserved, and a valve we cannot name is not a known one.
        return ValveStatus.abnormal

    @property
    def battery_low(self) -> bool:
        return bool(self.st0 & 0x04)

    @property
    def bits(self) -> int:
        """Both bytes as one number, ST0 the low byte (what readings keep as ``status_bits``)."""
        return self.st0 | self.st1 << 8

    @classmethod
    def of(cls, *, valve: ValveStatus, battery_low: bool = False, st1: int = 0) -> MeterStatus:
        valve_bits = {ValveStatus.open: 0b00, ValveStatus.closed: 0b01, ValveStatus.abnormal: 0b11}[valve]
        return cls(valve_bits | (0x04 if battery_low else 0), st1)

    def to_bytes(self) -> bytes:
        return bytes((self.st0, self.st1))


@dataclass(frozen=True)
class Volume:
    """A register as the frame carries it: the value with its decimals, and its unit code."""

    value: Decimal
    unit: int = UNIT_CUBIC_METRE

    def in_m3(self) -> Decimal | None:
        """The value in m³ keeping every digit (litres shift three places); ``None``
        for a unit that is not a volume."""
        if self.unit == UNIT_CUBIC_METRE:
            return self.value
        if self.unit == UNIT_LITRE:
            return self.value.scaleb(-3)
        return None


# ---------------------------------------------------------------------------- frames


@dataclass(frozen=True, kw_only=True)
class Frame:
    """What every frame carries. ``di`` is in the standard's notation (``0x901F``)
    whatever the wire order; error replies and address reads of some makers have none."""

    meter_type: int
    address: str
    control: int
    di: int | None
    ser: int
    checksum_ok: bool = True

    @property
    def is_reply(self) -> bool:
        return bool(self.control & REPLY_BIT)


@dataclass(frozen=True, kw_only=True)
class ReadRequest(Frame):
    pass


@dataclass(frozen=True, kw_only=True)
class ReadAddressRequest(Frame):
    pass


@dataclass(frozen=True, kw_only=True)
class ValveRequest(Frame):
    command: ValveCommand


@dataclass(frozen=True, kw_only=True)
class ClockRequest(Frame):
    clock: datetime


@dataclass(frozen=True, kw_only=True)
class PurchaseRequest(Frame):
    """写购入金额: the purchase count (increasing, mod 256) and the amount in fen
    (the wire carries yuan as BCD XXXXXX.XX, so the BCD integer is the fen)."""

    purchase_count: int
    amount_fen: int


@dataclass(frozen=True, kw_only=True)
class MeterData(Frame):
    """``901F`` of a water meter: current and settlement-day totals, the meter's clock
    (naive: the meter keeps local time and says nothing of its zone; ``None`` when it
    sends zeros or an impossible date) and its status."""

    total: Volume
    settlement: Volume
    clock: datetime | None
    status: MeterStatus


@dataclass(frozen=True, kw_only=True)
class PurchaseData(Frame):
    """``8105`` of a meter that keeps its own balance: the last purchase's count and amount,
    everything bought so far and what is left, all in fen (BCD yuan with 2 places)."""

    purchase_count: int
    amount_fen: int
    total_bought_fen: int
    balance_fen: int
    status: MeterStatus


@dataclass(frozen=True, kw_only=True)
class HistoryData(Frame):
    """``D120``..``D12B``: the settlement-day total of 1..12 months ago."""

    months_ago: int
    settlement: Volume


@dataclass(frozen=True, kw_only=True)
class WriteReply(Frame):
    """A meter's acknowledgement of a write (valve control, clock); the status when sent."""

    status: MeterStatus | None


@dataclass(frozen=True, kw_only=True)
class PurchaseReply(Frame):
    purchase_count: int
    status: MeterStatus | None


@dataclass(frozen=True, kw_only=True)
class AddressReply(Frame):
    """A reply to 读地址: the meter's address is the frame's address."""


@dataclass(frozen=True)
class PriceTable:
    """价格表 (8102 / A010): three prices in fen per m³ (the wire's BCD yuan ``XXXX.XX``
    is the fen) and the whole m³ where the second and the third price start (用量1, 用量2)."""

    prices_fen: tuple[int, int, int]
    steps_m3: tuple[int, int]


@dataclass(frozen=True, kw_only=True)
class PriceTableData(Frame):
    """A meter's ``8102`` reply: its price table."""

    table: PriceTable


@dataclass(frozen=True, kw_only=True)
class PriceTableRequest(Frame):
    """写价格表 ``A010``: the table and the day of the month it takes effect (启用日期)."""

    table: PriceTable
    start_day: int


@dataclass(frozen=True, kw_only=True)
class DayData(Frame):
    """A meter's ``8103`` (结算日) or ``8104`` (抄表日) reply: a day of the month; ``di`` says which."""

    day: int


@dataclass(frozen=True, kw_only=True)
class DayRequest(Frame):
    """写结算日 ``A011`` or 写抄表日 ``A012``: a day of the month; ``di`` says which."""

    day: int


@dataclass(frozen=True, kw_only=True)
class KeyVersionData(Frame):
    """A meter's reply to 读密钥版本号 (``89``, ``8106``): the version of the key it holds."""

    key_version: int


@dataclass(frozen=True, kw_only=True)
class AddressWriteRequest(Frame):
    """写地址 (control ``15``, ``A018``) to the meter's present address: its new one."""

    new_address: str


@dataclass(frozen=True, kw_only=True)
class FactoryStartRequest(Frame):
    """出厂启用 ``A019``: no data; the meter leaves its set-up mode."""


@dataclass(frozen=True, kw_only=True)
class ErrorReply(Frame):
    """Control with bit 6 set (C1, C3, C4 …): the request failed; ST says why."""

    status: MeterStatus


@dataclass(frozen=True, kw_only=True)
class OtherData(Frame):
    """A data identifier this codec does not interpret; the data field after DI and SER."""

    body: bytes


# ---------------------------------------------------------------------------- BCD


def _bcd_digits(raw: bytes, *, what: str) -> str:
    """Digits of little-endian BCD bytes, most significant first."""
    digits = raw[::-1].hex().upper()
    if not digits.isdigit():
        raise NotBcd(f"{what} {raw.hex(' ').upper()} is not BCD")
    return digits


def _to_bcd(number: int, width: int, *, what: str) -> bytes:
    """``number`` as ``width`` little-endian BCD bytes."""
    if number < 0 or number >= 10 ** (2 * width):
        raise ValueError(f"{what} {number} does not fit in {2 * width} BCD digits")
    return bytes.fromhex(f"{number:0{2 * width}d}")[::-1]


def parse_address(raw: bytes) -> str:
    """A 7-byte address field as its 14 digits (``AAAAAAAAAAAAAA`` is broadcast)."""
    if raw == b"\xaa" * 7:
        return BROADCAST_ADDRESS
    return _bcd_digits(raw, what="address")


def address_bytes(address: str) -> bytes:
    """14 digits (fewer are zero-padded on the left) as the address field, low byte first."""
    if address.upper() == BROADCAST_ADDRESS:
        return b"\xaa" * 7
    if not (address.isascii() and address.isdigit()) or len(address) > 14:
        raise ValueError(f"address {address!r} is not up to 14 decimal digits")
    return bytes.fromhex(address.zfill(14))[::-1]


def _volume(raw: bytes, *, decimals: int) -> Volume:
    digits = _bcd_digits(raw[:4], what="volume")
    return Volume(Decimal(int(digits)).scaleb(-decimals), raw[4])


def _volume_bytes(volume: Volume, *, decimals: int) -> bytes:
    # A register shows whole steps of its last digit: more places are cut, never rounded up.
    scaled = int(volume.value.scaleb(decimals).to_integral_value(rounding=ROUND_DOWN))
    return _to_bcd(scaled, 4, what="volume") + bytes((volume.unit,))


def _clock(raw: bytes) -> datetime | None:
    # ss mm hh DD MM YY(low) YY(high): reversed, the digits read YYYYMMDDhhmmss.
    digits = _bcd_digits(raw, what="clock")
    if int(digits) == 0:
        return None
    try:
        return datetime.strptime(digits, "%Y%m%d%H%M%S")
    except ValueError:
        return None


def _clock_bytes(clock: datetime) -> bytes:
    return bytes.fromhex(clock.strftime("%Y%m%d%H%M%S"))[::-1]


def _day(raw: int, *, what: str) -> int:
    """A day of the month as one BCD byte (01 … 31)."""
    day = int(_bcd_digits(bytes((raw,)), what=what))
    if not 1 <= day <= 31:
        raise BadData(f"{what} {raw:02X} is not a day of the month (01-31)")
    return day


def _day_byte(day: int, *, what: str) -> bytes:
    if not 1 <= day <= 31:
        raise ValueError(f"{what} {day} is not a day of the month (1-31)")
    return _to_bcd(day, 1, what=what)


def _price_table(raw: bytes) -> PriceTable:
    # 价格1 用量1 价格2 用量2 价格3, three BCD bytes each, low byte first.
    fields = [int(_bcd_digits(raw[start : start + 3], what="price table")) for start in range(0, 15, 3)]
    return PriceTable((fields[0], fields[2], fields[4]), (fields[1], fields[3]))


def _price_table_bytes(table: PriceTable) -> bytes:
    if len(table.prices_fen) != 3 or len(table.steps_m3) != 2:
        raise ValueError("a price table has three prices and two step volumes")
    price_1, price_2, price_3 = (_to_bcd(price, 3, what="price (fen)") for price in table.prices_fen)
    step_1, step_2 = (_to_bcd(step, 3, what="step volume (m³)") for step in table.steps_m3)
    return price_1 + step_1 + price_2 + step_2 + price_3


# ---------------------------------------------------------------------------- wire


def checksum(raw: bytes) -> int:
    return sum(raw) & 0xFF


def frame_length(header: bytes) -> int:
    """The whole frame's length (without preamble) from its first 11 bytes, which start at ``68``."""
    if len(header) < HEADER_LENGTH:
        raise BadLength(f"a header is {HEADER_LENGTH} bytes, got {len(header)}")
    if header[0] != START:
        raise BadStart(f"a frame starts with 68, not {header[0]:02X}")
    return MIN_FRAME_LENGTH + header[10]


def _strip_preamble(raw: bytes) -> bytes:
    start = 0
    while start < len(raw) and raw[start] == PREAMBLE_BYTE:
        start += 1
    return raw[start:]


def _candidates(buffer: bytes) -> Iterator[int]:
    position = buffer.find(START)
    while position != -1:
        yield position
        position = buffer.find(START, position + 1)


def find_frame(buffer: bytes, *, echo: bytes | None = None) -> tuple[bytes | None, int]:
    """The first whole frame in ``buffer`` and how many bytes of it are used up.

    Preamble and noise before the frame count as used up. A frame equal to ``echo``
    (our own request, preamble or not, as a half-duplex adapter hears it) is skipped.
    Without a whole frame yet: ``(None, n)`` where the first ``n`` bytes are noise to
    drop and the rest may still grow into a frame. A ``68`` whose claimed end is not
    ``16`` is noise; one that ends in ``16`` with a wrong checksum is returned, so the
    caller reports a bad frame instead of waiting for a timeout.
    """
    echo_frame = _strip_preamble(echo) if echo else None
    pending: int | None = None
    skip_until = 0
    for position in _candidates(buffer):
        if position < skip_until:
            continue
        available = len(buffer) - position
        if available < HEADER_LENGTH or available < frame_length(buffer[position : position + HEADER_LENGTH]):
            # It may still become a frame; a later 68 may already be a whole one (then this was noise).
            if pending is None:
                pending = position
            continue
        end = position + frame_length(buffer[position : position + HEADER_LENGTH])
        candidate = buffer[position:end]
        if candidate[-1] != END:
            continue
        if echo_frame is not None and candidate == echo_frame:
            skip_until = end
            continue
        if candidate[-2] == checksum(candidate[:-2]) or pending is None:
            return candidate, end
    if pending is not None:
        return None, pending
    # No 68 left that could start a frame: everything so far is noise (or a skipped echo).
    return None, len(buffer)


def encode_frame(*, meter_type: int, address: str, control: int, data: bytes, preamble: int = DEFAULT_PREAMBLE) -> bytes:
    """A whole frame with ``preamble`` ``FE`` bytes in front."""
    if not 0 <= meter_type <= 0xFF:
        raise ValueError(f"meter type {meter_type} is not a byte")
    if len(data) > 0xFF:
        raise ValueError(f"a data field holds at most 255 bytes, not {len(data)}")
    if not 0 <= preamble <= 16:
        raise ValueError(f"preamble {preamble} is not 0..16 FE bytes")
    body = bytes((START, meter_type)) + address_bytes(address) + bytes((control, len(data))) + data
    return bytes((PREAMBLE_BYTE,)) * preamble + body + bytes((checksum(body), END))


def _di_bytes(di: int, order: DiOrder) -> bytes:
    return di.to_bytes(2, "big" if order == DiOrder.be else "little")


def _di_value(raw: bytes, order: DiOrder) -> int:
    return int.from_bytes(raw, "big" if order == DiOrder.be else "little")


def _byte(value: int, *, what: str) -> int:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{what} {value} is not a byte")
    return value


def _status_bytes(status: MeterStatus | None) -> bytes:
    return status.to_bytes() if status is not None else b""


def _purchase_bytes(purchase_count: int, amount_fen: int) -> bytes:
    # The count is one byte (mod 256); the amount is BCD yuan with 2 places, i.e. the fen.
    return bytes((_byte(purchase_count, what="purchase count"),)) + _to_bcd(amount_fen, 4, what="amount (fen)")


class FrameOptions(TypedDict, total=False):
    """What every encoder takes by keyword besides what the frame says; defaults:
    ``meter_type`` 10H (cold water, ``DEFAULT_METER_TYPE``), ``ser`` 0, ``preamble``
    2 ``FE`` bytes (``DEFAULT_PREAMBLE``)."""

    meter_type: int
    ser: int
    preamble: int


class DataFrameOptions(FrameOptions, total=False):
    """Options of a frame whose data starts with a data identifier: also ``di_order``,
    the meter model's byte order of it (default ``DiOrder.be``, ``90 1F``)."""

    di_order: DiOrder


def _data_frame(
    address: str,
    *,
    control: int,
    di: int | None,
    body: bytes = b"",
    meter_type: int = DEFAULT_METER_TYPE,
    ser: int = 0,
    di_order: DiOrder = DiOrder.be,
    preamble: int = DEFAULT_PREAMBLE,
) -> bytes:
    """A frame whose data is ``DI SER body`` (``SER body`` when ``di`` is ``None``: an
    error reply). The one place the defaults of ``DataFrameOptions`` are set."""
    identifier = _di_bytes(di, di_order) if di is not None else b""
    data = identifier + bytes((_byte(ser, what="SER"),)) + body
    return encode_frame(meter_type=meter_type, address=address, control=control, data=data, preamble=preamble)


# ---------------------------------------------------------------------------- requests
# Each takes the frame's content, then any of ``DataFrameOptions`` by keyword.


def encode_read(address: str, *, di: int = DataId.METER_DATA, **options: Unpack[DataFrameOptions]) -> bytes:
    """读数据 (control 01): ``901F`` unless another identifier is given."""
    return _data_frame(address, control=Control.READ_DATA, di=di, **options)


def history_di(months_ago: int) -> int:
    if not 1 <= months_ago <= 12:
        raise ValueError(f"history goes back 1..12 months, not {months_ago}")
    return DataId.HISTORY_1 + months_ago - 1


def encode_read_history(address: str, *, months_ago: int, **options: Unpack[DataFrameOptions]) -> bytes:
    """读历史计量数据 ``D120`` (last month) .. ``D12B`` (12 months ago)."""
    return encode_read(address, di=history_di(months_ago), **options)


def encode_valve(address: str, *, command: ValveCommand, **options: Unpack[DataFrameOptions]) -> bytes:
    """写阀门控制 ``A017``: 55 opens, 99 closes."""
    body = bytes((ValveCommand(command),))
    return _data_frame(address, control=Control.WRITE_DATA, di=DataId.VALVE_CONTROL, body=body, **options)


def encode_write_clock(address: str, *, clock: datetime, **options: Unpack[DataFrameOptions]) -> bytes:
    """写标准时间 ``A015``: the meter's local wall time (``clock``'s zone, if any, is not sent)."""
    return _data_frame(address, control=Control.WRITE_DATA, di=DataId.WRITE_CLOCK, body=_clock_bytes(clock), **options)


def encode_write_purchase(address: str, *, purchase_count: int, amount_fen: int, **options: Unpack[DataFrameOptions]) -> bytes:
    """写购入金额 ``A013``: purchase count (one byte, mod 256) and amount (BCD yuan, 2 places)."""
    body = _purchase_bytes(purchase_count, amount_fen)
    return _data_frame(address, control=Control.WRITE_DATA, di=DataId.WRITE_PURCHASE, body=body, **options)


def encode_read_address(address: str = BROADCAST_ADDRESS, **options: Unpack[DataFrameOptions]) -> bytes:
    """读地址 (control 03, ``810A``); to the broadcast address on a point-to-point link."""
    return _data_frame(address, control=Control.READ_ADDRESS, di=DataId.READ_ADDRESS, **options)


def encode_read_key_version(address: str, **options: Unpack[DataFrameOptions]) -> bytes:
    """读密钥版本号 (control 09, ``8106``)."""
    return _data_frame(address, control=Control.READ_KEY_VERSION, di=DataId.READ_KEY_VERSION, **options)


def encode_write_prices(address: str, *, table: PriceTable, start_day: int, **options: Unpack[DataFrameOptions]) -> bytes:
    """写价格表 ``A010``: the table (as ``8102`` gives it) and the day it takes effect (启用日期, DD)."""
    body = _price_table_bytes(table) + _day_byte(start_day, what="start day")
    return _data_frame(address, control=Control.WRITE_DATA, di=DataId.WRITE_PRICES, body=body, **options)


def encode_write_day(address: str, *, di: int, day: int, **options: Unpack[DataFrameOptions]) -> bytes:
    """写结算日 ``A011`` or 写抄表日 ``A012`` (``di``): one BCD day of the month."""
    if di not in DAY_WRITES:
        raise ValueError(f"{di:04X} is not a day write (A011, A012)")
    return _data_frame(address, control=Control.WRITE_DATA, di=di, body=_day_byte(day, what="day"), **options)


def encode_write_address(address: str, *, new_address: str, **options: Unpack[DataFrameOptions]) -> bytes:
    """写地址 (control 15, ``A018``): sent to the present address, carries the new one."""
    return _data_frame(address, control=Control.WRITE_ADDRESS, di=DataId.WRITE_ADDRESS,
                       body=address_bytes(new_address), **options)


def encode_factory_start(address: str, **options: Unpack[DataFrameOptions]) -> bytes:
    """出厂启用 ``A019`` (no data)."""
    return _data_frame(address, control=Control.WRITE_DATA, di=DataId.FACTORY_START, **options)


# ---------------------------------------------------------------------------- replies
# What a meter sends (the simulator's side); options as for requests.


def encode_meter_data_reply(
    address: str,
    *,
    total: Volume,
    settlement: Volume,
    clock: datetime | None,
    status: MeterStatus,
    volume_decimals: int = DEFAULT_VOLUME_DECIMALS,
    **options: Unpack[DataFrameOptions],
) -> bytes:
    """A water meter's ``901F`` reply (L = 16H); ``clock=None`` sends zeros (no clock)."""
    body = (
        _volume_bytes(total, decimals=volume_decimals)
        + _volume_bytes(settlement, decimals=volume_decimals)
        + (_clock_bytes(clock) if clock is not None else bytes(7))
        + status.to_bytes()
    )
    return _data_frame(address, control=Control.READ_DATA_REPLY, di=DataId.METER_DATA, body=body, **options)


def encode_history_reply(
    address: str,
    *,
    months_ago: int,
    settlement: Volume,
    volume_decimals: int = DEFAULT_VOLUME_DECIMALS,
    **options: Unpack[DataFrameOptions],
) -> bytes:
    """A ``D120``..``D12B`` reply: the settlement-day total of ``months_ago`` months ago."""
    body = _volume_bytes(settlement, decimals=volume_decimals)
    return _data_frame(address, control=Control.READ_DATA_REPLY, di=history_di(months_ago), body=body, **options)


def encode_purchase_data_reply(
    address: str,
    *,
    purchase_count: int,
    amount_fen: int,
    total_bought_fen: int,
    balance_fen: int,
    status: MeterStatus,
    **options: Unpack[DataFrameOptions],
) -> bytes:
    """A prepaid meter's ``8105`` reply (L = 12H)."""
    body = (
        _purchase_bytes(purchase_count, amount_fen)
        + _to_bcd(total_bought_fen, 4, what="amount bought (fen)")
        + _to_bcd(balance_fen, 4, what="balance (fen)")
        + status.to_bytes()
    )
    return _data_frame(address, control=Control.READ_DATA_REPLY, di=DataId.READ_PURCHASE, body=body, **options)


def encode_write_reply(address: str, *, di: int, status: MeterStatus | None, **options: Unpack[DataFrameOptions]) -> bytes:
    """A meter's acknowledgement of a write: ``DI SER ST0 ST1`` (valve control), or ``DI SER``
    (control 95 for 写地址 ``A018``, 84 for the rest)."""
    control = Control.WRITE_ADDRESS_REPLY if di == DataId.WRITE_ADDRESS else Control.WRITE_DATA_REPLY
    return _data_frame(address, control=control, di=di, body=_status_bytes(status), **options)


def encode_prices_reply(address: str, *, table: PriceTable, **options: Unpack[DataFrameOptions]) -> bytes:
    """A meter's ``8102`` reply (L = 12H): its price table."""
    return _data_frame(address, control=Control.READ_DATA_REPLY, di=DataId.READ_PRICES,
                       body=_price_table_bytes(table), **options)


def encode_day_reply(address: str, *, di: int, day: int, **options: Unpack[DataFrameOptions]) -> bytes:
    """A meter's ``8103`` (结算日) or ``8104`` (抄表日) reply (L = 04H)."""
    if di not in DAY_READS:
        raise ValueError(f"{di:04X} is not a day read (8103, 8104)")
    return _data_frame(address, control=Control.READ_DATA_REPLY, di=di, body=_day_byte(day, what="day"), **options)


def encode_key_version_reply(address: str, *, key_version: int, **options: Unpack[DataFrameOptions]) -> bytes:
    """A meter's reply to 读密钥版本号 (control 89, ``8106``, L = 04H)."""
    body = bytes((_byte(key_version, what="key version"),))
    return _data_frame(address, control=Control.READ_KEY_VERSION_REPLY, di=DataId.READ_KEY_VERSION, body=body,
                       **options)


def encode_purchase_reply(
    address: str, *, purchase_count: int, status: MeterStatus | None, **options: Unpack[DataFrameOptions]
) -> bytes:
    """The acknowledgement of ``A013``: the purchase count the meter now holds, then ST."""
    body = bytes((_byte(purchase_count, what="purchase count"),)) + _status_bytes(status)
    return _data_frame(address, control=Control.WRITE_DATA_REPLY, di=DataId.WRITE_PURCHASE, body=body, **options)


def encode_address_reply(address: str, **options: Unpack[DataFrameOptions]) -> bytes:
    """A reply to 读地址 (``83``, ``810A``): the meter's own address in the header, no data after SER."""
    return _data_frame(address, control=Control.READ_ADDRESS_REPLY, di=DataId.READ_ADDRESS, **options)


def encode_error_reply(address: str, *, request_control: int, status: MeterStatus, **options: Unpack[FrameOptions]) -> bytes:
    """异常应答: the request's function with bits 7 and 6 set (01 → C1), data ``SER ST0 ST1``
    (no data identifier, hence no ``di_order``)."""
    control = (request_control & FUNCTION_MASK) | REPLY_BIT | ERROR_BIT
    return _data_frame(address, control=control, di=None, body=status.to_bytes(), **options)


def encode(
    frame: Frame,
    *,
    di_order: DiOrder = DiOrder.be,
    preamble: int = DEFAULT_PREAMBLE,
    volume_decimals: int = DEFAULT_VOLUME_DECIMALS,
) -> bytes:
    """Any decoded frame back to bytes: ``decode(encode(f)) == f`` for every kind."""
    common: FrameOptions = {"meter_type": frame.meter_type, "ser": frame.ser, "preamble": preamble}
    match frame:
        case ErrorReply():
            return encode_error_reply(frame.address, request_control=frame.control, status=frame.status, **common)
        case ReadAddressRequest() | AddressReply():
            control, body = frame.control, b""
        case ReadRequest():
            control, body = frame.control, b""
        case MeterData():
            return encode_meter_data_reply(
                frame.address,
                total=frame.total,
                settlement=frame.settlement,
                clock=frame.clock,
                status=frame.status,
                di_order=di_order,
                volume_decimals=volume_decimals,
                **common,
            )
        case PurchaseData():
            return encode_purchase_data_reply(
                frame.address,
                purchase_count=frame.purchase_count,
                amount_fen=frame.amount_fen,
                total_bought_fen=frame.total_bought_fen,
                balance_fen=frame.balance_fen,
                status=frame.status,
                di_order=di_order,
                **common,
            )
        case HistoryData():
            control, body = frame.control, _volume_bytes(frame.settlement, decimals=volume_decimals)
        case PriceTableData():
            control, body = frame.control, _price_table_bytes(frame.table)
        case PriceTableRequest():
            control, body = frame.control, _price_table_bytes(frame.table) + _day_byte(frame.start_day, what="start day")
        case DayData() | DayRequest():
            control, body = frame.control, _day_byte(frame.day, what="day")
        case KeyVersionData():
            control, body = frame.control, bytes((frame.key_version,))
        case AddressWriteRequest():
            control, body = frame.control, address_bytes(frame.new_address)
        case FactoryStartRequest():
            control, body = frame.control, b""
        case ValveRequest():
            control, body = frame.control, bytes((frame.command,))
        case ClockRequest():
            control, body = frame.control, _clock_bytes(frame.clock)
        case PurchaseRequest():
            control, body = frame.control, _purchase_bytes(frame.purchase_count, frame.amount_fen)
        case PurchaseReply():
            control, body = frame.control, bytes((frame.purchase_count,)) + _status_bytes(frame.status)
        case WriteReply():
            control, body = frame.control, _status_bytes(frame.status)
        case OtherData():
            control, body = frame.control, frame.body
        case _:
            raise TypeError(f"cannot encode {type(frame).__name__}")
    if frame.di is None:
        raise ValueError(f"{type(frame).__name__} needs a data identifier")
    return _data_frame(frame.address, control=control, di=frame.di, body=body, di_order=di_order, **common)


# ---------------------------------------------------------------------------- decoding


def _one_frame(raw: bytes, *, verify_checksum: bool) -> tuple[bytes, bool]:
    """The frame without its preamble, its length and end checked, and whether CS is right."""
    frame = _strip_preamble(raw)
    if not frame:
        raise BadLength("no frame: nothing but preamble")
    if frame[0] != START:
        raise BadStart(f"a frame starts with 68, not {frame[0]:02X}")
    if len(frame) < HEADER_LENGTH:
        raise BadLength(f"frame is {len(frame)} bytes, shorter than its {HEADER_LENGTH}-byte header")
    expected = frame_length(frame)
    length_byte = frame[10]
    if len(frame) < expected:
        cut_at_end = len(frame) == expected - 1 and frame[-1] == checksum(frame[:-1])
        if cut_at_end:
            raise MissingEnd("frame ends after its checksum without 16")
        raise BadLength(f"frame is {len(frame)} bytes, its length byte {length_byte:02X} needs {expected}")
    if frame[expected - 1] != END:
        raise MissingEnd(f"byte after the checksum is {frame[expected - 1]:02X}, not 16")
    if len(frame) > expected:
        raise BadLength(f"{len(frame) - expected} bytes after the frame's end (length byte {length_byte:02X})")
    checksum_ok = frame[-2] == checksum(frame[:-2])
    if verify_checksum and not checksum_ok:
        raise BadChecksum(f"checksum is {frame[-2]:02X}, the bytes sum to {checksum(frame[:-2]):02X}")
    return frame, checksum_ok


def _need(body: bytes, sizes: tuple[int, ...], *, what: str) -> None:
    if len(body) not in sizes:
        wanted = " or ".join(str(size) for size in sizes)
        raise BadLength(f"{what} carries {wanted} bytes after DI and SER, got {len(body)}")


def _status(body: bytes) -> MeterStatus | None:
    return MeterStatus(body[0], body[1]) if body else None


def decode(
    raw: bytes,
    *,
    di_order: DiOrder = DiOrder.be,
    volume_decimals: int = DEFAULT_VOLUME_DECIMALS,
    verify_checksum: bool = True,
) -> Frame:
    """One whole frame (preamble allowed) as its typed dataclass; ``FrameError`` otherwise."""
    frame, checksum_ok = _one_frame(raw, verify_checksum=verify_checksum)
    common: dict[str, Any] = {
        "meter_type": frame[1],
        "address": parse_address(frame[2:9]),
        "control": frame[9],
        "checksum_ok": checksum_ok,
    }
    control = frame[9]
    data = frame[HEADER_LENGTH:-2]
    if control & ERROR_BIT:
        if len(data) != 3:
            raise BadLength(f"an error reply carries SER and ST (3 bytes), got {len(data)}")
        return ErrorReply(**common, di=None, ser=data[0], status=MeterStatus(data[1], data[2]))
    if len(data) < 3:
        raise BadLength(f"data field is {len(data)} bytes, shorter than DI and SER")
    di = _di_value(data[0:2], di_order)
    ser = data[2]
    body = data[3:]
    common |= {"di": di, "ser": ser}
    is_reply = bool(control & REPLY_BIT)
    function = control & FUNCTION_MASK

    if function == Control.READ_ADDRESS:
        _need(body, (0,), what="a read-address frame")
        return AddressReply(**common) if is_reply else ReadAddressRequest(**common)
    if function in (Control.READ_DATA, Control.READ_KEY_VERSION) and not is_reply:
        _need(body, (0,), what="a read request")
        return ReadRequest(**common)
    if function == Control.READ_KEY_VERSION and di == DataId.READ_KEY_VERSION:
        _need(body, (1,), what="8106 key version")
        return KeyVersionData(**common, key_version=body[0])
    if function == Control.WRITE_ADDRESS and di == DataId.WRITE_ADDRESS:
        if is_reply:
            _need(body, (0, 2), what="a write-address reply")
            return WriteReply(**common, status=_status(body))
        _need(body, (7,), what="a write-address request")
        return AddressWriteRequest(**common, new_address=parse_address(body))
    if function == Control.READ_DATA and di == DataId.READ_PRICES:
        _need(body, (15,), what="8102 price table")
        return PriceTableData(**common, table=_price_table(body))
    if function == Control.READ_DATA and di in DAY_READS:
        _need(body, (1,), what=f"{di:04X} day")
        return DayData(**common, day=_day(body[0], what="day"))
    if function == Control.READ_DATA and di == DataId.METER_DATA and frame[1] < 0x20:
        # Water meters (type 1xH); heat meters' 901F is a longer record this codec leaves raw.
        _need(body, (19,), what="901F of a water meter")
        return MeterData(
            **common,
            total=_volume(body[0:5], decimals=volume_decimals),
            settlement=_volume(body[5:10], decimals=volume_decimals),
            clock=_clock(body[10:17]),
            status=MeterStatus(body[17], body[18]),
        )
    if function == Control.READ_DATA and di == DataId.READ_PURCHASE:
        _need(body, (15,), what="8105 purchase data")
        return PurchaseData(
            **common,
            purchase_count=body[0],
            amount_fen=int(_bcd_digits(body[1:5], what="amount")),
            total_bought_fen=int(_bcd_digits(body[5:9], what="amount bought")),
            balance_fen=int(_bcd_digits(body[9:13], what="balance")),
            status=MeterStatus(body[13], body[14]),
        )
    if function == Control.READ_DATA and DataId.HISTORY_1 <= di <= DataId.HISTORY_12:
        _need(body, (5,), what="history data")
        return HistoryData(**common, months_ago=di - DataId.HISTORY_1 + 1, settlement=_volume(body, decimals=volume_decimals))
    if function == Control.WRITE_DATA and not is_reply:
        if di == DataId.VALVE_CONTROL:
            _need(body, (1,), what="a valve command")
            try:
                command = ValveCommand(body[0])
            except ValueError:
                raise BadData(f"valve command {body[0]:02X} is neither 55 (open) nor 99 (close)") from None
            return ValveRequest(**common, command=command)
        if di == DataId.WRITE_CLOCK:
            _need(body, (7,), what="a clock write")
            clock = _clock(body)
            if clock is None:
                raise BadData(f"clock {body.hex(' ').upper()} is not a date and time")
            return ClockRequest(**common, clock=clock)
        if di == DataId.WRITE_PURCHASE:
            _need(body, (5,), what="a purchase write")
            amount_fen = int(_bcd_digits(body[1:5], what="amount"))
            return PurchaseRequest(**common, purchase_count=body[0], amount_fen=amount_fen)
        if di == DataId.WRITE_PRICES:
            _need(body, (16,), what="a price table write")
            return PriceTableRequest(**common, table=_price_table(body[:15]), start_day=_day(body[15], what="start day"))
        if di in DAY_WRITES:
            _need(body, (1,), what=f"{di:04X} day write")
            return DayRequest(**common, day=_day(body[0], what="day"))
        if di == DataId.FACTORY_START:
            _need(body, (0,), what="a factory start")
            return FactoryStartRequest(**common)
    if function == Control.WRITE_DATA and is_reply:
        if di == DataId.WRITE_PURCHASE:
            _need(body, (1, 3), what="a purchase reply")
            return PurchaseReply(**common, purchase_count=body[0], status=_status(body[1:]))
        if di in PLAIN_WRITES:
            _need(body, (0, 2), what="a write reply")
            return WriteReply(**common, status=_status(body))
    return OtherData(**common, body=bytes(body))


# ---------------------------------------------------------------------------- JSON


def _decimal_text(value: Decimal) -> str:
    return format(value, "f")


def _status_fields(status: MeterStatus | None) -> dict[str, Any]:
    if status is None:
        return {}
    return {"valve": status.valve.value, "battery_low": status.battery_low, "status": status.to_bytes().hex().upper()}


def _volume_fields(name: str, volume: Volume) -> dict[str, Any]:
    in_m3 = volume.in_m3()
    if in_m3 is not None:
        return {f"{name}_m3": _decimal_text(in_m3)}
    return {name: _decimal_text(volume.value), f"{name}_unit": f"{volume.unit:02X}"}


# The JSON name of a day identifier's value.
DAY_NAMES: dict[int, str] = {
    DataId.READ_SETTLEMENT_DAY: "settlement_day",
    DataId.WRITE_SETTLEMENT_DAY: "settlement_day",
    DataId.READ_READING_DAY: "reading_day",
    DataId.WRITE_READING_DAY: "reading_day",
}


def _price_fields(table: PriceTable) -> dict[str, Any]:
    return {"prices_fen": list(table.prices_fen), "steps_m3": list(table.steps_m3)}


def to_json(frame: Frame) -> dict[str, Any]:
    """The frame as plain JSON values: bytes as two upper-case hex digits, volumes as
    decimal strings with the frame's places (in m³), the clock in ISO 8601 without an
    offset; fields the frame lacks are left out. ``status`` is ST0 ST1 as sent."""
    out: dict[str, Any] = {
        "address": frame.address,
        "meter_type": f"{frame.meter_type:02X}",
        "control": f"{frame.control:02X}",
    }
    if frame.di is not None:
        out["di"] = f"{frame.di:04X}"
    out["ser"] = frame.ser
    match frame:
        case MeterData():
            out |= _volume_fields("total", frame.total) | _volume_fields("settlement", frame.settlement)
            if frame.clock is not None:
                out["clock"] = frame.clock.isoformat()
            # As the example has it: valve and battery, without the raw ST bytes.
            out["valve"] = frame.status.valve.value
            out["battery_low"] = frame.status.battery_low
        case HistoryData():
            out["months_ago"] = frame.months_ago
            out |= _volume_fields("settlement", frame.settlement)
        case ValveRequest():
            out["valve_command"] = "open" if frame.command == ValveCommand.OPEN else "close"
        case ClockRequest():
            out["clock"] = frame.clock.isoformat()
        case PurchaseRequest():
            out["purchase_count"] = frame.purchase_count
            out["amount_fen"] = frame.amount_fen
        case PurchaseData():
            out["purchase_count"] = frame.purchase_count
            out["amount_fen"] = frame.amount_fen
            out["total_bought_fen"] = frame.total_bought_fen
            out["balance_fen"] = frame.balance_fen
            out |= _status_fields(frame.status)
        case PurchaseReply():
            out["purchase_count"] = frame.purchase_count
            out |= _status_fields(frame.status)
        case PriceTableData():
            out |= _price_fields(frame.table)
        case PriceTableRequest():
            out |= _price_fields(frame.table)
            out["start_day"] = frame.start_day
        case DayData() | DayRequest():
            out[DAY_NAMES[frame.di or 0]] = frame.day
        case KeyVersionData():
            out["key_version"] = frame.key_version
        case AddressWriteRequest():
            out["new_address"] = frame.new_address
        case WriteReply():
            out |= _status_fields(frame.status)
        case ErrorReply():
            out["error"] = True
            out |= _status_fields(frame.status)
        case OtherData():
            out["body"] = frame.body.hex(" ").upper()
    out["checksum_ok"] = frame.checksum_ok
    return out
