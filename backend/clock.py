"""Time is injected: services take a ``now`` argument, tests pass a fixed instant.

Every day and instant a caller sends is bounded here, once for GraphQL scalars and the
plain HTTP routes alike (:func:`parse_day`, :func:`parse_instant`): years
:data:`EARLIEST_YEAR`-:data:`LATEST_YEAR`. asyncpg sends ``date.min``/``date.max`` as
``-infinity``/``infinity``, which turned a ``generate_series`` over periods into an
endless statement; far dates also overflow the arithmetic around them (a year back, a
month on, a zone change) and mean a typo anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

from backend.errors import BadUserInput

Clock = Callable[[], datetime]

EARLIEST_YEAR = 1900
LATEST_YEAR = 2200


def utcnow() -> datetime:
    return datetime.now(UTC)


class DateOutOfRange(BadUserInput):
    message = f"日期超出范围 ({EARLIEST_YEAR}-{LATEST_YEAR} 年)"
    message_en = f"Date out of range (years {EARLIEST_YEAR}-{LATEST_YEAR})"


class BadDate(BadUserInput):
    message = "日期格式应为 YYYY-MM-DD"
    message_en = "Dates are YYYY-MM-DD"


class NaiveDateTime(BadUserInput):
    message = "时间须带时区偏移, 如 2026-01-01T08:00:00+08:00"
    message_en = "A time must carry a UTC offset, e.g. 2026-01-01T08:00:00+08:00"


def check_day(day: date, *, field: str | None = None) -> date:
    """``day`` when its year lies within the bounds; DateOutOfRange otherwise."""
    if not EARLIEST_YEAR <= day.year <= LATEST_YEAR:
        raise DateOutOfRange(field=field)
    return day


def parse_day(value: object, *, field: str | None = None) -> date:
    """A calendar day written ``YYYY-MM-DD``, within the bounds."""
    if not isinstance(value, str) or len(value) != 10:
        raise BadDate(field=field)
    try:
        parsed = date.fromisoformat(value)
    except ValueError:
        raise BadDate(field=field) from None
    return check_day(parsed, field=field)


def parse_instant(value: object, *, field: str | None = None) -> datetime:
    """An ISO 8601 instant that carries its UTC offset, within the bounds."""
    if not isinstance(value, str):
        raise NaiveDateTime(field=field)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise NaiveDateTime(field=field) from None
    if parsed.tzinfo is None:
        raise NaiveDateTime(field=field)
    if not EARLIEST_YEAR <= parsed.year <= LATEST_YEAR:
        raise DateOutOfRange(f"时间超出范围 ({EARLIEST_YEAR}-{LATEST_YEAR} 年)",
                             f"Time out of range (years {EARLIEST_YEAR}-{LATEST_YEAR})", field=field)
    return parsed
