"""``shuiwu admin create``: a fresh installation gets its company and first administrator."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from typer.testing import CliRunner, Result

from backend.archives.models import AreaKind
from backend.archives.service import create_area
from backend.cli import app as cli_app
from backend.db import create_engine, migrate, session_factory, to_libpq_url, with_database
from tests.graphql.client import graphql_client

PASSWORD = "Pipe-Main-2026"
ROOT = Path(__file__).resolve().parents[2]


async def _rows(url: str, query: str) -> list[tuple[object, ...]]:
    connection = await asyncpg.connect(to_libpq_url(url))
    try:
        return [tuple(row) for row in await connection.fetch(query)]
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def fresh_url(server_url: str) -> AsyncIterator[str]:
    """A newly created database, migrated and empty: what `shuiwu migrate` leaves."""
    name = f"shuiwu_install_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(to_libpq_url(with_database(server_url, "postgres")))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(server_url, name)
    await asyncio.to_thread(migrate, url)
    yield url
    admin = await asyncpg.connect(to_libpq_url(with_database(server_url, "postgres")))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def admin_create(url: str, *args: str, password: str | None = PASSWORD, stdin: str | None = None) -> Result:
    env = {"SHUIWU_DATABASE_URL": url, "COLUMNS": "200"}
    if password is not None:
        env["SHUIWU_ADMIN_PASSWORD"] = password
    return await asyncio.to_thread(CliRunner().invoke, cli_app, ["admin", "create", *args], input=stdin, env=env)


async def test_a_fresh_installation_gets_a_company_and_an_administrator_who_can_sign_in(fresh_url: str) -> None:
    assert await _rows(fresh_url, "SELECT count(*) FROM staff_users") == [(0,)]

    result = await admin_create(fresh_url, "--username", "zhangwei", "--full-name", "张伟", "--company", "江城水务有限公司")

    assert result.exit_code == 0, result.output
    assert "administrator zhangwei created (new role 系统管理员, new company 江城水务有限公司)" in result.output
    async with graphql_client(fresh_url) as api:
        token = await api.login("zhangwei", PASSWORD)
        me = await api.execute("{ viewer { permissions staffUser { username fullName } } "
                               "areas(first: 5) { edges { node { name kind } } } }", token=token)
    assert me["data"]["viewer"]["staffUser"] == {"username": "zhangwei", "fullName": "张伟"}
    assert {"roles:manage", "users:manage", "archives:manage"} <= set(me["data"]["viewer"]["permissions"])
    assert [edge["node"] for edge in me["data"]["areas"]["edges"]] == [{"name": "江城水务有限公司", "kind": "company"}]
    assert await _rows(fresh_url, "SELECT module, action, actor_name, success FROM audit_log "
                                  "WHERE summary LIKE '新增系统管理员 zhangwei%'") == [
        ("users", "createStaffUser", "命令行 shuiwu admin create", True)]


async def test_a_second_administrator_joins_the_company_and_role_already_there(fresh_url: str) -> None:
    result = await admin_create(fresh_url, "--username", "lina", "--password-stdin", password=None,
                                stdin="Second-Admin-77\n")

    assert result.exit_code == 0, result.output
    assert "(role 系统管理员, company 江城水务有限公司)" in result.output
    assert await _rows(fresh_url, "SELECT count(*) FROM areas") == [(1,)]
    assert await _rows(fresh_url, "SELECT count(*) FROM roles") == [(1,)]
    async with graphql_client(fresh_url) as api:
        assert await api.login("lina", "Second-Admin-77")


@pytest.mark.parametrize(("password", "message"), [
    ("short1", "at least 8 characters"),
    ("onlyletters", "at least 8 characters"),
    ("Admin123", "most common"),
    ("1qaz@WSX", "most common"),
])
async def test_a_weak_password_is_refused_in_one_line_and_nothing_is_written(
    fresh_url: str, password: str, message: str
) -> None:
    before = await _rows(fresh_url, "SELECT (SELECT count(*) FROM staff_users), (SELECT count(*) FROM audit_log)")

    result = await admin_create(fresh_url, "--username", "weakling", password=password)

    assert result.exit_code == 1
    assert [line for line in result.output.splitlines() if line] == [
        next(line for line in result.output.splitlines() if line.startswith("error: "))]
    assert message in result.output and "[PASSWORD_TOO_WEAK]" in result.output
    assert await _rows(fresh_url, "SELECT (SELECT count(*) FROM staff_users), (SELECT count(*) FROM audit_log)") == before


async def test_without_a_password_source_and_no_terminal_it_says_where_a_password_comes_from(fresh_url: str) -> None:
    result = await admin_create(fresh_url, "--username", "nobody", password=None)

    assert result.exit_code == 1
    assert "no password: set SHUIWU_ADMIN_PASSWORD, pass --password-stdin, or run in a terminal" in result.output


async def test_a_company_that_is_not_there_is_named_with_the_ones_that_are(fresh_url: str) -> None:
    result = await admin_create(fresh_url, "--username", "other", "--company", "别的水司")

    assert result.exit_code == 1
    assert "已有: 江城水务有限公司" in result.output and "[UNKNOWN_AREA]" in result.output


async def test_a_taken_username_is_refused(fresh_url: str) -> None:
    result = await admin_create(fresh_url, "--username", "zhangwei")

    assert result.exit_code == 1 and "[DUPLICATE]" in result.output


async def test_an_administrator_of_a_second_company_gets_that_companys_role_not_the_firsts(fresh_url: str) -> None:
    engine = create_engine(fresh_url)  # a second utility on the installation (a new root: the whole tree's act)
    try:
        async with session_factory(engine)() as session, session.begin():
            await create_area(session, name="乙水务公司", kind=AreaKind.company)
    finally:
        await engine.dispose()

    result = await admin_create(fresh_url, "--username", "wangfang", "--company", "乙水务公司")

    assert result.exit_code == 0, result.output
    assert "(new role 系统管理员 (乙水务公司), company 乙水务公司)" in result.output
    assert await _rows(fresh_url, "SELECT r.name, a.name FROM roles r JOIN role_areas ra ON ra.role_id = r.id "
                                  "JOIN areas a ON a.id = ra.area_id ORDER BY r.id") == [
        ("系统管理员", "江城水务有限公司"), ("系统管理员 (乙水务公司)", "乙水务公司")]
    async with graphql_client(fresh_url) as api:
        token = await api.login("wangfang", PASSWORD)
        areas = await api.execute("{ areas(first: 5) { edges { node { name } } } }", token=token)
    assert [edge["node"]["name"] for edge in areas["data"]["areas"]["edges"]] == ["乙水务公司"]


def test_a_new_data_directory_with_admin_create_serves_a_working_login(tmp_path: Path) -> None:
    """README's steps, as a new utility runs them: migrate, admin create, serve, sign in."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHUIWU_DATA_DIR": str(tmp_path / "data"),
           "SHUIWU_ADMIN_PASSWORD": PASSWORD}
    env.pop("SHUIWU_DATABASE_URL", None)
    shuiwu = [sys.executable, "-m", "backend.cli"]
    for step in (["migrate"], ["admin", "create", "--username", "zhangwei", "--company", "江城水务有限公司"]):
        done = subprocess.run([*shuiwu, *step], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([*shuiwu, "serve", "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        login = None
        deadline = time.monotonic() + 60
        while login is None and time.monotonic() < deadline and server.poll() is None:
            try:
                login = httpx.post(f"http://127.0.0.1:{port}/graphql", timeout=10, json={
                    "query": "mutation($p: String!) { login(username: \"zhangwei\", password: $p) "
                             "{ tokens { accessToken } errors { code } } }", "variables": {"p": PASSWORD}})
            except httpx.TransportError:
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert login is not None, server.stderr.read() if server.stderr else ""
    assert login.json()["data"]["login"]["errors"] == []
    assert login.json()["data"]["login"]["tokens"]["accessToken"]
