"""fetch_page: a counted page is one statement whose rows are the page's, in order, with the total."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import Integer, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from backend import db
from backend.pagination import PagedQuery, fetch_page

_SERIES = func.generate_series(1, bindparam("n", type_=Integer)).table_valued("v").render_derived(name="s")
# Long-lived statements, as services build them: values as binds, the page's own two.
ROWS = (select(_SERIES.c.v.label("v"), (_SERIES.c.v * 10).label("tenfold"))
        .order_by(_SERIES.c.v.desc()).offset(bindparam("_offset")).limit(bindparam("_limit")))
COUNT = select(func.count()).select_from(_SERIES)


async def page(engine: AsyncEngine, n: int, *, offset: int, limit: int, count: bool = True
               ) -> tuple[list[tuple[Any, ...]], int | None, bool, list[str]]:
    sent: list[str] = []

    def log(query: Any) -> None:
        sent.append(query.query)

    async with db.raw_read(engine) as connection:
        connection.add_query_logger(log)
        try:
            rows, total, more = await fetch_page(connection, PagedQuery(ROWS, COUNT, {"n": n}), offset=offset,
                                                 limit=limit, count=count)
            await asyncio.sleep(0)  # asyncpg calls loggers with call_soon
        finally:
            connection.remove_query_logger(log)
    return [(row["v"], row["tenfold"]) for row in rows], total, more, sent


async def test_a_counted_page_is_one_statement_with_the_rows_in_order_and_the_total(engine: AsyncEngine) -> None:
    rows, total, more, sent = await page(engine, 10, offset=2, limit=3)
    assert (rows, total, more) == ([(8, 80), (7, 70), (6, 60)], 10, True)
    assert len(sent) == 1


async def test_the_last_page_has_no_more_and_keeps_its_total(engine: AsyncEngine) -> None:
    rows, total, more, _ = await page(engine, 10, offset=8, limit=3)
    assert (rows, total, more) == ([(2, 20), (1, 10)], 10, False)


async def test_an_empty_first_page_counts_zero_without_a_second_statement(engine: AsyncEngine) -> None:
    rows, total, more, sent = await page(engine, 0, offset=0, limit=5)
    assert (rows, total, more, len(sent)) == ([], 0, False, 1)


async def test_a_page_past_the_end_still_gets_the_total(engine: AsyncEngine) -> None:
    rows, total, more, sent = await page(engine, 4, offset=10, limit=5)
    assert (rows, total, more, len(sent)) == ([], 4, False, 2)


async def test_uncounted_and_from_the_end_pages_answer_as_before(engine: AsyncEngine) -> None:
    assert (await page(engine, 10, offset=0, limit=2, count=False))[:3] == ([(10, 100), (9, 90)], None, True)
    # Relay `last: 3` without a cursor: the total first, then the page it places.
    assert (await page(engine, 10, offset=-3, limit=3))[:3] == ([(3, 30), (2, 20), (1, 10)], 10, False)
