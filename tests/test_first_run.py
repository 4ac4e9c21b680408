"""What a newcomer sees first: a quiet command, a version, help without noise, a home page."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
import typer.main
from typer.testing import CliRunner

from backend import version
from backend.app import create_app
from backend.cli import app as cli_app
from tests.graphql.client import api_settings

ROOT = Path(__file__).resolve().parents[1]


def test_migrate_on_a_new_data_directory_prints_one_line(tmp_path: Path) -> None:
    # initdb's transcript, pg_ctl's, alembic's context lines and a platformdirs warning
    # used to come first: about 70 lines before "migrations applied".
    env = {**os.environ, "SHUIWU_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    env.pop("SHUIWU_DATABASE_URL", None)

    done = subprocess.run([sys.executable, "-m", "backend.cli", "migrate"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert (done.stdout + done.stderr).splitlines() == ["migrations applied"]


def test_version_is_the_packages() -> None:
    result = CliRunner().invoke(cli_app, ["--version"])

    assert result.exit_code == 0
    assert result.output == f"shuiwu {version()}\n"
    assert version() == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_no_help_page_shows_a_type_after_a_flag() -> None:
    def pages(group: typer.Typer, path: list[str]) -> list[list[str]]:
        found = [path]
        for command in group.registered_commands:
            found.append([*path, command.name or (command.callback.__name__ if command.callback else "")])
        for sub in group.registered_groups:
            assert sub.typer_instance is not None and sub.name
            found += pages(sub.typer_instance, [*path, sub.name])
        return found

    runner = CliRunner()
    for page in pages(cli_app, []):
        output = runner.invoke(cli_app, [*page, "--help"], env={"COLUMNS": "200"}).output
        assert "<bool>" not in output, page
        assert "--help" in output, page


def test_the_license_file_is_the_one_pyproject_names() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    license_text = (ROOT / "LICENSE").read_text()

    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text


async def test_the_home_page_opens_graphiql_when_it_is_on_and_says_where_things_are_when_not(database_url: str) -> None:
    for graphiql in (True, False):
        app = create_app(api_settings(graphiql=graphiql), database_url)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
            home = await http.get("/")
        await app.state.engine.dispose()
        if graphiql:
            assert (home.status_code, home.headers["location"]) == (307, "/graphql")
        else:
            assert home.status_code == 200
            assert home.json() | {"docs": "…"} == {"service": "shuiwu 水务", "version": version(), "graphql": "/graphql",
                                                 "health": "/healthz", "docs": "…"}


def _shuiwu(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "SHUIWU_DATA_DIR": str(tmp_path / "data"), **env}
    return subprocess.run([sys.executable, "-m", "backend.cli", *args], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=60)


def test_an_unknown_database_host_is_one_line_naming_it_without_its_password(tmp_path: Path) -> None:
    done = _shuiwu(tmp_path, "migrate", SHUIWU_DATABASE_URL="postgresql://shuiwu:s3cret@db.nowhere.invalid:5432/shuiwu")

    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: cannot find the database host (postgresql://shuiwu:***@db.nowhere.invalid:5432/shuiwu): "
        f"{done.stderr.split('): ', 1)[1].strip()}"]
    assert "s3cret" not in done.stderr


def test_a_bad_log_level_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    done = _shuiwu(tmp_path, "migrate", SHUIWU_LOG_LEVEL="LOUD")

    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "bad setting SHUIWU_LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"]


async def test_each_way_a_database_can_refuse_a_command_is_one_line(server_url: str) -> None:
    import asyncpg

    from backend.cli import startup_error_line
    from backend.db import to_libpq_url, with_database

    refusals: list[str | None] = []
    for database, user in (("postgres", "shuiwu_no_such_role"), ("shuiwu_no_such_database", None)):
        url = to_libpq_url(with_database(server_url, database))
        try:
            connection = await asyncpg.connect(url, user=user) if user else await asyncpg.connect(url)
        except Exception as refused:
            refusals.append(startup_error_line(_chained(refused)))
        else:
            await connection.close()

    assert len(refusals) == 2
    assert (refusals[0] or "").startswith("the database refused the login (")
    assert (refusals[1] or "").startswith("no such database (")
    assert startup_error_line(RuntimeError("a bug")) is None  # a bug keeps its traceback


def _chained(cause: BaseException) -> BaseException:
    # As SQLAlchemy and alembic hand it on: wrapped, with the driver's error as the cause.
    try:
        raise RuntimeError("could not connect") from cause
    except RuntimeError as wrapped:
        return wrapped


def test_what_stops_a_running_server_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from backend import cli

    def refused() -> None:
        raise ConnectionRefusedError(111, "Connect call failed")

    monkeypatch.setattr(cli, "app", refused)
    monkeypatch.setattr(cli, "_started_serving", False)  # another test's serve may have set it
    with pytest.raises(SystemExit) as stopped:  # at start: one line, exit 1
        cli.main()
    assert stopped.value.code == 1

    monkeypatch.setattr(cli, "_started_serving", True)
    with pytest.raises(ConnectionRefusedError):  # hours into serve or jobs: the traceback
        cli.main()


def test_the_demo_prints_its_logins_last_once_it_listens(tmp_path: Path, database_url: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "SHUIWU_DATA_DIR": str(tmp_path / "data"),
                   "SHUIWU_DATABASE_URL": database_url.replace("+asyncpg", "")}
    demo = subprocess.Popen([sys.executable, "-m", "backend.cli", "demo", "run", "--port", str(port)], cwd=tmp_path,
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("Ctrl-C stops everything" in line for line in lines):
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
    finally:
        demo.terminate()
        demo.wait(timeout=30)

    banner = next(index for index, line in enumerate(lines) if "shuiwu 水务 demo" in line)
    listening = next(index for index, line in enumerate(lines) if "Uvicorn running on" in line)
    assert listening < banner  # the start-up lines first, then the logins
    assert any("username admin" in line for line in lines[banner:])
