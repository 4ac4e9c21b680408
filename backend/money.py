"""Money is an integer number of fen everywhere below the API (DESIGN.md, "Money").

These two functions are the only place yuan strings and fen integers meet.
"""

from __future__ import annotations

import re

from backend.errors import BadUserInput, ErrorCode

# Two places at most, no sign other than a leading minus, no exponent, no grouping.
_YUAN = re.compile(r"^(-)?(0|[1-9][0-9]{0,15})(?:\.([0-9]{1,2}))?\Z", re.ASCII)


class InvalidMoney(BadUserInput):
    # A top-level BAD_USER_INPUT when it arrives as a variable; a payload error says
    # INVALID_MONEY through its own code where a form field carries the amount.
    code = ErrorCode.BAD_USER_INPUT
    message = "金额格式错误: 须为最多两位小数的字符串, 如 \"12.50\""
    message_en = 'Malformed amount: a decimal string with at most two places, e.g. "12.50"'


def yuan_to_fen(value: object) -> int:
    """Parse a yuan string ("12.5", "12.50", "-3") to fen. Floats, exponents and more
    than two places are refused: a float cannot carry money exactly."""
    if not isinstance(value, str):
        raise InvalidMoney()
    match = _YUAN.match(value)
    if match is None:
        raise InvalidMoney()
    sign, whole, part = match.groups()
    fen = int(whole) * 100 + int((part or "0").ljust(2, "0"))
    return -fen if sign else fen


def fen_to_yuan(fen: int) -> str:
    """Format fen as a yuan string with exactly two places: 104000 -> "1040.00"."""
    if isinstance(fen, bool) or not isinstance(fen, int):
        raise TypeError(f"money must be integer fen, got {type(fen).__name__}")
    sign = "-" if fen < 0 else ""
    whole, part = divmod(abs(fen), 100)
    return f"{sign}{whole}.{part:02d}"
