"""The meter sheet (水表): its columns, its export and its import, keyed on the meter code."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import errors as archive_errors
from backend.archives import service as _service  # the validators the forms use
from backend.archives.excel.cells import _area_ref, _label, _reading
from backend.archives.excel.exporting import _AREA_CODE_SQL, DeviceExportFilter, _like_pattern, _stream, _Where
from backend.archives.excel.importing import (
    CROSS_AREA,
    ImportResult,
    _count_differing,
    _lock_for_the_subtree_rule,
    _resolve_areas,
    _row_errors,
    _temp_table,
    _upsert_clause,
)
from backend.exports.excel import Column, SheetSpec, ValidatedSheet, choice, day, integer, text

METER_TYPES = {"cold_water": "冷水表", "hot_water": "热水表", "flow_monitor": "流量计", "pressure_monitor": "压力计"}
METER_KINDS = {"household": "户表", "monitoring": "监测点"}
METER_STATUSES = {"in_stock": "库存", "installed": "在用", "faulty": "故障", "retired": "报废"}
_CONCENTRATOR_REF = r"[0-9]{4}-[0-9]{1,5}"

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


async def meter_export_rows(
    connection: Any, *, scope_patterns: Sequence[str], export_filter: DeviceExportFilter, chunk_rows: int = 5000,
) -> AsyncIterator[tuple[Any, ...]]:
    """Rows of :data:`METER_SHEET` for the meters in scope matching the list's filter
    (area subtree, status, type, kind, concentrator, model, free text), in code order."""
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
    if export_filter.model_id is not None:
        where.add("m.model_id = {}", export_filter.model_id)
    # The list's assigned (service.meter_page_query).
    serving = "EXISTS (SELECT 1 FROM meter_assignments s WHERE s.meter_id = m.id AND s.valid_to IS NULL)"
    if export_filter.assigned is True:
        where.conditions.append(serving)
    elif export_filter.assigned is False:
        where.conditions.append(f"m.kind = 'household' AND m.status IN ('in_stock', 'installed') AND NOT {serving}")
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
    if update_existing:
        # A station's instrument stands in the station's area and stays a flow or pressure
        # monitoring point (backend.archives.service.stations): as updateMeter refuses it.
        await _row_errors(session, sheet, (
            "SELECT t.row_no FROM import_meters t JOIN meters m ON m.code = t.code "
            "JOIN monitoring_stations st ON st.id = m.station_id WHERE t.area_id <> st.area_id ORDER BY t.row_no"
        ), {}, "area_code", ("监测站仪表的区域随监测站变化", "A station instrument's area follows its station"))
        kind = "COALESCE(t.kind, 'household')" if "kind" in present else "m.kind"
        await _row_errors(session, sheet, (
            "SELECT t.row_no FROM import_meters t JOIN meters m ON m.code = t.code WHERE m.station_id IS NOT NULL "
            f"AND ({kind} <> 'monitoring' OR t.meter_type NOT IN ('flow_monitor', 'pressure_monitor')) ORDER BY t.row_no"
        ), {}, "meter_type", ("监测站仪表只能是流量或压力监测点, 请先移出监测站",
                              "A station instrument measures flow or pressure; detach it first"))
    if update_existing and "kind" in present:
        await _row_errors(session, sheet, (
            "SELECT t.row_no FROM import_meters t JOIN meters m ON m.code = t.code WHERE t.kind = 'monitoring' "
            "AND EXISTS (SELECT 1 FROM meter_assignments s WHERE s.meter_id = m.id AND s.valid_to IS NULL) ORDER BY t.row_no"
        ), {}, "kind", ("在用的住户水表不能改为监测点", "A meter serving a household cannot become a monitoring point"))
    sheet.raise_if_invalid()

    defaults = {"kind": "'household'", "initial_reading": "0"}
    # A new meter always gets its kind (a file without 类别 inserts household meters: the
    # column has no server default); a stored one keeps it unless the file has the column.
    target = ["code", "name", "protocol", "address", "meter_type", "area_id", "kind"]
    target += [key for key in ("install_date", "initial_reading", "location", "port", "measurement_point", "mqtt_topic")
               if key in present]
    if "model_vendor" in present or "model_name" in present:
        target.append("model_id")
    if "concentrator" in present:
        target += ["concentrator_id", "collector_id"]
    selected = [f"COALESCE(t.{key}, {defaults[key]})" if key in defaults else f"t.{key}" for key in target]
    changing = [(key, value) for key, value in zip(target, selected, strict=True)
                if key != "code" and (key != "kind" or "kind" in present)]
    conflict = _upsert_clause([key for key, _ in changing], "m", update_existing)
    skipped = 0 if update_existing else await _count_differing(
        session, table="meters", alias="m", temp="import_meters", match="m.code = t.code",
        columns=[key for key, _ in changing], incoming=[value for _, value in changing])
    statement = (
        f"WITH upserted AS (INSERT INTO meters AS m ({', '.join(target)}) SELECT {', '.join(selected)} "
        f"FROM import_meters t ORDER BY t.row_no ON CONFLICT (code) {conflict} RETURNING (m.xmax = 0) AS inserted) "
        "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM upserted"
    )
    inserted, updated = (await session.execute(sql(statement))).one()
    await session.execute(sql("DROP TABLE import_meters"))
    return ImportResult(inserted=inserted, updated=updated, unchanged=len(records) - inserted - updated - skipped,
                        skipped=skipped)
