"""Relay connections with ``totalCount`` and offset cursors (DESIGN.md, "Pagination").

A cursor is ``base64("cursor:<offset>")`` of the row it stands for, so a desk screen can
jump to page N by asking for ``after: cursor((N-1) * size - 1)`` ("共 60 条, 每页 20 条").
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import strawberry
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.errors import BadUserInput, PageSizeExceeded
from backend.pagination import PagedQuery, fetch_page
from backend.slicing import map_in_slices

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 1000
_PREFIX = "cursor:"

NodeT = TypeVar("NodeT")


def encode_cursor(offset: int) -> str:
    return binascii.b2a_base64(f"{_PREFIX}{offset}".encode(), newline=False).decode()


class BadCursor(BadUserInput):
    message = "分页游标无效"
    message_en = "Malformed pagination cursor"


def decode_cursor(cursor: str, *, field: str = "after") -> int:
    try:
        text = base64.b64decode(cursor.encode(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise BadCursor(field=field) from None
    offset = text[len(_PREFIX) :]
    # ASCII digits only ("²".isdigit() is true), and an offset PostgreSQL can take.
    if not text.startswith(_PREFIX) or not (offset.isascii() and offset.isdigit()) or len(offset) > 12:
        raise BadCursor(field=field)
    return int(offset)


@dataclass(frozen=True, slots=True)
class PageRequest:
    offset: int
    limit: int

    @classmethod
    def from_args(
        cls,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
    ) -> PageRequest:
        """Offset and limit for Relay arguments; sizes above the maximum are refused."""
        for name, size in (("first", first), ("last", last)):
            if size is not None and size > MAX_PAGE_SIZE:
                raise PageSizeExceeded(field=name)
            if size is not None and size < 0:
                raise BadUserInput("每页条数不能为负", "Page size cannot be negative", field=name)
        start = decode_cursor(after) + 1 if after is not None else 0
        end = decode_cursor(before, field="before") if before is not None else None
        if first is not None:
            limit = first if end is None else max(0, min(first, end - start))
            return cls(start, limit)
        if last is not None and end is not None:
            begin = max(start, end - last)
            return cls(begin, end - begin)
        if last is not None:
            # "last N" without a cursor needs the total; the caller resolves it.
            return cls(-last, last)
        limit = DEFAULT_PAGE_SIZE if end is None else max(0, min(DEFAULT_PAGE_SIZE, end - start))
        return cls(start, limit)


@strawberry.type
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type
class Edge(Generic[NodeT]):
    cursor: str
    node: NodeT


@strawberry.type
class Connection(Generic[NodeT]):
    total_count: int = strawberry.field(description="Rows matching the filter, over all pages.")
    page_info: PageInfo
    edges: list[Edge[NodeT]]

    @classmethod
    def from_page(cls, nodes: Sequence[Any], *, total: int, offset: int) -> Connection[Any]:
        edges = [Edge(cursor=encode_cursor(offset + index), node=node) for index, node in enumerate(nodes)]
        return cls(
            total_count=total,
            page_info=PageInfo(
                has_next_page=offset + len(nodes) < total,
                has_previous_page=offset > 0,
                start_cursor=edges[0].cursor if edges else None,
                end_cursor=edges[-1].cursor if edges else None,
            ),
            edges=edges,
        )


async def paginate(
    session: AsyncSession,
    statement: Select[Any],
    page: PageRequest,
    to_node: Callable[[Any], Any],
    *,
    count: bool = True,
) -> Connection[Any]:
    """Run ``statement`` (already filtered, scoped and ordered) for one page plus its count.

    With ``count=False`` (the client did not select ``totalCount``) the count query is
    skipped and one extra row tells whether a next page exists; ``totalCount`` then holds
    the rows seen so far, which nobody reads.
    """
    if count or page.offset < 0:
        total = (await session.execute(select(func.count()).select_from(statement.order_by(None).subquery()))).scalar_one()
        offset = page.offset if page.offset >= 0 else max(0, total + page.offset)
        rows = (await session.execute(statement.offset(offset).limit(page.limit))).all() if page.limit else []
        return Connection.from_page(await map_in_slices(to_node, rows), total=total, offset=offset)
    offset = page.offset
    rows = (await session.execute(statement.offset(offset).limit(page.limit + 1))).all() if page.limit else []
    more = len(rows) > page.limit
    rows = rows[: page.limit]
    return Connection.from_page(await map_in_slices(to_node, rows), total=offset + len(rows) + int(more), offset=offset)


async def paginate_query(
    context: Any,
    query: PagedQuery,
    page: PageRequest,
    to_node: Callable[[Any], Any],
    *,
    count: bool = True,
) -> Connection[Any]:
    """A Relay connection over a prebuilt :class:`PagedQuery`, read on a raw connection of
    the read pool (the fast path of list screens); ``to_node`` gets asyncpg records."""
    async with context.raw_read() as connection:
        rows, total, more = await fetch_page(connection, query, offset=page.offset, limit=page.limit, count=count)
    offset = page.offset if page.offset >= 0 else max(0, (total or 0) + page.offset)
    nodes = await map_in_slices(to_node, rows)
    if total is None:
        # totalCount was not selected: report what is known, which nobody reads.
        total = offset + len(nodes) + int(more)
    connection = Connection.from_page(nodes, total=total, offset=offset)
    connection.page_info.has_next_page = more
    return connection


def selects(info: Any, field_name: str) -> bool:
    """Whether the query selects ``field_name`` directly under the current field.

    Conservative: any fragment under the field counts as selecting it.
    """
    for node in info._raw_info.field_nodes:
        if node.selection_set is None:
            continue
        for selection in node.selection_set.selections:
            name = getattr(selection, "name", None)
            if name is None or getattr(selection, "type_condition", None) is not None or not hasattr(selection, "arguments"):
                return True
            if name.value == field_name:
                return True
    return False
