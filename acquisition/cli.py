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


@frame_app.command("encode")
def encode_command(
    kind: Annotated[
        RequestKind, typer.Argument(metavar="KIND", help="The request: read (901F), valve-open, valve-close or read-address (810A).")
    ],
    address: Annotated[str, typer.Option("--address", help="The meter's 14-digit address, or AAAAAAAAAAAAAA (broadcast).")],
    di_order: DiOrderOption = DiOrder.be,
    meter_type: Annotated[str, typer.Option("--meter-type", help="Meter type byte in hex (10 cold water, 11 hot water …).")] = "10",
    ser: Annotated[int, typer.Option("--ser", help="Sequence number SER, 0..255.")] = 0,
    preamble: Annotated[int, typer.Option("--preamble", help="Number of FE bytes in front, 0..16.")] = cjt188.DEFAULT_PREAMBLE,
) -> None:
    """Print a request frame as spaced upper-case hex (FE FE 68 10 …)."""
    if len(meter_type) != 2 or any(character not in string.hexdigits for character in meter_type):
        _fail(f"meter type {meter_type!r} is not one byte in hex (two digits, e.g. 10)")
    type_byte = int(meter_type, 16)
    try:
        if kind is RequestKind.read:
            raw = cjt188.encode_read(address, meter_type=type_byte, ser=ser, di_order=di_order, preamble=preamble)
        elif kind is RequestKind.read_address:
            raw = cjt188.encode_read_address(address, meter_type=type_byte, ser=ser, di_order=di_order, preamble=preamble)
        else:
            command = ValveCommand.OPEN if kind is RequestKind.valve_open else ValveCommand.CLOSE
            raw = cjt188.encode_valve(address, command=command, meter_type=type_byte, ser=ser, di_order=di_order, preamble=preamble)
    except ValueError as error:
        _fail(str(error))
    typer.echo(raw.hex(" ").upper())
