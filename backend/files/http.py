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
- ``POST /files/photos``: a photo upload (:func:`photo_upload`, docs/files.md "Photo
  uploads"), answered 201 ``{photoId, size, contentType, expiresAt}``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from backend.auth.http import client_ip
from backend.auth.principal import Principal
from backend.auth.service import AuthPolicy, count_daily_hit
from backend.clock import utcnow
from backend.domain import HttpHost
from backend.edge import BODY_TOO_LARGE_HEADERS, BodyTooLarge, body_limit, media_type, refusal_body
from backend.errors import (
    BadUserInput,
    DomainError,
    ErrorCode,
    Forbidden,
    NotAuthenticated,
    NotFound,
    RateLimited,
    UnsupportedMediaType,
)
from backend.exports import excel
from backend.exports.excel import XLSX_MEDIA_TYPE
from backend.exports.http import admitted, caller, check_client_rate, link_holder, refusal
from backend.files.models import StoredFile
from backend.files.photos import PHOTO_TYPES, put_photo
from backend.files.service import DOWNLOAD_PREFIX, REUSABLE_PARAM, FileStore
from backend.files.storage import CHUNK_BYTES, FileTooBig, check_key, finish_cleanup
from backend.graphql.limits import AdmissionRefused
from backend.observability import observe_throttle_refusal, request_id_var

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

    return [photo_upload(host), Route(DOWNLOAD_PREFIX + "{key:path}", download, methods=["GET"])]


# --------------------------------------------------------------------------- photo uploads

PHOTO_UPLOAD_PATH = "/files/photos"
MULTIPART = "multipart/form-data"
# What a multipart body may add around its one file part (boundaries, part headers).
MULTIPART_ENVELOPE_BYTES = 16 * 1024
_ACCEPTED = "image/jpeg、image/png、image/webp、image/heic 或 multipart/form-data"


class PhotosPerDay(RateLimited):
    message = "今日上传照片已达上限, 请明天再试"
    message_en = "Too many photos uploaded in the last 24 hours; try again later"


async def count_photo_upload(sessions: async_sessionmaker[AsyncSession], principal: Principal, *, now: datetime,
                             per_minute: int, per_day: int) -> None:
    """Count one upload of ``principal`` in the throttle counters every process shares
    (``auth_throttle``, one row per key and minute, committed before the body is read):
    RATE_LIMITED past ``per_day`` in a rolling 24 hours or ``per_minute`` this minute."""
    key = f"photos:{principal.kind.value}:{principal.id}"
    try:
        async with sessions() as session, session.begin():
            this_minute = await count_daily_hit(session, key=key, now=now, limit=per_day, refusal=PhotosPerDay())
            if this_minute > per_minute:
                raise RateLimited()  # rolls the hit back: only admitted uploads count
    except RateLimited:
        observe_throttle_refusal(key)  # counted by kind ("photos:staff"), never by id
        raise


def _too_large(max_bytes: int) -> Response:
    # Connection: close, as the edge's 413: the rest of the body is never read.
    return Response(refusal_body(FileTooBig(max_bytes), 413, maxBytes=max_bytes), 413, media_type="application/json",
                    headers={key.decode(): value.decode() for key, value in BODY_TOO_LARGE_HEADERS})


def _refused(error: DomainError, status: int) -> Response:
    """:func:`refusal`, closing the connection: a refused upload's body may be unread, and
    the server would otherwise read (and discard) all of it to keep the connection."""
    response = refusal(error, status)
    response.headers["connection"] = "close"
    return response


async def _part_chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK_BYTES):
        yield chunk


