"""The reusable live fixtures (tests/fixtures/live.py): the API over a real socket and a
running job worker, each on the module's own database."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from backend.jobs import defer_job
from tests.events.factories import committing_sessions, raw_connection
from tests.fixtures.live import RunningWorker, eventually
from tests.live import LiveServer
from tests.sample_domain.jobs import TALLIES


async def test_the_live_api_fixture_serves_the_app_over_a_real_socket(live_api: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_api.url) as http:
        health = await http.get("/healthz")
        greeting = await http.post("/graphql", json={"query": "{ __typename }"})

    assert health.json() == {"status": "ok", "database": "up"}
    assert greeting.json() == {"data": {"__typename": "Query"}}


async def test_the_job_worker_fixture_runs_a_job_the_test_defers(job_worker: RunningWorker, database_url: str) -> None:
    tallied = len(TALLIES)
    async with committing_sessions(database_url) as sessions, sessions() as session, session.begin():
        await defer_job(session, job="notes.tally", dedupe_key="live-fixture", now=datetime.now(UTC))

    await eventually(lambda: len(TALLIES) > tallied)

    # The job ran in the worker, as the system actor, and PgQueuer logged it done.
    assert TALLIES[-1][0] == "系统"
    assert job_worker.alive
    async with raw_connection(database_url) as connection:
        await eventually(lambda: _logged(connection))


async def _logged(connection: object) -> bool:
    statuses = await connection.fetch(  # type: ignore[attr-defined]
        "SELECT status FROM pgqueuer_log WHERE entrypoint = 'job:notes.tally'")
    return "successful" in [row["status"] for row in statuses]
