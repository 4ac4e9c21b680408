"""Scalars with a contract: ``Money`` (fen inside, "1040.00" outside), ``DateTime``
(always with an offset) and ``Date``, both within years 1900-2200 (backend.clock)."""

from __future__ import annotations

from datetime import date, datetime
from typing import NewType
from zoneinfo import ZoneInfo

import strawberry

from backend.clock import EARLIEST_YEAR, LATEST_YEAR, parse_day, parse_instant
from backend.money import fen_to_yuan, yuan_to_fen

# Output offsets follow the utility's zone; set once by create_app.
display_zone: ZoneInfo = ZoneInfo("Asia/Shanghai")


def _serialize_datetime(value: datetime) -> str:
    if value.tzinfo is None:
        raise TypeError("naive datetime reached the API")
    return value.astimezone(display_zone).isoformat()


def _parse_datetime(value: object) -> datetime:
    return parse_instant(value)


def _parse_date(value: object) -> date:
    return parse_day(value)


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
    description=f"An ISO 8601 instant that always carries its UTC offset, in years {EARLIEST_YEAR}-{LATEST_YEAR}.",
    serialize=_serialize_datetime,
    parse_value=_parse_datetime,
)

Date = strawberry.scalar(
    NewType("Date", date),
    name="Date",
    description=f"A calendar day, YYYY-MM-DD, in years {EARLIEST_YEAR}-{LATEST_YEAR}.",
    serialize=date.isoformat,
    parse_value=_parse_date,
)

# Every ``date`` and ``datetime`` annotation in the schema resolves to the bounded scalars.
SCALAR_OVERRIDES = {datetime: DateTime, date: Date}
