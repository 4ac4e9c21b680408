"""Stored files over plain HTTP.

- ``GET /files/<key>?[reusable=1&]token=…``: the bytes of a stored file, streamed from
  the storage, for the holder of a signed link (:meth:`FileStore.download_url`). The
  link is bound to the login session it was made in (logout kills it), expires, and is
  spent by its first use unless it says ``reusable=1`` (which the signature covers). A
  Bearer token alone is refused: only the code that made the link decided who may read
  the file. Missing or expired files answer 404 FILE_NOT_FOUND.
- :func:`serve_export`: how an export route answers. The finished xlsx (written under
  the storage's staging directory) moves into the storage as a file expiring after
  :data:`EXPORT_RETENTION`, is streamed to the client, and is deleted when the response
  ends: sent whole, cut off by the client, or failed. A process killed mid-download
  leaves a row the purge job deletes, bytes included, once it expires.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from backend.auth.http import client_ip
from backend.auth.principal import Principal
from backend.auth.service import AuthPolicy
from backend.clock import utcnow
from backend.domain import HttpHost
from backend.errors import DomainError, ErrorCode, Forbidden, NotAuthenticated, NotFound
from backend.exports import excel
from backend.exports.excel import XLSX_MEDIA_TYPE
from backend.exports.http import admitted, caller, check_client_rate, link_holder, refusal
from backend.files.models import StoredFile
from backend.files.service import DOWNLOAD_PREFIX, REUSABLE_PARAM, FileStore
from backend.files.storage import check_key, finish_cleanup
from backend.graphql.limits import AdmissionRefused
from backend.observability import request_id_var

# How long an export's file may outlive its download when the process serving it dies.
EXPORT_RETENTION = timedelta(hours=1)


class StoredFileResponse(StreamingResponse):
    """Streams a stored file's chunks; then closes the stream and, for a one-time file,
    deletes it (bytes and row) however the response ended."""

    def __init__(self, chunks: AsyncIterator[bytes], stored: StoredFile, *, files: FileStore,
                 sessions: async_sessionmaker[AsyncSession], delete_after: bool) -> None:
        quoted = quote(stored.filename)
        # As Starlette's FileResponse names a download: plain when ASCII, RFC 5987 otherwise.
        disposition = f'attachment; filename="{stored.filename}"' if quoted == stored.filename \
            else f"attachment; filename*=utf-8''{quoted}"
        headers = {"Content-Disposition": disposition, "Cache-Control": "no-store"}
        if stored.size_bytes is not None:
            headers["Content-Length"] = str(stored.size_bytes)
        super().__init__(chunks, media_type=stored.content_type, headers=headers)
        self._chunks = chunks
        self._stored = stored
        self._files = files
        self._sessions = sessions
        self._delete_after = delete_after

    async def _finish(self) -> None:
        with contextlib.suppress(Exception):
            await self._chunks.aclose()  # type: ignore[attr-defined]
        if self._delete_after:
            await self._files.delete(self._sessions, key=self._stored.key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await finish_cleanup(self._finish())


async def serve_export(
    files: FileStore, sessions: async_sessionmaker[AsyncSession], path: Path, *, filename: str, owner: Principal,
    media_type: str = XLSX_MEDIA_TYPE,
) -> Response:
    """Answer an export whose file is finished at ``path`` (module docstring): ``path``
    moves into the storage and is deleted once the response ends."""
    stored = await files.adopt(sessions, path, content_type=media_type, purpose="exports", filename=filename, owner=owner,
                               now=utcnow(), retention=EXPORT_RETENTION)
    try:
        chunks = await files.open(stored.key)
    except BaseException:
        await finish_cleanup(files.delete(sessions, key=stored.key))
        raise
    return StoredFileResponse(chunks, stored, files=files, sessions=sessions, delete_after=True)


async def serve_stored(files: FileStore, sessions: async_sessionmaker[AsyncSession], key: str) -> Response:
    """Stream the stored file ``key`` to a caller the route has admitted (it stays stored);
    404 FILE_NOT_FOUND when it is missing or expired."""
    try:
        async with sessions() as session:
            stored = await files.describe(session, key=key)
        if stored.expires_at is not None and stored.expires_at <= utcnow():
            raise DomainError("文件已过期", "The file has expired", field="file", code=ErrorCode.FILE_NOT_FOUND)
        chunks = await files.open(key)
    except DomainError as error:
        return refusal(error, 404 if error.code is ErrorCode.FILE_NOT_FOUND else 503)
    return StoredFileResponse(chunks, stored, files=files, sessions=sessions, delete_after=False)


def routes(host: HttpHost) -> list[Route]:
    sessions, settings = host.sessions, host.settings
    files: FileStore = host.services["files"]
    policy = AuthPolicy.from_settings(settings)

    async def download(request: Request) -> Response:
        key = request.path_params["key"]
        params = dict(request.query_params)
        signed = params.get("token")
        try:
            check_key(key)
            if not signed:
                raise NotAuthenticated()
            principal = await link_holder(signed, purpose=DOWNLOAD_PREFIX + key, params=params, sessions=sessions,
                                          policy=policy, now=utcnow(), spend=params.get(REUSABLE_PARAM) != "1")
            check_client_rate(request, principal)
        except DomainError as error:
            return refusal(error, 400 if error.code is ErrorCode.INVALID else 401)
        return await serve_stored(files, sessions, key)

    return [Route(DOWNLOAD_PREFIX + "{key:path}", download, methods=["GET"])]


# --------------------------------------------------------------------------- signed export routes
# An export link (signed for its caller, its path and its exact parameters, by
# backend.exports.links) is answered in one way everywhere: the caller behind the link,
# the permission (403, logged as refused), one admitted expensive request (429 past it),
# the domain's ``build`` spooling the file (an xlsx, or a PDF) (a DomainError is logged and answered 404 or
# 400), the success logged with its row count, then :func:`serve_export`. A route
# declares what differs: its path, permission, log module, action and words, and how it
# builds the file (billing's statement, payments' list).

# record_operation(session, *, at, actor, module, action, summary, payload, success, ip, request_id)
OperationRecorder = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ExportRoute:
    path: str  # the route, and the purpose its links are signed for
    permission: str
    module: str  # the operation log's module and action
    action: str
    title: str  # what the log calls it: 导出缴费记录
    media_type: str = XLSX_MEDIA_TYPE  # what the file is (billing's notices are PDF)


@dataclass(frozen=True, slots=True)
class Exported:
    """What a build made: the spooled xlsx, how many rows, and the download's file name."""

    path: str | Path
    rows: int
    filename: str


