"""Backup and restore with pg_dump / pg_restore (backend/ops/backup.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from backend.cli import app as cli_app
from backend.db import create_engine, migrate, session_factory, to_libpq_url, with_database
from backend.demo import load_demo
from backend.ops.backup import BackupError, backup, libpq_env, restore
from backend.readings.partitions import ensure_partitions


async def _execute(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(to_libpq_url(url))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def _fetch(url: str, query: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(to_libpq_url(url))
    try:
        return list(await connection.fetch(query))
    finally:
        await connection.close()


@pytest.fixture
async def empty_database_url(server_url: str) -> AsyncIterator[str]:
    """A freshly created, empty database on the test server, dropped afterwards."""
    name = f"shuiwu_restore_{uuid.uuid4().hex[:10]}"
    admin = with_database(server_url, "postgres")
    await _execute(admin, f'CREATE DATABASE "{name}"')
    yield with_database(server_url, name)
    await _execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.smoke
async def test_backup_restores_committed_rows_into_a_fresh_database(database_url: str, empty_database_url: str, tmp_path: Path) -> None:
    # Given a committed row in a migrated database
    await _execute(
        database_url,
        "CREATE TABLE backup_probe (id int PRIMARY KEY, label text NOT NULL)",
        "INSERT INTO backup_probe VALUES (1, '水表 0001')",
    )

    # When it is backed up and restored into an empty database
    dump = await asyncio.to_thread(backup, database_url, tmp_path / "shuiwu.dump")
    await asyncio.to_thread(restore, empty_database_url, dump, clean=False)

    # Then the row and the migrated schema are there
    assert dump == tmp_path / "shuiwu.dump"
    assert dump.read_bytes()[:5] == b"PGDMP"
    assert [tuple(r) for r in await _fetch(empty_database_url, "SELECT id, label FROM backup_probe")] == [(1, "水表 0001")]
    original = await _fetch(database_url, "SELECT version_num FROM alembic_version")
    assert await _fetch(empty_database_url, "SELECT version_num FROM alembic_version") == original


async def test_clean_restore_replaces_changed_rows(database_url: str, tmp_path: Path) -> None:
    await _execute(database_url, "CREATE TABLE clean_probe (id int PRIMARY KEY)", "INSERT INTO clean_probe VALUES (1)")
    dump = await asyncio.to_thread(backup, database_url, tmp_path)
    await _execute(database_url, "INSERT INTO clean_probe VALUES (2)")

    await asyncio.to_thread(restore, database_url, dump, clean=True)

    assert dump.parent == tmp_path
    assert dump.name.startswith("shuiwu-")
    assert dump.suffix == ".dump"
    assert [r["id"] for r in await _fetch(database_url, "SELECT id FROM clean_probe ORDER BY id")] == [1]


async def test_restore_of_a_non_dump_file_fails_with_one_clear_line_and_restores_nothing(empty_database_url: str, tmp_path: Path) -> None:
    not_a_dump = tmp_path / "readings.csv"
    not_a_dump.write_text("meter_id,read_at,value\n1,2026-11-25T08:00:00+08:00,12.5\n")

    with pytest.raises(BackupError) as raised:
        await asyncio.to_thread(restore, empty_database_url, not_a_dump, clean=False)

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("pg_restore failed: input file does not appear to be a valid archive")
    tables = await _fetch(empty_database_url, "SELECT 1 FROM pg_tables WHERE schemaname = 'public'")
    assert tables == []


async def test_restore_into_a_database_that_already_has_the_tables_rolls_back_whole(
    database_url: str, empty_database_url: str, tmp_path: Path
) -> None:
    dump = await asyncio.to_thread(backup, database_url, tmp_path / "a.dump")
    await _execute(empty_database_url, "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")

    with pytest.raises(BackupError, match=r"^pg_restore failed: .*already exists"):
        await asyncio.to_thread(restore, empty_database_url, dump, clean=False)

    tables = await _fetch(empty_database_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert [r["tablename"] for r in tables] == ["alembic_version"]


def test_restore_of_a_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.dump"
    with pytest.raises(BackupError, match=r"backup file not found: .*nope\.dump"):
        restore("postgresql+asyncpg://postgres@/postgres?host=/nowhere", missing, clean=False)


def test_backup_into_a_missing_directory_creates_it_and_names_the_file(database_url: str, tmp_path: Path) -> None:
    dump = backup(database_url, tmp_path / "backups", now=datetime(2026, 11, 25, 3, 0, tzinfo=UTC))

    database = database_url.split("?")[0].rsplit("/", 1)[1]
    assert dump == tmp_path / "backups" / f"shuiwu-{database}-20261125T030000Z.dump"
    assert dump.read_bytes()[:5] == b"PGDMP"
    assert list(dump.parent.iterdir()) == [dump]


def test_backup_of_an_unreachable_server_names_it(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match=r"^cannot connect to postgres@127\.0\.0\.1:1/shuiwu: "):
        backup("postgresql://postgres@127.0.0.1:1/shuiwu", tmp_path / "x.dump")
    assert list(tmp_path.iterdir()) == []


async def test_backup_blocked_by_a_table_lock_fails_and_leaves_no_file(database_url: str, tmp_path: Path) -> None:
    await _execute(database_url, "CREATE TABLE locked_probe (id int)")
    holder = await asyncpg.connect(to_libpq_url(database_url))
    try:
        async with holder.transaction():
            # A migration holding the lock while the nightly backup starts.
            await holder.execute("LOCK TABLE locked_probe IN ACCESS EXCLUSIVE MODE")
            blocked = asyncio.to_thread(backup, database_url, tmp_path / "x.dump", lock_wait_s=0.2)
            with pytest.raises(BackupError, match=r"^pg_dump failed: .*statement timeout; Query was: LOCK TABLE"):
                # The outer limit only guards this test from hanging if the lock wait broke.
                await asyncio.wait_for(blocked, timeout=30)
    finally:
        await holder.close()
    assert not any(await asyncio.to_thread(lambda: list(tmp_path.iterdir())))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql+asyncpg://postgres:@/postgres?host=/srv/shuiwu/.shuiwu/pgdata",
            {"PGHOST": "/srv/shuiwu/.shuiwu/pgdata", "PGUSER": "postgres", "PGDATABASE": "postgres"},
        ),
        (
            "postgresql://billing:p%40ss%2Fword@db.internal:6432/shuiwu?sslmode=verify-full&application_name=x",
            {
                "PGHOST": "db.internal",
                "PGPORT": "6432",
                "PGUSER": "billing",
                "PGPASSWORD": "p@ss/word",
                "PGDATABASE": "shuiwu",
                "PGSSLMODE": "verify-full",
            },
        ),
        ("postgres://u@h/d?ssl=true", {"PGHOST": "h", "PGUSER": "u", "PGDATABASE": "d", "PGSSLMODE": "require"}),
    ],
)
def test_urls_become_libpq_environment(url: str, expected: dict[str, str]) -> None:
    assert libpq_env(url) == expected


@pytest.mark.smoke
async def test_clean_restore_over_a_database_with_readings_partitions_round_trips(database_url: str, tmp_path: Path) -> None:
    # Given readings partitions (each with its copies of the parent's indexes, attached)
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            await ensure_partitions(session, start=datetime(2026, 10, 1, tzinfo=UTC), end=datetime(2026, 12, 1, tzinfo=UTC))
            await session.commit()
    finally:
        await engine.dispose()
    await _execute(database_url, "CREATE TABLE partitions_probe (id int PRIMARY KEY)", "INSERT INTO partitions_probe VALUES (1)")
    dump = await asyncio.to_thread(backup, database_url, tmp_path)
    await _execute(database_url, "INSERT INTO partitions_probe VALUES (2)")

    # When the dump is restored over it
    await asyncio.to_thread(restore, database_url, dump, clean=True)

    # Then the rows are the dump's and every partition is attached with its indexes
    assert [r["id"] for r in await _fetch(database_url, "SELECT id FROM partitions_probe")] == [1]
    partitions = await _fetch(database_url, "SELECT c.relname, (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid) AS indexes"
                                            " FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid"
                                            " WHERE h.inhparent = 'readings'::regclass ORDER BY c.relname")
    parent_indexes = await _fetch(database_url, "SELECT count(*) AS n FROM pg_index WHERE indrelid = 'readings'::regclass")
    assert len(partitions) >= 3
    assert {r["indexes"] for r in partitions} == {parent_indexes[0]["n"]}


_DEMO_FIGURES = """
SELECT (SELECT count(*) FROM households) AS households, (SELECT count(*) FROM readings) AS readings,
       (SELECT count(*) FROM daily_usage) AS days, (SELECT count(*) FROM alarms) AS alarms,
       (SELECT count(*) FROM staff_users) AS users, (SELECT max(read_at) FROM readings) AS newest