def photo_upload(host: HttpHost) -> Route:
    """``POST /files/photos``: store the body as a photo of the caller (Bearer token:
    staff, residents and API clients alike; 401 without one).

    The body is the image itself (``Content-Type`` image/jpeg, image/png or image/webp),
    or ``multipart/form-data`` with one ``file`` part (a browser form, ``curl -F``; the
    part's type, when an image type, must match too). Anything else is 415 before a byte
    is read. The photo's bytes must match the type (422 PHOTO_INVALID); past
    ``SHUIWU_FILES_MAX_PHOTO_BYTES`` it is 413 FILE_TOO_LARGE while streaming (a declared
    ``Content-Length`` over it at once), the rest unread, nothing kept. Each upload, even
    one refused for its content, counts against the caller's per-minute and per-day
    limits first (429 RATE_LIMITED). The photo expires after
    ``SHUIWU_FILES_PHOTO_CLAIM_HOURS`` unless the transaction referencing it keeps it.

    Not an admitted expensive request: an upload is a slow client's I/O, and a phone on
    a poor network would hold its owner's one slot for as long as it sends."""
    sessions, read_engine, settings = host.sessions, host.read_engine, host.settings
    files: FileStore = host.services["files"]
    policy = AuthPolicy.from_settings(settings)
    max_bytes = settings.files_max_photo_bytes
    retention = timedelta(hours=settings.files_photo_claim_hours)

    # The one size check is the body limit; a multipart body may carry its envelope on top,
    # and its file part is held to max_bytes by the put.
    @body_limit(max_bytes + MULTIPART_ENVELOPE_BYTES)
    async def upload(request: Request) -> Response:
        try:
            principal = await caller(request, read_engine=read_engine, sessions=sessions, policy=policy)
        except DomainError as error:
            return _refused(error, 401)
        declared = media_type(request.headers.get("content-type"))
        if declared != MULTIPART and declared not in PHOTO_TYPES:
            return _refused(UnsupportedMediaType(_ACCEPTED), 415)
        length = request.headers.get("content-length", "").strip()
        if declared != MULTIPART and length.isdigit() and int(length) > max_bytes:
            return _too_large(max_bytes)
        now = utcnow()
        try:
            await count_photo_upload(sessions, principal, now=now, per_minute=settings.files_photos_per_minute,
                                     per_day=settings.files_photos_per_day)
            if declared == MULTIPART:
                async with request.form(max_files=1, max_fields=1) as form:
                    part = form.get("file")
                    if not isinstance(part, UploadFile):
                        raise DomainError("请以表单字段 file 上传照片", "Send the photo as the form field 'file'",
                                          field="file", code=ErrorCode.REQUIRED)
                    part_type = media_type(part.content_type)
                    stored = await put_photo(files, sessions, content=_part_chunks(part),
                                             declared_type=part_type if part_type in PHOTO_TYPES else None,
                                             max_bytes=max_bytes, owner=principal, now=now, retention=retention)
            else:
                stored = await put_photo(files, sessions, content=request.stream(), declared_type=declared,
                                         max_bytes=max_bytes, owner=principal, now=now, retention=retention)
        except (BodyTooLarge, FileTooBig):  # the edge's count, or the put's: one answer
            return _too_large(max_bytes)
        except DomainError as error:
            status = {ErrorCode.PHOTO_INVALID: 422, ErrorCode.STORAGE_UNAVAILABLE: 503}.get(error.code, 400)
            return _refused(error, status)
        return JSONResponse({
            "photoId": stored.key, "size": stored.size_bytes, "contentType": stored.content_type,
            "expiresAt": stored.expires_at.isoformat() if stored.expires_at is not None else None,
        }, 201)

    return Route(PHOTO_UPLOAD_PATH, upload, methods=["POST"])


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


# --------------------------------------------------------------------------- an export link's filter parameters


def refuse_unknown_params(params: Mapping[str, str], allowed: frozenset[str]) -> None:
    """BAD_USER_INPUT naming the first parameter an export link does not take."""
    unknown = set(params) - allowed
    if unknown:
        raise BadUserInput("未知的筛选条件", "Unknown filter parameter", field=sorted(unknown)[0])


def enum_param(enum: Any, value: str | None, field: str) -> Any:
    """An export link's enum parameter (None when absent); BAD_USER_INPUT for a value the
    enum does not have."""
    if value is None:
        return None
    try:
        return enum(value)
    except ValueError:
        raise BadUserInput("取值无效", "Not one of the allowed values", field=field) from None
