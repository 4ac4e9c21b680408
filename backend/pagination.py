"""Framework-free paging for services: a page statement and its count statement, built
once with bind parameters, fetched with offset and limit (GraphQL wraps the result in a
Relay connection, Excel exports stream the same statement without limits)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, Select
from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True, slots=True)
class PagedQuery:
    """``rows`` takes ``:_offset`` and ``:_limit`` binds; ``count`` counts the same rows."""

    rows: Select[Any]
    count: Select[Any]
    params: dict[str, Any] = field(default_factory=dict)


async def fetch_page(
    session: AsyncSession, query: PagedQuery, *, offset: int, limit: int, count: bool
) -> tuple[Sequence[Row[Any]], int | None, bool]:
    """Rows of one page, the total (None when not asked), and whether more rows follow.

    A negative ``offset`` counts from the end (Relay ``last`` without a cursor) and needs
    the total, so it is always counted.
    """
    total: int | None = None
    if count or offset < 0:
        total = (await session.execute(query.count, query.params)).scalar_one()
        if offset < 0:
            offset = max(0, total + offset)
    if limit <= 0:
        return [], total, total is not None and offset < total
    # One extra row tells whether a next page exists without counting.
    rows = (await session.execute(query.rows, {**query.params, "_offset": offset, "_limit": limit + 1})).all()
    return rows[:limit], total, len(rows) > limit
