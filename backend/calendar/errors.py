"""The holiday calendar's refusals."""

from __future__ import annotations

from backend.errors import DomainError, ErrorCode


class HolidayRowError(DomainError):
    """A row of a holiday schedule that cannot be loaded: ``row`` is its number (a file's
    line for CSV, the item's 1-based position for JSON), named first in both messages."""

    code = ErrorCode.INVALID

    def __init__(self, row: int, message: str, message_en: str, *, code: ErrorCode | None = None) -> None:
        self.row = row
        super().__init__(f"第 {row} 行：{message}", f"row {row}: {message_en}", field="rows", code=code)
