"""Work orders' photos: what an uploaded photo (``POST /files/photos``, docs/files.md)
becomes once an order references it.

- Only **JPEG, PNG and HEIC** (the upload also takes WebP, for dials; an order refuses
  it with PHOTO_INVALID), only the caller's own upload (PHOTO_INVALID otherwise, as
  ``enterReading``), at most ``SHUIWU_FILES_MAX_PHOTO_BYTES`` (the upload's cap; a file
  over it is refused FILE_TOO_LARGE here too).
- It is decoded with Pillow (HEIC through pillow-heif) **in a worker thread**, never on
  the event loop, after a check of its declared pixel count against
  :data:`MAX_PIXELS` (a decompression bomb is refused before its pixels are read).
- **A resident's photo is re-encoded as a JPEG without any metadata**: turned upright as
  its EXIF orientation says, then stored without EXIF, XMP or comments (the place a
  phone wrote into them is where the resident lives; dropping all of it also spares
  re-encoding EXIF that phones and editors write with odd tag types). Only the colour
  profile stays. The original upload is set to expire now, so the hourly purge deletes it. A staff
  member's JPEG or PNG is kept as uploaded (its location is evidence of a visit on
  site); a HEIC is converted to JPEG in both cases, since browsers do not show HEIC.
- A **thumbnail** (JPEG, longest side :data:`THUMBNAIL_SIDE`) is made for every photo.

The stored copy and the thumbnail are put with the upload's short claim and kept
(``files.keep(…, until=None)``) in the order's transaction: a refused order keeps
nothing.
"""

from __future__ import annotations

import asyncio
import io
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta

from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.auth.principal import Principal
from backend.errors import DomainError, ErrorCode
from backend.files.photos import PHOTO_PURPOSE
from backend.files.service import FileStore
from backend.files.storage import FileTooBig

# What an order accepts (the upload also takes WebP, for dial photos).
ORDER_PHOTO_TYPES = frozenset({"image/jpeg", "image/png", "image/heic"})
# A phone's camera makes 12–50 megapixels; past this a file is refused before decoding.
MAX_PIXELS = 60_000_000
THUMBNAIL_SIDE = 320
JPEG_QUALITY = 85
MAX_PHOTOS_PER_STAGE = 9
# The EXIF tags of the image's orientation and of the GPS IFD (what a resident's photo
# must not keep; it keeps no EXIF at all).
ORIENTATION = 0x0112
GPS_IFD = 0x8825

_heif_registered = False


def _register_heif() -> None:
    global _heif_registered
    if not _heif_registered:
        from pillow_heif import register_heif_opener

        register_heif_opener()
        _heif_registered = True


class OrderPhotoInvalid(DomainError):
    code = ErrorCode.PHOTO_INVALID
    message = "照片须为本人上传的 JPEG、PNG 或 HEIC 图片"
    message_en = "A photo must be a JPEG, PNG or HEIC image you uploaded"


@dataclass(frozen=True, slots=True)
class Processed:
    """What :func:`process_photo` made: the bytes to store (None: keep the upload as it
    is), their type, and the thumbnail's JPEG bytes."""

    stored: bytes | None
    content_type: str
    thumbnail: bytes


