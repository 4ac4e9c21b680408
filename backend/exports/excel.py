"""Excel sheets every domain imports and exports (openpyxl), declared once per kind of row.

A :class:`SheetSpec` names the sheet, its :class:`Column` s (key, Chinese and English
header, parser, required, width, example) and the natural key. From it:

- :func:`write_rows` streams rows into an xlsx file with openpyxl's write-only workbook
  (each sheet spills to a temporary file as rows are appended, so memory stays bounded
  however many rows there are; rows are pulled in chunks from a sync or async iterator);
- :func:`template` renders the downloadable template (headers, one example row, a notes
  sheet explaining each column);
- :func:`read_rows` reads an uploaded file in read-only mode, checks the header, parses
  *every* row and returns a :class:`ValidatedSheet`: typed records plus a capped list of
  row/column/message errors with the total count, so the caller can import all or nothing.
- :func:`check_workbook_archive` is the one check every uploaded workbook passes before
  an XML parser sees it (an xlsx is a zip: a small file can unpack to gigabytes), and
  :class:`UploadLimits` / :class:`ImportBudget` bound the rows and the time of an import.

**Header layout**: two header rows, Chinese first (bold), English second (grey): both are
readable to staff and scripts, survive copy/paste and CSV round trips (a cell comment
would not), and match the operation-log export. On import, the header row may be either
language (or mixed), a trailing ``*`` (required marker) is ignored, and the English row
under it is skipped when present, so a file with only one header row imports too.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from itertools import islice
from pathlib import Path
from typing import IO, Any

from openpyxl import Workbook, load_workbook
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

from backend.errors import DomainError, ErrorCode
from backend.exports import sheets
from backend.exports.sheets import SheetLayout, write_sheets
from backend.slicing import take

XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
# Excel's sheet limit (two of its rows are the header rows); a longer export continues on
# a second sheet. Read when an export starts (tests lower it).
ROWS_PER_SHEET = sheets.ROWS_PER_SHEET
# Rows pulled from the source per hop (and held in memory at once).
CHUNK_ROWS = 2000
# Errors listed in a refusal; the count covers all of them.
MAX_LISTED_ERRORS = 1000
NOTES_SHEET = "说明"
_BOLD = Font(bold=True)
_EN_HEADER = Font(italic=True, color="808080")


# --------------------------------------------------------------------------- errors


class CellError(ValueError):
    """Raised by a column parser: what is wrong with one cell, in Chinese and English."""

    def __init__(self, message: str, message_en: str) -> None:
        super().__init__(message_en)
        self.message = message
        self.message_en = message_en


class NotXlsx(DomainError):
    code = ErrorCode.NOT_XLSX
    message = "文件不是 Excel (.xlsx) 工作簿; 旧版 .xls 或 CSV 请另存为 .xlsx"
    message_en = "The file is not an Excel (.xlsx) workbook; save .xls or CSV files as .xlsx first"


class FileTooLarge(DomainError):
    code = ErrorCode.FILE_TOO_LARGE
    message = "文件过大"
    message_en = "The file is too large"


class WorkbookTooLargeUnpacked(FileTooLarge):
    message = "文件解压后过大 (或压缩比异常), 不予读取"
    message_en = "The workbook unpacks to too much data (or packs it suspiciously tightly); it was not read"


class TooManyRows(DomainError):
    code = ErrorCode.TOO_MANY_ROWS

    def __init__(self, limit: int) -> None:
        super().__init__(f"行数超过上限 {limit} (空行也计入), 请分批导入",
                         f"More than {limit} rows (blank rows count too); import in parts", field="file")


class ImportTimeExceeded(DomainError):
    code = ErrorCode.IMPORT_TIME_EXCEEDED

    def __init__(self, budget_s: float) -> None:
        super().__init__(f"导入超过时间上限 ({budget_s:g} 秒), 未导入任何数据, 请分批导入",
                         f"The import took longer than its budget ({budget_s:g} s); nothing was imported. "
                         "Import in parts", field="file")


class EmptySheet(DomainError):
    code = ErrorCode.EMPTY_SHEET
    message = "工作表没有表头"
    message_en = "The sheet has no header row"


class MissingColumns(DomainError):
    code = ErrorCode.MISSING_COLUMNS

    def __init__(self, headers: Sequence[str], headers_en: Sequence[str]) -> None:
        self.columns = list(headers)
        super().__init__(f"缺少列: {', '.join(headers)}", f"Missing columns: {', '.join(headers_en)}")


class UnknownColumns(DomainError):
    code = ErrorCode.UNKNOWN_COLUMNS

    def __init__(self, headers: Sequence[str]) -> None:
        self.columns = list(headers)
        listed = ", ".join(headers)
        super().__init__(f"无法识别的列: {listed}", f"Unknown columns: {listed}")


@dataclass(frozen=True, slots=True)
class RowError:
    """One bad cell (or row, when ``column`` is ``None``); ``row`` is the Excel row number."""

    row: int
    column: str | None
    message: str
    message_en: str

    def as_json(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "message": self.message, "messageEn": self.message_en}


class ImportRowsInvalid(DomainError):
    """The file has bad rows; nothing was written. ``errors`` lists the first
    :data:`MAX_LISTED_ERRORS`, ``error_count`` counts them all."""

    code = ErrorCode.IMPORT_ROWS_INVALID

    def __init__(self, errors: Sequence[RowError], error_count: int) -> None:
        self.errors = list(errors)
        self.error_count = error_count
        super().__init__(
            f"{error_count} 处错误, 未导入任何数据", f"{error_count} errors; nothing was imported"
        )


# --------------------------------------------------------------------------- specs

Parser = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a sheet.

    ``parse`` turns a non-empty cell value into the typed value or raises
    :class:`CellError`; ``render`` turns a stored value into what the cell shows (``None``:
    as is). ``importable=False`` marks a column written for reading only (an area's full
    name beside its id): accepted in an upload, ignored.
    """

    key: str
    header: str
    header_en: str
    parse: Parser
    required: bool = False
    width: float = 14
    example: Any = None
    note: str = ""
    render: Callable[[Any], Any] | None = None
    importable: bool = True
    text_format: bool = False  # "@": Excel keeps leading zeros of codes typed into it


