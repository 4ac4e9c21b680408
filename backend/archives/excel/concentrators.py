"""The concentrator sheet (集中器): its columns, its export (never the terminal password)
and its import, keyed on region code and terminal address."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import service as _service  # the validators the forms use
from backend.archives.excel.cells import _area_ref, _label, _one_of
from backend.archives.excel.exporting import _AREA_CODE_SQL, DeviceExportFilter, _like_pattern, _stream, _Where
from backend.archives.excel.importing import (
    ImportResult,
    _count_differing,
    _resolve_areas,
    _row_errors,
    _temp_table,
    _upsert_clause,
)
from backend.exports.excel import Column, SheetSpec, ValidatedSheet, choice, integer, text

CONNECTION_KINDS = {"tcp_login": "TCP登录", "serial": "串口", "dtu_socket": "DTU透传"}
DEVICE_STATUSES = {"active": "在线", "offline": "离线", "retired": "停用"}

CONCENTRATOR_COLUMNS: tuple[Column, ...] = (
    Column("region_code", "行政区划码", "Region code", text(4, pattern=r"[0-9]{4}", pattern_zh="行政区划码须为 4 位数字",
                                                      pattern_en="A region code is 4 digits"),
           required=True, width=10, example="3301", text_format=True),
    Column("terminal_address", "终端地址", "Terminal address", integer(minimum=1, maximum=65535), required=True, width=10,
           example=1, note="Q/GDW 1376.1 终端地址 1-65535"),
    Column("name", "名称", "Name", text(100), required=True, width=18, example="翠湖小区集中器01"),
    Column("area_code", "区域编码", "Area code", _area_ref, required=True, width=14, example="D01C01", text_format=True,
           note="区域管理中的区域编码; 没有编码的区域写 #区域ID"),
    Column("area_name", "所属区域", "Area", text(400), width=28, importable=False, note="仅供阅读, 导入时忽略"),
    Column("model", "型号", "Model", text(100), width=12, example="DJGZ23"),
    Column("protocol", "规约", "Protocol", text(32), width=10, example="gdw1376", note="留空为 gdw1376"),
    Column("connection", "连接方式", "Connection", choice(CONNECTION_KINDS), required=True, width=10, example="TCP登录",
           render=_label(CONNECTION_KINDS), note="TCP登录 (4G 主动登录) / 串口 / DTU透传 (socket://主机:端口)"),
    Column("serial_url", "串口地址", "Serial URL", text(200), width=24, example="",
           note="/dev/ttyUSB0、rfc2217://主机:端口 或 socket://主机:端口; 串口连接必填"),
    Column("baudrate", "波特率", "Baud rate", integer(minimum=300, maximum=115200), width=8),
    Column("parity", "校验位", "Parity", _one_of(_service.PARITIES), width=6),
    Column("bytesize", "数据位", "Byte size", integer(minimum=5, maximum=8), width=6),
    Column("stopbits", "停止位", "Stop bits", _one_of(_service.STOPBITS), width=6),
    Column("host", "主机", "Host", text(200), width=16, note="DTU透传必填"),
    Column("port", "端口", "Port", integer(minimum=1, maximum=65535), width=8, note="DTU透传必填"),
    Column("status", "状态", "Status", choice(DEVICE_STATUSES), width=8, example="在线", render=_label(DEVICE_STATUSES),
           note="在线 / 离线 / 停用; 留空为在线"),
    Column("terminal_password", "终端密码", "Terminal password", text(64), width=12,
           note="只写: 加密保存, 导出时不输出; 留空则保持原密码"),
)
CONCENTRATOR_SHEET = SheetSpec(
    name="集中器", columns=CONCENTRATOR_COLUMNS, natural_key=("region_code", "terminal_address"),
    notes=("按 行政区划码 + 终端地址 识别已有集中器。终端密码只写不读。",),
)
CONCENTRATOR_EXPORT_SHEET = SheetSpec(
    name=CONCENTRATOR_SHEET.name, natural_key=CONCENTRATOR_SHEET.natural_key,
    columns=tuple(column for column in CONCENTRATOR_COLUMNS if column.key != "terminal_password"),
)


async def concentrator_export_rows(
    connection: Any, *, scope_patterns: Sequence[str], export_filter: DeviceExportFilter, chunk_rows: int = 5000,
) -> AsyncIterator[tuple[Any, ...]]:
    """Rows of :data:`CONCENTRATOR_EXPORT_SHEET` (never the terminal password) for the
    concentrators in scope matching the list's filter, by region code and terminal address."""
    where = _Where(scope_patterns)
    if export_filter.area_path is not None:
        where.add("a.path LIKE {}", export_filter.area_path + "%")
    if export_filter.status is not None:
        where.add("c.status = {}", export_filter.status)
    if export_filter.connection is not None:
        where.add("c.connection = {}", export_filter.connection)
    if export_filter.search:
        where.add("(c.name LIKE {0} OR c.region_code LIKE {0} OR CAST(c.terminal_address AS text) LIKE {0})"
                  .replace("{0}", "{}"), _like_pattern(export_filter.search))
    statement = (
        f"SELECT c.region_code, c.terminal_address, c.name, {_AREA_CODE_SQL}, a.path, c.model, c.protocol, c.connection, "
        "c.serial_url, c.baudrate, c.parity, c.bytesize, c.stopbits, c.host, c.port, c.status "
        f"FROM concentrators c JOIN areas a ON a.id = c.area_id WHERE {where.sql()} "
        "ORDER BY c.region_code, c.terminal_address"
    )
    async for row in _stream(connection, statement, where.arguments, scope_patterns=scope_patterns,
                             area_position=CONCENTRATOR_EXPORT_SHEET.keys.index("area_name"), chunk_rows=chunk_rows):
        yield row


