"""Where file bytes live: the one storage interface (DESIGN.md, "Files"), two backends.

:func:`storage_from_settings` picks the backend from ``SHUIWU_STORAGE_URL``:

- absent, a path or ``file:///path``: :class:`LocalStorage`, a directory
  (``DATA_DIR/files`` by default). **One host only**: another host does not see the files
  (docs/deploy.md).
- ``s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME&part_size_mb=N]``: :class:`S3Storage`,
  any S3-compatible service (AWS, MinIO, Ceph, OSS/COS in S3 mode), for several hosts.
  Credentials: ``SHUIWU_STORAGE_ACCESS_KEY_ID`` / ``SHUIWU_STORAGE_SECRET_ACCESS_KEY``,
  else botocore's own chain (``AWS_*`` variables, ``~/.aws``, an instance role).

What every backend promises (the same tests run against both, ``tests/files``):

- ``put(key, bytes | async stream, content_type=…, max_bytes=…)`` stores the whole
  content or nothing: past ``max_bytes`` it raises :class:`FileTooBig` (FILE_TOO_LARGE),
  and a failed or cancelled put leaves no object and no partial file behind. A stream is
  never held in memory whole (local: one chunk; S3: one multipart part).
- ``put_path(key, path)`` takes over a finished local file (a writer that needs a real
  file, such as openpyxl, writes it under :meth:`Storage.staging_directory`): the local
  backend renames it in (no copy), S3 uploads it; either way ``path`` is gone afterwards.
- ``open(key)`` answers an async stream of byte chunks, or raises :class:`FileMissing`
  (FILE_NOT_FOUND) at once, before any byte.
- ``delete(key)`` removes the object; a missing one is not an error.
- An unreachable S3 service is :class:`StorageUnavailable` (STORAGE_UNAVAILABLE).

Keys are relative paths of ASCII letters, digits, ``._-`` segments
(``exports/2026/12/07/<hex>.xlsx``); the metadata (owner, type, size, expiry) is the
``stored_files`` table's (:mod:`backend.files.service`), not the backend's.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.errors import DomainError, ErrorCode
from backend.settings import S3_DEFAULT_PART_BYTES as S3_DEFAULT_PART_BYTES
from backend.settings import StorageLocation as StorageLocation
from backend.settings import parse_storage_url as parse_storage_url

if TYPE_CHECKING:
    from backend.settings import Settings

log = logging.getLogger(__name__)

# Bytes read or written per hop: what a stream holds in memory at once (local backend).
CHUNK_BYTES = 64 * 1024
# S3's smallest multipart part (every part but the last); the default part is a bit larger.
S3_MIN_PART_BYTES = 5 * 1024 * 1024
STAGING = ".staging"
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")
MAX_KEY_LENGTH = 255


# --------------------------------------------------------------------------- errors


class FileMissing(DomainError):
    code = ErrorCode.FILE_NOT_FOUND

    def __init__(self, key: str = "") -> None:
        super().__init__("文件不存在或已过期删除", "The file does not exist (or expired and was deleted)", field="file")
        self.key = key


class FileTooBig(DomainError):
    """Past the size cap the caller stated; nothing was stored."""

    code = ErrorCode.FILE_TOO_LARGE

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"文件超过大小上限 {_human(max_bytes)}, 未保存",
                         f"The file is larger than {_human(max_bytes)}; nothing was stored", field="file")
        self.max_bytes = max_bytes


class StorageUnavailable(DomainError):
    code = ErrorCode.STORAGE_UNAVAILABLE
    message = "文件存储暂时不可用, 请稍后再试"
    message_en = "The file storage is unavailable; try again later"


def _human(size: int) -> str:
    if size >= 1024 * 1024 and size % (1024 * 1024) == 0:
        return f"{size // (1024 * 1024)} MB"
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KB"
    return f"{size} B"


def check_key(key: str) -> str:
    """``key`` when it is a valid storage key (no ``..``, no leading dot or slash)."""
    if len(key) > MAX_KEY_LENGTH or not _KEY.fullmatch(key) or ".." in key:
        raise DomainError("文件键无效", "Invalid file key", field="key", code=ErrorCode.INVALID)
    return key


async def _sized(content: bytes | AsyncIterable[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    """The chunks of ``content``, refusing (:class:`FileTooBig`) as soon as they pass ``max_bytes``."""
    if isinstance(content, bytes | bytearray | memoryview):
        if len(content) > max_bytes:
            raise FileTooBig(max_bytes)
        view = memoryview(content)
        for start in range(0, len(view), CHUNK_BYTES):
            yield bytes(view[start:start + CHUNK_BYTES])
        return
    total = 0
    async for chunk in content:
        total += len(chunk)
        if total > max_bytes:
            raise FileTooBig(max_bytes)
        if chunk:
            yield bytes(chunk)


async def file_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
    """A local file's bytes, a chunk at a time (reads in a worker thread)."""
    async for chunk in _handle_chunks(await asyncio.to_thread(path.open, "rb"), chunk_bytes):
        yield chunk


