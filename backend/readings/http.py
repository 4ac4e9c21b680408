"""Readings over plain HTTP: the Excel export of every readings screen.

- ``GET /exports/readings/{screen}.xlsx?columns=…&filters=…&token=…``: the screen's rows
  for the caller's scope, as a streamed write-only workbook. ``columns`` are the screen's
  column keys, comma-separated, in display order (empty: its default columns); ``filters``
  the screen's JSON filter object. The link comes from the ``readingsExportUrl`` query,
  signed for the caller, this screen and exactly these parameters (5 minutes); a Bearer
  token works too. The screen's permission is checked again at download time. The file
  is written into the file storage's staging directory and streamed from the storage
  (``backend.files.http.serve_export``), deleted when the response ends.

Screens register themselves when their module is imported
(:data:`backend.readings.screens.SCREEN_MODULES`); importing this module imports them all.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backend import db
from backend.audit.service import record_operation
from backend.auth.catalog import module_of
from backend.auth.http import client_ip
from backend.auth.principal import Principal
from backend.auth.service import AuthPolicy
from backend.clock import utcnow
from backend.domain import HttpHost
from backend.edge import body_limit
from backend.errors import BadUserInput, DomainError, ErrorCode, Forbidden
from backend.exports import excel
from backend.exports.excel import XLSX_MEDIA_TYPE, UploadLimits, within_budget
from backend.exports.http import (
    admitted,
    caller,
    refusal,
)
from backend.files.http import serve_export
from backend.files.service import FileStore
from backend.graphql.limits import AdmissionRefused
from backend.observability import request_id_var
from backend.readings import entry
from backend.readings.screens import (
    EXPORT_PREFIX,
    Screen,
    ScreenKind,
    choose_columns,
    export_path,
    export_request,
    get_screen,
    load_screens,
    write_screen,
)
from backend.settings import Settings

load_screens()


def parse_export_params(params: dict[str, str]) -> tuple[list[str], dict[str, Any]]:
    columns = [key for key in (params.get("columns") or "").split(",") if key]
    try:
        filters = json.loads(params.get("filters") or "{}")
    except ValueError:
        filters = None
    if not isinstance(filters, dict):
        raise DomainError("筛选条件须为 JSON 对象", "filters must be a JSON object", field="filters", code=ErrorCode.INVALID)
    return columns, filters


def may_export(principal: Principal, screen: Screen) -> bool:
    return principal.has(screen.permission)


def routes(host: HttpHost) -> list[Route]:
    sessions, read_engine, settings = host.sessions, host.read_engine, host.settings
    files: FileStore = host.services["files"]
    policy = AuthPolicy.from_settings(settings)
    tz_name = str(settings.tz)
    # A year of daily rows for the whole company is one long aggregate.
    bulk_limits = db.StatementLimits.for_bulk(settings)

    async def audited(principal: Principal, request: Request, screen: Screen, *, summary: str, payload: dict[str, Any],
                      success: bool) -> None:
        async with sessions() as session, session.begin():
            await record_operation(
                session, at=utcnow(), actor=principal, module=module_of(screen.permission),
                action=f"export{screen.kind.value.capitalize()}", summary=summary,
                payload=payload, success=success, ip=client_ip(request), request_id=request_id_var.get(),
            )

    async def export(request: Request) -> Response:
        try:
            kind = ScreenKind(request.path_params["screen"])
        except ValueError:
            return refusal(DomainError("页面不存在", "Unknown screen", field="screen", code=ErrorCode.NOT_FOUND), 404)
        try:
            principal = await caller(request, read_engine=read_engine, sessions=sessions, policy=policy,
                                     purpose=export_path(kind))
        except DomainError as error:
            return refusal(error, 401)
        try:
            screen = get_screen(kind)
        except DomainError as error:
            return refusal(error, 404)
        params = {key: value for key, value in request.query_params.items() if key != "token"}
        if not may_export(principal, screen):
            # A link outlives a revoked permission by up to its TTL: the refused try is on record.
            await audited(principal, request, screen, summary=f"导出{screen.title}: 拒绝 (缺少权限 {screen.permission})",
                          payload={**params, "code": ErrorCode.FORBIDDEN.value}, success=False)
            return refusal(Forbidden(), 403)
        try:
            keys, filters = parse_export_params(params)
            columns = choose_columns(screen, keys)
        except DomainError as error:
            await audited(principal, request, screen, summary=f"导出{screen.title}: 失败 ({error.message})",
                          payload={**params, "code": error.code.value}, success=False)
            return refusal(error, 400)
        now = utcnow()
        export_for = export_request(principal, filters=filters, tz=tz_name, now=now)
        try:
            async with admitted(request, principal), sessions() as session, session.begin():
                await db.extend_limits(session, bulk_limits)
                path, count = await write_screen(screen, columns, screen.rows(session, export_for),
                                                 directory=str(files.spool_directory()))
        except AdmissionRefused as error:
            return refusal(error, 429)  # busy, not refused: nothing to put on record
        except DomainError as error:
            await audited(principal, request, screen, summary=f"导出{screen.title}: 失败 ({error.message})",
                          payload={**params, "code": error.code.value}, success=False)
            return refusal(error, 404 if error.code is ErrorCode.NOT_FOUND else 400)
        try:
            await audited(principal, request, screen, summary=f"导出{screen.title}: {count} 行",
                          payload={**params, "rows": count}, success=True)
        except BaseException:
            excel.discard(path)
            raise
        return await serve_export(files, sessions, path, filename=f"{kind.value}-{now.astimezone(settings.tz):%Y%m%d}.xlsx",
                                  owner=principal)

    return [Route(EXPORT_PREFIX + "{screen}.xlsx", export, methods=["GET"]), *upload_routes(sessions, read_engine, settings)]


# --------------------------------------------------------------------------- uploads of manual reads

UPLOAD_PATH = "/imports/readings"
UPLOAD_TEMPLATE_PATH = "/templates/readings.xlsx"
WRITE_PERMISSION = "readings:write"


def _flag(form_value: object, query_value: str | None, name: str) -> bool:
    value = str(form_value if form_value is not None else query_value or "").strip().lower()
    if value in ("", "false", "0", "no", "off"):
        return False
    if value in ("true", "1", "yes", "on"):
        return True
    raise BadUserInput(f"{name} 须为 true 或 false", f"{name} must be true or false", field=name)


def upload_routes(sessions: async_sessionmaker[AsyncSession], read_engine: AsyncEngine, settings: Settings) -> list[Route]:
    """``POST /imports/readings`` (readings:write, Bearer token): a multipart upload of manual
    reads (``file``: .xlsx or .csv with 表计编码, 抄表时间, 累计读数; ``dryRun`` and ``strict``
    as form fields or query parameters). Answers ``{inserted, replaced, duplicates, rejected:
    [{row, code, message, messageEn}], written}``: 200 when the good rows were stored (or a
    dry run), 422 when ``strict`` refused the file for its bad rows (nothing written); a file
    that cannot be read or is past a content limit (unpacked size, rows, time) is a 400; a body
    past ``SHUIWU_IMPORT_MAX_BODY_BYTES`` is 413 BODY_TOO_LARGE (the edge). Audited either way.
    ``GET /templates/readings.xlsx``: the template (any signed-in caller)."""
    policy = AuthPolicy.from_settings(settings)
    tz = settings.tz
    limits = UploadLimits.from_settings(settings)

    async def audited(principal: Principal, request: Request, *, summary: str, payload: dict[str, Any],
                      success: bool) -> None:
        async with sessions() as session, session.begin():
            await record_operation(
                session, at=utcnow(), actor=principal, module=module_of(WRITE_PERMISSION), action="importReadings",
                summary=summary, payload=payload, success=success, ip=client_ip(request), request_id=request_id_var.get(),
            )

    @body_limit(settings.import_max_body_bytes)
    async def import_readings(request: Request) -> Response:
        try:
            principal = await caller(request, read_engine=read_engine, sessions=sessions, policy=policy)
        except DomainError as error:
            return refusal(error, 401)
        if not principal.has(WRITE_PERMISSION):
            await audited(principal, request, summary=f"导入抄表读数: 拒绝 (缺少权限 {WRITE_PERMISSION})", payload={},
                          success=False)
            return refusal(Forbidden(), 403)
        payload: dict[str, Any] = {}
        try:
            async with request.form(max_files=1, max_fields=10) as form:
                dry_run = _flag(form.get("dryRun"), request.query_params.get("dryRun"), "dryRun")
                strict = _flag(form.get("strict"), request.query_params.get("strict"), "strict")
                upload = form.get("file")
                if not isinstance(upload, UploadFile):
                    raise BadUserInput("请上传文件 (字段 file)", "Upload the file as the form field 'file'", field="file")
                payload = {"filename": upload.filename or "", "dryRun": dry_run, "strict": strict}
                content = await upload.read()  # bounded by the route's body limit
            async with admitted(request, principal):
                budget = limits.start()
                parsed = await asyncio.to_thread(entry.read_upload, content, limits=limits, budget=budget)
                async with within_budget(budget), sessions() as session, session.begin():
                    await db.extend_limits(session, db.StatementLimits.for_bulk(settings))
                    result = await entry.import_readings(
                        session, upload=parsed, by=principal.name, now=utcnow(), tz=tz,
                        scope_patterns=principal.scope_patterns(), dry_run=dry_run, strict=strict,
                    )
                    verb = "试导入抄表读数" if dry_run else "导入抄表读数"
                    outcome = "" if result.written or dry_run else " (有错误行, 未写入)"
                    await record_operation(
                        session, at=utcnow(), actor=principal, module=module_of(WRITE_PERMISSION), action="importReadings",
                        summary=f"{verb}: 新增 {result.inserted}, 替换 {result.replaced}, 重复 {result.duplicates}, "
                                f"未导入 {len(result.rejected)} 行{outcome}",
                        payload={**payload, "inserted": result.inserted, "replaced": result.replaced,
                                 "duplicates": result.duplicates, "rejected": len(result.rejected), "written": result.written},
                        success=True, ip=client_ip(request), request_id=request_id_var.get(),
                    )
        except AdmissionRefused as error:
            return refusal(error, 429)
        except DomainError as error:
            await audited(principal, request, summary=f"导入抄表读数: 拒绝 ({error.message})",
                          payload={**payload, "code": error.code.value}, success=False)
            return refusal(error, 400)
        refused = strict and not dry_run and not result.written and bool(result.rejected)
        return JSONResponse(result.as_json(), 422 if refused else 200)

    async def template(request: Request) -> Response:
        try:
            await caller(request, read_engine=read_engine, sessions=sessions, policy=policy, purpose=UPLOAD_TEMPLATE_PATH)
        except DomainError as error:
            return refusal(error, 401)
        content = await asyncio.to_thread(entry.upload_template)
        return Response(content, media_type=XLSX_MEDIA_TYPE, headers={
            "Content-Disposition": 'attachment; filename="readings-template.xlsx"', "Cache-Control": "no-store",
        })

    return [
        Route(UPLOAD_PATH, import_readings, methods=["POST"]),
        Route(UPLOAD_TEMPLATE_PATH, template, methods=["GET"]),
    ]
