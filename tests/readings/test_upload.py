"""Uploads of manual reads: parsing (.xlsx, .csv in UTF-8 with or without BOM, GBK),
import with dry run and strict mode, and the HTTP route with its template."""

from __future__ import annotations

import io
import zipfile
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import openpyxl
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from backend.archives.models import Meter, MeterStatus, MeterType
from backend.archives.service import MeterChanges, create_meter
from backend.db import session_factory
from backend.errors import DomainError, ErrorCode
from backend.exports.excel import CellError, UploadLimits
from backend.readings.entry import (
    UploadResult,
    import_readings,
    parse_read_at,
    read_upload,
)
from backend.readings.service import ReadingIn, ingest_readings
from backend.settings import Settings
from tests.factories import make_staff, unique
from tests.graphql import conftest as graphql_fixtures
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World
from tests.readings.factories import make_meter

world = graphql_fixtures.world
engine_for_module = graphql_fixtures.engine_for_module
client = graphql_fixtures.client

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=SHANGHAI)
HEADER = ("表计编码", "抄表时间", "累计读数")


def workbook(rows: list[tuple[Any, ...]], *, english_row: bool = False) -> bytes:
    book = openpyxl.Workbook()
    sheet: Any = book.active
    sheet.append(HEADER)
    if english_row:
        sheet.append(("Meter code", "Read at", "Total m3"))
    for row in rows:
        sheet.append(row)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def csv_file(rows: list[tuple[str, ...]], encoding: str) -> bytes:
    lines = [",".join(HEADER)] + [",".join(row) for row in rows]
    return "\r\n".join(lines).encode(encoding)


async def upload(session: AsyncSession, content: bytes, **options: Any) -> UploadResult:
    return await import_readings(session, upload=read_upload(content), by="wang", now=NOW, tz=SHANGHAI,
                                 scope_patterns=options.pop("scope_patterns", None), **options)


async def stored(session: AsyncSession, meter: Meter) -> list[tuple[datetime, Decimal, str, str]]:
    rows = await session.execute(text(
        "SELECT read_at, total_m3, quality, source FROM readings WHERE meter_id = :m ORDER BY read_at"
    ), {"m": meter.id})
    return [(row.read_at, row.total_m3, row.quality, row.source) for row in rows]


def problems(result: UploadResult) -> list[tuple[int, str]]:
    return [(problem.row, problem.code.value) for problem in result.rejected]


# --------------------------------------------------------------------------- parsing


def test_read_times_are_local_unless_they_carry_an_offset() -> None:
    assert parse_read_at("2026-11-20 08:30") == datetime(2026, 11, 20, 8, 30)
    assert parse_read_at("2026/1/2 8:05:09") == datetime(2026, 1, 2, 8, 5, 9)
    assert parse_read_at("2026-11-20T08:30:00+08:00") == datetime(2026, 11, 20, 8, 30, tzinfo=SHANGHAI)
    assert parse_read_at(datetime(2026, 11, 20, 8, 30)) == datetime(2026, 11, 20, 8, 30)
    for bad in ("2026-11-20", "yesterday", "2026-13-01 08:00", date(2026, 11, 20)):
        with pytest.raises(CellError):
            parse_read_at(bad)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-8", "gbk"])
def test_csv_reads_in_utf8_with_or_without_bom_and_in_gbk(encoding: str) -> None:
    parsed = read_upload(csv_file([("水表01", "2026-11-20 08:30", "12.5")], encoding))

    assert parsed.problems == []
    assert [(r.row, r.code, r.read_at, r.total_m3) for r in parsed.rows] == [
        (2, "水表01", datetime(2026, 11, 20, 8, 30), Decimal("12.5000"))]


