"""The HTTP edge through a real server: body limits while streaming, /oauth/token's form,
/metrics access and labels, trusted proxies, request ids and security headers."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select as sql_select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.app import create_app
from backend.audit.models import AuditEntry
from backend.edge import client_address, metrics_allowed, page_csp, parse_networks, request_id_from
from tests.factories import Staff, make_area_tree, make_staff
from tests.graphql.client import api_settings
from tests.live import LiveServer, live_server, serving

METRICS_TOKEN = "metrics-token-for-the-test-0123456789"
IMPORT_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def live(database_url: str) -> Iterator[LiveServer]:
    with live_server(database_url, trusted_proxies="127.0.0.1", metrics_token=METRICS_TOKEN, https=True,
                     import_max_body_bytes=IMPORT_LIMIT) as server:
        yield server


@pytest.fixture(scope="module")
async def admin(committed_sessions: async_sessionmaker[AsyncSession]) -> Staff:
    async with committed_sessions() as session, session.begin():
        tree = await make_area_tree(session)
        return await make_staff(session, areas=[tree.company])


def _head(host: str, port: int, head: str) -> socket.socket:
    connection = socket.create_connection((host, port), timeout=10)
    connection.sendall(head.encode("latin-1"))
    return connection


def _answer(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one response (the server closes after a refusal, so read to the end)."""
    received = b""
    connection.settimeout(10)
    while True:
        try:
            chunk = connection.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
        if b"\r\n\r\n" in received:
            head, _, body = received.partition(b"\r\n\r\n")
            length = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
            if length and len(body) >= int(length[0].split(b":")[1]):
                break
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _stream_chunks_until_answered(connection: socket.socket, *, give_up_after: int, first: bytes = b"") -> int:
    """Send ``first`` and then 64 KiB chunks until the server answers (or
    ``give_up_after`` bytes); returns bytes sent."""
    chunk = b"x" * 65536
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    if first:
        connection.sendall(f"{len(first):x}\r\n".encode() + first + b"\r\n")
    sent = 0
    connection.setblocking(False)
    try:
        while sent < give_up_after:
            readable, writable, _ = select.select([connection], [connection], [], 5)
            if readable:
                break
            if writable:
                try:
                    sent += connection.send(framed)
                except BlockingIOError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
    finally:
        connection.setblocking(True)
    return sent


# --------------------------------------------------------------------------- body limits


