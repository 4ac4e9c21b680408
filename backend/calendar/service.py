"""The holiday calendar's rules: is a day a working day, and the days that make it so.

A day is a working day when it is a Monday to Friday without a ``holiday`` row, or a
Saturday or Sunday with a ``workday`` row (调休上班). A year without any row follows the
weekday rule alone; ``shuiwu check`` flags the current and the next year when they have
no data (``backend.calendar.checks``), since the weekday rule is wrong around 春节 and 国庆.

**Where the seed runs.** The migration creates the table only (a migration imports no
application code, and a package upgrade must not need a migration). The rows of the
years the ``chinese-calendar`` package covers are written by :func:`seed_from_package`:
``shuiwu holidays seed`` on a first install, and the calendar's demo step, so ``make
demo`` has them. Seeding writes only years that have no rows, so a year loaded from an
official file is never replaced by the package's copy. Nothing seeds lazily on read: a
read (the valve policy asking about a day) never writes, and a missing year is a fact an
operator should see in ``shuiwu check`` rather than one the code papers over.

Loading (:func:`load_holidays`) replaces every row of the years the rows cover, so
loading one file twice changes nothing and a corrected file fixes a year at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.calendar.errors import HolidayRowError
from backend.calendar.models import DayKind, DaySource
from backend.errors import DomainError, ErrorCode

# The widest range one call may ask about: two years and a bit (a policy looks weeks ahead).
MAX_RANGE_DAYS = 800
# The years a row may fall in: the package starts in 2004; nothing past 2100 is a schedule.
FIRST_YEAR, LAST_YEAR = 2000, 2100
NAME_MAX = 50
# At most this many rows in one load (a century of schedules is ~3,500 rows).
MAX_ROWS = 10_000

# The package names its holidays in English (chinese_calendar.constants.Holiday values).
_PACKAGE_NAMES = {
    "New Year's Day": "元旦",
    "Spring Festival": "春节",
    "Tomb-sweeping Day": "清明节",
    "Labour Day": "劳动节",
    "Dragon Boat Festival": "端午节",
    "National Day": "国庆节",
    "Mid-autumn Festival": "中秋节",
    "Anti-Fascist 70th Day": "抗战胜利纪念日",
}


@dataclass(frozen=True, slots=True)
class HolidayRow:
    """One day that differs from the weekday rule: a holiday, or a make-up working day
    (``name``: the holiday it makes up for)."""

    day: date
    kind: DayKind
    name: str


@dataclass(frozen=True, slots=True)
class LoadedHolidays:
    years: tuple[int, ...]
    days: int


def weekend(day: date) -> bool:
    return day.weekday() >= 5


def working_by_rows(day: date, kind: DayKind | None) -> bool:
    """The rule itself: ``kind`` is the day's row, None without one."""
    if kind is DayKind.holiday:
        return False
    if kind is DayKind.workday:
        return True
    return not weekend(day)


async def working_day(session: AsyncSession, day: date) -> bool:
    """Whether ``day`` is a working day (module docstring)."""
    return (await working_days(session, start=day, end=day))[day]


async def working_days(session: AsyncSession, *, start: date, end: date) -> dict[date, bool]:
    """Every day from ``start`` to ``end`` (both included) → whether it is a working day;
    one query. A range backwards or longer than :data:`MAX_RANGE_DAYS` is refused."""
    if end < start:
        raise DomainError("结束日期早于开始日期", "The end date is before the start date", field="end")
    span = (end - start).days + 1
    if span > MAX_RANGE_DAYS:
        raise DomainError(f"日期范围不能超过 {MAX_RANGE_DAYS} 天", f"A range may span at most {MAX_RANGE_DAYS} days",
                          field="end")
    result = await session.execute(text("SELECT day, kind FROM calendar_days WHERE day BETWEEN :start AND :end"),
                                   {"start": start, "end": end})
    kinds = {row.day: DayKind(row.kind) for row in result}
    days = (start + timedelta(days=offset) for offset in range(span))
    return {day: working_by_rows(day, kinds.get(day)) for day in days}


async def years_covered(session: AsyncSession) -> list[int]:
    """The years that have at least one row, ascending."""
    result = await session.execute(text(
        "SELECT DISTINCT CAST(extract(year FROM day) AS integer) AS year FROM calendar_days ORDER BY year"))
    return [int(year) for year in result.scalars()]


