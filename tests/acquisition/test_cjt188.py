"""The CJ/T 188 codec against golden frames (``frames/<vendor>/*.hex`` with the expected
JSON beside each), its encoders round-tripping, and the transport's framing helpers."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from functools import partial
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acquisition.protocols import cjt188
from acquisition.protocols.cjt188 import (
    BadChecksum,
    BadData,
    BadLength,
    BadStart,
    DataId,
    DiOrder,
    FrameError,
    MeterData,
    MeterStatus,
    MissingEnd,
    NotBcd,
    ValveCommand,
    ValveStatus,
    Volume,
)
from backend.archives.models import DiByteOrder, MeterType

FRAMES = Path(__file__).parent / "frames"
GOLDEN = sorted(FRAMES.glob("*/*.hex"))
ADDRESS = "12345678901234"


def read_hex(path: Path) -> bytes:
    """A golden file's bytes: spaced hex, ``#`` lines are comments."""
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return bytes.fromhex("".join(lines))


def expectation(path: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(path.with_suffix(".json").read_text())
    return loaded


def preamble_of(raw: bytes) -> int:
    return len(raw) - len(raw.lstrip(b"\xfe"))


def test_every_golden_frame_has_its_expected_json() -> None:
    assert len(GOLDEN) >= 20
    assert all(path.with_suffix(".json").exists() for path in GOLDEN)
    kinds = {expectation(path).get("error") for path in GOLDEN}
    assert {"BadChecksum", "BadLength", "MissingEnd", "NotBcd"} <= kinds


@pytest.mark.parametrize("path", GOLDEN, ids=lambda path: f"{path.parent.name}/{path.stem}")
def test_golden_frame_decodes_to_its_json(path: Path) -> None:
    expected = expectation(path)
    raw = read_hex(path)
    order = DiOrder(str(expected["di_order"]))
    if "error" in expected:
        with pytest.raises(FrameError) as raised:
            cjt188.decode(raw, di_order=order)
        assert type(raised.value).__name__ == expected["error"]
        assert str(raised.value) == expected["message"]
        assert "\n" not in str(raised.value)
    else:
        assert cjt188.to_json(cjt188.decode(raw, di_order=order)) == expected["decoded"]


@pytest.mark.parametrize(
    "path",
    [path for path in GOLDEN if "error" not in expectation(path)],
    ids=lambda path: f"{path.parent.name}/{path.stem}",
)
def test_golden_frame_encodes_back_to_its_bytes(path: Path) -> None:
    raw = read_hex(path)
    order = DiOrder(str(expectation(path)["di_order"]))
    decoded = cjt188.decode(raw, di_order=order)
    assert cjt188.encode(decoded, di_order=order, preamble=preamble_of(raw)) == raw


def test_issue_example_901f_reply_reads_as_the_issue_shows() -> None:
    frame = cjt188.decode(read_hex(FRAMES / "standard" / "meter_data_901f.hex"))
    assert isinstance(frame, MeterData)
    assert frame.total == Volume(Decimal("1234.50"), cjt188.UNIT_CUBIC_METRE)
    assert frame.total.value.as_tuple().exponent == -2
    assert frame.clock == datetime(2025, 3, 15, 10, 20, 30)
    assert frame.status.valve is ValveStatus.open
    assert frame.status.bits == 0


def test_swapped_identifier_is_misread_with_the_standard_order() -> None:
    raw = read_hex(FRAMES / "swapped" / "meter_data_901f.hex")
    assert isinstance(cjt188.decode(raw, di_order=DiOrder.le), MeterData)
    misread = cjt188.decode(raw, di_order=DiOrder.be)
    assert isinstance(misread, cjt188.OtherData)
    assert misread.di == 0x1F90


def test_encoders_put_the_identifier_in_the_models_order() -> None:
    standard = cjt188.encode_read(ADDRESS, preamble=0)
    swapped = cjt188.encode_read(ADDRESS, di_order=DiOrder.le, preamble=0)
    assert standard[11:13] == bytes.fromhex("901F")
    assert swapped[11:13] == bytes.fromhex("1F90")
    assert cjt188.encode_valve(ADDRESS, command=ValveCommand.OPEN, preamble=0)[11:15] == bytes.fromhex("A0170055")


def test_request_frames_spelled_out() -> None:
    # 68 T A0..A6 C L DI0 DI1 SER CS 16, CS = sum from 68 mod 256.
    body = bytes.fromhex("68 10 34 12 90 78 56 34 12 01 03 90 1F 05")
    assert cjt188.encode_read(ADDRESS, ser=5) == b"\xfe\xfe" + body + bytes((sum(body) % 256, 0x16))
    assert cjt188.encode_read_address(preamble=4).hex(" ").upper().startswith("FE FE FE FE 68 10 AA AA AA AA AA AA AA 03 03 81 0A")


PRICES = cjt188.PriceTable((350, 420, 600), (20, 30))
# Every encoder with the content of one frame; the frame options come on top.
ENCODERS_WITH_A_DI: dict[str, Callable[..., bytes]] = {
    "read": partial(cjt188.encode_read, ADDRESS),
    "read_history": partial(cjt188.encode_read_history, ADDRESS, months_ago=3),
    "valve": partial(cjt188.encode_valve, ADDRESS, command=ValveCommand.CLOSE),
    "write_clock": partial(cjt188.encode_write_clock, ADDRESS, clock=datetime(2025, 3, 15, 10, 20, 30)),
    "write_purchase": partial(cjt188.encode_write_purchase, ADDRESS, purchase_count=7, amount_fen=5000),
    "read_address": partial(cjt188.encode_read_address, ADDRESS),
    "read_key_version": partial(cjt188.encode_read_key_version, ADDRESS),
    "write_prices": partial(cjt188.encode_write_prices, ADDRESS, table=PRICES, start_day=1),
    "write_day": partial(cjt188.encode_write_day, ADDRESS, di=DataId.WRITE_SETTLEMENT_DAY, day=28),
    "write_address": partial(cjt188.encode_write_address, ADDRESS, new_address="1"),
    "factory_start": partial(cjt188.encode_factory_start, ADDRESS),
    "prices_reply": partial(cjt188.encode_prices_reply, ADDRESS, table=PRICES),
    "day_reply": partial(cjt188.encode_day_reply, ADDRESS, di=DataId.READ_READING_DAY, day=1),
    "key_version_reply": partial(cjt188.encode_key_version_reply, ADDRESS, key_version=255),
    "write_address_reply": partial(cjt188.encode_write_reply, ADDRESS, di=DataId.WRITE_ADDRESS, status=None),
    "meter_data_reply": partial(
        cjt188.encode_meter_data_reply, ADDRESS, total=Volume(Decimal("1.00")), settlement=Volume(Decimal("0")), clock=None,
        status=MeterStatus(0),
    ),
    "history_reply": partial(cjt188.encode_history_reply, ADDRESS, months_ago=3, settlement=Volume(Decimal("1.00"))),
    "purchase_data_reply": partial(
        cjt188.encode_purchase_data_reply, ADDRESS, purchase_count=7, amount_fen=5000, total_bought_fen=9000, balance_fen=100,
        status=MeterStatus(0),
    ),
    "write_reply": partial(cjt188.encode_write_reply, ADDRESS, di=DataId.VALVE_CONTROL, status=MeterStatus(1)),
    "purchase_reply": partial(cjt188.encode_purchase_reply, ADDRESS, purchase_count=7, status=None),
    "address_reply": partial(cjt188.encode_address_reply, ADDRESS),
}


@pytest.mark.parametrize("encoder", ENCODERS_WITH_A_DI.values(), ids=ENCODERS_WITH_A_DI.keys())
def test_every_encoder_takes_the_frame_options(encoder: Callable[..., bytes]) -> None:
    plain = cjt188.decode(encoder())
    assert (plain.meter_type, plain.ser, preamble_of(encoder())) == (cjt188.DEFAULT_METER_TYPE, 0, cjt188.DEFAULT_PREAMBLE)
    raw = encoder(meter_type=0x11, ser=42, di_order=DiOrder.le, preamble=3)
    decoded = cjt188.decode(raw, di_order=DiOrder.le)
    assert (decoded.meter_type, decoded.ser, decoded.di, preamble_of(raw)) == (0x11, 42, plain.di, 3)
    assert decoded == replace(plain, meter_type=0x11, ser=42)
    with pytest.raises(TypeError, match="unexpected keyword argument 'preambel'"):
        encoder(preambel=3)


def test_error_reply_takes_the_frame_options_but_has_no_identifier() -> None:
    raw = cjt188.encode_error_reply(ADDRESS, request_control=0x04, status=MeterStatus(0, 1), meter_type=0x11, ser=42, preamble=0)
    assert raw.hex(" ").upper().startswith("68 11 34 12 90 78 56 34 12 C4 03 2A 00 01")
    decoded = cjt188.decode(raw)
    assert decoded == cjt188.ErrorReply(meter_type=0x11, address=ADDRESS, control=0xC4, di=None, ser=42, status=MeterStatus(0, 1))


def test_history_identifiers_run_from_d120_to_d12b() -> None:
    assert cjt188.history_di(1) == 0xD120
    assert cjt188.history_di(12) == 0xD12B
    with pytest.raises(ValueError, match=r"1\.\.12 months"):
        cjt188.encode_read_history(ADDRESS, months_ago=13)


addresses = st.integers(min_value=0, max_value=10**14 - 1).map(lambda number: f"{number:014d}")
volumes = st.builds(
    Volume,
    st.integers(min_value=0, max_value=10**8 - 1).map(lambda hundredths: Decimal(hundredths).scaleb(-2)),
    st.sampled_from([cjt188.UNIT_CUBIC_METRE, cjt188.UNIT_LITRE]),
)
clocks = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31, 23, 59, 59)).map(
    lambda moment: moment.replace(microsecond=0)
)
statuses = st.builds(MeterStatus, st.integers(0, 255), st.integers(0, 255))
orders = st.sampled_from(list(DiOrder))


