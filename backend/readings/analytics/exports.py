"""Every row of the statistics, a ledger or a comparison, for the Excel exports: streamed
or paged so a large area's year never sits in memory at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.readings.analytics.comparisons import ComparisonRow, usage_comparison
from backend.readings.analytics.ledgers import LedgerRow, usage_ledger
from backend.readings.analytics.periods import Granularity
from backend.readings.analytics.statistics import StatisticsRow, _statistics_row, _statistics_sql, _statistics_target, usage_statistics

EXPORT_PAGE = 5000


async def all_statistics_rows(
    session: AsyncSession, *, granularity: Granularity, end_day: date, tz: str, **kwargs: Any
) -> AsyncIterator[StatisticsRow]:
    """Every row of :func:`usage_statistics` (exports): one statement, streamed, so a year
    of days of a large area never sits in memory at once. Hourly rows (one meter or
    household, at most 31 days) come as one page."""
    if granularity is Granularity.hour:
        page = await usage_statistics(session, granularity=granularity, end_day=end_day, tz=tz, offset=0, limit=None,
                                      **kwargs)
        for row in page.rows:
            yield row
        return
    target, params = await _statistics_target(session, granularity=granularity, end_day=end_day, tz=tz, **kwargs)
    statement = text(_statistics_sql(target.kind, granularity)).execution_options(yield_per=EXPORT_PAGE)
    result = await session.stream(statement, {**params, "offset": 0, "limit": None})
    async for found in result:
        if found.unit_id is not None:
            yield _statistics_row(found, granularity, end_day, tz)


async def all_ledger_rows(session: AsyncSession, **kwargs: Any) -> AsyncIterator[LedgerRow]:
    """Every row of :func:`usage_ledger` (exports), in pages of :data:`EXPORT_PAGE` meters."""
    offset = 0
    while True:
        page = await usage_ledger(session, offset=offset, limit=EXPORT_PAGE, with_totals=False, **kwargs)
        for row in page.rows:
            yield row
        if len(page.rows) < EXPORT_PAGE:
            return
        offset += EXPORT_PAGE


async def all_comparison_rows(session: AsyncSession, **kwargs: Any) -> AsyncIterator[ComparisonRow]:
    page = await usage_comparison(session, offset=0, limit=None, **kwargs)
    for row in page.rows:
        yield row
