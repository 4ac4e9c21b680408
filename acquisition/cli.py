"""``shuiwu frame``: decode a CJ/T 188 frame from hex, or encode a request to send by hand.

Mounted by the remote domain's ``commands`` (``"frame": "acquisition.cli:frame_app"``).
A frame that cannot be read is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import string
from enum import StrEnum
from typing import Annotated, NoReturn

import typer

from acquisition.protocols import cjt188
from acquisition.protocols.cjt188 import DiOrder, FrameError, ValveCommand

frame_app = typer.Typer(
    help="CJ/T 188 frames (水表协议): decode a frame given in hex, or encode a request.",
    no_args_is_help=True,
)

USAGE_ERROR = 2

DiOrderOption = Annotated[
    DiOrder,
    typer.Option(
        "--di-order",
        help="Data identifier byte order of the meter model: be = 90 1F on the wire (standard), le = 1F 90 (swapped).",
        case_sensitive=False,
    ),
]


class RequestKind(StrEnum):
    read = "read"
    valve_open = "valve-open"
    valve_close = "valve-close"
    read_address = "read-address"
    # The meter's parameters (8102-8104, 8106; A010-A012).
    read_prices = "read-prices"
    read_settlement_day = "read-settlement-day"
    read_reading_day = "read-reading-day"
    read_key_version = "read-key-version"
    write_settlement_day = "write-settlement-day"
    write_reading_day = "write-reading-day"
    write_prices = "write-prices"


_PLAIN_READS = {
    RequestKind.read_prices: cjt188.DataId.READ_PRICES,
    RequestKind.read_settlement_day: cjt188.DataId.READ_SETTLEMENT_DAY,
    RequestKind.read_reading_day: cjt188.DataId.READ_READING_DAY,
}
_DAY_WRITES = {
    RequestKind.write_settlement_day: cjt188.DataId.WRITE_SETTLEMENT_DAY,
    RequestKind.write_reading_day: cjt188.DataId.WRITE_READING_DAY,
}


def _fail(message: str) -> NoReturn:
    typer.echo(f"shuiwu frame: {message}", err=True)
    raise typer.Exit(USAGE_ERROR)


def _hex_bytes(words: list[str]) -> bytes:
    text = "".join(words).replace(" ", "")
    if text[:2].lower() == "0x":
        text = text[2:]
    if not text or any(character not in string.hexdigits for character in text) or len(text) % 2:
        _fail(f"not hex bytes: {' '.join(words)!r}")
    return bytes.fromhex(text)


@frame_app.command("decode")
def decode_command(
    hex_words: Annotated[
        list[str], typer.Argument(metavar="HEX", help="The frame in hex, spaced or not (FE preamble allowed): FE FE 68 10 …")
    ],
    di_order: DiOrderOption = DiOrder.be,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a list of fields.")] = False,
) -> None:
    """Decode one frame: address, meter type, control, DI, SER and what its data says."""
    raw = _hex_bytes(hex_words)
    try:
        fields = cjt188.to_json(cjt188.decode(raw, di_order=di_order))
    except FrameError as error:
        _fail(f"{type(error).__name__}: {error}")
    if as_json:
        typer.echo(json.dumps(fields, ensure_ascii=False))
        return
    width = max(len(name) for name in fields)
    for name, value in fields.items():
        shown = json.dumps(value) if isinstance(value, bool) else value
        typer.echo(f"{name:<{width}}  {shown}")


def _numbers(text: str | None, count: int, *, option: str) -> list[int]:
    """``count`` whole numbers from ``1,2,3`` (the option's value); one line and exit 2 otherwise."""
    parts = (text or "").split(",")
    if len(parts) != count or not all(part.strip().isdigit() for part in parts):
        _fail(f"{option} takes {count} whole numbers separated by commas")
    return [int(part) for part in parts]


@frame_app.command("encode")
def encode_command(
    kind: Annotated[
        RequestKind, typer.Argument(metavar="KIND", help="The request: read (901F), valve-open, valve-close or read-address "
                                    "(810A); read-prices (8102), read-settlement-day (8103), read-reading-day (8104), "
                                    "read-key-version (8106); write-settlement-day (A011) and write-reading-day (A012) "
                                    "with --day; write-prices (A010) with --prices, --steps and --day.")
    ],
    address: Annotated[str, typer.Option("--address", help="The meter's 14-digit address, or AAAAAAAAAAAAAA (broadcast).")],
    di_order: DiOrderOption = DiOrder.be,
    meter_type: Annotated[str, typer.Option("--meter-type", help="Meter type byte in hex (10 cold water, 11 hot water …).")] = "10",
    ser: Annotated[int, typer.Option("--ser", help="Sequence number SER, 0..255.")] = 0,
    preamble: Annotated[int, typer.Option("--preamble", help="Number of FE bytes in front, 0..16.")] = cjt188.DEFAULT_PREAMBLE,
    day: Annotated[int | None, typer.Option("--day", help="Day of the month (1..31) for write-settlement-day, "
                                             "write-reading-day, and the day write-prices takes effect.")] = None,
    prices: Annotated[str | None, typer.Option("--prices", help="write-prices: three prices in fen per m³, e.g. 280,390,840.")] = None,
    steps: Annotated[str | None, typer.Option("--steps", help="write-prices: the two step volumes in m³, e.g. 180,260.")] = None,
) -> None:
    """Print a request frame as spaced upper-case hex (FE FE 68 10 …)."""
    if len(meter_type) != 2 or any(character not in string.hexdigits for character in meter_type):
        _fail(f"meter type {meter_type!r} is not one byte in hex (two digits, e.g. 10)")
    options: cjt188.DataFrameOptions = {"meter_type": int(meter_type, 16), "ser": ser, "di_order": di_order,
                                        "preamble": preamble}
    if (kind in _DAY_WRITES or kind is RequestKind.write_prices) and day is None:
        _fail(f"{kind.value} needs --day")
    try:
        if kind is RequestKind.read:
            raw = cjt188.encode_read(address, **options)
        elif kind is RequestKind.read_address:
            raw = cjt188.encode_read_address(address, **options)
        elif kind in _PLAIN_READS:
            raw = cjt188.encode_read(address, di=_PLAIN_READS[kind], **options)
        elif kind is RequestKind.read_key_version:
            raw = cjt188.encode_read_key_version(address, **options)
        elif kind in _DAY_WRITES:
            raw = cjt188.encode_write_day(address, di=_DAY_WRITES[kind], day=day or 0, **options)
        elif kind is RequestKind.write_prices:
            fen = _numbers(prices, 3, option="--prices")
            m3 = _numbers(steps, 2, option="--steps")
            table = cjt188.PriceTable((fen[0], fen[1], fen[2]), (m3[0], m3[1]))
            raw = cjt188.encode_write_prices(address, table=table, start_day=day or 0, **options)
        else:
            command = ValveCommand.OPEN if kind is RequestKind.valve_open else ValveCommand.CLOSE
            raw = cjt188.encode_valve(address, command=command, **options)
    except ValueError as error:
        _fail(str(error))
    typer.echo(raw.hex(" ").upper())
