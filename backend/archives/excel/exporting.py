"""What the device exports share: the list screens' filter, numbered asyncpg conditions,
and rows streamed through a server-side cursor with area paths turned into names."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from backend.archives.excel.cells import _AREA_HAS_CODE


def _like_pattern(search: str) -> str:
    return "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@dataclass(frozen=True, slots=True)
class DeviceExportFilter:
    """A device list screen's filter; each field only where the list has it."""

    area_path: str | None = None
    search: str | None = None
    status: str | None = None
    meter_type: str | None = None
    kind: str | None = None
    concentrator_id: int | None = None
    model_id: int | None = None
    connection: str | None = None
    current: bool | None = None
    assigned: bool | None = None


async def _area_labels(connection: Any, scope_patterns: Sequence[str]) -> Any:
    names: dict[str, str] = {}
    for record in await connection.fetch("SELECT id, name FROM areas WHERE path LIKE ANY($1::text[])", list(scope_patterns)):
        names[str(record["id"])] = record["name"]
    labels: dict[str, str] = {}

    def label(path: str) -> str:
        found = labels.get(path)
        if found is None:
            # Skip the company: every row shares it.
            found = labels[path] = " / ".join(names.get(part, "?") for part in path.strip("/").split("/")[1:])
        return found

    return label


async def _stream(
    connection: Any, statement: str, arguments: Sequence[Any], *, scope_patterns: Sequence[str],
    area_position: int | None, chunk_rows: int,
) -> AsyncIterator[tuple[Any, ...]]:
    label = await _area_labels(connection, scope_patterns) if area_position is not None else None
    async with connection.transaction(readonly=True):
        cursor = await connection.cursor(statement, *arguments)
        while records := await cursor.fetch(chunk_rows):
            for record in records:
                row = tuple(record)
                if label is not None and area_position is not None:
                    row = (*row[:area_position], label(row[area_position]), *row[area_position + 1 :])
                yield row


class _Where:
    """Numbered asyncpg conditions: ``add("m.status = {}", value)``."""

    def __init__(self, scope_patterns: Sequence[str], path: str = "a.path") -> None:
        self.conditions = [f"{path} LIKE ANY($1::text[])"]
        self.arguments: list[Any] = [list(scope_patterns)]

    def add(self, condition: str, value: Any) -> None:
        self.arguments.append(value)
        self.conditions.append(condition.replace("{}", f"${len(self.arguments)}"))

    def sql(self) -> str:
        return " AND ".join(self.conditions)


_AREA_CODE_SQL = "COALESCE(a.code, '#' || a.id)" if _AREA_HAS_CODE else "'#' || a.id"
