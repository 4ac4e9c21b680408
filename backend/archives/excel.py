"""Excel sheets of the archives (档案导入导出): the household sheet, its export query and
its all-or-nothing import.

Columns are declared once, in :data:`HOUSEHOLD_COLUMNS`; a column whose table column the
model does not (yet) have is left out of the sheet, so adding a field is one line here.
The import writes set-based: the validated rows go by COPY into a temporary table, areas
and scope are checked with two joins, and one ``INSERT … ON CONFLICT (account_no)``
inserts (and, with ``update_existing``, updates only rows that differ), so re-importing
the same file changes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import errors as archive_errors
from backend.archives import models
from backend.archives import service as _service  # the validators the forms use
from backend.archives.handover import HandoverReading, store_handover_readings
from backend.archives.models import Household
from backend.db import copy_into
from backend.exports.excel import CellError, Column, SheetSpec, ValidatedSheet, choice, day, integer, text
from backend.exports.excel import decimal as _decimal

CUSTOMER_TYPES = {"residential": "居民", "non_residential": "非居民", "special": "特种"}
HOUSEHOLD_STATUSES = {"active": "正常", "suspended": "暂停", "closed": "销户"}
# ASCII digits only (text() compiles these with re.ASCII and fullmatch too).
_PHONE = r"1[3-9][0-9]{9}|0[0-9]{2,3}-?[0-9]{7,8}(-[0-9]{1,6})?"
_ID_NUMBER = r"[0-9]{17}[0-9Xx]|[0-9]{15}|[A-Za-z0-9()（）-]{5,32}"


def _label(labels: dict[str, str]) -> Any:
    return lambda value: labels.get(value, value) if value is not None else None


# An area code, or ``#<id>`` for an area without a code (what exports write).
_area_ref = text(32)


# Every column the household sheet may have, in sheet order. ``key`` is the households
# column (``area_code`` and ``area_name`` are resolved through areas).
HOUSEHOLD_COLUMNS: tuple[Column, ...] = (
    Column("account_no", "户号", "Account no.", text(32, pattern=r"[0-9A-Za-z-]+", pattern_zh="户号只能包含数字、字母和 -",
                                                   pattern_en="Account numbers hold digits, letters and -"),
           required=True, width=14, example="0100000001", note="缴费号, 唯一", text_format=True),
    Column("name", "户名", "Name", text(100), required=True, width=12, example="张伟", note="户主姓名或单位名称"),
    Column("area_code", "区域编码", "Area code", _area_ref, required=True, width=14, example="D01C01B01U1",
           note="区域管理中的区域编码; 没有编码的区域写 #区域ID (导出文件即如此)", text_format=True),
    Column("area_name", "所属区域", "Area", text(400), width=32, importable=False, note="仅供阅读, 导入时忽略"),
    Column("address", "地址", "Address", text(200), width=36, example="城东片区翠湖小区1号楼1单元101室"),
    Column("phone", "联系电话", "Phone", text(20, pattern=_PHONE, pattern_zh="电话格式不正确 (手机 11 位或 区号-号码)",
                                          pattern_en="Malformed phone (11-digit mobile or area code-number)"),
           width=14, example="13800000001", text_format=True),
    Column("phone2", "备用电话", "Second phone", text(20, pattern=_PHONE, pattern_zh="电话格式不正确",
                                                   pattern_en="Malformed phone"), width=14, text_format=True),
    Column("id_number", "证件号码", "ID number", text(32, pattern=_ID_NUMBER, pattern_zh="证件号码格式不正确",
                                                  pattern_en="Malformed ID number"),
           width=20, example="110101199001011234", note="身份证号等; 导出时不输出 (仅脱敏显示于页面)", text_format=True),
    Column("customer_type", "用户类型", "Customer type", choice(CUSTOMER_TYPES), width=10, example="居民",
           note="居民 / 非居民 / 特种; 留空为居民", render=_label(CUSTOMER_TYPES)),
    Column("sub_type", "用户子类", "Sub-type", text(50), width=10, example="", note="如 商业、工业、学校"),
    Column("population", "人口数", "Population", integer(minimum=1, maximum=99), width=8, example=3,
           note="用于阶梯水量按人口调整; 留空为 3"),
    Column("status", "状态", "Status", choice(HOUSEHOLD_STATUSES), width=8, importable=False,
           render=_label(HOUSEHOLD_STATUSES), note="仅供阅读: 状态变更请在系统中办理 (保留历史)"),
)
# Columns the export leaves out (personal data staff see masked on screen).
NOT_EXPORTED = frozenset({"id_number"})
# Server defaults of NOT NULL columns, used when a cell is blank.
_DEFAULTS = {"address": "''", "customer_type": "'residential'", "population": "3"}
_RESOLVED = {"area_code": "area_id", "area_name": None}


def _model_has(key: str) -> bool:
    table_column = _RESOLVED.get(key, key)
    return table_column is None or table_column in Household.__table__.c  # type: ignore[attr-defined]


HOUSEHOLD_SHEET = SheetSpec(
    name="住户",
    columns=tuple(column for column in HOUSEHOLD_COLUMNS if _model_has(column.key)),
    natural_key=("account_no",),
    notes=("区域须在您的管辖范围内。户号已存在时: 不勾选「更新已有」则保持原样, 勾选则以文件内容更新户名、区域、电话等。",),
)
HOUSEHOLD_EXPORT_SHEET = SheetSpec(
    name=HOUSEHOLD_SHEET.name,
    columns=tuple(column for column in HOUSEHOLD_SHEET.columns if column.key not in NOT_EXPORTED),
    natural_key=HOUSEHOLD_SHEET.natural_key,
)
_AREA_HAS_CODE = "code" in models.Area.__table__.c  # type: ignore[attr-defined]
_OWNERS = getattr(models, "HouseholdOwner", None)


# --------------------------------------------------------------------------- export


def _export_sql(*, by_area: bool, by_search: bool, by_status: bool, by_type: bool = False) -> str:
    """The export statement; its parameters are the scope patterns, then the area path
    pattern, the search pattern, the status and the customer type, each only when filtered by."""
    area_code = "COALESCE(a.code, '#' || a.id)" if _AREA_HAS_CODE else "'#' || a.id"
    selected = []
    for column in HOUSEHOLD_EXPORT_SHEET.columns:
        if column.key == "area_code":
            selected.append(area_code)
        elif column.key == "area_name":
            selected.append("a.path")  # turned into names in Python (a few thousand areas)
        else:
            selected.append(f"h.{column.key}")
    conditions = ["a.path LIKE ANY($1::text[])"]
    if by_area:
        conditions.append(f"a.path LIKE ${len(conditions) + 1}")
    if by_search:
        number = len(conditions) + 1
        # The list's search columns (service.household_page_query).
        searched = [f"h.{c} LIKE ${number}" for c in ("account_no", "name", "phone", "phone2", "address") if _model_has(c)]
        conditions.append("(" + " OR ".join(searched) + ")")
    if by_status:
        conditions.append(f"h.status = ${len(conditions) + 1}")
    if by_type:
        conditions.append(f"h.customer_type = ${len(conditions) + 1}")
    return (
        f"SELECT {', '.join(selected)} FROM households h JOIN areas a ON a.id = h.area_id "
        f"WHERE {' AND '.join(conditions)} ORDER BY h.account_no"
    )


@dataclass(frozen=True, slots=True)
class HouseholdExportFilter:
    """The list screen's filter: an area subtree (its path), free text, a status, a customer type."""

    area_path: str | None = None
    search: str | None = None
    status: str | None = None
    customer_type: str | None = None


