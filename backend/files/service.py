"""Files: stored bytes (:mod:`backend.files.storage`) plus what is known about them (the
``stored_files`` table), offered to every domain as the service ``files``
(:class:`FileStore`).

- :meth:`FileStore.put` stores a content (bytes or an async stream) under a new key, up
  to the size cap the caller states; :meth:`FileStore.adopt` takes over a finished local
  file (an Excel export written under :meth:`FileStore.spool_directory`).
- :meth:`FileStore.open`, :meth:`FileStore.describe`, :meth:`FileStore.delete`,
  :meth:`FileStore.keep` (change or drop a file's expiry).
- :meth:`FileStore.download_url`: a signed link (the export signing,
  ``backend.exports.links``) bound to the caller's login session, so it stops working at
  logout. One-time links (exports: a link is spent by its download) or reusable ones
  until they expire (a photo an app shows again and again); each use decides.
- :meth:`FileStore.purge`: the ``purge_expired_files`` job deletes files past their
  ``expires_at``, bytes first, then the row, and sweeps what crashed writers left in
  the staging directory.

**Order of writes.** The row is committed before the bytes are written, with a claim
expiry (:data:`CLAIM_TTL` from the put's ``now``) whatever the caller's retention; the
UPDATE that records the size sets the final expiry (None for a file kept until deleted),
and a failed put deletes bytes and row. A process killed in between leaves a row that
expires with its claim, so the purge collects the bytes of an unfinished put, even one
meant to be kept forever: nothing outlives its expiry unseen. A file meant to be kept
(a work order's photo) is put with a short claim ``retention`` and kept
(``keep(…, until=None)``) in the transaction that references it: a photo uploaded for a
form never submitted is purged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from backend.auth.principal import Principal
from backend.exports.links import download_url, sign_download_token
from backend.files.models import StoredFile
from backend.files.storage import FileMissing, Storage, check_key, finish_cleanup, storage_from_settings
from backend.settings import Settings

log = logging.getLogger(__name__)

# The path every stored file downloads from (backend.files.http): /files/<key>.
DOWNLOAD_PREFIX = "/files/"
# A link parameter saying the link may be used again until it expires.
REUSABLE_PARAM = "reusable"
LINK_TTL_S = 300
# What the staging sweep leaves alone: a writer still writing.
STAGING_GRACE_S = 24 * 3600
PURGE_BATCH = 200
# How long a put's reserved row lasts until the put records its size and final expiry:
# a put killed mid-way is purged after this (longer than any put takes).
CLAIM_TTL = timedelta(days=1)
_PURPOSE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def _owner(principal: Principal | None) -> tuple[str | None, int | None]:
    if principal is None or principal.kind.value == "system":
        return None, None
    return principal.kind.value, principal.id


def _suffix(filename: str, content_type: str) -> str:
    suffix = Path(filename).suffix.lower()
    if suffix and len(suffix) <= 10 and suffix[1:].isalnum() and suffix.isascii():
        return suffix
    return mimetypes.guess_extension(content_type) or ""


@dataclass(frozen=True, slots=True)
class FileStore:
    """The storage and its table; one per process (the service ``files``)."""

    storage: Storage
    settings: Settings

    def new_key(self, *, purpose: str, filename: str, content_type: str, now: datetime) -> str:
        """``<purpose>/<yyyy>/<mm>/<dd>/<random><suffix>``: unguessable, spread by day."""
        if not purpose or not set(purpose) <= _PURPOSE_CHARS:
            raise ValueError(f"a file purpose is lower-case letters, digits and '-': {purpose!r}")
        return check_key(f"{purpose}/{now:%Y/%m/%d}/{uuid.uuid4().hex}{_suffix(filename, content_type)}")

    async def aclose(self) -> None:
        """Release this event loop's storage connections (shutdown)."""
        await self.storage.aclose()

    def spool_directory(self) -> Path:
        """Where a writer that needs a real file (openpyxl) writes before :meth:`adopt`."""
        return self.storage.staging_directory()

    async def _reserve(
        self, sessions: async_sessionmaker[AsyncSession], *, purpose: str, filename: str, content_type: str,
        owner: Principal | None, now: datetime,
    ) -> StoredFile:
        """Commit the row of a put about to write its bytes: no size yet (not downloadable)
        and expiring with its claim (:data:`CLAIM_TTL`), so the purge collects what a put
        killed before :meth:`_finish` left."""
        owner_kind, owner_id = _owner(owner)
        row = StoredFile(
            key=self.new_key(purpose=purpose, filename=filename, content_type=content_type, now=now), purpose=purpose,
            filename=filename[:255], content_type=content_type[:127], size_bytes=None, owner_kind=owner_kind,
            owner_id=owner_id, created_at=now, expires_at=now + CLAIM_TTL,
        )
        async with sessions() as session, session.begin():
            session.add(row)
        return row

    async def _finish(self, sessions: async_sessionmaker[AsyncSession], row: StoredFile, *, size: int, now: datetime,
                      retention: timedelta | None) -> StoredFile:
        """The bytes are stored: record the size and the final expiry in one UPDATE.
        :class:`FileMissing` when the row is gone (purged or deleted meanwhile): the caller
        then deletes the bytes, which no row would otherwise ever find."""
        expires_at = now + retention if retention is not None else None
        async with sessions() as session, session.begin():
            result = await session.execute(update(StoredFile).where(col(StoredFile.key) == row.key)
                                           .values(size_bytes=size, expires_at=expires_at))
            if not getattr(result, "rowcount", 0):
                raise FileMissing(row.key)
        row.size_bytes, row.expires_at = size, expires_at
        return row

    async def _forget(self, sessions: async_sessionmaker[AsyncSession], key: str) -> None:
        async with sessions() as session, session.begin():
            await session.execute(delete(StoredFile).where(col(StoredFile.key) == key))

    async def put(
        self, sessions: async_sessionmaker[AsyncSession], *, content: bytes | AsyncIterable[bytes], content_type: str,
        max_bytes: int, purpose: str, filename: str, owner: Principal | None, now: datetime,
        retention: timedelta | None,
    ) -> StoredFile:
        """Store ``content`` (at most ``max_bytes``, else FILE_TOO_LARGE and nothing kept)
        under a new key and return its row. ``retention``: how long until the purge
        deletes it (None: until deleted)."""
        row = await self._reserve(sessions, purpose=purpose, filename=filename, content_type=content_type, owner=owner,
                                  now=now)
        try:
            size = await self.storage.put(row.key, content, content_type=content_type, max_bytes=max_bytes)
            return await self._finish(sessions, row, size=size, now=now, retention=retention)
        except BaseException:
            await finish_cleanup(self._discard(sessions, row.key))
            raise

    async def adopt(
        self, sessions: async_sessionmaker[AsyncSession], path: Path, *, content_type: str, purpose: str, filename: str,
        owner: Principal | None, now: datetime, retention: timedelta | None,
    ) -> StoredFile:
        """Take over the finished local file ``path`` (written under :meth:`spool_directory`)
        as a new stored file; ``path`` is gone afterwards, whatever happens."""
        try:
            row = await self._reserve(sessions, purpose=purpose, filename=filename, content_type=content_type,
                                      owner=owner, now=now)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        try:
            size = await self.storage.put_path(row.key, path, content_type=content_type)
            return await self._finish(sessions, row, size=size, now=now, retention=retention)
        except BaseException:
            await finish_cleanup(self._discard(sessions, row.key))
            raise

    async def _discard(self, sessions: async_sessionmaker[AsyncSession], key: str) -> None:
        await self.storage.delete(key)
        await self._forget(sessions, key)

    async def describe(self, session: AsyncSession, *, key: str) -> StoredFile:
        """The row of ``key``: FILE_NOT_FOUND when there is none, or it is being written."""
        row = (await session.execute(select(StoredFile).where(col(StoredFile.key) == check_key(key)))).scalar_one_or_none()
        if row is None or row.size_bytes is None:
            raise FileMissing(key)
        return row

    async def open(self, key: str) -> AsyncIterator[bytes]:
        """The bytes of ``key`` as an async stream of chunks; FILE_NOT_FOUND at once."""
        return await self.storage.open(key)

    async def delete(self, sessions: async_sessionmaker[AsyncSession], *, key: str) -> None:
        """Delete the bytes, then the row (a failure in between leaves the row for the purge)."""
        await self._discard(sessions, check_key(key))

    async def keep(self, session: AsyncSession, *, key: str, until: datetime | None) -> None:
        """Set when ``key`` expires (None: never), in the caller's transaction."""
        result = await session.execute(update(StoredFile).where(col(StoredFile.key) == check_key(key)).values(expires_at=until))
        if not getattr(result, "rowcount", 0):
            raise FileMissing(key)

    def download_url(self, *, key: str, principal: Principal, now: datetime, reusable: bool = False,
                     ttl_s: int = LINK_TTL_S) -> str:
        """A signed relative URL downloading ``key`` as ``principal``, until ``now + ttl_s``
        and while their login session lasts; spent by its first use unless ``reusable``.
        The caller has decided that ``principal`` may read the file."""
        path = DOWNLOAD_PREFIX + check_key(key)
        params = {REUSABLE_PARAM: "1"} if reusable else {}
        token, _ = sign_download_token(secret=self.settings.secret(), purpose=path, principal=principal, params=params,
                                       now=now, ttl_s=ttl_s)
        return download_url(path, params, token)

    async def purge(self, sessions: async_sessionmaker[AsyncSession], *, now: datetime, batch: int = PURGE_BATCH) -> int:
        """Delete every file past its expiry, ``batch`` at a time (bytes, then rows, each
        batch committed); returns how many. Rows locked by another purge are skipped."""
        purged = 0
        while True:
            async with sessions() as session, session.begin():
                keys = list((await session.execute(
                    select(col(StoredFile.key)).where(col(StoredFile.expires_at) <= now)
                    .order_by(col(StoredFile.key)).limit(batch).with_for_update(skip_locked=True)
                )).scalars())
                for key in keys:
                    await self.storage.delete(key)
                if keys:
                    await session.execute(delete(StoredFile).where(col(StoredFile.key).in_(keys)))
            purged += len(keys)
            if len(keys) < batch:
                break
        swept = await asyncio.to_thread(self.storage.sweep_staging, older_than_s=STAGING_GRACE_S)
        if swept:
            log.info("swept %d abandoned staging files", swept)
        return purged


def offered(settings: Settings) -> dict[str, Any]:
    """The declaration's services: ``files``, the :class:`FileStore` of this process."""
    return {"files": FileStore(storage_from_settings(settings), settings)}