def process_photo(content: bytes, *, content_type: str, strip_location: bool, max_pixels: int = MAX_PIXELS) -> Processed:
    """Decode ``content`` (blocking: run it in a thread), refuse it past ``max_pixels`` or
    when it is no image, and make its stored copy and thumbnail (module docstring)."""
    _register_heif()
    try:
        with Image.open(io.BytesIO(content)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise OrderPhotoInvalid(f"照片像素过多 (上限 {max_pixels // 1_000_000} 百万像素)",
                                        f"The photo has too many pixels (at most {max_pixels:,})", field="photoIds")
            image.load()
            reencode = strip_location or content_type == "image/heic"
            stored: bytes | None = None
            if strip_location:
                stored = _jpeg(_upright(image), icc_profile=image.info.get("icc_profile"))
            elif reencode:
                stored = _heic_as_jpeg(image)
            thumb = _upright(image)
            thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            thumbnail = _jpeg(thumb)
    except DomainError:
        raise
    except (OSError, ValueError, SyntaxError, struct.error, Image.DecompressionBombError) as error:
        raise OrderPhotoInvalid(field="photoIds") from error
    return Processed(stored=stored, content_type="image/jpeg" if reencode else content_type, thumbnail=thumbnail)


# How to turn an image whose EXIF orientation is n (2–8) upright (as ImageOps.exif_transpose).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def _upright(image: Image.Image) -> Image.Image:
    """The pixels turned as the EXIF orientation says, in RGB, with no metadata at all
    (EXIF, XMP, comments). Unlike ImageOps.exif_transpose it never re-encodes the EXIF,
    which raises on tags of unexpected types (as some phones and editors write)."""
    try:
        orientation = image.getexif().get(ORIENTATION)
    except (OSError, ValueError, SyntaxError, TypeError, struct.error):
        orientation = None
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    upright = (image.transpose(method) if method is not None else image).convert("RGB")
    upright.info = {}
    return upright


def _jpeg(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY, **{k: v for k, v in options.items() if v is not None})
    return out.getvalue()


def _heic_as_jpeg(image: Image.Image) -> bytes:
    """A staff member's HEIC as JPEG with its EXIF (location included: evidence of the
    visit); an EXIF that cannot be written back is dropped, the orientation applied."""
    try:
        exif = image.getexif().tobytes()
    except (ValueError, TypeError, AttributeError, OverflowError, struct.error):
        return _jpeg(_upright(image))
    return _jpeg(image.convert("RGB"), exif=exif)


@dataclass(frozen=True, slots=True)
class StoredPhoto:
    """An order's photo as stored: the file (the upload, or its re-encoded copy) and its
    thumbnail; ``replaced`` is the upload's key when the copy replaces it."""

    file_key: str
    thumbnail_key: str
    replaced: str | None


async def _read_all(files: FileStore, key: str, max_bytes: int) -> bytes:
    chunks = await files.open(key)
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        if len(buffer) > max_bytes:
            raise FileTooBig(max_bytes)
    return bytes(buffer)


async def store_order_photos(
    session: AsyncSession, files: FileStore, sessions: async_sessionmaker[AsyncSession], *, photo_ids: list[str],
    owner: Principal, now: datetime, max_bytes: int, claim: timedelta = timedelta(hours=24),
) -> list[StoredPhoto]:
    """Check each upload in ``photo_ids`` (the caller's own JPEG, PNG or HEIC, at most
    ``max_bytes``), process it off the event loop and store its copy and thumbnail
    (with a ``claim``: :func:`keep_order_photos` keeps them in the order's transaction)."""
    if len(photo_ids) > MAX_PHOTOS_PER_STAGE:
        raise OrderPhotoInvalid(f"每次最多 {MAX_PHOTOS_PER_STAGE} 张照片", f"At most {MAX_PHOTOS_PER_STAGE} photos at a time",
                                field="photoIds")
    if len(set(photo_ids)) != len(photo_ids):
        raise OrderPhotoInvalid("照片重复", "A photo is listed twice", field="photoIds")
    strip = owner.is_resident
    stored: list[StoredPhoto] = []
    for key in photo_ids:
        try:
            row = await files.describe(session, key=key)
        except ValueError:
            raise DomainError("文件不存在或已过期删除", "The file does not exist (or expired and was deleted)",
                              field="photoIds", code=ErrorCode.FILE_NOT_FOUND) from None
        except DomainError as error:
            error.field = "photoIds"
            raise
        if (row.purpose != PHOTO_PURPOSE or row.content_type not in ORDER_PHOTO_TYPES
                or (row.owner_kind, row.owner_id) != (owner.kind.value, owner.id)):
            raise OrderPhotoInvalid(field="photoIds")
        if row.size_bytes is not None and row.size_bytes > max_bytes:
            raise FileTooBig(max_bytes)
        content = await _read_all(files, key, max_bytes)
        processed = await asyncio.to_thread(process_photo, content, content_type=row.content_type,
                                            strip_location=strip)
        file_key, replaced = key, None
        if processed.stored is not None:
            copy = await files.put(sessions, content=processed.stored, content_type=processed.content_type,
                                   max_bytes=max(max_bytes, len(processed.stored)), purpose=PHOTO_PURPOSE,
                                   filename="photo.jpg", owner=owner, now=now, retention=claim)
            file_key, replaced = copy.key, key
        thumb = await files.put(sessions, content=processed.thumbnail, content_type="image/jpeg",
                                max_bytes=len(processed.thumbnail), purpose=PHOTO_PURPOSE, filename="thumbnail.jpg",
                                owner=owner, now=now, retention=claim)
        stored.append(StoredPhoto(file_key=file_key, thumbnail_key=thumb.key, replaced=replaced))
    return stored


async def keep_order_photos(session: AsyncSession, files: FileStore, photos: list[StoredPhoto], *, now: datetime) -> None:
    """In the order's transaction: keep the stored copies and thumbnails until deleted, and
    let the uploads they replace (a resident's, with GPS) expire now (the purge deletes them)."""
    for photo in photos:
        await files.keep(session, key=photo.file_key, until=None)
        await files.keep(session, key=photo.thumbnail_key, until=None)
        if photo.replaced is not None:
            await files.keep(session, key=photo.replaced, until=now)
