"""Framework-free paging for services: a page statement and its count statement, built
once with bind parameters, fetched with offset and limit (GraphQL wraps the result in a
Relay connection, Excel exports stream the same statement without limits)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select

from backend.db import asyncpg_statement


@dataclass(frozen=True, slots=True)
class PagedQuery:
    """``rows`` takes ``:_offset`` and ``:_limit`` binds; ``count`` counts the same rows.

    Both statements must be long-lived (built once per shape, values as binds): they are
    compiled once for asyncpg and reused.
    """

    rows: Select[Any]
    count: Select[Any]
    params: dict[str, Any] = field(default_factory=dict)


async def fetch_page(
    connection: Any, query: PagedQuery, *, offset: int, limit: int, count: bool
) -> tuple[Sequence[Any], int | None, bool]:
    """Rows of one page (asyncpg records, in select order), the total (None when not
    asked), and whether more rows follow; on a raw asyncpg connection (``db.raw_read``).

    A negative ``offset`` counts from the end (Relay ``last`` without a cursor) and needs
    the total, so it is always counted.
    """
    total: int | None = None
    if count or offset < 0:
        counting = asyncpg_statement(query.count)
        total = int(await connection.fetchval(counting.sql, *counting.arguments(query.params)))
        if offset < 0:
            offset = max(0, total + offset)
    if limit <= 0:
        return [], total, total is not None and offset < total
    # One extra row tells whether a next page exists without counting.
    paging = asyncpg_statement(query.rows)
    rows = await connection.fetch(paging.sql, *paging.arguments({**query.params, "_offset": offset, "_limit": limit + 1}))
    return rows[:limit], total, len(rows) > limit