@given(
    address=addresses,
    total=volumes,
    settlement=volumes,
    clock=st.none() | clocks,
    status=statuses,
    ser=st.integers(0, 255),
    order=orders,
    preamble=st.integers(0, 4),
)
def test_meter_data_round_trips(
    address: str, total: Volume, settlement: Volume, clock: datetime | None, status: MeterStatus, ser: int, order: DiOrder, preamble: int
) -> None:
    raw = cjt188.encode_meter_data_reply(
        address, total=total, settlement=settlement, clock=clock, status=status, ser=ser, di_order=order, preamble=preamble
    )
    decoded = cjt188.decode(raw, di_order=order)
    assert decoded == MeterData(
        meter_type=0x10,
        address=address,
        control=0x81,
        di=DataId.METER_DATA,
        ser=ser,
        total=total,
        settlement=settlement,
        clock=clock,
        status=status,
    )
    assert cjt188.encode(decoded, di_order=order, preamble=preamble) == raw


@given(address=addresses, order=orders, count=st.integers(0, 255), fen=st.integers(0, 10**8 - 1), clock=clocks)
def test_write_requests_round_trip(address: str, order: DiOrder, count: int, fen: int, clock: datetime) -> None:
    purchase = cjt188.decode(cjt188.encode_write_purchase(address, purchase_count=count, amount_fen=fen, di_order=order), di_order=order)
    assert isinstance(purchase, cjt188.PurchaseRequest)
    assert (purchase.address, purchase.purchase_count, purchase.amount_fen) == (address, count, fen)
    written = cjt188.decode(cjt188.encode_write_clock(address, clock=clock, di_order=order), di_order=order)
    assert isinstance(written, cjt188.ClockRequest)
    assert written.clock == clock
    for command in ValveCommand:
        valve = cjt188.decode(cjt188.encode_valve(address, command=command, di_order=order), di_order=order)
        assert isinstance(valve, cjt188.ValveRequest)
        assert valve.command is command