async def household_export_rows(
    connection: Any, *, scope_patterns: Sequence[str], export_filter: HouseholdExportFilter, chunk_rows: int = 5000,
) -> AsyncIterator[tuple[Any, ...]]:
    """Rows of :data:`HOUSEHOLD_EXPORT_SHEET` for the households in scope matching the
    filter, in account-number order, read through a server-side cursor on a raw asyncpg
    ``connection`` (inside a read-only transaction of its own)."""
    statement = _export_sql(
        by_area=export_filter.area_path is not None, by_search=bool(export_filter.search),
        by_status=export_filter.status is not None, by_type=export_filter.customer_type is not None,
    )
    search = export_filter.search
    like = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%" if search else None
    arguments: list[Any] = [list(scope_patterns)]
    if export_filter.area_path is not None:
        arguments.append(export_filter.area_path + "%")
    if like is not None:
        arguments.append(like)
    if export_filter.status is not None:
        arguments.append(export_filter.status)
    if export_filter.customer_type is not None:
        arguments.append(export_filter.customer_type)
    area_position = HOUSEHOLD_EXPORT_SHEET.keys.index("area_name") if "area_name" in HOUSEHOLD_EXPORT_SHEET.keys else None
    names: dict[str, str] = {}
    if area_position is not None:
        for record in await connection.fetch("SELECT id, name FROM areas WHERE path LIKE ANY($1::text[])", list(scope_patterns)):
            names[str(record["id"])] = record["name"]
    labels: dict[str, str] = {}

    def area_label(path: str) -> str:
        found = labels.get(path)
        if found is None:
            # Skip the company: every row shares it.
            found = labels[path] = " / ".join(names.get(part, "?") for part in path.strip("/").split("/")[1:])
        return found

    async with connection.transaction(readonly=True):
        cursor = await connection.cursor(statement, *arguments)
        while records := await cursor.fetch(chunk_rows):
            for record in records:
                row = tuple(record)
                if area_position is not None:
                    row = (*row[:area_position], area_label(row[area_position]), *row[area_position + 1 :])
                yield row


# --------------------------------------------------------------------------- import


@dataclass(frozen=True, slots=True)
class ImportResult:
    inserted: int
    updated: int
    unchanged: int


_SQL_TYPES = {"population": "integer"}
_CROSS_AREA = archive_errors.CrossAreaAssignment
CROSS_AREA = (_CROSS_AREA.message, _CROSS_AREA.message_en)
OUT_OF_SCOPE_AREA = ("区域编码不存在或不在您的管辖范围内", "Unknown area code, or an area outside your scope")
OUT_OF_SCOPE_HOUSEHOLD = ("该户号已存在于您的管辖范围之外", "This account number exists outside your scope")


