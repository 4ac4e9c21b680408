"""The shared Excel machinery: streamed writing, the template, and whole-file validation."""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
import threading
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openpyxl
import openpyxl.styles
import pytest

from backend.errors import DomainError, ErrorCode
from backend.exports import excel
from backend.exports.excel import Column, SheetSpec, choice, integer, text
from backend.settings import Settings

SPEC = SheetSpec(
    name="测试",
    columns=(
        Column("code", "编码", "Code", text(8, pattern=r"\d+"), required=True, example="0001", text_format=True),
        Column("name", "名称", "Name", text(10), required=True, example="张伟"),
        Column("kind", "类型", "Kind", choice({"a": "甲", "b": "乙"}), example="甲", render=lambda v: {"a": "甲", "b": "乙"}[v]),
        Column("size", "人数", "Size", integer(minimum=1, maximum=99), example=3),
        Column("note", "说明", "Note", text(20), importable=False),
    ),
    natural_key=("code",),
)


def _workbook(*rows: tuple[Any, ...]) -> bytes:
    workbook = openpyxl.Workbook()
    sheet: Any = workbook.active
    for row in rows:
        sheet.append(list(row))
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


HEADER = ("编码", "名称", "类型", "人数")
HEADER_EN = ("Code", "Name", "Kind", "Size")


async def test_write_rows_streams_an_async_source_under_two_header_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(excel, "CHUNK_ROWS", 3)

    async def source() -> AsyncIterator[tuple[Any, ...]]:
        for index in range(7):
            yield (f"{index:04d}", f"名{index}", "b", index + 1, "")

    path = await excel.write_rows(SPEC, source())
    try:
        rows = list(openpyxl.load_workbook(path).active.iter_rows(values_only=True))  # type: ignore[union-attr]
    finally:
        path.unlink()

    assert rows[0] == ("编码", "名称", "类型", "人数", "说明")
    assert rows[1] == ("Code", "Name", "Kind", "Size", "Note")
    assert len(rows) == 2 + 7
    assert rows[2] == ("0000", "名0", "乙", 1, None)  # rendered label; leading zeros kept as text


async def test_write_rows_continues_on_a_second_sheet_past_the_row_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(excel, "ROWS_PER_SHEET", 4)

    path = await excel.write_rows(SPEC, ((f"{i}", "x", "a", 1, "") for i in range(6)))
    try:
        workbook = openpyxl.load_workbook(path)
        assert workbook.sheetnames == ["测试", "测试 (2)"]
        assert [sheet.max_row for sheet in workbook.worksheets] == [2 + 4, 2 + 2]
    finally:
        path.unlink()


def test_template_holds_headers_an_example_and_notes_and_reads_back_clean() -> None:
    content = excel.template(SPEC)

    workbook = openpyxl.load_workbook(io.BytesIO(content))
    assert workbook.sheetnames == ["测试", excel.NOTES_SHEET]
    rows = list(workbook["测试"].iter_rows(values_only=True))
    assert rows == [HEADER, HEADER_EN, ("0001", "张伟", "甲", 3)]  # read-only columns are not in the template
    assert any(row[0] == "编码" and row[2] == "是" for row in workbook[excel.NOTES_SHEET].iter_rows(values_only=True))
    sheet = excel.read_rows(SPEC, content)
    assert sheet.ok and sheet.records == [("0001", "张伟", "a", 3)] and sheet.row_numbers == [3]


def test_read_rows_accepts_english_headers_any_order_and_skips_blank_rows() -> None:
    content = _workbook(("Size", "name", "Code*"), (2, "李娜", 12), (None, None, None), ("", "王芳", "13"))

    sheet = excel.read_rows(SPEC, content)

    assert sheet.columns == ("code", "name", "size")
    assert sheet.records == [("12", "李娜", 2), ("13", "王芳", None)]
    assert sheet.row_numbers == [2, 4]


def test_read_rows_lists_every_bad_cell_with_row_column_and_both_languages() -> None:
    content = _workbook(
        HEADER, HEADER_EN,
        ("0001", "张伟", "甲", 3),
        ("00x2", "", "丙", 0),
        ("0001", "重复", "乙", 2),
        ("0003", "名字太长了超过十个字符啊", "b", "三"),
    )

    sheet = excel.read_rows(SPEC, content)

    assert not sheet.ok and sheet.error_count == 7
    assert [(e.row, e.column) for e in sheet.errors] == [
        (4, "编码"), (4, "名称"), (4, "类型"), (4, "人数"), (5, "编码"), (6, "名称"), (6, "人数"),
    ]
    assert sheet.errors[1].message == "必填" and sheet.errors[1].message_en == "Required"
    assert sheet.errors[4].message == "与第 3 行重复"
    assert sheet.records == [("0001", "张伟", "a", 3)]
    with pytest.raises(excel.ImportRowsInvalid) as refused:
        sheet.raise_if_invalid()
    assert refused.value.code == "IMPORT_ROWS_INVALID" and refused.value.error_count == 7


