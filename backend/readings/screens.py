"""The readings screens' registry: which columns each screen (实时数据, 历史数据, 用水统计,
台账, 对比, 数据监测, 异常水表) offers, where its rows come from, and the streamed xlsx export
built from them.

A module that defines a screen calls :func:`register_screen` at import time; the first
look-up imports every module of :data:`SCREEN_MODULES`, so a route, a query, a service or
the CLI finds every screen without having to import the HTTP routes first. A screen's ``rows`` yields one mapping per row
(column key -> value) for the filters and scope of an :class:`ExportRequest`; the export
writes the chosen columns, in the chosen (saved) order.

Framework-free: no strawberry, no starlette.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth.principal import Principal
from backend.auth.scope import Reach, reach_of
from backend.clock import parse_instant
from backend.errors import DomainError, ErrorCode, NotFound
from backend.exports import excel
from backend.exports.sheets import SheetLayout, write_sheets


class ScreenKind(StrEnum):
    realtime = "realtime"
    history = "history"
    statistics = "statistics"
    ledger = "ledger"
    comparison = "comparison"
    monitoring = "monitoring"
    alarms = "alarms"


@dataclass(frozen=True, slots=True)
class ScreenColumn:
    """One column a screen offers: ``key`` in the row mappings, Chinese and English titles,
    Excel width and (for numbers and times) an Excel number format."""

    key: str
    title: str
    title_en: str
    width: int = 14
    number_format: str | None = None


# Excel number formats of the screens' columns.
TIME_FORMAT = "yyyy-mm-dd hh:mm:ss"
FOUR_PLACES_FORMAT = "0.0000"

# The columns that name a meter and the household it serves, titled alike on every screen.
AREA_NAME_COLUMN = ScreenColumn("area_name", "单位名称", "Area", 18)
HOLDER_COLUMNS = (
    ScreenColumn("account_no", "户号", "Account no.", 14),
    ScreenColumn("household_name", "户名", "Household", 14),
    ScreenColumn("household_address", "住址", "Address", 28),
    ScreenColumn("meter_name", "表计名称", "Meter name", 16),
    ScreenColumn("meter_code", "表计编码", "Meter code", 16),
)


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """What a screen's row source is asked for.

    ``filters`` is the screen's own filter dict (JSON-shaped, validated by the screen);
    ``scope_patterns`` and ``household_ids`` are the caller's :class:`~backend.auth.scope.Reach`
    (``None`` scope: every area; ``None`` households: not a resident).
    """

    filters: dict[str, Any]
    scope_patterns: list[str] | None
    household_ids: list[int] | None
    tz: str
    now: datetime

    @property
    def reach(self) -> Reach:
        return Reach(scope_patterns=self.scope_patterns, household_ids=self.household_ids)


@dataclass(frozen=True, slots=True)
class SummaryLine:
    """A line a screen's export writes after its rows, as the screen shows it below the
    list (用水统计's 合计 / 均值 / 最大 / 最小, 用水台账's area totals): ``values`` by column
    key (a column not chosen is left out), and the bilingual label ("合计 / Total") in the
    first chosen column that holds no value of the line, or in one extra cell after the
    last column when every chosen column holds one. Not counted as a row."""

    label: str
    label_en: str
    values: Mapping[str, Any]

    @property
    def title(self) -> str:
        return f"{self.label} / {self.label_en}"


RowSource = Callable[[AsyncSession, ExportRequest], AsyncIterator[Mapping[str, Any] | SummaryLine]]


@dataclass(frozen=True, slots=True)
class Screen:
    kind: ScreenKind
    title: str
    columns: tuple[ScreenColumn, ...]
    default_columns: tuple[str, ...]
    rows: RowSource
    permission: str

    def __post_init__(self) -> None:
        keys = [column.key for column in self.columns]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate column keys in screen {self.kind}")
        unknown = set(self.default_columns) - set(keys)
        if unknown:
            raise ValueError(f"default columns {sorted(unknown)} not offered by screen {self.kind}")


_SCREENS: dict[ScreenKind, Screen] = {}

# The modules that define readings screens (each calls register_screen at import).
SCREEN_MODULES: tuple[str, ...] = (
    "backend.readings.browse",
    "backend.readings.analytics_screens",
    "backend.readings.alarms.screen",
)


def register_screen(screen: Screen) -> None:
    """Register (or, on a module reload, replace) the screen of ``screen.kind``."""
    _SCREENS[screen.kind] = screen


def load_screens() -> None:
    """Import every screen module (once; later calls find them in ``sys.modules``)."""
    for module in SCREEN_MODULES:
        importlib.import_module(module)


def get_screen(kind: ScreenKind) -> Screen:
    """The registered screen of ``kind``; NOT_FOUND when no module registered it."""
    load_screens()
    screen = _SCREENS.get(ScreenKind(kind))
    if screen is None:
        raise NotFound("该页面不支持导出", "This screen has no export", field="screen")
    return screen


def choose_columns(screen: Screen, keys: Sequence[str] | None) -> list[ScreenColumn]:
    """The columns named by ``keys`` in that order (a scheme's saved order); the screen's
    default columns when ``keys`` is ``None`` or empty. An unknown or repeated key is
    refused (INVALID on field ``columns``)."""
    if not keys:
        keys = screen.default_columns
    by_key = {column.key: column for column in screen.columns}
    unknown = [key for key in keys if key not in by_key]
    if unknown:
        listed = ", ".join(unknown)
        raise DomainError(f"无效的列: {listed}", f"Unknown columns: {listed}", field="columns", code=ErrorCode.INVALID)
    if len(set(keys)) != len(keys):
        raise DomainError("列不能重复", "Columns must not repeat", field="columns", code=ErrorCode.INVALID)
    return [by_key[key] for key in keys]


# --------------------------------------------------------------------------- export links

EXPORT_PREFIX = "/exports/readings/"


def export_path(kind: ScreenKind) -> str:
    """The download route of ``kind``'s export (``backend.readings.http`` serves it)."""
    return f"{EXPORT_PREFIX}{kind.value}.xlsx"


def export_params(columns: list[str], filters: dict[str, Any]) -> dict[str, str]:
    """The query parameters of an export link (what its token signs)."""
    return {"columns": ",".join(columns), "filters": json.dumps(filters, ensure_ascii=False, sort_keys=True,
                                                                separators=(",", ":"))}


# --------------------------------------------------------------------------- xlsx


def screen_layout(title: str, columns: Sequence[ScreenColumn]) -> SheetLayout:
    """A screen's sheet: the same two header rows (Chinese bold, English grey) as every
    other export, and each column's number format."""
    return SheetLayout(
        title,
        tuple(column.title for column in columns),
        tuple(column.title_en for column in columns),
        tuple(column.width for column in columns),
        number_formats=tuple((index, column.number_format) for index, column in enumerate(columns)
                             if column.number_format),
        rows_per_sheet=excel.ROWS_PER_SHEET,
    )


def write_screen_sheet(
    path: str | Path, title: str, columns: Sequence[ScreenColumn],
    next_chunk: Callable[[], Sequence[Mapping[str, Any] | SummaryLine]],
) -> int:
    """Write every row ``next_chunk`` hands out (until an empty chunk) as ``columns`` to a
    write-only xlsx at ``path``; returns the number of rows (:class:`SummaryLine` s are
    written but not counted). Blocking: run it in a thread; a long export is drawn by a
    writer process (:func:`backend.exports.sheets.write_sheets`)."""
    keys = [column.key for column in columns]
    summaries = 0

    def to_values(row: Mapping[str, Any] | SummaryLine) -> list[Any]:
        nonlocal summaries
        if isinstance(row, SummaryLine):
            summaries += 1
            return _summary_values(row, keys)
        return [_cell_value(row.get(key)) for key in keys]

    return write_sheets(path, screen_layout(title, columns), next_chunk, to_values) - summaries


def _summary_values(line: SummaryLine, keys: Sequence[str]) -> list[Any]:
    values: list[Any] = [_cell_value(line.values.get(key)) for key in keys]
    free = next((index for index, value in enumerate(values) if value is None), None)
    if free is None:
        values.append(line.title)
    else:
        values[free] = line.title
    return values


def local_time(value: datetime | None, tz: str) -> datetime | None:
    """``value`` on the utility's wall clock, which is what a sheet shows (see below)."""
    return value.astimezone(ZoneInfo(tz)) if value is not None else None


def _cell_value(value: Any) -> Any:
    # Excel has no time zones: times are written as the utility-local wall clock the
    # row source already converted them to; an aware value left over is made naive here.
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.replace(tzinfo=None)
    if isinstance(value, StrEnum):
        return value.value
    return value


async def write_screen(
    screen: Screen, columns: Sequence[ScreenColumn], rows: AsyncIterator[Mapping[str, Any] | SummaryLine],
    *, directory: str | None = None,
) -> tuple[Path, int]:
    """Stream ``rows`` into a new xlsx file of ``columns``; returns its path (the caller
    deletes it) and the row count (summary lines not counted). Memory stays bounded by
    one chunk of rows."""
    return await excel.spool_rows(lambda path, next_chunk: write_screen_sheet(path, screen.title, columns, next_chunk),
                                  rows, prefix=f"shuiwu-{screen.kind}-", directory=directory)


# --------------------------------------------------------------------------- filters
#
# A screen's filters arrive as the client's JSON object (GraphQL field names, global ids
# such as "QXJlYToz"), from a saved scheme or an export link. These read one entry each
# and refuse a malformed one as INVALID on that field.


def _invalid(field: str) -> DomainError:
    return DomainError("筛选条件无效", "Invalid filter value", field=field, code=ErrorCode.INVALID)


def global_pk(value: Any, type_name: str, *, field: str) -> int:
    """The primary key in a global id (``base64("Type:pk")``) of ``type_name``; a plain
    positive integer is taken as the key itself. NOT_FOUND for anything else, as
    ``node(id:)`` does."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63:
        return value
    if not isinstance(value, str):
        raise NotFound(field=field)
    try:
        kind, _, pk = base64.b64decode(value.encode(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise NotFound(field=field) from None
    if kind != type_name or not (pk.isascii() and pk.isdigit()) or len(pk) > 19 or int(pk) >= 2**63:
        raise NotFound(field=field)
    return int(pk)


def filter_id(filters: Mapping[str, Any], key: str, type_name: str) -> int | None:
    value = filters.get(key)
    return None if value in (None, "") else global_pk(value, type_name, field=key)


def filter_ids(filters: Mapping[str, Any], key: str, type_name: str) -> list[int]:
    values = filters.get(key) or []
    if not isinstance(values, list):
        raise _invalid(key)
    return [global_pk(value, type_name, field=key) for value in values]


def filter_text(filters: Mapping[str, Any], key: str, *, max_length: int = 100) -> str | None:
    value = filters.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or "\x00" in value or len(value) > max_length:
        raise _invalid(key)
    return value.strip() or None


def filter_choice(filters: Mapping[str, Any], key: str, allowed: Sequence[str]) -> str | None:
    value = filters.get(key)
    if value in (None, ""):
        return None
    if value not in allowed:
        raise _invalid(key)
    return str(value)


def filter_choices(filters: Mapping[str, Any], key: str, allowed: Sequence[str]) -> list[str]:
    values = filters.get(key) or []
    if not isinstance(values, list) or any(value not in allowed for value in values):
        raise _invalid(key)
    return [str(value) for value in values]


def filter_datetime(filters: Mapping[str, Any], key: str) -> datetime | None:
    """An ISO 8601 instant with its UTC offset, within the years every input keeps to."""
    value = filters.get(key)
    if value in (None, ""):
        return None
    return parse_instant(value, field=key)


def export_request(principal: Principal, *, filters: dict[str, Any], tz: str, now: datetime) -> ExportRequest:
    """The request a screen's rows are read for on behalf of ``principal``: a resident is
    narrowed to their households, anyone else to their area scope."""
    reach = reach_of(principal)
    household_ids = None if reach.household_ids is None else list(reach.household_ids)
    scope_patterns = None if reach.scope_patterns is None else list(reach.scope_patterns)
    return ExportRequest(filters=filters, scope_patterns=scope_patterns, household_ids=household_ids, tz=tz, now=now)
