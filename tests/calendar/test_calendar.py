"""The holiday calendar's rules (backend.calendar.service): seeding from the
chinese-calendar package, loading a year's schedule, and working days with 调休."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.calendar.errors import HolidayRowError
from backend.calendar.models import DayKind, DaySource
from backend.calendar.service import (
    HolidayRow,
    load_holidays,
    package_years,
    seed_from_package,
    working_day,
    working_days,
    years_covered,
)
from backend.errors import DomainError, ErrorCode

SPRING_2027 = [
    HolidayRow(date(2027, 2, 6), DayKind.holiday, "春节"),
    HolidayRow(date(2027, 2, 7), DayKind.holiday, "春节"),
    HolidayRow(date(2027, 2, 8), DayKind.holiday, "春节"),
    HolidayRow(date(2027, 2, 14), DayKind.workday, "春节"),
]


async def _rows(session: AsyncSession, year: int) -> list[tuple[object, ...]]:
    result = await session.execute(text(
        "SELECT day, kind, name, source FROM calendar_days WHERE extract(year FROM day) = :year ORDER BY day"),
        {"year": year})
    return [tuple(row) for row in result]


async def test_seed_loads_every_year_the_package_covers(session: AsyncSession) -> None:
    seeded = await seed_from_package(session)

    assert list(seeded.years) == package_years()
    assert {2004, 2025, 2026} <= set(await years_covered(session))
    assert (date(2026, 2, 17), "holiday", "春节", "package") in await _rows(session, 2026)


async def test_seed_keeps_a_year_loaded_from_a_file_and_a_second_seed_writes_nothing(session: AsyncSession) -> None:
    own_2025 = [HolidayRow(date(2025, 10, 1), DayKind.holiday, "国庆节")]
    await load_holidays(session, rows=own_2025, source=DaySource.file)

    await seed_from_package(session)
    again = await seed_from_package(session)

    assert await _rows(session, 2025) == [(date(2025, 10, 1), "holiday", "国庆节", "file")]
    assert again.years == () and again.days == 0


async def test_loading_a_year_replaces_its_days_and_loading_it_twice_changes_nothing(session: AsyncSession) -> None:
    await load_holidays(session, rows=[HolidayRow(date(2027, 1, 1), DayKind.holiday, "元旦")], source=DaySource.file)

    first = await load_holidays(session, rows=SPRING_2027, source=DaySource.file)
    after_first = await _rows(session, 2027)
    await load_holidays(session, rows=SPRING_2027, source=DaySource.file)

    assert first.years == (2027,) and first.days == 4
    assert [row[0] for row in after_first] == [row.day for row in SPRING_2027]  # 元旦 went with the old schedule
    assert await _rows(session, 2027) == after_first


async def test_loading_one_year_leaves_the_other_years_alone(session: AsyncSession) -> None:
    await load_holidays(session, rows=[HolidayRow(date(2026, 10, 1), DayKind.holiday, "国庆节")], source=DaySource.file)

    await load_holidays(session, rows=SPRING_2027, source=DaySource.file)

    assert await _rows(session, 2026) == [(date(2026, 10, 1), "holiday", "国庆节", "file")]


@pytest.mark.parametrize(("rows", "code", "message"), [
    ([], ErrorCode.REQUIRED, "没有任何日期"),
    ([*SPRING_2027, SPRING_2027[1]], ErrorCode.DUPLICATE, "第 5 行：日期 2027-02-07 重复"),
    ([HolidayRow(date(2027, 2, 10), DayKind.workday, "春节")], ErrorCode.INVALID, "第 1 行：调休上班日 2027-02-10 不是周六或周日"),
    ([HolidayRow(date(2027, 2, 6), DayKind.holiday, " ")], ErrorCode.REQUIRED, "第 1 行：缺少名称"),
])
async def test_a_bad_schedule_is_refused_and_nothing_is_written(
    session: AsyncSession, rows: list[HolidayRow], code: ErrorCode, message: str,
) -> None:
    await load_holidays(session, rows=[HolidayRow(date(2027, 1, 1), DayKind.holiday, "元旦")], source=DaySource.file)

    with pytest.raises(DomainError) as refused:
        await load_holidays(session, rows=rows, source=DaySource.file)

    assert refused.value.code == code and refused.value.message == message
    assert await _rows(session, 2027) == [(date(2027, 1, 1), "holiday", "元旦", "file")]
    if rows:
        assert isinstance(refused.value, HolidayRowError)


async def test_working_days_follow_weekends_holidays_and_make_up_days(session: AsyncSession) -> None:
    await seed_from_package(session)

    assert await working_day(session, date(2025, 10, 1)) is False  # 国庆节, a Wednesday
    assert await working_day(session, date(2025, 9, 28)) is True  # 调休: a Sunday worked for 国庆节
    assert await working_day(session, date(2025, 10, 11)) is True  # 调休 Saturday
    assert await working_day(session, date(2025, 10, 18)) is False  # an ordinary Saturday
    assert await working_day(session, date(2025, 10, 15)) is True  # an ordinary Wednesday


async def test_a_year_without_data_follows_the_weekday_rule(session: AsyncSession) -> None:
    week = await working_days(session, start=date(2031, 2, 1), end=date(2031, 2, 7))  # Saturday to Friday

    assert list(week.values()) == [False, False, True, True, True, True, True]


async def test_working_days_refuses_a_backwards_or_too_long_range(session: AsyncSession) -> None:
    with pytest.raises(DomainError):
        await working_days(session, start=date(2027, 2, 1), end=date(2027, 1, 1))
    with pytest.raises(DomainError):
        await working_days(session, start=date(2027, 1, 1), end=date(2030, 1, 1))