"""


@pytest.mark.smoke
async def test_shuiwu_restore_clean_round_trips_the_demo_with_its_readings(empty_database_url: str, tmp_path: Path) -> None:
    # Given the demo utility with its readings partitions, backed up
    await asyncio.to_thread(migrate, empty_database_url)
    engine = create_engine(empty_database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            await load_demo(session, households=10, readings=True)
    finally:
        await engine.dispose()
    before = await _fetch(empty_database_url, _DEMO_FIGURES)
    dump = await asyncio.to_thread(backup, empty_database_url, tmp_path)
    # … and then changed: three days of readings lost, an owner record gone
    await _execute(empty_database_url, "DELETE FROM readings WHERE read_at > now() - interval '3 days'",
                   "DELETE FROM household_owners WHERE household_id = (SELECT max(id) FROM households)")

    # When the backup is restored over it with the command README gives
    result = await asyncio.to_thread(CliRunner().invoke, cli_app, ["restore", str(dump), "--clean"],
                                     env={"SHUIWU_DATABASE_URL": empty_database_url, "COLUMNS": "240"})

    # Then the database is the backed-up demo again
    assert result.exit_code == 0, result.output
    assert "restore finished" in result.output
    assert await _fetch(empty_database_url, _DEMO_FIGURES) == before
    assert before[0]["readings"] > 1000
