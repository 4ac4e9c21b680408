"""Scalars with a contract: ``Money`` (fen inside, "1040.00" outside) and ``DateTime``
(always with an offset)."""

from __future__ import annotations

from datetime import datetime
from typing import NewType
from zoneinfo import ZoneInfo

import strawberry

from backend.errors import BadUserInput
from backend.money import fen_to_yuan, yuan_to_fen

# Output offsets follow the utility's zone; set once by create_app.
display_zone: ZoneInfo = ZoneInfo("Asia/Shanghai")


def _serialize_datetime(value: datetime) -> str:
    if value.tzinfo is None:
        raise TypeError("naive datetime reached the API")
    return value.astimezone(display_zone).isoformat()


class NaiveDateTime(BadUserInput):
    message = "时间须带时区偏移, 如 2026-01-01T08:00:00+08:00"
    message_en = "A time must carry a UTC offset, e.g. 2026-01-01T08:00:00+08:00"


def _parse_datetime(value: object) -> datetime:
    if not isinstance(value, str):
        raise NaiveDateTime()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise NaiveDateTime() from None
    if parsed.tzinfo is None:
        raise NaiveDateTime()
    if not 1900 <= parsed.year <= 2200:
        # Far dates overflow on conversion between zones and mean a typo anyway.
        raise BadUserInput("时间超出范围 (1900-2200 年)", "Time out of range (years 1900-2200)")
    return parsed


Money = strawberry.scalar(
    NewType("Money", int),
    name="Money",
    description='An amount of yuan as a decimal string with exactly two places ("1040.00"). '
    "Inputs accept at most two places and refuse numbers, floats and exponents.",
    serialize=fen_to_yuan,
    parse_value=yuan_to_fen,
)

DateTime = strawberry.scalar(
    NewType("DateTime", datetime),
    name="DateTime",
    description="An ISO 8601 instant that always carries its UTC offset.",
    serialize=_serialize_datetime,
    parse_value=_parse_datetime,
)

SCALAR_OVERRIDES = {datetime: DateTime}