async def _lock_for_the_subtree_rule(session: AsyncSession, *, meters: str | None = None, households: str | None = None) -> None:
    """Before an import checks the same-subtree rule (backend.archives.service): share the
    area tree's lock and lock the meters, then the households, the rows ``meters`` and
    ``households`` select, each in id order, as a form's assignment or move does, so a
    concurrent move cannot slip between the check and the write."""
    await _service.share_area_tree(session)
    for table, ids in (("meters", meters), ("households", households)):
        if ids is not None:
            await session.execute(sql(f"SELECT id FROM {table} WHERE id IN ({ids}) ORDER BY id FOR UPDATE"))


async def import_households(
    session: AsyncSession,
    *,
    sheet: ValidatedSheet,
    scope_patterns: Sequence[str],
    update_existing: bool,
    today: date,
) -> ImportResult:
    """Write a validated household sheet: all rows or none (the caller commits).

    Areas are looked up by code (or ``#id``) within ``scope_patterns``; a row naming an
    unknown or out-of-scope area, or an account number that exists outside the scope, is
    a row error, checked on the sheet's valid rows even when others are bad, so one refusal
    lists everything. Errors (the sheet's and these) raise
    :class:`~backend.exports.excel.ImportRowsInvalid` before anything is written. Existing
    account numbers are left alone unless ``update_existing``; then only the columns
    present in the file are written, and only on rows that differ. New households get
    their current owner row (过户 history starts there); an updated owner name, phone or
    ID number corrects the current owner row.
    """
    columns = [key for key in sheet.columns if key != "area_code"]
    area_index = sheet.index("area_code")
    records = []
    for row_no, record in zip(sheet.row_numbers, sheet.records, strict=True):
        reference: str = record[area_index]
        values = [record[sheet.index(key)] for key in columns]
        records.append((row_no, reference, *values))
    temp_columns = ", ".join(f"{key} {_SQL_TYPES.get(key, 'text')}" for key in columns)
    await session.execute(sql(
        f"CREATE TEMP TABLE import_households (row_no integer, area_code text, {temp_columns}, "
        "area_id bigint) ON COMMIT DROP"
    ))
    await copy_into(session, "import_households", columns=["row_no", "area_code", *columns], records=records)
    scope = {"patterns": list(scope_patterns)}
    # The device imports' resolver: a code, or a strict ``#<1-18 ASCII digits>`` id.
    await _resolve_areas(session, "import_households", sheet, scope)
    outside = await session.execute(sql(
        "SELECT t.row_no FROM import_households t JOIN households h ON h.account_no = t.account_no "
        "JOIN areas a ON a.id = h.area_id WHERE NOT (a.path LIKE ANY(CAST(:patterns AS text[]))) ORDER BY t.row_no"
    ), scope)
    for (row_no,) in outside:
        sheet.add_error(row_no, "account_no", *OUT_OF_SCOPE_HOUSEHOLD)
    if update_existing:
        # A household moved to an area outside a meter that serves it (the rule of
        # backend.archives.service) is refused, as on the form.
        await _lock_for_the_subtree_rule(
            session, households="SELECT h.id FROM households h JOIN import_households t ON t.account_no = h.account_no")
        await _row_errors(session, sheet, (
            "SELECT DISTINCT t.row_no FROM import_households t JOIN households h ON h.account_no = t.account_no "
            "JOIN meter_assignments s ON s.household_id = h.id AND s.valid_to IS NULL JOIN meters m ON m.id = s.meter_id "
            "JOIN areas ma ON ma.id = m.area_id JOIN areas na ON na.id = t.area_id "
            "WHERE NOT starts_with(na.path, ma.path) ORDER BY t.row_no"), {}, "area_code", CROSS_AREA)
    sheet.raise_if_invalid()

    target = ["account_no", *[key for key in columns if key != "account_no"], "area_id"]
    selected = [f"COALESCE(t.{key}, {_DEFAULTS[key]})" if key in _DEFAULTS else f"t.{key}" for key in target]
    changed = [key for key in target if key != "account_no"]
    if update_existing:
        conflict = (
            f"DO UPDATE SET {', '.join(f'{key} = EXCLUDED.{key}' for key in changed)}, updated_at = now() "
            f"WHERE ({', '.join(f'h.{key}' for key in changed)}) IS DISTINCT FROM "
            f"({', '.join(f'EXCLUDED.{key}' for key in changed)})"
        )
    else:
        conflict = "DO NOTHING"
    owner_columns = [key for key in ("name", "phone", "id_number") if key in target]
    owners = ""
    if _OWNERS is not None:
        owners = (
            f", new_owners AS (INSERT INTO household_owners (household_id, {', '.join(owner_columns)}, valid_from) "
            f"SELECT id, {', '.join(owner_columns)}, CAST(:today AS date) FROM upserted WHERE inserted RETURNING 1)"
            f", corrected_owners AS (UPDATE household_owners o SET "
            f"{', '.join(f'{key} = u.{key}' for key in owner_columns)} FROM upserted u "
            f"WHERE NOT u.inserted AND o.household_id = u.id AND o.valid_to IS NULL "
            f"AND ({', '.join(f'o.{key}' for key in owner_columns)}) IS DISTINCT FROM "
            f"({', '.join(f'u.{key}' for key in owner_columns)}) RETURNING 1)"
        )
    statement = (
        f"WITH upserted AS (INSERT INTO households AS h ({', '.join(target)}) "
        f"SELECT {', '.join(selected)} FROM import_households t ORDER BY t.row_no "
        f"ON CONFLICT (account_no) {conflict} "
        f"RETURNING h.id, (h.xmax = 0) AS inserted, {', '.join(f'h.{key}' for key in owner_columns)}){owners} "
        "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM upserted"
    )
    inserted, updated = (await session.execute(sql(statement), {"today": today})).one()
    await session.execute(sql("DROP TABLE import_households"))
    return ImportResult(inserted=inserted, updated=updated, unchanged=len(records) - inserted - updated)


