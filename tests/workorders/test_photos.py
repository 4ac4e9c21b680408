"""Work orders' photos: JPEG, PNG and HEIC accepted, anything else, someone else's or too
large refused, a resident's stored upright without any metadata (GPS, XMP), odd EXIF
no error, a thumbnail made, the kept files kept."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.auth.models import PrincipalKind
from backend.auth.principal import Principal
from backend.clock import utcnow
from backend.errors import DomainError, ErrorCode
from backend.files.photos import sniff_photo
from backend.files.service import FileStore
from backend.files.storage import LocalStorage
from backend.workorders.photos import GPS_IFD, MAX_PHOTOS_PER_STAGE, THUMBNAIL_SIDE, keep_order_photos, process_photo, store_order_photos
from tests.graphql.client import api_settings
from tests.workorders.photos_support import photo

RESIDENT = Principal(kind=PrincipalKind.resident, id=41, name="住户", household_ids=(1,))
STAFF = Principal(kind=PrincipalKind.staff, id=42, name="王磊")
MAX_BYTES = 2 * 1024 * 1024


def opened(content: bytes) -> Image.Image:
    return Image.open(io.BytesIO(content))


def test_a_residents_photo_is_stored_upright_without_any_metadata() -> None:
    exif = Image.Exif()
    exif[0x010F] = "Apple"
    exif[0x0112] = 6  # taken with the phone turned: shown rotated 90° clockwise
    exif[GPS_IFD] = {1: "N", 2: (31.0, 14.0, 0.0), 3: "E", 4: (121.0, 28.0, 0.0)}
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="31,13.5N"/></rdf:RDF>'
           b'</x:xmpmeta>')
    out = io.BytesIO()
    Image.new("RGB", (800, 600), "teal").save(out, format="JPEG", exif=exif, xmp=xmp, comment=b"Home, 31.22N 121.47E")

    made = process_photo(out.getvalue(), content_type="image/jpeg", strip_location=True)

    assert made.stored is not None and made.content_type == "image/jpeg"
    stored = opened(made.stored)
    assert stored.size == (600, 800)  # turned upright, so no orientation is needed
    assert dict(stored.getexif()) == {} and not {"exif", "xmp", "comment"} & set(stored.info)
    assert b"GPSLatitude" not in made.stored and b"31.22N" not in made.stored
    assert opened(made.thumbnail).size == (240, THUMBNAIL_SIDE) and b"GPSLatitude" not in made.thumbnail


# JPEGs whose EXIF holds tags of unexpected types, as some phones and editors write
# (Pillow decodes them; writing their EXIF back raises TypeError, struct.error …).
ODD_EXIF_JPEGS = [base64.b64decode(line) for line in
                  (Path(__file__).parent / "odd_exif_jpegs.b64").read_text().split()]


@pytest.mark.parametrize("content", ODD_EXIF_JPEGS, ids=["1", "2", "3"])
def test_a_photo_with_odd_exif_is_stored_for_a_resident_and_a_staff_member(content: bytes) -> None:
    residents = process_photo(content, content_type="image/jpeg", strip_location=True)
    staffs = process_photo(content, content_type="image/jpeg", strip_location=False)

    assert residents.stored is not None and opened(residents.stored).size == (16, 16)
    assert dict(opened(residents.stored).getexif()) == {}
    assert staffs.stored is None and opened(staffs.thumbnail).format == "JPEG"


def test_a_staff_jpeg_stays_as_uploaded_and_a_heic_becomes_a_jpeg() -> None:
    kept = process_photo(photo(), content_type="image/jpeg", strip_location=False)
    heic = photo("HEIF", (640, 480))
    converted = process_photo(heic, content_type="image/heic", strip_location=False)

    assert kept.stored is None and kept.content_type == "image/jpeg"
    assert sniff_photo(heic[:12]) == "image/heic"
    assert converted.stored is not None and opened(converted.stored).format == "JPEG"
    assert opened(converted.stored).getexif().get_ifd(GPS_IFD) != {}  # staff: the visit's place is evidence
    assert opened(converted.thumbnail).size == (THUMBNAIL_SIDE, 240)


def test_no_image_and_too_many_pixels_are_refused_before_decoding() -> None:
    with pytest.raises(DomainError) as garbage:
        process_photo(b"\xff\xd8\xff" + b"not a jpeg" * 100, content_type="image/jpeg", strip_location=True)
    with pytest.raises(DomainError) as bomb:
        process_photo(photo("PNG", (2000, 1000), gps=False), content_type="image/png", strip_location=True,
                      max_pixels=1_999_999)

    assert (garbage.value.code, bomb.value.code) == (ErrorCode.PHOTO_INVALID, ErrorCode.PHOTO_INVALID)


@pytest.fixture
async def files(tmp_path: Path) -> AsyncIterator[FileStore]:
    store = FileStore(LocalStorage(tmp_path / "files"), api_settings(data_dir=tmp_path))
    yield store
    await store.aclose()


async def _upload(files: FileStore, sessions: async_sessionmaker[AsyncSession], content: bytes, content_type: str,
                  owner: Principal) -> str:
    stored = await files.put(sessions, content=content, content_type=content_type, max_bytes=10 * MAX_BYTES,
                             purpose="photos", filename="p", owner=owner, now=utcnow(), retention=timedelta(hours=24))
    return stored.key


async def _expiry(sessions: async_sessionmaker[AsyncSession], key: str) -> object:
    async with sessions() as session:
        return (await session.execute(text("SELECT expires_at FROM stored_files WHERE key = :k"), {"k": key})).scalar_one()


async def test_stored_order_photos_are_copies_without_gps_kept_and_the_uploads_expire(
        files: FileStore, committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    jpeg = await _upload(files, committed_sessions, photo(), "image/jpeg", RESIDENT)
    heic = await _upload(files, committed_sessions, photo("HEIF", (640, 480)), "image/heic", RESIDENT)
    now = utcnow()

    async with committed_sessions() as session, session.begin():
        stored = await store_order_photos(session, files, committed_sessions, photo_ids=[jpeg, heic], owner=RESIDENT,
                                          now=now, max_bytes=MAX_BYTES)
        await keep_order_photos(session, files, stored, now=now)

    assert [p.replaced for p in stored] == [jpeg, heic]
    for kept in stored:
        content = b"".join([chunk async for chunk in await files.open(kept.file_key)])
        assert opened(content).getexif().get_ifd(GPS_IFD) == {}
        assert await _expiry(committed_sessions, kept.file_key) is None
        assert await _expiry(committed_sessions, kept.thumbnail_key) is None
    assert await _expiry(committed_sessions, jpeg) == now


@pytest.mark.parametrize(("content", "content_type", "owner", "code"), [
    (b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 64, "image/webp", RESIDENT, ErrorCode.PHOTO_INVALID),
    (b"%PDF-1.4 not a photo", "application/pdf", RESIDENT, ErrorCode.PHOTO_INVALID),
    (photo(), "image/jpeg", STAFF, ErrorCode.PHOTO_INVALID),  # someone else's upload
    (photo(size=(1200, 1200)) + b"\x00" * MAX_BYTES, "image/jpeg", RESIDENT, ErrorCode.FILE_TOO_LARGE),
], ids=["webp", "pdf", "someone_elses", "too_large"])
async def test_a_photo_that_is_no_order_photo_is_refused_and_nothing_is_kept(
        files: FileStore, committed_sessions: async_sessionmaker[AsyncSession], content: bytes, content_type: str,
        owner: Principal, code: ErrorCode) -> None:
    key = await _upload(files, committed_sessions, content, content_type, owner)
    async with committed_sessions() as session:
        before = (await session.execute(text("SELECT count(*) FROM stored_files"))).scalar_one()

    with pytest.raises(DomainError) as refused:
        async with committed_sessions() as session, session.begin():
            await store_order_photos(session, files, committed_sessions, photo_ids=[key], owner=RESIDENT, now=utcnow(),
                                     max_bytes=MAX_BYTES)

    assert refused.value.code is code
    async with committed_sessions() as session:
        assert (await session.execute(text("SELECT count(*) FROM stored_files"))).scalar_one() == before


async def test_at_most_nine_photos_at_a_time(files: FileStore, committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    keys = [f"photos/2026/12/07/{index:032x}.jpg" for index in range(MAX_PHOTOS_PER_STAGE + 1)]

    with pytest.raises(DomainError) as refused:
        async with committed_sessions() as session:
            await store_order_photos(session, files, committed_sessions, photo_ids=keys, owner=RESIDENT, now=utcnow(),
                                     max_bytes=MAX_BYTES)

    assert (refused.value.code, refused.value.field) == (ErrorCode.PHOTO_INVALID, "photoIds")
