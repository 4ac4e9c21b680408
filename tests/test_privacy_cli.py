"""``shuiwu privacy export|erase`` from the command line, and the retention of residents'
data by the purge jobs (docs/privacy.md)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner, Result

from backend.archives.service import create_household
from backend.audit.jobs import purge_operation_log
from backend.audit.service import record_operation
from backend.auth import service as auth
from backend.auth.jobs import purge_expired_auth
from backend.auth.models import BindingState, HouseholdBinding, OneTimeCode, ResidentHousehold
from backend.cli import app as cli_app
from backend.db import transaction
from backend.jobs import runtime_for
from backend.privacy import subject_token
from backend.settings import Settings
from tests.auth.support import POLICY, FakeSms
from tests.factories import ROOT, make_area_tree, unique

PHONE = "13811112222"
SECRET = "privacy-cli-test-secret-of-32-chars-or-more"
NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


async def privacy(url: str, *args: str, stdin: str | None = None) -> Result:
    env = {"SHUIWU_DATABASE_URL": url, "SHUIWU_SECRET_KEY": SECRET, "COLUMNS": "200"}
    return await asyncio.to_thread(CliRunner().invoke, cli_app, ["privacy", *args], input=stdin, env=env)


async def _resident_with_a_household(sessions: async_sessionmaker[AsyncSession]) -> str:
    async with transaction(sessions) as session:
        tree = await make_area_tree(session)
        household = await create_household(session, account_no=unique("77"), name="陈静", phone=PHONE,
                                           area_id=tree.east_community.id, address="西山名苑 1 幢 101",
                                           owner_since=date(2025, 1, 1))
        sms = FakeSms()
        await auth.request_login_code(session, phone=PHONE, now=NOW, policy=POLICY, sender=sms)
        await auth.login_resident(session, phone=PHONE, code=sms.last_code, now=NOW, policy=POLICY)
        return household.account_no


async def _rows(sessions: async_sessionmaker[AsyncSession], query: str) -> list[tuple[object, ...]]:
    async with sessions() as session:
        return [tuple(row) for row in (await session.execute(text(query))).all()]


async def test_export_then_erase_from_the_command_line(
    database_url: str, committed_sessions: async_sessionmaker[AsyncSession], tmp_path: Path,
) -> None:
    account_no = await _resident_with_a_household(committed_sessions)
    output = tmp_path / "personal-data.json"
    output.write_text("an older, longer file " * 10_000, encoding="utf-8")  # replaced whole

    exported = await privacy(database_url, "export", "--phone", PHONE, "--output", str(output))

    assert exported.exit_code == 0, exported.output
    document = json.loads(output.read_text(encoding="utf-8"))
    assert [row["account_no"] for row in document["sections"]["households"]["rows"]] == [account_no]
    assert document["sections"]["households"]["rows"][0]["name"] == "陈静"
    assert "exported" in exported.stderr and str(output) in exported.stderr
    to_stdout = await privacy(database_url, "export", "--phone", PHONE)  # shuiwu privacy export … > file.json
    assert json.loads(to_stdout.stdout)["sections"]["households"] == document["sections"]["households"]

    unconfirmed = await privacy(database_url, "erase", "--phone", PHONE)  # stdin is no terminal

    assert (unconfirmed.exit_code, unconfirmed.stderr) == (1, "error: not a terminal: pass --yes to erase without "
                                                              "confirmation\n")

    erased = await privacy(database_url, "erase", "--phone", PHONE, "--yes")

    assert erased.exit_code == 0, erased.output
    pseudonym = f"已注销用户 {subject_token(SECRET, PHONE)}"
    assert erased.stdout.startswith(f"erased as {pseudonym}: ") and "households 1" in erased.stdout
    assert await _rows(committed_sessions, "SELECT name, phone, address FROM households "
                                           f"WHERE account_no = '{account_no}'") == [(pseudonym, None, "")]

    again = await privacy(database_url, "erase", "--phone", PHONE, "--yes")

    assert again.exit_code == 0 and again.stdout.startswith("already erased")
    logged = await _rows(committed_sessions, "SELECT actor_kind, module, action, position('13811112222' IN "
                                             "summary || payload::text) FROM audit_log WHERE module = 'privacy' ORDER BY id")
    assert logged == [("system", "privacy", "exportPersonalData", 0), ("system", "privacy", "exportPersonalData", 0),
                      ("system", "privacy", "erasePersonalData", 0)]


async def test_an_unknown_phone_is_one_line_and_exit_1(database_url: str) -> None:
    for command in (("export", "--phone", "13000000009"), ("erase", "--phone", "13000000009", "--yes")):
        result = await privacy(database_url, *command)

        assert (result.exit_code, result.stderr) == (
            1, "error: 没有与该手机号有关的个人信息 / Nothing is held about this phone number\n"), command
        assert result.stdout == ""


async def test_the_auth_purge_keeps_used_codes_and_decided_bindings_for_their_retention(
    committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with transaction(committed_sessions) as session:
        await session.execute(text("DELETE FROM one_time_codes"))
        tree = await make_area_tree(session)
        household = await create_household(session, account_no=unique("77"), name="周敏", area_id=tree.west_community.id)
        other = await create_household(session, account_no=unique("77"), name="吴磊", area_id=tree.west_community.id)
        resident = (await session.execute(text("INSERT INTO residents (phone) VALUES ('13822223333') RETURNING id"))).scalar_one()
        for days_ago in (1, 10):
            session.add(OneTimeCode(phone="13822223333", code_hash=f"used-{days_ago}", created_at=NOW - timedelta(days=days_ago),
                                    expires_at=NOW - timedelta(days=days_ago) + timedelta(minutes=5),
                                    consumed_at=NOW - timedelta(days=days_ago)))

        def binding(household_id: int, state: BindingState, days_ago: int) -> HouseholdBinding:
            at = NOW - timedelta(days=days_ago)
            return HouseholdBinding(resident_id=resident, household_id=household_id, state=state, created_at=at,
                                    decided_at=at, decided_by="staff:1")

        session.add_all([
            binding(household.id, BindingState.rejected, 400), binding(household.id, BindingState.rejected, 10),
            binding(household.id, BindingState.active, 500),  # its binding still lasts
            binding(other.id, BindingState.active, 450), binding(other.id, BindingState.unbound, 420),
        ])
        session.add(ResidentHousehold(resident_id=resident, household_id=household.id, bound_at=NOW - timedelta(days=500)))

    settings = Settings(retention_login_codes_days=7, retention_bindings_days=365)
    await purge_expired_auth(runtime_for(settings, committed_sessions, clock=lambda: NOW), {})

    assert await _rows(committed_sessions, "SELECT code_hash FROM one_time_codes") == [("used-1",)]
    assert await _rows(committed_sessions, "SELECT state, household_id FROM household_bindings WHERE resident_id = "
                                            f"{resident} ORDER BY id") == [("rejected", household.id), ("active", household.id)]


async def test_the_log_purge_masks_phones_older_than_their_retention(
    committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with transaction(committed_sessions) as session:
        for days_ago, phone in ((100, "13833334444"), (10, "13855556666")):
            await record_operation(session, at=NOW - timedelta(days=days_ago), actor=ROOT, module="archives",
                                   action="updateHousehold", summary=f"修改住户 电话 {phone} 表地址 11012345678901",
                                   payload={"phone": phone, "household": {"phone2": phone}, "count": 13812345678},
                                   success=True, ip=None, request_id=None, actor_name=f"住户 {phone}")

    settings = Settings(retention_log_phones_days=90, audit_retention_days=365)
    await purge_operation_log(runtime_for(settings, committed_sessions, clock=lambda: NOW), {})

    rows = await _rows(committed_sessions, "SELECT actor_name, summary, payload::text FROM audit_log "
                                           "WHERE action = 'updateHousehold' AND summary LIKE '修改住户 电话%' ORDER BY at")
    assert rows == [
        ("住户 138****4444", "修改住户 电话 138****4444 表地址 11012345678901",
         '{"count": 13812345678, "phone": "138****4444", "household": {"phone2": "138****4444"}}'),
        ("住户 13855556666", "修改住户 电话 13855556666 表地址 11012345678901",
         '{"count": 13812345678, "phone": "13855556666", "household": {"phone2": "13855556666"}}'),
    ]


async def test_an_export_to_a_path_that_cannot_be_written_is_refused_before_it_is_logged(
    database_url: str, committed_sessions: async_sessionmaker[AsyncSession], tmp_path: Path,
) -> None:
    await _resident_with_a_household(committed_sessions)
    exports = "SELECT count(*) FROM audit_log WHERE action = 'exportPersonalData'"
    before = await _rows(committed_sessions, exports)
    output = tmp_path / "missing-folder" / "personal-data.json"

    result = await privacy(database_url, "export", "--phone", PHONE, "--output", str(output))

    assert result.exit_code == 1 and result.stderr.startswith(f"error: cannot write {output}: ")
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert await _rows(committed_sessions, exports) == before


async def test_a_refused_export_leaves_no_file_and_an_existing_one_as_it_was(database_url: str, tmp_path: Path) -> None:
    fresh, existing = tmp_path / "fresh.json", tmp_path / "existing.json"
    existing.write_text("kept\n", encoding="utf-8")

    for output in (fresh, existing):
        result = await privacy(database_url, "export", "--phone", "13000000009", "--output", str(output))
        assert result.exit_code == 1, result.output

    assert not fresh.exists() and existing.read_text(encoding="utf-8") == "kept\n"


async def test_a_malformed_phone_is_one_line_and_exit_1(database_url: str) -> None:
    result = await privacy(database_url, "export", "--phone", "13")

    assert (result.exit_code, result.stderr) == (
        1, "error: 手机号格式错误: 需要手机号或固定电话 / Malformed phone number: a mobile or landline number\n")
