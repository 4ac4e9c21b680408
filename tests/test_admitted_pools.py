"""Admitted work (expensive requests, exports, imports) runs its statements on pools of its
own, whose backends run at a lower CPU priority when the database is a process of this
host: the test server is (embedded, or the machine's own PostgreSQL under CI's root)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend import db
from backend.graphql.limits import Admission

NICENESS = 7


def niceness_of(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def autogroup_niceness_of(pid: int) -> int | None:
    """The nice value of the backend's session when autogroup scheduling is on."""
    if Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() != "1":
        return None
    return int(Path(f"/proc/{pid}/autogroup").read_text().split("nice")[1])


@pytest.fixture
async def engines(service_database_url: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    base = db.create_engine(service_database_url, pool_size=1, max_overflow=0, isolation_level="AUTOCOMMIT")
    twin = db.create_engine(service_database_url, pool_size=1, max_overflow=1, isolation_level="AUTOCOMMIT")
    db.lower_backend_priority(twin, NICENESS)
    db.route_admitted(base, twin)
    yield base, twin
    db.unroute_admitted(base)
    await base.dispose()
    await twin.dispose()


async def backend_pid_raw(engine: AsyncEngine) -> int:
    async with db.raw_read(engine) as connection:
        return int(await connection.fetchval("SELECT pg_backend_pid()"))


async def backend_pid_session(engine: AsyncEngine) -> int:
    async with db.session_factory(engine)() as session:
        return int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_admitted_work_runs_on_lowered_backends_and_the_rest_does_not(
        engines: tuple[AsyncEngine, AsyncEngine]) -> None:
    base, _twin = engines
    foreground = {await backend_pid_raw(base), await backend_pid_session(base)}
    admission = Admission(per_process=1, per_principal=1, wait_s=1)
    async with admission.admit("staff:1"):
        admitted = {await backend_pid_raw(base), await backend_pid_session(base)}
    assert not foreground & admitted
    assert {niceness_of(pid) for pid in admitted} == {NICENESS}
    # Each backend is a session of its own: under autogroup scheduling its session's nice
    # value is what counts against other sessions (the API process's).
    assert {autogroup_niceness_of(pid) for pid in admitted} <= {NICENESS, None}
    assert all(niceness_of(pid) < NICENESS for pid in foreground)
    # After the admitted block, the foreground is back on the base pool.
    assert await backend_pid_raw(base) in foreground


async def test_a_process_that_is_not_the_connections_backend_is_left_alone(
        engines: tuple[AsyncEngine, AsyncEngine]) -> None:
    base, _ = engines
    pid = await backend_pid_raw(base)
    before = niceness_of(pid)
    # A client port that is not this connection's: the title does not name it.
    assert not db.renice_local_backend(pid, 1, NICENESS)
    # Not a PostgreSQL process at all (this test's own).
    assert not db.renice_local_backend(os.getpid(), None, NICENESS)
    assert niceness_of(pid) == before
    assert not db.renice_local_backend(2**22 + 12345, None, NICENESS)  # no such process
