"""Framework-free paging for services: a page statement and its count statement, built
once with bind parameters, fetched with offset and limit (GraphQL wraps the result in a
Relay connection, Excel exports stream the same statement without limits)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, literal_column, select

from backend.db import asyncpg_statement

# The column a counted page carries last: the count of the whole result, on every row.
TOTAL_COLUMN = "_page_total"


@dataclass(frozen=True, slots=True)
class PagedQuery:
    """``rows`` takes ``:_offset`` and ``:_limit`` binds; ``count`` counts the same rows.

    Both statements must be long-lived (built once per shape, values as binds): they are
    compiled once for asyncpg and reused.
    """

    rows: Select[Any]
    count: Select[Any]
    params: dict[str, Any] = field(default_factory=dict)


# (rows, count) -> the page with its count, one statement per pair of long-lived statements.
_counted: dict[tuple[int, int], tuple[Select[Any], Select[Any], Select[Any]]] = {}


def counted_rows(query: PagedQuery) -> Select[Any]:
    """``SELECT page.*, (count) AS _page_total FROM (rows) AS page``: the page and the
    total in one statement, so a counted page is one round trip, not two.

    Under load every round trip is another wait for the database backend and for the event
    loop to be scheduled; the cashier's search (auth, count, rows) paid three. The count is
    an uncorrelated scalar subquery, run once (an InitPlan) when the first row is made;
    ``page.*`` keeps the rows' columns, names and order as they are, the total comes last
    (row readers take columns by name or by a leading slice)."""
    key = (id(query.rows), id(query.count))
    found = _counted.get(key)
    if found is not None and found[0] is query.rows and found[1] is query.count:
        return found[2]
    page = query.rows.subquery("page")
    statement = select(literal_column("page.*"), query.count.scalar_subquery().label(TOTAL_COLUMN)).select_from(page)
    _counted[key] = (query.rows, query.count, statement)
    return statement


async def fetch_page(
    connection: Any, query: PagedQuery, *, offset: int, limit: int, count: bool
) -> tuple[Sequence[Any], int | None, bool]:
    """Rows of one page (asyncpg records, in select order), the total (None when not
    asked), and whether more rows follow; on a raw asyncpg connection (``db.raw_read``).

    A counted page is one statement (:func:`counted_rows`; its rows carry the total as a
    last column). Only when it comes back empty past the first row is the count asked for
    on its own. A negative ``offset`` counts from the end (Relay ``last`` without a
    cursor) and needs the total first, so it is counted apart.
    """
    total: int | None = None
    if count and offset >= 0 and limit > 0:
        counted = asyncpg_statement(counted_rows(query))
        rows = await connection.fetch(counted.sql, *counted.arguments({**query.params, "_offset": offset, "_limit": limit + 1}))
        if rows:
            total = int(rows[0][TOTAL_COLUMN])
        elif offset == 0:
            total = 0
        else:
            total = await _count(connection, query)
        return rows[:limit], total, len(rows) > limit
    if count or offset < 0:
        total = await _count(connection, query)
        if offset < 0:
            offset = max(0, total + offset)
    if limit <= 0:
        return [], total, total is not None and offset < total
    # One extra row tells whether a next page exists without counting.
    paging = asyncpg_statement(query.rows)
    rows = await connection.fetch(paging.sql, *paging.arguments({**query.params, "_offset": offset, "_limit": limit + 1}))
    return rows[:limit], total, len(rows) > limit


async def _count(connection: Any, query: PagedQuery) -> int:
    counting = asyncpg_statement(query.count)
    return int(await connection.fetchval(counting.sql, *counting.arguments(query.params)))