def test_volumes_with_more_places_than_the_register_are_cut_not_rounded() -> None:
    raw = cjt188.encode_meter_data_reply(
        ADDRESS,
        total=Volume(Decimal("12.3499")),
        settlement=Volume(Decimal("0")),
        clock=None,
        status=MeterStatus(0),
    )
    frame = cjt188.decode(raw)
    assert isinstance(frame, MeterData)
    assert frame.total.value == Decimal("12.34")


def test_register_decimals_are_a_model_setting() -> None:
    raw = read_hex(FRAMES / "standard" / "meter_data_901f.hex")
    frame = cjt188.decode(raw, volume_decimals=3)
    assert isinstance(frame, MeterData)
    assert str(frame.total.value) == "123.450"


@pytest.mark.parametrize(
    ("st0", "valve", "battery_low"),
    [
        (0x00, ValveStatus.open, False),
        (0x01, ValveStatus.closed, False),
        (0x03, ValveStatus.abnormal, False),
        (0x05, ValveStatus.closed, True),
    ],
)
def test_status_byte_gives_valve_and_battery(st0: int, valve: ValveStatus, battery_low: bool) -> None:
    status = MeterStatus(st0, 0x80)
    assert (status.valve, status.battery_low) == (valve, battery_low)
    assert status.bits == st0 | 0x8000
    assert MeterStatus.of(valve=valve, battery_low=battery_low, st1=0x80) == status