@dataclass(frozen=True, slots=True)
class SheetSpec:
    name: str
    columns: tuple[Column, ...]
    natural_key: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        keys = [column.key for column in self.columns]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate column keys in sheet {self.name}")
        missing = set(self.natural_key) - set(keys)
        if missing:
            raise ValueError(f"natural key columns {missing} not in sheet {self.name}")

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(column.key for column in self.columns)

    def column(self, key: str) -> Column:
        for column in self.columns:
            if column.key == key:
                return column
        raise KeyError(key)


# --------------------------------------------------------------------------- parsers


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # a code Excel turned into a number
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return str(value).strip()


def text(max_length: int, *, pattern: str | None = None, pattern_zh: str = "", pattern_en: str = "") -> Parser:
    """Free text up to ``max_length`` characters, optionally matching ``pattern``."""
    # ASCII: a pattern's \d must not take fullwidth digits (the database and the forms would not).
    compiled = re.compile(pattern, re.ASCII) if pattern else None

    def parse(value: Any) -> str:
        result = _as_text(value)
        if "\x00" in result:
            raise CellError("文本不能包含 NUL 字符", "Text must not contain NUL characters")
        if len(result) > max_length:
            raise CellError(f"长度不能超过 {max_length} 个字符", f"At most {max_length} characters")
        if compiled is not None and not compiled.fullmatch(result):
            raise CellError(pattern_zh or "格式不正确", pattern_en or "Malformed value")
        return result

    return parse


def integer(*, minimum: int | None = None, maximum: int | None = None) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise CellError("须为整数", "Must be a whole number")
        if isinstance(value, int):
            result = value
        elif isinstance(value, float) and value.is_integer():
            result = int(value)
        else:
            raw = _as_text(value)
            if not re.fullmatch(r"[+-]?[0-9]{1,18}", raw):
                raise CellError("须为整数", "Must be a whole number")
            result = int(raw)
        if minimum is not None and result < minimum:
            raise CellError(f"不能小于 {minimum}", f"Must be at least {minimum}")
        if maximum is not None and result > maximum:
            raise CellError(f"不能大于 {maximum}", f"Must be at most {maximum}")
        return result

    return parse


