"""``shuiwu events``: replay and list, run through Typer with the declared handlers in ``obj``,
and docs/events.md kept equal to the declarations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner, Result

from backend.events.catalog import owned_payload_types, render_catalog
from backend.events.cli import events_app, parse_duration
from backend.events.relay import job_payload
from backend.events.service import Event, Handler, HandlerRegistry
from backend.runtime import Runtime
from backend.settings import Settings
from tests.events.factories import committing_sessions, emit_committed, raw_connection
from tests.events.payloads import BillIssued

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events.md"


async def _print(runtime: Runtime, session: AsyncSession, event: Event) -> None:
    return None


HANDLERS = HandlerRegistry([Handler("tests.bill_issued", "print", _print)])


@pytest.fixture(scope="module")
async def factory(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with committing_sessions(database_url) as sessions:
        yield sessions


async def events_command(database_url: str, *args: str) -> Result:
    """``shuiwu events <args>`` against the module's database (in a thread: the command
    runs its own event loop)."""
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke, events_app, list(args), obj=SimpleNamespace(handlers=HANDLERS),
        env={"SHUIWU_DATABASE_URL": database_url, "COLUMNS": "240"},  # error boxes on one line
    )


async def test_replay_since_a_day_queues_that_days_events_once(
    database_url: str, factory: async_sessionmaker[AsyncSession]
) -> None:
    zone = Settings().tz
    today = datetime.now(zone).date()
    old = await emit_committed(factory, "tests.bill_issued", BillIssued(1))
    async with raw_connection(database_url) as connection:
        # Given one event from the day before yesterday (utility time) and one from today:
        start_of_today = datetime.combine(today, datetime.min.time(), tzinfo=zone)
        await connection.execute("UPDATE domain_events SET created_at = $1 WHERE id = $2",
                                 start_of_today - timedelta(days=1, seconds=1), old)
        recent = await emit_committed(factory, "tests.bill_issued", BillIssued(2))

        first = await events_command(database_url, "replay", "--handler", "print", "--since", today.isoformat())
        again = await events_command(database_url, "replay", "--handler", "tests.bill_issued:print",
                                     "--since", (today - timedelta(days=1)).isoformat())

        jobs = await connection.fetch("SELECT payload FROM pgqueuer WHERE entrypoint = 'event:tests.bill_issued:print'")

    assert first.exit_code == 0, first.output
    assert "event:tests.bill_issued:print: 1 queued, 0 already handled, 0 already queued" in first.output
    assert again.exit_code == 0, again.output
    assert "0 queued, 0 already handled, 1 already queued" in again.output
    assert [row["payload"] for row in jobs] == [job_payload(recent)]


async def test_replay_refuses_an_unknown_handler_two_starts_and_a_bad_horizon(database_url: str) -> None:
    unknown = await events_command(database_url, "replay", "--handler", "prnt", "--from-id", "1")
    both = await events_command(database_url, "replay", "--handler", "print", "--from-id", "1", "--since", "2026-11-01")
    neither = await events_command(database_url, "replay", "--handler", "print")
    bad_horizon = await events_command(database_url, "replay", "--handler", "print", "--from-id", "1", "--horizon", "1y")

    assert (unknown.exit_code, both.exit_code, neither.exit_code, bad_horizon.exit_code) == (2, 2, 2, 2)
    assert "no handler named 'prnt' (declared: tests.bill_issued:print)" in unknown.output
    assert "exactly one of --since DATE and --from-id N" in both.output
    assert "like 24h or 7d" in bad_horizon.output


def test_durations_are_a_whole_number_and_a_unit() -> None:
    assert [parse_duration(text) for text in ("90s", "30m", "24h", "7d", "2w")] == [
        timedelta(seconds=90), timedelta(minutes=30), timedelta(hours=24), timedelta(days=7), timedelta(weeks=2)]


async def test_events_list_prints_the_catalog(database_url: str) -> None:
    listed = await events_command(database_url, "list")

    assert listed.exit_code == 0
    assert listed.stdout == render_catalog(owned_payload_types())
    assert "| `readings.ingested` | readings | `ReadingsIngested` |" in listed.stdout


def test_docs_events_md_is_the_catalog_of_the_declared_payloads() -> None:
    assert DOCS.read_text(encoding="utf-8") == render_catalog(owned_payload_types()), (
        "docs/events.md drifted: run `python -m backend.events.catalog > docs/events.md`"
    )
