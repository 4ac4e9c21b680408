"""Drawing an export's rows into an xlsx file, in this process or in a writer process.

Every download (archives, readings screens, the operation log) is a sheet of value rows
under two header rows. Turning rows into spreadsheet XML is openpyxl's pure-Python work:
about 40 µs of CPU a row, all of it holding the GIL. Done in a thread of the API process,
a large export takes the interpreter from the event loop for several milliseconds at a
time for as long as it runs, and every other request on that process waits behind it.

So the writing is split in two. The caller's writer thread pulls the rows (the cursor
stays on the loop) and turns each into plain values (its columns' renders, local
times); :func:`write_values` draws them. An export that fits in one chunk is drawn in
that thread (no process to start for a 20-row download); a longer one is drawn by a
writer process (:class:`WriterProcess`): the thread pipes it chunk by chunk, and the
pipe's backpressure paces the source to the drawing.

Processes come from a ``forkserver`` that has this module (and openpyxl) imported, and
the ``shuiwu`` command's modules when it runs under it (a child re-imports the parent's
main script): a fork of it starts in tens of milliseconds, and forking the threaded API
process itself would not be safe. What crosses the pipe is a :class:`SheetLayout` and lists of plain values
(str, numbers, Decimal, date, naive datetime, bool, None), so this module imports
nothing of the application.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

# Excel's sheet limit is 1,048,576 rows; two are the header rows. Longer exports continue
# on a second sheet rather than producing a file Excel refuses to open.
ROWS_PER_SHEET = 1_048_576 - 2

_BOLD = Font(bold=True)
_EN_HEADER = Font(italic=True, color="808080")
# Seconds a writer process gets to exit after its last chunk or after being given up.
_EXIT_WAIT_S = 5.0
# An export is batch work: its writer yields the CPU to the API process's requests (as
# argon2's threads do, backend.auth.security).
WRITER_NICENESS = 10

_CONTEXT = multiprocessing.get_context("forkserver")
# A child of the forkserver first re-imports the parent's main script (as __mp_main__);
# under the `shuiwu` command that script imports backend.cli, the whole application:
# ~0.75 s of CPU per export unless the forkserver has it loaded already.
_ENTRY_MODULES = ("backend.cli",)
_preloaded = False


def _preload() -> None:
    """Set what the forkserver imports once, before it starts (on the first writer)."""
    global _preloaded
    if not _preloaded:
        _CONTEXT.set_forkserver_preload([__name__, *(name for name in _ENTRY_MODULES if name in sys.modules)])
        _preloaded = True


@dataclass(frozen=True)
class SheetLayout:
    """Everything about a sheet but its rows: the title (later sheets get " (2)", " (3)"
    …), the Chinese and English header rows, column widths, the Excel number format of
    some columns (by index; applied to non-text values), and the rows per sheet."""

    title: str
    headers: tuple[str, ...]
    headers_en: tuple[str, ...]
    widths: tuple[float, ...]
    number_formats: tuple[tuple[int, str], ...] = ()
    english_bold: bool = False  # the operation log's sheet sets both header rows in bold
    rows_per_sheet: int = ROWS_PER_SHEET


Values = Sequence[Any]
NextChunk = Callable[[], Sequence[Values]]


# --------------------------------------------------------------------------- drawing


def _unsafe(value: Any) -> bool:
    return type(value) is str and (value.startswith("=") or ILLEGAL_CHARACTERS_RE.search(value) is not None)


def as_text(sheet: Any, row: Sequence[Any]) -> Sequence[Any]:
    """``row`` with every string that openpyxl would store as a formula ("=…") wrapped in
    a cell typed as text: user-entered names must never become live formulas (HYPERLINK
    and friends) in a colleague's download. Control characters a worksheet cannot hold
    (user input kept in the operation log) become U+FFFD instead of failing the export."""
    if not any(_unsafe(value) for value in row):
        return row
    safe: list[Any] = []
    for value in row:
        if _unsafe(value):
            cell = WriteOnlyCell(sheet, value=ILLEGAL_CHARACTERS_RE.sub("\ufffd", value))
            cell.data_type = "s"
            safe.append(cell)
        else:
            safe.append(value)
    return safe


def start_sheet(workbook: Workbook, layout: SheetLayout, number: int) -> Any:
    """A new write-only sheet with the layout's widths, frozen header and header rows."""
    sheet = workbook.create_sheet(layout.title if number == 1 else f"{layout.title} ({number})")
    for index, width in enumerate(layout.widths, start=1):
        sheet.column_dimensions[get_column_letter(index)].width = width
    sheet.freeze_panes = "A3"
    english_font = _BOLD if layout.english_bold else _EN_HEADER
    for font, titles in ((_BOLD, layout.headers), (english_font, layout.headers_en)):
        cells = []
        for title in titles:
            cell = WriteOnlyCell(sheet, value=title)
            cell.font = font
            cells.append(cell)
        sheet.append(cells)
    return sheet


def abandon_workbook(workbook: Workbook) -> None:
    """Close a write-only workbook that will not be saved and delete the files its sheets
    spilled rows to. (openpyxl deletes them only when it saves, or at interpreter exit:
    an export given up mid-way would otherwise leave them in the temp directory.)"""
    for sheet in workbook.worksheets:
        with contextlib.suppress(Exception):
            sheet.close()  # type: ignore[union-attr]
        writer = getattr(sheet, "_writer", None)
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.cleanup()


