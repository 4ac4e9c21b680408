"""The operation log (操作日志): what is recorded, how the screen filters it, and its
Excel download with a Bearer token or a signed link."""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from zoneinfo import ZoneInfo

import httpx
import openpyxl
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from backend.app import create_app
from backend.archives.models import AreaKind
from backend.archives.service import create_area
from backend.audit import http as audit_http
from backend.audit.models import AuditEntry
from backend.audit.service import audit_query, purge_operation_log, record_operation
from backend.auth.errors import TokenExpired, TokenInvalid
from backend.auth.models import PrincipalKind
from backend.auth.principal import Principal
from backend.clock import utcnow
from backend.db import session_factory
from backend.errors import BadUserInput, NotAuthenticated
from backend.exports import http as exports_http
from backend.exports.links import DownloadGrant
from backend.files.storage import storage_from_settings
from backend.graphql.relay import encode_id
from tests.factories import Staff, make_area_tree, make_staff
from tests.graphql.client import TEST_SECRET, GraphQLClient, api_settings

SHANGHAI = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)

AUDIT_LOGS = """
query($filter: AuditLogFilter, $first: Int) {
  auditLogs(first: $first, filter: $filter) {
    totalCount
    edges { node { id at actorKind actorId actorName module moduleName action actionName summary payload success ip requestId } }
  }
}
"""
EXPORT_URL = "query($filter: AuditLogFilter) { auditLogExportUrl(filter: $filter) }"
NODE = "query($id: ID!) { node(id: $id) { id ... on AuditEntry { summary } } }"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


# --------------------------------------------------------------------------- service


def _staff(pk: int, name: str = "王工") -> Principal:
    return Principal(kind=PrincipalKind.staff, id=pk, name=name)


async def _record(session: AsyncSession, *, at: datetime, actor: Principal | None, module: str, success: bool = True,
                  payload: dict[str, Any] | None = None) -> AuditEntry:
    return await record_operation(
        session, at=at, actor=actor, module=module, action="doSomething", summary="做了某事: 成功",
        payload=payload or {}, success=success, ip="10.0.0.1", request_id="r1",
    )


async def test_record_operation_redacts_password_token_and_secret_values(session: AsyncSession) -> None:
    entry = await _record(session, at=T0, actor=_staff(1), module="system", payload={
        "username": "wang",
        "password": "Passw0rd!x",
        "newPassword": "Other0ne!",
        "refreshToken": "opaque",
        "input": {"clientSecret": "s3cret", "name": "x", "tokens": [{"accessToken": "jwt"}]},
        "note": None,
    })

    stored = await session.get(AuditEntry, entry.id)
    assert stored is not None
    assert stored.payload == {
        "username": "wang",
        "password": "***",
        "newPassword": "***",
        "refreshToken": "***",
        "input": {"clientSecret": "***", "name": "x", "tokens": "***"},
        "note": None,
    }
    assert "Passw0rd" not in str(stored.payload) and "s3cret" not in str(stored.payload)


async def test_record_operation_names_anonymous_actor(session: AsyncSession) -> None:
    entry = await _record(session, at=T0, actor=None, module="auth", success=False)

    assert (entry.actor_kind, entry.actor_id, entry.actor_name) == ("anonymous", None, "匿名")