def decimal(*, places: int) -> Parser:
    def parse(value: Any) -> Decimal:
        try:
            result = Decimal(_as_text(value))
        except InvalidOperation:
            raise CellError("须为数字", "Must be a number") from None
        if not result.is_finite() or -result.as_tuple().exponent > places:  # type: ignore[operator]
            raise CellError(f"最多 {places} 位小数", f"At most {places} decimal places")
        return result

    return parse


def choice(labels: Mapping[str, str]) -> Parser:
    """One of ``labels`` (stored value → Chinese label); the cell may hold either."""
    accepted = {**{value: value for value in labels}, **{label: value for value, label in labels.items()}}
    listed = "/".join(labels.values())

    def parse(value: Any) -> str:
        found = accepted.get(_as_text(value))
        if found is None:
            raise CellError(f"须为以下之一: {listed}", f"Must be one of: {', '.join(labels)}")
        return found

    return parse


def day() -> Parser:
    def parse(value: Any) -> date:
        if isinstance(value, datetime):
            return value.date()
        if isinstance(value, date):
            return value
        try:
            return date.fromisoformat(_as_text(value).replace("/", "-"))
        except ValueError:
            raise CellError("日期格式须为 2026-01-31", "Dates look like 2026-01-31") from None

    return parse


# --------------------------------------------------------------------------- writing


def layout_of(spec: SheetSpec) -> SheetLayout:
    """How an export of ``spec`` looks: its name, both header rows and widths."""
    return SheetLayout(
        spec.name,
        tuple(column.header for column in spec.columns),
        tuple(column.header_en for column in spec.columns),
        tuple(column.width for column in spec.columns),
        rows_per_sheet=ROWS_PER_SHEET,
    )


def write_sheet(path: str | Path, spec: SheetSpec, next_chunk: Callable[[], Sequence[Sequence[Any]]]) -> int:
    """Write every row ``next_chunk`` hands out (until an empty chunk) under ``spec``'s
    header to an xlsx file at ``path``; returns the number of rows written.

    Rows hold the values of ``spec.columns`` in order (a column's ``render`` is applied
    here). Blocking: run it in one thread; a long export is drawn by a writer process
    (:func:`backend.exports.sheets.write_sheets`).
    """
    renders = [(index, column.render) for index, column in enumerate(spec.columns) if column.render is not None]

    def to_values(row: Sequence[Any]) -> Sequence[Any]:
        if not renders:
            return row
        values = list(row)
        for index, render in renders:
            values[index] = render(values[index])
        return values

    return write_sheets(path, layout_of(spec), next_chunk, to_values)


