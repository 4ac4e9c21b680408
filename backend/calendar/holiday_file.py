"""Reading a holiday schedule file for ``shuiwu holidays load``: CSV with the header
``date,kind,name`` (``2027-02-06,holiday,春节``; ``2027-02-14,workday,春节``) or JSON, a
list of ``{"date": …, "kind": …, "name": …}`` objects. ``kind`` is ``holiday`` or
``workday`` (调休上班); 休 and 班, as printed on official schedules, are accepted too.

A row that does not read is a :class:`HolidayRowError` naming its line (CSV) or position
(JSON); nothing is loaded from a file with one bad row."""

from __future__ import annotations

import csv
import io
import json
from datetime import date
from pathlib import Path
from typing import Any

from backend.calendar.errors import HolidayRowError
from backend.calendar.models import DayKind
from backend.calendar.service import HolidayRow, check_row
from backend.errors import DomainError, ErrorCode

# A century of schedules is ~200 kB of CSV.
MAX_FILE_BYTES = 1_000_000
COLUMNS = ("date", "kind", "name")
_KINDS = {"holiday": DayKind.holiday, "workday": DayKind.workday, "休": DayKind.holiday, "班": DayKind.workday}


def read_holiday_file(path: Path) -> list[HolidayRow]:
    """The rows of ``path`` (``.json`` is JSON, anything else CSV), each row checked."""
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DomainError(f"文件超过 {MAX_FILE_BYTES} 字节", f"The file is larger than {MAX_FILE_BYTES} bytes",
                          code=ErrorCode.TOO_LONG)
    try:
        content = path.read_bytes().decode("utf-8-sig")  # a BOM, as Excel writes CSV, is not part of the header
    except UnicodeDecodeError:
        raise DomainError("文件不是 UTF-8 编码", "The file is not UTF-8 text") from None
    return parse_json(content) if path.suffix.lower() == ".json" else parse_csv(content)


def parse_csv(content: str) -> list[HolidayRow]:
    reader = csv.reader(io.StringIO(content))
    header = next(reader, None)
    if header is None or tuple(cell.strip().lower() for cell in header) != COLUMNS:
        raise HolidayRowError(1, "表头应为 date,kind,name", "the header must be date,kind,name")
    rows: list[HolidayRow] = []
    seen: set[date] = set()
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue  # a blank line (a trailing one, or a gap between years)
        if len(cells) != len(COLUMNS):
            raise HolidayRowError(reader.line_num, f"应有 3 列，实有 {len(cells)} 列", f"3 columns expected, {len(cells)} found")
        rows.append(_row(reader.line_num, *cells))
        _refuse_repeat(reader.line_num, rows, seen)
    return rows


def parse_json(content: str) -> list[HolidayRow]:
    try:
        items = json.loads(content)
    except json.JSONDecodeError as error:
        raise HolidayRowError(error.lineno, "不是有效的 JSON", "not valid JSON") from None
    if not isinstance(items, list):
        raise DomainError("JSON 应为一个列表", "The JSON must be a list of days")
    rows: list[HolidayRow] = []
    seen: set[date] = set()
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict) or set(item) != set(COLUMNS) or not all(isinstance(v, str) for v in item.values()):
            raise HolidayRowError(number, "应为含 date、kind、name 三个字符串的对象",
                                  "an object of three strings date, kind, name expected")
        rows.append(_row(number, item["date"], item["kind"], item["name"]))
        _refuse_repeat(number, rows, seen)
    return rows


def _row(number: int, day_text: str, kind_text: str, name: str) -> HolidayRow:
    try:
        day = date.fromisoformat(day_text.strip())
    except ValueError:
        raise HolidayRowError(number, f"日期 {day_text!r} 不是 YYYY-MM-DD", f"the date {day_text!r} is not YYYY-MM-DD") from None
    kind: Any = _KINDS.get(kind_text.strip().lower())
    if kind is None:
        raise HolidayRowError(number, f"类型 {kind_text!r} 应为 holiday 或 workday",
                              f"the kind {kind_text!r} must be holiday or workday")
    row = HolidayRow(day, kind, name.strip())
    check_row(number, row)
    return row


def _refuse_repeat(number: int, rows: list[HolidayRow], seen: set[date]) -> None:
    """The row just added (number ``number``) must be a day not seen before in the file."""
    day = rows[-1].day
    if day in seen:
        raise HolidayRowError(number, f"日期 {day} 重复", f"the date {day} appears twice", code=ErrorCode.DUPLICATE)
    seen.add(day)