# =========================================================================== devices
#
# Meters, concentrators and assignments follow the household pattern: one column list
# each, the whole file validated first (cells by the parsers, then row rules in Python
# with the service layer's own patterns, then references and scope against the database
# on the rows still valid), and only then one set-based write keyed on the natural key.


METER_TYPES = {"cold_water": "冷水表", "hot_water": "热水表", "flow_monitor": "流量计", "pressure_monitor": "压力计"}
METER_KINDS = {"household": "户表", "monitoring": "监测点"}
METER_STATUSES = {"in_stock": "库存", "installed": "在用", "faulty": "故障", "retired": "报废"}
CONNECTION_KINDS = {"tcp_login": "TCP登录", "serial": "串口", "dtu_socket": "DTU透传"}
DEVICE_STATUSES = {"active": "在线", "offline": "离线", "retired": "停用"}
_CONCENTRATOR_REF = r"[0-9]{4}-[0-9]{1,5}"
_MAX_READING = Decimal("1e12")


def _reading() -> Any:
    parse = _decimal(places=4)

    def reading(value: Any) -> Decimal:
        result: Decimal = parse(value)
        if result < 0 or result >= _MAX_READING:
            raise CellError("读数须为非负数", "A reading is a non-negative number")
        return result

    return reading


def moment() -> Any:
    """A date or date and time (local, whole seconds): ``2026-01-31`` or ``2026-01-31 08:30:00``."""

    def parse(value: Any) -> datetime:
        if isinstance(value, datetime):
            result = value.replace(tzinfo=None)
        elif isinstance(value, date):
            result = datetime(value.year, value.month, value.day)
        else:
            raw = str(value).strip().replace("/", "-").replace("T", " ")
            try:
                result = datetime.fromisoformat(raw)
            except ValueError:
                raise CellError("时间格式须为 2026-01-31 或 2026-01-31 08:30:00",
                                "Times look like 2026-01-31 or 2026-01-31 08:30:00") from None
            result = result.replace(tzinfo=None)
        # Excel keeps times as fractions of a day: round back to the exported whole second.
        if result.microsecond >= 500_000:
            try:
                result += timedelta(seconds=1)
            except OverflowError:
                raise CellError("时间超出范围", "The time is out of range") from None
        return result.replace(microsecond=0)

    return parse


def _one_of(values: Sequence[str]) -> Any:
    accepted = set(values)

    def parse(value: Any) -> str:
        raw = value if isinstance(value, str) else (str(int(value)) if isinstance(value, float) and value.is_integer() else str(value))
        raw = raw.strip().upper()
        if raw not in accepted:
            raise CellError(f"须为以下之一: {'/'.join(values)}", f"Must be one of: {', '.join(values)}")
        return raw

    return parse


