"""Readings' lines in ``shuiwu check`` (backend.readings.domain)."""

from __future__ import annotations

from sqlalchemy import text

from backend.domain import CheckResult
from backend.readings.partitions import DEFAULT_MONTHS_AHEAD, as_zone, month_of, partition_name
from backend.runtime import Runtime

_ATTACHED = text(
    "SELECT name FROM unnest(CAST(:names AS text[])) AS name LEFT JOIN pg_class c ON c.oid = to_regclass(name) "
    "WHERE NOT coalesce(c.relispartition, false) ORDER BY name"
)


async def partitions_ahead(runtime: Runtime) -> CheckResult:
    """This month's readings partition and the next three are attached (the daily job
    ``ensure_reading_partitions`` keeps them so; a missing one means it has not run)."""
    year, month = month_of(runtime.now(), as_zone(runtime.timezone))
    names = []
    for _ in range(DEFAULT_MONTHS_AHEAD + 1):
        names.append(partition_name(year, month))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    async with runtime.sessions() as session:
        missing = list((await session.execute(_ATTACHED, {"names": names})).scalars())
    if missing:
        return CheckResult(False, f"missing: {', '.join(missing)} (run `shuiwu partitions ensure`)")
    return CheckResult(True, f"{names[0]} … {names[-1]} attached")
