"""``GET /exports/audit-log.xlsx``: the operation log (操作日志) as an Excel download.

A browser cannot put an ``Authorization`` header on a plain link, so the ``auditLogExportUrl``
query hands out a URL carrying a short-lived signed ``token`` (HMAC over the principal,
the expiry and the filter, so neither the filter nor the caller can be swapped). Scripts
may send ``Authorization: Bearer <access token>`` instead. Either way the caller must hold
``audit:export`` *now*: the principal is re-read from the database. The file holds the
entries the log screen would show them: those whose unit lies in their scope *now*.

Memory stays bounded however long the log is: rows come from a server-side cursor in
chunks, openpyxl's write-only workbook spills each sheet to a temporary file as rows are
appended, and the finished file moves into the file storage, is streamed from it and
deleted when the response ends (``backend.files.http.serve_export``).

The URL format and the download token (:class:`ExportFilter`, :func:`sign_download_token`,
the shared link of :mod:`backend.exports.http`: once, while the login lasts) are plain
functions: the schema builds URLs with them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.audit.models import AuditEntry
from backend.audit.service import audit_query, record_operation
from backend.auth.catalog import module_name, operation_name
from backend.auth.models import PrincipalKind
from backend.auth.principal import Principal
from backend.auth.service import AuthPolicy
from backend.clock import parse_instant, utcnow
from backend.domain import HttpHost
from backend.errors import BadUserInput, DomainError, Forbidden
from backend.exports import http as exports_http
from backend.exports.excel import discard, write_file
from backend.exports.http import admitted
from backend.exports.http import refusal as _refusal
from backend.exports.sheets import SheetLayout, write_sheets
from backend.files.http import serve_export
from backend.files.service import FileStore
from backend.graphql.limits import AdmissionRefused
from backend.graphql.periods import one_of_aliases
from backend.graphql.relay import decode_id, encode_id
from backend.observability import request_id_var

EXPORT_PATH = "/exports/audit-log.xlsx"
EXPORT_PERMISSION = "audit:export"
DOWNLOAD_TOKEN_TTL_S = 300
# Rows fetched per round trip from the server-side cursor (and held in memory at once).
CHUNK_ROWS = 1000
# Excel's sheet limit is 1,048,576 rows; two are the header rows. A longer log continues
# on a second sheet rather than producing a file Excel refuses to open.
ROWS_PER_SHEET = 1_048_576 - 2
XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

HEADERS_ZH = ("操作用户", "操作模块", "操作", "IP地址", "时间", "日志内容", "结果")
HEADERS_EN = ("User", "Module", "Action", "IP address", "Time", "Content", "Result")
COLUMN_WIDTHS = (16, 14, 22, 16, 20, 60, 8)
ACTOR_KINDS = ("staff", "resident", "client", "anonymous", "system")
# Text filters' bounds (the columns' widths; a search longer than a sentence finds nothing useful).
MAX_ACTION_CHARS = 64
MAX_ACTOR_NAME_CHARS = 100
MAX_SEARCH_CHARS = 100


# --------------------------------------------------------------------------- filter and URL


@dataclass(frozen=True, slots=True)
class ExportFilter:
    """The log screen's filter, as it travels in the download URL.

    ``actor_id`` is a StaffUser's primary key (a global id in the URL), so it implies
    ``actor_kind="staff"``.
    """

    actor_id: int | None = None
    actor_kind: str | None = None
    module: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    success: bool | None = None
    action: str | None = None
    actor_name: str | None = None
    search: str | None = None

    def query_arguments(self) -> dict[str, Any]:
        """Keyword arguments for :func:`backend.audit.service.audit_query`."""
        actor_kind = self.actor_kind
        if self.actor_id is not None and actor_kind is None:
            actor_kind = PrincipalKind.staff.value
        return {
            "actor_id": self.actor_id,
            "actor_kind": actor_kind,
            "module": self.module,
            "since": self.since,
            "until": self.until,
            "success": self.success,
            "action": self.action,
            "actor_name": self.actor_name,
            "search": self.search,
        }

    def to_params(self) -> dict[str, str]:
        """URL query parameters (absent filters are left out)."""
        params: dict[str, str] = {}
        if self.actor_id is not None:
            params["actorId"] = str(encode_id("StaffUser", self.actor_id))
        if self.actor_kind is not None:
            params["actorKind"] = self.actor_kind
        if self.module is not None:
            params["module"] = self.module
        # from / to like every instant range (docs/periods.md); from_params still reads
        # since / until, the names of links and scripts made before.
        if self.since is not None:
            params["from"] = self.since.isoformat()
        if self.until is not None:
            params["to"] = self.until.isoformat()
        if self.success is not None:
            params["success"] = "true" if self.success else "false"
        for name, value in (("action", self.action), ("actorName", self.actor_name), ("search", self.search)):
            if value is not None:
                params[name] = value
        return params

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> ExportFilter:
        """Parse URL parameters; malformed values are BAD_USER_INPUT naming the parameter."""
        for name, value in params.items():
            # PostgreSQL text cannot hold NUL: refuse it here rather than fail in the query.
            if "\x00" in value:
                raise BadUserInput("文本不能包含 NUL 字符", "Text must not contain NUL characters", field=name)
        actor_id = decode_id(params["actorId"], "StaffUser", field="actorId") if params.get("actorId") else None
        actor_kind = params.get("actorKind") or None
        if actor_kind is not None and actor_kind not in ACTOR_KINDS:
            raise BadUserInput("操作用户类型无效", "Unknown actorKind", field="actorKind")
        success: bool | None = None
        if params.get("success"):
            if params["success"] not in ("true", "false"):
                raise BadUserInput("success 须为 true 或 false", "success must be true or false", field="success")
            success = params["success"] == "true"
        return cls(
            actor_id=actor_id,
            actor_kind=actor_kind,
            module=params.get("module") or None,
            since=one_of_aliases(_aware(params.get("from"), "from"), _aware(params.get("since"), "since"),
                                 name="from", alias_name="since"),
            until=one_of_aliases(_aware(params.get("to"), "to"), _aware(params.get("until"), "until"),
                                 name="to", alias_name="until"),
            success=success,
            action=text_filter(params.get("action"), "action", MAX_ACTION_CHARS),
            actor_name=text_filter(params.get("actorName"), "actorName", MAX_ACTOR_NAME_CHARS),
            search=text_filter(params.get("search"), "search", MAX_SEARCH_CHARS),
        )


def text_filter(value: str | None, name: str, limit: int, *, field: str | None = None) -> str | None:
    """A text filter of the log (URL parameter or GraphQL input): absent when empty,
    refused past ``limit`` characters or with a NUL (BAD_USER_INPUT on ``field``, by
    default ``name``)."""
    if not value:
        return None
    if len(value) > limit or "\x00" in value:
        raise BadUserInput(f"{name} 不能超过 {limit} 个字符, 也不能包含 NUL",
                           f"{name} must be at most {limit} characters, without NUL", field=field or name)
    return value


def _aware(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    return parse_instant(value, field=name)


def sign_download_token(
    *, secret: str, principal: Principal, params: Mapping[str, str], now: datetime, ttl_s: int = DOWNLOAD_TOKEN_TTL_S
) -> tuple[str, datetime]:
    """A link token for this export (:func:`backend.exports.http.sign_download_token`:
    these parameters only, once, while the caller's login lasts)."""
    return exports_http.sign_download_token(secret=secret, purpose=EXPORT_PATH, principal=principal, params=params,
                                            now=now, ttl_s=ttl_s)


def export_url(params: Mapping[str, str], token: str) -> str:
    """The relative URL of the download, parameters first and the token last."""
    return exports_http.download_url(EXPORT_PATH, params, token)


# --------------------------------------------------------------------------- workbook

ExportRow = Sequence[Any]  # (actor_name, module, action, ip, at, summary, success)
_COLUMNS = (
    col(AuditEntry.actor_name),
    col(AuditEntry.module),
    col(AuditEntry.action),
    col(AuditEntry.ip),
    col(AuditEntry.at),
    col(AuditEntry.summary),
    col(AuditEntry.success),
)


def log_layout() -> SheetLayout:
    """The operation log's sheet (both header rows bold, time as a date-time)."""
    return SheetLayout("操作日志", HEADERS_ZH, HEADERS_EN, COLUMN_WIDTHS, number_formats=((4, "yyyy-mm-dd hh:mm:ss"),),
                       english_bold=True, rows_per_sheet=ROWS_PER_SHEET)


def write_workbook(path: str, *, tz: ZoneInfo, next_chunk: Callable[[], Sequence[ExportRow]]) -> int:
    """Write every row ``next_chunk`` hands out (until it returns an empty chunk) to an
    xlsx file at ``path``; returns the number of log rows written.

    Blocking: run it in a worker thread; a long log is drawn by a writer process
    (:func:`backend.exports.sheets.write_sheets`).
    """

    def to_values(row: ExportRow) -> list[Any]:
        actor_name, module, action, ip, at, summary, success = row
        # Excel has no time zones: write the utility's wall-clock time.
        return [actor_name, module_name(module), operation_name(action), ip or "",
                at.astimezone(tz).replace(tzinfo=None), summary, "成功" if success else "失败"]

    return write_sheets(path, log_layout(), next_chunk, to_values)


async def build_export(
    session: AsyncSession, *, export_filter: ExportFilter, scope_patterns: Sequence[str] | None, path: str, tz: ZoneInfo
) -> int:
    """Stream the filtered log, the entries whose unit lies in ``scope_patterns``, from a
    server-side cursor into an xlsx file at ``path``."""
    statement = audit_query(scope_patterns=scope_patterns, **export_filter.query_arguments()).with_only_columns(*_COLUMNS)
    result = await session.stream(statement.execution_options(yield_per=CHUNK_ROWS))
    partitions = result.partitions(CHUNK_ROWS)

    async def fetch() -> Sequence[ExportRow]:
        try:
            return await anext(partitions)
        except StopAsyncIteration:
            return []

    try:
        # The cursor stays on the event loop; the writer thread pulls chunks from it.
        return await write_file(Path(path), lambda next_chunk: write_workbook(path, tz=tz, next_chunk=next_chunk), fetch)
    finally:
        await result.close()


# --------------------------------------------------------------------------- route


def routes(host: HttpHost) -> list[Route]:
    sessions, read_engine, settings = host.sessions, host.read_engine, host.settings
    files: FileStore = host.services["files"]
    policy = AuthPolicy.from_settings(settings)
    tz = settings.tz

    async def audit_log_xlsx(request: Request) -> Response:
        params = dict(request.query_params)
        ip = request.client.host if request.client else None
        try:
            principal = await exports_http.caller(request, read_engine=read_engine, sessions=sessions, policy=policy,
                                                  purpose=EXPORT_PATH)
        except DomainError as refusal:
            return _refusal(refusal, 401)
        if not principal.has(EXPORT_PERMISSION):
            async with sessions() as session, session.begin():
                await record_operation(
                    session, at=utcnow(), actor=principal, module="audit", action="exportAuditLog",
                    summary=f"导出操作日志: 拒绝 (缺少权限 {EXPORT_PERMISSION})", payload=_logged(params),
                    success=False, ip=ip, request_id=request_id_var.get(),
                )
            return _refusal(Forbidden(), 403)
        try:
            export_filter = ExportFilter.from_params(params)
        except DomainError as refusal:
            return _refusal(refusal, 400)

        descriptor, path = tempfile.mkstemp(prefix="shuiwu-audit-", suffix=".xlsx", dir=files.spool_directory())
        os.close(descriptor)
        try:
            async with admitted(request, principal), sessions() as session:
                rows = await build_export(session, export_filter=export_filter, scope_patterns=principal.scope_patterns(),
                                          path=path, tz=tz)
            now = utcnow()
            async with sessions() as session, session.begin():
                await record_operation(
                    session, at=now, actor=principal, module="audit", action="exportAuditLog",
                    summary="导出操作日志: 成功", payload={**_logged(params), "rows": rows},
                    success=True, ip=ip, request_id=request_id_var.get(),
                )
        except BaseException as error:
            discard(path)
            if isinstance(error, AdmissionRefused):
                return _refusal(error, 429)
            raise
        return await serve_export(files, sessions, Path(path), filename=f"audit-log-{now.astimezone(tz):%Y%m%d}.xlsx",
                                  owner=principal)

    return [Route(EXPORT_PATH, audit_log_xlsx, methods=["GET"])]


def _logged(params: Mapping[str, str]) -> dict[str, str]:
    """The filter as the audit payload records it (never the download token; no NUL, which
    PostgreSQL text cannot hold, from a refused caller's parameters)."""
    return {key: value.replace("\x00", "") for key, value in params.items() if key != "token"}
