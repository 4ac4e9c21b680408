"""The household sheet (住户): its columns, its export query and its all-or-nothing import.

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
from datetime import date
from typing import Any

from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import models
from backend.archives.errors import InvalidRoom
from backend.archives.excel.cells import _AREA_HAS_CODE, _area_ref, _label
from backend.archives.excel.exporting import _area_labels
from backend.archives.excel.importing import (
    CROSS_AREA,
    ImportResult,
    _count_differing,
    _lock_for_the_subtree_rule,
    _resolve_areas,
    _row_errors,
)
from backend.archives.models import Household
from backend.archives.service.checks import ROOM
from backend.db import copy_into
from backend.exports.excel import Column, SheetSpec, ValidatedSheet, choice, integer, text

CUSTOMER_TYPES = {"residential": "居民", "non_residential": "非居民", "special": "特种"}
HOUSEHOLD_STATUSES = {"active": "正常", "suspended": "暂停", "closed": "销户"}
# ASCII digits only (text() compiles these with re.ASCII and fullmatch too).
_PHONE = r"1[3-9][0-9]{9}|0[0-9]{2,3}-?[0-9]{7,8}(-[0-9]{1,6})?"
_ID_NUMBER = r"[0-9]{17}[0-9Xx]|[0-9]{15}|[A-Za-z0-9()（）-]{5,32}"

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
    Column("room", "房间号", "Room", text(16, pattern=ROOM.pattern, pattern_zh=InvalidRoom.message,
                                      pattern_en=InvalidRoom.message_en),
           width=8, example="0101", note="楼层+户号, 如 0101; 与楼、单元组成单位名称 1-1-0101", text_format=True),
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
_OWNERS = getattr(models, "HouseholdOwner", None)


_SERVED = "EXISTS (SELECT 1 FROM meter_assignments s WHERE s.household_id = h.id AND s.valid_to IS NULL)"


def _export_sql(*, by_area: bool, by_search: bool, by_status: bool, by_type: bool = False,
                has_meter: bool | None = None) -> str:
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
    # The list's hasMeter (service.household_page_query): a constant condition, no parameter.
    if has_meter is True:
        conditions.append(_SERVED)
    elif has_meter is False:
        conditions.append(f"h.status = 'active' AND NOT {_SERVED}")
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
    has_meter: bool | None = None


async def household_export_rows(
    connection: Any, *, scope_patterns: Sequence[str], export_filter: HouseholdExportFilter, chunk_rows: int = 5000,
) -> AsyncIterator[tuple[Any, ...]]:
    """Rows of :data:`HOUSEHOLD_EXPORT_SHEET` for the households in scope matching the
    filter, in account-number order, read through a server-side cursor on a raw asyncpg
    ``connection`` (inside a read-only transaction of its own)."""
    statement = _export_sql(
        by_area=export_filter.area_path is not None, by_search=bool(export_filter.search),
        by_status=export_filter.status is not None, by_type=export_filter.customer_type is not None,
        has_meter=export_filter.has_meter,
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
    area_label = await _area_labels(connection, scope_patterns) if area_position is not None else None
    async with connection.transaction(readonly=True):
        cursor = await connection.cursor(statement, *arguments)
        while records := await cursor.fetch(chunk_rows):
            for record in records:
                row = tuple(record)
                if area_label is not None and area_position is not None:
                    row = (*row[:area_position], area_label(row[area_position]), *row[area_position + 1 :])
                yield row


_SQL_TYPES = {"population": "integer"}
OUT_OF_SCOPE_HOUSEHOLD = ("该户号已存在于您的管辖范围之外", "This account number exists outside your scope")


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
    skipped = 0 if update_existing else await _count_differing(
        session, table="households", alias="h", temp="import_households", match="h.account_no = t.account_no",
        columns=changed, incoming=selected[1:])
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
    return ImportResult(inserted=inserted, updated=updated, unchanged=len(records) - inserted - updated - skipped,
                        skipped=skipped)
