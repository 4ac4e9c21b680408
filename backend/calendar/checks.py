"""The calendar's line in ``shuiwu check`` (backend.calendar.domain)."""

from __future__ import annotations

from backend.calendar.service import package_years, years_covered
from backend.domain import CheckResult
from backend.runtime import Runtime

# The next year is flagged from October on: the State Council publishes its schedule late
# in the year (late October to December), so flagging it in March would only teach
# operators to ignore the line.
NEXT_YEAR_FLAGGED_FROM_MONTH = 10


async def holidays_ahead(runtime: Runtime) -> CheckResult:
    """The current year has holiday data, and from October the next year too. The detail
    names each missing year and the command that fills it."""
    from zoneinfo import ZoneInfo

    today = runtime.now().astimezone(ZoneInfo(runtime.timezone)).date()
    wanted = [today.year] + ([today.year + 1] if today.month >= NEXT_YEAR_FLAGGED_FROM_MONTH else [])
    async with runtime.sessions() as session:
        covered = set(await years_covered(session))
    missing = [year for year in wanted if year not in covered]
    if not missing:
        return CheckResult(True, f"{', '.join(str(year) for year in wanted)} loaded")
    seedable = set(package_years())
    return CheckResult(False, "; ".join(_missing_line(year, year in seedable) for year in missing))


def _missing_line(year: int, in_package: bool) -> str:
    fix = "`shuiwu holidays seed`" if in_package else "`shuiwu holidays load FILE` with the official schedule"
    return f"年份 {year} 没有节假日数据 / no holiday data for {year} (run {fix})"
