"""Stored files through the real app on a real socket, against both backends: signed
links (one-time and reusable, dead after logout), the purge job, and exports that go
through the storage and leave nothing behind however their download ends."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.app import create_app
from backend.auth.principal import Principal
from backend.auth.service import authenticate
from backend.clock import utcnow
from backend.exports import excel
from backend.files import storage as storage_module
from backend.files.http import serve_export
from backend.files.jobs import purge_expired_files
from backend.files.service import CLAIM_TTL, FileStore
from backend.files.storage import FileMissing, FileTooBig, LocalStorage
from backend.jobs import runtime_for
from tests.factories import auth_policy
from tests.files.conftest import ACCESS_KEY, NOTHING, SECRET_KEY, S3Server, leftovers, nothing_in
from tests.graphql import conftest as graphql_fixtures
from tests.graphql.client import TEST_SECRET, api_settings
from tests.graphql.conftest import World
from tests.live import serving

world = graphql_fixtures.world
engine_for_module = graphql_fixtures.engine_for_module

LOGIN = "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { tokens { accessToken } } }"
# Far more than the loopback socket buffers hold, so the client leaves mid-download.
BIG_EXPORT_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Served:
    url: str
    host: str
    port: int
    files: FileStore


async def _big_export(request: Request) -> Response:
    files: FileStore = request.app.state.services["files"]
    spooled = files.spool_directory() / f"big-{uuid.uuid4().hex}.xlsx"
    with spooled.open("wb") as handle:  # a sparse file: no time spent writing it
        handle.truncate(BIG_EXPORT_BYTES)
    owner = await _principal(request.app.state.sessions, request.headers["authorization"].removeprefix("Bearer "))
    return await serve_export(files, request.app.state.sessions, spooled, filename="big.xlsx", owner=owner)


async def _failing_export(request: Request) -> Response:
    files: FileStore = request.app.state.services["files"]

    def write(path: Path, next_chunk: Any) -> int:
        with open(path, "wb") as handle:
            while chunk := next_chunk():
                handle.write(b"".join(chunk))
        return 0

    async def rows() -> AsyncIterator[bytes]:
        for _ in range(excel.CHUNK_ROWS):
            yield b"row\n"
        raise RuntimeError("the row source failed mid-export")

    path, _ = await excel.spool_rows(write, rows(), prefix="shuiwu-failing-", directory=str(files.spool_directory()))
    return Response(path.read_bytes())  # never reached


@pytest.fixture(scope="module", params=["local", "s3"])
async def served(request: pytest.FixtureRequest, database_url: str, tmp_path_factory: pytest.TempPathFactory,
                 world: World) -> AsyncIterator[Served]:
    overrides: dict[str, Any] = {"data_dir": tmp_path_factory.mktemp("data")}
    if request.param == "s3":
        s3: S3Server = request.getfixturevalue("s3_server")
        overrides.update(storage_url=s3.storage_url(f"live-{uuid.uuid4().hex[:8]}"), storage_access_key_id=ACCESS_KEY,
                         storage_secret_access_key=SECRET_KEY)
    app = create_app(api_settings(**overrides), database_url, extra_routes=[
        Route("/test-big-export", _big_export), Route("/test-failing-export", _failing_export)])
    files: FileStore = app.state.services["files"]
    with serving(app) as (host, port):
        yield Served(f"http://{host}:{port}", host, port, files)
    await files.aclose()  # this loop's S3 client (the server's closed with it)


@dataclass(frozen=True, slots=True)
class Admin:
    token: str
    principal: Principal


@pytest.fixture(scope="module")
async def admin(served: Served, world: World, committed_sessions: async_sessionmaker[AsyncSession]) -> Admin:
    """One login for the module's tests that do not end it (argon2 costs a third of a second)."""
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
        token = await _login(http, world)
    return Admin(token, await _principal(committed_sessions, token))


