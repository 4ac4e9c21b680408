"""Photos people upload (a dial for ``enterReading``'s ``photoId``; work orders' photos
later): what a photo is, and :func:`put_photo`, which stores one through the file store.

- A photo is JPEG, PNG, WebP or HEIC (an iPhone's camera default; work orders decode
  it through pillow-heif), recognised by its **magic bytes** (:func:`sniff_photo`),
  never by its name or declared type alone: a declared type must match the bytes, else
  PHOTO_INVALID. Nothing is decoded (no image library parses a stranger's bytes on the
  API's loop); the reader of a photo (an app, a browser) gets it with its sniffed type
  and ``X-Content-Type-Options: nosniff``.
- :func:`put_photo` reads the first bytes of the stream, checks them, then hands the
  whole stream (those bytes first) to :meth:`FileStore.put` under purpose ``photos``,
  owned by the uploader (``owner_kind``, ``owner_id``: what readings' ``Photo`` check
  compares), with a short claim ``retention``: the transaction that references the photo
  keeps it (``keep(…, until=None)``), and a photo nobody references is purged. A refused
  photo leaves nothing (no row, no bytes).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.auth.principal import Principal
from backend.errors import DomainError, ErrorCode
from backend.files.models import StoredFile
from backend.files.service import FileStore

PHOTO_PURPOSE = "photos"
# media type -> the file name suffix a stored photo gets.
PHOTO_TYPES = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/heic": ".heic"}
# The longest signature checked (WebP: "RIFF" <size> "WEBP"; HEIC: <size> "ftyp" <brand>).
SNIFF_BYTES = 12
# The ISO-BMFF major brands of HEIF stills (HEVC-coded, and the generic image brand).
HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1"})


class PhotoInvalid(DomainError):
    code = ErrorCode.PHOTO_INVALID

    def __init__(self, declared: str | None = None) -> None:
        if declared is None:
            super().__init__("文件不是 JPEG、PNG、WebP 或 HEIC 图片", "The file is not a JPEG, PNG, WebP or HEIC image",
                             field="file")
        else:
            super().__init__(f"文件内容与声明的类型 {declared} 不符", f"The file's content is not the declared {declared}",
                             field="file")


def sniff_photo(head: bytes) -> str | None:
    """The photo type whose signature ``head`` (the first bytes) starts with, else None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in HEIC_BRANDS:
        return "image/heic"
    return None


async def _head_and_rest(content: AsyncIterable[bytes]) -> tuple[bytes, AsyncIterator[bytes]]:
    """The first :data:`SNIFF_BYTES` (fewer if the content is shorter) and a stream of the
    whole content: those bytes, then the rest, read as it is consumed."""
    chunks = aiter(content)
    head = b""
    async for chunk in chunks:
        head += chunk
        if len(head) >= SNIFF_BYTES:
            break

    async def whole() -> AsyncIterator[bytes]:
        if head:
            yield head
        async for chunk in chunks:
            yield chunk

    return head, whole()


async def put_photo(
    files: FileStore, sessions: async_sessionmaker[AsyncSession], *, content: AsyncIterable[bytes],
    declared_type: str | None, max_bytes: int, owner: Principal, now: datetime, retention: timedelta,
) -> StoredFile:
    """Store the photo streamed as ``content`` for ``owner``, expiring after ``retention``
    unless something keeps it. ``declared_type`` (None: take what the bytes say) must be
    what the magic bytes say; PHOTO_INVALID otherwise or when they are no photo's,
    FILE_TOO_LARGE past ``max_bytes`` (while streaming: the rest is never read)."""
    head, whole = await _head_and_rest(content)
    sniffed = sniff_photo(head)
    if sniffed is None:
        raise PhotoInvalid()
    if declared_type is not None and declared_type != sniffed:
        raise PhotoInvalid(declared_type)
    return await files.put(sessions, content=whole, content_type=sniffed, max_bytes=max_bytes, purpose=PHOTO_PURPOSE,
                           filename=f"photo{PHOTO_TYPES[sniffed]}", owner=owner, now=now, retention=retention)
