"""``shuiwu holidays load|seed`` from the command line, and the calendar's line in
``shuiwu check`` (a year without holiday data is flagged with the command that fills it)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner, Result

from backend.auth.system import system_actor
from backend.calendar.checks import holidays_ahead
from backend.cli import app as cli_app
from backend.runtime import Runtime
from backend.settings import Settings

SPRING_2027_CSV = "date,kind,name\n2027-02-06,holiday,春节\n2027-02-07,holiday,春节\n2027-02-14,workday,春节\n"


async def holidays(url: str, *args: str) -> Result:
    env = {"SHUIWU_DATABASE_URL": url, "COLUMNS": "200"}
    return await asyncio.to_thread(CliRunner().invoke, cli_app, ["holidays", *args], env=env)


async def _days(sessions: async_sessionmaker[AsyncSession], year: int) -> list[tuple[object, ...]]:
    async with sessions() as session:
        result = await session.execute(text(
            "SELECT day, kind, name, source FROM calendar_days WHERE extract(year FROM day) = :year ORDER BY day"),
            {"year": year})
        return [tuple(row) for row in result]


def _runtime(sessions: async_sessionmaker[AsyncSession], now: datetime) -> Runtime:
    return Runtime(settings=Settings(), sessions=sessions, actor=system_actor(frozenset()), clock=lambda: now)


async def test_check_flags_each_missing_year_with_the_command_that_fills_it_then_passes_once_loaded(
    database_url: str, committed_sessions: async_sessionmaker[AsyncSession], tmp_path: Path,
) -> None:
    december = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
    before = await holidays_ahead(_runtime(committed_sessions, december))

    seeded = await holidays(database_url, "seed")
    schedule = tmp_path / "2027.csv"
    schedule.write_text(SPRING_2027_CSV, encoding="utf-8")
    loaded = await holidays(database_url, "load", str(schedule))
    after = await holidays_ahead(_runtime(committed_sessions, december))
    march = await holidays_ahead(_runtime(committed_sessions, datetime(2027, 3, 1, 4, 0, tzinfo=UTC)))

    assert not before.ok
    assert before.detail == ("年份 2026 没有节假日数据 / no holiday data for 2026 (run `shuiwu holidays seed`); "
                             "年份 2027 没有节假日数据 / no holiday data for 2027 "
                             "(run `shuiwu holidays load FILE` with the official schedule)")
    assert seeded.exit_code == 0, seeded.output
    assert loaded.exit_code == 0, loaded.output
    assert "已载入 2027 年共 3 天" in loaded.output
    assert after.ok, after.detail
    assert march.ok  # 2028's schedule is not out in March: only from October is it asked for


async def test_load_twice_from_json_leaves_the_same_days(
    database_url: str, committed_sessions: async_sessionmaker[AsyncSession], tmp_path: Path,
) -> None:
    schedule = tmp_path / "2028.json"
    schedule.write_text(json.dumps([{"date": "2028-01-26", "kind": "holiday", "name": "春节"},
                                    {"date": "2028-01-29", "kind": "班", "name": "春节"}], ensure_ascii=False),
                        encoding="utf-8")

    first = await holidays(database_url, "load", str(schedule))
    once = await _days(committed_sessions, 2028)
    second = await holidays(database_url, "load", str(schedule))

    assert (first.exit_code, second.exit_code) == (0, 0)
    assert once == [(date(2028, 1, 26), "holiday", "春节", "file"), (date(2028, 1, 29), "workday", "春节", "file")]
    assert await _days(committed_sessions, 2028) == once


async def test_a_bad_row_is_one_line_naming_it_with_exit_2_and_nothing_written(
    database_url: str, committed_sessions: async_sessionmaker[AsyncSession], tmp_path: Path,
) -> None:
    good = tmp_path / "2029.csv"
    good.write_text("date,kind,name\n2029-01-01,holiday,元旦\n", encoding="utf-8")
    await holidays(database_url, "load", str(good))
    bad = tmp_path / "2029-bad.csv"
    bad.write_text("date,kind,name\n2029-02-12,holiday,春节\n2029-02-31,holiday,春节\n", encoding="utf-8")

    refused = await holidays(database_url, "load", str(bad))

    assert refused.exit_code == 2
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and "第 3 行：日期 '2029-02-31' 不是 YYYY-MM-DD" in lines[0], refused.output
    assert "row 3" in lines[0]
    assert await _days(committed_sessions, 2029) == [(date(2029, 1, 1), "holiday", "元旦", "file")]


async def test_a_file_with_a_wrong_header_is_refused(database_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "no-header.csv"
    bad.write_text("2030-01-01,holiday,元旦\n", encoding="utf-8")

    refused = await holidays(database_url, "load", str(bad))

    assert refused.exit_code == 2
    assert "第 1 行：表头应为 date,kind,name" in refused.output
