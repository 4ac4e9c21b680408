"""Archives over plain HTTP: Excel export, template and import of households, meters,
concentrators and meter assignments (``/exports/{kind}.xlsx``, ``/templates/{kind}.xlsx``,
``/imports/{kind}``, kind one of households, meters, concentrators, assignments, areas), all
shaped like the household routes below. Export filters follow each list: meters
``areaId``, ``status``, ``meterType``, ``kind``, ``concentratorId``, ``search``, ``assigned``, ``modelId``;
concentrators ``areaId``, ``status``, ``connection``, ``search``; assignments ``areaId``
(the household's), ``search``, ``current`` (true/false); areas ``areaId``, ``search`` (code
or name): the tree below the companies, each row naming its parent by code. Terminal passwords are never
exported; imported ones are stored encrypted.

- ``GET /exports/households.xlsx`` (``archives:read``): the households in the caller's
  scope, filtered like the list (``areaId`` subtree, ``search``, ``status``, ``customerType``,
  ``hasMeter``), streamed from
  a server-side cursor into a write-only workbook. Bearer token or a signed ``token`` link.
- ``GET /templates/households.xlsx``: the import template (any signed-in staff).
- ``POST /imports/households`` (``archives:manage``): a multipart upload (``file``, and
  ``updateExisting`` = true/false as a form field or query parameter). The whole file is
  validated first; any bad row refuses it (422 with the same body, ``errors`` listing
  every bad row up to a cap and ``errorCount`` counting them all, plus ``code``
  IMPORT_ROWS_INVALID) and nothing is written; a file that is not a workbook of this sheet
  (NOT_XLSX, MISSING_COLUMNS, UNKNOWN_COLUMNS, …) is a 400 shaped like /graphql's errors.
  Otherwise one transaction inserts/updates set-based and
  writes one audit entry; the answer is ``{inserted, updated, unchanged, skipped,
  errors: [], errorCount: 0}``: ``unchanged`` rows equal what is stored, ``skipped`` rows
  differ from it but were left alone because ``updateExisting`` was false (an assignment
  row that differs is refused instead, so assignments never skip).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backend import db
from backend.archives import excel as archive_excel
from backend.archives.excel import (
    CUSTOMER_TYPES,
    HOUSEHOLD_EXPORT_SHEET,
    HOUSEHOLD_SHEET,
    HOUSEHOLD_STATUSES,
    HouseholdExportFilter,
    household_export_rows,
    import_households,
)
from backend.archives.service import TerminalPasswordCipher
from backend.audit.service import record_operation
from backend.auth.http import client_ip
from backend.auth.principal import Principal
from backend.auth.service import AuthPolicy
from backend.clock import utcnow
from backend.domain import HttpHost
from backend.edge import body_limit
from backend.errors import BadUserInput, DomainError, Forbidden
from backend.exports import excel
from backend.exports.http import (
    admitted,
    caller,
    refusal,
)
from backend.files.http import serve_export
from backend.files.service import FileStore
from backend.graphql.limits import AdmissionRefused
from backend.graphql.relay import decode_id
from backend.observability import request_id_var

EXPORT_PATH = "/exports/households.xlsx"
TEMPLATE_PATH = "/templates/households.xlsx"
IMPORT_PATH = "/imports/households"
READ_PERMISSION = "archives:read"
MANAGE_PERMISSION = "archives:manage"


def _flag(value: str | None, name: str) -> bool:
    if value in (None, "", "false", "0", "no"):
        return False
    if value in ("true", "1", "yes", "on"):
        return True
    raise BadUserInput(f"{name} 须为 true 或 false", f"{name} must be true or false", field=name)


async def _area_path(read_engine: AsyncEngine, params: dict[str, str]) -> str | None:
    if not params.get("areaId"):
        return None
    area_id = decode_id(params["areaId"], "Area", field="areaId")
    async with db.raw_read(read_engine) as connection:
        path: str | None = await connection.fetchval("SELECT path FROM areas WHERE id = $1", area_id)
    # An unknown area filters to nothing (as one outside the scope does): existence does not leak.
    return path if path is not None else "/unknown/"


def _export_filter(params: dict[str, str]) -> HouseholdExportFilter:
    for name, value in params.items():
        if "\x00" in value:
            raise BadUserInput("文本不能包含 NUL 字符", "Text must not contain NUL characters", field=name)
    status = params.get("status") or None
    if status is not None and status not in HOUSEHOLD_STATUSES:
        raise BadUserInput("状态无效", "Unknown status", field="status")
    customer_type = params.get("customerType") or None
    if customer_type is not None and customer_type not in CUSTOMER_TYPES:
        raise BadUserInput("用户类型无效", "Unknown customer type", field="customerType")
    has_meter = params.get("hasMeter") or None
    if has_meter is not None and has_meter not in ("true", "false"):
        raise BadUserInput("hasMeter 须为 true 或 false", "hasMeter must be true or false", field="hasMeter")
    return HouseholdExportFilter(search=(params.get("search") or "").strip() or None, status=status,
                                 customer_type=customer_type,
                                 has_meter=None if has_meter is None else has_meter == "true")


@dataclass(frozen=True, slots=True)
class DeviceSheet:
    """One device kind's Excel routes: its paths, sheets, filter, rows and import."""

    kind: str
    label: str
    import_sheet: excel.SheetSpec
    export_sheet: excel.SheetSpec
    action: str  # audit action suffix: Meters, Concentrators, Assignments
    filters: dict[str, dict[str, str] | None]  # query parameter -> allowed values (None: free)

    @property
    def export_path(self) -> str:
        return f"/exports/{self.kind}.xlsx"

    @property
    def template_path(self) -> str:
        return f"/templates/{self.kind}.xlsx"

    @property
    def import_path(self) -> str:
        return f"/imports/{self.kind}"


