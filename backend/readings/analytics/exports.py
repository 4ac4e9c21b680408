"""Every row of the statistics, a ledger or a comparison, for the Excel exports: streamed
or paged so a large area's year never sits in memory at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.readings.analytics.comparisons import ComparisonRow, usage_comparison
from backend.readings.analytics.ledgers import LedgerPage, LedgerRow, usage_ledger
from backend.readings.analytics.periods import Granularity
from backend.readings.analytics.statistics import (
    StatisticsRow,
    UsageSummary,
    _statistics_row,
    _statistics_target,
    statement_summary,
    statistics_sql,
)

EXPORT_PAGE = 5000


async def all_statistics_rows(
    session: AsyncSession, *, granularity: Granularity, end_day: date, tz: str, **kwargs: Any
) -> AsyncIterator[StatisticsRow | UsageSummary]:
    """Every row of :func:`usage_statistics` (exports), then its summary over every row
    (the same :class:`UsageSummary` the query's ``summary`` is: the statement's own SQL
    aggregate, carried on each streamed row). One statement, streamed, so a year of days
    of a large area never sits in memory at once; hourly rows (any object, at most 31
    days) the same way, with their coverage."""
    target, params = await _statistics_target(session, granularity=granularity, end_day=end_day, tz=tz, **kwargs)
    statement = text(statistics_sql(target.kind, granularity)).execution_options(yield_per=EXPORT_PAGE)
    result = await session.stream(statement, {**params, "offset": 0, "limit": None})
    summary: UsageSummary | None = None
    async for found in result:
        if summary is None:
            summary = statement_summary(found)
        if found.unit_id is not None:
            yield _statistics_row(found, granularity, end_day, tz)
    yield summary if summary is not None else UsageSummary.of([])


async def all_ledger_rows(session: AsyncSession, **kwargs: Any) -> AsyncIterator[LedgerRow | LedgerPage]:
    """Every row of :func:`usage_ledger` (exports), in pages of :data:`EXPORT_PAGE` meters,
    then a :class:`LedgerPage` without rows that carries the area totals and the overall
    total, as the query's ``areaTotals`` and ``total`` (read once, after the rows)."""
    offset = 0
    while True:
        page = await usage_ledger(session, offset=offset, limit=EXPORT_PAGE, with_totals=False, **kwargs)
        for row in page.rows:
            yield row
        if len(page.rows) < EXPORT_PAGE:
            break
        offset += EXPORT_PAGE
    yield await usage_ledger(session, offset=0, limit=0, with_totals=True, **kwargs)


async def all_comparison_rows(session: AsyncSession, **kwargs: Any) -> AsyncIterator[ComparisonRow]:
    page = await usage_comparison(session, offset=0, limit=None, **kwargs)
    for row in page.rows:
        yield row