METER_COLUMNS: tuple[Column, ...] = (
    Column("code", "表计编码", "Meter code", text(32, pattern=_service.METER_CODE.pattern.strip("^$"),
                                                 pattern_zh="表计编码只能包含字母、数字、-、_",
                                                 pattern_en="A meter code holds letters, digits, - or _"),
           required=True, width=14, example="W00000001", note="水司内部表号, 唯一", text_format=True),
    Column("name", "表计名称", "Meter name", text(100), required=True, width=16, example="翠湖小区1号楼101水表"),
    Column("protocol", "协议", "Protocol", text(32), width=10, example="cjt188", note="留空: 型号的协议, 否则 cjt188"),
    Column("address", "表地址", "Address", text(32), required=True, width=18, example="20260100000001",
           note="CJ/T 188: 14 位 BCD 数字; 同一协议下唯一", text_format=True),
    Column("meter_type", "表类型", "Meter type", choice(METER_TYPES), required=True, width=10, example="冷水表",
           render=_label(METER_TYPES), note="冷水表 / 热水表 / 流量计 / 压力计"),
    Column("kind", "类别", "Kind", choice(METER_KINDS), width=8, example="户表", render=_label(METER_KINDS),
           note="户表 / 监测点 (干管流量计、压力计, 不分配给住户); 留空为户表"),
    Column("model_vendor", "厂家", "Vendor", text(100), width=12, example="宁波水表", note="与「型号」一起指定型号档案"),
    Column("model_name", "型号", "Model", text(100), width=12, example="LXSY-15E"),
    Column("area_code", "区域编码", "Area code", _area_ref, required=True, width=14, example="D01C01B01U1",
           note="区域管理中的区域编码; 没有编码的区域写 #区域ID", text_format=True),
    Column("area_name", "所属区域", "Area", text(400), width=28, importable=False, note="仅供阅读, 导入时忽略"),
    Column("install_date", "安装日期", "Install date", day(), width=12, example="2026-01-15"),
    Column("initial_reading", "初始读数", "Initial reading", _reading(), width=10, example=0),
    Column("location", "安装位置", "Location", text(200), width=20, example="管道井"),
    Column("status", "状态", "Status", choice(METER_STATUSES), width=8, importable=False, render=_label(METER_STATUSES),
           note="仅供阅读: 状态经配表、换表、报废变化"),
    Column("concentrator", "集中器地址", "Concentrator", text(10, pattern=_CONCENTRATOR_REF,
                                                            pattern_zh="集中器地址须为 区划码-终端地址, 如 3301-12",
                                                            pattern_en="A concentrator is region-terminal, e.g. 3301-12"),
           width=12, example="3301-1", note="行政区划码-终端地址; NB-IoT 表留空", text_format=True),
    Column("collector_address", "采集器地址", "Collector", text(32), width=12, text_format=True,
           note="该集中器下的采集器地址; 直挂集中器时留空"),
    Column("port", "端口", "Port", integer(minimum=1, maximum=255), width=6, example=1),
    Column("measurement_point", "测量点号", "Measurement point", integer(minimum=1, maximum=2040), width=8, example=1),
    Column("mqtt_topic", "MQTT主题", "MQTT topic", text(200), width=20, note="NB-IoT 表的上报主题"),
)
METER_SHEET = SheetSpec(
    name="水表", columns=METER_COLUMNS, natural_key=("code",),
    notes=("按表计编码识别已有水表; 表地址在同一协议下也须唯一。区域与集中器须在您的管辖范围内。",),
)

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


# --------------------------------------------------------------------------- shared helpers


def _like_pattern(search: str) -> str:
    return "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@dataclass(frozen=True, slots=True)
class DeviceExportFilter:
    """A device list screen's filter; each field only where the list has it."""

    area_path: str | None = None
    search: str | None = None
    status: str | None = None
    meter_type: str | None = None
    kind: str | None = None
    concentrator_id: int | None = None
    connection: str | None = None
    current: bool | None = None


async def _area_labels(connection: Any, scope_patterns: Sequence[str]) -> Any:
    names: dict[str, str] = {}
    for record in await connection.fetch("SELECT id, name FROM areas WHERE path LIKE ANY($1::text[])", list(scope_patterns)):
        names[str(record["id"])] = record["name"]
    labels: dict[str, str] = {}

    def label(path: str) -> str:
        found = labels.get(path)
        if found is None:
            found = labels[path] = " / ".join(names.get(part, "?") for part in path.strip("/").split("/")[1:])
        return found

    return label


async def _stream(
    connection: Any, statement: str, arguments: Sequence[Any], *, scope_patterns: Sequence[str],
    area_position: int | None, chunk_rows: int,
) -> AsyncIterator[tuple[Any, ...]]:
    label = await _area_labels(connection, scope_patterns) if area_position is not None else None
    async with connection.transaction(readonly=True):
        cursor = await connection.cursor(statement, *arguments)
        while records := await cursor.fetch(chunk_rows):
            for record in records:
                row = tuple(record)
                if label is not None and area_position is not None:
                    row = (*row[:area_position], label(row[area_position]), *row[area_position + 1 :])
                yield row


class _Where:
    """Numbered asyncpg conditions: ``add("m.status = {}", value)``."""

    def __init__(self, scope_patterns: Sequence[str], path: str = "a.path") -> None:
        self.conditions = [f"{path} LIKE ANY($1::text[])"]
        self.arguments: list[Any] = [list(scope_patterns)]

    def add(self, condition: str, value: Any) -> None:
        self.arguments.append(value)
        self.conditions.append(condition.replace("{}", f"${len(self.arguments)}"))

    def sql(self) -> str:
        return " AND ".join(self.conditions)


_AREA_CODE_SQL = "COALESCE(a.code, '#' || a.id)" if _AREA_HAS_CODE else "'#' || a.id"


async def _temp_table(session: AsyncSession, name: str, columns: Sequence[tuple[str, str]], records: list[tuple[Any, ...]]) -> None:
    await session.execute(sql(
        f"CREATE TEMP TABLE {name} ({', '.join(f'{key} {kind}' for key, kind in columns)}) ON COMMIT DROP"
    ))
    if records:
        width = len(records[0])
        await copy_into(session, name, columns=[key for key, _ in columns[:width]], records=records)


