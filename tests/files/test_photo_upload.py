"""POST /files/photos through the real app on a real socket: a dial photo uploaded by its
reader and then referenced by enterReading (kept from then on), someone else's photo
refused, the refusals (no token, wrong type, not an image, too large while streaming,
too many), and the photo downloadable by its owner through a signed link."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.auth.principal import Principal
from backend.auth.service import authenticate
from backend.clock import utcnow
from backend.errors import ErrorCode, RateLimited
from backend.files.http import PhotosPerDay, count_photo_upload
from backend.files.service import FileStore
from backend.graphql.relay import encode_id
from tests.factories import auth_policy, make_staff
from tests.graphql import conftest as graphql_fixtures
from tests.graphql.client import TEST_SECRET
from tests.graphql.conftest import World
from tests.live import LiveServer, live_server
from tests.readings.factories import make_meter
from tests.test_edge import _answer, _head, _stream_chunks_until_answered

world = graphql_fixtures.world
engine_for_module = graphql_fixtures.engine_for_module

MAX_PHOTO = 64 * 1024
LOGIN = "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { tokens { accessToken } } }"
ENTER = """
mutation($input: EnterReadingInput!) {
  enterReading(input: $input) { inserted errors { field code } }
}"""


def _image(kind: str) -> bytes:
    """A small real image of ``kind`` (PNG, JPEG, WEBP), as a camera app would send it."""
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (30, 120, 200)).save(out, format=kind)
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class Reader:
    token: str
    principal: Principal  # with its login session: what a download link is signed for
    meter_id: str


@pytest.fixture(scope="module")
def live(database_url: str, tmp_path_factory: pytest.TempPathFactory, world: World) -> Iterator[LiveServer]:
    with live_server(database_url, data_dir=tmp_path_factory.mktemp("data"), files_max_photo_bytes=MAX_PHOTO) as server:
        yield server


async def _login(url: str, username: str, password: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        response = await http.post("/graphql", json={"query": LOGIN, "variables": {"u": username, "p": password}})
    token: str = response.json()["data"]["login"]["tokens"]["accessToken"]
    return token


async def _principal(sessions: async_sessionmaker[AsyncSession], token: str) -> Principal:
    async with sessions() as session:
        return await authenticate(session, token=token, now=utcnow(), policy=auth_policy(TEST_SECRET))


@pytest.fixture(scope="module")
async def reader(live: LiveServer, world: World, committed_sessions: async_sessionmaker[AsyncSession]) -> Reader:
    """The admin, logged in once, with a meter under 城东 to read."""
    async with committed_sessions() as session, session.begin():
        meter = await make_meter(session, area_id=world.tree.east_community.id, install_date=None)
    token = await _login(live.url, world.admin.username, world.admin.password)
    return Reader(token, await _principal(committed_sessions, token), encode_id("Meter", meter.id or 0))


@pytest.fixture
async def http(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        yield client


def _bearer(token: str, content_type: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers


def _code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["errors"][0]["extensions"]["code"]


async def _photo_rows(sessions: async_sessionmaker[AsyncSession]) -> list[tuple[str, str | None, int | None, datetime | None]]:
    async with sessions() as session:
        found = await session.execute(text(
            "SELECT key, owner_kind, owner_id, expires_at FROM stored_files WHERE purpose = 'photos' ORDER BY key"))
        return [tuple(row) for row in found]  # type: ignore[misc]


async def _enter(http: httpx.AsyncClient, reader: Reader, photo_id: str, total: str) -> dict[str, object]:
    read_at = (datetime.now(UTC) - timedelta(minutes=int(Decimal(total)))).isoformat()
    response = await http.post("/graphql", headers=_bearer(reader.token), json={"query": ENTER, "variables": {
        "input": {"meterId": reader.meter_id, "readAt": read_at, "totalM3": total, "photoId": photo_id}}})
    entered: dict[str, object] = response.json()["data"]["enterReading"]
    return entered


# --------------------------------------------------------------------------- the happy path


async def test_a_readers_dial_photo_uploads_and_is_kept_once_enter_reading_references_it(
    http: httpx.AsyncClient, reader: Reader, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    png = _image("PNG")

    uploaded = await http.post("/files/photos", content=png, headers=_bearer(reader.token, "image/png"))

    assert uploaded.status_code == 201
    answer = uploaded.json()
    photo_id = answer["photoId"]
    assert (photo_id.startswith("photos/"), photo_id.endswith(".png"), answer["size"], answer["contentType"]) == (
        True, True, len(png), "image/png")
    # Unreferenced, it lives for the claim (24 hours by default), then the purge takes it.
    expires_at = datetime.fromisoformat(answer["expiresAt"])
    assert abs(expires_at - (utcnow() + timedelta(hours=24))) < timedelta(minutes=1)
    assert (photo_id, "staff", reader.principal.id, expires_at) in await _photo_rows(committed_sessions)

    entered = await _enter(http, reader, photo_id, "12")

    assert entered == {"inserted": 1, "errors": []}
    async with committed_sessions() as session:
        kept = (await session.execute(text("SELECT expires_at FROM stored_files WHERE key = :k"), {"k": photo_id})).one()
        linked = (await session.execute(text("SELECT photo_key FROM reading_entries WHERE photo_key = :k"),
                                        {"k": photo_id})).scalar_one()
    assert (kept.expires_at, linked) == (None, photo_id)


async def test_the_owner_downloads_the_photo_through_a_signed_link(
    live: LiveServer, http: httpx.AsyncClient, reader: Reader,
) -> None:
    jpeg = _image("JPEG")
    photo_id = (await http.post("/files/photos", content=jpeg, headers=_bearer(reader.token, "image/jpeg"))).json()["photoId"]
    files: FileStore = live.app.state.services["files"]

    link = files.download_url(key=photo_id, principal=reader.principal, now=utcnow(), reusable=True)
    downloaded = await http.get(link)
    again = await http.get(link)

    assert (downloaded.status_code, downloaded.headers["content-type"], downloaded.content) == (200, "image/jpeg", jpeg)
    assert downloaded.headers["x-content-type-options"] == "nosniff"
    assert again.content == jpeg
    # The bearer token alone reads nothing: only the code that signs a link decides who reads.
    assert (await http.get(f"/files/{photo_id}", headers=_bearer(reader.token))).status_code == 401


async def test_a_multipart_form_with_one_file_part_is_a_photo_too(http: httpx.AsyncClient, reader: Reader) -> None:
    webp = _image("WEBP")

    uploaded = await http.post("/files/photos", files={"file": ("dial.webp", webp, "image/webp")},
                               headers=_bearer(reader.token))
    lying = await http.post("/files/photos", files={"file": ("dial.png", webp, "image/png")}, headers=_bearer(reader.token))
    no_file = await http.post("/files/photos", data={"note": "x"}, files={"other": ("a.png", webp, "image/png")},
                              headers=_bearer(reader.token))

    assert (uploaded.status_code, uploaded.json()["contentType"], uploaded.json()["size"]) == (201, "image/webp", len(webp))
    assert _code(lying) == (422, "PHOTO_INVALID")
    assert no_file.status_code == 400


async def test_a_multipart_file_part_past_the_cap_is_413(http: httpx.AsyncClient, reader: Reader,
                                                         committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    png = _image("PNG")
    before = await _photo_rows(committed_sessions)

    over = await http.post("/files/photos", files={"file": ("dial.png", png + b"\0" * (MAX_PHOTO + 1 - len(png)), "image/png")},
                           headers=_bearer(reader.token))

    assert _code(over) == (413, "FILE_TOO_LARGE")
    assert await _photo_rows(committed_sessions) == before


# --------------------------------------------------------------------------- whose photo


async def test_someone_elses_photo_is_refused_by_enter_reading(
    http: httpx.AsyncClient, reader: Reader, world: World, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    # A resident may upload (a repair request's photo, later), as themselves.
    uploaded = await http.post("/files/photos", content=_image("JPEG"), headers=_bearer(world.resident_token, "image/jpeg"))
    photo_id = uploaded.json()["photoId"]
    assert uploaded.status_code == 201
    assert [row[1] for row in await _photo_rows(committed_sessions) if row[0] == photo_id] == ["resident"]

    entered = await _enter(http, reader, photo_id, "13")

    assert entered == {"inserted": 0, "errors": [{"field": "photoId", "code": "PHOTO_INVALID"}]}
    kept = [row[3] for row in await _photo_rows(committed_sessions) if row[0] == photo_id]
    assert kept != [None]  # still expiring: nobody kept it


# --------------------------------------------------------------------------- refusals


async def test_an_anonymous_upload_is_401_and_stores_nothing(
    http: httpx.AsyncClient, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    before = await _photo_rows(committed_sessions)

    refused = await http.post("/files/photos", content=_image("PNG"), headers={"Content-Type": "image/png"})
    forged = await http.post("/files/photos", content=_image("PNG"), headers=_bearer("not-a-token", "image/png"))

    assert _code(refused) == (401, "UNAUTHENTICATED")
    assert _code(forged) == (401, "UNAUTHENTICATED")
    assert await _photo_rows(committed_sessions) == before


async def test_a_body_that_is_not_the_declared_image_is_photo_invalid_and_stores_nothing(
    http: httpx.AsyncClient, reader: Reader, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    before = await _photo_rows(committed_sessions)
    png = _image("PNG")

    text_as_jpeg = await http.post("/files/photos", content=b"hello, not a photo", headers=_bearer(reader.token, "image/jpeg"))
    png_as_jpeg = await http.post("/files/photos", content=png, headers=_bearer(reader.token, "image/jpeg"))
    empty = await http.post("/files/photos", content=b"", headers=_bearer(reader.token, "image/png"))
    pdf_as_png = await http.post("/files/photos", content=b"%PDF-1.7\n" + png, headers=_bearer(reader.token, "image/png"))

    for response in (text_as_jpeg, png_as_jpeg, empty, pdf_as_png):
        assert _code(response) == (422, "PHOTO_INVALID")
        assert response.headers["connection"] == "close"  # whatever of the body is unread stays unread
        assert response.json()["errors"][0]["extensions"]["field"] == "file"
    assert await _photo_rows(committed_sessions) == before


async def test_a_type_that_is_no_photo_is_415_before_the_body_is_read(http: httpx.AsyncClient, reader: Reader) -> None:
    for content_type in ("text/plain", "application/octet-stream", "image/gif", "image/svg+xml"):
        response = await http.post("/files/photos", content=_image("PNG"), headers=_bearer(reader.token, content_type))
        assert _code(response) == (415, "UNSUPPORTED_MEDIA_TYPE"), content_type
    missing = await http.post("/files/photos", content=_image("PNG"), headers=_bearer(reader.token))
    assert _code(missing) == (415, "UNSUPPORTED_MEDIA_TYPE")


def test_a_photo_past_the_cap_is_413_while_the_client_is_still_sending(
    live: LiveServer, reader: Reader,
) -> None:
    connection = _head(live.host, live.port, "POST /files/photos HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                                             f"Authorization: Bearer {reader.token}\r\nTransfer-Encoding: chunked\r\n\r\n")
    with connection:
        sent = _stream_chunks_until_answered(connection, give_up_after=64 * 1024 * 1024, first=_image("PNG"))
        status, headers, body = _answer(connection)

    # The body is endless: the server answered after about the cap (64 KiB), not 64 MiB.
    assert sent < 16 * 1024 * 1024
    assert (status, headers["connection"]) == (413, "close")
    extensions = json.loads(body)["errors"][0]["extensions"]
    assert (extensions["code"], extensions["maxBytes"]) == ("FILE_TOO_LARGE", MAX_PHOTO)


def test_a_declared_length_past_the_cap_is_413_before_any_of_the_body_is_sent(live: LiveServer, reader: Reader) -> None:
    connection = _head(live.host, live.port, "POST /files/photos HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                                             f"Authorization: Bearer {reader.token}\r\nContent-Length: {MAX_PHOTO + 1}\r\n\r\n")
    with connection:
        status, _, body = _answer(connection)

    assert status == 413
    assert json.loads(body)["errors"][0]["extensions"]["code"] == "FILE_TOO_LARGE"


async def test_a_photo_of_exactly_the_cap_is_stored_and_one_byte_more_is_not(
    http: httpx.AsyncClient, reader: Reader, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    png = _image("PNG")
    at_cap = png + b"\0" * (MAX_PHOTO - len(png))

    stored = await http.post("/files/photos", content=at_cap, headers=_bearer(reader.token, "image/png"))
    before = await _photo_rows(committed_sessions)
    over = await http.post("/files/photos", content=at_cap + b"\0", headers=_bearer(reader.token, "image/png"))

    assert (stored.status_code, stored.json()["size"]) == (201, MAX_PHOTO)
    assert _code(over) == (413, "FILE_TOO_LARGE")
    assert await _photo_rows(committed_sessions) == before


async def test_a_principal_past_its_minute_is_429_until_the_next_minute(
    database_url: str, world: World, tmp_path: Path,
) -> None:
    with live_server(database_url, data_dir=tmp_path, files_photos_per_minute=2) as server:
        token = await _login(server.url, world.nobody.username, world.nobody.password)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            answers = [await http.post("/files/photos", content=_image("PNG"), headers=_bearer(token, "image/png"))
                       for _ in range(3)]

    assert [answer.status_code for answer in answers[:2]] == [201, 201]
    assert _code(answers[2]) == (429, "RATE_LIMITED")


async def test_the_minute_and_the_rolling_day_are_counted_per_principal(
    committed_sessions: async_sessionmaker[AsyncSession], world: World,
) -> None:
    async with committed_sessions() as session, session.begin():
        # Two who never uploaded: the day counts hits after its start, later ones included.
        principal, other = [(await make_staff(session, permissions=(), areas=[world.tree.east])).principal
                            for _ in range(2)]
    noon = datetime(2020, 3, 1, 4, 0, 10, tzinfo=UTC)  # long before any upload the other tests count

    for minute in (0, 0):
        await count_photo_upload(committed_sessions, principal, now=noon + timedelta(minutes=minute), per_minute=2,
                                 per_day=3)
    with pytest.raises(RateLimited) as minute_full:
        await count_photo_upload(committed_sessions, principal, now=noon, per_minute=2, per_day=3)
    await count_photo_upload(committed_sessions, principal, now=noon + timedelta(minutes=1), per_minute=2, per_day=3)
    with pytest.raises(PhotosPerDay) as day_full:
        await count_photo_upload(committed_sessions, principal, now=noon + timedelta(hours=5), per_minute=2, per_day=3)
    await count_photo_upload(committed_sessions, principal, now=noon + timedelta(days=1, minutes=2), per_minute=2,
                             per_day=3)
    await count_photo_upload(committed_sessions, other, now=noon + timedelta(hours=5), per_minute=2, per_day=3)

    assert (minute_full.value.code, day_full.value.code) == (ErrorCode.RATE_LIMITED, ErrorCode.RATE_LIMITED)