@pytest.mark.parametrize("content", [b"", b"account_no,name\n1,x\n", b"\xd0\xcf\x11\xe0legacy xls", b"PK\x03\x04broken zip"])
def test_read_rows_refuses_what_is_not_xlsx(content: bytes) -> None:
    with pytest.raises(excel.NotXlsx) as refused:
        excel.read_rows(SPEC, content)
    assert refused.value.code == "NOT_XLSX"


def test_read_rows_names_missing_and_unknown_columns() -> None:
    with pytest.raises(excel.MissingColumns) as missing:
        excel.read_rows(SPEC, _workbook(("编码", "人数"), ("1", 2)))
    with pytest.raises(excel.UnknownColumns) as unknown:
        excel.read_rows(SPEC, _workbook(("编码", "名称", "颜色"), ("1", "x", "红")))
    with pytest.raises(excel.EmptySheet):
        excel.read_rows(SPEC, _workbook())

    assert missing.value.code == "MISSING_COLUMNS" and missing.value.columns == ["名称"]
    assert "Name" in missing.value.message_en
    assert unknown.value.code == "UNKNOWN_COLUMNS" and unknown.value.columns == ["颜色"]


def test_fifty_thousand_bad_rows_give_a_capped_list_quickly(tmp_path: Path) -> None:
    workbook = openpyxl.Workbook(write_only=True)
    sheet = workbook.create_sheet("测试")
    sheet.append(list(HEADER))
    for index in range(50_000):
        sheet.append([f"x{index}", "名", "甲", 1])
    path = tmp_path / "bad.xlsx"
    workbook.save(path)

    started = time.perf_counter()
    result = excel.read_rows(SPEC, path)
    elapsed = time.perf_counter() - started

    assert result.error_count == 50_000
    assert len(result.errors) == excel.MAX_LISTED_ERRORS
    assert result.errors[0].row == 2 and result.errors[-1].row == 1 + excel.MAX_LISTED_ERRORS
    assert elapsed < 10, elapsed


# --------------------------------------------------------------------------- upload limits


def _with_sheet_xml(sheet_xml: bytes) -> bytes:
    """A real workbook whose first sheet is replaced by ``sheet_xml``."""
    source = zipfile.ZipFile(io.BytesIO(_workbook(HEADER)))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for member in source.infolist():
            content = sheet_xml if member.filename == "xl/worksheets/sheet1.xml" else source.read(member)
            target.writestr(member.filename, content)
    return buffer.getvalue()


def _sheet_xml(rows: bytes) -> bytes:
    return (b'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats.org/'
            b'spreadsheetml/2006/main"><sheetData>' + rows + b"</sheetData></worksheet>")