def test_invalid_writes_are_refused_with_their_kind() -> None:
    valve = bytearray(cjt188.encode_valve(ADDRESS, command=ValveCommand.OPEN, preamble=0))
    valve[14] = 0x77  # neither 55 nor 99
    valve[15] = cjt188.checksum(bytes(valve[:15]))
    with pytest.raises(BadData, match="neither 55"):
        cjt188.decode(bytes(valve))
    with pytest.raises(BadStart):
        cjt188.decode(b"\xfe\xfe\x69" + bytes(20))
    with pytest.raises(BadLength, match="nothing but preamble"):
        cjt188.decode(b"\xfe\xfe")
    with pytest.raises(BadLength, match="after the frame's end"):
        cjt188.decode(cjt188.encode_read(ADDRESS) + b"\x00")


def test_parameter_writes_refuse_what_the_wire_cannot_carry() -> None:
    for day in (0, 32):
        with pytest.raises(ValueError, match="not a day of the month"):
            cjt188.encode_write_day(ADDRESS, di=DataId.WRITE_READING_DAY, day=day)
    with pytest.raises(ValueError, match="not a day write"):
        cjt188.encode_write_day(ADDRESS, di=DataId.WRITE_CLOCK, day=1)
    with pytest.raises(ValueError, match="not a day read"):
        cjt188.encode_day_reply(ADDRESS, di=DataId.READ_PURCHASE, day=1)
    with pytest.raises(ValueError, match="does not fit in 6 BCD digits"):
        cjt188.encode_write_prices(ADDRESS, table=cjt188.PriceTable((1_000_000, 1, 1), (1, 2)), start_day=1)
    with pytest.raises(ValueError, match="three prices and two step volumes"):
        cjt188.encode_prices_reply(ADDRESS, table=cjt188.PriceTable((1, 2), (1, 2)))  # type: ignore[arg-type]
    # The address write carries the new address and answers 95.
    assert cjt188.decode(cjt188.encode_write_reply(ADDRESS, di=DataId.WRITE_ADDRESS, status=None)).control == 0x95


