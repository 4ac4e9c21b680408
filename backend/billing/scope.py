"""Data scope in billing's raw SQL: scope patterns as a bind parameter, and an area of
the caller's scope by id (NOT_FOUND outside it, so its existence does not leak)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.errors import NotFound


def patterns_param(scope_patterns: Sequence[str] | None) -> list[str] | None:
    """``scope_patterns`` as a ``text[]`` parameter (None: no restriction)."""
    return None if scope_patterns is None else list(scope_patterns)


_SCOPED_AREA_PATH = text("""
SELECT path FROM areas
WHERE id = :area_id AND (CAST(:patterns AS text[]) IS NULL OR path LIKE ANY(CAST(:patterns AS text[])))
""")


async def area_path_in_scope(session: AsyncSession, area_id: int, scope_patterns: Sequence[str] | None, *,
                             field: str = "areaId") -> str:
    """The path of area ``area_id`` when it lies in the scope; NOT_FOUND otherwise."""
    path = (await session.execute(_SCOPED_AREA_PATH, {"area_id": area_id, "patterns": patterns_param(scope_patterns)})
            ).scalar_one_or_none()
    if path is None:
        raise NotFound(field=field)
    return str(path)