def test_a_workbook_that_inflates_far_past_its_size_is_refused_before_any_xml_is_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 20 MB of sheet XML in well under 100 KB: a few hundred to one.
    row = b'<row><c t="inlineStr"><is><t>0001</t></is></c><c t="inlineStr"><is><t>x</t></is></c></row>'
    bomb = _with_sheet_xml(_sheet_xml(row * (20 * 1024 * 1024 // len(row))))
    assert len(bomb) < 200 * 1024
    parsed: list[object] = []
    monkeypatch.setattr(excel, "load_workbook", lambda *args, **kwargs: parsed.append(args))

    with pytest.raises(DomainError) as refused:
        excel.read_rows(SPEC, bomb)

    assert (refused.value.code, refused.value.field) == (ErrorCode.FILE_TOO_LARGE, "file")
    assert parsed == []


def test_a_workbook_that_unpacks_past_the_total_is_refused_whatever_its_ratio() -> None:
    content = _workbook(HEADER, *((f"{index:04d}", f"名{index}") for index in range(3000)))

    with pytest.raises(DomainError) as refused:
        excel.read_rows(SPEC, content, limits=excel.UploadLimits(max_unpacked_bytes=64 * 1024))

    assert refused.value.code == ErrorCode.FILE_TOO_LARGE


def test_blank_rows_count_against_the_row_cap() -> None:
    workbook = openpyxl.Workbook()
    sheet: Any = workbook.active
    sheet.append(list(HEADER))
    sheet.append(["0001", "张伟"])
    for number in range(3, 200):
        sheet.cell(row=number, column=1).font = openpyxl.styles.Font(bold=True)  # formatted, empty
    sheet.cell(row=400, column=2, value="")  # and a gap of missing rows before it
    buffer = io.BytesIO()
    workbook.save(buffer)

    with pytest.raises(DomainError) as refused:
        excel.read_rows(SPEC, buffer.getvalue(), limits=excel.UploadLimits(max_rows=100))
    within = excel.read_rows(SPEC, buffer.getvalue(), limits=excel.UploadLimits(max_rows=400))

    assert (refused.value.code, refused.value.field) == (ErrorCode.TOO_MANY_ROWS, "file")
    assert within.records == [("0001", "张伟", None, None)]


def test_a_cell_far_to_the_right_does_not_widen_every_row() -> None:
    rows = b"".join(b'<row r="%d"><c r="XFD%d" t="inlineStr"><is><t>x</t></is></c></row>' % (n, n) for n in range(2, 2000))
    header = b'<row r="1">' + b"".join(
        b'<c r="%s1" t="inlineStr"><is><t>%s</t></is></c>' % (column, title.encode())
        for column, title in zip((b"A", b"B"), HEADER[:2], strict=True)) + b"</row>"

    sheet = excel.read_rows(SPEC, _with_sheet_xml(_sheet_xml(header + rows)))

    assert sheet.records == [] and sheet.error_count == 0


def test_an_import_over_its_time_budget_is_refused() -> None:
    ticks = iter(range(1_000_000))  # one second per look at the clock
    content = _workbook(HEADER, *((f"{index:04d}", f"名{index}") for index in range(1000)))

    with pytest.raises(DomainError) as refused:
        excel.read_rows(SPEC, content, limits=excel.UploadLimits(time_budget_s=3, clock=lambda: float(next(ticks))))

    assert refused.value.code == ErrorCode.IMPORT_TIME_EXCEEDED


# --------------------------------------------------------------------------- spooled files never stay behind


async def test_an_export_that_fails_mid_render_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(excel, "CHUNK_ROWS", 2)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where openpyxl spills rows too

    async def failing() -> AsyncIterator[tuple[Any, ...]]:
        for index in range(5):
            yield (f"{index:04d}", "名", "a", 1, "")
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError):
        await excel.write_rows(SPEC, failing(), directory=str(tmp_path))

    assert os.listdir(tmp_path) == []


async def test_an_export_abandoned_mid_render_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(excel, "CHUNK_ROWS", 2)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    streaming = asyncio.Event()

    async def endless() -> AsyncIterator[tuple[Any, ...]]:
        index = 0
        while True:
            index += 1
            if index == 6:
                streaming.set()
            await asyncio.sleep(0)
            yield (f"{index:04d}", "名", "a", 1, "")

    export = asyncio.create_task(excel.write_rows(SPEC, endless(), directory=str(tmp_path)))
    await streaming.wait()
    export.cancel()  # the client went away: the request is cancelled mid-render
    with pytest.raises(asyncio.CancelledError):
        await export

    assert os.listdir(tmp_path) == []


async def test_a_second_cancellation_while_the_writer_stops_is_not_swallowed(tmp_path: Path) -> None:
    """Server shutdown cancels a request that is already waiting for its cancelled export's
    writer thread: that cancellation ends the wait at once instead of being swallowed."""
    writing, release = threading.Event(), threading.Event()
    path = tmp_path / "export.xlsx"

    def write(next_chunk: Any) -> int:
        next_chunk()
        writing.set()
        release.wait(5)  # busy with a long chunk
        next_chunk()  # abandoned: stops here
        return 0

    async def fetch() -> list[Any]:
        return [("row",)]

    export = asyncio.create_task(excel.write_file(path, write, fetch))
    try:
        await asyncio.to_thread(writing.wait, 5)
        export.cancel()  # the client went away
        for _ in range(3):
            await asyncio.sleep(0)  # the export now waits for its writer thread
        export.cancel()  # the server shuts down
        await asyncio.wait({export}, timeout=1)
        assert export.done()
        assert export.cancelled()
        assert not path.exists()
    finally:
        release.set()


def test_the_default_upload_limits_are_the_settings_defaults() -> None:
    assert excel.UploadLimits.from_settings(Settings()) == excel.UploadLimits()


async def test_the_database_part_of_an_import_is_cancelled_when_the_budget_runs_out() -> None:
    reached_the_end = False

    async def validate_and_write() -> None:
        nonlocal reached_the_end
        async with excel.within_budget(excel.ImportBudget(0.02)):
            await asyncio.sleep(5)  # a validation query that would run far past the budget
            reached_the_end = True

    with pytest.raises(DomainError) as refused:
        await validate_and_write()

    assert refused.value.code == ErrorCode.IMPORT_TIME_EXCEEDED
    assert not reached_the_end