def validate_rows(rows: Sequence[HolidayRow]) -> None:
    """Refuse rows that cannot be a schedule: none at all, too many, a day twice, a year
    out of range, a missing or long name, a make-up working day that is not a Saturday or
    Sunday. The error names the 1-based position of the first bad row."""
    if not rows:
        raise DomainError("没有任何日期", "No days to load", code=ErrorCode.REQUIRED)
    if len(rows) > MAX_ROWS:
        raise DomainError(f"一次最多载入 {MAX_ROWS} 天", f"At most {MAX_ROWS} days in one load", code=ErrorCode.TOO_LONG)
    seen: set[date] = set()
    for number, row in enumerate(rows, start=1):
        check_row(number, row)
        if row.day in seen:
            raise HolidayRowError(number, f"日期 {row.day} 重复", f"the date {row.day} appears twice",
                                  code=ErrorCode.DUPLICATE)
        seen.add(row.day)


def check_row(number: int, row: HolidayRow) -> None:
    """One row's own rules (see :func:`validate_rows`); ``number`` names it in the error."""
    if not FIRST_YEAR <= row.day.year <= LAST_YEAR:
        raise HolidayRowError(number, f"年份须在 {FIRST_YEAR}–{LAST_YEAR} 之间",
                              f"the year must be within {FIRST_YEAR}-{LAST_YEAR}")
    if not row.name.strip():
        raise HolidayRowError(number, "缺少名称", "the name is missing", code=ErrorCode.REQUIRED)
    if len(row.name) > NAME_MAX:
        raise HolidayRowError(number, f"名称不能超过 {NAME_MAX} 个字", f"the name is longer than {NAME_MAX} characters",
                              code=ErrorCode.TOO_LONG)
    if row.kind is DayKind.workday and not weekend(row.day):
        raise HolidayRowError(number, f"调休上班日 {row.day} 不是周六或周日",
                              f"the make-up working day {row.day} is not a Saturday or Sunday")


async def load_holidays(session: AsyncSession, *, rows: Sequence[HolidayRow], source: DaySource) -> LoadedHolidays:
    """Replace every row of the years ``rows`` cover by ``rows`` (idempotent). Bad rows
    are refused before anything is written (:func:`validate_rows`). The caller commits."""
    validate_rows(rows)
    years = sorted({row.day.year for row in rows})
    # Two loads at once would each delete, then collide on insert: the second waits instead.
    await session.execute(text("LOCK TABLE calendar_days IN SHARE ROW EXCLUSIVE MODE"))
    await session.execute(text("DELETE FROM calendar_days WHERE CAST(extract(year FROM day) AS integer) = ANY(:years)"),
                          {"years": years})
    await session.execute(text(
        "INSERT INTO calendar_days (day, kind, name, source) "
        "SELECT day, kind, name, :source FROM unnest(CAST(:days AS date[]), CAST(:kinds AS text[]), "
        "CAST(:names AS text[])) AS r(day, kind, name)"),
        {"source": source.value, "days": [row.day for row in rows], "kinds": [row.kind.value for row in rows],
         "names": [row.name.strip() for row in rows]})
    return LoadedHolidays(years=tuple(years), days=len(rows))


def package_rows(years: Iterable[int] | None = None) -> list[HolidayRow]:
    """The ``chinese-calendar`` package's holidays and make-up working days (of ``years``,
    or all it has), ordered by day. Its holidays include the weekend days inside a
    holiday period; the make-up days carry the name of the holiday they make up for."""
    import chinese_calendar

    wanted = set(years) if years is not None else None
    rows = [HolidayRow(day, kind, _PACKAGE_NAMES.get(name, name))
            for kind, days in ((DayKind.holiday, chinese_calendar.holidays), (DayKind.workday, chinese_calendar.workdays))
            for day, name in days.items()
            if wanted is None or day.year in wanted]
    return sorted(rows, key=lambda row: row.day)


def package_years() -> list[int]:
    """The years the installed ``chinese-calendar`` package has schedules for."""
    import chinese_calendar

    return sorted({day.year for day in (*chinese_calendar.holidays, *chinese_calendar.workdays)})


async def seed_from_package(session: AsyncSession) -> LoadedHolidays:
    """Load the package's years that have no rows yet (module docstring: where the seed
    runs); a year already loaded, from the package or a file, is left as it is. The
    caller commits."""
    missing = sorted(set(package_years()) - set(await years_covered(session)))
    if not missing:
        return LoadedHolidays(years=(), days=0)
    return await load_holidays(session, rows=package_rows(missing), source=DaySource.package)
