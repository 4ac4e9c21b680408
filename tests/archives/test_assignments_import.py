"""The assignments import is set-based like the other sheets: its statements do not grow
with the file's rows, and a row identical to its stored assignment writes nothing (its
handover readings were stored when it was written), so re-importing an export is cheap.

Re-importing the 2,006-row export of the demo took 11.6 s, 9 of them in the readings
rollup: every unchanged row's handover readings went through ingest again, and a reading
behind a meter's newest one rolls its days up again to today.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import openpyxl
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import excel as archive_excel
from backend.archives import service
from backend.archives.models import Household, Meter, MeterType
from backend.exports.excel import read_rows
from backend.readings.service import ReadingIn, ingest_readings
from tests.factories import make_area_tree, unique

TZ = "Asia/Shanghai"
HEADER = ("表计编码", "户号", "起始时间", "结束时间", "起始读数", "结束读数")
NOW = datetime(2026, 3, 1, tzinfo=ZoneInfo(TZ))


def _sheet(rows: list[tuple[Any, ...]]) -> Any:
    book = openpyxl.Workbook()
    sheet: Any = book.active
    sheet.append(list(HEADER))
    for row in rows:
        sheet.append(list(row))
    buffer = io.BytesIO()
    book.save(buffer)
    return read_rows(archive_excel.ASSIGNMENT_SHEET, buffer.getvalue())


@asynccontextmanager
async def _counted(session: AsyncSession, raw: list[str] | None = None) -> Any:
    """Every statement the session sends, through SQLAlchemy or on its raw asyncpg
    connection (ingest's path; those go to ``raw`` too)."""
    statements: list[str] = []
    connection = await session.connection()
    driver = (await connection.get_raw_connection()).driver_connection
    assert driver is not None

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    def logged(query: Any) -> None:
        statements.append(query.query)
        if raw is not None:
            raw.append(query.query)

    event.listen(connection.sync_connection, "before_cursor_execute", record)
    driver.add_query_logger(logged)
    try:
        yield statements
    finally:
        event.remove(connection.sync_connection, "before_cursor_execute", record)
        driver.remove_query_logger(logged)


async def _households_and_meters(session: AsyncSession, count: int) -> Iterator[tuple[Household, Meter]]:
    tree = await make_area_tree(session)
    area_id = tree.east_community.id
    pairs = []
    for _ in range(count):
        household = await service.create_household(session, account_no=unique("AS"), name="住户", area_id=area_id)
        meter = await service.create_meter(session, fields=service.MeterChanges(
            name="户表", code=unique("AS-M"), address=f"{abs(hash(unique('a'))) % 10**14:014d}",
            meter_type=MeterType.cold_water, area_id=area_id))
        pairs.append((household, meter))
    return iter(pairs)


def _rows(pairs: list[tuple[Household, Meter]]) -> list[tuple[Any, ...]]:
    return [(meter.code, household.account_no, "2026-01-05 08:00:00", None, 1.5, None) for household, meter in pairs]


async def _ingested_events(session: AsyncSession) -> int:
    return int((await session.execute(text(
        "SELECT count(*) FROM domain_events WHERE kind = 'readings.ingested'"))).scalar_one())


async def test_the_assignments_import_sends_as_many_statements_for_twelve_rows_as_for_two(session: AsyncSession) -> None:
    pairs = list(await _households_and_meters(session, 16))
    scope = ["/%"]
    counts = []
    # The first import also creates the month's partition of readings.
    for chunk in (pairs[:2], pairs[2:4], pairs[4:]):
        sheet = _sheet(_rows(chunk))
        async with _counted(session) as statements:
            result = await archive_excel.import_assignments(session, sheet=sheet, scope_patterns=scope,
                                                            update_existing=False, tz=TZ, now=NOW)
        assert result.inserted == len(chunk)
        counts.append(len(statements))
    assert counts[1] == counts[2]


async def test_reimporting_unchanged_assignments_stores_no_readings(session: AsyncSession) -> None:
    pairs = list(await _households_and_meters(session, 3))
    sheet_rows = _rows(pairs)
    await archive_excel.import_assignments(session, sheet=_sheet(sheet_rows), scope_patterns=["/%"],
                                           update_existing=False, tz=TZ, now=NOW)
    # The meters are read after the handover: a reading stored behind them again would
    # roll their days up again.
    await ingest_readings(session, readings=[
        ReadingIn(meter.id, datetime(2026, 2, 1, tzinfo=ZoneInfo(TZ)), Decimal(9)) for _, meter in pairs  # type: ignore[arg-type]
    ], source="test", now=NOW)
    events = await _ingested_events(session)

    for update_existing in (False, True):
        ingest: list[str] = []
        async with _counted(session, ingest):
            result = await archive_excel.import_assignments(session, sheet=_sheet(sheet_rows), scope_patterns=["/%"],
                                                            update_existing=update_existing, tz=TZ, now=NOW)
        assert (result.inserted, result.updated, result.unchanged) == (0, 0, 3)
        assert ingest == []  # ingest was not called: it works on the raw connection
    assert await _ingested_events(session) == events


async def test_an_updated_assignment_stores_its_new_end_reading(session: AsyncSession) -> None:
    (household, meter), = list(await _households_and_meters(session, 1))
    opened = [(meter.code, household.account_no, "2026-01-05 08:00:00", None, 1.5, None)]
    await archive_excel.import_assignments(session, sheet=_sheet(opened), scope_patterns=["/%"], update_existing=False,
                                           tz=TZ, now=NOW)
    ended = [(meter.code, household.account_no, "2026-01-05 08:00:00", "2026-02-01 08:00:00", 1.5, 7.25)]
    result = await archive_excel.import_assignments(session, sheet=_sheet(ended), scope_patterns=["/%"],
                                                    update_existing=True, tz=TZ, now=NOW)
    assert result.updated == 1
    stored = (await session.execute(text(
        "SELECT read_at, total_m3, quality FROM readings WHERE meter_id = :id ORDER BY read_at"), {"id": meter.id})).all()
    assert [(row.total_m3, row.quality) for row in stored] == [(Decimal("1.5000"), "manual"), (Decimal("7.2500"), "manual")]
    assert stored[1].read_at == datetime(2026, 2, 1, 8, tzinfo=ZoneInfo(TZ))
