"""The meter assignment sheet (表计分配, 配表): its columns, its export and its import,
keyed on meter code, account number and start, with the handover readings it stores."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import errors as archive_errors
from backend.archives.excel.cells import _reading, moment
from backend.archives.excel.exporting import DeviceExportFilter, _like_pattern, _stream, _Where
from backend.archives.excel.importing import CROSS_AREA, ImportResult, _lock_for_the_subtree_rule, _row_errors, _rowcount, _temp_table
from backend.archives.handover import HandoverReading, store_handover_readings
from backend.exports.excel import Column, SheetSpec, ValidatedSheet, text

ASSIGNMENT_COLUMNS: tuple[Column, ...] = (
    Column("meter_code", "表计编码", "Meter code", text(32), required=True, width=14, example="W00000001", text_format=True),
    Column("meter_address", "表地址", "Address", text(32), width=18, importable=False, note="仅供阅读, 导入时忽略"),
    Column("account_no", "户号", "Account no.", text(32), required=True, width=14, example="0100000001", text_format=True),
    Column("household_name", "户名", "Name", text(100), width=12, importable=False, note="仅供阅读, 导入时忽略"),
    Column("valid_from", "起始时间", "Valid from", moment(), required=True, width=20, example="2026-01-15 08:00:00"),
    Column("valid_to", "结束时间", "Valid to", moment(), width=20, note="留空: 仍在使用"),
    Column("start_reading", "起始读数", "Start reading", _reading(), width=10, note="留空为水表初始读数"),
    Column("end_reading", "结束读数", "End reading", _reading(), width=10, note="有结束时间时必填"),
)
ASSIGNMENT_SHEET = SheetSpec(
    name="表计分配", columns=ASSIGNMENT_COLUMNS, natural_key=("meter_code", "account_no", "valid_from"),
    notes=("一块水表同一时间只服务一户: 时段与该表其他分配重叠的行会被拒绝。换表请在系统中办理。",),
)


async def assignment_export_rows(
    connection: Any, *, scope_patterns: Sequence[str], export_filter: DeviceExportFilter, tz: str, chunk_rows: int = 5000,
) -> AsyncIterator[tuple[Any, ...]]:
    """Rows of :data:`ASSIGNMENT_SHEET` for the assignments of households in scope
    (area subtree of the household, free text over account number, name, meter code and
    address, current or ended), by meter code and start; times local, whole seconds."""
    where = _Where(scope_patterns)
    if export_filter.area_path is not None:
        where.add("a.path LIKE {}", export_filter.area_path + "%")
    if export_filter.search:
        where.add("(h.account_no LIKE {0} OR h.name LIKE {0} OR m.code LIKE {0} OR m.address LIKE {0})".replace("{0}", "{}"),
                  _like_pattern(export_filter.search))
    if export_filter.current is not None:
        where.conditions.append("s.valid_to IS NULL" if export_filter.current else "s.valid_to IS NOT NULL")
    where.arguments.append(tz)
    zone = f"${len(where.arguments)}::text"
    statement = (
        f"SELECT m.code, m.address, h.account_no, h.name, date_trunc('second', s.valid_from AT TIME ZONE {zone}), "
        f"date_trunc('second', s.valid_to AT TIME ZONE {zone}), s.start_reading, s.end_reading "
        "FROM meter_assignments s JOIN meters m ON m.id = s.meter_id JOIN households h ON h.id = s.household_id "
        f"JOIN areas a ON a.id = h.area_id WHERE {where.sql()} ORDER BY m.code, s.valid_from"
    )
    async for row in _stream(connection, statement, where.arguments, scope_patterns=scope_patterns, area_position=None,
                             chunk_rows=chunk_rows):
        yield row


_ASSIGNMENT_TEMP = (
    ("row_no", "integer"), ("meter_code", "text"), ("account_no", "text"), ("local_from", "timestamp"),
    ("local_to", "timestamp"), ("start_reading", "numeric"), ("end_reading", "numeric"),
    ("valid_from", "timestamptz"), ("valid_to", "timestamptz"), ("meter_id", "bigint"), ("household_id", "bigint"),
    ("existing_id", "bigint"), ("written", "boolean"),
)
UNKNOWN_METER = ("表计编码不存在或不在您的管辖范围内", "Unknown meter code, or a meter outside your scope")
UNKNOWN_HOUSEHOLD = ("户号不存在或不在您的管辖范围内", "Unknown account number, or a household outside your scope")
EXISTS_DIFFERENT = ("该分配已存在且内容不同; 如需修改请选择更新已有记录",
                    "This assignment exists with different values; import with update existing to change it")
ONE_HOUSEHOLD_AT_A_TIME = ("该水表在此时段已服务其他住户 (一块水表同一时间只服务一户)",
                           "The meter serves another household in this period (one household at a time)")


async def _store_handover_readings(session: AsyncSession, sheet: ValidatedSheet, *, now: datetime | None,
                                   tz: str) -> None:
    """The start and end readings of the assignments the import wrote (new ones, and
    stored ones it changed), as manual readings in one batch. A start reading left blank
    is the meter's initial reading only for a meter never read.

    A row identical to its stored assignment stores nothing: its readings were taken when
    it was written. Storing them again was the cost of re-importing an export (2,006
    rows: 11.6 s, 9 of them rolling up again a year of every meter's days behind
    readings that were already there, or that the assignment never had)."""
    handovers = (await session.execute(sql(
        "SELECT t.row_no, t.meter_id, t.valid_from, t.start_reading, t.valid_to, t.end_reading, m.initial_reading, "
        "NOT EXISTS (SELECT 1 FROM latest_readings l WHERE l.meter_id = t.meter_id) AS unread "
        "FROM import_assignments t JOIN meters m ON m.id = t.meter_id WHERE t.written ORDER BY t.row_no"
    ))).all()
    readings: list[HandoverReading] = []
    origins: list[tuple[int, str]] = []
    for handover in handovers:
        start = handover.start_reading if handover.start_reading is not None else (
            handover.initial_reading if handover.unread else None)
        if start is not None:
            readings.append(HandoverReading(handover.meter_id, handover.valid_from, start))
            origins.append((handover.row_no, "valid_from"))
        if handover.valid_to is not None and handover.end_reading is not None:
            readings.append(HandoverReading(handover.meter_id, handover.valid_to, handover.end_reading))
            origins.append((handover.row_no, "valid_to"))
    if not readings:
        return
    latest = max(reading.read_at for reading in readings)
    rejected = await store_handover_readings(session, readings=readings, source="assignment-import", now=now or latest,
                                             tz=tz)
    for rejection in rejected:
        row_no, column = origins[rejection.index]
        sheet.add_error(row_no, column, rejection.message, rejection.message_en)
    sheet.raise_if_invalid()


async def import_assignments(
    session: AsyncSession, *, sheet: ValidatedSheet, scope_patterns: Sequence[str], update_existing: bool, tz: str,
    now: datetime | None = None,
) -> ImportResult:
    """Write a validated assignment sheet, all rows or none; idempotent on (meter code,
    account number, start). Meter and household must be in scope, the household in the
    meter's area or below it (CROSS_AREA_ASSIGNMENT's message); a monitoring point, a
    retired or faulty meter (for an open assignment) or a closed household is refused, and
    so is a period overlapping another assignment of the same meter, in the database or
    in the file: a meter serves one household at a time. Updating changes the end and the
    readings. Meters with an open assignment become installed, those left without one
    go back in stock.

    As with a move-in or move-out on the form, the readings at the handover are stored as
    readings (one ingest batch, received ``now``), so usage splits at them; a reading
    ingest refuses (before the install day, in the future) is a row error and nothing is
    written."""
    get = {key: sheet.index(key) for key in sheet.columns}

    def value(record: tuple[Any, ...], key: str) -> Any:
        return record[get[key]] if key in get else None

    records = []
    for row_no, record in zip(sheet.row_numbers, sheet.records, strict=True):
        before = sheet.error_count
        start, end = value(record, "valid_from"), value(record, "valid_to")
        if end is not None and end < start:
            sheet.add_error(row_no, "valid_to", "结束时间早于起始时间", "The end is before the start")
        if end is not None and value(record, "end_reading") is None:
            sheet.add_error(row_no, "end_reading" if "end_reading" in get else "valid_to", "有结束时间时须填写结束读数",
                            "An ended assignment needs its end reading")
        if sheet.error_count == before:
            records.append((row_no, value(record, "meter_code"), value(record, "account_no"), start, end,
                            value(record, "start_reading"), value(record, "end_reading")))
    await _temp_table(session, "import_assignments", _ASSIGNMENT_TEMP, records)
    params = {"patterns": list(scope_patterns), "tz": tz}
    await session.execute(sql(
        "UPDATE import_assignments SET valid_from = local_from AT TIME ZONE CAST(:tz AS text), "
        "valid_to = local_to AT TIME ZONE CAST(:tz AS text)"), {"tz": tz})
    await session.execute(sql(
        "UPDATE import_assignments t SET meter_id = m.id FROM meters m JOIN areas a ON a.id = m.area_id "
        "WHERE m.code = t.meter_code AND a.path LIKE ANY(CAST(:patterns AS text[]))"), params)
    await _row_errors(session, sheet, "SELECT row_no FROM import_assignments WHERE meter_id IS NULL ORDER BY row_no", {},
                      "meter_code", UNKNOWN_METER)
    await session.execute(sql(
        "UPDATE import_assignments t SET household_id = h.id FROM households h JOIN areas a ON a.id = h.area_id "
        "WHERE h.account_no = t.account_no AND a.path LIKE ANY(CAST(:patterns AS text[]))"), params)
    await _row_errors(session, sheet, "SELECT row_no FROM import_assignments WHERE household_id IS NULL ORDER BY row_no", {},
                      "account_no", UNKNOWN_HOUSEHOLD)
    await _lock_for_the_subtree_rule(session, meters="SELECT meter_id FROM import_assignments",
                                     households="SELECT household_id FROM import_assignments")
    await session.execute(sql(
        "UPDATE import_assignments t SET existing_id = s.id FROM meter_assignments s WHERE s.meter_id = t.meter_id "
        "AND s.household_id = t.household_id AND date_trunc('second', s.valid_from) = t.valid_from"))
    # Autovacuum never sees a temporary table: without statistics the planner takes the
    # file for a handful of rows and joins it by nested loops.
    await session.execute(sql("ANALYZE import_assignments"))
    unavailable = archive_errors.MeterUnavailable
    await _row_errors(session, sheet, (
        "SELECT t.row_no FROM import_assignments t JOIN meters m ON m.id = t.meter_id WHERE t.existing_id IS NULL "
        "AND (m.kind = 'monitoring' OR (t.valid_to IS NULL AND m.status IN ('retired', 'faulty'))) ORDER BY t.row_no"
    ), {}, "meter_code", (unavailable.message, unavailable.message_en))
    await _row_errors(session, sheet, (
        "SELECT t.row_no FROM import_assignments t JOIN meters m ON m.id = t.meter_id JOIN areas ma ON ma.id = m.area_id "
        "JOIN households h ON h.id = t.household_id JOIN areas ha ON ha.id = h.area_id "
        "WHERE t.existing_id IS NULL AND NOT starts_with(ha.path, ma.path) ORDER BY t.row_no"
    ), {}, "account_no", CROSS_AREA)
    closed = archive_errors.HouseholdClosed
    await _row_errors(session, sheet, (
        "SELECT t.row_no FROM import_assignments t JOIN households h ON h.id = t.household_id "
        "WHERE t.existing_id IS NULL AND t.valid_to IS NULL AND h.status = 'closed' ORDER BY t.row_no"
    ), {}, "account_no", (closed.message, closed.message_en))
    changed = ["valid_to", "end_reading", *(["start_reading"] if "start_reading" in get else [])]
    if not update_existing:
        # Stored rows stay as they are: a file row that would change one is refused, so
        # the file's rows and the database agree wherever the overlap check compares them.
        await _row_errors(session, sheet, (
            "SELECT t.row_no FROM import_assignments t JOIN meter_assignments s ON s.id = t.existing_id "
            "WHERE (date_trunc('second', s.valid_to), s.end_reading, s.start_reading) IS DISTINCT FROM "
            "(t.valid_to, t.end_reading, COALESCE(t.start_reading, s.start_reading)) ORDER BY t.row_no"
        ), {}, "valid_to", EXISTS_DIFFERENT)
    overlaps = "tstzrange({0}.valid_from, {0}.valid_to, '[)') && tstzrange({1}.valid_from, {1}.valid_to, '[)')"
    # A stored assignment a file row points at is judged by the file's values only when
    # that row will update it.
    replaced = "AND NOT EXISTS (SELECT 1 FROM import_assignments u WHERE u.existing_id = s.id)" if update_existing else ""
    # Two semi-joins in a UNION, not one WHERE … OR …: an OR of EXISTS runs each as a
    # subplan per row, the file against itself a nested loop (0.32 s for 2,006 rows).
    await _row_errors(session, sheet, (
        "SELECT t.row_no FROM import_assignments t WHERE t.meter_id IS NOT NULL AND EXISTS (SELECT 1 FROM meter_assignments s "
        f"WHERE s.meter_id = t.meter_id AND s.id IS DISTINCT FROM t.existing_id AND {overlaps.format('s', 't')} "
        f"{replaced}) "
        "UNION SELECT t.row_no FROM import_assignments t WHERE EXISTS (SELECT 1 FROM import_assignments u "
        f"WHERE u.meter_id = t.meter_id AND u.row_no < t.row_no AND {overlaps.format('u', 't')}) ORDER BY row_no"
    ), {}, "valid_from", ONE_HOUSEHOLD_AT_A_TIME)
    sheet.raise_if_invalid()

    updated = 0
    if update_existing:
        # The rows it changes are marked written (their readings are stored below).
        updated = _rowcount(await session.execute(sql(
            f"WITH changed AS (UPDATE meter_assignments s SET {', '.join(f'{c} = t.{c}' for c in changed)} "
            f"FROM import_assignments t WHERE s.id = t.existing_id AND ({', '.join(f's.{c}' for c in changed)}) "
            f"IS DISTINCT FROM ({', '.join(f't.{c}' for c in changed)}) RETURNING s.id) "
            "UPDATE import_assignments t SET written = true FROM changed c WHERE t.existing_id = c.id"
        )))
    await session.execute(sql("UPDATE import_assignments SET written = true WHERE existing_id IS NULL"))
    inserted = _rowcount(await session.execute(sql(
        "INSERT INTO meter_assignments (meter_id, household_id, valid_from, valid_to, start_reading, end_reading) "
        "SELECT t.meter_id, t.household_id, t.valid_from, t.valid_to, COALESCE(t.start_reading, m.initial_reading), "
        "t.end_reading FROM import_assignments t JOIN meters m ON m.id = t.meter_id WHERE t.existing_id IS NULL "
        "ORDER BY t.row_no"
    )))
    await _store_handover_readings(session, sheet, now=now, tz=tz)
    if inserted or updated:
        await session.execute(sql(
            "UPDATE meters m SET status = CASE WHEN EXISTS (SELECT 1 FROM meter_assignments s WHERE s.meter_id = m.id "
            "AND s.valid_to IS NULL) THEN 'installed' ELSE 'in_stock' END, updated_at = now() "
            "WHERE m.id IN (SELECT meter_id FROM import_assignments) AND m.status IN ('in_stock', 'installed') "
            "AND m.status <> CASE WHEN EXISTS (SELECT 1 FROM meter_assignments s WHERE s.meter_id = m.id "
            "AND s.valid_to IS NULL) THEN 'installed' ELSE 'in_stock' END"
        ))
    await session.execute(sql("DROP TABLE import_assignments"))
    return ImportResult(inserted=inserted, updated=updated, unchanged=len(records) - inserted - updated)