async def _resolve_areas(session: AsyncSession, table: str, sheet: ValidatedSheet, scope: dict[str, Any]) -> None:
    """Fill ``area_id`` from ``area_code`` (a code or ``#id``) within the scope; a row
    left without one is a row error."""
    if _AREA_HAS_CODE:
        await session.execute(sql(
            f"UPDATE {table} t SET area_id = a.id FROM areas a "
            "WHERE a.code = t.area_code AND a.path LIKE ANY(CAST(:patterns AS text[]))"
        ), scope)
    await session.execute(sql(
        f"UPDATE {table} t SET area_id = a.id FROM areas a WHERE t.area_id IS NULL "
        "AND t.area_code ~ '^#[0-9]{1,18}$' AND a.id = CAST(substr(t.area_code, 2) AS bigint) "
        "AND a.path LIKE ANY(CAST(:patterns AS text[]))"
    ), scope)
    for (row_no,) in await session.execute(sql(f"SELECT row_no FROM {table} WHERE area_id IS NULL ORDER BY row_no")):
        sheet.add_error(row_no, "area_code", *OUT_OF_SCOPE_AREA)


async def _row_errors(session: AsyncSession, sheet: ValidatedSheet, statement: str, params: dict[str, Any], column: str,
                      message: tuple[str, str]) -> None:
    for (row_no,) in await session.execute(sql(statement), params):
        sheet.add_error(row_no, column, *message)


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


def _upsert_clause(changed: Sequence[str], alias: str, update_existing: bool) -> str:
    """The ``ON CONFLICT …`` action: nothing, or update the changed columns on rows that differ."""
    if not update_existing or not changed:
        return "DO NOTHING"
    return (
        f"DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in changed)}, updated_at = now() "
        f"WHERE ({', '.join(f'{alias}.{c}' for c in changed)}) IS DISTINCT FROM ({', '.join(f'EXCLUDED.{c}' for c in changed)})"
    )


# --------------------------------------------------------------------------- meters: export


async def meter_export_rows(
    connection: Any, *, scope_patterns: Sequence[str], export_filter: DeviceExportFilter, chunk_rows: int = 5000,
) -> AsyncIterator[tuple[Any, ...]]:
    """Rows of :data:`METER_SHEET` for the meters in scope matching the list's filter
    (area subtree, status, type, kind, concentrator, free text), in code order."""
    where = _Where(scope_patterns)
    if export_filter.area_path is not None:
        where.add("a.path LIKE {}", export_filter.area_path + "%")
    if export_filter.status is not None:
        where.add("m.status = {}", export_filter.status)
    if export_filter.meter_type is not None:
        where.add("m.meter_type = {}", export_filter.meter_type)
    if export_filter.kind is not None:
        where.add("m.kind = {}", export_filter.kind)
    if export_filter.concentrator_id is not None:
        where.add("m.concentrator_id = {}", export_filter.concentrator_id)
    if export_filter.search:
        where.add("(m.address LIKE {0} OR m.code LIKE {0} OR m.name LIKE {0} OR m.location LIKE {0})".replace("{0}", "{}"),
                  _like_pattern(export_filter.search))
    statement = (
        "SELECT m.code, m.name, m.protocol, m.address, m.meter_type, m.kind, mm.vendor, mm.name, "
        f"{_AREA_CODE_SQL}, a.path, m.install_date, m.initial_reading, m.location, m.status, "
        "CASE WHEN c.id IS NOT NULL THEN c.region_code || '-' || c.terminal_address END, co.address, m.port, "
        "m.measurement_point, m.mqtt_topic "
        "FROM meters m JOIN areas a ON a.id = m.area_id LEFT JOIN meter_models mm ON mm.id = m.model_id "
        "LEFT JOIN concentrators c ON c.id = m.concentrator_id LEFT JOIN collectors co ON co.id = m.collector_id "
        f"WHERE {where.sql()} ORDER BY m.code"
    )
    async for row in _stream(connection, statement, where.arguments, scope_patterns=scope_patterns,
                             area_position=METER_SHEET.keys.index("area_name"), chunk_rows=chunk_rows):
        yield row


# --------------------------------------------------------------------------- meters: import

_METER_TEMP = (
    ("row_no", "integer"), ("code", "text"), ("name", "text"), ("protocol", "text"), ("address", "text"),
    ("meter_type", "text"), ("kind", "text"), ("model_id", "bigint"), ("area_code", "text"), ("install_date", "date"),
    ("initial_reading", "numeric"), ("location", "text"), ("concentrator_region", "text"), ("concentrator_terminal", "integer"),
    ("collector_address", "text"), ("port", "integer"), ("measurement_point", "integer"), ("mqtt_topic", "text"),
    ("area_id", "bigint"), ("concentrator_id", "bigint"), ("collector_id", "bigint"),
)
ADDRESS_TAKEN = ("该协议下表地址已被其他表计编码使用", "Another meter code already uses this address for this protocol")
METER_OUT_OF_SCOPE = ("该表计编码已存在于您的管辖范围之外", "This meter code exists outside your scope")
UNKNOWN_CONCENTRATOR = ("集中器不存在或不在您的管辖范围内", "Unknown concentrator, or one outside your scope")
UNKNOWN_COLLECTOR = ("该集中器下没有此采集器", "No such collector on that concentrator")
UNKNOWN_MODEL = ("型号档案中没有该厂家的此型号", "No such vendor and model in the meter models")


