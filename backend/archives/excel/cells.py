"""What the sheets' columns share: the cell parsers (readings, times, fixed choices),
the labels of coded values, and the area reference column."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from backend.archives import models
from backend.exports.excel import CellError, text
from backend.exports.excel import decimal as _decimal


def _label(labels: dict[str, str]) -> Any:
    return lambda value: labels.get(value, value) if value is not None else None


# An area code, or ``#<id>`` for an area without a code (what exports write).
_area_ref = text(32)
_AREA_HAS_CODE = "code" in models.Area.__table__.c  # type: ignore[attr-defined]
_MAX_READING = Decimal("1e12")


def _reading() -> Any:
    parse = _decimal(places=4)

    def reading(value: Any) -> Decimal:
        result: Decimal = parse(value)
        if result < 0 or result >= _MAX_READING:
            raise CellError("读数须为非负数", "A reading is a non-negative number")
        return result

    return reading


def moment() -> Any:
    """A date or date and time (local, whole seconds): ``2026-01-31`` or ``2026-01-31 08:30:00``."""

    def parse(value: Any) -> datetime:
        if isinstance(value, datetime):
            result = value.replace(tzinfo=None)
        elif isinstance(value, date):
            result = datetime(value.year, value.month, value.day)
        else:
            raw = str(value).strip().replace("/", "-").replace("T", " ")
            try:
                result = datetime.fromisoformat(raw)
            except ValueError:
                raise CellError("时间格式须为 2026-01-31 或 2026-01-31 08:30:00",
                                "Times look like 2026-01-31 or 2026-01-31 08:30:00") from None
            result = result.replace(tzinfo=None)
        # Excel keeps times as fractions of a day: round back to the exported whole second.
        if result.microsecond >= 500_000:
            try:
                result += timedelta(seconds=1)
            except OverflowError:
                raise CellError("时间超出范围", "The time is out of range") from None
        return result.replace(microsecond=0)

    return parse


def _one_of(values: Sequence[str]) -> Any:
    accepted = set(values)

    def parse(value: Any) -> str:
        raw = value if isinstance(value, str) else (str(int(value)) if isinstance(value, float) and value.is_integer() else str(value))
        raw = raw.strip().upper()
        if raw not in accepted:
            raise CellError(f"须为以下之一: {'/'.join(values)}", f"Must be one of: {', '.join(values)}")
        return raw

    return parse
