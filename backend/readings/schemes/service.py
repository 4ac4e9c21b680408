"""Query schemes (模板/查询方案): save, delete, list, get. The caller commits.

A scheme belongs to a staff user; a shared one is visible to everyone who may open its
screen (the schema checks that permission). Saving under an existing name of the same
owner and screen updates that scheme, so "另存为" with the same name overwrites.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from backend.errors import DomainError, ErrorCode, Forbidden, NotFound, ValidationFailed
from backend.readings.schemes.models import QueryScheme
from backend.readings.screens import ScreenKind, choose_columns, get_screen

MAX_NAME_LENGTH = 100
MAX_FILTERS_BYTES = 16_384


def _validated(screen: ScreenKind, name: str, columns: Sequence[str], filters: Any) -> tuple[str, list[str], dict[str, Any]]:
    errors: list[DomainError] = []
    name = (name or "").strip()
    if not name:
        errors.append(DomainError("请填写方案名称", "The name is required", field="name", code=ErrorCode.REQUIRED))
    elif len(name) > MAX_NAME_LENGTH or "\x00" in name:
        errors.append(DomainError(f"名称不能超过 {MAX_NAME_LENGTH} 个字符", f"At most {MAX_NAME_LENGTH} characters",
                                  field="name", code=ErrorCode.TOO_LONG))
    try:
        choose_columns(get_screen(screen), list(columns))
    except DomainError as error:
        errors.append(error)
    if not isinstance(filters, dict):
        errors.append(DomainError("筛选条件须为对象", "Filters must be a JSON object", field="filters", code=ErrorCode.INVALID))
    elif len(json.dumps(filters, ensure_ascii=False)) > MAX_FILTERS_BYTES or "\\u0000" in json.dumps(filters):
        errors.append(DomainError("筛选条件过大或无效", "Filters are too large or invalid", field="filters",
                                  code=ErrorCode.INVALID))
    if errors:
        raise ValidationFailed(errors)
    return name, list(columns), dict(filters)


async def save_query_scheme(
    session: AsyncSession, *, owner_user_id: int, screen: ScreenKind, name: str, columns: Sequence[str],
    filters: dict[str, Any], is_default: bool = False, shared: bool = False,
) -> QueryScheme:
    """Create the owner's scheme ``name`` for ``screen``, or update it when it exists.
    ``columns`` are keys the screen offers, in display order (empty: the screen's default);
    ``filters`` a JSON object the screen validates when applied. A default scheme clears
    the owner's other default for the screen."""
    name, columns, filters = _validated(screen, name, columns, filters)
    if is_default:
        await session.execute(
            update(QueryScheme).where(
                QueryScheme.owner_user_id == owner_user_id, QueryScheme.screen == screen,  # type: ignore[arg-type]
                QueryScheme.is_default.is_(True), QueryScheme.name != name,  # type: ignore[attr-defined, arg-type]
            ).values(is_default=False)
        )
    # One statement, so two saves of a new name at once (a double click) both succeed.
    values = {"columns": columns, "filters": filters, "is_default": is_default, "shared": shared}
    statement = (
        insert(QueryScheme)
        .values(owner_user_id=owner_user_id, screen=screen, name=name, **values)
        .on_conflict_do_update(index_elements=["owner_user_id", "screen", "name"],
                               set_={**values, "updated_at": func.now()})
        .returning(QueryScheme.__table__.c.id)  # type: ignore[attr-defined]
    )
    scheme_id = (await session.execute(statement)).scalar_one()
    scheme = await session.get(QueryScheme, scheme_id, populate_existing=True)
    assert scheme is not None
    return scheme


def _visible_to(user_id: int | None) -> Any:
    if user_id is None:
        return QueryScheme.shared.is_(True)  # type: ignore[attr-defined]
    return or_(QueryScheme.owner_user_id == user_id, QueryScheme.shared.is_(True))  # type: ignore[arg-type, attr-defined]


async def list_query_schemes(session: AsyncSession, *, screen: ScreenKind, user_id: int | None) -> list[QueryScheme]:
    """The schemes of ``screen`` that ``user_id`` sees: their own first, then shared ones, by name."""
    table: Any = QueryScheme.__table__  # type: ignore[attr-defined]
    owned_first = (table.c.owner_user_id != user_id) if user_id is not None else table.c.id
    statement = (
        select(QueryScheme).where(QueryScheme.screen == screen, _visible_to(user_id))  # type: ignore[arg-type]
        .order_by(owned_first, table.c.name, table.c.id)
    )
    return list((await session.execute(statement)).scalars())


async def get_query_scheme(session: AsyncSession, *, scheme_id: int, user_id: int | None) -> QueryScheme:
    """One scheme the user owns or that is shared; NOT_FOUND otherwise."""
    statement = select(QueryScheme).where(QueryScheme.id == scheme_id, _visible_to(user_id))  # type: ignore[arg-type]
    scheme = (await session.execute(statement)).scalars().first()
    if scheme is None:
        raise NotFound(field="id")
    return scheme


async def delete_query_scheme(session: AsyncSession, *, scheme_id: int, user_id: int) -> QueryScheme:
    """Delete the user's own scheme; another user's shared scheme is FORBIDDEN, anything
    else NOT_FOUND."""
    scheme = await get_query_scheme(session, scheme_id=scheme_id, user_id=user_id)
    if scheme.owner_user_id != user_id:
        raise Forbidden("只能删除自己的方案", "Only the owner can delete a scheme", field="id")
    await session.delete(scheme)
    await session.flush()
    return scheme
