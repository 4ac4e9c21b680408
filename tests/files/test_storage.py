"""The storage interface: the same promises from the local directory and from S3."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backend.errors import DomainError, ErrorCode
from backend.files import storage as storage_module
from backend.files.storage import (
    S3_MIN_PART_BYTES,
    FileMissing,
    FileTooBig,
    LocalStorage,
    Storage,
    parse_storage_url,
    storage_from_settings,
)
from backend.settings import Settings, SettingsError, load_settings
from tests.files.conftest import leftovers, nothing_in

MIB = 1024 * 1024


async def _chunks(size: int, *, seed: int = 7, chunk: int = 64 * 1024, digest: hashlib._Hash | None = None,
                  fail_after: int | None = None) -> AsyncIterator[bytes]:
    """``size`` pseudo-random bytes made as they are read (never held whole)."""
    rng = random.Random(seed)
    sent = 0
    while sent < size:
        if fail_after is not None and sent >= fail_after:
            raise RuntimeError("the source broke off")
        part = rng.randbytes(min(chunk, size - sent))
        if digest is not None:
            digest.update(part)
        sent += len(part)
        yield part


async def _read(storage: Storage, key: str) -> bytes:
    return b"".join([chunk async for chunk in await storage.open(key)])


async def test_put_open_and_delete_a_file(storage: Storage) -> None:
    size = await storage.put("photos/2026/12/07/a.jpg", b"\xff\xd8 a photo", content_type="image/jpeg", max_bytes=1024)

    assert size == 10
    assert await storage.exists("photos/2026/12/07/a.jpg")
    assert await _read(storage, "photos/2026/12/07/a.jpg") == b"\xff\xd8 a photo"
    assert await storage.keys() == ["photos/2026/12/07/a.jpg"]

    await storage.delete("photos/2026/12/07/a.jpg")
    await storage.delete("photos/2026/12/07/a.jpg")  # already gone: not an error

    assert not await storage.exists("photos/2026/12/07/a.jpg")
    assert await leftovers(storage) == nothing_in(storage)


async def test_put_a_stream_replaces_nothing_else_and_an_empty_file_is_a_file(storage: Storage) -> None:
    await storage.put("receipts/one.pdf", _chunks(100_000), content_type="application/pdf", max_bytes=MIB)
    await storage.put("receipts/empty.txt", b"", content_type="text/plain", max_bytes=MIB)

    assert await _read(storage, "receipts/empty.txt") == b""
    assert len(await _read(storage, "receipts/one.pdf")) == 100_000
    assert await storage.keys() == ["receipts/empty.txt", "receipts/one.pdf"]


async def test_a_missing_file_is_a_typed_error_before_any_byte(storage: Storage) -> None:
    with pytest.raises(FileMissing) as refused:
        await storage.open("photos/never-stored.jpg")

    assert refused.value.code is ErrorCode.FILE_NOT_FOUND
    assert refused.value.message_en == "The file does not exist (or expired and was deleted)"


@pytest.mark.parametrize("size", [2 * MIB + 1, S3_MIN_PART_BYTES + MIB])  # before and after a first S3 part
async def test_a_stream_past_its_size_cap_is_refused_and_leaves_nothing(storage: Storage, size: int) -> None:
    cap = size - 1
    with pytest.raises(FileTooBig) as refused:
        await storage.put("exports/too-big.xlsx", _chunks(size), content_type="application/octet-stream", max_bytes=cap)

    assert refused.value.code is ErrorCode.FILE_TOO_LARGE
    assert refused.value.field == "file"
    assert await leftovers(storage) == nothing_in(storage)


async def test_bytes_past_the_cap_are_refused_and_exactly_the_cap_is_stored(storage: Storage) -> None:
    with pytest.raises(FileTooBig) as refused:
        await storage.put("photos/big.jpg", b"x" * 1025, content_type="image/jpeg", max_bytes=1024)
    await storage.put("photos/fits.jpg", b"x" * 1024, content_type="image/jpeg", max_bytes=1024)

    assert refused.value.message == "文件超过大小上限 1 KB, 未保存"
    assert await storage.keys() == ["photos/fits.jpg"]


async def test_a_source_that_fails_mid_way_leaves_nothing(storage: Storage) -> None:
    with pytest.raises(RuntimeError, match="broke off"):
        await storage.put("exports/broken.xlsx", _chunks(8 * MIB, fail_after=6 * MIB), content_type="text/plain",
                          max_bytes=64 * MIB)

    assert await leftovers(storage) == nothing_in(storage)


async def test_a_file_of_a_few_megabytes_streams_in_and_out_without_being_held_in_memory(storage: Storage) -> None:
    size = 24 * MIB
    written, read = hashlib.sha256(), hashlib.sha256()
    tracemalloc.start()
    try:
        await storage.put("exports/large.bin", _chunks(size, digest=written), content_type="application/octet-stream",
                          max_bytes=size)
        received = 0
        async for chunk in await storage.open("exports/large.bin"):
            read.update(chunk)
            received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert received == size and read.hexdigest() == written.hexdigest()
    # At most one S3 part (5 MB) and its joined copy in memory; locally a chunk.
    assert peak < size / 2, f"peak {peak / MIB:.1f} MB for a {size / MIB:.0f} MB file"


async def test_put_path_takes_over_a_finished_file(storage: Storage) -> None:
    spooled = storage.staging_directory() / "export-under-test.xlsx"
    spooled.write_bytes(b"PK finished workbook")

    size = await storage.put_path("exports/done.xlsx", spooled, content_type="application/zip")

    assert size == 20
    assert not spooled.exists()
    assert await _read(storage, "exports/done.xlsx") == b"PK finished workbook"
    assert await leftovers(storage) == {**nothing_in(storage), "keys": ["exports/done.xlsx"]}


@pytest.mark.parametrize("method", ["put", "put_path"])
async def test_a_local_put_cancelled_while_its_rename_is_in_flight_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str,
) -> None:
    # The rename runs in a worker thread a cancellation cannot stop: hold it until the
    # put is cancelled, then let it land. The put waits for it and undoes it.
    storage = LocalStorage(tmp_path / "files")
    moving, cancelled = threading.Event(), threading.Event()
    real_move = storage_module._move

    def slow_move(source: Path, target: Path) -> None:
        moving.set()
        cancelled.wait(10)
        real_move(source, target)

    monkeypatch.setattr(storage_module, "_move", slow_move)
    if method == "put":
        call = storage.put("photos/late.jpg", b"photo", content_type="image/jpeg", max_bytes=100)
    else:
        spooled = storage.staging_directory() / "export.xlsx"
        spooled.write_bytes(b"PK workbook")
        call = storage.put_path("exports/late.xlsx", spooled, content_type="application/zip")
    task = asyncio.ensure_future(call)
    assert await asyncio.to_thread(moving.wait, 10)
    task.cancel()
    await asyncio.sleep(0.05)  # the cancellation is delivered while the rename still waits
    cancelled.set()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await leftovers(storage) == nothing_in(storage)


@pytest.mark.parametrize("key", ["../etc/passwd", ".staging/x", "a//b", "照片.jpg", "x" * 256])
async def test_keys_that_could_escape_or_collide_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(DomainError) as refused:
        await storage.put(key, b"x", content_type="text/plain", max_bytes=10)

    assert refused.value.code is ErrorCode.INVALID
    assert await leftovers(storage) == nothing_in(storage)


def test_the_staging_sweep_deletes_only_old_files(tmp_path: Path) -> None:
    import os

    storage = LocalStorage(tmp_path)
    old, fresh = storage.staging_directory() / "old.part", storage.staging_directory() / "fresh.part"
    old.write_bytes(b"left by a crash")
    fresh.write_bytes(b"being written")
    os.utime(old, (0, 0))

    assert storage.sweep_staging(older_than_s=3600) == 1
    assert sorted(path.name for path in storage.staging_directory().iterdir()) == ["fresh.part"]


# --------------------------------------------------------------------------- choosing the backend


def test_the_default_storage_is_the_data_directory(tmp_path: Path) -> None:
    storage = storage_from_settings(Settings(data_dir=tmp_path))

    assert isinstance(storage, LocalStorage) and storage.root == (tmp_path / "files").resolve()


def test_storage_urls_name_a_directory_or_a_bucket(tmp_path: Path) -> None:
    s3 = parse_storage_url("s3://meter-files/shuiwu/prod?endpoint=http://minio:9000&region=cn-north-1&part_size_mb=16",
                           data_dir=tmp_path)

    assert parse_storage_url(f"file://{tmp_path}/store", data_dir=tmp_path).directory == tmp_path / "store"
    assert parse_storage_url("/srv/shuiwu/files", data_dir=tmp_path).directory == Path("/srv/shuiwu/files")
    assert (s3.bucket, s3.prefix, s3.endpoint_url, s3.region, s3.part_bytes) == (
        "meter-files", "shuiwu/prod", "http://minio:9000", "cn-north-1", 16 * MIB)


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://host/files", "must be a directory, file:///path or s3://bucket/prefix"),
    ("s3://", "s3:// needs a bucket name"),
    ("s3://bucket?colour=red", "unknown storage URL option(s): colour"),
    ("s3://bucket?part_size_mb=4", "part_size_mb must be a whole number from 5 to 1024"),
    ("s3://bucket?endpoint=minio:9000", "endpoint must be an http:// or https:// URL"),
])
def test_a_bad_storage_url_stops_the_process_with_one_line(url: str, why: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(storage_url=url)

    assert str(refused.value).startswith("bad setting SHUIWU_STORAGE_URL: ")
    assert why in str(refused.value)