def _discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# --------------------------------------------------------------------------- interface


class Storage(abc.ABC):
    """The storage interface (module docstring). One instance per process, shared by
    every request and job; safe to use from several event loops."""

    @abc.abstractmethod
    async def put(self, key: str, content: bytes | AsyncIterable[bytes], *, content_type: str, max_bytes: int) -> int:
        """Store ``content`` under ``key``; returns its size. All or nothing."""

    @abc.abstractmethod
    async def put_path(self, key: str, path: Path, *, content_type: str) -> int:
        """Take over the finished local file ``path`` as ``key``; returns its size. ``path``
        is gone afterwards, whether this succeeded or not."""

    @abc.abstractmethod
    async def open(self, key: str) -> AsyncIterator[bytes]:
        """The stored bytes as an async stream of chunks (close it with ``aclose``);
        :class:`FileMissing` at once when there is no such object."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key``; nothing happens when it is already gone."""

    @abc.abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    async def keys(self) -> list[str]:
        """Every stored key (tests and operators: a leftover check, not a listing API)."""

    @abc.abstractmethod
    async def reachable(self) -> str:
        """Where the files go, once the storage answered (``shuiwu check``);
        :class:`StorageUnavailable` when it cannot be written to or reached. Reads only."""

    @abc.abstractmethod
    def staging_directory(self) -> Path:
        """A local directory (created) where a writer that needs a real file writes before
        :meth:`put_path`; on the local backend it is on the storage's own file system."""

    def sweep_staging(self, *, older_than_s: float) -> int:
        """Delete staging files older than ``older_than_s`` (what a crashed writer left);
        returns how many. Blocking, small: the purge job runs it in a thread."""
        directory = self.staging_directory()
        cutoff = time.time() - older_than_s
        swept = 0
        for entry in os.scandir(directory):
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    swept += 1
        return swept

    async def aclose(self) -> None:  # noqa: B027 (only a backend holding connections has any to release)
        """Release this event loop's connections (the app's and worker's shutdown)."""


# --------------------------------------------------------------------------- local directory


class LocalStorage(Storage):
    """Files in one directory tree. A put writes ``.staging/<random>.part`` in the same
    tree (one file system, so the final rename is atomic) and renames it into place only
    when complete: a failed put, or a crash mid-way, never leaves a partial file under
    its key; what a crash leaves in ``.staging`` the purge job sweeps."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def path_of(self, key: str) -> Path:
        return self.root / check_key(key)

    def staging_directory(self) -> Path:
        directory = self.root / STAGING
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def _staging_file(self) -> Path:
        return self.staging_directory() / f"{uuid.uuid4().hex}.part"

    async def put(self, key: str, content: bytes | AsyncIterable[bytes], *, content_type: str, max_bytes: int) -> int:
        target = self.path_of(key)
        staging = await asyncio.to_thread(self._staging_file)
        written = 0
        try:
            handle = await asyncio.to_thread(staging.open, "xb")
            try:
                async for chunk in _sized(content, max_bytes):
                    await asyncio.to_thread(handle.write, chunk)
                    written += len(chunk)
                await asyncio.to_thread(_flush, handle)
            finally:
                handle.close()
            await _move_in(staging, target)
        except BaseException:
            _discard(staging)
            raise
        return written

    async def put_path(self, key: str, path: Path, *, content_type: str) -> int:
        target = self.path_of(key)
        try:
            size = os.stat(path).st_size
            await _move_in(path, target)
        except BaseException:
            _discard(path)
            raise
        return size

    async def open(self, key: str) -> AsyncIterator[bytes]:
        path = self.path_of(key)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise FileMissing(key) from None
        return _handle_chunks(handle)

    async def delete(self, key: str) -> None:
        _discard(self.path_of(key))  # one unlink: not worth a thread, and safe in a cancelled task

    async def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    async def reachable(self) -> str:
        existing = next(directory for directory in (self.root, *self.root.parents) if directory.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise StorageUnavailable(f"文件目录不可写: {existing}", f"The file directory cannot be written to: {existing}")
        return f"directory {self.root} (one host only)"

    async def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found: list[str] = []
        for directory, subdirectories, names in os.walk(self.root):
            subdirectories[:] = [name for name in subdirectories if name != STAGING]
            found.extend(str(Path(directory, name).relative_to(self.root)) for name in names)
        return sorted(found)


def _flush(handle: Any) -> None:
    handle.flush()
    os.fsync(handle.fileno())  # a stored photo survives a power cut once put returned


def _move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)


def _move_or_discard(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; a failed rename deletes ``source``."""
    try:
        _move(source, target)
    except BaseException:
        _discard(source)
        raise