async def test_an_entry_belongs_to_its_subjects_area_else_to_the_acting_users_unit(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    east_clerk = await make_staff(session, permissions={"areas:read"}, areas=[tree.east])

    own = await _record(session, at=T0, actor=east_clerk.principal, module="system")
    about_west = await record_operation(
        session, at=T0, actor=east_clerk.principal, module="archives", action="x", summary="x", payload={},
        success=True, ip=None, request_id=None, subject_area_id=tree.west.id,
    )
    anonymous = await _record(session, at=T0, actor=None, module="auth", success=False)

    assert (own.area_id, about_west.area_id, anonymous.area_id) == (tree.east.id, tree.west.id, None)


async def test_audit_query_filters_by_module_actor_time_and_result(session: AsyncSession) -> None:
    wang, li = _staff(901, "王工"), _staff(902, "李工")
    resident = Principal(kind=PrincipalKind.resident, id=901, name="13900000000")
    await _record(session, at=T0, actor=wang, module="zz_billing")
    await _record(session, at=T0 + timedelta(hours=1), actor=li, module="zz_billing", success=False)
    await _record(session, at=T0 + timedelta(hours=2), actor=wang, module="zz_system")
    await _record(session, at=T0 + timedelta(hours=3), actor=resident, module="zz_billing")

    async def summaries(**filters: Any) -> list[tuple[str, str, datetime]]:
        rows = (await session.execute(audit_query(scope_patterns=None, **filters))).scalars().all()
        return [(row.actor_name, row.module, row.at) for row in rows if row.module.startswith("zz_")]

    assert [r[2] for r in await summaries(module="zz_billing")] == [
        T0 + timedelta(hours=3), T0 + timedelta(hours=1), T0,  # newest first
    ]
    assert await summaries(actor_kind="staff", actor_id=901) == [
        ("王工", "zz_system", T0 + timedelta(hours=2)), ("王工", "zz_billing", T0),
    ]
    # since is inclusive, until exclusive.
    assert [r[2] for r in await summaries(since=T0 + timedelta(hours=1), until=T0 + timedelta(hours=3))] == [
        T0 + timedelta(hours=2), T0 + timedelta(hours=1),
    ]
    assert await summaries(success=False) == [("李工", "zz_billing", T0 + timedelta(hours=1))]


async def test_build_export_streams_rows_in_chunks_across_sheets(
    session: AsyncSession, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr(audit_http, "CHUNK_ROWS", 2)
    monkeypatch.setattr(audit_http, "ROWS_PER_SHEET", 3)
    for hour in range(5):
        await _record(session, at=T0 + timedelta(hours=hour), actor=_staff(7, "赵工"), module="zz_export")
    path = str(tmp_path / "log.xlsx")

    rows = await audit_http.build_export(
        session, export_filter=audit_http.ExportFilter(module="zz_export"), scope_patterns=None, path=path, tz=SHANGHAI
    )

    assert rows == 5
    workbook = openpyxl.load_workbook(path)
    assert workbook.sheetnames == ["操作日志", "操作日志 (2)"]
    first, second = (list(sheet.iter_rows(values_only=True)) for sheet in workbook.worksheets)
    assert first[0] == audit_http.HEADERS_ZH and first[1] == audit_http.HEADERS_EN
    assert len(first) == 2 + 3 and len(second) == 2 + 2
    # Newest first, in Shanghai wall-clock time (UTC+8).
    assert first[2] == ("赵工", "zz_export", "doSomething", "10.0.0.1", datetime(2026, 11, 25, 13, 0), "做了某事: 成功", "成功")
    assert second[-1][4] == datetime(2026, 11, 25, 9, 0)


def _verify(token: str, *, secret: str = TEST_SECRET, params: dict[str, str], now: datetime) -> DownloadGrant:
    return exports_http.verify_download_token(token, secret=secret, purpose=audit_http.EXPORT_PATH, params=params, now=now)


def test_download_token_is_bound_to_principal_session_params_and_time() -> None:
    login = uuid.uuid4()
    admin = dataclasses.replace(_staff(5), session_id=login)
    params = {"module": "auth", "since": "2026-11-25T00:00:00+08:00"}
    token, expires_at = audit_http.sign_download_token(secret=TEST_SECRET, principal=admin, params=params, now=T0)

    assert expires_at == T0 + timedelta(minutes=5)
    grant = _verify(token, params=params, now=T0)
    assert (grant.kind, grant.principal_id, grant.session_id, grant.expires_at) == (PrincipalKind.staff, 5, login, expires_at)
    with pytest.raises(TokenInvalid):  # the session is signed too
        _verify(token.replace(login.hex, uuid.uuid4().hex), params=params, now=T0)
    with pytest.raises(NotAuthenticated):  # no session, no link
        audit_http.sign_download_token(secret=TEST_SECRET, principal=_staff(5), params=params, now=T0)
    tampered = [
        (token, {**params, "module": "system"}),
        (token, {"module": "auth"}),
        (token.replace("staff.5.", "staff.6."), params),
        (token[:-2] + ("BB" if token.endswith("AA") else "AA"), params),
        ("garbage", params),
    ]
    for candidate, candidate_params in tampered:
        with pytest.raises(TokenInvalid):
            _verify(candidate, params=candidate_params, now=T0)
    with pytest.raises(TokenInvalid):
        _verify(token, secret="another-secret-" * 3, params=params, now=T0)
    with pytest.raises(TokenExpired):
        _verify(token, params=params, now=T0 + timedelta(minutes=5))


# --------------------------------------------------------------------------- over HTTP


@dataclass
class People:
    admin: Staff
    reader: Staff
    nobody: Staff
    subject: Staff


@pytest.fixture(scope="module")
def module_engine(committed_engine: AsyncEngine) -> AsyncEngine:
    return committed_engine


@pytest.fixture(scope="module")
async def people(module_engine: AsyncEngine) -> People:
    async with session_factory(module_engine)() as session, session.begin():
        # One company, the whole tree: its administrators read every entry.
        company = await create_area(session, name="示范水务", kind=AreaKind.company)
        admin = await make_staff(session, areas=[company])
        reader = await make_staff(session, permissions={"audit:read"}, areas=[company])
        nobody = await make_staff(session, permissions=(), areas=[company])
        subject = await make_staff(session, permissions={"areas:read"}, areas=[company])
    return People(admin, reader, nobody, subject)


@asynccontextmanager
async def audit_client(database_url: str) -> AsyncIterator[GraphQLClient]:
    """The real app, its export route included."""
    app = create_app(api_settings(), database_url)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        yield GraphQLClient(http)
    await app.state.engine.dispose()


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    async with audit_client(database_url) as api:
        yield api


async def _wrong_login(client: GraphQLClient, username: str) -> None:
    result = await client.execute(
        "mutation($u: String!) { login(username: $u, password: \"Wr0ngPassword\") { errors { code } } }", {"u": username}
    )
    assert result["data"]["login"]["errors"] == [{"code": "INVALID_CREDENTIALS"}]


def _nodes(result: dict[str, Any]) -> list[dict[str, Any]]:
    assert "errors" not in result, result
    return [edge["node"] for edge in result["data"]["auditLogs"]["edges"]]


async def test_log_screen_shows_failed_and_successful_logins(client: GraphQLClient, people: People) -> None:
    since = utcnow().isoformat()
    admin_token = await client.login(people.admin.username, people.admin.password)
    await _wrong_login(client, people.subject.username)
    await client.login(people.subject.username, people.subject.password)

    result = await client.execute(AUDIT_LOGS, {"filter": {"module": "login", "since": since}}, token=admin_token)

    nodes = _nodes(result)
    assert result["data"]["auditLogs"]["totalCount"] == 3
    assert [node["summary"] for node in nodes] == [
        f"用户 {people.subject.username} 登录: 成功",
        f"用户 {people.subject.username} 登录: 失败 (用户名或密码错误)",
        f"用户 {people.admin.username} 登录: 成功",
    ]
    success, failure, _ = nodes
    assert people.subject.user.id is not None
    assert success["actorKind"] == "staff"
    assert success["actorId"] == encode_id("StaffUser", people.subject.user.id)
    assert success["actorName"] == people.subject.user.full_name
    assert (success["module"], success["moduleName"], success["action"], success["actionName"]) == (
        "login", "用户登录", "login", "登录")
    assert success["payload"] == {"username": people.subject.username}  # never the password
    assert success["ip"] == "127.0.0.1" and success["requestId"]
    # A refused login is written under the username it tried, so it can be found by it.
    assert (failure["actorKind"], failure["actorId"], failure["actorName"], failure["success"]) == (
        "anonymous", None, people.subject.username, False,
    )
    assert datetime.fromisoformat(success["at"]).utcoffset() == timedelta(hours=8)


async def test_log_screen_filters_by_actor_and_result(client: GraphQLClient, people: People) -> None:
    since = utcnow().isoformat()
    admin_token = await client.login(people.admin.username, people.admin.password)
    await _wrong_login(client, people.subject.username)
    await client.login(people.subject.username, people.subject.password)
    assert people.subject.user.id is not None
    subject_id = encode_id("StaffUser", people.subject.user.id)

    by_actor = await client.execute(AUDIT_LOGS, {"filter": {"actorId": subject_id, "since": since}}, token=admin_token)
    failures = await client.execute(AUDIT_LOGS, {"filter": {"success": False, "since": since}}, token=admin_token)
    anonymous = await client.execute(AUDIT_LOGS, {"filter": {"actorKind": "anonymous", "since": since}}, token=admin_token)
    future = await client.execute(AUDIT_LOGS, {"filter": {"since": "2099-01-01T00:00:00+08:00"}}, token=admin_token)

    assert [n["summary"] for n in _nodes(by_actor)] == [f"用户 {people.subject.username} 登录: 成功"]
    assert [n["success"] for n in _nodes(failures)] == [False]
    assert [n["actorName"] for n in _nodes(anonymous)] == [people.subject.username]
    assert future["data"]["auditLogs"]["totalCount"] == 0


async def test_log_entry_is_a_node_for_readers_only(client: GraphQLClient, people: People) -> None:
    reader_token = await client.login(people.reader.username, people.reader.password)
    entry_id = _nodes(await client.execute(AUDIT_LOGS, {"first": 1}, token=reader_token))[0]["id"]
    nobody_token = await client.login(people.nobody.username, people.nobody.password)

    as_reader = await client.execute(NODE, {"id": entry_id}, token=reader_token)
    as_nobody = await client.execute(NODE, {"id": entry_id}, token=nobody_token)

    assert as_reader["data"]["node"]["id"] == entry_id
    assert as_nobody["data"] is None
    assert [e["extensions"]["code"] for e in as_nobody["errors"]] == ["NOT_FOUND"]


async def test_user_without_audit_read_is_forbidden(client: GraphQLClient, people: People) -> None:
    token = await client.login(people.nobody.username, people.nobody.password)

    result = await client.execute(AUDIT_LOGS, {"filter": {"module": "auth"}}, token=token)
    anonymous = await client.execute(AUDIT_LOGS)

    assert result["data"] is None
    assert [(e["extensions"]["code"], e["path"]) for e in result["errors"]] == [("FORBIDDEN", ["auditLogs"])]
    assert [e["extensions"]["code"] for e in anonymous["errors"]] == ["UNAUTHENTICATED"]


async def test_reader_without_audit_export_gets_no_export_url(client: GraphQLClient, people: People) -> None:
    token = await client.login(people.reader.username, people.reader.password)

    result = await client.execute(EXPORT_URL, token=token)

    assert result["data"] is None
    assert [e["extensions"]["code"] for e in result["errors"]] == ["FORBIDDEN"]


async def _export_rows(client: GraphQLClient, token: str, filter_: dict[str, Any]) -> int:
    result = await client.execute(AUDIT_LOGS, {"filter": filter_, "first": 1}, token=token)
    total: int = result["data"]["auditLogs"]["totalCount"]
    return total


def _sheet_rows(content: bytes) -> list[tuple[Any, ...]]:
    workbook = openpyxl.load_workbook(io.BytesIO(content))
    assert workbook.sheetnames == ["操作日志"]
    return list(workbook.active.iter_rows(values_only=True))  # type: ignore[union-attr]


async def test_export_with_bearer_token_downloads_the_filtered_log(client: GraphQLClient, people: People) -> None:
    since = utcnow().isoformat()
    token = await client.login(people.admin.username, people.admin.password)
    await _wrong_login(client, people.subject.username)
    expected = await _export_rows(client, token, {"module": "login", "since": since})
    # The export is written in the file storage's staging directory, moved into the
    # storage and streamed from it (backend.files.http.serve_export).
    storage = storage_from_settings(api_settings())
    spooled = os.path.join(storage.staging_directory(), "shuiwu-audit-*.xlsx")
    leftovers = (set(glob.glob(spooled)), set(await storage.keys()))

    response = await client.http.get(
        audit_http.EXPORT_PATH, params={"module": "login", "since": since}, headers={"Authorization": f"Bearer {token}"}
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == XLSX
    today = utcnow().astimezone(SHANGHAI).strftime("%Y%m%d")
    assert f'filename="audit-log-{today}.xlsx"' in response.headers["content-disposition"]
    assert (set(glob.glob(spooled)), set(await storage.keys())) == leftovers  # the file is gone once sent
    rows = _sheet_rows(response.content)
    assert rows[0] == ("操作用户", "操作模块", "操作", "IP地址", "时间", "日志内容", "结果")
    assert rows[1] == ("User", "Module", "Action", "IP address", "Time", "Content", "Result")
    assert expected == 2 and len(rows) == 2 + expected
    assert rows[2][:4] == (people.subject.username, "用户登录", "登录", "127.0.0.1")
    assert rows[2][5:] == (f"用户 {people.subject.username} 登录: 失败 (用户名或密码错误)", "失败")
    assert rows[3][0] == people.admin.user.full_name and rows[3][6] == "成功"
    # Shanghai wall-clock time, within a second of now.
    assert abs(rows[2][4] - datetime.now(SHANGHAI).replace(tzinfo=None)) < timedelta(seconds=30)

    logged = _nodes(await client.execute(AUDIT_LOGS, {"filter": {"module": "audit"}, "first": 1}, token=token))
    assert logged[0]["summary"] == "导出操作日志: 成功"
    assert logged[0]["actorName"] == people.admin.user.full_name
    assert logged[0]["payload"] == {"module": "login", "since": since, "rows": 2}


async def test_export_with_signed_link_needs_no_authorization_header(client: GraphQLClient, people: People) -> None:
    since = utcnow().isoformat()
    token = await client.login(people.admin.username, people.admin.password)
    await _wrong_login(client, people.subject.username)
    filter_ = {"module": "login", "from": since, "success": False}

    url = (await client.execute(EXPORT_URL, {"filter": filter_}, token=token))["data"]["auditLogExportUrl"]
    response = await client.http.get(url)

    assert url.startswith("/exports/audit-log.xlsx?")
    assert dict(parse_qsl(urlsplit(url).query)).keys() == {"module", "from", "success", "token"}
    assert response.status_code == 200, response.text
    rows = _sheet_rows(response.content)
    assert len(rows) == 2 + 1
    assert rows[2][6] == "失败"


def _tampered(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    params = {**dict(parse_qsl(parts.query)), **changes}
    return f"{parts.path}?{urlencode(params)}"


async def test_tampered_or_expired_signed_links_are_refused(client: GraphQLClient, people: People) -> None:
    token = await client.login(people.admin.username, people.admin.password)
    url = (await client.execute(EXPORT_URL, {"filter": {"module": "auth"}}, token=token))["data"]["auditLogExportUrl"]
    signed = dict(parse_qsl(urlsplit(url).query))["token"]
    in_this_login = dataclasses.replace(people.admin.principal, session_id=uuid.UUID(hex=signed.split(".")[2]))
    expired, _ = audit_http.sign_download_token(
        secret=TEST_SECRET, principal=in_this_login, params={"module": "auth"}, now=utcnow() - timedelta(minutes=6)
    )
    forged_for_admin = signed.replace(f"staff.{people.admin.user.id}.", f"staff.{people.nobody.user.id}.")

    attempts = {
        "other filter": _tampered(url, module="system"),
        "extra parameter": _tampered(url, success="true"),
        "altered signature": _tampered(url, token=signed[:-3] + "abc"),
        "other principal": _tampered(url, token=forged_for_admin),
        "expired": _tampered(url, token=expired),
        "no token": f"{audit_http.EXPORT_PATH}?module=auth",
    }
    refusals = {}
    for label, attempt in attempts.items():
        response = await client.http.get(attempt)
        error = response.json()["errors"][0]
        refusals[label] = (response.status_code, error["extensions"]["code"], error["extensions"].get("reason"))

    assert refusals == {
        "other filter": (401, "UNAUTHENTICATED", "TOKEN_INVALID"),
        "extra parameter": (401, "UNAUTHENTICATED", "TOKEN_INVALID"),
        "altered signature": (401, "UNAUTHENTICATED", "TOKEN_INVALID"),
        "other principal": (401, "UNAUTHENTICATED", "TOKEN_INVALID"),
        "expired": (401, "UNAUTHENTICATED", "TOKEN_EXPIRED"),
        "no token": (401, "UNAUTHENTICATED", "UNAUTHENTICATED"),
    }


async def test_export_refused_without_audit_export_is_audited(
    client: GraphQLClient, people: People, module_engine: AsyncEngine
) -> None:
    token = await client.login(people.reader.username, people.reader.password)
    async with session_factory(module_engine)() as session:
        before = (await session.execute(select(func.count()).select_from(AuditEntry))).scalar_one()

    response = await client.http.get(audit_http.EXPORT_PATH, headers={"Authorization": f"Bearer {token}"})
    bad_bearer = await client.http.get(audit_http.EXPORT_PATH, headers={"Authorization": "Bearer not-a-jwt"})

    assert response.status_code == 403
    assert response.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert bad_bearer.status_code == 401
    async with session_factory(module_engine)() as session:
        after = (await session.execute(select(AuditEntry).order_by(AuditEntry.id.desc()))).scalars().all()  # type: ignore[union-attr]
    assert len(after) == before + 1  # the refusal only
    assert (after[0].summary, after[0].success) == ("导出操作日志: 拒绝 (缺少权限 audit:export)", False)


async def test_export_refuses_malformed_filter(client: GraphQLClient, people: People) -> None:
    token = await client.login(people.admin.username, people.admin.password)
    headers = {"Authorization": f"Bearer {token}"}

    naive = await client.http.get(audit_http.EXPORT_PATH, params={"since": "2026-11-25T00:00:00"}, headers=headers)
    kind = await client.http.get(audit_http.EXPORT_PATH, params={"actorKind": "robot"}, headers=headers)
    nul = await client.http.get(audit_http.EXPORT_PATH, params={"module": "auth\x00"}, headers=headers)

    assert (naive.status_code, naive.json()["errors"][0]["extensions"]["field"]) == (400, "since")
    assert (kind.status_code, kind.json()["errors"][0]["extensions"]["field"]) == (400, "actorKind")
    assert (nul.status_code, nul.json()["errors"][0]["extensions"]["field"]) == (400, "module")



# --------------------------------------------------------------------------- size and retention


async def test_an_entry_keeps_a_bounded_part_of_a_huge_input(session: AsyncSession) -> None:
    huge = "x" * 10_000_000
    entry = await record_operation(
        session, at=T0, actor=None, actor_name=huge, module="auth", action="login", summary=f"用户 {huge} 登录: 失败",
        payload={"username": huge, "ids": list(range(100_000)), "deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}},
                 "many": {f"k{index}": index for index in range(1000)}},
        success=False, ip="10.0.0.1", request_id="r1",
    )

    stored = await session.get(AuditEntry, entry.id)
    assert stored is not None
    assert len(json.dumps(stored.payload, ensure_ascii=False).encode()) <= 8 * 1024
    assert stored.payload["username"].startswith("x" * 50) and stored.payload["username"].endswith("]")
    assert "truncated" in stored.payload["username"]
    assert len(stored.summary) < 1100 and "truncated" in stored.summary
    assert len(stored.actor_name) == 100


async def test_an_input_that_is_large_only_in_sum_keeps_its_shape(session: AsyncSession) -> None:
    payload = {f"field{index}": "y" * 400 for index in range(40)}  # 16 KB together, each value small

    entry = await _record(session, at=T0, actor=None, module="auth", payload=payload)

    stored = await session.get(AuditEntry, entry.id)
    assert stored is not None
    assert list(stored.payload) == list(payload)
    assert len(json.dumps(stored.payload).encode()) <= 8 * 1024


async def test_an_anonymous_login_with_a_huge_username_leaves_a_small_entry(client: GraphQLClient) -> None:
    username = "u" * 900_000
    await client.execute("mutation($u: String!) { login(username: $u, password: \"x\") { errors { code } } }",
                         {"u": username})

    engine = client.http._transport.app.state.engine  # type: ignore[attr-defined]
    async with session_factory(engine)() as session:
        rows = (await session.execute(select(AuditEntry).where(
            AuditEntry.action == "login", AuditEntry.summary.like("%uuuuuuuuuu%")))).scalars().all()  # type: ignore[arg-type,attr-defined]
    assert len(rows) == 1
    assert len(json.dumps(rows[0].payload).encode()) <= 8 * 1024 and len(rows[0].summary) < 1100


async def test_the_purge_deletes_only_entries_older_than_the_retention(session: AsyncSession) -> None:
    now = datetime(2027, 6, 1, tzinfo=UTC)
    old = await _record(session, at=now - timedelta(days=366), actor=None, module="zz_purge")
    kept = await _record(session, at=now - timedelta(days=364), actor=None, module="zz_purge")

    purged = await purge_operation_log(session, older_than=now - timedelta(days=365))

    remaining = (await session.execute(select(AuditEntry.id).where(AuditEntry.module == "zz_purge"))).scalars().all()  # type: ignore[arg-type]
    assert purged >= 1
    assert old.id not in remaining and remaining == [kept.id]


# --------------------------------------------------------------------------- the brochure's names

CREATE_ROLE = """mutation($name: String!, $areaIds: [ID!]!) {
  createRole(input: {name: $name, kind: operator, permissions: [], areaIds: $areaIds}) { role { id } errors { code } } }"""
UPDATE_ROLE = """mutation($id: ID!, $input: UpdateRoleInput!) { updateRole(id: $id, input: $input) { errors { code } } }"""
UPDATE_USER = """mutation($id: ID!, $input: UpdateStaffUserInput!) {
  updateStaffUser(id: $id, input: $input) { errors { code } } }"""
LOG_NAMES = """{ auditModules { code name } auditOperations(module: "roles") { code name nameEn } }"""


async def test_role_and_user_changes_are_logged_as_the_brochure_names_them(client: GraphQLClient, people: People) -> None:
    since = utcnow().isoformat()
    token = await client.login(people.admin.username, people.admin.password)
    assert people.subject.user.id is not None and people.admin.user.area_id is not None
    company = encode_id("Area", people.admin.user.area_id)
    name = f"抄表员{uuid.uuid4().hex[:6]}"
    created = await client.execute(CREATE_ROLE, {"name": name, "areaIds": [company]}, token=token)
    role_id = created["data"]["createRole"]["role"]["id"]

    renamed = await client.execute(UPDATE_ROLE, {"id": role_id, "input": {"description": "外勤"}}, token=token)
    granted = await client.execute(UPDATE_ROLE, {"id": role_id, "input": {"permissions": ["areas:read"]}}, token=token)
    assigned = await client.execute(UPDATE_USER, {"id": encode_id("StaffUser", people.subject.user.id),
                                                  "input": {"roleIds": [role_id]}}, token=token)
    roles = await client.execute(AUDIT_LOGS, {"filter": {"module": "roles", "since": since}}, token=token)
    users = await client.execute(AUDIT_LOGS, {"filter": {"module": "users", "since": since}}, token=token)
    assigning = await client.execute(AUDIT_LOGS, {"filter": {"action": "assignPermissions", "since": since}}, token=token)

    assert [r["data"][next(iter(r["data"]))]["errors"] for r in (renamed, granted, assigned)] == [[], [], []]
    assert [(n["moduleName"], n["actionName"], n["summary"]) for n in _nodes(roles)] == [
        ("角色管理", "分配权限", f"为角色 {name} 分配菜单权限: 成功"),
        ("角色管理", "修改角色", f"为角色 {name} 修改信息: 成功"),
        ("角色管理", "新增角色", f"新增角色 {name}: 成功"),
    ]
    assert [(n["moduleName"], n["actionName"], n["summary"]) for n in _nodes(users)] == [
        ("用户管理", "分配角色", f"给用户 {people.subject.username} 分配角色: 成功"),
    ]
    assert [n["action"] for n in _nodes(assigning)] == ["assignPermissions"]


async def test_failed_logins_are_found_by_the_username_tried(client: GraphQLClient, people: People) -> None:
    since = utcnow().isoformat()
    token = await client.login(people.admin.username, people.admin.password)
    tried = f"nosuch{uuid.uuid4().hex[:6]}"
    await _wrong_login(client, tried)
    await _wrong_login(client, people.subject.username)

    found = await client.execute(
        AUDIT_LOGS, {"filter": {"actorName": tried, "success": False, "since": since}}, token=token)

    assert [(n["actorKind"], n["actorName"], n["moduleName"], n["actionName"]) for n in _nodes(found)] == [
        ("anonymous", tried, "用户登录", "登录"),
    ]


async def test_log_content_is_searched_literally_and_case_insensitively(client: GraphQLClient, people: People) -> None:
    since = utcnow().isoformat()
    token = await client.login(people.admin.username, people.admin.password)
    tried = f"Probe_{uuid.uuid4().hex[:6]}"
    await _wrong_login(client, tried)

    exact = await client.execute(AUDIT_LOGS, {"filter": {"search": tried.lower(), "since": since}}, token=token)
    wildcard = await client.execute(AUDIT_LOGS, {"filter": {"search": "Probe%", "since": since}}, token=token)
    chinese = await client.execute(AUDIT_LOGS, {"filter": {"search": "用户名或密码错误", "since": since}}, token=token)
    too_long = await client.execute(AUDIT_LOGS, {"filter": {"search": "长" * 101}}, token=token)

    assert [n["summary"] for n in _nodes(exact)] == [f"用户 {tried} 登录: 失败 (用户名或密码错误)"]
    assert _nodes(wildcard) == []  # % is a character, not a wildcard
    assert tried in [n["actorName"] for n in _nodes(chinese)]
    assert [(e["extensions"]["code"]) for e in too_long["errors"]] == ["BAD_USER_INPUT"]


async def test_the_log_screen_offers_its_modules_and_operations_by_name(client: GraphQLClient, people: People) -> None:
    token = await client.login(people.reader.username, people.reader.password)

    names = (await client.execute(LOG_NAMES, token=token))["data"]

    modules = {m["code"]: m["name"] for m in names["auditModules"]}
    assert {modules["login"], modules["users"], modules["roles"], modules["audit"]} == {"用户登录", "用户管理", "角色管理", "操作日志"}
    assert {o["code"]: o["name"] for o in names["auditOperations"]} == {
        "createRole": "新增角色", "updateRole": "修改角色", "assignPermissions": "分配权限", "deleteRole": "删除角色",
    }


def test_every_mutation_names_its_operation_in_chinese() -> None:
    from backend.auth.catalog import log_names
    from backend.domains import DOMAINS
    from backend.graphql.schema import build_schema

    mutations = build_schema(DOMAINS)._schema.mutation_type
    assert mutations is not None
    declared = log_names().operations

    assert sorted(set(mutations.fields) - set(declared)) == []
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in operation.name) for operation in declared.values())


def test_export_link_carries_the_new_filters() -> None:
    chosen = audit_http.ExportFilter(action="login", actor_name="zhang", search="失败")

    params = chosen.to_params()

    assert params == {"action": "login", "actorName": "zhang", "search": "失败"}
    assert audit_http.ExportFilter.from_params(params) == chosen
    with pytest.raises(BadUserInput) as refused:
        audit_http.ExportFilter.from_params({"search": "x" * 101})
    assert refused.value.field == "search"


# --------------------------------------------------------------------------- periods (docs/periods.md)


async def test_log_range_from_to_holds_an_entry_exactly_at_from_and_not_one_exactly_at_to(
    client: GraphQLClient, people: People, module_engine: AsyncEngine
) -> None:
    module = f"zz_period_{uuid.uuid4().hex[:8]}"
    async with session_factory(module_engine)() as session, session.begin():
        for hour in range(3):
            await _record(session, at=T0 + timedelta(hours=hour), actor=None, module=module)
    token = await client.login(people.admin.username, people.admin.password)
    bounds = {"from": (T0 + timedelta(hours=1)).isoformat(), "to": (T0 + timedelta(hours=2)).isoformat()}

    current = await client.execute(AUDIT_LOGS, {"filter": {"module": module, **bounds}}, token=token)
    deprecated = await client.execute(AUDIT_LOGS, {"filter": {
        "module": module, "since": bounds["from"], "until": bounds["to"]}}, token=token)
    mixed = await client.execute(AUDIT_LOGS, {"filter": {"module": module, "from": bounds["from"],
                                                         "until": bounds["to"]}}, token=token)

    expected = [(T0 + timedelta(hours=1)).astimezone(SHANGHAI)]
    assert [datetime.fromisoformat(node["at"]) for node in _nodes(current)] == expected
    # The old names still work for one release, with the same meaning.
    assert [datetime.fromisoformat(node["at"]) for node in _nodes(deprecated)] == expected
    assert [datetime.fromisoformat(node["at"]) for node in _nodes(mixed)] == expected


async def test_log_refuses_a_bound_given_under_both_its_name_and_its_deprecated_alias(
    client: GraphQLClient, people: People
) -> None:
    token = await client.login(people.admin.username, people.admin.password)
    instant = T0.isoformat()

    both_from = await client.execute(AUDIT_LOGS, {"filter": {"from": instant, "since": instant}}, token=token)
    both_to = await client.execute(EXPORT_URL, {"filter": {"to": instant, "until": instant}}, token=token)

    assert [(e["extensions"]["code"], e["extensions"]["field"]) for e in both_from["errors"]] == [
        ("BAD_USER_INPUT", "filter.from")]
    assert both_from["data"] is None
    assert [(e["extensions"]["code"], e["extensions"]["field"]) for e in both_to["errors"]] == [
        ("BAD_USER_INPUT", "filter.to")]


async def test_the_log_filters_old_range_names_are_deprecated_in_the_schema(client: GraphQLClient, people: People) -> None:
    token = await client.login(people.admin.username, people.admin.password)

    result = await client.execute(
        '{ __type(name: "AuditLogFilter") { inputFields(includeDeprecated: true) { name isDeprecated } } }', token=token)

    fields = {field["name"]: field["isDeprecated"] for field in result["data"]["__type"]["inputFields"]}
    assert {name: fields[name] for name in ("from", "to", "since", "until")} == {
        "from": False, "to": False, "since": True, "until": True}


def test_export_link_names_the_range_from_to_and_still_reads_since_until() -> None:
    chosen = audit_http.ExportFilter(since=T0, until=T0 + timedelta(hours=1))

    params = chosen.to_params()

    assert params == {"from": T0.isoformat(), "to": (T0 + timedelta(hours=1)).isoformat()}
    assert audit_http.ExportFilter.from_params(params) == chosen
    assert audit_http.ExportFilter.from_params({"since": params["from"], "until": params["to"]}) == chosen
    with pytest.raises(BadUserInput) as refused:
        audit_http.ExportFilter.from_params({"from": params["from"], "since": params["from"]})
    assert refused.value.field == "from"
