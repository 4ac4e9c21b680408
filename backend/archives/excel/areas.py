"""The area sheet (区域): the tree below a company written as rows that name their parent
by code, so a community's buildings and units come in one file instead of one
``createArea`` each, before the household sheet that references their codes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import service as _service  # the validators the forms use
from backend.archives.excel.cells import _area_ref, _label
from backend.archives.excel.exporting import _AREA_CODE_SQL, DeviceExportFilter, _like_pattern, _stream, _Where
from backend.archives.excel.importing import ImportResult, _row_errors, _rowcount, _temp_table
from backend.exports.excel import Column, SheetSpec, ValidatedSheet, choice, text

AREA_KINDS = {"company": "公司", "district": "片区", "community": "小区", "building": "楼栋", "unit": "单元"}
# The kinds in tree order, as SQL: a child's kind comes after its parent's (AREA_KIND_ORDER).
_KINDS_SQL = "ARRAY[" + ", ".join(f"'{kind}'" for kind in AREA_KINDS) + "]"

AREA_COLUMNS: tuple[Column, ...] = (
    Column("code", "区域编码", "Area code", _area_ref, required=True, width=14, example="D01C01B01",
           note="唯一; 住户、水表导入按它找区域。已有的无编码区域写 #区域ID (导出如此)", text_format=True),
    Column("name", "区域名称", "Area name", text(100), required=True, width=16, example="1号楼"),
    Column("kind", "类型", "Kind", choice(AREA_KINDS), required=True, width=8, example="楼栋", render=_label(AREA_KINDS),
           note="片区 / 小区 / 楼栋 / 单元, 须比上级低一级或更多"),
    Column("parent_code", "上级区域编码", "Parent code", _area_ref, required=True, width=14, example="D01C01",
           note="已有区域的编码 (没有编码的写 #区域ID), 或本文件中前面或后面的一行", text_format=True),
    Column("address", "地址", "Address", text(200), width=24, example="翠湖路 1 号"),
    Column("area_name", "区域全称", "Full name", text(400), width=28, importable=False, note="仅供阅读, 导入时忽略"),
)
AREA_SHEET = SheetSpec(
    name="区域", columns=AREA_COLUMNS, natural_key=("code",),
    notes=("按区域编码识别已有区域; 已有区域只更新名称和地址, 移动区域请在区域管理中操作。上级区域须在您的管辖范围内。",),
)

UNKNOWN_PARENT = ("上级区域不存在或不在您的管辖范围内, 本文件中也没有", "Unknown parent, or one outside your scope, "
                  "and no row of this file")
AREA_OUT_OF_SCOPE = ("该区域编码已存在于您的管辖范围之外", "This area code exists outside your scope")
KIND_ORDER = ("区域类型须比上级低一级或更多", "An area's kind must come below its parent's")
PARENT_DIFFERS = ("已有区域的上级或类型与文件不同; 移动区域请在区域管理中操作",
                  "The stored area has another parent or kind; move areas on the area screen")
PARENT_CYCLE = ("上级区域形成循环", "The parents form a cycle")
NEEDS_CODE = ("新区域须有区域编码 (字母、数字、-、_)", "A new area needs a code (letters, digits, - and _)")
_ID_REF = "'^#[0-9]{1,18}$'"



async def area_export_rows(
    connection: Any, *, scope_patterns: Sequence[str], export_filter: DeviceExportFilter, chunk_rows: int = 5000,
) -> AsyncIterator[tuple[Any, ...]]:
    """Rows of :data:`AREA_SHEET` for the areas in scope below a company (the area subtree
    and free text on code and name as the list filters), parents before children."""
    where = _Where(scope_patterns)
    where.conditions.append("a.parent_id IS NOT NULL")
    if export_filter.area_path is not None:
        where.add("a.path LIKE {}", export_filter.area_path + "%")
    if export_filter.search:
        where.add("(a.code LIKE {0} OR a.name LIKE {0})".replace("{0}", "{}"), _like_pattern(export_filter.search))
    parent_code = _AREA_CODE_SQL.replace("a.", "p.")
    statement = (
        f"SELECT {_AREA_CODE_SQL}, a.name, a.kind, {parent_code}, a.address, a.path "
        f"FROM areas a JOIN areas p ON p.id = a.parent_id WHERE {where.sql()} ORDER BY a.path"
    )
    async for row in _stream(connection, statement, where.arguments, scope_patterns=scope_patterns,
                             area_position=AREA_SHEET.keys.index("area_name"), chunk_rows=chunk_rows):
        yield row


_AREA_TEMP = (
    ("row_no", "integer"), ("code", "text"), ("name", "text"), ("kind", "text"), ("parent_code", "text"),
    ("address", "text"), ("existing_id", "bigint"), ("parent_id", "bigint"), ("id", "bigint"), ("path", "text"),
)


async def import_areas(
    session: AsyncSession, *, sheet: ValidatedSheet, scope_patterns: Sequence[str], update_existing: bool,
) -> ImportResult:
    """Write a validated area sheet, all rows or none (the caller commits); idempotent on
    the area code. A row's parent is an area in scope (by code or ``#id``) or another row
    of the file, in any order; kinds go down the tree (AREA_KIND_ORDER). A stored area
    keeps its place: only its name and address change (``update_existing``), and a row
    giving it another parent or kind is an error (moving is ``moveArea``). The new areas
    are inserted in one statement, their paths computed by one recursive query."""
    get = {key: sheet.index(key) for key in sheet.columns}
    has_address = "address" in get
    seen: dict[str, int] = {}
    records = []
    for row_no, record in zip(sheet.row_numbers, sheet.records, strict=True):
        code, parent_code = record[get["code"]], record[get["parent_code"]]
        earlier = seen.setdefault(code, row_no)
        if earlier != row_no:
            sheet.add_error(row_no, "code", f"与第 {earlier} 行区域编码重复", f"Same area code as row {earlier}")
            continue
        if parent_code == code:
            sheet.add_error(row_no, "parent_code", *PARENT_CYCLE)
            continue
        if not code.startswith("#") and not _service.AREA_CODE.fullmatch(code):
            sheet.add_error(row_no, "code", *NEEDS_CODE)
            continue
        records.append((row_no, code, record[get["name"]], record[get["kind"]], parent_code,
                        record[get["address"]] if has_address else None))
    # The tree's shape holds still until commit: paths computed here stay right.
    await _service.lock_area_tree(session)
    await _temp_table(session, "import_areas", _AREA_TEMP, records)
    scope = {"patterns": list(scope_patterns)}
    # A stored area by its code, or by #id for one without a code (what the export writes).
    await session.execute(sql(
        "UPDATE import_areas t SET existing_id = a.id FROM areas a WHERE a.code = t.code "
        f"OR (t.code ~ {_ID_REF} AND a.id = CAST(substr(t.code, 2) AS bigint))"))
    await _row_errors(session, sheet, "SELECT row_no FROM import_areas WHERE existing_id IS NULL AND code LIKE '#%' "
                      "ORDER BY row_no", {}, "code", NEEDS_CODE)
    await _row_errors(session, sheet, (
        "SELECT t.row_no FROM import_areas t JOIN areas a ON a.id = t.existing_id "
        "WHERE NOT (a.path LIKE ANY(CAST(:patterns AS text[]))) ORDER BY t.row_no"), scope, "code", AREA_OUT_OF_SCOPE)
    await _row_errors(session, sheet, (
        f"SELECT t.row_no FROM import_areas t JOIN areas a ON a.id = t.existing_id JOIN areas p ON p.id = a.parent_id "
        f"WHERE ({_AREA_CODE_SQL.replace('a.', 'p.')} <> t.parent_code AND '#' || p.id <> t.parent_code) "
        "OR a.kind::text <> t.kind ORDER BY t.row_no"), {}, "parent_code", PARENT_DIFFERS)
    # New rows: a parent stored in scope (by code, else #id), or a row of the file.
    await session.execute(sql(
        "UPDATE import_areas t SET parent_id = p.id, path = p.path FROM areas p WHERE t.existing_id IS NULL "
        f"AND (p.code = t.parent_code OR (t.parent_code ~ {_ID_REF} AND p.id = CAST(substr(t.parent_code, 2) AS bigint))) "
        "AND p.path LIKE ANY(CAST(:patterns AS text[]))"), scope)
    await _row_errors(session, sheet, (
        "SELECT t.row_no FROM import_areas t WHERE t.existing_id IS NULL AND t.parent_id IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM import_areas f WHERE f.code = t.parent_code AND f.existing_id IS NULL) "
        "ORDER BY t.row_no"), {}, "parent_code", UNKNOWN_PARENT)
    await _row_errors(session, sheet, (
        f"SELECT t.row_no FROM import_areas t LEFT JOIN areas p ON p.id = t.parent_id "
        "LEFT JOIN import_areas f ON t.parent_id IS NULL AND f.code = t.parent_code "
        f"WHERE t.existing_id IS NULL AND array_position({_KINDS_SQL}, t.kind) "
        f"<= array_position({_KINDS_SQL}, COALESCE(p.kind::text, f.kind)) ORDER BY t.row_no"), {}, "kind", KIND_ORDER)
    sheet.raise_if_invalid()

    await session.execute(sql(
        "UPDATE import_areas SET id = nextval(pg_get_serial_sequence('areas', 'id')) WHERE existing_id IS NULL"))
    # Paths from the stored parents down through the file's rows, in one recursive query;
    # a row it never reaches hangs on a cycle of the file's own rows.
    await session.execute(sql(
        "WITH RECURSIVE placed AS ("
        " SELECT t.row_no, t.code, t.id, t.parent_id, t.path || t.id || '/' AS path FROM import_areas t"
        " WHERE t.existing_id IS NULL AND t.parent_id IS NOT NULL"
        " UNION ALL"
        " SELECT c.row_no, c.code, c.id, p.id, p.path || c.id || '/' FROM import_areas c"
        " JOIN placed p ON p.code = c.parent_code WHERE c.existing_id IS NULL AND c.parent_id IS NULL"
        ") UPDATE import_areas t SET parent_id = placed.parent_id, path = placed.path FROM placed "
        "WHERE placed.row_no = t.row_no"))
    await _row_errors(session, sheet, (
        "SELECT row_no FROM import_areas WHERE existing_id IS NULL AND (path IS NULL OR path NOT LIKE '%/' || id || '/') "
        "ORDER BY row_no"), {}, "parent_code", PARENT_CYCLE)
    sheet.raise_if_invalid()

    inserted = _rowcount(await session.execute(sql(
        "INSERT INTO areas (id, parent_id, name, kind, path, code, address) "
        "SELECT id, parent_id, name, kind, path, code, address FROM import_areas "
        "WHERE existing_id IS NULL ORDER BY path")))
    changed = "a.name IS DISTINCT FROM t.name" + (" OR a.address IS DISTINCT FROM t.address" if has_address else "")
    differing = (await session.execute(sql(
        f"SELECT count(*) FROM import_areas t JOIN areas a ON a.id = t.existing_id WHERE {changed}"))).scalar_one()
    updated = 0
    if update_existing and differing:
        assignments = "name = t.name" + (", address = t.address" if has_address else "")
        updated = _rowcount(await session.execute(sql(
            f"UPDATE areas a SET {assignments} FROM import_areas t WHERE a.id = t.existing_id AND ({changed})")))
    skipped = 0 if update_existing else int(differing)
    await session.execute(sql("DROP TABLE import_areas"))
    return ImportResult(inserted=int(inserted), updated=int(updated),
                        unchanged=len(records) - int(inserted) - int(updated) - skipped, skipped=skipped)
