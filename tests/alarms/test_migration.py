"""Migration 0014 turns ``meter_alarms`` into ``alarms`` with every row and id kept, and
leaves a ``meter_alarms`` view that reads and writes meter alarms as the old table did."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from backend.db import migrate, to_libpq_url, with_database
from tests.conftest import RUN_ID, _admin


@pytest.fixture
def database_at_0013(server_url: str) -> Iterator[str]:
    name = f"shuiwu_m0013_{RUN_ID}"
    _admin(server_url, f'CREATE DATABASE "{name}"')
    url = with_database(server_url, name)
    migrate(url, "0013")
    yield url
    _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_migration_0014_keeps_meter_alarms_and_their_ids(database_at_0013: str) -> None:
    connection = await asyncpg.connect(to_libpq_url(database_at_0013))
    try:
        await connection.execute("""
            INSERT INTO areas (id, name, kind, path) VALUES (1, 'a', 'company', '/1/');
            INSERT INTO meters (id, name, code, address, meter_type, kind, area_id, install_date, status)
            VALUES (1, 'm', 'M1', '00000000000001', 'cold_water', 'household', 1, '2025-01-01', 'installed');
            INSERT INTO meter_alarms (meter_id, kind, status, severity, opened_at, last_seen_at, value, threshold,
                                      detail, closed_at, closed_by, close_reason)
            VALUES (1, 'silent', 'closed', 'warning', '2026-11-01 08:00+08', '2026-11-02 08:00+08', 50, 48,
                    '最后读数 2026-10-30 08:00', '2026-11-03 08:00+08', 'system', 'condition cleared'),
                   (1, 'battery_low', 'open', 'warning', '2026-11-04 08:00+08', '2026-11-04 09:00+08', 3.0, 3.3,
                    '电池电压 3.0V', NULL, NULL, NULL);
        """)
        before = await connection.fetch("SELECT * FROM meter_alarms ORDER BY id")

        await asyncio.to_thread(migrate, database_at_0013)

        moved = await connection.fetch("SELECT * FROM alarms ORDER BY id")
        through_view = await connection.fetch("SELECT * FROM meter_alarms ORDER BY id")
        # Old SQL still writes meter alarms through the view; ids continue after the kept ones.
        added = await connection.fetchrow(
            "INSERT INTO meter_alarms (meter_id, kind, opened_at, last_seen_at) VALUES (1, 'zero_use', now(), now())"
            " RETURNING id, subject_kind")
        with pytest.raises(asyncpg.UniqueViolationError):
            await connection.execute("INSERT INTO alarms (subject_kind, subject_id, kind, opened_at, last_seen_at)"
                                     " VALUES ('meter', 1, 'battery_low', now(), now())")
    finally:
        await connection.close()

    assert [row["id"] for row in moved] == [row["id"] for row in before]
    for old, new in zip(before, moved, strict=True):
        assert {**dict(old), "meter_id": None} == {**{k: v for k, v in dict(new).items() if k in dict(old)},
                                                   "meter_id": None}
        assert (new["subject_kind"], new["subject_id"], new["area_id"], new["subject_name"]) == (
            "meter", old["meter_id"], None, "")
    assert [dict(row) for row in through_view] == [{**dict(row), "subject_kind": "meter"} for row in before]
    assert added["id"] > before[-1]["id"] and added["subject_kind"] == "meter"
