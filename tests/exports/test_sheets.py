"""Drawing export rows: one chunk in the caller's thread, a longer export in a writer process."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from backend.exports import sheets
from backend.exports.sheets import SheetLayout, WriterFailed, WriterProcess, write_sheets

LAYOUT = SheetLayout("读数", ("表计编码", "读数时间", "累积流量(t)"), ("Meter code", "Read at", "Total (t)"), (16, 20, 14),
                     number_formats=((1, "yyyy-mm-dd hh:mm:ss"), (2, "0.0000")), rows_per_sheet=5)


def _chunks(rows: Sequence[Sequence[Any]], size: int) -> Callable[[], Sequence[Sequence[Any]]]:
    pending = [list(rows[start:start + size]) for start in range(0, len(rows), size)]
    return lambda: pending.pop(0) if pending else []


def _rows(count: int) -> list[tuple[Any, ...]]:
    return [(f"M{index:03d}", datetime(2026, 11, 1, 8, index % 60), Decimal(index) / 4) for index in range(count)]


def _read(path: Path) -> tuple[list[str], list[tuple[Any, ...]], str]:
    workbook = openpyxl.load_workbook(path)
    rows = [row for sheet in workbook.worksheets for row in sheet.iter_rows(min_row=3, values_only=True)]
    return workbook.sheetnames, rows, workbook.worksheets[0]["C3"].number_format


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[WriterProcess]:
    """The writer processes the test starts."""
    made: list[WriterProcess] = []

    class Recorded(WriterProcess):
        def __init__(self, path: str | Path, layout: SheetLayout) -> None:
            super().__init__(path, layout)
            made.append(self)

    monkeypatch.setattr(sheets, "WriterProcess", Recorded)
    return made


def test_an_export_of_one_chunk_is_drawn_in_the_callers_thread(tmp_path: Path, started: list[WriterProcess]) -> None:
    path = tmp_path / "one.xlsx"

    written = write_sheets(path, LAYOUT, _chunks(_rows(3), 10), lambda row: row)

    assert written == 3 and started == []
    names, rows, total_format = _read(path)
    assert names == ["读数"] and rows == [tuple(float(v) if isinstance(v, Decimal) else v for v in r) for r in _rows(3)]
    assert total_format == "0.0000"


def test_a_longer_export_is_drawn_by_a_writer_process_exactly_as_the_thread_would(
    tmp_path: Path, started: list[WriterProcess]
) -> None:
    by_process, by_thread = tmp_path / "process.xlsx", tmp_path / "thread.xlsx"
    rows = [*_rows(12), ('=HYPERLINK("http://evil")', None, None)]

    written = write_sheets(by_process, LAYOUT, _chunks(rows, 4), lambda row: row)
    sheets.write_values(by_thread, LAYOUT, iter([rows]))

    assert written == 13 and len(started) == 1
    assert _read(by_process) == _read(by_thread)
    names, drawn, _ = _read(by_process)
    assert names == ["读数", "读数 (2)", "读数 (3)"]  # five rows a sheet
    assert drawn[-1][0] == "=HYPERLINK(\"http://evil\")"  # stored as text, never a live formula
    assert openpyxl.load_workbook(by_process).worksheets[2]["A5"].data_type == "s"


def test_an_export_given_up_mid_way_stops_its_writer_and_saves_nothing(
    tmp_path: Path, started: list[WriterProcess]
) -> None:
    path = tmp_path / "abandoned.xlsx"
    source = _chunks(_rows(12), 4)
    calls = 0

    def next_chunk() -> Sequence[Sequence[Any]]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ConnectionResetError("client went away")
        return source()

    with pytest.raises(ConnectionResetError):
        write_sheets(path, LAYOUT, next_chunk, lambda row: row)

    assert len(started) == 1 and not path.exists()
    assert not any(child.name == "shuiwu-xlsx-writer" for child in multiprocessing.active_children())


def test_a_writer_process_that_dies_is_an_error_not_a_short_file(tmp_path: Path) -> None:
    writer = WriterProcess(tmp_path / "killed.xlsx", LAYOUT)
    try:
        writer.send(_rows(3))
        writer._process.kill()  # the OOM killer, say
        writer._process.join()
        with pytest.raises(WriterFailed, match="exited"):
            writer.finish()
    finally:
        writer.close()
    assert not (tmp_path / "killed.xlsx").exists()


def test_a_value_the_writer_cannot_draw_fails_the_export_with_its_reason(tmp_path: Path) -> None:
    with WriterProcess(tmp_path / "bad.xlsx", LAYOUT) as writer:
        writer.send([("M1", _Undrawable(), 1)])
        with pytest.raises(WriterFailed, match="ValueError"):
            writer.finish()


class _Undrawable:
    """A value openpyxl refuses (it is picklable, so it reaches the writer)."""


def test_the_writer_process_yields_the_cpu_to_the_api(tmp_path: Path) -> None:
    parent = os.getpriority(os.PRIO_PROCESS, 0)
    with WriterProcess(tmp_path / "nice.xlsx", LAYOUT) as writer:
        writer.send(_rows(2))  # the writer has started serving once it reads
        deadline = time.monotonic() + 5
        while os.getpriority(os.PRIO_PROCESS, writer._process.pid or 0) == parent and time.monotonic() < deadline:
            time.sleep(0.01)
        niceness = os.getpriority(os.PRIO_PROCESS, writer._process.pid or 0)
        writer.finish()

    assert niceness == min(parent + sheets.WRITER_NICENESS, 19)


def test_a_writer_that_fails_mid_export_reports_its_own_reason(tmp_path: Path) -> None:
    with WriterProcess(tmp_path / "mid.xlsx", LAYOUT) as writer:
        writer.send(_rows(3))
        writer.send([("M9", _Undrawable(), 1)])  # the writer fails on it, says why and exits
        writer._process.join(5)
        with pytest.raises(WriterFailed, match="ValueError"):
            writer.send(_rows(3))
