"""What the imports share: their result, the temporary table the validated rows go to,
area references resolved within the scope, row errors from a query, the upsert clause,
and the locks the same-subtree rule needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import errors as archive_errors
from backend.archives import service as _service
from backend.archives.excel.cells import _AREA_HAS_CODE
from backend.db import copy_into
from backend.exports.excel import ValidatedSheet


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import did with its rows: ``inserted`` new ones, ``updated`` stored ones that
    differed (``updateExisting=true``), ``unchanged`` ones identical to what is stored, and
    ``skipped`` ones that differ from what is stored but were left alone because
    ``updateExisting`` was false. The four add up to the file's rows."""

    inserted: int
    updated: int
    unchanged: int
    skipped: int = 0

    def as_json(self) -> dict[str, int]:
        return {"inserted": self.inserted, "updated": self.updated, "unchanged": self.unchanged, "skipped": self.skipped}


async def _count_differing(
    session: AsyncSession, *, table: str, alias: str, temp: str, match: str, columns: Sequence[str],
    incoming: Sequence[str],
) -> int:
    """How many rows of ``temp`` (alias ``t``) match a stored row of ``table`` (``alias``)
    on ``match`` and differ from it in ``columns``, ``incoming`` being the expressions the
    upsert would write (so the comparison is the one ``_upsert_clause`` makes). Each
    incoming value is cast to its column's type first, as the INSERT would."""
    if not columns:
        return 0
    types: dict[str, str] = dict((await session.execute(sql(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = CAST(:table AS regclass) AND attnum > 0 AND NOT attisdropped"), {"table": table})).all())
    stored = ", ".join(f"{alias}.{column}" for column in columns)
    given = ", ".join(f"CAST({value} AS {types[column]})" for column, value in zip(columns, incoming, strict=True))
    found = await session.execute(sql(
        f"SELECT count(*) FROM {temp} t JOIN {table} {alias} ON {match} WHERE ROW({stored}) IS DISTINCT FROM ROW({given})"))
    return int(found.scalar_one())


_CROSS_AREA = archive_errors.CrossAreaAssignment
CROSS_AREA = (_CROSS_AREA.message, _CROSS_AREA.message_en)
OUT_OF_SCOPE_AREA = ("区域编码不存在或不在您的管辖范围内", "Unknown area code, or an area outside your scope")


async def _lock_for_the_subtree_rule(session: AsyncSession, *, meters: str | None = None, households: str | None = None) -> None:
    """Before an import checks the same-subtree rule (backend.archives.service): share the
    area tree's lock and lock the meters, then the households, the rows ``meters`` and
    ``households`` select, each in id order, as a form's assignment or move does, so a
    concurrent move cannot slip between the check and the write."""
    await _service.share_area_tree(session)
    for table, ids in (("meters", meters), ("households", households)):
        if ids is not None:
            await session.execute(sql(f"SELECT id FROM {table} WHERE id IN ({ids}) ORDER BY id FOR UPDATE"))


async def _temp_table(session: AsyncSession, name: str, columns: Sequence[tuple[str, str]], records: list[tuple[Any, ...]]) -> None:
    await session.execute(sql(
        f"CREATE TEMP TABLE {name} ({', '.join(f'{key} {kind}' for key, kind in columns)}) ON COMMIT DROP"
    ))
    if records:
        width = len(records[0])
        await copy_into(session, name, columns=[key for key, _ in columns[:width]], records=records)


async def _resolve_areas(session: AsyncSession, table: str, sheet: ValidatedSheet, scope: dict[str, Any]) -> None:
    """Fill ``area_id`` from ``area_code`` (a code or ``#id``) within the scope; a row
    left without one is a row error."""
    if _AREA_HAS_CODE:
        await session.execute(sql(
            f"UPDATE {table} t SET area_id = a.id FROM areas a "
            "WHERE a.code = t.area_code AND a.path LIKE ANY(CAST(:patterns AS text[]))"
        ), scope)
    await session.execute(sql(
        f"UPDATE {table} t SET area_id = a.id FROM areas a WHERE t.area_id IS NULL "
        "AND t.area_code ~ '^#[0-9]{1,18}$' AND a.id = CAST(substr(t.area_code, 2) AS bigint) "
        "AND a.path LIKE ANY(CAST(:patterns AS text[]))"
    ), scope)
    for (row_no,) in await session.execute(sql(f"SELECT row_no FROM {table} WHERE area_id IS NULL ORDER BY row_no")):
        sheet.add_error(row_no, "area_code", *OUT_OF_SCOPE_AREA)


async def _row_errors(session: AsyncSession, sheet: ValidatedSheet, statement: str, params: dict[str, Any], column: str,
                      message: tuple[str, str]) -> None:
    for (row_no,) in await session.execute(sql(statement), params):
        sheet.add_error(row_no, column, *message)


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


def _upsert_clause(changed: Sequence[str], alias: str, update_existing: bool) -> str:
    """The ``ON CONFLICT …`` action: nothing, or update the changed columns on rows that differ."""
    if not update_existing or not changed:
        return "DO NOTHING"
    return (
        f"DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in changed)}, updated_at = now() "
        f"WHERE ({', '.join(f'{alias}.{c}' for c in changed)}) IS DISTINCT FROM ({', '.join(f'EXCLUDED.{c}' for c in changed)})"
    )