async def import_meters(
    session: AsyncSession, *, sheet: ValidatedSheet, scope_patterns: Sequence[str], update_existing: bool,
) -> ImportResult:
    """Write a validated meter sheet, all rows or none (the caller commits); idempotent on
    the meter code. Addresses follow the service rules (CJ/T 188: 14 BCD digits), are
    unique per protocol in the file and against other meters; area, concentrator and an
    existing code must lie in the scope; models are found by vendor and name."""
    present = set(sheet.columns)
    models = {(vendor, name): (model_id, protocol) for model_id, vendor, name, protocol in
              await session.execute(sql("SELECT id, vendor, name, protocol FROM meter_models"))}
    get = {key: sheet.index(key) for key in sheet.columns}

    def value(record: tuple[Any, ...], key: str) -> Any:
        return record[get[key]] if key in get else None

    seen: dict[tuple[str, str], int] = {}
    records = []
    for row_no, record in zip(sheet.row_numbers, sheet.records, strict=True):
        errors_before = sheet.error_count
        vendor, model_name = value(record, "model_vendor"), value(record, "model_name")
        model_id, model_protocol = None, None
        if vendor or model_name:
            found = models.get((vendor, model_name))
            if found is None:
                sheet.add_error(row_no, "model_name" if "model_name" in get else "model_vendor", *UNKNOWN_MODEL)
            else:
                model_id, model_protocol = found
        protocol = value(record, "protocol") or model_protocol or "cjt188"
        address = value(record, "address")
        rule = _service.ADDRESS_RULES.get(protocol, _service.OTHER_ADDRESS)
        if not rule.fullmatch(address):
            invalid = archive_errors.InvalidAddress() if rule is not _service.OTHER_ADDRESS else None
            sheet.add_error(row_no, "address", *((invalid.message, invalid.message_en) if invalid else
                                                  ("表地址只能包含字母和数字, 最多 32 位", "An address is up to 32 letters or digits")))
        else:
            earlier = seen.setdefault((protocol, address), row_no)
            if earlier != row_no:
                sheet.add_error(row_no, "address", f"与第 {earlier} 行表地址重复", f"Same address as row {earlier}")
        concentrator = value(record, "concentrator")
        if value(record, "mqtt_topic") is not None and concentrator is not None:
            sheet.add_error(row_no, "mqtt_topic", "NB-IoT 水表经 MQTT 上报, 不挂集中器", "An MQTT meter hangs under no concentrator")
        if concentrator is None:
            for key in ("port", "measurement_point", "collector_address"):
                if value(record, key) is not None:
                    sheet.add_error(row_no, key, "需要先填写集中器地址", "Needs a concentrator")
        if sheet.error_count != errors_before:
            continue
        region, _, terminal = (concentrator or "").partition("-")
        records.append((
            row_no, value(record, "code"), value(record, "name"), protocol, address, value(record, "meter_type"),
            value(record, "kind"), model_id, value(record, "area_code"), value(record, "install_date"),
            value(record, "initial_reading"), value(record, "location"), region or None, int(terminal) if terminal else None,
            value(record, "collector_address"), value(record, "port"), value(record, "measurement_point"),
            value(record, "mqtt_topic"),
        ))
    await _temp_table(session, "import_meters", _METER_TEMP, records)
    scope = {"patterns": list(scope_patterns)}
    await _resolve_areas(session, "import_meters", sheet, scope)
    await _row_errors(session, sheet, (
        "SELECT t.row_no FROM import_meters t JOIN meters m ON m.code = t.code JOIN areas a ON a.id = m.area_id "
        "WHERE NOT (a.path LIKE ANY(CAST(:patterns AS text[]))) ORDER BY t.row_no"), scope, "code", METER_OUT_OF_SCOPE)
    await _row_errors(session, sheet, (
        "SELECT t.row_no FROM import_meters t JOIN meters m ON m.protocol = t.protocol AND m.address = t.address "
        "AND m.code <> t.code ORDER BY t.row_no"), {}, "address", ADDRESS_TAKEN)
    await session.execute(sql(
        "UPDATE import_meters t SET concentrator_id = c.id FROM concentrators c JOIN areas a ON a.id = c.area_id "
        "WHERE c.region_code = t.concentrator_region AND c.terminal_address = t.concentrator_terminal "
        "AND a.path LIKE ANY(CAST(:patterns AS text[]))"
    ), scope)
    await _row_errors(session, sheet, (
        "SELECT row_no FROM import_meters WHERE concentrator_region IS NOT NULL AND concentrator_id IS NULL ORDER BY row_no"
    ), {}, "concentrator", UNKNOWN_CONCENTRATOR)
    await session.execute(sql(
        "UPDATE import_meters t SET collector_id = co.id FROM collectors co "
        "WHERE co.concentrator_id = t.concentrator_id AND co.address = t.collector_address"
    ))
    await _row_errors(session, sheet, (
        "SELECT row_no FROM import_meters WHERE collector_address IS NOT NULL AND concentrator_id IS NOT NULL "
        "AND collector_id IS NULL ORDER BY row_no"), {}, "collector_address", UNKNOWN_COLLECTOR)
    if update_existing:
        await _lock_for_the_subtree_rule(
            session, meters="SELECT m.id FROM meters m JOIN import_meters t ON t.code = m.code",
            households="SELECT s.household_id FROM meter_assignments s JOIN meters m ON m.id = s.meter_id "
                       "JOIN import_meters t ON t.code = m.code WHERE s.valid_to IS NULL")
        await _row_errors(session, sheet, (
            "SELECT t.row_no FROM import_meters t JOIN meters m ON m.code = t.code "
            "JOIN meter_assignments s ON s.meter_id = m.id AND s.valid_to IS NULL JOIN households h ON h.id = s.household_id "
            "JOIN areas ha ON ha.id = h.area_id JOIN areas na ON na.id = t.area_id "
            "WHERE NOT starts_with(ha.path, na.path) ORDER BY t.row_no"), {}, "area_code", CROSS_AREA)
    if update_existing and "kind" in present:
        await _row_errors(session, sheet, (
            "SELECT t.row_no FROM import_meters t JOIN meters m ON m.code = t.code WHERE t.kind = 'monitoring' "
            "AND EXISTS (SELECT 1 FROM meter_assignments s WHERE s.meter_id = m.id AND s.valid_to IS NULL) ORDER BY t.row_no"
        ), {}, "kind", ("在用的住户水表不能改为监测点", "A meter serving a household cannot become a monitoring point"))
    sheet.raise_if_invalid()

    defaults = {"kind": "'household'", "initial_reading": "0"}
    target = ["code", "name", "protocol", "address", "meter_type", "area_id"]
    target += [key for key in ("kind", "install_date", "initial_reading", "location", "port", "measurement_point", "mqtt_topic")
               if key in present]
    if "model_vendor" in present or "model_name" in present:
        target.append("model_id")
    if "concentrator" in present:
        target += ["concentrator_id", "collector_id"]
    selected = [f"COALESCE(t.{key}, {defaults[key]})" if key in defaults else f"t.{key}" for key in target]
    conflict = _upsert_clause([key for key in target if key != "code"], "m", update_existing)
    statement = (
        f"WITH upserted AS (INSERT INTO meters AS m ({', '.join(target)}) SELECT {', '.join(selected)} "
        f"FROM import_meters t ORDER BY t.row_no ON CONFLICT (code) {conflict} RETURNING (m.xmax = 0) AS inserted) "
        "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM upserted"
    )
    inserted, updated = (await session.execute(sql(statement))).one()
    await session.execute(sql("DROP TABLE import_meters"))
    return ImportResult(inserted=inserted, updated=updated, unchanged=len(records) - inserted - updated)