def test_bad_cells_are_reported_with_their_row_numbers() -> None:
    parsed = read_upload(workbook([
        ("M1", "2026-11-20 08:30", 12.5),
        ("M2", "not a time", 3),
        (None, None, None),  # blank rows are skipped, and keep their number
        ("M3", "2026-11-20 08:30", "12.34567"),
        ("M4", None, 1),
        ("M5", datetime(2026, 11, 20, 9, 0), "-1"),
    ], english_row=True))

    assert [row.row for row in parsed.rows] == [3]
    assert [(p.row, p.code) for p in parsed.problems] == [
        (4, ErrorCode.INVALID_READ_AT), (6, ErrorCode.INVALID_TOTAL), (7, ErrorCode.REQUIRED), (8, ErrorCode.INVALID_TOTAL)]


def test_files_that_are_not_spreadsheets_or_lack_columns_are_refused() -> None:
    with pytest.raises(DomainError) as missing:
        read_upload("表计编码,累计读数\r\nM1,1\r\n".encode())
    with pytest.raises(DomainError) as garbage:
        read_upload(b"PK\x03\x04 not really a zip")

    assert missing.value.code == ErrorCode.MISSING_COLUMNS
    assert garbage.value.code == ErrorCode.NOT_XLSX


def _zip_bomb() -> bytes:
    """Well under the body limit packed, over the unpacked limit inflated."""
    buffer = io.BytesIO(workbook([("M1", "2026-11-20 08:30", 1)]))
    with zipfile.ZipFile(buffer, "a", compression=zipfile.ZIP_DEFLATED) as archive, \
            archive.open("xl/media/padding.bin", "w", force_zip64=True) as padding:
        chunk = bytes(1024 * 1024)
        for _ in range(UploadLimits().max_unpacked_bytes // len(chunk) + 1):
            padding.write(chunk)
    content = buffer.getvalue()
    assert len(content) < Settings.model_fields["import_max_body_bytes"].default
    return content


def test_a_workbook_that_unpacks_past_the_limit_is_refused_before_it_is_read() -> None:
    with pytest.raises(DomainError) as bomb:
        read_upload(_zip_bomb())

    assert (bomb.value.code, bomb.value.field) == (ErrorCode.FILE_TOO_LARGE, "file")


# --------------------------------------------------------------------------- import


async def test_good_rows_are_stored_as_manual_reads_and_bad_ones_reported(session: AsyncSession) -> None:
    meter = await make_meter(session, install_date=date(2026, 1, 1))
    content = workbook([
        (meter.code, "2026-11-20 08:30", 12.5),
        ("NO-SUCH-METER", "2026-11-20 08:30", 1),
        (meter.code, "2026-12-20 08:30", 13),  # in the future
        (meter.code, "2025-12-20 08:30", 1),  # before the install day
        (meter.code, datetime(2026, 11, 21, 8, 30), "13.25"),
    ])

    result = await upload(session, content)

    assert (result.inserted, result.replaced, result.duplicates, result.written) == (2, 0, 0, True)
    assert problems(result) == [(3, "UNKNOWN_METER"), (4, "READ_AT_IN_FUTURE"), (5, "READ_BEFORE_INSTALL")]
    assert await stored(session, meter) == [
        (datetime(2026, 11, 20, 8, 30, tzinfo=SHANGHAI), Decimal("12.5000"), "manual", "manual:wang"),
        (datetime(2026, 11, 21, 8, 30, tzinfo=SHANGHAI), Decimal("13.2500"), "manual", "manual:wang"),
    ]


async def test_re_uploading_is_duplicates_and_actual_reads_are_not_replaced(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest_readings(session, readings=[ReadingIn(meter.id, datetime(2026, 11, 20, 8, 30, tzinfo=SHANGHAI),
                                                       Decimal(12))], source="test", now=NOW, tz=SHANGHAI)
    content = csv_file([(meter.code, "2026-11-20 08:30", "99"), (meter.code, "2026-11-21 08:30", "13")], "gbk")

    first = await upload(session, content)
    again = await upload(session, content)

    assert (first.inserted, first.duplicates) == (1, 1)
    assert (again.inserted, again.duplicates) == (0, 2)
    assert [(total, quality) for _, total, quality, _ in await stored(session, meter)] == [
        (Decimal("12.0000"), "actual"), (Decimal("13.0000"), "manual")]


async def test_a_dry_run_reports_the_counts_and_writes_nothing(session: AsyncSession) -> None:
    meter = await make_meter(session)
    events = (await session.execute(text("SELECT count(*) FROM domain_events"))).scalar_one()

    result = await upload(session, workbook([(meter.code, "2026-11-20 08:30", 12.5), ("NOPE", "2026-11-20 08:30", 1)]),
                          dry_run=True)

    assert (result.inserted, result.written) == (1, False)
    assert problems(result) == [(3, "UNKNOWN_METER")]
    assert await stored(session, meter) == []
    assert (await session.execute(text("SELECT count(*) FROM domain_events"))).scalar_one() == events


async def test_strict_mode_writes_nothing_when_any_row_is_bad(session: AsyncSession) -> None:
    meter = await make_meter(session)
    good = (meter.code, "2026-11-20 08:30", 12.5)

    refused = await upload(session, workbook([good, (meter.code, "2026-12-20 08:30", 13)]), strict=True)
    assert (refused.written, problems(refused)) == (False, [(3, "READ_AT_IN_FUTURE")])
    assert await stored(session, meter) == []

    accepted = await upload(session, workbook([good]), strict=True)
    assert (accepted.inserted, accepted.written) == (1, True)


async def test_codes_outside_the_scope_are_unknown_meters(session: AsyncSession) -> None:
    meter = await make_meter(session)

    result = await upload(session, workbook([(meter.code, "2026-11-20 08:30", 1)]), scope_patterns=["/999999999/%"])

    assert problems(result) == [(2, "UNKNOWN_METER")]
    assert await stored(session, meter) == []


# --------------------------------------------------------------------------- HTTP


async def _meter(engine: AsyncEngine, world: World, *, east: bool) -> str:
    code = unique("U")
    async with session_factory(engine)() as session, session.begin():
        await create_meter(session, fields=MeterChanges(
            name=code, code=code, address=f"{abs(hash(code)) % 10**14:014d}", meter_type=MeterType.cold_water,
            area_id=(world.tree.east_community if east else world.tree.west_community).id, install_date=date(2025, 1, 1),
            initial_reading=Decimal(0), status=MeterStatus.installed,
        ))
    return code


async def _post(client: GraphQLClient, token: str, content: bytes, filename: str, **fields: str) -> Any:
    return await client.http.post("/imports/readings", headers={"Authorization": f"Bearer {token}"},
                                  files={"file": (filename, content)}, data=fields)


async def test_the_upload_route_imports_within_the_scope_and_audits(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine,
) -> None:
    east, west = await _meter(committed_engine, world, east=True), await _meter(committed_engine, world, east=False)
    async with session_factory(committed_engine)() as session, session.begin():
        reader = await make_staff(session, permissions={"readings:write"}, areas=[world.tree.east])
    token = await client.login(reader.username, reader.password)
    content = csv_file([(east, "2026-01-20 08:30", "12.5"), (west, "2026-01-20 08:30", "3")], "gbk")

    dry = await _post(client, token, content, "抄表.csv", dryRun="true")
    strict = await _post(client, token, content, "抄表.csv", strict="true")
    done = await _post(client, token, content, "抄表.csv")

    expected_rejection = [{"row": 3, "code": "UNKNOWN_METER", "message": f"表计编码不存在: {west}",
                           "messageEn": f"Unknown meter code: {west}"}]
    assert (dry.status_code, dry.json()) == (200, {"inserted": 1, "replaced": 0, "duplicates": 0,
                                                   "rejected": expected_rejection, "written": False})
    assert (strict.status_code, strict.json()["written"]) == (422, False)
    assert (done.status_code, done.json()) == (200, {"inserted": 1, "replaced": 0, "duplicates": 0,
                                                     "rejected": expected_rejection, "written": True})
    async with session_factory(committed_engine)() as session:
        audits = (await session.execute(text(
            "SELECT summary, payload, success FROM audit_log WHERE action = 'importReadings' ORDER BY id"
        ))).all()
        count = (await session.execute(text(
            "SELECT count(*) FROM readings r JOIN meters m ON m.id = r.meter_id WHERE m.code = :c"
        ), {"c": east})).scalar_one()
    assert count == 1
    assert [audit.payload["written"] for audit in audits[-3:]] == [False, False, True]
    assert audits[-1].summary.startswith("导入抄表读数: 新增 1")


async def test_the_upload_route_refuses_callers_without_readings_write_and_unreadable_files(
    client: GraphQLClient, world: World,
) -> None:
    nobody = await client.login(world.nobody.username, world.nobody.password)
    admin = await client.login(world.admin.username, world.admin.password)

    forbidden = await _post(client, nobody, csv_file([], "utf-8"), "a.csv")
    anonymous = await client.http.post("/imports/readings", files={"file": ("a.csv", b"x")})
    missing = await _post(client, admin, "表计编码\r\nM1\r\n".encode(), "a.csv")

    assert (forbidden.status_code, forbidden.json()["errors"][0]["extensions"]["code"]) == (403, "FORBIDDEN")
    assert anonymous.status_code == 401
    assert (missing.status_code, missing.json()["errors"][0]["extensions"]["code"]) == (400, "MISSING_COLUMNS")


async def test_the_template_has_both_header_rows_and_an_example(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.nobody.username, world.nobody.password)

    response = await client.http.get("/templates/readings.xlsx", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    sheet: Any = openpyxl.load_workbook(io.BytesIO(response.content)).worksheets[0]
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0] == HEADER
    assert rows[1] == ("Meter code", "Read at", "Total m3")
    assert rows[2] == ("M0001", "2026-11-25 09:30", 1234.5)
    # The template reads back as an upload: its example row is the only row.
    assert [row.code for row in read_upload(response.content).rows] == ["M0001"]


async def test_an_upload_declared_larger_than_the_body_limit_is_refused_before_it_is_read(
    client: GraphQLClient, world: World,
) -> None:
    admin = await client.login(world.admin.username, world.admin.password)
    body = csv_file([], "utf-8")
    request = client.http.build_request("POST", "/imports/readings", headers={"Authorization": f"Bearer {admin}"},
                                        files={"file": ("big.csv", body)})
    # The header alone decides: the (small) body is never parsed.
    limit = Settings.model_fields["import_max_body_bytes"].default
    request.headers["Content-Length"] = str(limit + 1)

    response = await client.http.send(request)

    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "BODY_TOO_LARGE"
    assert response.json()["errors"][0]["extensions"]["maxBytes"] == limit


async def test_an_upload_that_unpacks_too_large_is_a_bad_file_not_a_large_body(
    client: GraphQLClient, world: World,
) -> None:
    admin = await client.login(world.admin.username, world.admin.password)

    response = await _post(client, admin, _zip_bomb(), "bomb.xlsx")

    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "FILE_TOO_LARGE"


def test_blank_lines_of_a_csv_count_against_the_row_cap() -> None:
    content = csv_file([("M1", "2026-11-20 08:30", "1")], "utf-8") + b"\r\n,,\r\n" * 200

    with pytest.raises(DomainError) as refused:
        read_upload(content, limits=UploadLimits(max_rows=100))

    assert (refused.value.code, refused.value.field) == (ErrorCode.TOO_MANY_ROWS, "file")
    assert [row.code for row in read_upload(content, limits=UploadLimits(max_rows=500)).rows] == ["M1"]