METERS = DeviceSheet("meters", "水表", archive_excel.METER_SHEET, archive_excel.METER_SHEET, "Meters", {
    "status": archive_excel.METER_STATUSES, "meterType": archive_excel.METER_TYPES, "kind": archive_excel.METER_KINDS,
    "concentratorId": None, "search": None, "assigned": {"true": "", "false": ""}, "modelId": None,
})
CONCENTRATORS = DeviceSheet(
    "concentrators", "集中器", archive_excel.CONCENTRATOR_SHEET, archive_excel.CONCENTRATOR_EXPORT_SHEET, "Concentrators",
    {"status": archive_excel.DEVICE_STATUSES, "connection": archive_excel.CONNECTION_KINDS, "search": None},
)
ASSIGNMENTS = DeviceSheet("assignments", "表计分配", archive_excel.ASSIGNMENT_SHEET, archive_excel.ASSIGNMENT_SHEET,
                          "Assignments", {"current": {"true": "", "false": ""}, "search": None})
# The area tree below the companies, each row naming its parent by code (区域导入).
AREAS = DeviceSheet("areas", "区域", archive_excel.AREA_SHEET, archive_excel.AREA_SHEET, "Areas", {"search": None})
DEVICE_SHEETS = (METERS, CONCENTRATORS, ASSIGNMENTS, AREAS)
_FILTER_FIELDS = {"meterType": "meter_type", "concentratorId": "concentrator_id"}


def _device_filter(sheet: DeviceSheet, params: dict[str, str], area_path: str | None) -> archive_excel.DeviceExportFilter:
    values: dict[str, Any] = {"area_path": area_path}
    for name, value in params.items():
        if "\x00" in value:
            raise BadUserInput("文本不能包含 NUL 字符", "Text must not contain NUL characters", field=name)
    for name, allowed in sheet.filters.items():
        raw = (params.get(name) or "").strip()
        if not raw:
            continue
        if allowed is not None and raw not in allowed:
            raise BadUserInput(f"{name} 无效", f"Unknown {name}", field=name)
        if name == "concentratorId":
            values["concentrator_id"] = decode_id(raw, "Concentrator", field=name)
        elif name == "modelId":
            values["model_id"] = decode_id(raw, "MeterModel", field=name)
        elif name in ("current", "assigned"):
            values[name] = raw == "true"
        else:
            values[_FILTER_FIELDS.get(name, name)] = raw
    return archive_excel.DeviceExportFilter(**values)