def fill_workbook(fill: Callable[[Workbook], int]) -> int:
    """``fill(workbook)`` on a new write-only workbook (it appends and saves), returning
    what it returns; a workbook given up half-way is abandoned (:func:`abandon_workbook`).
    Blocking: run it in one thread."""
    workbook = Workbook(write_only=True)
    try:
        return fill(workbook)
    except BaseException:
        abandon_workbook(workbook)
        raise


def write_values(path: str | Path, layout: SheetLayout, chunks: Iterator[Sequence[Values]]) -> int:
    """Draw every row of ``chunks`` under ``layout`` into an xlsx file at ``path``;
    returns the number of rows. Blocking: run it in one thread (or a writer process)."""
    return fill_workbook(lambda workbook: _draw(workbook, path, layout, chunks))


def _draw(workbook: Workbook, path: str | Path, layout: SheetLayout, chunks: Iterator[Sequence[Values]]) -> int:
    sheets = 1
    sheet = start_sheet(workbook, layout, sheets)
    room = layout.rows_per_sheet
    written = 0
    for chunk in chunks:
        for row in chunk:
            if not room:
                sheets += 1
                sheet, room = start_sheet(workbook, layout, sheets), layout.rows_per_sheet
            if layout.number_formats:
                row = list(row)
                for index, number_format in layout.number_formats:
                    value = row[index] if index < len(row) else None
                    if value is not None and not isinstance(value, str):
                        cell = WriteOnlyCell(sheet, value=value)
                        cell.number_format = number_format
                        row[index] = cell
            sheet.append(as_text(sheet, row))
            room -= 1
        written += len(chunk)
    workbook.save(str(path))
    return written


# --------------------------------------------------------------------------- writer process


class WriterFailed(Exception):
    """The writer process failed or died; the message says how."""


class WriterProcess:
    """A forked writer drawing one file: :meth:`send` pipes a chunk of value rows (it
    blocks while the process is a pipe's worth behind), :meth:`finish` waits for the saved
    file and returns the row count, :meth:`close` ends the process however it stands."""

    def __init__(self, path: str | Path, layout: SheetLayout) -> None:
        _preload()
        self._connection, child = _CONTEXT.Pipe()
        self._process = _CONTEXT.Process(target=_serve, args=(child, str(path), layout), name="shuiwu-xlsx-writer")
        self._process.start()
        child.close()

    def send(self, rows: Sequence[Values]) -> None:
        if rows:
            try:
                self._connection.send(list(rows))
            except (BrokenPipeError, ConnectionResetError, EOFError) as error:
                raise WriterFailed(self._reason()) from error

    def finish(self) -> int:
        try:
            self._connection.send(None)
            outcome, detail = self._connection.recv()
        except (BrokenPipeError, ConnectionResetError, EOFError) as error:
            raise WriterFailed(self._reason()) from error
        if outcome != "saved":
            raise WriterFailed(detail)
        return int(detail)

    def _reason(self) -> str:
        """Why the pipe broke: the writer's own report when it failed and said so (it
        then exits, and the next send finds the pipe closed), else how it exited."""
        with contextlib.suppress(OSError, EOFError):
            if self._connection.poll(0):
                outcome, detail = self._connection.recv()
                if outcome == "failed":
                    return str(detail)
        return self._exit_reason()

    def close(self) -> None:
        """Stop the process if it still runs (a given-up export) and reap it."""
        self._connection.close()
        self._process.join(_EXIT_WAIT_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def _exit_reason(self) -> str:
        self._process.join(_EXIT_WAIT_S)
        return f"xlsx writer process exited with code {self._process.exitcode}"

    def __enter__(self) -> WriterProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(connection: Connection, path: str, layout: SheetLayout) -> None:
    """The writer process: draw the chunks the pipe brings until ``None``, then answer
    ("saved", rows) or ("failed", why). A closed pipe (the export was given up) ends it
    with nothing saved; the parent removes the file."""
    with contextlib.suppress(OSError):
        os.nice(WRITER_NICENESS)

    def chunks() -> Iterator[Sequence[Values]]:
        while (chunk := connection.recv()) is not None:
            yield chunk

    try:
        written = write_values(path, layout, chunks())
    except EOFError:
        return
    except Exception as error:  # reported to the parent, which raises it there
        with contextlib.suppress(OSError):
            connection.send(("failed", f"{type(error).__name__}: {error}"))
        return
    with contextlib.suppress(OSError):
        connection.send(("saved", written))


# --------------------------------------------------------------------------- choosing


def write_sheets(path: str | Path, layout: SheetLayout, next_chunk: Callable[[], Sequence[Any]],
                 to_values: Callable[[Any], Values]) -> int:
    """Draw every row ``next_chunk`` hands out (until an empty chunk), each turned into
    values by ``to_values``, into an xlsx at ``path``; returns the number of rows.

    Blocking: run it in the export's writer thread. One chunk is drawn right here; once a
    second chunk arrives the export is long, and the rows go to a :class:`WriterProcess`.
    """
    first = [to_values(row) for row in next_chunk()]
    second = [to_values(row) for row in next_chunk()] if first else []
    if not second:
        return write_values(path, layout, iter((first,)))
    with WriterProcess(path, layout) as writer:
        writer.send(first)
        writer.send(second)
        while chunk := next_chunk():
            writer.send([to_values(row) for row in chunk])
        return writer.finish()