_CONCENTRATOR_TEMP = (
    ("row_no", "integer"), ("region_code", "text"), ("terminal_address", "integer"), ("name", "text"), ("area_code", "text"),
    ("model", "text"), ("protocol", "text"), ("connection", "text"), ("serial_url", "text"), ("baudrate", "integer"),
    ("parity", "text"), ("bytesize", "integer"), ("stopbits", "text"), ("host", "text"), ("port", "integer"),
    ("status", "text"), ("terminal_password_encrypted", "text"), ("area_id", "bigint"),
)
_BAUD_RATES = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
CONCENTRATOR_OUT_OF_SCOPE = ("该集中器已存在于您的管辖范围之外", "This concentrator exists outside your scope")


async def import_concentrators(
    session: AsyncSession, *, sheet: ValidatedSheet, scope_patterns: Sequence[str], update_existing: bool,
    cipher: _service.TerminalPasswordCipher,
) -> ImportResult:
    """Write a validated concentrator sheet, all rows or none; idempotent on (region code,
    terminal address). A terminal password is write-only: encrypted with ``cipher``, kept
    as stored when the cell is blank or names the same password (so a re-import of the
    same file changes nothing)."""
    get = {key: sheet.index(key) for key in sheet.columns}

    def value(record: tuple[Any, ...], key: str) -> Any:
        return record[get[key]] if key in get else None

    stored: dict[tuple[str, int], str | None] = {}
    if "terminal_password" in get:
        keys = [(value(r, "region_code"), value(r, "terminal_address")) for r in sheet.records if value(r, "terminal_password")]
        if keys:
            found = await session.execute(sql(
                "SELECT region_code, terminal_address, terminal_password_encrypted FROM concentrators "
                "WHERE (region_code, terminal_address) IN (SELECT * FROM unnest(CAST(:regions AS text[]), CAST(:terminals AS integer[])))"
            ), {"regions": [k[0] for k in keys], "terminals": [k[1] for k in keys]})
            stored = {(region, terminal): encrypted for region, terminal, encrypted in found}
    records = []
    for row_no, record in zip(sheet.row_numbers, sheet.records, strict=True):
        before = sheet.error_count
        connection = value(record, "connection")
        if connection == "serial" and not value(record, "serial_url"):
            sheet.add_error(row_no, "serial_url" if "serial_url" in get else "connection", "串口连接须填写串口地址",
                            "A serial connection needs a port URL")
        if connection == "dtu_socket" and not (value(record, "host") and value(record, "port")):
            sheet.add_error(row_no, "host" if "host" in get else "connection", "DTU 连接须填写主机和端口",
                            "A DTU connection needs host and port")
        if value(record, "baudrate") is not None and value(record, "baudrate") not in _BAUD_RATES:
            sheet.add_error(row_no, "baudrate", "波特率不支持", "Unsupported baud rate")
        if sheet.error_count != before:
            continue
        password = value(record, "terminal_password")
        encrypted = None
        if password:
            current = stored.get((value(record, "region_code"), value(record, "terminal_address")))
            same = False
            if current:
                try:
                    same = cipher.decrypt(current) == password
                except Exception:  # a password stored under another secret: replace it
                    same = False
            encrypted = current if same else cipher.encrypt(password)
        records.append((
            row_no, *(value(record, key) for key in ("region_code", "terminal_address", "name", "area_code", "model",
                                                     "protocol", "connection", "serial_url", "baudrate", "parity",
                                                     "bytesize", "stopbits", "host", "port", "status")), encrypted,
        ))
    await _temp_table(session, "import_concentrators", _CONCENTRATOR_TEMP, records)
    scope = {"patterns": list(scope_patterns)}
    await _resolve_areas(session, "import_concentrators", sheet, scope)
    await _row_errors(session, sheet, (
        "SELECT t.row_no FROM import_concentrators t JOIN concentrators c ON c.region_code = t.region_code "
        "AND c.terminal_address = t.terminal_address JOIN areas a ON a.id = c.area_id "
        "WHERE NOT (a.path LIKE ANY(CAST(:patterns AS text[]))) ORDER BY t.row_no"
    ), scope, "terminal_address", CONCENTRATOR_OUT_OF_SCOPE)
    sheet.raise_if_invalid()

    defaults = {"protocol": "'gdw1376'", "status": "'active'"}
    target = ["region_code", "terminal_address", "name", "area_id", "connection"]
    target += [key for key in ("model", "protocol", "serial_url", "baudrate", "parity", "bytesize", "stopbits", "host",
                               "port", "status") if key in get]
    selected = [f"COALESCE(t.{key}, {defaults[key]})" if key in defaults else f"t.{key}" for key in target]
    changed = [key for key in target if key not in ("region_code", "terminal_address")]
    # A password cell is not compared: it is stored encrypted with a fresh nonce.
    skipped = 0 if update_existing else await _count_differing(
        session, table="concentrators", alias="c", temp="import_concentrators",
        match="c.region_code = t.region_code AND c.terminal_address = t.terminal_address",
        columns=changed, incoming=selected[2:])
    if "terminal_password" in get:
        target.append("terminal_password_encrypted")
        selected.append("t.terminal_password_encrypted")
    conflict = _upsert_clause(changed, "c", update_existing)
    if update_existing and "terminal_password" in get:
        # A blank password cell keeps the stored one.
        conflict = conflict.replace(
            ", updated_at = now()",
            ", terminal_password_encrypted = COALESCE(EXCLUDED.terminal_password_encrypted, c.terminal_password_encrypted), "
            "updated_at = now()",
        ).replace(
            f"({', '.join(f'c.{k}' for k in changed)}) IS DISTINCT FROM",
            f"({', '.join(f'c.{k}' for k in changed)}, c.terminal_password_encrypted) IS DISTINCT FROM",
        ).replace(
            f"({', '.join(f'EXCLUDED.{k}' for k in changed)})",
            f"({', '.join(f'EXCLUDED.{k}' for k in changed)}, "
            "COALESCE(EXCLUDED.terminal_password_encrypted, c.terminal_password_encrypted))",
        )
    statement = (
        f"WITH upserted AS (INSERT INTO concentrators AS c ({', '.join(target)}) SELECT {', '.join(selected)} "
        f"FROM import_concentrators t ORDER BY t.row_no ON CONFLICT (region_code, terminal_address) {conflict} "
        "RETURNING (c.xmax = 0) AS inserted) "
        "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM upserted"
    )
    inserted, updated = (await session.execute(sql(statement))).one()
    await session.execute(sql("DROP TABLE import_concentrators"))
    return ImportResult(inserted=inserted, updated=updated, unchanged=len(records) - inserted - updated - skipped,
                        skipped=skipped)