@pytest.fixture
async def http(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        yield client


async def _login(http: httpx.AsyncClient, world: World) -> str:
    response = await http.post("/graphql", json={"query": LOGIN, "variables": {"u": world.admin.username,
                                                                              "p": world.admin.password}})
    token: str = response.json()["data"]["login"]["tokens"]["accessToken"]
    return token


async def _principal(sessions: async_sessionmaker[AsyncSession], token: str) -> Principal:
    async with sessions() as session:
        return await authenticate(session, token=token, now=utcnow(), policy=auth_policy(TEST_SECRET))


def _refusal(response: httpx.Response) -> tuple[int, str]:
    extensions = response.json()["errors"][0]["extensions"]
    return response.status_code, extensions.get("reason", extensions["code"])


async def _rows(sessions: async_sessionmaker[AsyncSession], purpose: str) -> list[str]:
    async with sessions() as session:
        found = await session.execute(text("SELECT key FROM stored_files WHERE purpose = :purpose ORDER BY key"),
                                      {"purpose": purpose})
        return list(found.scalars())


async def _eventually_nothing_left(served: Served, sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        found = {**await leftovers(served.files.storage), "rows": await _rows(sessions, "exports")}
        found["keys"] = [key for key in found["keys"] if key.startswith("exports/")]  # other tests' files stay
        if found == {**nothing_in(served.files.storage), "rows": []} or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- signed links


async def test_a_one_time_link_downloads_the_file_once(served: Served, http: httpx.AsyncClient, admin: Admin,
                                                       committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    principal = admin.principal
    stored = await served.files.put(committed_sessions, content=b"%PDF receipt", content_type="application/pdf",
                                    max_bytes=1024, purpose="receipts", filename="收据.pdf", owner=principal,
                                    now=utcnow(), retention=timedelta(days=1))
    url = served.files.download_url(key=stored.key, principal=principal, now=utcnow())

    first = await http.get(url)
    again = await http.get(url)

    assert first.status_code == 200 and first.content == b"%PDF receipt"
    assert first.headers["content-type"] == "application/pdf"
    assert first.headers["content-disposition"] == "attachment; filename*=utf-8''%E6%94%B6%E6%8D%AE.pdf"
    assert first.headers["cache-control"] == "no-store"
    assert _refusal(again) == (401, "TOKEN_REVOKED")
    assert await served.files.storage.exists(stored.key)  # a one-time link spends the link, not the file


async def test_a_reusable_link_works_until_its_login_ends(served: Served, http: httpx.AsyncClient, world: World,
                                                          committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    token = await _login(http, world)
    principal = await _principal(committed_sessions, token)
    stored = await served.files.put(committed_sessions, content=b"\xff\xd8 photo", content_type="image/jpeg",
                                    max_bytes=1024, purpose="photos", filename="meter.jpg", owner=principal,
                                    now=utcnow(), retention=None)
    url = served.files.download_url(key=stored.key, principal=principal, now=utcnow(), reusable=True)

    shown = [(await http.get(url)).status_code for _ in range(3)]
    await http.post("/graphql", json={"query": "mutation { logout { ok } }"}, headers={"Authorization": f"Bearer {token}"})
    after_logout = await http.get(url)

    assert shown == [200, 200, 200]
    assert _refusal(after_logout) == (401, "TOKEN_REVOKED")


async def test_a_link_is_bound_to_its_file_and_a_bearer_token_alone_is_refused(
    served: Served, http: httpx.AsyncClient, admin: Admin, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    token, principal = admin.token, admin.principal
    mine = await served.files.put(committed_sessions, content=b"a", content_type="text/plain", max_bytes=10,
                                  purpose="receipts", filename="a.txt", owner=principal, now=utcnow(), retention=None)
    other = await served.files.put(committed_sessions, content=b"b", content_type="text/plain", max_bytes=10,
                                   purpose="receipts", filename="b.txt", owner=principal, now=utcnow(), retention=None)
    url = served.files.download_url(key=mine.key, principal=principal, now=utcnow(), reusable=True)

    swapped = await http.get(url.replace(mine.key, other.key))
    made_reusable = await http.get(served.files.download_url(key=mine.key, principal=principal, now=utcnow()) + "&reusable=1")
    bearer = await http.get(f"/files/{mine.key}", headers={"Authorization": f"Bearer {token}"})

    assert _refusal(swapped) == (401, "TOKEN_INVALID")
    assert _refusal(made_reusable) == (401, "TOKEN_INVALID")
    assert _refusal(bearer) == (401, "UNAUTHENTICATED")


async def test_a_deleted_file_answers_file_not_found(served: Served, http: httpx.AsyncClient, admin: Admin,
                                                     committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    principal = admin.principal
    stored = await served.files.put(committed_sessions, content=b"gone soon", content_type="text/plain", max_bytes=100,
                                    purpose="receipts", filename="x.txt", owner=principal, now=utcnow(), retention=None)
    url = served.files.download_url(key=stored.key, principal=principal, now=utcnow())

    await served.files.delete(committed_sessions, key=stored.key)
    response = await http.get(url)

    assert _refusal(response) == (404, "FILE_NOT_FOUND")
    assert not await served.files.storage.exists(stored.key)


async def test_a_put_past_its_cap_keeps_neither_bytes_nor_row(served: Served,
                                                              committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    before = await _rows(committed_sessions, "photos")

    async def photo() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"\0" * 65536

    with pytest.raises(FileTooBig):
        await served.files.put(committed_sessions, content=photo(), content_type="image/jpeg", max_bytes=2 * 1024 * 1024,
                               purpose="photos", filename="huge.jpg", owner=None, now=utcnow(), retention=None)

    assert await _rows(committed_sessions, "photos") == before
    assert (await leftovers(served.files.storage))["staging"] == []


# --------------------------------------------------------------------------- purge


async def test_the_purge_job_deletes_expired_files_only(served: Served,
                                                        committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    now = utcnow()

    async def put(name: str, retention: timedelta | None) -> str:
        stored = await served.files.put(committed_sessions, content=name.encode(), content_type="text/plain", max_bytes=100,
                                        purpose="purge-test", filename=name, owner=None, now=now, retention=retention)
        return stored.key

    expired = await put("expired.txt", timedelta(hours=1))
    later = await put("later.txt", timedelta(hours=3))
    kept = await put("kept.txt", None)
    runtime = runtime_for(served.files.settings, committed_sessions, clock=lambda: now + timedelta(hours=2))

    try:
        purged = await purge_expired_files(runtime, {})
    finally:
        await runtime.service("files").aclose()

    async with committed_sessions() as session:
        rows = set((await session.execute(text("SELECT key FROM stored_files WHERE key = ANY(:keys)"),
                                          {"keys": [expired, later, kept]})).scalars())
    assert purged == 1
    assert rows == {later, kept}
    assert [await served.files.storage.exists(key) for key in (expired, later, kept)] == [False, True, True]


async def test_a_file_kept_by_the_transaction_that_references_it_outlives_its_claim(
    served: Served, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    now = utcnow()
    claimed = await served.files.put(committed_sessions, content=b"photo", content_type="image/jpeg", max_bytes=100,
                                     purpose="keep-test", filename="kept.jpg", owner=None, now=now,
                                     retention=timedelta(hours=1))
    abandoned = await served.files.put(committed_sessions, content=b"photo", content_type="image/jpeg", max_bytes=100,
                                       purpose="keep-test", filename="abandoned.jpg", owner=None, now=now,
                                       retention=timedelta(hours=1))
    async with committed_sessions() as session, session.begin():
        await served.files.keep(session, key=claimed.key, until=None)  # e.g. the work order now lists it
        with pytest.raises(FileMissing):
            await served.files.keep(session, key="keep-test/never-stored.jpg", until=None)
    runtime = runtime_for(served.files.settings, committed_sessions, clock=lambda: now + timedelta(hours=2))

    try:
        await purge_expired_files(runtime, {})
    finally:
        await runtime.service("files").aclose()

    assert [await served.files.storage.exists(key) for key in (claimed.key, abandoned.key)] == [True, False]


async def test_a_put_killed_after_writing_its_bytes_is_purged_when_its_claim_ends(
    served: Served, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    now = utcnow()
    # What a put killed between writing the bytes and recording their size leaves: its
    # reserved row and its bytes. Meant to be kept forever, it still expires with its claim.
    reserved = await served.files._reserve(committed_sessions, purpose="claim-test", filename="killed.jpg",
                                           content_type="image/jpeg", owner=None, now=now)
    await served.files.storage.put(reserved.key, b"orphan", content_type="image/jpeg", max_bytes=100)
    finished = await served.files.put(committed_sessions, content=b"kept", content_type="image/jpeg", max_bytes=100,
                                      purpose="claim-test", filename="kept.jpg", owner=None, now=now, retention=None)

    async def expiry(key: str) -> list[Any]:
        async with committed_sessions() as session:
            found = await session.execute(text("SELECT expires_at FROM stored_files WHERE key = :key"), {"key": key})
            return list(found.scalars())

    before = [await expiry(reserved.key), await expiry(finished.key)]
    await served.files.purge(committed_sessions, now=now + CLAIM_TTL - timedelta(minutes=1))
    still_claimed = await served.files.storage.exists(reserved.key)
    await served.files.purge(committed_sessions, now=now + CLAIM_TTL + timedelta(minutes=1))

    assert before == [[now + CLAIM_TTL], [None]]
    assert still_claimed  # a put still writing is left alone until its claim ends
    assert [await expiry(reserved.key), await expiry(finished.key)] == [[], [None]]
    assert [await served.files.storage.exists(key) for key in (reserved.key, finished.key)] == [False, True]


async def test_a_put_cancelled_while_its_file_moves_in_leaves_neither_bytes_nor_row(
    tmp_path: Path, committed_sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The local backend renames the finished staging file into place in a worker thread,
    # which a cancellation cannot stop: hold that rename until the put is cancelled.
    files = FileStore(LocalStorage(tmp_path / "files"), api_settings(data_dir=tmp_path))
    moving, cancelled = threading.Event(), threading.Event()
    real_move = storage_module._move

    def slow_move(source: Path, target: Path) -> None:
        moving.set()
        cancelled.wait(10)
        time.sleep(0.05)  # the cancelled put's cleanup would run now, before the rename lands
        real_move(source, target)

    monkeypatch.setattr(storage_module, "_move", slow_move)
    put = asyncio.create_task(files.put(committed_sessions, content=b"photo", content_type="image/jpeg", max_bytes=100,
                                        purpose="cancel-test", filename="c.jpg", owner=None, now=utcnow(),
                                        retention=None))
    assert await asyncio.to_thread(moving.wait, 10)
    put.cancel()
    cancelled.set()
    with pytest.raises(asyncio.CancelledError):
        await put

    assert await leftovers(files.storage) == NOTHING
    assert await _rows(committed_sessions, "cancel-test") == []


# --------------------------------------------------------------------------- exports on the storage


async def test_an_export_is_streamed_from_the_storage_and_then_deleted(
    served: Served, http: httpx.AsyncClient, admin: Admin, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    response = await http.get("/exports/households.xlsx", headers={"Authorization": f"Bearer {admin.token}"})

    assert response.status_code == 200 and response.content.startswith(b"PK")
    assert response.headers["content-length"] == str(len(response.content))
    assert await _eventually_nothing_left(served, committed_sessions) == {**nothing_in(served.files.storage), "rows": []}


def _leave_mid_download(served: Served, token: str) -> bytes:
    connection = socket.create_connection((served.host, served.port), timeout=30)
    connection.sendall(f"GET /test-big-export HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    head = connection.recv(65536)
    connection.close()  # the client goes away mid-download
    return head


async def test_a_client_that_leaves_mid_download_leaves_nothing_behind(
    served: Served, admin: Admin, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    head = await asyncio.to_thread(_leave_mid_download, served, admin.token)

    assert head.startswith(b"HTTP/1.1 200")
    assert await _eventually_nothing_left(served, committed_sessions) == {**nothing_in(served.files.storage), "rows": []}


async def test_an_export_whose_writer_fails_leaves_nothing_behind(
    served: Served, http: httpx.AsyncClient, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    response = await http.get("/test-failing-export")

    assert response.status_code == 500
    assert await _eventually_nothing_left(served, committed_sessions) == {**nothing_in(served.files.storage), "rows": []}
    assert not [name for name in os.listdir(served.files.spool_directory()) if name.startswith("shuiwu-failing-")]
