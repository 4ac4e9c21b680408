"""``shuiwu check``: the installation's line first, then each domain's."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend import cli
from backend.auth import service as auth
from backend.checks import run_checks
from backend.clock import utcnow
from backend.db import run_admin, with_database
from backend.demo import ADMIN
from backend.settings import Settings
from tests.factories import ROOT


@pytest.fixture
def empty_database(server_url: str) -> Iterator[str]:
    name = f"shuiwu_empty_{uuid.uuid4().hex[:8]}"
    run_admin(server_url, f'CREATE DATABASE "{name}"')
    yield with_database(server_url, name)
    run_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_an_unmigrated_database_fails_the_first_line_and_skips_the_domains_checks(empty_database: str) -> None:
    lines: list[str] = []

    failed = await run_checks(Settings(), empty_database, echo=lines.append)

    assert failed == 1
    assert lines[0].startswith("ok    settings  database postgresql")
    assert lines[1].startswith("FAIL  database.migrations  database at nothing, code at ")
    assert len(lines) > 2 and all(line.startswith("skip  ") for line in lines[2:])


async def test_a_migrated_empty_database_has_no_administrator_yet(database_url: str) -> None:
    lines: list[str] = []

    await run_checks(Settings(), database_url, echo=lines.append)

    assert "FAIL  auth.administrator  no active staff user holds roles:manage (make one: shuiwu admin create)" in lines
    assert "ok    archives.cross_area  every open assignment stays within its meter's area" in lines
    # The default sender sends nothing: no resident could sign in, so it fails the check.
    assert ("FAIL  gateway.sms  SHUIWU_SMS_SENDER=log: no SMS is sent (codes go to the log), so residents cannot "
            "sign in or bind by code; log is for development and the demo only") in lines


async def test_an_unreachable_database_is_one_failed_line_not_a_traceback() -> None:
    lines: list[str] = []

    failed = await run_checks(Settings(), "postgresql://nobody@127.0.0.1:9/none?connect_timeout=2", echo=lines.append)

    assert failed == 1
    assert lines[1].startswith("FAIL  database.migrations  ")
    assert all(line.startswith("skip  ") for line in lines[2:])


async def test_the_demos_published_login_fails_the_check_and_warns_serve_until_its_password_changes(
    database_url: str, committed_sessions: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    async with committed_sessions() as session, session.begin():
        user = await auth.create_staff_user(session, actor=ROOT, username=ADMIN.username, full_name="演示管理员",
                                            password=ADMIN.password, now=utcnow())
    lines: list[str] = []

    await run_checks(Settings(), database_url, echo=lines.append)

    assert lines[-1] == ("FAIL  install.published_credentials  the demo's published credentials open this database "
                         "(login admin): fine for `make demo`, never for a utility's data")
    with caplog.at_level(logging.WARNING, logger="shuiwu.serve"):
        await asyncio.to_thread(cli._warn_if_demo_credentials, database_url)
    assert "the demo's published credentials open this database: login admin." in caplog.text

    async with committed_sessions() as session, session.begin():
        assert user.id is not None
        await auth.set_staff_password(session, actor=ROOT, user_id=user.id, password="Quite-Private-91", now=utcnow())
    lines.clear()

    await run_checks(Settings(), database_url, echo=lines.append)

    assert lines[-1] == "ok    install.published_credentials  no demo credentials"


async def test_the_first_line_says_what_the_settings_point_at_without_the_password(database_url: str) -> None:
    lines: list[str] = []
    with_password = database_url.replace("://", "://postgres:hunter2@", 1) if "@" not in database_url else database_url

    await run_checks(Settings(database_url=with_password), with_password, echo=lines.append)

    assert lines[0].startswith("ok    settings  database postgresql")
    assert "hunter2" not in "\n".join(lines)
    assert "time zone Asia/Shanghai; log INFO" in lines[0]


async def test_a_gateway_setting_that_does_not_read_fails_the_settings_line_and_skips_the_rest(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHUIWU_SMS_SENDER", "aliyun")  # and none of the settings aliyun needs
    lines: list[str] = []

    failed = await run_checks(Settings(), database_url, echo=lines.append)

    assert failed == 1
    assert lines[0].startswith("FAIL  settings  bad setting SHUIWU_SMS_")
    assert len(lines) > 2 and all(line.startswith("skip  ") and line.endswith("the settings do not read") for line in lines[1:])