def test_bad_checksum_can_be_read_anyway_when_asked() -> None:
    raw = read_hex(FRAMES / "standard" / "bad_checksum.hex")
    frame = cjt188.decode(raw, verify_checksum=False)
    assert frame.checksum_ok is False
    assert cjt188.to_json(frame)["checksum_ok"] is False
    with pytest.raises(BadChecksum):
        cjt188.decode(raw)


def test_error_kinds_share_one_base() -> None:
    for kind in (BadStart, BadLength, MissingEnd, BadChecksum, NotBcd, BadData):
        assert issubclass(kind, FrameError)
        assert issubclass(kind, ValueError)


# ---------------------------------------------------------------- transport helpers

REPLY = read_hex(FRAMES / "standard" / "meter_data_901f.hex")
REPLY_FRAME = REPLY.lstrip(b"\xfe")
REQUEST = cjt188.encode_read(ADDRESS)


def test_frame_length_comes_from_the_length_byte() -> None:
    assert cjt188.frame_length(REPLY_FRAME[:11]) == len(REPLY_FRAME) == 13 + 0x16
    with pytest.raises(BadLength):
        cjt188.frame_length(REPLY_FRAME[:10])
    with pytest.raises(BadStart):
        cjt188.frame_length(b"\xfe" + REPLY_FRAME[:10])


def test_find_frame_skips_preamble_and_noise() -> None:
    buffer = b"\x00\x13" + REPLY + b"\xfe\xfe"
    assert cjt188.find_frame(buffer) == (REPLY_FRAME, len(buffer) - 2)


def test_find_frame_skips_the_echo_of_our_request() -> None:
    buffer = REQUEST + REPLY
    assert cjt188.find_frame(buffer, echo=REQUEST) == (REPLY_FRAME, len(buffer))
    # Without being told, the echo is just the first frame.
    assert cjt188.find_frame(buffer)[0] == REQUEST.lstrip(b"\xfe")


def test_find_frame_waits_for_a_partial_frame_and_drops_only_noise() -> None:
    for cut in range(len(REPLY)):
        frame, consumed = cjt188.find_frame(b"\x55" + REPLY[:cut])
        assert frame is None
        kept = (b"\x55" + REPLY[:cut])[consumed:]
        assert REPLY_FRAME.startswith(kept)


def test_find_frame_takes_a_whole_frame_after_a_stray_68() -> None:
    # A stray 68 whose length byte promises more than will come must not hold up the reply.
    buffer = b"\x68\x10\x00\x00\x00\x00\x00\x00\x00\x81\x40" + REPLY
    assert cjt188.find_frame(buffer) == (REPLY_FRAME, len(buffer))


def test_find_frame_returns_a_frame_with_a_bad_checksum_for_the_decoder_to_refuse() -> None:
    corrupt = read_hex(FRAMES / "standard" / "bad_checksum.hex")
    frame, consumed = cjt188.find_frame(corrupt)
    assert frame is not None
    assert consumed == len(corrupt)
    with pytest.raises(BadChecksum):
        cjt188.decode(frame)


def test_find_frame_in_nothing_but_noise_drops_it_all() -> None:
    assert cjt188.find_frame(b"\xfe\xfe\x00\x16") == (None, 4)
    assert cjt188.find_frame(b"") == (None, 0)


# ---------------------------------------------------------------- archives settings


def test_archives_di_byte_order_maps_to_the_codec_order() -> None:
    assert cjt188.di_order_for(DiByteOrder.standard) is DiOrder.be
    assert cjt188.di_order_for(DiByteOrder.swapped) is DiOrder.le
    with pytest.raises(ValueError, match="unknown DI byte order"):
        cjt188.di_order_for("9F10")


def test_meter_type_byte_maps_to_archives_meter_type_where_it_can() -> None:
    assert cjt188.archives_meter_type(0x10) is MeterType.cold_water
    assert cjt188.archives_meter_type(0x11) is MeterType.hot_water
    assert cjt188.archives_meter_type(0x12) is None
    assert cjt188.archives_meter_type(0x20) is None
