"""What a newcomer sees first: a quiet command, a version, help without noise, a home page."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
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