def discard(path: str | os.PathLike[str]) -> None:
    """Remove a spooled file that may already be gone."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class ExportAbandoned(Exception):
    """Raised in the writer thread when the export it writes was given up (the request
    was cancelled or failed): the thread stops at its next chunk."""


async def write_file(
    path: Path, write: Callable[[Callable[[], Sequence[Any]]], int],
    fetch: Callable[[], Coroutine[Any, Any, Sequence[Any]]], *, first: Sequence[Any] | None = None,
) -> int:
    """Run ``write(next_chunk)`` in one worker thread, ``next_chunk`` pulling chunks from
    ``fetch()`` on this event loop (``first`` is handed out before it), and return what
    ``write`` returns.

    However it ends (an error in the source or the writer, or this coroutine cancelled
    because the client went away) nothing stays behind: the thread is stopped at its next
    chunk and waited for, so it cannot re-create the file, and ``path`` is removed.
    """
    loop = asyncio.get_running_loop()
    abandoned = threading.Event()
    pending = [first] if first is not None else []

    def next_chunk() -> Sequence[Any]:
        if abandoned.is_set():
            raise ExportAbandoned()
        if pending:
            return pending.pop()
        return asyncio.run_coroutine_threadsafe(fetch(), loop).result()

    writer = asyncio.ensure_future(asyncio.to_thread(write, next_chunk))
    try:
        return await asyncio.shield(writer)
    except BaseException:
        abandoned.set()
        try:
            await writer  # the thread stops at its next chunk
        except Exception:
            pass  # its own end (ExportAbandoned, or its error): the first error is the one raised
        finally:
            # Also when a second cancellation (server shutdown) ends this wait: it propagates.
            discard(path)
        raise


def chunk_reader(rows: AsyncIterator[Any] | Iterable[Any]) -> Callable[[], Coroutine[Any, Any, list[Any]]]:
    """``fetch()`` for :func:`write_file`: the next :data:`CHUNK_ROWS` of ``rows`` (an async
    source read in slices on the loop, :func:`backend.slicing.take`), empty at its end."""
    if isinstance(rows, AsyncIterator):
        source = rows

        async def fetch() -> list[Any]:
            return await take(source, CHUNK_ROWS)

        return fetch
    iterator: Iterator[Any] = iter(rows)

    async def fetch_plain() -> list[Any]:
        return list(islice(iterator, CHUNK_ROWS))

    return fetch_plain


async def spool_rows(
    write: Callable[[Path, Callable[[], Sequence[Any]]], int],
    rows: AsyncIterator[Any] | Iterable[Any],
    *,
    prefix: str,
    directory: str | None = None,
) -> tuple[Path, int]:
    """Run ``write(path, next_chunk)`` (a blocking writer, :func:`write_file`) over ``rows``
    into a new temporary xlsx file; returns its path (the caller deletes it) and what
    ``write`` returned. The first chunk is read before any file exists: a refusal the
    source raises when it starts (bad filters) leaves nothing behind."""
    fetch = chunk_reader(rows)
    first = await fetch()
    descriptor, name = tempfile.mkstemp(prefix=prefix, suffix=".xlsx", dir=directory)
    os.close(descriptor)
    path = Path(name)
    written = await write_file(path, lambda next_chunk: write(path, next_chunk), fetch, first=first)
    return path, written


async def write_rows(
    spec: SheetSpec,
    rows: AsyncIterator[Sequence[Any]] | Iterable[Sequence[Any]],
    *,
    directory: str | None = None,
    prefix: str = "shuiwu-export-",
) -> Path:
    """Stream ``rows`` into a new xlsx file and return its path (the caller deletes it).

    Memory is bounded by one chunk of rows: openpyxl's write-only workbook spills rows to
    disk as they are appended. The writer runs in one worker thread (:func:`write_file`);
    the source is read on the event loop a chunk at a time.
    """
    path, _ = await spool_rows(lambda path, next_chunk: write_sheet(path, spec, next_chunk), rows,
                               prefix=prefix, directory=directory)
    return path


def template(spec: SheetSpec) -> bytes:
    """The import template: both header rows, one example row, and a notes sheet."""
    workbook = Workbook()
    sheet: Any = workbook.active
    sheet.title = spec.name
    importable = [column for column in spec.columns if column.importable]
    for index, column in enumerate(importable, start=1):
        letter = get_column_letter(index)
        sheet.column_dimensions[letter].width = column.width
        sheet.cell(row=1, column=index, value=column.header).font = _BOLD
        sheet.cell(row=2, column=index, value=column.header_en).font = _EN_HEADER
        example = sheet.cell(row=3, column=index, value=column.example)
        if column.text_format:
            example.number_format = "@"
    sheet.freeze_panes = "A3"
    notes: Any = workbook.create_sheet(NOTES_SHEET)
    notes.append(["列名", "Column", "必填", "说明", "示例"])
    for cell in notes[1]:
        cell.font = _BOLD
    for column in importable:
        notes.append([column.header, column.header_en, "是" if column.required else "否", column.note, column.example])
    if spec.natural_key:
        keys = "、".join(spec.column(key).header for key in spec.natural_key)
        notes.append([])
        notes.append([f"按「{keys}」识别已有记录: 重复导入同一文件不会改变数据; 勾选「更新已有」时以文件内容覆盖。"])
    notes.append(["第 1 行为中文表头, 第 2 行为英文表头 (可删除); 数据从第 3 行开始。"])
    notes.append(["整个文件校验通过后才会导入, 有任何错误则不导入任何数据。"])
    for line in spec.notes:
        notes.append([line])
    for letter, width in zip("ABCDE", (16, 18, 8, 60, 20), strict=True):
        notes.column_dimensions[letter].width = width
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


# --------------------------------------------------------------------------- upload limits

# Columns read from any row: a cell at column XFD would otherwise make every row a
# 16,384-wide tuple. No sheet has half as many columns.
MAX_COLUMNS = 200
# Parts of one workbook (an ordinary xlsx has about ten).
MAX_ARCHIVE_MEMBERS = 10_000
# Below this size a part's packing ratio is not judged (tiny XML packs tightly).
_RATIO_FLOOR_BYTES = 1024 * 1024
_INFLATE_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """What one uploaded spreadsheet may cost (settings ``SHUIWU_IMPORT_*``; these
    defaults are theirs): the bytes it unpacks to, the packing ratio of any large part (a
    real sheet packs about 15:1), every physical row (blank ones too), and the time from
    the first byte parsed to the last row validated."""

    max_unpacked_bytes: int = 100 * 1024 * 1024
    max_ratio: int = 100
    max_rows: int = 100_000
    time_budget_s: float = 60.0
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def from_settings(cls, settings: Any) -> UploadLimits:
        return cls(max_unpacked_bytes=settings.import_max_unpacked_bytes, max_ratio=settings.import_max_ratio,
                   max_rows=settings.import_max_rows, time_budget_s=settings.import_time_budget_s)

    def start(self) -> ImportBudget:
        return ImportBudget(self.time_budget_s, self.clock)


class ImportBudget:
    """The time left to one import; :meth:`check` refuses it once spent."""

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s = budget_s
        self.clock = clock
        self.deadline = clock() + budget_s

    def remaining(self) -> float:
        return max(0.0, self.deadline - self.clock())

    def check(self) -> None:
        if self.clock() > self.deadline:
            raise ImportTimeExceeded(self.budget_s)


@contextlib.asynccontextmanager
async def within_budget(budget: ImportBudget) -> AsyncIterator[None]:
    """Run the block in the time ``budget`` has left: running out cancels it (a
    transaction inside rolls back) and raises IMPORT_TIME_EXCEEDED."""
    budget.check()
    deadline = asyncio.timeout(budget.remaining())
    try:
        async with deadline:
            yield
    except TimeoutError:
        if deadline.expired():
            raise ImportTimeExceeded(budget.budget_s) from None
        raise


class RowCounter:
    """Counts every physical row read, blank or not, against the cap, and checks the
    time budget as it goes."""

    _CHECK_EVERY = 256

    def __init__(self, limits: UploadLimits, budget: ImportBudget) -> None:
        self.limits = limits
        self.budget = budget
        self.rows = 0

    def count(self) -> None:
        self.rows += 1
        if self.rows > self.limits.max_rows:
            raise TooManyRows(self.limits.max_rows)
        if self.rows % self._CHECK_EVERY == 0:
            self.budget.check()


def check_workbook_archive(file: IO[bytes], *, limits: UploadLimits, budget: ImportBudget | None = None) -> None:
    """Refuse a workbook (a zip) that would unpack past ``limits`` before any XML parser
    reads it: the number of parts, each part's declared size and packing ratio, their
    sum, and then the bytes each part actually inflates to (streamed, stopping at the
    cap, so a part that lies about its size is caught too). Leaves ``file`` at its start.

    Raises :class:`WorkbookTooLargeUnpacked` (FILE_TOO_LARGE) or :class:`NotXlsx`.
    """
    try:
        with zipfile.ZipFile(file) as archive:
            members = archive.infolist()
            if len(members) > MAX_ARCHIVE_MEMBERS:
                raise WorkbookTooLargeUnpacked(field="file")
            declared = 0
            for member in members:
                declared += member.file_size
                packed_tightly = member.file_size > limits.max_ratio * max(member.compress_size, 1)
                if declared > limits.max_unpacked_bytes or (member.file_size > _RATIO_FLOOR_BYTES and packed_tightly):
                    raise WorkbookTooLargeUnpacked(field="file")
            inflated = 0
            for member in members:
                with archive.open(member) as part:
                    while chunk := part.read(_INFLATE_CHUNK):
                        inflated += len(chunk)
                        if inflated > limits.max_unpacked_bytes:
                            raise WorkbookTooLargeUnpacked(field="file")
                        if budget is not None:
                            budget.check()
    except DomainError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, NotImplementedError, RuntimeError) as error:
        # Corrupt, encrypted or truncated parts, a CRC that does not match: not a workbook.
        raise NotXlsx(field="file") from error
    finally:
        file.seek(0)


# --------------------------------------------------------------------------- reading


@dataclass
class ValidatedSheet:
    """The parsed rows of an upload.

    ``columns`` are the keys of the importable columns present in the file (spec order);
    each record holds their typed values in that order, and ``row_numbers`` its Excel row.
    Valid rows are kept even when others are bad, so the caller can check them further
    (against the database) and add its own errors before refusing the whole file.
    """

    spec: SheetSpec
    columns: tuple[str, ...]
    records: list[tuple[Any, ...]] = field(default_factory=list)
    row_numbers: list[int] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    error_count: int = 0
    max_errors: int = MAX_LISTED_ERRORS

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def add_error(self, row: int, column: str | None, message: str, message_en: str) -> None:
        """Count an error; list it while under the cap. ``column`` is a column key."""
        self.error_count += 1
        if len(self.errors) < self.max_errors:
            header = self.spec.column(column).header if column else None
            self.errors.append(RowError(row, header, message, message_en))

    def sort_errors(self) -> None:
        self.errors.sort(key=lambda error: (error.row, error.column or ""))

    def raise_if_invalid(self) -> None:
        if self.error_count:
            self.sort_errors()
            raise ImportRowsInvalid(self.errors, self.error_count)

    def index(self, key: str) -> int:
        return self.columns.index(key)


def _normalised(header: Any) -> str:
    return re.sub(r"\s+", "", _as_text(header)).rstrip("*＊").lower() if header is not None else ""


def open_workbook(
    source: bytes | str | Path | IO[bytes], *, limits: UploadLimits, budget: ImportBudget | None = None
) -> Any:
    """An uploaded workbook opened read-only, after :func:`check_workbook_archive`."""
    if isinstance(source, str | Path):
        with open(source, "rb") as file:
            return open_workbook(io.BytesIO(file.read()), limits=limits, budget=budget)
    target = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    head = target.read(4)
    target.seek(0)
    if head != b"PK\x03\x04":
        raise NotXlsx()
    check_workbook_archive(target, limits=limits, budget=budget)
    try:
        return load_workbook(target, read_only=True, data_only=True)
    except Exception as error:  # zipfile, XML and openpyxl's own InvalidFileException: all "not a workbook"
        raise NotXlsx() from error


def sheet_rows(sheet: Any, counter: RowCounter) -> Iterator[tuple[Any, ...]]:
    """Every physical row of a read-only sheet, blank ones included, each counted; at
    most :data:`MAX_COLUMNS` wide. The sheet's declared dimensions are ignored (they are
    whatever the file says, and would pad every row or add phantom ones)."""
    sheet.reset_dimensions()
    for row in sheet.iter_rows(values_only=True, max_col=MAX_COLUMNS):
        counter.count()
        yield row


def read_rows(
    spec: SheetSpec, source: bytes | str | Path | IO[bytes], *, max_errors: int = MAX_LISTED_ERRORS,
    limits: UploadLimits | None = None, budget: ImportBudget | None = None,
) -> ValidatedSheet:
    """Read and validate a whole upload (blocking: run it in a thread) within ``limits``
    (default :class:`UploadLimits`) and ``budget`` (default: a fresh one from them).

    Raises :class:`NotXlsx`, :class:`EmptySheet`, :class:`MissingColumns` or
    :class:`UnknownColumns` for a file that cannot be read as ``spec``'s sheet, and
    FILE_TOO_LARGE, TOO_MANY_ROWS or IMPORT_TIME_EXCEEDED past a limit; row-level
    problems (bad cells, missing required values, a natural key repeated in the file) are
    collected in the result instead, every row being parsed.
    """
    limits = limits or UploadLimits()
    budget = budget or limits.start()
    workbook = open_workbook(source, limits=limits, budget=budget)
    try:
        return _read_sheet(workbook, spec, max_errors, RowCounter(limits, budget))
    except DomainError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, SyntaxError, KeyError, ValueError, OverflowError) as error:
        # A valid zip whose sheet XML is truncated or malformed fails only while rows are
        # read (XML parse errors are SyntaxErrors, in ElementTree and lxml alike).
        raise NotXlsx() from error
    finally:
        workbook.close()


def _read_sheet(workbook: Any, spec: SheetSpec, max_errors: int, counter: RowCounter) -> ValidatedSheet:
    sheet = workbook[spec.name] if spec.name in workbook.sheetnames else workbook.worksheets[0]
    rows = sheet_rows(sheet, counter)
    header: tuple[Any, ...] | None = None
    header_row = 0
    for header_row, candidate in enumerate(rows, start=1):  # noqa: B007  (the loop finds the first non-empty row)
        if any(value not in (None, "") for value in candidate):
            header = candidate
            break
    if header is None:
        raise EmptySheet()
    by_header: dict[str, Column] = {}
    for column in spec.columns:
        by_header[_normalised(column.header)] = column
        by_header[_normalised(column.header_en)] = column
    positions: dict[str, int] = {}
    unknown: list[str] = []
    for position, title in enumerate(header):
        name = _normalised(title)
        if not name:
            continue
        matched = by_header.get(name)
        if matched is None:
            unknown.append(_as_text(title))
        elif matched.key not in positions:
            positions[matched.key] = position
    missing = [column for column in spec.columns if column.required and column.key not in positions]
    if missing:
        raise MissingColumns([c.header for c in missing], [c.header_en for c in missing])
    if unknown:
        raise UnknownColumns(unknown)

    present = [column for column in spec.columns if column.importable and column.key in positions]
    result = ValidatedSheet(spec, tuple(column.key for column in present), max_errors=max_errors)
    plan = [(positions[c.key], c.key, c.parse, c.required, c.header) for c in present]
    english = {positions[c.key]: _normalised(c.header_en) for c in spec.columns if c.key in positions}
    key_positions = [result.columns.index(key) for key in spec.natural_key if key in result.columns]
    seen: dict[tuple[Any, ...], int] = {}
    width = len(header)
    first = True
    for number, row in enumerate(rows, start=header_row + 1):
        if first:
            first = False
            cells = {i: _normalised(v) for i, v in enumerate(row) if v not in (None, "")}
            if cells and all(english.get(i) == v for i, v in cells.items()):
                continue  # the English header row
        if all(value is None or value == "" for value in row):
            continue  # a blank row (often left by formatting)
        if len(row) < width:
            row = (*row, *([None] * (width - len(row))))
        values: list[Any] = []
        bad = False
        for position, key, parse, required, _title in plan:
            value = row[position]
            if value is None or (isinstance(value, str) and not value.strip()):
                if required:
                    result.add_error(number, key, "必填", "Required")
                    bad = True
                values.append(None)
                continue
            try:
                values.append(parse(value))
            except CellError as error:
                result.add_error(number, key, error.message, error.message_en)
                bad = True
                values.append(None)
        if bad:
            continue
        if key_positions:
            natural = tuple(values[i] for i in key_positions)
            earlier = seen.setdefault(natural, number)
            if earlier != number:
                result.add_error(
                    number, spec.natural_key[0], f"与第 {earlier} 行重复", f"Duplicates row {earlier}"
                )
                continue
        result.records.append(tuple(values))
        result.row_numbers.append(number)
    counter.budget.check()
    return result
