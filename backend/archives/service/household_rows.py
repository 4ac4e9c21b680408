"""Lists of another domain's rows shown with their household (缴费查询, 账单查询): one
definition of the statement every such screen runs, so the payments and the bills lists
filter, scope, page, count and place their rows the same way.

A list is described by :class:`HouseholdRows`: the row's columns with the household's
(``h``) and its area (``ar``), the joins, the filter conditions and the order. It is
read with :func:`fetch_page` (the page and how many there are in all, in one statement,
one prepared statement per shape of the filter, the place names derived for the page's
rows only) or :func:`fetch_by_ids` (rows by id, optionally kept to a scope). Each record
carries the listed columns plus ``community``, ``building``, ``unit`` and ``room_label``
(:mod:`backend.archives.service.rooms`); a page's records also carry ``total``, and an
empty page is one record with ``total`` and a null ``id``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.service.rooms import area_name_sql, room_label_sql
from backend.db import raw_connection

__all__ = ["PLACE_COLUMNS", "HouseholdRows", "contains_pattern", "fetch_by_ids", "fetch_page"]

# The household's place, for a row whose household's area is alias ``a`` and whose room is ``p.room``.
PLACE_COLUMNS = (f'{area_name_sql("a", "community")} AS community, {area_name_sql("a", "building")} AS building, '
          f'{area_name_sql("a", "unit")} AS unit, {room_label_sql("a", "p.room")} AS room_label')


def contains_pattern(search: str) -> str:
    """A LIKE pattern (with ``ESCAPE '\\'``) matching values that contain ``search`` as typed."""
    return "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@dataclass(frozen=True, slots=True)
class HouseholdRows:
    """One list's statement parts. ``select`` must include ``h.room`` and ``h.area_id``;
    ``conditions`` are ``(filter name, SQL with {} for its parameter)`` in the order the
    parameters are numbered; ``order`` names listed columns (``paid_at DESC, id DESC``)."""

    select: str
    source: str
    id_column: str
    conditions: tuple[tuple[str, str], ...]
    order: str


@functools.cache
def _page_sql(rows: HouseholdRows, given: frozenset[str]) -> str:
    # Parameters: the scope patterns, offset, limit, then the set filters in order.
    conditions = ["ar.path LIKE ANY($1::text[])"]
    number = 3
    for name, condition in rows.conditions:
        if name in given:
            number += 1
            conditions.append(condition.format(f"${number}"))
    outer_order = ", ".join(f"p.{part.strip()}" for part in rows.order.split(","))
    return f"""
WITH listed AS (
    SELECT {rows.select}
    FROM {rows.source}
    WHERE {" AND ".join(conditions)}
)
SELECT t.total, p.*, {PLACE_COLUMNS}
FROM (SELECT count(*) AS total FROM listed) t
LEFT JOIN LATERAL (SELECT * FROM listed ORDER BY {rows.order} OFFSET $2 LIMIT $3) p ON true
LEFT JOIN areas a ON a.id = p.area_id
ORDER BY {outer_order}
"""


@functools.cache
def _by_ids_sql(rows: HouseholdRows) -> str:
    return f"""
SELECT p.*, {PLACE_COLUMNS}
FROM (SELECT {rows.select}
      FROM {rows.source}
      WHERE {rows.id_column} = ANY($1::bigint[]) AND ($2::text[] IS NULL OR ar.path LIKE ANY($2::text[]))) p
JOIN areas a ON a.id = p.area_id
"""


async def fetch_page(session: AsyncSession, rows: HouseholdRows, *, scope_patterns: Sequence[str],
                     values: Mapping[str, Any], offset: int, limit: int) -> tuple[list[Any], int]:
    """The page's records (in order) and how many rows match in all, in one statement;
    ``values`` holds the set filters by name."""
    driver = await raw_connection(session)
    records = await driver.fetch(_page_sql(rows, frozenset(values)), list(scope_patterns), max(offset, 0),
                                 max(limit, 0), *(values[name] for name, _ in rows.conditions if name in values))
    total = int(records[0]["total"]) if records else 0
    return [record for record in records if record["id"] is not None], total


async def fetch_by_ids(session: AsyncSession, rows: HouseholdRows, ids: Sequence[int], *,
                       scope_patterns: Sequence[str] | None = None) -> list[Any]:
    """The records of ``ids`` (any order); with ``scope_patterns`` only those of households
    in the scope."""
    if not ids:
        return []
    driver = await raw_connection(session)
    return list(await driver.fetch(_by_ids_sql(rows), list(ids),
                                   list(scope_patterns) if scope_patterns is not None else None))