async def _move_in(source: Path, target: Path) -> None:
    """Rename ``source`` into place as ``target``, in a worker thread. Cancelling the
    caller cannot stop that thread: a cancelled move waits (shielded) for the rename's
    outcome, then deletes ``target`` if it landed, and only then lets the cancellation
    through. So the caller's cleanup (deleting the key, then its row) never runs before
    a late rename, and a cancelled put leaves no bytes under its key."""
    moving = asyncio.ensure_future(asyncio.to_thread(_move_or_discard, source, target))
    try:
        await asyncio.shield(moving)
    except asyncio.CancelledError:
        while not moving.done():
            with contextlib.suppress(asyncio.CancelledError):  # cancelled again: still wait, the rename is short
                await asyncio.wait([moving])
        if not moving.cancelled() and moving.exception() is None:
            _discard(target)
        raise


async def _handle_chunks(handle: Any, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(handle.read, chunk_bytes):
            yield chunk
    finally:
        handle.close()


# --------------------------------------------------------------------------- S3


class S3Storage(Storage):
    """Objects in an S3 bucket under ``prefix`` (aiobotocore). A stream is uploaded in
    multipart parts of ``part_bytes`` (one part in memory at a time); a put that fails
    or is refused mid-way aborts its multipart upload, so no object appears. A content
    smaller than one part is one ``PutObject``. The client is made per event loop (the
    API's, a test's, a live server thread's) and kept until :meth:`aclose`.

    Bucket lifecycle to set on the provider's side: abort incomplete multipart uploads
    after a day (a process killed mid-upload cannot abort its own)."""

    def __init__(
        self, *, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str | None = None,
        access_key_id: str | None = None, secret_access_key: str | None = None, staging: Path,
        part_bytes: int = S3_DEFAULT_PART_BYTES,
    ) -> None:
        if part_bytes < S3_MIN_PART_BYTES:
            raise ValueError(f"an S3 part is at least {S3_MIN_PART_BYTES} bytes")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region or "us-east-1"
        self._credentials = {"aws_access_key_id": access_key_id, "aws_secret_access_key": secret_access_key} \
            if access_key_id and secret_access_key else {}
        self.staging = staging
        self.part_bytes = part_bytes
        self._clients: dict[asyncio.AbstractEventLoop, tuple[contextlib.AsyncExitStack, Any]] = {}

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint={self.endpoint_url!r})"

    def object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        found = self._clients.get(loop)
        if found is not None:
            return found[1]
        from aiobotocore.config import AioConfig

        stack = contextlib.AsyncExitStack()
        config = AioConfig(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=60,
                           retries={"max_attempts": 3, "mode": "standard"})
        client = await stack.enter_async_context(_botocore_session().create_client(
            "s3", region_name=self.region, endpoint_url=self.endpoint_url, config=config, **self._credentials))
        self._clients[loop] = (stack, client)
        return client

    async def aclose(self) -> None:
        found = self._clients.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await found[0].aclose()

    @contextlib.asynccontextmanager
    async def _calling(self) -> AsyncIterator[Any]:
        """The client, with transport failures turned into :class:`StorageUnavailable`."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield await self._client()
        except (TimeoutError, BotoCoreError, OSError) as error:
            raise StorageUnavailable() from error
        except ClientError as error:
            if _missing(error):
                raise
            raise StorageUnavailable() from error

    async def put(self, key: str, content: bytes | AsyncIterable[bytes], *, content_type: str, max_bytes: int) -> int:
        return await self._upload(self.object_key(key), _sized(content, max_bytes), content_type)

    async def _upload(self, name: str, chunks: AsyncIterator[bytes], content_type: str) -> int:
        pending: list[bytes] = []
        buffered = written = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        async with self._calling() as client:
            try:
                async for chunk in chunks:
                    pending.append(chunk)
                    buffered += len(chunk)
                    written += len(chunk)
                    if buffered >= self.part_bytes:
                        if upload_id is None:
                            started = await client.create_multipart_upload(Bucket=self.bucket, Key=name, ContentType=content_type)
                            upload_id = started["UploadId"]
                        body, pending, buffered = b"".join(pending), [], 0
                        uploaded = await client.upload_part(Bucket=self.bucket, Key=name, UploadId=upload_id,
                                                            PartNumber=len(parts) + 1, Body=body)
                        del body
                        parts.append({"ETag": uploaded["ETag"], "PartNumber": len(parts) + 1})
                if upload_id is None:
                    await client.put_object(Bucket=self.bucket, Key=name, Body=b"".join(pending), ContentType=content_type)
                    return written
                if pending:
                    uploaded = await client.upload_part(Bucket=self.bucket, Key=name, UploadId=upload_id,
                                                        PartNumber=len(parts) + 1, Body=b"".join(pending))
                    parts.append({"ETag": uploaded["ETag"], "PartNumber": len(parts) + 1})
                await client.complete_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id,
                                                       MultipartUpload={"Parts": parts})
            except BaseException:
                if upload_id is not None:
                    await finish_cleanup(client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id))
                raise
        return written

    async def put_path(self, key: str, path: Path, *, content_type: str) -> int:
        try:
            return await self._upload(self.object_key(key), file_chunks(path, 1024 * 1024), content_type)
        finally:
            _discard(path)

    async def open(self, key: str) -> AsyncIterator[bytes]:
        from botocore.exceptions import ClientError

        try:
            async with self._calling() as client:
                response = await client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError:
            raise FileMissing(key) from None
        return _body_chunks(response["Body"])

    async def delete(self, key: str) -> None:
        async with self._calling() as client:
            await client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    async def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            async with self._calling() as client:
                await client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError:
            return False
        return True

    async def reachable(self) -> str:
        from botocore.exceptions import ClientError

        try:
            async with self._calling() as client:
                await client.head_bucket(Bucket=self.bucket)
        except ClientError as error:  # _calling passes "not found" through: here it is the bucket
            raise StorageUnavailable(f"存储桶 {self.bucket} 不存在", f"The bucket {self.bucket} does not exist") from error
        return f"bucket {self.bucket} at {self.endpoint_url or 'AWS ' + self.region}"

    async def keys(self) -> list[str]:
        found: list[str] = []
        async with self._calling() as client:
            paginator = client.get_paginator("list_objects_v2")
            start = f"{self.prefix}/" if self.prefix else ""
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=start):
                found.extend(item["Key"][len(start):] for item in page.get("Contents", ()))
        return sorted(found)

    def staging_directory(self) -> Path:
        self.staging.mkdir(parents=True, exist_ok=True)
        return self.staging


@functools.cache
def _botocore_session() -> Any:
    """One botocore session per process: it caches the S3 service model, which a new
    client would otherwise read and parse again (a second each)."""
    from aiobotocore.session import get_session

    return get_session()


def _missing(error: Any) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in ("NoSuchKey", "404", "NotFound")


async def _body_chunks(body: Any) -> AsyncIterator[bytes]:
    from botocore.exceptions import BotoCoreError

    try:
        while chunk := await body.read(CHUNK_BYTES):
            yield chunk
    except (TimeoutError, BotoCoreError, OSError) as error:
        raise StorageUnavailable() from error
    finally:
        body.close()


async def finish_cleanup(call: Awaitable[Any]) -> None:
    """Run a cleanup (an abort, a delete) to its end even while the caller is being
    cancelled: a cancellation arriving meanwhile still propagates, the cleanup goes on in
    the background. A cleanup that fails is logged; the purge job finishes it later."""
    task = asyncio.ensure_future(call)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        _background.add(task)
        task.add_done_callback(_background.discard)
        raise
    except Exception:
        log.exception("a storage cleanup failed; the purge job will finish it")


_background: set[asyncio.Future[Any]] = set()


# --------------------------------------------------------------------------- choosing
# (The URL's parse, :func:`parse_storage_url`, is the setting's own, in backend.settings:
# a malformed URL stops the process when the settings load.)


def storage_from_settings(settings: Settings) -> Storage:
    """The backend ``SHUIWU_STORAGE_URL`` names (module docstring)."""
    location = parse_storage_url(settings.storage_url, data_dir=settings.data_dir)
    if location.directory is not None:
        return LocalStorage(location.directory)
    assert location.bucket is not None
    secret = settings.storage_secret_access_key
    return S3Storage(
        bucket=location.bucket, prefix=location.prefix, endpoint_url=location.endpoint_url, region=location.region,
        access_key_id=settings.storage_access_key_id, secret_access_key=secret.get_secret_value() if secret else None,
        staging=settings.data_dir / "files-staging", part_bytes=location.part_bytes,
    )