def routes(host: HttpHost) -> list[Route]:
    sessions, read_engine, settings = host.sessions, host.read_engine, host.settings
    files: FileStore = host.services["files"]
    policy = AuthPolicy.from_settings(settings)
    tz = settings.tz
    limits = excel.UploadLimits.from_settings(settings)
    limited_body = body_limit(settings.import_max_body_bytes)
    bulk_limits = db.StatementLimits.for_bulk(settings)

    async def audited(principal: Principal | None, request: Request, *, action: str, summary: str,
                      payload: dict[str, Any], success: bool) -> None:
        async with sessions() as session, session.begin():
            await record_operation(
                session, at=utcnow(), actor=principal, module="archives", action=action, summary=summary,
                payload=payload, success=success, ip=client_ip(request), request_id=request_id_var.get(),
            )

    async def export_households(request: Request) -> Response:
        params = {key: value for key, value in request.query_params.items() if key != "token"}
        try:
            principal = await caller(request, read_engine=read_engine, sessions=sessions, policy=policy, purpose=EXPORT_PATH)
        except DomainError as error:
            return refusal(error, 401)
        if not principal.has(READ_PERMISSION):
            return refusal(Forbidden(), 403)
        try:
            export_filter = _export_filter(params)
            area_path = await _area_path(read_engine, params)
        except DomainError as error:
            return refusal(error, 400)
        export_filter = dataclasses.replace(export_filter, area_path=area_path)
        counted = 0

        async def rows() -> Any:
            nonlocal counted
            async with db.raw_read(read_engine) as connection:
                async for row in household_export_rows(
                    connection, scope_patterns=principal.scope_patterns(), export_filter=export_filter
                ):
                    counted += 1
                    yield row

        try:
            async with admitted(request, principal):
                path = await excel.write_rows(HOUSEHOLD_EXPORT_SHEET, rows(), prefix="shuiwu-households-",
                                              directory=str(files.spool_directory()))
        except AdmissionRefused as error:
            return refusal(error, 429)
        try:
            await audited(principal, request, action="exportHouseholds", summary=f"导出住户: {counted} 户",
                          payload={**params, "rows": counted}, success=True)
        except BaseException:
            excel.discard(path)
            raise
        return await serve_export(files, sessions, path, filename=f"households-{utcnow().astimezone(tz):%Y%m%d}.xlsx",
                                  owner=principal)

    async def households_template(request: Request) -> Response:
        try:
            await caller(request, read_engine=read_engine, sessions=sessions, policy=policy, purpose=TEMPLATE_PATH)
        except DomainError as error:
            return refusal(error, 401)
        content = await asyncio.to_thread(excel.template, HOUSEHOLD_SHEET)
        return Response(content, media_type=excel.XLSX_MEDIA_TYPE, headers={
            "Content-Disposition": 'attachment; filename="households-template.xlsx"', "Cache-Control": "no-store",
        })

    async def run_import(request: Request, spec: excel.SheetSpec, action: str, label: str,
                         write: Callable[[AsyncSession, excel.ValidatedSheet, Principal, bool], Any]) -> Response:
        """Authenticate, read and validate the whole upload, then write it in one
        transaction with its audit entry (or refuse it, audited, writing nothing)."""
        try:
            principal = await caller(request, read_engine=read_engine, sessions=sessions, policy=policy)
        except DomainError as error:
            return refusal(error, 401)
        if not principal.has(MANAGE_PERMISSION):
            await audited(principal, request, action=action,
                          summary=f"导入{label}: 拒绝 (缺少权限 {MANAGE_PERMISSION})", payload={}, success=False)
            return refusal(Forbidden(), 403)
        async with request.form(max_files=1, max_fields=10) as form:
            upload = form.get("file")
            try:
                update_existing = _flag(
                    str(form.get("updateExisting") or request.query_params.get("updateExisting") or ""), "updateExisting"
                )
                if not isinstance(upload, UploadFile):
                    raise BadUserInput("请上传文件 (字段 file)", "Upload the workbook as the form field 'file'", field="file")
            except DomainError as error:
                return refusal(error, 400)
            filename = upload.filename or ""
            payload: dict[str, Any] = {"filename": filename, "updateExisting": update_existing}
            try:
                async with admitted(request, principal):
                    budget = limits.start()
                    sheet = await asyncio.to_thread(excel.read_rows, spec, upload.file, limits=limits, budget=budget)
                    # Validation against the database and the write share the budget; running
                    # out rolls the transaction back.
                    async with excel.within_budget(budget), sessions() as session, session.begin():
                        await db.extend_limits(session, bulk_limits)  # 100k rows set-based are long statements
                        result = await write(session, sheet, principal, update_existing)
                        counts = result.as_json()
                        await record_operation(
                            session, at=utcnow(), actor=principal, module="archives", action=action,
                            summary=f"导入{label}: 新增 {result.inserted}, 更新 {result.updated}, 未变 {result.unchanged}, "
                                    f"跳过 {result.skipped}",
                            payload={**payload, **counts}, success=True, ip=client_ip(request), request_id=request_id_var.get(),
                        )
            except AdmissionRefused as error:
                return refusal(error, 429)  # busy, not refused: nothing to put on record
            except excel.ImportRowsInvalid as invalid:
                await audited(principal, request, action=action,
                              summary=f"导入{label}: 拒绝 ({invalid.error_count} 处错误)",
                              payload={**payload, "errorCount": invalid.error_count}, success=False)
                return JSONResponse({
                    "inserted": 0, "updated": 0, "unchanged": 0, "skipped": 0, "errors": [e.as_json() for e in invalid.errors],
                    "errorCount": invalid.error_count, "code": invalid.code.value, "message": invalid.message,
                    "messageEn": invalid.message_en,
                }, 422)
            except DomainError as error:
                await audited(principal, request, action=action, summary=f"导入{label}: 拒绝 ({error.message})",
                              payload={**payload, "code": error.code.value}, success=False)
                return refusal(error, 400)
        return JSONResponse({**counts, "errors": [], "errorCount": 0})

    @limited_body
    async def import_households_route(request: Request) -> Response:
        today = utcnow().astimezone(tz).date()
        return await run_import(request, HOUSEHOLD_SHEET, "importHouseholds", "住户",
                                lambda session, sheet, principal, update: import_households(
                                    session, sheet=sheet, scope_patterns=principal.scope_patterns(),
                                    update_existing=update, today=today))

    cipher = TerminalPasswordCipher(settings.secret())
    tz_name = str(tz)

    def device_rows(sheet: DeviceSheet, principal: Principal, export_filter: archive_excel.DeviceExportFilter,
                    counter: list[int]) -> AsyncIterator[tuple[Any, ...]]:
        async def rows() -> AsyncIterator[tuple[Any, ...]]:
            async with db.raw_read(read_engine) as connection:
                scope = principal.scope_patterns()
                source: AsyncIterator[tuple[Any, ...]]
                if sheet is METERS:
                    source = archive_excel.meter_export_rows(connection, scope_patterns=scope, export_filter=export_filter)
                elif sheet is CONCENTRATORS:
                    source = archive_excel.concentrator_export_rows(connection, scope_patterns=scope, export_filter=export_filter)
                elif sheet is AREAS:
                    source = archive_excel.area_export_rows(connection, scope_patterns=scope, export_filter=export_filter)
                else:
                    source = archive_excel.assignment_export_rows(connection, scope_patterns=scope, export_filter=export_filter,
                                                                  tz=tz_name)
                async for row in source:
                    counter[0] += 1
                    yield row

        return rows()

    async def device_import(sheet: DeviceSheet, session: AsyncSession, validated: excel.ValidatedSheet,
                            principal: Principal, update_existing: bool) -> archive_excel.ImportResult:
        scope = principal.scope_patterns()
        if sheet is METERS:
            return await archive_excel.import_meters(session, sheet=validated, scope_patterns=scope, update_existing=update_existing)
        if sheet is AREAS:
            return await archive_excel.import_areas(session, sheet=validated, scope_patterns=scope,
                                                    update_existing=update_existing)
        if sheet is CONCENTRATORS:
            return await archive_excel.import_concentrators(session, sheet=validated, scope_patterns=scope,
                                                            update_existing=update_existing, cipher=cipher)
        return await archive_excel.import_assignments(session, sheet=validated, scope_patterns=scope,
                                                      update_existing=update_existing, tz=tz_name, now=utcnow())

    def device_routes(sheet: DeviceSheet) -> list[Route]:
        async def export(request: Request) -> Response:
            params = {key: value for key, value in request.query_params.items() if key != "token"}
            try:
                principal = await caller(request, read_engine=read_engine, sessions=sessions, policy=policy,
                                         purpose=sheet.export_path)
            except DomainError as error:
                return refusal(error, 401)
            if not principal.has(READ_PERMISSION):
                return refusal(Forbidden(), 403)
            try:
                export_filter = _device_filter(sheet, params, await _area_path(read_engine, params))
            except DomainError as error:
                return refusal(error, 400)
            counter = [0]
            try:
                async with admitted(request, principal):
                    path = await excel.write_rows(sheet.export_sheet, device_rows(sheet, principal, export_filter, counter),
                                                  prefix=f"shuiwu-{sheet.kind}-", directory=str(files.spool_directory()))
            except AdmissionRefused as error:
                return refusal(error, 429)
            try:
                await audited(principal, request, action=f"export{sheet.action}", summary=f"导出{sheet.label}: {counter[0]} 行",
                              payload={**params, "rows": counter[0]}, success=True)
            except BaseException:
                excel.discard(path)
                raise
            return await serve_export(files, sessions, path, filename=f"{sheet.kind}-{utcnow().astimezone(tz):%Y%m%d}.xlsx",
                                      owner=principal)

        async def template(request: Request) -> Response:
            try:
                await caller(request, read_engine=read_engine, sessions=sessions, policy=policy, purpose=sheet.template_path)
            except DomainError as error:
                return refusal(error, 401)
            content = await asyncio.to_thread(excel.template, sheet.import_sheet)
            return Response(content, media_type=excel.XLSX_MEDIA_TYPE, headers={
                "Content-Disposition": f'attachment; filename="{sheet.kind}-template.xlsx"', "Cache-Control": "no-store",
            })

        @limited_body
        async def import_route(request: Request) -> Response:
            return await run_import(request, sheet.import_sheet, f"import{sheet.action}", sheet.label,
                                    lambda session, validated, principal, update: device_import(
                                        sheet, session, validated, principal, update))

        return [
            Route(sheet.export_path, export, methods=["GET"]),
            Route(sheet.template_path, template, methods=["GET"]),
            Route(sheet.import_path, import_route, methods=["POST"]),
        ]

    return [
        *(route for sheet in DEVICE_SHEETS for route in device_routes(sheet)),
        Route(EXPORT_PATH, export_households, methods=["GET"]),
        Route(TEMPLATE_PATH, households_template, methods=["GET"]),
        Route(IMPORT_PATH, import_households_route, methods=["POST"]),
    ]