# --------------------------------------------------------------------------- concentrators


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
    return ImportResult(inserted=inserted, updated=updated, unchanged=len(records) - inserted - updated)


# --------------------------------------------------------------------------- assignments


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
    ("existing_id", "bigint"),
)
UNKNOWN_METER = ("表计编码不存在或不在您的管辖范围内", "Unknown meter code, or a meter outside your scope")
UNKNOWN_HOUSEHOLD = ("户号不存在或不在您的管辖范围内", "Unknown account number, or a household outside your scope")
EXISTS_DIFFERENT = ("该分配已存在且内容不同; 如需修改请选择更新已有记录",
                    "This assignment exists with different values; import with update existing to change it")
ONE_HOUSEHOLD_AT_A_TIME = ("该水表在此时段已服务其他住户 (一块水表同一时间只服务一户)",
                           "The meter serves another household in this period (one household at a time)")


async def _store_handover_readings(session: AsyncSession, sheet: ValidatedSheet, *, now: datetime | None,
                                   tz: str) -> None:
    """The imported assignments' start and end readings, as manual readings in one batch.
    A start reading left blank is the meter's initial reading only for a meter never read."""
    handovers = (await session.execute(sql(
        "SELECT t.row_no, t.meter_id, t.valid_from, t.start_reading, t.valid_to, t.end_reading, m.initial_reading, "
        "NOT EXISTS (SELECT 1 FROM latest_readings l WHERE l.meter_id = t.meter_id) AS unread "
        "FROM import_assignments t JOIN meters m ON m.id = t.meter_id ORDER BY t.row_no"
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
    await _row_errors(session, sheet, (
        "SELECT t.row_no FROM import_assignments t WHERE t.meter_id IS NOT NULL AND EXISTS (SELECT 1 FROM meter_assignments s "
        f"WHERE s.meter_id = t.meter_id AND s.id IS DISTINCT FROM t.existing_id AND {overlaps.format('s', 't')} "
        f"{replaced}) "
        "OR EXISTS (SELECT 1 FROM import_assignments u WHERE u.meter_id = t.meter_id AND u.row_no < t.row_no "
        f"AND {overlaps.format('u', 't')}) ORDER BY t.row_no"
    ), {}, "valid_from", ONE_HOUSEHOLD_AT_A_TIME)
    sheet.raise_if_invalid()

    updated = 0
    if update_existing:
        updated = _rowcount(await session.execute(sql(
            f"UPDATE meter_assignments s SET {', '.join(f'{c} = t.{c}' for c in changed)} FROM import_assignments t "
            f"WHERE s.id = t.existing_id AND ({', '.join(f's.{c}' for c in changed)}) IS DISTINCT FROM "
            f"({', '.join(f't.{c}' for c in changed)})"
        )))
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