# (the caller, the link's parameters without its token) -> the file; runs admitted.
ExportBuilder = Callable[[Principal, dict[str, str]], Awaitable[Exported]]


def export_route(host: HttpHost, export: ExportRoute, build: ExportBuilder, *, record: OperationRecorder) -> Route:
    """The GET route answering ``export``'s signed links with what ``build`` makes; each
    answer is logged through ``record`` (``backend.audit.service.record_operation``: the
    files layer comes before the operation log, so the route is handed it)."""
    sessions, read_engine = host.sessions, host.read_engine
    files: FileStore = host.services["files"]
    policy = AuthPolicy.from_settings(host.settings)

    async def audited(principal: Principal, request: Request, *, summary: str, payload: dict[str, Any],
                      success: bool) -> None:
        async with sessions() as session, session.begin():
            await record(
                session, at=utcnow(), actor=principal, module=export.module, action=export.action, summary=summary,
                payload=payload, success=success, ip=client_ip(request), request_id=request_id_var.get(),
            )

    async def answer(request: Request) -> Response:
        try:
            principal = await caller(request, read_engine=read_engine, sessions=sessions, policy=policy,
                                     purpose=export.path)
        except DomainError as error:
            return refusal(error, 401)
        params = {key: value for key, value in request.query_params.items() if key != "token"}
        if not principal.has(export.permission):
            await audited(principal, request, summary=f"{export.title}: 拒绝 (缺少权限 {export.permission})",
                          payload={**params, "code": ErrorCode.FORBIDDEN.value}, success=False)
            return refusal(Forbidden(), 403)
        try:
            async with admitted(request, principal):
                made = await build(principal, params)
        except AdmissionRefused as error:
            return refusal(error, 429)
        except DomainError as error:
            await audited(principal, request, summary=f"{export.title}: 失败 ({error.message})",
                          payload={**params, "code": error.code.value}, success=False)
            return refusal(error, 404 if isinstance(error, NotFound) or error.code is ErrorCode.NOT_FOUND else 400)
        try:
            await audited(principal, request, summary=f"{export.title}: {made.rows} 笔",
                          payload={**params, "rows": made.rows}, success=True)
        except BaseException:
            excel.discard(Path(made.path))
            raise
        return await serve_export(files, sessions, Path(made.path), filename=made.filename, owner=principal,
                                  media_type=export.media_type)

    return Route(export.path, answer, methods=["GET"])