def test_a_chunked_graphql_body_past_its_limit_is_refused_while_the_client_is_still_sending(live: LiveServer) -> None:
    connection = _head(live.host, live.port, "POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                             "Transfer-Encoding: chunked\r\n\r\n")
    with connection:
        sent = _stream_chunks_until_answered(connection, give_up_after=64 * 1024 * 1024)
        status, headers, body = _answer(connection)

    # The client never finished (the body is endless): the server answered after ~1 MiB.
    assert sent < 8 * 1024 * 1024
    assert status == 413
    assert headers["connection"] == "close"
    error = json.loads(body)["errors"][0]
    assert error["extensions"]["code"] == "BODY_TOO_LARGE"
    assert error["extensions"]["maxBytes"] == 1024 * 1024


def test_a_declared_length_past_the_limit_is_refused_before_any_of_the_body_is_sent(live: LiveServer) -> None:
    connection = _head(live.host, live.port, "POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                             f"Content-Length: {1024 * 1024 * 1024}\r\n\r\n")
    with connection:
        status, _, body = _answer(connection)

    assert status == 413
    assert json.loads(body)["errors"][0]["extensions"]["code"] == "BODY_TOO_LARGE"


def test_a_small_graphql_body_still_works(live: LiveServer) -> None:
    response = httpx.post(f"{live.url}/graphql", json={"query": "{ __typename }"})

    assert response.status_code == 200
    assert response.json() == {"data": {"__typename": "Query"}}


def test_an_import_streamed_past_its_limit_is_refused_while_the_client_is_still_sending(
    live: LiveServer, admin: Staff,
) -> None:
    login = httpx.post(f"{live.url}/graphql", json={
        "query": "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { tokens { accessToken } } }",
        "variables": {"u": admin.username, "p": admin.password}})
    token = login.json()["data"]["login"]["tokens"]["accessToken"]
    connection = _head(live.host, live.port, "POST /imports/households HTTP/1.1\r\nHost: x\r\n"
                                             f"Authorization: Bearer {token}\r\n"
                                             "Content-Type: multipart/form-data; boundary=b\r\n"
                                             "Transfer-Encoding: chunked\r\n\r\n")
    with connection:
        sent = _stream_chunks_until_answered(connection, give_up_after=64 * 1024 * 1024, first=(
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.xlsx"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n"))
        status, _, body = _answer(connection)

    assert sent < 8 * 1024 * 1024
    assert status == 413
    assert json.loads(body)["errors"][0]["extensions"] == {
        "code": "BODY_TOO_LARGE", "messageEn": f"The request body is too large (at most {IMPORT_LIMIT} bytes)",
        "maxBytes": IMPORT_LIMIT}


# --------------------------------------------------------------------------- /oauth/token


async def test_the_token_endpoint_takes_only_a_small_urlencoded_form(
    live: LiveServer, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    form = {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "nothing"}
    async with httpx.AsyncClient(base_url=live.url) as http:
        multipart = await http.post("/oauth/token", data=form, files={"file": ("a.bin", b"x" * 1000)})
        as_json = await http.post("/oauth/token", json=form)
        too_large = await http.post("/oauth/token", data={**form, "padding": "x" * 5000})
        wrong_client = await http.post("/oauth/token", data=form)

    assert (multipart.status_code, multipart.json()["errors"][0]["extensions"]["code"]) == (415, "UNSUPPORTED_MEDIA_TYPE")
    assert (as_json.status_code, as_json.json()["errors"][0]["extensions"]["code"]) == (415, "UNSUPPORTED_MEDIA_TYPE")
    assert (too_large.status_code, too_large.json()["errors"][0]["extensions"]["code"]) == (413, "BODY_TOO_LARGE")
    assert (wrong_client.status_code, wrong_client.json()["error"]) == (401, "invalid_client")
    async with committed_sessions() as session:
        attempts = (await session.execute(
            sql_select(AuditEntry.id).where(AuditEntry.action == "issueClientToken"))).all()  # type: ignore[arg-type]
    assert len(attempts) == 1  # only the well-formed request reached the grant


# --------------------------------------------------------------------------- /metrics


def test_metrics_need_the_token_or_a_direct_allowed_address(live: LiveServer) -> None:
    direct = httpx.get(f"{live.url}/metrics")
    relayed = httpx.get(f"{live.url}/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    relayed_with_token = httpx.get(f"{live.url}/metrics", headers={
        "X-Forwarded-For": "203.0.113.9", "Authorization": f"Bearer {METRICS_TOKEN}"})
    relayed_with_wrong_token = httpx.get(f"{live.url}/metrics", headers={
        "X-Forwarded-For": "203.0.113.9", "Authorization": "Bearer guess"})

    assert direct.status_code == 200
    assert (relayed.status_code, relayed.json()["errors"][0]["extensions"]["code"]) == (403, "FORBIDDEN")
    assert relayed_with_token.status_code == 200
    assert relayed_with_wrong_token.status_code == 403


def test_operation_names_cannot_grow_the_metrics(live: LiveServer) -> None:
    before = len(httpx.get(f"{live.url}/metrics").content)
    for letter in "abcde":
        name = letter * 200_000
        httpx.post(f"{live.url}/graphql", json={"query": f"query {name} {{ __typename }}", "operationName": name})
    httpx.post(f"{live.url}/graphql", json={"query": "query short_name { __typename }", "operationName": "short_name"})

    metrics = httpx.get(f"{live.url}/metrics").text
    assert len(metrics) - before < 50_000
    labels = {line.split('operation="')[1].split('"')[0] for line in metrics.splitlines() if 'operation="' in line}
    assert "short_name" not in labels  # a stranger's operation is counted as "anonymous"
    assert "anonymous" in labels
    assert max(len(label) for label in labels) <= 64


# --------------------------------------------------------------------------- proxies and request ids


def test_forwarded_for_counts_only_from_a_trusted_proxy() -> None:
    trusted = parse_networks("10.0.0.0/8")

    assert client_address("198.51.100.7", "203.0.113.9", trusted) == "198.51.100.7"  # not a proxy of ours
    assert client_address("10.0.0.2", "6.6.6.6, 203.0.113.9", trusted) == "203.0.113.9"  # the hop our proxy saw
    assert client_address("10.0.0.2", "203.0.113.9, 10.0.0.3", trusted) == "203.0.113.9"  # through two of ours
    assert client_address("10.0.0.2", "not-an-ip", trusted) == "10.0.0.2"
    assert client_address("127.0.0.1", "203.0.113.9", parse_networks("")) == "127.0.0.1"  # the default: none


async def test_the_audited_address_is_the_one_the_trusted_proxy_saw(
    live: LiveServer, committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    form = {"grant_type": "client_credentials", "client_id": "proxy-check", "client_secret": "nothing"}
    async with httpx.AsyncClient(base_url=live.url) as http:
        await http.post("/oauth/token", data=form, headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.9"})

    async with committed_sessions() as session:
        ips = (await session.execute(
            sql_select(AuditEntry.ip).where(AuditEntry.actor_name == "proxy-check"))).scalars().all()  # type: ignore[arg-type]
    assert ips == ["203.0.113.9"]


def test_the_server_command_does_not_let_uvicorn_trust_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from backend import cli

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.update(options))
    monkeypatch.setattr(cli, "_database", lambda settings: "postgresql+asyncpg://nobody@/nowhere")
    monkeypatch.setenv("SHUIWU_SECRET_KEY", "x" * 40)

    result = CliRunner().invoke(cli.app, ["serve", "--no-migrate"])

    assert result.exit_code == 0, result.output
    assert seen["proxy_headers"] is False


def test_a_caller_request_id_is_kept_only_in_the_strict_format(live: LiveServer) -> None:
    kept = "0f8c6a1e-2b7d-4c55-9a3e-1d2f3a4b5c6d"
    answers = {
        sent: httpx.get(f"{live.url}/healthz", headers={"X-Request-Id": sent}).headers["x-request-id"]
        for sent in (kept, "short", "a" * 65, "id with spaces", "<script>alert(1)</script>")
    }

    assert answers[kept] == kept
    for sent in ("short", "a" * 65, "id with spaces", "<script>alert(1)</script>"):
        assert answers[sent] != sent and len(answers[sent]) == 32
    assert request_id_from(None) != request_id_from(None)


# --------------------------------------------------------------------------- security headers


def test_every_response_carries_the_security_headers(live: LiveServer) -> None:
    responses = {
        "health": httpx.get(f"{live.url}/healthz"),
        "graphql": httpx.post(f"{live.url}/graphql", json={"query": "{ __typename }"}),
        "missing": httpx.get(f"{live.url}/no-such-page"),
        "refused": httpx.get(f"{live.url}/exports/households.xlsx"),
    }

    for name, response in responses.items():
        assert response.headers["x-content-type-options"] == "nosniff", name
        assert response.headers["referrer-policy"] == "no-referrer", name
        assert response.headers["x-frame-options"] == "DENY", name
        assert response.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'", name
        assert response.headers["cache-control"] == "no-store", name
        assert response.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains", name


def test_graphiql_gets_a_policy_that_runs_only_its_own_scripts(live: LiveServer) -> None:
    page = httpx.get(f"{live.url}/graphql", headers={"Accept": "text/html"})
    asset = httpx.get(f"{live.url}/graphql/static/vendor/react-18.2.0/react.production.min.js")

    policy = page.headers["content-security-policy"]
    assert policy == page_csp(page.text)
    assert "script-src 'self' 'sha256-" in policy and "unsafe-eval" not in policy
    assert "frame-ancestors 'none'" in policy and "connect-src 'self'" in policy
    # Every external script the page loads is served from here.
    assert all(src.startswith("/graphql/static/") for src in _script_sources(page.text))
    assert asset.status_code == 200 and "no-store" not in asset.headers.get("cache-control", "")


def _script_sources(html: str) -> list[str]:
    return [part.split('"')[1] for part in html.split("src=")[1:]]


def test_a_local_proxy_that_is_not_trusted_does_not_make_its_callers_local() -> None:
    loopback = parse_networks("127.0.0.1,::1")

    def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
        peer = ("127.0.0.1", 5000)
        return {"client": peer, "shuiwu.peer": peer, "headers": list(headers)}

    assert metrics_allowed(scope(), token=None, allowed=loopback)
    assert not metrics_allowed(scope((b"x-forwarded-for", b"203.0.113.9")), token=None, allowed=loopback)
    assert not metrics_allowed(scope((b"forwarded", b"for=203.0.113.9")), token=None, allowed=loopback)
    assert not metrics_allowed(scope(), token=None, allowed=parse_networks(""))
    assert metrics_allowed(scope((b"authorization", b"Bearer s3cret-metrics")), token="s3cret-metrics",
                           allowed=parse_networks(""))


def test_every_refusal_outside_graphql_has_one_shape() -> None:
    from backend.auth.errors import TokenExpired
    from backend.edge import refusal_body
    from backend.errors import BadUserInput

    expired = json.loads(refusal_body(TokenExpired(), 401, "req-12345678"))
    bad = json.loads(refusal_body(BadUserInput("坏", "Bad", field="file"), 400))

    assert expired["errors"][0]["extensions"] == {
        "code": "UNAUTHENTICATED", "reason": "TOKEN_EXPIRED", "messageEn": TokenExpired.message_en,
        "requestId": "req-12345678",
    }
    assert bad == {"errors": [{"message": "坏", "extensions": {"code": "BAD_USER_INPUT", "messageEn": "Bad",
                                                               "field": "file"}}]}


def test_a_request_whose_client_went_away_is_counted_499_not_500(database_url: str) -> None:
    from backend.observability import registry

    started = threading.Event()

    async def slow(request: Request) -> Response:
        started.set()
        await asyncio.sleep(30)  # cancelled when the client goes away
        return Response("late")

    def count(status: str) -> float:
        return registry.get_sample_value("shuiwu_http_requests_total", {"route": "/test-slow", "status": status}) or 0.0

    before = count("499"), count("500")
    app = create_app(api_settings(), database_url, extra_routes=[Route("/test-slow", slow)])
    with serving(app) as (host, port):
        connection = _head(host, port, "GET /test-slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert started.wait(5)
        connection.close()  # the client goes away before any answer
        deadline = time.monotonic() + 5
        while count("499") == before[0] and count("500") == before[1] and time.monotonic() < deadline:
            time.sleep(0.02)

    assert (count("499") - before[0], count("500") - before[1]) == (1, 0)
