"""Room labels (楼-单元-房间): what the 实时数据 screen calls 单位名称.

The labels are derived from a household's ``room`` and the area tree above it, never
stored, so renaming a building relabels its rooms. One definition, in SQL, used by every
list that shows or searches them (the household's fields, 实时数据 and its export) —
the rule is :class:`~backend.archives.models.Household`'s docstring:

- room label: the building and unit names above the household without their kind's word,
  then the room, joined by ``-`` (``1号楼`` / ``1单元`` / ``0101`` → ``1-1-0101``);
- unit name: the community's name, then the room label (``恒大1-1-0101``).

Both are null for a household without a room.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# The word a building or unit name ends in (1号楼, 2栋, 3幢, A座, 5楼, 1单元).
KIND_WORD = "(号楼|栋|幢|座|楼|单元)$"


def _above(area: str) -> str:
    """``x`` is ``area`` or one of its ancestors (the ids of its materialized path)."""
    return f"x.id = ANY(CAST(string_to_array(trim(BOTH '/' FROM {area}.path), '/') AS bigint[]))"


def room_label_sql(area: str, room: str) -> str:
    """The SQL expression of the room label of a household whose area is the row of alias
    ``area`` and whose room is the expression ``room``."""
    numbers = (f"(SELECT string_agg(regexp_replace(btrim(x.name), '{KIND_WORD}', ''), '-' ORDER BY length(x.path)) "
               f"FROM areas x WHERE {_above(area)} AND x.kind IN ('building', 'unit'))")
    return f"CASE WHEN {room} IS NOT NULL THEN concat_ws('-', {numbers}, {room}) END"


def area_name_sql(area: str, kind: str) -> str:
    """The SQL expression of the name of the nearest area of ``kind`` (community, building,
    unit …) at or above the row of alias ``area``; null when the tree has none."""
    return (f"(SELECT x.name FROM areas x WHERE {_above(area)} AND x.kind = '{kind}' "
            "ORDER BY length(x.path) DESC LIMIT 1)")


def unit_name_sql(area: str, room: str) -> str:
    """The SQL expression of the unit name (单位名称): the community's name and the room label."""
    return f"CASE WHEN {room} IS NOT NULL THEN concat({area_name_sql(area, 'community')}, {room_label_sql(area, room)}) END"


@dataclass(frozen=True, slots=True)
class RoomLabels:
    room_label: str | None
    unit_name: str | None


async def room_labels_by_household_ids(session: AsyncSession, ids: Sequence[int]) -> dict[int, RoomLabels]:
    """The labels of each household (both null without a room). One statement."""
    if not ids:
        return {}
    rows = await session.execute(text(
        f"SELECT h.id, {room_label_sql('a', 'h.room')} AS room_label, {unit_name_sql('a', 'h.room')} AS unit_name "
        "FROM households h JOIN areas a ON a.id = h.area_id WHERE h.id = ANY(CAST(:ids AS bigint[]))"
    ), {"ids": list(ids)})
    return {row.id: RoomLabels(row.room_label, row.unit_name) for row in rows}
